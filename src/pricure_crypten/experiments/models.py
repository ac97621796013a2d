"""The owners' model zoo: plain ``nn.Sequential`` models of supported layers.

The secure backend evaluates exactly the layer types in :data:`SUPPORTED_LAYERS`,
in one ``nn.Sequential`` without a custom ``forward``; every model here is
built from them only. Architectures are described by JSON-serialisable dicts
such as ``{"name": "small_cnn", "in_channels": 1, "image_size": 28,
"num_classes": 2}``, turned into models by :func:`build_model`.

MPC-friendly variants. Under MPC, linear layers (Linear, Conv2d, AvgPool2d,
folded BatchNorm) are cheap: local work plus one truncation. Each ReLU
element is a ~64-bit secure comparison (many rounds and bytes per element),
and each MaxPool2d window costs ``kernel_area - 1`` such comparisons, so the
cost of :func:`small_cnn` is dominated by the ReLU on its first convolution's
full output (24x24x8 = 4,608 elements for a 28x28 image). The variants
:func:`pool_first_cnn`, :func:`strided_cnn`, :func:`narrow_cnn` and
:func:`square_cnn` cut that count (pooling before the activation, a strided
convolution, fewer channels) or replace ReLU by :class:`Square` (one Beaver
square, no comparison); :func:`strided_narrow_cnn`, :func:`coarse_cnn` (160
ReLU per 28x28 image each) and :func:`hybrid_cnn` (32 ReLU and 288 Square)
combine these. :func:`nonlinear_elements` counts the nonlinear
elements per image of any model, as the secure backend would evaluate them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..mpc.layers import Square, convert
from .data import Dataset

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    Square,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Dropout,
)


def mlp(*, in_features: int, num_classes: int, hidden: Sequence[int] = (32,)) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear to ``num_classes``."""
    _check_positive(in_features=in_features, num_classes=num_classes)
    _check_positive(**{f"hidden[{i}]": width for i, width in enumerate(hidden)})
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [in_features, *hidden]
    for width_in, width_out in zip(widths, widths[1:]):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


def small_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """The benchmark reference CNN.

    Conv2d(in, 8, 5) -> ReLU -> AvgPool2d(2) -> Flatten -> Linear(-> 32) ->
    ReLU -> Linear(32 -> num_classes). The convolution pads by 2 for images
    smaller than 28 pixels (8x8 digits) and not at all from 28 up.
    """
    _check_positive(in_channels=in_channels, num_classes=num_classes)
    _check_image_size(image_size, minimum=8)
    padding = 2 if image_size < 28 else 0
    side = (image_size + 2 * padding - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=5, padding=padding),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * side * side, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def lenet(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """A LeNet-style CNN: two 5x5 "same" convolutions (6 and 16 channels),
    each followed by ReLU and 2x2 average pooling, then Linear(-> 84) -> ReLU
    -> Linear(84 -> num_classes). Works for 8x8 and 28x28 (and larger) images.
    """
    _check_positive(in_channels=in_channels, num_classes=num_classes)
    _check_image_size(image_size, minimum=4)
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _one_conv_cnn(
    in_channels: int, image_size: int, num_classes: int, *, channels: int, hidden: int, stride: int = 1,
    pool: int = 2, pool_from: int = 0, conv_activation: str = "relu", dense_activation: str = "relu",
    logit_norm: bool = False,
) -> nn.Sequential:
    """The MPC-friendly family: one 5x5 convolution, average pooling BEFORE the activation, one hidden layer.

    Conv2d(in, channels, 5, stride) -> [BatchNorm2d] -> [AvgPool2d(pool), when
    the convolution's output is at least ``pool_from`` pixels wide] ->
    activation -> Flatten -> Linear(-> hidden) -> [BatchNorm1d] -> activation
    -> Linear(hidden -> num_classes) -> [BatchNorm1d(num_classes)]. Padding 2
    below 28 pixels, none from 28 up (as small_cnn). A BatchNorm goes before
    every Square (it directly follows a Conv2d/Linear, so it is folded away at
    inference) to keep the quadratic activation's inputs near unit scale;
    ``logit_norm`` adds one on the logits.
    """
    _check_positive(in_channels=in_channels, num_classes=num_classes)
    _check_image_size(image_size, minimum=8)
    padding = 2 if image_size < 28 else 0
    side = (image_size + 2 * padding - 5) // stride + 1
    activations = {"relu": nn.ReLU, "square": Square}
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, kernel_size=5, stride=stride, padding=padding)]
    if conv_activation == "square":
        layers.append(nn.BatchNorm2d(channels))
    if side >= pool_from:
        layers.append(nn.AvgPool2d(pool))
        side //= pool
    layers += [activations[conv_activation](), nn.Flatten(), nn.Linear(channels * side * side, hidden)]
    if dense_activation == "square":
        layers.append(nn.BatchNorm1d(hidden))
    layers += [activations[dense_activation](), nn.Linear(hidden, num_classes)]
    if logit_norm:
        layers.append(nn.BatchNorm1d(num_classes))
    return nn.Sequential(*layers)


def pool_first_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`small_cnn` with the 2x2 average pooling moved BEFORE the first ReLU.

    Conv2d(in, 8, 5) -> AvgPool2d(2) -> ReLU -> Flatten -> Linear(-> 32) ->
    ReLU -> Linear(32 -> num_classes); same weights (and weight count) as
    small_cnn, same padding rule. Convolution followed by average pooling is
    one linear map, so the first ReLU runs on the pooled 12x12x8 map.

    Nonlinear elements per 28x28 image: 8*12*12 + 32 = 1,184 ReLU (small_cnn:
    4,640), 3.9x fewer secure comparisons. 8x8 images: 8*4*4 + 32 = 160
    (small_cnn: 544).
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=8, hidden=32)


def strided_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """A stride-2 first convolution, then (on large images) average pooling, then the first ReLU.

    Conv2d(in, 8, 5, stride=2) -> [AvgPool2d(2)] -> ReLU -> Flatten ->
    Linear(-> 32) -> ReLU -> Linear(32 -> num_classes). Padding 2 below 28
    pixels, none from 28 up (as small_cnn). The pooling is there only when the
    convolution's output is at least 8 pixels wide (28x28 images: 12x12 ->
    6x6), so that small images (8x8 digits: 4x4) keep enough features. At
    28x28 the first activation map is 16x smaller than small_cnn's (6x6
    instead of 24x24 per channel) and the dense layer 4x smaller (288 inputs
    instead of 1,152).

    Nonlinear elements per 28x28 image: 8*6*6 + 32 = 320 ReLU (small_cnn:
    4,640), 14.5x fewer. 8x8 images: 8*4*4 + 32 = 160 (small_cnn: 544).
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=8, hidden=32, stride=2, pool_from=8)


def narrow_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`pool_first_cnn` at half width: 4 first-layer channels, 16 hidden units.

    Conv2d(in, 4, 5) -> AvgPool2d(2) -> ReLU -> Flatten -> Linear(-> 16) ->
    ReLU -> Linear(16 -> num_classes); padding as small_cnn. About a quarter
    of small_cnn's weights (half the channels, half the hidden units).

    Nonlinear elements per 28x28 image: 4*12*12 + 16 = 592 ReLU (small_cnn:
    4,640), 7.8x fewer. 8x8 images: 4*4*4 + 16 = 80 (small_cnn: 544).
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=4, hidden=16)


def square_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`pool_first_cnn` with :class:`~pricure_crypten.mpc.layers.Square` activations.

    Conv2d(in, 8, 5) -> BatchNorm2d(8) -> AvgPool2d(2) -> Square -> Flatten ->
    Linear(-> 32) -> BatchNorm1d(32) -> Square -> Linear(32 -> num_classes) ->
    BatchNorm1d(num_classes); padding as small_cnn. Each BatchNorm directly
    follows a Conv2d/Linear, so :func:`~pricure_crypten.mpc.layers.convert`
    folds it into that layer at inference (no extra layer under MPC); in
    training it keeps the inputs of each Square near unit scale, which keeps
    the quadratic activations (and the fixed-point values under MPC) bounded,
    and the last one keeps the logits (sums of squares) on a sane scale,
    which measurably helps on PneumoniaMNIST. Because of the BatchNorm1d
    layers, a training minibatch must hold at least 2 examples.

    Nonlinear elements per 28x28 image: no ReLU, 8*12*12 + 32 = 1,184 Square.
    A Square is one Beaver multiplication and a truncation (one round trip,
    a few ring elements per element), against a full comparison circuit per
    ReLU element. 8x8 images: 160 Square.
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=8, hidden=32, conv_activation="square",
                         dense_activation="square", logit_norm=True)


def strided_narrow_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`strided_cnn` at half width: 4 first-layer channels, 16 hidden units.

    Conv2d(in, 4, 5, stride=2) -> [AvgPool2d(2)] -> ReLU -> Flatten ->
    Linear(-> 16) -> ReLU -> Linear(16 -> num_classes); padding and pooling
    rule as strided_cnn (pooling only when the convolution's output is at
    least 8 pixels wide). Half strided_cnn's activation map and hidden layer,
    so half its ReLU elements; about a quarter of its weights.

    Nonlinear elements per 28x28 image: 4*6*6 + 16 = 160 ReLU (small_cnn:
    4,640), 29x fewer (strided_cnn: 320). 8x8 images: 4*4*4 + 16 = 80
    (small_cnn: 544).
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=4, hidden=16, stride=2, pool_from=8)


def coarse_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`strided_cnn` with a coarser (3x3) average pooling before the first ReLU.

    Conv2d(in, 8, 5, stride=2) -> [AvgPool2d(3)] -> ReLU -> Flatten ->
    Linear(-> 32) -> ReLU -> Linear(32 -> num_classes); padding as
    strided_cnn. The pooling is there only when the convolution's output is
    at least 12 pixels wide (28x28 images: 12x12 -> 4x4; 8x8 digits keep
    their 4x4 map). Keeps strided_cnn's 8 channels and 32 hidden units but
    shrinks the first activation map from 6x6 to 4x4 per channel at 28x28.

    Nonlinear elements per 28x28 image: 8*4*4 + 32 = 160 ReLU (small_cnn:
    4,640), 29x fewer (strided_cnn: 320). 8x8 images: 8*4*4 + 32 = 160
    (small_cnn: 544), the same network as strided_cnn there.
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=8, hidden=32, stride=2, pool=3,
                         pool_from=12)


def hybrid_cnn(*, in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`strided_cnn` with :class:`~pricure_crypten.mpc.layers.Square` on the convolution, ReLU on the dense layer.

    Conv2d(in, 8, 5, stride=2) -> BatchNorm2d(8) -> [AvgPool2d(2)] -> Square
    -> Flatten -> Linear(-> 32) -> ReLU -> Linear(32 -> num_classes) ->
    BatchNorm1d(num_classes); padding and pooling rule as strided_cnn. Each
    BatchNorm directly follows a Conv2d/Linear, so
    :func:`~pricure_crypten.mpc.layers.convert` folds it in at inference; in
    training the first keeps the Square's inputs near unit scale and the
    last keeps the logits on a sane scale (as in :func:`square_cnn`; without
    it the PneumoniaMNIST vote ensemble lost about 4 more points). The wide
    activation (the convolution's map) is the cheap Square; the only
    comparisons are the 32 hidden ReLUs. Because of the BatchNorm1d, a
    training minibatch must hold at least 2 examples.

    Nonlinear elements per 28x28 image: 32 ReLU and 8*6*6 = 288 Square
    (about 32 + 29 = 61 ReLU-equivalents at ~1/10 of a ReLU per Square;
    small_cnn: 4,640 ReLU). 8x8 images: 32 ReLU and 8*4*4 = 128 Square.
    Cheapest of the zoo, but on PneumoniaMNIST its vote ensemble is about 2
    points below small_cnn, with a wide spread over seeds (Square on the
    convolution's map costs accuracy there, as for square_cnn). On MNIST at
    PATE scale (240-image shards, 2-pixel random shifts, ``python -m
    benchmarks.teachers``) it is the most accurate owner of those measured
    (0.90 mean owner test accuracy against 0.81-0.86 for mlp16, mlp64,
    coarse_cnn and strided_cnn; ``docs/results/k250-teachers.csv``).
    """
    return _one_conv_cnn(in_channels, image_size, num_classes, channels=8, hidden=32, stride=2, pool_from=8,
                         conv_activation="square", logit_norm=True)


ARCHITECTURES = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "lenet": lenet,
    "pool_first_cnn": pool_first_cnn,
    "strided_cnn": strided_cnn,
    "narrow_cnn": narrow_cnn,
    "square_cnn": square_cnn,
    "strided_narrow_cnn": strided_narrow_cnn,
    "coarse_cnn": coarse_cnn,
    "hybrid_cnn": hybrid_cnn,
}

#: The image architectures meant for MPC-cheap inference (see :func:`nonlinear_elements`).
MPC_FRIENDLY = (
    "pool_first_cnn", "strided_cnn", "narrow_cnn", "square_cnn",
    "strided_narrow_cnn", "coarse_cnn", "hybrid_cnn",
)


def nonlinear_elements(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Nonlinear work per example of ``model`` as the secure backend evaluates it.

    The model is converted with :func:`~pricure_crypten.mpc.layers.convert`
    (BatchNorm folded, Dropout dropped; an unsupported layer raises
    :class:`~pricure_crypten.mpc.layers.UnsupportedLayerError`) and the specs
    are dry-run on one zero input of ``input_shape`` (shapes only).

    Returns:
        ``{"relu": ReLU elements, "square": Square elements,
        "maxpool_comparisons": pairwise comparisons of MaxPool2d windows
        (output elements times ``kernel_area - 1``), "comparisons": relu +
        maxpool_comparisons}``, each per example.
    """
    import torch.nn.functional as F

    counts = {"relu": 0, "square": 0, "maxpool_comparisons": 0}
    x = torch.zeros((1, *(int(s) for s in input_shape)), dtype=torch.float64)
    for spec in convert(model):
        params = [torch.zeros(p.shape, dtype=torch.float64) for p in spec.params]
        if spec.kind == "linear":
            x = F.linear(x.flatten(1) if x.dim() != 2 else x, *params)
        elif spec.kind == "conv2d":
            x = F.conv2d(x, *params, stride=spec.option("stride"), padding=spec.option("padding"),
                         dilation=spec.option("dilation"))
        elif spec.kind in ("avgpool2d", "maxpool2d"):
            pool = F.avg_pool2d if spec.kind == "avgpool2d" else F.max_pool2d
            x = pool(x, kernel_size=spec.option("kernel_size"), stride=spec.option("stride"),
                     padding=spec.option("padding"))
            if spec.kind == "maxpool2d":
                kh, kw = spec.option("kernel_size")
                counts["maxpool_comparisons"] += x.numel() * (kh * kw - 1)
        elif spec.kind == "flatten":
            x = x.flatten(1)
        elif spec.kind == "relu":
            counts["relu"] += x.numel()
        elif spec.kind == "square":
            counts["square"] += x.numel()
        elif spec.kind != "affine":
            raise ValueError(f"unexpected layer kind {spec.kind!r}")
    counts["comparisons"] = counts["relu"] + counts["maxpool_comparisons"]
    return counts


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm's affine ones included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(arch: dict[str, Any], *, seed: int | None = None) -> nn.Sequential:
    """Build the model that ``arch`` describes.

    Args:
        arch: ``{"name": <one of ARCHITECTURES>, **keyword arguments}``.
        seed: if given, the initial weights are drawn from this seed (the
            global torch RNG state is restored afterwards).

    Raises:
        ValueError: unknown name, or missing/unexpected keyword arguments.
    """
    name = arch.get("name")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    kwargs = {key: value for key, value in arch.items() if key != "name"}
    _check_arguments(name, kwargs)
    if "hidden" in kwargs:
        kwargs["hidden"] = tuple(kwargs["hidden"])
    if seed is None:
        return ARCHITECTURES[name](**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[name](**kwargs)


def default_architecture(dataset: Dataset) -> dict[str, Any]:
    """An MLP (one hidden layer of 32) for tabular data, :func:`small_cnn` for images."""
    shape = dataset.input_shape
    if len(shape) == 1:
        return {
            "name": "mlp",
            "in_features": shape[0],
            "num_classes": dataset.num_classes,
            "hidden": [32],
        }
    if len(shape) == 3 and shape[1] == shape[2]:
        return {
            "name": "small_cnn",
            "in_channels": shape[0],
            "image_size": shape[1],
            "num_classes": dataset.num_classes,
        }
    raise ValueError(f"no default architecture for input shape {shape} of {dataset.name!r}")


def _check_arguments(name: str, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(ARCHITECTURES[name]).parameters
    required = {key for key, p in params.items() if p.default is inspect.Parameter.empty}
    missing, unexpected = required - kwargs.keys(), kwargs.keys() - params.keys()
    if missing or unexpected:
        raise ValueError(
            f"architecture {name!r}: missing {sorted(missing)}, unexpected {sorted(unexpected)}; "
            f"it takes {sorted(params)}"
        )


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def _check_image_size(image_size: int, *, minimum: int) -> None:
    _check_positive(image_size=image_size)
    if image_size < minimum:
        raise ValueError(f"image_size must be at least {minimum}, got {image_size}")

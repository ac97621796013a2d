"""The owners' model zoo: plain ``nn.Sequential`` models of supported layers.

The secure backend evaluates exactly the layer types in :data:`SUPPORTED_LAYERS`,
in one ``nn.Sequential`` without a custom ``forward``; every model here is
built from them only. Architectures are described by JSON-serialisable dicts
such as ``{"name": "small_cnn", "in_channels": 1, "image_size": 28,
"num_classes": 2}``, turned into models by :func:`build_model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .data import Dataset

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
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


ARCHITECTURES = {"mlp": mlp, "small_cnn": small_cnn, "lenet": lenet}


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

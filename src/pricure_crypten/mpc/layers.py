"""Owner side: turn an ordinary ``torch.nn`` model into layer specs the servers can stack.

Runs in the model owner's process, on the owner's plaintext model; nothing
here is sent anywhere. The result is a tuple of :class:`LayerSpec`: the
layer kind and hyper-parameters (public: they define the architecture) and the
parameters as float64 arrays (private: the owner secret-shares them, see
:mod:`pricure_crypten.parties.owner`).

Supported layers: Linear, Conv2d, ReLU, :class:`Square` (the MPC-friendly
polynomial activation x**2: one Beaver square, no comparison), AvgPool2d, MaxPool2d, Flatten,
BatchNorm1d/2d (folded into the preceding Linear/Conv2d for inference, or
kept as a per-channel affine layer when there is none), Dropout (identity at
inference). The model must be an ``nn.Sequential`` (nested Sequentials are
flattened). Anything else raises :class:`UnsupportedLayerError` naming it.
No ONNX export is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

SUPPORTED_LAYERS = (
    "Linear", "Conv2d", "ReLU", "Square", "AvgPool2d", "MaxPool2d", "Flatten",
    "BatchNorm1d", "BatchNorm2d", "Dropout",
)


class UnsupportedLayerError(ValueError):
    """The model contains a layer the secure backend cannot evaluate."""


class Square(nn.Module):
    """The activation ``x * x`` (CryptoNets-style), an ordinary ``torch.nn`` module for owners.

    Under MPC it costs one Beaver square and a truncation (one round trip),
    against a full comparison circuit for ReLU. Its output grows
    quadratically: train with BatchNorm before it (folded away for inference)
    so that activations stay far inside the fixed-point range.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@dataclass(frozen=True)
class LayerSpec:
    """One layer: ``kind`` and ``options`` are public; ``params`` are the owner's secret."""

    kind: str  # linear | conv2d | relu | square | avgpool2d | maxpool2d | flatten | affine
    options: tuple[tuple[str, Any], ...] = ()
    params: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)

    @property
    def signature(self) -> tuple:
        """The public description used to group owners with the same architecture."""
        return (self.kind, self.options, tuple(p.shape for p in self.params))

    def option(self, name: str) -> Any:
        return dict(self.options)[name]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


def _flatten_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            f"the model must be an nn.Sequential of supported layers, got {type(model).__name__} "
            f"(supported: {', '.join(SUPPORTED_LAYERS)})"
        )
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Sequential):
            out.extend((f"{name}.{n}", m) for n, m in _flatten_modules(module))
        else:
            out.append((name, module))
    return out


def _array(t: torch.Tensor | None, size: int | None = None) -> np.ndarray:
    if t is None:
        return np.zeros(size)
    return t.detach().cpu().double().numpy().copy()


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(
            f"{type(bn).__name__} without running statistics (track_running_stats=False) cannot be folded"
        )
    mean, var = _array(bn.running_mean), _array(bn.running_var)
    gamma = _array(bn.weight) if bn.weight is not None else np.ones_like(mean)
    beta = _array(bn.bias) if bn.bias is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _convert_module(name: str, module: nn.Module) -> LayerSpec | None:
    if isinstance(module, nn.Linear):
        return LayerSpec("linear", (), (_array(module.weight), _array(module.bias, module.out_features)))
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedLayerError(f"layer {name} (Conv2d): only numeric zero padding is supported")
        if module.groups != 1:
            raise UnsupportedLayerError(f"layer {name} (Conv2d): groups={module.groups} is not supported (only 1)")
        options = (
            ("stride", _pair(module.stride)), ("padding", _pair(module.padding)),
            ("dilation", _pair(module.dilation)),
        )
        return LayerSpec("conv2d", options, (_array(module.weight), _array(module.bias, module.out_channels)))
    if isinstance(module, nn.ReLU):
        return LayerSpec("relu")
    if isinstance(module, Square):
        return LayerSpec("square")
    if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
        if getattr(module, "ceil_mode", False):
            raise UnsupportedLayerError(f"layer {name} ({type(module).__name__}): ceil_mode=True is not supported")
        if isinstance(module, nn.AvgPool2d) and (not module.count_include_pad or module.divisor_override):
            raise UnsupportedLayerError(
                f"layer {name} (AvgPool2d): only count_include_pad=True without divisor_override is supported"
            )
        if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) != (1, 1):
            raise UnsupportedLayerError(f"layer {name} (MaxPool2d): dilation is not supported")
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        options = (("kernel_size", kernel), ("stride", stride), ("padding", _pair(module.padding)))
        return LayerSpec("avgpool2d" if isinstance(module, nn.AvgPool2d) else "maxpool2d", options)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedLayerError(f"layer {name} (Flatten): only start_dim=1, end_dim=-1 is supported")
        return LayerSpec("flatten")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = _bn_scale_shift(module)
        return LayerSpec("affine", (), (scale, shift))
    if isinstance(module, nn.Dropout):
        return None
    raise UnsupportedLayerError(
        f"layer {name} ({type(module).__name__}) is not supported by the secure backend; "
        f"supported layers: {', '.join(SUPPORTED_LAYERS)}"
    )


def _fold(previous: LayerSpec, affine: LayerSpec) -> LayerSpec:
    """Fold a per-channel affine (inference BatchNorm) into the preceding Linear/Conv2d."""
    weight, bias = previous.params
    scale, shift = affine.params
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return LayerSpec(previous.kind, previous.options, (weight * scale.reshape(shape), bias * scale + shift))


def convert(model: nn.Module) -> tuple[LayerSpec, ...]:
    """Convert an owner's ``nn.Sequential`` into layer specs (BatchNorm folded, Dropout removed)."""
    specs: list[LayerSpec] = []
    for name, module in _flatten_modules(model):
        spec = _convert_module(name, module)
        if spec is None:
            continue
        if spec.kind == "affine" and specs and specs[-1].kind in ("linear", "conv2d"):
            specs[-1] = _fold(specs[-1], spec)
        else:
            specs.append(spec)
    if not any(s.kind in ("linear", "conv2d") for s in specs):
        raise UnsupportedLayerError("the model has no Linear or Conv2d layer; nothing to evaluate")
    return tuple(specs)


def output_shape(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the model's output for one example (plaintext, owner side)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1,) + tuple(input_shape)))
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"the model does not accept inputs of shape {tuple(input_shape)}: {error}") from error
    finally:
        model.train(was_training)
    return tuple(out.shape[1:])


# The closed schema of what a server accepts: every layer kind, its number of parameters with their
# dimensions, and its options (each a pair of ints within [low, high]). Anything else is refused by name
# (check_layer), on the owner's side and before a server stores or builds anything.
_PAIR_OPTIONS = {
    "conv2d": {"stride": (1, 64), "padding": (0, 64), "dilation": (1, 64)},
    "avgpool2d": {"kernel_size": (1, 64), "stride": (1, 64), "padding": (0, 32)},
    "maxpool2d": {"kernel_size": (1, 64), "stride": (1, 64), "padding": (0, 32)},
}
LAYER_SCHEMA: dict[str, dict[str, Any]] = {
    "linear": {"params": (2, 1), "options": {}},  # weight (out, in), bias (out,)
    "conv2d": {"params": (4, 1), "options": _PAIR_OPTIONS["conv2d"]},  # weight (out, in, kh, kw), bias (out,)
    "affine": {"params": (1, 1), "options": {}},  # per-channel scale (C,), shift (C,)
    "relu": {"params": (), "options": {}},
    "square": {"params": (), "options": {}},
    "flatten": {"params": (), "options": {}},
    "avgpool2d": {"params": (), "options": _PAIR_OPTIONS["avgpool2d"]},
    "maxpool2d": {"params": (), "options": _PAIR_OPTIONS["maxpool2d"]},
}
LAYER_KINDS = tuple(LAYER_SCHEMA)


def _int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_layer(layer: LayerSpec, where: str = "layer") -> None:
    """Raise ``ValueError`` naming the problem unless ``layer`` fits :data:`LAYER_SCHEMA` exactly.

    Checks the kind, the option names (every option required, none unknown),
    their values (pairs of ints in range), and the number and dimensions of
    the parameters (their shapes only, never their values).
    """
    schema = LAYER_SCHEMA.get(layer.kind) if isinstance(layer.kind, str) else None
    if schema is None:
        raise ValueError(f"{where}: unknown layer kind {layer.kind!r} (known: {', '.join(LAYER_KINDS)})")
    names = [name for name, _ in layer.options]
    allowed = schema["options"]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"{where} ({layer.kind}): unknown option {unknown[0]!r} "
                         f"(allowed: {', '.join(allowed) or 'none'})")
    if len(set(names)) != len(names):
        raise ValueError(f"{where} ({layer.kind}): an option is given twice: {names}")
    missing = [n for n in allowed if n not in names]
    if missing:
        raise ValueError(f"{where} ({layer.kind}): option {missing[0]!r} is missing")
    for name, value in layer.options:
        low, high = allowed[name]
        if (not isinstance(value, (tuple, list)) or len(value) != 2
                or not all(_int(v) and low <= v <= high for v in value)):
            raise ValueError(f"{where} ({layer.kind}): option {name!r} must be a pair of integers in "
                             f"[{low}, {high}], got {value!r}")
    ndims = schema["params"]
    if len(layer.params) != len(ndims):
        raise ValueError(f"{where} ({layer.kind}): needs {len(ndims)} parameters, got {len(layer.params)}")
    for j, (param, ndim) in enumerate(zip(layer.params, ndims)):
        shape = tuple(np.shape(param))
        if len(shape) != ndim or not all(s >= 1 for s in shape):
            raise ValueError(f"{where} ({layer.kind}): parameter {j} must have {ndim} positive dimension(s), "
                             f"got shape {shape}")
    if len(ndims) == 2 and tuple(np.shape(layer.params[1])) != tuple(np.shape(layer.params[0]))[:1]:
        raise ValueError(f"{where} ({layer.kind}): parameter 1 must have shape "
                         f"{tuple(np.shape(layer.params[0]))[:1]}, got {tuple(np.shape(layer.params[1]))}")


def specs_output_shape(layers: Sequence[LayerSpec], input_shape: tuple[int, ...], *,
                       max_activation: int | None = None) -> tuple[int, ...]:
    """Shape of one example's output, from the layer specs alone (a dry run on shapes).

    Runs where only shares are at hand (a server checking an uploaded bundle):
    only the parameters' SHAPES are used, never their values, and the dry run
    is on torch's ``meta`` device, so it allocates and computes nothing however
    large the declared shapes. Every layer is first checked against
    :data:`LAYER_SCHEMA` (:func:`check_layer`). Raises ``ValueError`` naming
    the first layer that is malformed, whose shapes do not fit, whose output
    for one example has more than ``max_activation`` elements (when given),
    or a layer order the stacked evaluation does not support.
    """
    import torch.nn.functional as F

    meta = {"device": "meta"}
    x = torch.zeros((1,) + tuple(int(s) for s in input_shape), **meta)
    for index, layer in enumerate(layers):
        check_layer(layer, f"layer {index}")
        zeros = [torch.zeros(tuple(int(s) for s in np.shape(p)), **meta) for p in layer.params]
        where = f"layer {index} ({layer.kind}) on an input of shape {tuple(x.shape[1:])}"
        try:
            if layer.kind == "linear":
                if x.dim() != 2:
                    raise ValueError("Linear needs a flat input (add nn.Flatten() first)")
                x = F.linear(x, *zeros)
            elif layer.kind == "conv2d":
                if x.dim() != 4:
                    raise ValueError("Conv2d needs a (channels, height, width) input")
                x = F.conv2d(x, *zeros, stride=layer.option("stride"), padding=layer.option("padding"),
                             dilation=layer.option("dilation"))
            elif layer.kind in ("avgpool2d", "maxpool2d"):
                if x.dim() != 4:
                    raise ValueError("pooling needs a (channels, height, width) input")
                pool = F.avg_pool2d if layer.kind == "avgpool2d" else F.max_pool2d
                x = pool(x, kernel_size=layer.option("kernel_size"), stride=layer.option("stride"),
                         padding=layer.option("padding"))
            elif layer.kind == "flatten":
                x = x.flatten(1)
            elif layer.kind == "affine":
                if zeros[0].numel() != x.shape[1]:
                    raise ValueError(f"the per-channel affine has {zeros[0].numel()} channels, "
                                     f"the input {x.shape[1]}")
                shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
                x = x * zeros[0].reshape(shape) + zeros[1].reshape(shape)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
            raise ValueError(f"{where}: {error}") from None
        if max_activation is not None and x[0].numel() > max_activation:
            raise ValueError(f"{where}: its output has {x[0].numel()} elements per example, more than the "
                             f"limit {max_activation}")
    return tuple(x.shape[1:])

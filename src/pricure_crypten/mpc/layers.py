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


def specs_output_shape(layers: Sequence[LayerSpec], input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one example's output, from the layer specs alone (a dry run on zeros).

    Runs where only shares are at hand (a server checking an uploaded bundle):
    only the parameters' SHAPES are used, never their values. Raises
    ``ValueError`` naming the first layer whose shapes do not fit, or a layer
    order the stacked evaluation does not support.
    """
    import torch.nn.functional as F

    x = torch.zeros((1,) + tuple(int(s) for s in input_shape))
    for index, layer in enumerate(layers):
        zeros = [torch.zeros(tuple(p.shape)) for p in layer.params]
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
                shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
                x = x * zeros[0].reshape(shape) + zeros[1].reshape(shape)
            elif layer.kind not in ("relu", "square"):
                raise ValueError(f"unsupported layer kind {layer.kind!r}")
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
            raise ValueError(f"{where}: {error}") from None
    return tuple(x.shape[1:])

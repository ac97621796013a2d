"""Server side: K owners' layers, stacked, as ``crypten.nn`` modules holding this server's shares.

Runs inside a server process (a CrypTen party). Who sees what: a module holds
only this server's additive shares of the K owners' parameters (registered
CrypTen parameters, ``MPCTensor`` built with ``MPCTensor.from_shares``) and the
public hyper-parameters (attributes: kernel sizes, strides, K, the layout).
Its input and output are shares too; nothing is decoded, and
:meth:`~EncryptedFromShares.encrypt` only marks a module encrypted (its
parameters already are shares) while decrypting is refused.

K owners of one architecture are stacked so that each layer is one MPC
operation for all K at once, and the number of communication rounds does not
depend on K:

* the first Conv2d on the (common) query: one convolution with K*O output
  channels; later Conv2d layers: one grouped convolution (``groups=K``);
* the first Linear on the query: one matmul with the K weight matrices
  concatenated; later Linear layers: one batched matmul ``(K,B,F) @ (K,F,O)``;
* an unfolded BatchNorm (``affine``): one per-channel scale and shift;
* ReLU, Square, pooling, Flatten: one elementwise / local operation on the stack.

Activations move through three layouts: ``shared`` (B, ...) while no
owner-specific layer has run, ``spatial`` (B, K*C, H, W) (owner k's channels
are ``k*C .. (k+1)*C-1``) and ``flat`` (K, B, F). A module knows its input
layout; :func:`stacked_module` is THE mapping from a layer spec to a module
and the layout after it, used by :class:`StackedNetwork` and by the naive
baseline (:mod:`.baseline`, one K=1 network per owner).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._crypten import MPCTensor, crypten
from .layers import LAYER_SCHEMA, LayerSpec
from .sharing import FRACTIONAL_BITS

LAYOUTS = ("shared", "spatial", "flat")


def load_share(share: Any) -> MPCTensor:
    """This server's int64 share of a fixed-point value, as an ``MPCTensor`` (no communication)."""
    array = np.ascontiguousarray(share)
    if array.dtype != np.int64:
        raise TypeError(f"a share must be int64 ring elements, got dtype {array.dtype}")
    return MPCTensor.from_shares(torch.as_tensor(array), precision=FRACTIONAL_BITS)


class EncryptedFromShares:
    """Mixin for modules whose parameters are shares from the start.

    ``encrypt()`` only marks the module (and its children) encrypted: there is
    no plaintext to encrypt. ``encrypt(False)`` / ``decrypt()`` are refused: a
    server holds one share, and decoding is never done on a server.
    """

    def encrypt(self, mode: bool = True, src: int = 0) -> EncryptedFromShares:
        if not mode:
            raise RuntimeError(
                f"{type(self).__name__} holds this server's shares only; it cannot be decrypted "
                f"(servers never decode)"
            )
        self.encrypted = True
        for child in self.children():
            child.encrypt(mode=True, src=src)
        return self


class StackedModule(EncryptedFromShares, crypten.nn.Module):
    """Base of the stacked layers: K owners, one input layout, encrypted from construction.

    Args:
        num_owners: K (public).
        layout: the input layout, one of ``shared``, ``spatial``, ``flat`` (public).
    """

    KIND = ""  # the layer kind (LayerSpec.kind) this module evaluates

    def __init__(self, *, num_owners: int, layout: str) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown activation layout {layout!r}; expected one of {LAYOUTS}")
        if isinstance(num_owners, bool) or not isinstance(num_owners, (int, np.integer)) or num_owners < 1:
            raise ValueError(f"num_owners must be a positive int, got {num_owners!r}")
        self.num_owners = int(num_owners)
        self.layout = layout
        self.encrypted = True
        self.training = False

    @property
    def layout_after(self) -> str:
        """The layout of this module's output (public)."""
        return self.layout

    def _register_share(self, name: str, share: np.ndarray) -> None:
        self.register_parameter(name, load_share(share), requires_grad=False)

    def _check_stack(self, name: str, share: np.ndarray, ndim: int) -> np.ndarray:
        share = np.asarray(share)
        if share.ndim != ndim or share.shape[0] != self.num_owners:
            raise ValueError(
                f"{type(self).__name__}: {name} must have shape (K={self.num_owners}, ...) with {ndim} "
                f"dimensions, got {share.shape}"
            )
        return share

    def extra_repr(self) -> str:
        return f"K={self.num_owners}, layout={self.layout}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()}) encrypted module"


class StackedConv2d(StackedModule):
    """K owners' Conv2d in one convolution; parameters: this server's shares.

    On the common query (``shared`` layout) it is one convolution with K*O
    output channels; on stacked activations (``spatial``) one grouped
    convolution, ``groups=K``. Output layout: ``spatial``.

    Args:
        weight: share of the stacked kernels, (K, O, I, kh, kw).
        bias: share of the stacked biases, (K, O).
        stride, padding, dilation: public options (pairs).

    Parameters: ``weight`` (K*O, I, kh, kw), ``bias`` (1, K*O, 1, 1).
    """

    KIND = "conv2d"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, *, num_owners: int, layout: str,
                 stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                 dilation: Sequence[int] = (1, 1)) -> None:
        super().__init__(num_owners=num_owners, layout=layout)
        if layout == "flat":
            raise ValueError("Conv2d after Flatten/Linear is not supported")
        weight = self._check_stack("weight", weight, 5)
        bias = self._check_stack("bias", bias, 2)
        k, out_ch, in_ch, kh, kw = weight.shape
        self.in_channels, self.out_channels, self.kernel_size = in_ch, out_ch, (kh, kw)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.groups = 1 if layout == "shared" else k
        self._register_share("weight", weight.reshape(k * out_ch, in_ch, kh, kw))
        self._register_share("bias", bias.reshape(1, k * out_ch, 1, 1))

    @property
    def layout_after(self) -> str:
        return "spatial"

    def forward(self, x: MPCTensor) -> MPCTensor:
        """(B, I, H, W) shared or (B, K*I, H, W) spatial -> (B, K*O, H', W')."""
        return x.conv2d(self.weight, stride=self.stride, padding=self.padding, dilation=self.dilation,
                        groups=self.groups) + self.bias


class StackedLinear(StackedModule):
    """K owners' Linear in one matmul; parameters: this server's shares.

    On the common query (``shared`` layout, (B, F)): one matmul with the K
    weight matrices concatenated, ``weight`` (F, K*O). On stacked activations
    (``flat``, (K, B, F)): one batched matmul, ``weight`` (K, F, O). Bias
    (K, 1, O). Output layout: ``flat``, (K, B, O).

    Args:
        weight: share of the stacked weights, (K, O, F).
        bias: share of the stacked biases, (K, O).
    """

    KIND = "linear"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, *, num_owners: int, layout: str) -> None:
        super().__init__(num_owners=num_owners, layout=layout)
        if layout == "spatial":
            raise ValueError("Linear on a 4-D activation is not supported; add nn.Flatten() first")
        weight = self._check_stack("weight", weight, 3)
        bias = self._check_stack("bias", bias, 2)
        k, out_f, in_f = weight.shape
        self.in_features, self.out_features = in_f, out_f
        if layout == "shared":
            self._register_share("weight", weight.transpose(2, 0, 1).reshape(in_f, k * out_f))
        else:
            self._register_share("weight", weight.transpose(0, 2, 1))
        self._register_share("bias", bias.reshape(k, 1, out_f))

    @property
    def layout_after(self) -> str:
        return "flat"

    def forward(self, x: MPCTensor) -> MPCTensor:
        """(B, F) shared or (K, B, F) flat -> (K, B, O)."""
        if self.layout == "flat":
            return x.matmul(self.weight) + self.bias
        if x.dim() != 2:
            raise ValueError("Linear on a multi-dimensional input needs nn.Flatten() first")
        out = x.matmul(self.weight)  # (B, K*O)
        return out.reshape(out.size(0), self.num_owners, self.out_features).permute(1, 0, 2) + self.bias


class StackedAffine(StackedModule):
    """K owners' unfolded BatchNorm (a per-channel ``x * scale + shift``); parameters: this server's shares.

    A BatchNorm that could not be folded into a preceding Linear/Conv2d. One
    multiplication (with truncation) and one addition for all K owners.
    Parameters ``scale`` and ``shift``: (1, K*C, 1, 1) in the ``spatial``
    layout, (K, 1, C) in the ``flat`` layout.

    Args:
        scale, shift: shares of the stacked per-channel scale and shift, (K, C).
    """

    KIND = "affine"

    def __init__(self, scale: np.ndarray, shift: np.ndarray, *, num_owners: int, layout: str) -> None:
        super().__init__(num_owners=num_owners, layout=layout)
        if layout == "shared":
            raise ValueError(
                "BatchNorm before any Linear/Conv2d layer is not supported; normalise the input instead"
            )
        scale = self._check_stack("scale", scale, 2)
        shift = self._check_stack("shift", shift, 2)
        self.num_features = scale.shape[1]
        shape = (1, -1, 1, 1) if layout == "spatial" else (self.num_owners, 1, -1)
        self._register_share("scale", scale.reshape(shape))
        self._register_share("shift", shift.reshape(shape))

    def forward(self, x: MPCTensor) -> MPCTensor:
        """Same shape and layout as the input."""
        return x * self.scale + self.shift


class StackedReLU(StackedModule):
    """ReLU on the whole stack (one comparison circuit for all K owners). No parameters."""

    KIND = "relu"

    def forward(self, x: MPCTensor) -> MPCTensor:
        return x.relu()


class StackedSquare(StackedModule):
    """The activation x*x on the whole stack (one Beaver square and truncation). No parameters."""

    KIND = "square"

    def forward(self, x: MPCTensor) -> MPCTensor:
        return x.square()


class _StackedPool2d(StackedModule):
    """Channel-wise pooling over all K*C stacked channels at once. No parameters.

    Args:
        kernel_size, stride, padding: public options (pairs).
    """

    def __init__(self, *, num_owners: int, layout: str, kernel_size: Sequence[int],
                 stride: Sequence[int] | None = None, padding: Sequence[int] = (0, 0)) -> None:
        super().__init__(num_owners=num_owners, layout=layout)
        if layout == "flat":
            raise ValueError(f"{type(self).__name__} after Flatten is not supported")
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride) if stride is not None else self.kernel_size
        self.padding = tuple(padding)


class StackedAvgPool2d(_StackedPool2d):
    """AvgPool2d (count_include_pad=True) on all stacked channels: a local sum and one truncation."""

    KIND = "avgpool2d"

    def forward(self, x: MPCTensor) -> MPCTensor:
        return x.avg_pool2d(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)


class StackedMaxPool2d(_StackedPool2d):
    """MaxPool2d on all stacked channels: one comparison tree for all K owners."""

    KIND = "maxpool2d"

    def forward(self, x: MPCTensor) -> MPCTensor:
        return x.max_pool2d(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)


class StackedFlatten(StackedModule):
    """Flatten, a local reshape. No parameters.

    ``shared`` (B, ...) -> ``shared`` (B, F); ``spatial`` (B, K*C, H, W) ->
    ``flat`` (K, B, C*H*W); ``flat`` stays as it is.
    """

    KIND = "flatten"

    @property
    def layout_after(self) -> str:
        return "shared" if self.layout == "shared" else "flat"

    def forward(self, x: MPCTensor) -> MPCTensor:
        if self.layout == "shared":
            return x.reshape(x.size(0), -1)
        if self.layout == "spatial":
            return x.reshape(x.size(0), self.num_owners, -1).permute(1, 0, 2)
        return x


_MODULES: dict[str, type[StackedModule]] = {
    cls.KIND: cls
    for cls in (StackedConv2d, StackedLinear, StackedAffine, StackedReLU, StackedSquare, StackedAvgPool2d,
                StackedMaxPool2d, StackedFlatten)
}


def stacked_module(layer: LayerSpec, num_owners: int, layout: str) -> tuple[StackedModule, str]:
    """THE layer mapping: a stacked layer spec on an input ``layout`` -> (module, layout after it).

    ``layer.params`` are this server's int64 shares with a leading owner
    dimension K (see ``parties.owner.stack_shares``); ``layer.options`` are
    passed as keyword arguments (public hyper-parameters).
    """
    cls = _MODULES.get(layer.kind)
    if cls is None:
        raise ValueError(f"the stacked evaluation does not support layer kind {layer.kind!r}")
    allowed = LAYER_SCHEMA[layer.kind]["options"]
    unknown = [name for name, _ in layer.options if name not in allowed]
    if unknown:  # a ValueError naming it, never a TypeError from the constructor
        raise ValueError(f"unknown option {unknown[0]!r} for layer kind {layer.kind!r} "
                         f"(allowed: {', '.join(allowed) or 'none'})")
    module = cls(*layer.params, num_owners=num_owners, layout=layout, **dict(layer.options))
    return module, module.layout_after


class StackedNetwork(EncryptedFromShares, crypten.nn.Sequential):
    """A CrypTen module: K same-architecture owners, stacked, on this server's shares.

    A ``crypten.nn.Sequential`` of the modules :func:`stacked_module` maps the
    layers to; its parameters (``named_parameters()``) are this server's
    shares of every owner's parameters, nothing else.

    Args:
        layers: the stacked layers (parameters are this server's int64 shares
            with a leading owner dimension K), from ``parties.owner.stack_shares``.
        num_owners: K.
    """

    def __init__(self, layers: Sequence[LayerSpec], num_owners: int) -> None:
        modules = []
        layout = "shared"
        for index, layer in enumerate(layers):
            try:
                module, layout = stacked_module(layer, num_owners, layout)
            except ValueError as error:
                raise ValueError(f"layer {index} ({layer.kind}): {error}") from None
            modules.append(module)
        if layout != "flat":
            raise ValueError("the stacked network must end in a Linear layer producing logits")
        super().__init__(*modules)
        self.num_owners = int(num_owners)
        self.encrypt()
        self.eval()

    def forward(self, x: MPCTensor) -> MPCTensor:
        """(B, *input_shape) query shares -> (K, B, classes) logit shares."""
        return super().forward(x)

    def stages(self) -> list[tuple[str, StackedModule]]:
        """The forward as named steps ``"<index>:<kind>"``, for profiling (applied in order, same result)."""
        return [(f"{name}:{module.KIND}", module) for name, module in self.named_children()]

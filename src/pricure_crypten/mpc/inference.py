"""Server side: every owner's model on the shared query batch, in ONE batched pass.

Runs inside a server process (a CrypTen party). Inputs and parameters are
``MPCTensor`` shares; nothing is decoded. K owners of one architecture are
stacked so that each layer is one MPC operation for all K at once, and the
number of communication rounds does not depend on K:

* the first Conv2d on the (common) query: one convolution with K*O output
  channels; later Conv2d layers: one grouped convolution (``groups=K``);
* the first Linear on the query: one matmul with the K weight matrices
  concatenated; later Linear layers: one batched matmul ``(K,B,F) @ (K,F,O)``;
* ReLU, pooling, Flatten: one elementwise / local operation on the stack.

Activations move through three layouts: ``shared`` (B, ...) while no
owner-specific layer has run, ``spatial`` (B, K*C, H, W) and ``flat``
(K, B, F). The output is the owners' logits, shape (K, B, classes).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._crypten import MPCTensor, crypten
from .layers import LayerSpec
from .sharing import FRACTIONAL_BITS

Op = Callable[[MPCTensor], MPCTensor]


def _load(share) -> MPCTensor:
    return MPCTensor.from_shares(torch.as_tensor(share), precision=FRACTIONAL_BITS)


class StackedNetwork(crypten.nn.Module):
    """A CrypTen module: K same-architecture owners, stacked, on this server's shares.

    Args:
        layers: the stacked layers (parameters are this server's int64 shares
            with a leading owner dimension K), from :func:`owners.stack_shares`.
        num_owners: K.
    """

    def __init__(self, layers: list[LayerSpec], num_owners: int) -> None:
        super().__init__()
        self.num_owners = num_owners
        self._ops: list[Op] = []
        layout = "shared"
        for layer in layers:
            op, layout = self._build(layer, layout)
            self._ops.append(op)
        if layout != "flat":
            raise ValueError("the stacked network must end in a Linear layer producing logits")
        self.encrypt()  # parameters are already shares; this only marks the module encrypted

    def forward(self, x: MPCTensor) -> MPCTensor:
        """(B, *input_shape) query shares -> (K, B, classes) logit shares."""
        for op in self._ops:
            x = op(x)
        return x

    # -- one builder per layer kind; each returns (operation, layout after it) --

    def _build(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        builder = getattr(self, f"_build_{layer.kind}")
        return builder(layer, layout)

    def _build_conv2d(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        k = self.num_owners
        weight, bias = layer.params  # (K, O, I, kh, kw), (K, O)
        _, out_ch, in_ch, kh, kw = weight.shape
        if layout == "flat":
            raise ValueError("Conv2d after Flatten/Linear is not supported")
        kernel = _load(weight.reshape(k * out_ch, in_ch, kh, kw))
        bias_t = _load(bias.reshape(1, k * out_ch, 1, 1))
        groups = 1 if layout == "shared" else k
        opts = dict(stride=layer.option("stride"), padding=layer.option("padding"),
                    dilation=layer.option("dilation"), groups=groups)
        return (lambda x: x.conv2d(kernel, **opts) + bias_t), "spatial"

    def _build_linear(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        k = self.num_owners
        weight, bias = layer.params  # (K, O, F), (K, O)
        _, out_f, in_f = weight.shape
        bias_t = _load(bias.reshape(k, 1, out_f))
        if layout == "spatial":
            raise ValueError("Linear on a 4-D activation is not supported; add nn.Flatten() first")
        if layout == "shared":
            # (B, F) @ (F, K*O) -> (B, K, O) -> (K, B, O): one matmul for all owners.
            w_cat = _load(weight.transpose(2, 0, 1).reshape(in_f, k * out_f))

            def first_linear(x: MPCTensor) -> MPCTensor:
                if x.dim() != 2:
                    raise ValueError("Linear on a multi-dimensional input needs nn.Flatten() first")
                out = x.matmul(w_cat)
                return out.reshape(out.size(0), k, out_f).permute(1, 0, 2) + bias_t

            return first_linear, "flat"
        w_batched = _load(weight.transpose(0, 2, 1))  # (K, F, O)
        return (lambda x: x.matmul(w_batched) + bias_t), "flat"

    def _build_affine(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        """A BatchNorm that could not be folded into a preceding Linear/Conv2d."""
        k = self.num_owners
        scale, shift = layer.params  # (K, C) each
        if layout == "shared":
            raise ValueError("BatchNorm before any Linear/Conv2d layer is not supported; normalise the input instead")
        shape = (1, -1, 1, 1) if layout == "spatial" else (k, 1, -1)
        scale_t, shift_t = _load(scale.reshape(shape)), _load(shift.reshape(shape))
        return (lambda x: x * scale_t + shift_t), layout

    def _build_relu(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        return (lambda x: x.relu()), layout

    def _build_square(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        return (lambda x: x.square()), layout

    def _build_pool(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        """AvgPool2d / MaxPool2d: one channel-wise pooling over all K*C stacked channels."""
        opts = dict(kernel_size=layer.option("kernel_size"), stride=layer.option("stride"),
                    padding=layer.option("padding"))
        if layout == "flat":
            raise ValueError(f"{layer.kind} after Flatten is not supported")
        method = "avg_pool2d" if layer.kind == "avgpool2d" else "max_pool2d"
        return (lambda x: getattr(x, method)(**opts)), layout

    _build_avgpool2d = _build_maxpool2d = _build_pool

    def _build_flatten(self, layer: LayerSpec, layout: str) -> tuple[Op, str]:
        k = self.num_owners
        if layout == "shared":
            return (lambda x: x.reshape(x.size(0), -1)), "shared"
        if layout == "spatial":
            def flatten(x: MPCTensor) -> MPCTensor:
                batch = x.size(0)
                return x.reshape(batch, k, -1).permute(1, 0, 2)

            return flatten, "flat"
        return (lambda x: x), "flat"

"""Server side, for comparison only: naive CrypTen, one ``crypten.nn`` module per owner.

The baseline that benchmarks compare the stacked evaluation against: each
owner's model becomes an ordinary ``crypten.nn.Sequential`` (CrypTen's own
Conv2d, Linear, ReLU, pooling and Flatten modules) holding this server's
shares of its parameters, and the K modules are evaluated one after the
other, so rounds grow linearly with K. The aggregation afterwards is the same
encrypted aggregation layer. Same shares, same privacy; only the schedule
differs.
"""

from __future__ import annotations

import torch

from ._crypten import MPCTensor, crypten
from .layers import LayerSpec
from .sharing import FRACTIONAL_BITS

cnn = crypten.nn


def _module(layer: LayerSpec) -> cnn.Module:
    if layer.kind == "linear":
        out_f, in_f = layer.params[0].shape
        return cnn.Linear(in_f, out_f)
    if layer.kind == "conv2d":
        out_ch, in_ch, kh, kw = layer.params[0].shape
        return cnn.Conv2d(in_ch, out_ch, (kh, kw), stride=layer.option("stride"),
                          padding=layer.option("padding"), dilation=layer.option("dilation"))
    if layer.kind == "relu":
        return cnn.ReLU()
    if layer.kind == "square":
        return cnn.Square()
    if layer.kind in ("avgpool2d", "maxpool2d"):
        cls = cnn.AvgPool2d if layer.kind == "avgpool2d" else cnn.MaxPool2d
        return cls(layer.option("kernel_size"), stride=layer.option("stride"), padding=layer.option("padding"))
    if layer.kind == "flatten":
        return cnn.Flatten()
    raise ValueError(f"the naive CrypTen baseline does not support layer kind {layer.kind!r}")


def owner_module(layers: tuple[LayerSpec, ...]) -> cnn.Sequential:
    """One owner's model as an encrypted ``crypten.nn.Sequential`` holding this server's shares."""
    modules = [_module(layer) for layer in layers]
    model = cnn.Sequential(*modules).encrypt()  # encrypts the placeholder parameters
    for module, layer in zip(modules, layers):
        if layer.params:
            weight, bias = (MPCTensor.from_shares(torch.from_numpy(p), precision=FRACTIONAL_BITS)
                            for p in layer.params)
            module.set_parameter("weight", weight)
            module.set_parameter("bias", bias)
    return model


class SequentialOwners(cnn.Module):
    """K per-owner CrypTen modules evaluated one after the other; output (K, B, classes)."""

    def __init__(self, owners_layers: list[tuple[LayerSpec, ...]]) -> None:
        super().__init__()
        self.owner_models = [owner_module(layers) for layers in owners_layers]
        self.num_owners = len(self.owner_models)
        self.encrypt()

    def forward(self, x: MPCTensor) -> MPCTensor:
        return crypten.stack([model(x) for model in self.owner_models], dim=0)

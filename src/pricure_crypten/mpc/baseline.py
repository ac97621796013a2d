"""Server side, for comparison only: naive CrypTen, one network per owner, evaluated in turn.

The baseline that benchmarks compare the stacked evaluation against: each
owner's model becomes its own CrypTen module, a K=1 :class:`StackedNetwork`
(the same layer modules and the same layer mapping,
:func:`.stacked.stacked_module`), holding this server's shares of that
owner's parameters; the K networks are evaluated one after the other, so
rounds grow linearly with K. The aggregation afterwards is the same encrypted
aggregation layer. Same shares, same privacy; only the schedule differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._crypten import MPCTensor, crypten
from .layers import LayerSpec
from .stacked import EncryptedFromShares, StackedNetwork

cnn = crypten.nn


def owner_network(layers: Sequence[LayerSpec]) -> StackedNetwork:
    """One owner's model (this server's shares, no owner dimension) as a K=1 stacked network."""
    stacked = [LayerSpec(layer.kind, layer.options, tuple(np.asarray(p)[np.newaxis] for p in layer.params))
               for layer in layers]
    return StackedNetwork(stacked, 1)


class SequentialOwners(EncryptedFromShares, cnn.Module):
    """K per-owner CrypTen networks evaluated one after the other; output (K, B, classes).

    Args:
        owners_layers: for each owner, its layers with this server's shares of its parameters.
    """

    def __init__(self, owners_layers: Sequence[Sequence[LayerSpec]]) -> None:
        super().__init__()
        self.owner_models = cnn.ModuleList([owner_network(layers) for layers in owners_layers])
        self.num_owners = len(self.owner_models)
        self.encrypt()
        self.eval()

    def forward(self, x: MPCTensor) -> MPCTensor:
        """(B, *input_shape) query shares -> (K, B, classes) logit shares."""
        return crypten.stack([model(x)[0] for model in self.owner_models], dim=0)

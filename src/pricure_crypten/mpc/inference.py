"""Server side: every owner's model on the shared query batch, in ONE batched pass.

Runs inside a server process (a CrypTen party). Inputs and parameters are
``MPCTensor`` shares; nothing is decoded. :class:`StackedNetwork` stacks K
owners of one architecture so that each layer is one MPC operation for all K
at once, and the number of communication rounds does not depend on K. It is a
``crypten.nn.Sequential`` of the stacked layer modules of :mod:`.stacked`
(where the layer mapping, the activation layouts and who sees what are
described); it is re-exported here, its historical import path.
"""

from __future__ import annotations

from .stacked import StackedNetwork, stacked_module

__all__ = ["StackedNetwork", "stacked_module"]

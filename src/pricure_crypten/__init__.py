"""pricure-crypten: private collaborative prediction (PRICURE) on CrypTen.

Importing this package first makes CrypTen 0.4.1 work on current PyTorch
(see :mod:`pricure_crypten._compat`), so ``import pricure_crypten`` followed
by ``import crypten`` gives a working crypten.

The path of a query, one module per step: :mod:`owners` (share models) ->
:mod:`client` (share queries) -> :mod:`servers` / :mod:`server` (CrypTen
parties) with :mod:`dealer` (correlated randomness) -> :mod:`inference`
(stacked owners) -> :mod:`aggregation` with :mod:`noise` -> the one reveal in
:meth:`Client.reveal`. :mod:`service` wires them together.
"""

from ._compat import applied_patches, apply as _apply_compat

_apply_compat()

from .client import ABSTAIN, Client  # noqa: E402
from .layers import UnsupportedLayerError  # noqa: E402
from .noise import calibrate  # noqa: E402
from .owners import ModelOwner  # noqa: E402
from .randomness import SecureRandom  # noqa: E402
from .servers import ServerError  # noqa: E402
from .service import Cost, Prediction, PrivateEnsemble  # noqa: E402
from .sharing import FRACTIONAL_BITS, SAFE_MAX_ABS, decode, encode, reconstruct, share  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "Client",
    "Cost",
    "FRACTIONAL_BITS",
    "ModelOwner",
    "Prediction",
    "PrivateEnsemble",
    "SAFE_MAX_ABS",
    "SecureRandom",
    "ServerError",
    "UnsupportedLayerError",
    "applied_patches",
    "calibrate",
    "decode",
    "encode",
    "reconstruct",
    "share",
]

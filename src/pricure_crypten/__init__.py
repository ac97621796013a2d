"""pricure-crypten: private collaborative prediction (PRICURE) on CrypTen.

The layers, lowest first (a module imports only its own layer or lower ones):

* :mod:`._validation` and :mod:`._compat` (CrypTen 0.4.1 on current torch);
* :mod:`.mpc`: what runs inside a CrypTen party, on shares only;
* :mod:`.privacy`: noise mechanisms and the per-client budget (no CrypTen);
* :mod:`.config`: the validated settings objects;
* :mod:`.parties`: owners, clients, servers, the dealer and their processes;
* :mod:`.ensemble`: :class:`PrivateEnsemble`, the public API;
* :mod:`.experiments`: data, models, training, the plaintext reference and
  the demo; evaluation only, sees everything, never imported by the layers above.

Importing this package is light: the public names below load on first use,
and the compatibility layer is applied on the first ``import crypten``
(so ``import pricure_crypten`` followed by ``import crypten`` works on
current torch, and ``pricure budget`` never loads CrypTen).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._compat import applied_patches, install_import_hook  # noqa: F401  (applied_patches is public)

install_import_hook()

__version__ = "0.1.0"

_PUBLIC = {
    "ABSTAIN": ".parties.client",
    "Client": ".parties.client",
    "ModelOwner": ".parties.owner",
    "UnsupportedLayerError": ".mpc.layers",
    "SecureRandom": ".mpc.randomness",
    "FRACTIONAL_BITS": ".mpc.sharing",
    "SAFE_MAX_ABS": ".mpc.sharing",
    "decode": ".mpc.sharing",
    "encode": ".mpc.sharing",
    "reconstruct": ".mpc.sharing",
    "share": ".mpc.sharing",
    "calibrate": ".privacy.noise",
    "LaplaceNoise": ".privacy.noise",
    "GaussianNoise": ".privacy.noise",
    "NoNoise": ".privacy.noise",
    "ConfidentGNMax": ".privacy.noise",
    "Aggregation": ".config",
    "Batching": ".config",
    "Cluster": ".config",
    "ExperimentOptions": ".config",
    "Offline": ".config",
    "OfflineCost": ".ensemble",
    "InsecureProviderWarning": ".config",
    "InsecureSeedWarning": ".config",
    "ServerError": ".parties.cluster",
    "Cost": ".ensemble",
    "EnsembleClosedError": ".ensemble",
    "Prediction": ".ensemble",
    "Labelling": ".ensemble",
    "NOT_SENT": ".ensemble",
    "PrivateEnsemble": ".ensemble",
}

__all__ = sorted([*_PUBLIC, "applied_patches"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pricure_crypten' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])

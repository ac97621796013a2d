"""pricure-crypten: private collaborative prediction (PRICURE) on CrypTen.

Importing this package first makes CrypTen 0.4.1 work on current PyTorch
(see :mod:`pricure_crypten._compat`), so ``import pricure_crypten`` followed
by ``import crypten`` gives a working crypten.
"""

from ._compat import applied_patches, apply as _apply_compat

_apply_compat()

from .randomness import SecureRandom  # noqa: E402
from .sharing import (  # noqa: E402
    FRACTIONAL_BITS,
    SAFE_MAX_ABS,
    decode,
    encode,
    reconstruct,
    share,
)

__version__ = "0.1.0"

__all__ = [
    "FRACTIONAL_BITS",
    "SAFE_MAX_ABS",
    "SecureRandom",
    "applied_patches",
    "decode",
    "encode",
    "reconstruct",
    "share",
]

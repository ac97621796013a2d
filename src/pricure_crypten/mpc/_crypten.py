"""CrypTen, imported after the compatibility layer (:mod:`pricure_crypten._compat`) is in place."""

from .._compat import apply

apply()

import crypten  # noqa: E402
import crypten.communicator  # noqa: E402,F401
import crypten.nn  # noqa: E402,F401
from crypten.mpc import MPCTensor  # noqa: E402

__all__ = ["MPCTensor", "crypten"]

"""Fixed-point encoding and additive secret sharing, for the parties that are not servers.

Model owners share their weights and the client shares its queries with these
functions; the servers load the shares into CrypTen with
``MPCTensor.from_shares(share, precision=FRACTIONAL_BITS)``.

Who sees what: the party that calls :func:`share` sees its own plaintext and
all N shares; it sends share ``i`` to server ``i`` only. A server sees one
share, a uniformly random element of Z/2^64 whatever the value (any N-1
shares are jointly uniform). Only :func:`reconstruct`, called by the client
on the N result shares, turns shares back into a value.

Encoding (CrypTen's default ``FixedPointEncoder``): ``round(x * 2**16)`` as a
64-bit two's-complement integer; arithmetic is modulo 2**64 (int64
wraparound). Values are refused, not wrapped, when ``|x| > max_abs``: the
default bound ``SAFE_MAX_ABS = 2**15`` keeps a product of two encoded values
(scaled by 2**32 before CrypTen truncates it) below 2**62, and comparisons far
from the ring's sign bit. ``max_abs`` may be raised to ``REPRESENTABLE_MAX_ABS``
(2**46) for values that are only added, never multiplied.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from .._validation import check_int
from .randomness import SecureRandom

FRACTIONAL_BITS = 16
SCALE = 2**FRACTIONAL_BITS
RING_BITS = 64
SAFE_MAX_ABS = float(2**15)
REPRESENTABLE_MAX_ABS = float(2**46)

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real-valued tensor, got dtype {x.dtype}")
        array = x.detach().cpu().double().numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or not (
            np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
        ):
            raise TypeError(f"{name} must be a real-valued array, got dtype {x.dtype}")
        array = x.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, not {type(x).__name__}"
        )
    return array


def encode(x: ArrayLike, *, max_abs: float = SAFE_MAX_ABS, name: str = "value") -> np.ndarray:
    """Encode real values as CrypTen fixed-point ring elements (int64).

    Raises:
        TypeError: ``x`` is not a real-valued tensor/array.
        ValueError: ``x`` holds NaN or inf, or a value with ``|x| > max_abs``.
    """
    if not 0 < max_abs <= REPRESENTABLE_MAX_ABS:
        raise ValueError(f"max_abs must be in (0, {REPRESENTABLE_MAX_ABS:g}], got {max_abs}")
    array = _as_float_array(x, name)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite entries; cannot encode")
    if array.size and np.max(np.abs(array)) > max_abs:
        raise ValueError(
            f"{name} has an entry of magnitude {np.max(np.abs(array)):.6g}, outside the "
            f"fixed-point range |x| <= {max_abs:g} that is safe from wraparound "
            f"(16 fractional bits in a 64-bit ring)"
        )
    return np.rint(array * SCALE).astype(np.int64)


def decode(encoded: np.ndarray) -> np.ndarray:
    """Decode int64 fixed-point ring elements to float64."""
    encoded = np.asarray(encoded)
    if encoded.dtype != np.int64:
        raise TypeError(f"encoded values must be int64 ring elements, got dtype {encoded.dtype}")
    return encoded.astype(np.float64) / SCALE


def _check_parties(num_parties: int) -> int:
    return check_int(num_parties, name="num_parties (additive secret sharing)", minimum=2)


def share_encoded(
    encoded: np.ndarray, *, num_parties: int, rng: SecureRandom | None = None
) -> list[np.ndarray]:
    """Split int64 ring elements into ``num_parties`` additive shares mod 2**64."""
    num_parties = _check_parties(num_parties)
    encoded = np.asarray(encoded)
    if encoded.dtype != np.int64:
        raise TypeError(f"encoded values must be int64 ring elements, got dtype {encoded.dtype}")
    rng = rng if rng is not None else SecureRandom()
    shares = [rng.ring_elements(encoded.shape) for _ in range(num_parties - 1)]
    with np.errstate(over="ignore"):
        last = encoded.copy()
        for s in shares:
            last -= s  # wraps modulo 2**64
    shares.append(last)
    return shares


def share(
    x: ArrayLike,
    *,
    num_parties: int,
    rng: SecureRandom | None = None,
    max_abs: float = SAFE_MAX_ABS,
    name: str = "value",
) -> list[np.ndarray]:
    """Encode ``x`` in fixed point and split it into ``num_parties`` additive shares.

    Shares ``0 .. N-2`` are uniform ring elements from a CSPRNG (``rng``,
    the OS CSPRNG by default); share ``N-1`` is the encoded value minus their
    sum, modulo 2**64. Share ``i`` is meant for server ``i`` only.
    """
    num_parties = _check_parties(num_parties)
    return share_encoded(encode(x, max_abs=max_abs, name=name), num_parties=num_parties, rng=rng)


def reconstruct_encoded(shares: Sequence[np.ndarray]) -> np.ndarray:
    """Sum all N shares modulo 2**64 (the encoded value)."""
    if isinstance(shares, (np.ndarray, torch.Tensor)) or len(shares) < 2:
        raise ValueError("reconstruction needs a sequence of at least 2 shares")
    arrays = [np.asarray(s.numpy() if isinstance(s, torch.Tensor) else s) for s in shares]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.dtype != np.int64:
            raise TypeError(f"share {i} must be int64, got dtype {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"share {i} has shape {a.shape}, expected {shape}")
    total = arrays[0].copy()
    with np.errstate(over="ignore"):
        for a in arrays[1:]:
            total += a
    return total


def reconstruct(shares: Sequence[np.ndarray]) -> np.ndarray:
    """Reconstruct the real values from all N shares (sum mod 2**64, then decode)."""
    return decode(reconstruct_encoded(shares))

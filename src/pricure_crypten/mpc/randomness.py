"""Cryptographically secure randomness for shares and DP noise.

Every random value that this package draws for a secret share or a noise
partial comes from :class:`SecureRandom`, never from torch's or numpy's
default generators (Mersenne Twister / PCG64 are predictable from their
outputs).

* ``SecureRandom()`` reads the operating system's CSPRNG (``os.urandom``,
  i.e. ``getrandom(2)`` on Linux). This is what the protocol uses.
* ``SecureRandom(seed=...)`` is a deterministic stream, SHAKE-256 of the seed
  and a call counter (an extendable-output function used as a PRG). It exists
  for reproducible tests and experiments only; a seed known to anyone makes
  every value it produces known too.

Continuous distributions are built from 53-bit uniforms by exact transforms
(Box-Muller for the normal, inversion for the exponential, Marsaglia-Tsang
rejection for the gamma), so their only approximation is double precision.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence, Union

import numpy as np

Shape = Union[int, Sequence[int]]

_TWO_POW_53 = float(2**53)


def _size(shape: Shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


class SecureRandom:
    """A cryptographically secure source of random numbers.

    Args:
        seed: ``None`` (default) for the OS CSPRNG; bytes, str or int for a
            deterministic SHAKE-256 stream (tests and experiments only).
    """

    def __init__(self, seed: bytes | str | int | None = None) -> None:
        if seed is None:
            self._key: bytes | None = None
        elif isinstance(seed, bytes):
            self._key = seed
        elif isinstance(seed, str):
            self._key = seed.encode("utf-8")
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            self._key = int(seed).to_bytes(32, "big", signed=True)
        else:
            raise TypeError(f"seed must be None, bytes, str or int, not {type(seed).__name__}")
        self._counter = 0

    @property
    def deterministic(self) -> bool:
        """True for a seeded (reproducible, not secret) stream."""
        return self._key is not None

    def random_bytes(self, n: int) -> bytes:
        """``n`` uniformly random bytes."""
        if n < 0:
            raise ValueError(f"number of bytes must be >= 0, got {n}")
        if self._key is None:
            return os.urandom(n)
        block = hashlib.shake_256(
            b"pricure-crypten/v1" + self._counter.to_bytes(8, "big") + self._key
        ).digest(n)
        self._counter += 1
        return block

    def ring_elements(self, shape: Shape) -> np.ndarray:
        """Uniform elements of the ring Z/2^64, as int64 (two's complement)."""
        size = _size(shape)
        count = int(np.prod(size, dtype=np.int64))
        return np.frombuffer(self.random_bytes(8 * count), dtype=np.int64).reshape(size).copy()

    def uniform(self, shape: Shape) -> np.ndarray:
        """Uniform floats in the open interval (0, 1), 53 random bits each."""
        bits = self.ring_elements(shape).view(np.uint64) >> np.uint64(11)
        return (bits.astype(np.float64) + 0.5) / _TWO_POW_53

    def standard_normal(self, shape: Shape) -> np.ndarray:
        """Standard normal variates (Box-Muller)."""
        size = _size(shape)
        count = int(np.prod(size, dtype=np.int64))
        half = (count + 1) // 2
        u1 = self.uniform(half)
        u2 = self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
        return z[:count].reshape(size)

    def exponential(self, shape: Shape, *, scale: float = 1.0) -> np.ndarray:
        """Exponential variates with the given scale (inversion)."""
        return -scale * np.log(self.uniform(shape))

    def gamma(self, shape_parameter: float, size: Shape, *, scale: float = 1.0) -> np.ndarray:
        """Gamma(k, scale) variates (Marsaglia-Tsang; boosted for k < 1)."""
        k = float(shape_parameter)
        if not np.isfinite(k) or k <= 0:
            raise ValueError(f"gamma shape parameter must be finite and > 0, got {shape_parameter}")
        out_size = _size(size)
        count = int(np.prod(out_size, dtype=np.int64))
        boost = k < 1.0
        d = (k + 1.0 if boost else k) - 1.0 / 3.0
        c = 1.0 / np.sqrt(9.0 * d)
        accepted = np.empty(0)
        while accepted.size < count:
            need = count - accepted.size
            batch = max(16, int(need * 1.2) + 8)
            x = self.standard_normal(batch)
            v = (1.0 + c * x) ** 3
            u = self.uniform(batch)
            ok = v > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                ok &= np.log(u) < 0.5 * x * x + d - d * v + d * np.log(np.where(v > 0, v, 1.0))
            accepted = np.concatenate([accepted, (d * v)[ok]])
        draws = accepted[:count]
        if boost:
            draws = draws * self.uniform(count) ** (1.0 / k)
        return (scale * draws).reshape(out_size)

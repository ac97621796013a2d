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
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

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


# -- TEST ONLY: seeded noise partials, for the per-query MPC-vs-simulation check --

TEST_ONLY_NOISE_ENV = "PRICURE_TEST_ONLY_SEEDED_NOISE"
"""The environment variable that must be ``1`` in every process that uses a :class:`TestOnlyNoiseSeed`."""

_logger = logging.getLogger("pricure_crypten.test_only_noise")


class TestOnlyNoiseWarning(UserWarning):
    """A :class:`TestOnlyNoiseSeed` was created: the DP noise is predictable (tests only)."""

    __test__ = False  # not a pytest test class


class TestOnlySeededNoiseRefused(RuntimeError):
    """A :class:`TestOnlyNoiseSeed` was used in a process without ``PRICURE_TEST_ONLY_SEEDED_NOISE=1``."""

    __test__ = False  # not a pytest test class


def require_test_only_noise_enabled(where: str) -> None:
    """Refuse (:class:`TestOnlySeededNoiseRefused`) unless ``PRICURE_TEST_ONLY_SEEDED_NOISE=1`` in THIS process."""
    if os.environ.get(TEST_ONLY_NOISE_ENV) != "1":
        raise TestOnlySeededNoiseRefused(
            f"{where}: seeded DP noise is for tests only (it makes the total noise known to anyone who knows the "
            f"seed: no differential privacy at all) and is refused unless {TEST_ONLY_NOISE_ENV}=1 is set in the "
            "environment of this process. Never set it in a deployment."
        )


@dataclass(frozen=True)
class TestOnlyNoiseSeed:
    """TEST ONLY: every server draws its DP noise partials from streams derived from this seed.

    With it, a plaintext simulation (:mod:`pricure_crypten.experiments.conformance`)
    reproduces the exact total noise of every query and class, so the labels of
    the MPC path and of the simulation can be compared query by query. Only the
    noise partials change: shares of models and queries, and CrypTen's own
    randomness (Beaver triples, the dealer), stay on their CSPRNGs.

    The partial of server ``r`` for the ``d``-th noise addition of the release
    of the ``j``-th row it computes (rows counted from 0 since the owners'
    shares were loaded, in the order of ``predict`` batches; rehearsals and
    profiles of the offline phase use the CSPRNG and count no rows) is drawn
    by the mechanism's own ``partial`` from ``SecureRandom`` seeded with
    ``(seed, r, j, d)`` (:meth:`stream`), so it does not depend on how rows are
    grouped into batches.

    Refused (:class:`TestOnlySeededNoiseRefused`) unless
    ``PRICURE_TEST_ONLY_SEEDED_NOISE=1`` is set, here and again in every server
    process that receives it; each use is logged at WARNING. It is reachable
    only through ``ExperimentOptions(test_only_noise_seed=...)`` of the
    in-process :class:`~pricure_crypten.PrivateEnsemble`, never from the CLI
    or the networked servers (``pricure serve``), which always use the CSPRNG.
    """

    seed: str
    __test__ = False  # not a pytest test class

    def __post_init__(self) -> None:
        if not isinstance(self.seed, str) or not self.seed:
            raise TypeError(f"TestOnlyNoiseSeed.seed must be a non-empty str, got {self.seed!r}")
        require_test_only_noise_enabled("TestOnlyNoiseSeed")
        warnings.warn(f"TEST ONLY: {self!r} makes every DP noise partial predictable (no privacy)",
                      TestOnlyNoiseWarning, stacklevel=3)

    def stream(self, *, server: int, row: int, draw: int) -> SecureRandom:
        """The deterministic stream of server ``server``'s partial for row ``row``, noise addition ``draw``."""
        return SecureRandom(seed=f"pricure-test-only-noise/{self.seed}/server-{server}/row-{row}/draw-{draw}")

    def batch(self, *, server: int, first_row: int, rows: int) -> "TestOnlyNoiseBatch":
        """The partials of server ``server`` for one batch of rows ``first_row .. first_row + rows - 1``."""
        return TestOnlyNoiseBatch(self, server=server, first_row=first_row, rows=rows)


class TestOnlyNoiseBatch:
    """TEST ONLY: one server's seeded partials for one batch (the rows' streams, noise additions in order)."""

    __test__ = False  # not a pytest test class

    def __init__(self, seed: TestOnlyNoiseSeed, *, server: int, first_row: int, rows: int) -> None:
        self.seed, self.server, self.first_row, self.rows = seed, int(server), int(first_row), int(rows)
        self.draws = 0

    def partial(self, partial: Callable[..., np.ndarray], shape: Shape, *, num_servers: int,
                colluding: int) -> np.ndarray:
        """``partial(shape, ...)`` for this batch, row by row from the rows' streams (shape[0] = rows)."""
        size = _size(shape)
        if not size or size[0] != self.rows:
            raise ValueError(f"test-only seeded noise: expected {self.rows} rows, got a draw of shape {size}")
        draw = self.draws
        self.draws += 1
        return np.stack([
            np.asarray(partial(size[1:], num_servers=num_servers, colluding=colluding,
                               rng=self.seed.stream(server=self.server, row=self.first_row + i, draw=draw)),
                       dtype=np.float64).reshape(size[1:])
            for i in range(self.rows)
        ]).reshape(size)


class TestOnlySeededServerNoise:
    """TEST ONLY: what a server keeps between batches in seeded mode (its rank and its row counter).

    Built by :meth:`enable` in the server process, which checks the
    environment variable there and logs the use at WARNING.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, seed: TestOnlyNoiseSeed, *, server: int) -> None:
        self.seed, self.server, self.next_row = seed, int(server), 0

    @classmethod
    def enable(cls, seed: Any, *, server: int) -> "TestOnlySeededServerNoise":
        if not isinstance(seed, TestOnlyNoiseSeed):
            raise TypeError(f"test_only_noise_seed must be a TestOnlyNoiseSeed, not {type(seed).__name__}")
        require_test_only_noise_enabled(f"server {server}")
        _logger.warning("TEST ONLY: server %d draws its DP noise partials from the seed %r: NO differential "
                        "privacy against anyone who knows the seed", server, seed.seed)
        return cls(seed, server=server)

    def next_batch(self, rows: int) -> TestOnlyNoiseBatch:
        batch = self.seed.batch(server=self.server, first_row=self.next_row, rows=rows)
        self.next_row += int(rows)
        return batch

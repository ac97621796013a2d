"""Gaussian noise, secret-shared as a sum of smaller Gaussians.

N(0, s^2) is the sum of m independent N(0, s^2 / m). With ``colluding = t``
each of the N servers draws N(0, s^2 / (N - t)), so any N - t honest partials
already sum to N(0, s^2); all N partials sum to N(0, s^2 N / (N - t)).
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
from diffprivlib.mechanisms import GaussianAnalytic

from ...mpc.randomness import SecureRandom, Shape
from .base import AdditiveNoise, check_split

SENSITIVITY_L2 = math.sqrt(2.0)  # one owner's vote (or probability vector) moves: ||h - h'||_2 <= sqrt(2)
DEFAULT_DELTA = 1e-5


def gaussian_partial(
    sigma: float, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
) -> np.ndarray:
    """One server's partial of N(0, sigma^2): N(0, sigma^2 / (N - t))."""
    m = check_split(num_servers, colluding)
    rng = rng if rng is not None else SecureRandom()
    return (sigma / math.sqrt(m)) * rng.standard_normal(shape)


class GaussianNoise(AdditiveNoise):
    """(epsilon, delta)-DP Gaussian noise, calibrated with the analytic Gaussian
    mechanism of Balle & Wang (2018) as implemented by diffprivlib's
    ``GaussianAnalytic`` (valid for every epsilon > 0, tighter than the classical
    ``sqrt(2 ln(1.25/delta))`` bound).

    Args:
        epsilon: per-release epsilon, > 0.
        delta: per-release delta, in (0, 1) (default 1e-5).
        sensitivity: L2 sensitivity of the released histogram (default
            sqrt(2): one owner's vote, or probability vector, moves).
    """

    name = "gaussian"

    def __init__(
        self, *, epsilon: float, delta: float = DEFAULT_DELTA, sensitivity: float = SENSITIVITY_L2
    ) -> None:
        super().__init__(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
        if self.delta <= 0.0:
            raise ValueError("the Gaussian mechanism needs delta > 0 (got 0); use laplace for pure epsilon-DP")
        self._scale = float(
            GaussianAnalytic(epsilon=self.epsilon, delta=self.delta, sensitivity=self.sensitivity)._scale
        )

    @property
    def scale(self) -> float:
        return self._scale

    def sample(self, shape: Shape, *, rng: SecureRandom | None = None) -> np.ndarray:
        rng = rng if rng is not None else SecureRandom()
        return self._scale * rng.standard_normal(shape)

    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        return gaussian_partial(self._scale, shape, num_servers=num_servers, colluding=colluding, rng=rng)

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_accounting.GaussianDpEvent(noise_multiplier=self._scale / self.sensitivity)

"""Laplace noise, secret-shared by Gamma differences.

Laplace(b) is infinitely divisible: if G_i, H_i are independent
Gamma(1/m, b), the sum over m servers of (G_i - H_i) is exactly Laplace(b).
With ``colluding = t`` every one of the N servers draws its partial with
``m = N - t``, so any N - t honest partials already sum to Laplace(b); the
total of all N partials is then a difference of two Gamma(N/m, b) (more noise,
never less).
"""

from __future__ import annotations

import dp_accounting
import numpy as np

from ...mpc.randomness import SecureRandom, Shape
from .base import AdditiveNoise, check_split

SENSITIVITY_L1 = 2.0  # one owner's vote (or probability vector) moves: ||h - h'||_1 <= 2


class LaplaceNoise(AdditiveNoise):
    """Pure epsilon-DP Laplace noise with scale b = sensitivity_L1 / epsilon.

    Args:
        epsilon: per-release epsilon, > 0.
        sensitivity: L1 sensitivity of the released histogram (default 2:
            one owner's vote, or probability vector, moves).
        delta: must be 0 (Laplace is pure epsilon-DP).
    """

    name = "laplace"

    def __init__(self, *, epsilon: float, sensitivity: float = SENSITIVITY_L1, delta: float = 0.0) -> None:
        super().__init__(epsilon=epsilon, delta=delta, sensitivity=sensitivity)
        if self.delta != 0.0:
            raise ValueError(f"the Laplace mechanism is pure epsilon-DP: delta must be 0, got {self.delta}")
        self._scale = self.sensitivity / self.epsilon

    @property
    def scale(self) -> float:
        return self._scale

    def sample(self, shape: Shape, *, rng: SecureRandom | None = None) -> np.ndarray:
        rng = rng if rng is not None else SecureRandom()
        return rng.exponential(shape, scale=self._scale) - rng.exponential(shape, scale=self._scale)

    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        m = check_split(num_servers, colluding)
        rng = rng if rng is not None else SecureRandom()
        return rng.gamma(1.0 / m, shape, scale=self._scale) - rng.gamma(1.0 / m, shape, scale=self._scale)

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_accounting.LaplaceDpEvent(noise_multiplier=self._scale / self.sensitivity)

"""No noise: epsilon = inf. Answers are exact and carry no DP guarantee."""

from __future__ import annotations

import dp_accounting
import numpy as np

from ..randomness import SecureRandom, Shape
from .base import check_split


class NoNoise:
    """The mechanism for epsilon = inf (no differential privacy)."""

    name = "none"
    epsilon = float("inf")
    delta = 0.0
    scale = 0.0

    def sample(self, shape: Shape, *, rng: SecureRandom | None = None) -> np.ndarray:
        return np.zeros(shape)

    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        check_split(num_servers, colluding)
        return np.zeros(shape)

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_accounting.NonPrivateDpEvent()

    def reference_mechanism(self, *, random_state: int | None = None) -> None:
        return None

    def __repr__(self) -> str:
        return "NoNoise(epsilon=inf)"

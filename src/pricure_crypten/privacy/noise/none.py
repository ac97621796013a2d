"""No noise: epsilon = inf. Answers are exact and carry no DP guarantee."""

from __future__ import annotations

import dp_accounting

from .base import NoiseMechanism, ReleaseOps, T


class NoNoise(NoiseMechanism):
    """The mechanism for epsilon = inf (no differential privacy): the exact argmax,
    exact ties to the lowest class index."""

    name = "none"
    epsilon = float("inf")
    delta = 0.0

    @property
    def scale(self) -> float:
        return 0.0

    @property
    def deterministic(self) -> bool:
        return True

    def release(self, histogram: T, ops: ReleaseOps[T]) -> T:
        return ops.argmax(histogram)

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_accounting.NonPrivateDpEvent()

    def __repr__(self) -> str:
        return "NoNoise(epsilon=inf)"

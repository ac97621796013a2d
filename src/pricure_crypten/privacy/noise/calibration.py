"""From (epsilon, delta, mechanism name, aggregation) to a calibrated noise mechanism.

Sensitivity of the released histogram (neighbouring datasets differ in one
training record of ONE owner, which can change at most that owner's model):

* ``vote``: the owner's one-hot vote moves from one class to another, so two
  counts move by 1: L1 sensitivity 2, L2 sensitivity sqrt(2).
* ``softmax``: the owner's probability vector p moves to q, both on the
  simplex: ||p - q||_1 <= 2 and ||p - q||_2 <= sqrt(2).

The histogram (per query) is then epsilon-DP (Laplace, b = 2 / epsilon) or
(epsilon, delta)-DP (analytic Gaussian, L2 sensitivity sqrt(2)); the revealed
noisy argmax is post-processing. Each query of a batch is one release.
"""

from __future__ import annotations

import math

from ..._validation import AGGREGATIONS, MECHANISM_NAMES, check_aggregation, check_choice, check_delta, check_epsilon
from .base import NoiseMechanism
from .gaussian import DEFAULT_DELTA, SENSITIVITY_L2, GaussianNoise
from .laplace import SENSITIVITY_L1, LaplaceNoise
from .none import NoNoise

MECHANISMS = MECHANISM_NAMES

#: Any calibrated mechanism (kept as an alias of the interface).
Mechanism = NoiseMechanism

__all__ = ["AGGREGATIONS", "MECHANISMS", "Mechanism", "calibrate", "check_aggregation", "check_mechanism"]


def check_mechanism(mechanism: str) -> str:
    return check_choice(mechanism, MECHANISMS, name="mechanism")


def calibrate(
    *, epsilon: float, delta: float | None = None, mechanism: str = "laplace", aggregation: str = "vote"
) -> NoiseMechanism:
    """The noise mechanism for one query's histogram.

    Args:
        epsilon: per-query epsilon > 0; ``inf`` gives :class:`NoNoise`.
        delta: per-query delta in [0, 1); ``None`` means 0 for Laplace and
            1e-5 for Gaussian.
        mechanism: ``"laplace"`` or ``"gaussian"``.
        aggregation: ``"vote"`` or ``"softmax"`` (both have L1 sensitivity 2
            and L2 sensitivity sqrt(2)).
    """
    check_mechanism(mechanism)
    check_aggregation(aggregation)
    epsilon = check_epsilon(epsilon)
    if delta is None:
        delta = 0.0 if mechanism == "laplace" else DEFAULT_DELTA
    delta = check_delta(delta)
    if math.isinf(epsilon):
        return NoNoise()
    if mechanism == "laplace":
        return LaplaceNoise(epsilon=epsilon, delta=delta, sensitivity=SENSITIVITY_L1)
    return GaussianNoise(epsilon=epsilon, delta=delta, sensitivity=SENSITIVITY_L2)

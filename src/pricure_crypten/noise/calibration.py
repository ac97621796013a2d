"""From (epsilon, delta, mechanism, aggregation) to a calibrated noise mechanism.

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
from typing import Union

from .base import check_delta, check_epsilon
from .confident_gnmax import ConfidentGNMax
from .gaussian import GaussianNoise
from .laplace import LaplaceNoise
from .none import NoNoise

AGGREGATIONS = ("vote", "softmax")
MECHANISMS = ("laplace", "gaussian")

SENSITIVITY_L1 = {"vote": 2.0, "softmax": 2.0}
SENSITIVITY_L2 = {"vote": math.sqrt(2.0), "softmax": math.sqrt(2.0)}

Mechanism = Union[LaplaceNoise, GaussianNoise, NoNoise, ConfidentGNMax]


def check_aggregation(aggregation: str) -> str:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    return aggregation


def check_mechanism(mechanism: str) -> str:
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r}; choose one of {', '.join(MECHANISMS)}")
    return mechanism


def calibrate(
    *, epsilon: float, delta: float | None = None, mechanism: str = "laplace", aggregation: str = "vote"
) -> Mechanism:
    """The noise mechanism for one query's histogram.

    Args:
        epsilon: per-query epsilon > 0; ``inf`` gives :class:`NoNoise`.
        delta: per-query delta in [0, 1); ``None`` means 0 for Laplace and
            1e-5 for Gaussian.
        mechanism: ``"laplace"`` or ``"gaussian"``.
        aggregation: ``"vote"`` or ``"softmax"``.
    """
    check_mechanism(mechanism)
    check_aggregation(aggregation)
    epsilon = check_epsilon(epsilon)
    if delta is None:
        delta = 0.0 if mechanism == "laplace" else 1e-5
    delta = check_delta(delta)
    if math.isinf(epsilon):
        return NoNoise()
    if mechanism == "laplace":
        return LaplaceNoise(epsilon=epsilon, delta=delta, sensitivity=SENSITIVITY_L1[aggregation])
    return GaussianNoise(epsilon=epsilon, delta=delta, sensitivity=SENSITIVITY_L2[aggregation])

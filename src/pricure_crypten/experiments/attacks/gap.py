"""The gap attack (Yeom et al. 2018): member if and only if the target labels the record correctly.

One query per record. Its AUC is ``(1 + TPR - FPR) / 2`` = 1/2 + half the
generalisation gap of the target, which makes it the baseline every
label-only attack must beat. Who sees what: the attacker sees one label per
record (``ABSTAIN`` counts as incorrect).
"""

from __future__ import annotations

import numpy as np

from .base import LabelOnlyAttack, check_records
from .oracle import LabelOracle


class GapAttack(LabelOnlyAttack):
    """Score 1 if the oracle's label equals the true label, else 0; threshold 0.5 (no calibration needed)."""

    name = "gap"

    def __init__(self) -> None:
        self.threshold = 0.5

    def scores(self, oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xs, ys = check_records(oracle, x, y)
        return (oracle(xs) == ys).astype(np.float64)

    def queries_per_record(self) -> int:
        return 1

    def calibrate(self, oracle, x_in, y_in, x_out, y_out) -> float:
        """The gap attack has nothing to calibrate: the threshold stays 0.5."""
        return self.threshold

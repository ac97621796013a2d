"""The interface of a label-only membership-inference attack.

Who sees what: an attack sees only what a client of the target sees, the
labels its :class:`~pricure_crypten.experiments.attacks.oracle.LabelOracle`
returns for the inputs it chooses, plus the records under test and their
true labels (the standard MI game: the attacker knows the record and asks
whether it was trained on). It never sees logits, votes, noise or
membership ground truth. Its threshold is calibrated on shadow owners
that it trains itself (:mod:`.shadow`), never on the target's members.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .metrics import best_threshold
from .oracle import LabelOracle


def check_records(oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float32 (N, *input_shape) and ``y`` as int64 (N,) labels of the oracle's task."""
    if not isinstance(oracle, LabelOracle):
        raise TypeError(f"oracle must be a LabelOracle, not {type(oracle).__name__}")
    xs = np.asarray(x, dtype=np.float32)
    ys = np.asarray(y).reshape(-1).astype(np.int64)
    if tuple(xs.shape[1:]) != oracle.input_shape or len(xs) != len(ys):
        raise ValueError(f"records {xs.shape} / labels {ys.shape} do not match input shape {oracle.input_shape}")
    if len(ys) and not (0 <= ys.min() and ys.max() < oracle.num_classes):
        raise ValueError(f"labels must be in range({oracle.num_classes})")
    return xs, ys


class LabelOnlyAttack(ABC):
    """Scores records by how "member-like" the target's labels are (higher = more likely a member).

    Attributes:
        threshold: the attacker's decision threshold (member iff score >= threshold);
            set by :meth:`calibrate` on shadow data, or a fixed default.
    """

    name: str = "attack"
    threshold: float = 0.5

    @abstractmethod
    def scores(self, oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One score per record (N,), from the oracle's labels only."""

    @abstractmethod
    def queries_per_record(self) -> int | None:
        """Queries the attack asks about one record (``None`` if adaptive, e.g. HopSkipJump)."""

    def calibrate(self, oracle: LabelOracle, x_in: np.ndarray, y_in: np.ndarray,
                  x_out: np.ndarray, y_out: np.ndarray) -> float:
        """Set :attr:`threshold` to maximise balanced accuracy on a SHADOW target's known members/non-members."""
        scores = np.concatenate([self.scores(oracle, x_in, y_in), self.scores(oracle, x_out, y_out)])
        truth = np.concatenate([np.ones(len(x_in), np.int64), np.zeros(len(x_out), np.int64)])
        self.threshold = best_threshold(truth, scores)
        return self.threshold

    def predict(self, oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Membership decisions (N,) in {0, 1} at :attr:`threshold`."""
        return (self.scores(oracle, x, y) >= self.threshold).astype(np.int64)

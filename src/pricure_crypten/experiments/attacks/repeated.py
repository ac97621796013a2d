"""Repeated queries: the attacker asks about the same record r times and takes the majority.

Per-query noise is fresh on every answer, so a client that repeats a query
averages the noise away: the score (the fraction of the r answers that equal
the true label) converges to what the noiseless ensemble would say. Each
answer costs the client one release, so the composed epsilon grows with r;
per-query noise alone does not protect, the per-client budget does
(:class:`~pricure_crypten.experiments.attacks.oracle.BudgetedOracle` or a
:class:`~pricure_crypten.PrivateEnsemble` with a ledger).

The attacker asks in rounds: each round is ONE call with every record once.
With a budget, the first round that does not fit is refused as a whole and
the attacker stops; every record then has the same number of answers.
Decision: member iff the majority of the answered queries is the true label
(score >= 1/2). Who sees what: the attacker sees r labels (or refusals) per record.
"""

from __future__ import annotations

import numpy as np

from ..._validation import check_int
from .base import LabelOnlyAttack, check_records
from .oracle import ABSTAIN, LabelOracle


class RepeatedQueryAttack(LabelOnlyAttack):
    """Ask each record ``repeats`` times; score = fraction of answered queries with the true label.

    Args:
        repeats: r, the queries per record (>= 1).

    After :meth:`scores`, :attr:`answered_rounds` says how many rounds were answered
    (fewer than r once a budget refuses; the score of a record with no answer is 1/2).
    """

    name = "repeated"

    def __init__(self, *, repeats: int) -> None:
        self.repeats = check_int(repeats, name="repeats", minimum=1)
        self.threshold = 0.5
        self.answered_rounds = 0

    def scores(self, oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xs, ys = check_records(oracle, x, y)
        correct = np.zeros(len(xs))
        self.answered_rounds = 0
        for _ in range(self.repeats):
            labels = oracle(xs)
            if (labels == ABSTAIN).all() and getattr(oracle, "refused", 0):
                break  # the budget refused this round: no further round will fit either
            correct += labels == ys
            self.answered_rounds += 1
        if self.answered_rounds == 0:
            return np.full(len(xs), 0.5)
        return correct / self.answered_rounds

    def queries_per_record(self) -> int:
        return self.repeats

    def calibrate(self, oracle, x_in, y_in, x_out, y_out) -> float:
        """Majority vote: the threshold stays 1/2."""
        return self.threshold

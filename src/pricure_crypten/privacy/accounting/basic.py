"""Basic (sequential) composition through diffprivlib's ``BudgetAccountant``.

``T`` releases of an (epsilon, delta)-DP mechanism are (T * epsilon,
1 - (1 - delta)^T)-DP (diffprivlib composes deltas as ``1 - prod(1 - delta_i)``,
which is at most ``sum(delta_i)``). Valid for every mechanism with an
(epsilon, delta) guarantee, including ones ``dp_accounting`` cannot compose,
and the only bound here that is finite at delta = 0 for pure epsilon-DP
(Laplace) releases. Loose for many queries.
"""

from __future__ import annotations

import math

from diffprivlib.accountant import BudgetAccountant

from .base import Accountant


class BasicAccountant(Accountant):
    """Sum of epsilons (and diffprivlib's composition of deltas).

    Each group of ``count`` identical releases is spent on diffprivlib's
    ``BudgetAccountant`` as ONE spend of ``(count * epsilon, 1 - (1 - delta)^count)``,
    so ``T`` identical queries cost exactly ``T * epsilon`` (no accumulated
    rounding) and thousands of queries stay O(1). The target delta passed to
    :meth:`spent` is ignored: the composed delta is returned.
    """

    name = "basic"

    def _spent(self, delta: float) -> tuple[float, float]:
        budget = BudgetAccountant(epsilon=math.inf, delta=1.0, slack=0.0)
        for cost, count in self.events:
            group_delta = 0.0 if cost.delta == 0.0 else -math.expm1(count * math.log1p(-cost.delta))
            budget.spend(count * cost.epsilon, min(group_delta, 1.0))
        epsilon, total_delta = budget.total(slack=0.0)
        return float(epsilon), float(total_delta)

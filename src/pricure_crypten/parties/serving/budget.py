"""How many rows of a pool still fit a client's budget: one answer for both modes.

Private labelling (``PrivateEnsemble.label`` in library mode,
``RemoteEnsemble.label`` against ``pricure serve`` servers) asks, before each
chunk, how many of its next rows fit the client's budget for the WORST case
of each row: :func:`rows_that_fit`, a binary search over the ledger's dry run
(:meth:`~pricure_crypten.privacy.accounting.PrivacyLedger.check`), which
writes nothing. :func:`worst_case` names that worst case per accounting mode
and refuses a mode the ledger or the mechanism cannot charge, before any MPC
work.

Who sees what: the ledger's party sees the client's identity, row counts and
the mechanism's cost (public), never a query. In the networked mode each
server answers for its own ledger and only about the calling client.
"""

from __future__ import annotations

from typing import Any, Optional

ACCOUNTING_MODES = ("conservative", "answered-only")


def check_accounting(accounting: Any) -> str:
    """``accounting`` if it is one of :data:`ACCOUNTING_MODES`, else ValueError naming them."""
    if not isinstance(accounting, str) or accounting not in ACCOUNTING_MODES:
        raise ValueError(f"accounting must be one of {ACCOUNTING_MODES}, got {accounting!r}")
    return accounting


def check_budget(budget: Any) -> Optional[float]:
    """An optional cap on the client's total spent epsilon: None, or a number > 0 (ValueError otherwise)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"budget must be an epsilon > 0 (or None: the ledger's budget), got {budget!r}")
    return float(budget)


def answered_only_costs(ledger: Any, client: str, mechanism: Any) -> Any:
    """The two charges of answered-only accounting, or an error if this ledger and mechanism cannot charge it.

    Raises ValueError without a ledger or with a ledger whose accountant is
    not a privacy filter (``"rdp-filter"``), TypeError unless the mechanism
    is Confident-GNMax. Nothing is reserved (the spend is never entered).
    """
    from ...privacy.accounting.outcome import AnsweredOnlyCosts

    if ledger is None:
        raise ValueError("answered-only accounting charges a ledger: give the PrivateEnsemble a "
                         "PrivacyLedger(accountant='rdp-filter')")
    costs = AnsweredOnlyCosts.of(mechanism)  # TypeError unless Confident-GNMax
    ledger.spend_answered_only(client, costs, queries=1)  # ValueError unless 'rdp-filter'; not entered
    return costs


def worst_case(ledger: Any, client: str, mechanism: Any, accounting: str) -> tuple[Any, Any]:
    """``(worst, costs)``: what one row may cost at most, and the answered-only costs (None if conservative).

    Conservative: every sent row costs one release of ``mechanism``.
    Answered-only: at most both steps of Confident-GNMax (``costs.answered``).
    Raises as :func:`answered_only_costs` for a mode this ledger and mechanism cannot charge.
    """
    if check_accounting(accounting) == "answered-only":
        costs = answered_only_costs(ledger, client, mechanism)
        return costs.answered, costs
    return mechanism, None


def fits(ledger: Any, client: str, worst: Any, rows: int, *, budget: Optional[float] = None) -> bool:
    """Would ``rows`` more releases of ``worst`` fit the client's budget in ``ledger`` (and ``budget``)?"""
    from ...privacy.accounting.base import within
    from ...privacy.accounting.errors import BudgetExceededError

    try:
        epsilon, _ = ledger.check(client, worst, queries=rows)
    except BudgetExceededError:
        return False
    return budget is None or within(epsilon, float(budget))


def rows_that_fit(ledger: Any, client: str, worst: Any, limit: int, *, budget: Optional[float] = None) -> int:
    """The most rows, up to ``limit``, whose worst case (``worst`` each) fits the client's budget.

    Args:
        ledger: a :class:`~pricure_crypten.privacy.accounting.PrivacyLedger`, or None (no
            accounting: every row fits).
        client: the client's name (its budget key).
        worst: the mechanism (or ReleaseCost) one row costs at most (:func:`worst_case`).
        limit: rows asked about (>= 0).
        budget: optional cap on the client's TOTAL spent epsilon after these rows, per the
            ledger's accountant (it can only lower the answer).

    A binary search over dry runs of the ledger (nothing is written): adding
    a query never lowers the spend, so the rows that fit are a prefix.
    """
    if limit <= 0:
        return 0
    if ledger is None or fits(ledger, client, worst, limit, budget=budget):
        return limit
    low, high = 0, limit  # fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(ledger, client, worst, middle, budget=budget) else (low, middle)
    return low


def spent(ledger: Any, client: str) -> Optional[tuple[float, float]]:
    """The client's TOTAL (epsilon, delta) spent per the ledger's accountant, or None without a ledger."""
    if ledger is None:
        return None
    status = ledger.status(client)
    return (status.spent_epsilon, status.spent_delta)


__all__ = ["ACCOUNTING_MODES", "answered_only_costs", "check_accounting", "check_budget", "fits", "rows_that_fit",
           "spent", "worst_case"]

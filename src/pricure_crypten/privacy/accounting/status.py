"""What the ledger reports: a client's budget status and the audit trail."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class BudgetStatus:
    """A client's budget as the ledger's accountant composes it.

    For ``rdp``/``pld`` (and ``auto`` when it uses PLD) epsilon is evaluated at
    the budget's delta, so ``spent_delta`` equals ``total_delta`` as soon as
    anything is spent, and ``remaining_epsilon`` is ``total - spent`` (these
    accountants are not additive: a query's marginal cost shrinks as more are
    spent). ``reserved_queries`` are reservations never confirmed (in flight,
    or left by a crash); they count as spent.
    """

    client_id: str
    accountant: str
    bound: Optional[str]
    total_epsilon: float
    total_delta: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float
    answered_queries: int
    reserved_queries: int
    refused_queries: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditEntry:
    """One administrator action recorded in the ledger's audit table."""

    id: int
    at: str
    action: str
    client_id: Optional[str]
    admin: str
    reason: str
    details: dict[str, Any]

"""Errors of the privacy ledger."""

from __future__ import annotations


class LedgerError(RuntimeError):
    """The ledger file cannot be used safely (corrupt, foreign schema, not writable, busy, ...).

    The message always names the ledger path. The ledger never repairs,
    resets or recreates a file it cannot read: fix or move it yourself.
    """


class BudgetExceededError(ValueError):
    """A query was refused because it does not fit in the client's remaining budget.

    Nothing was charged (only the client's refused counter moved). Seen by the
    party that admits queries; forwarding it to the client reveals to the
    client its own spent budget, nothing about the models or other clients.

    Attributes:
        client_id: the client.
        spent: (epsilon, delta) spent before the request.
        requested_queries: number of queries requested.
        projected: (epsilon, delta) the spend would have reached.
        total: the budget (epsilon, delta).
        remaining_epsilon: ``total epsilon - spent epsilon`` (>= 0).
    """

    def __init__(
        self,
        message: str,
        *,
        client_id: str = "",
        spent: tuple[float, float] = (0.0, 0.0),
        requested_queries: int = 0,
        projected: tuple[float, float] = (0.0, 0.0),
        total: tuple[float, float] = (0.0, 0.0),
        remaining_epsilon: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.client_id = client_id
        self.spent = spent
        self.requested_queries = requested_queries
        self.projected = projected
        self.total = total
        self.remaining_epsilon = remaining_epsilon

    def __reduce__(self):  # picklable across processes, attributes included
        return (type(self), (str(self),), dict(self.__dict__))

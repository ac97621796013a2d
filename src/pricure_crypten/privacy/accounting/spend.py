"""One admitted request of the privacy ledger: reserve, then confirm (or roll back).

Who sees what: a :class:`Spend` lives at the party that admits queries; the
client only ever sees the result released after :meth:`Spend.confirm`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional, Protocol

from .base import ReleaseCost
from .errors import LedgerError

logger = logging.getLogger("pricure_crypten.privacy.accounting.ledger")


class Reservations(Protocol):
    """The ledger's public reservations interface, which :class:`Spend` drives
    (implemented by :class:`~pricure_crypten.privacy.accounting.ledger.PrivacyLedger`)."""

    def reserve(self, client_id: str, cost: ReleaseCost, queries: int) -> int: ...

    def confirm(self, reservation_id: int) -> None: ...

    def rollback(self, reservation_id: int) -> None: ...


class Spend:
    """One admitted request: a reservation that becomes an answered spend.

    Created by :meth:`PrivacyLedger.spend`; use it as a context manager (the
    protocol is described in :mod:`pricure_crypten.privacy.accounting.ledger`). ``state`` is one of ``"new"``,
    ``"reserved"``, ``"answered"``, ``"rolled_back"``, ``"cancelled"`` or
    ``"abandoned"`` (left the ``with`` block without confirm: kept as spent).
    """

    def __init__(self, ledger: Reservations, client_id: str, cost: ReleaseCost, queries: int) -> None:
        self._ledger = ledger
        self.client_id = client_id
        self.cost = cost
        self.queries = queries
        self.row_id: Optional[int] = None
        self.state = "new"

    def __enter__(self) -> "Spend":
        if self.state != "new":
            raise LedgerError(f"this spend was already used (state {self.state}); call ledger.spend() again")
        self.row_id = self._ledger.reserve(self.client_id, self.cost, self.queries)
        self.state = "reserved"
        return self

    def confirm(self) -> None:
        """Mark the spend answered (committed). Call BEFORE releasing the result to the client."""
        if self.state == "answered":
            return
        if self.state != "reserved":
            raise LedgerError(f"cannot confirm a spend that is {self.state}")
        self._ledger.confirm(self.row_id)
        self.state = "answered"

    def cancel(self) -> None:
        """Give the reservation back. Only if NOTHING derived from this query was or will be released."""
        if self.state != "reserved":
            raise LedgerError(f"cannot cancel a spend that is {self.state} (an answered spend stays charged)")
        self._ledger.rollback(self.row_id)
        self.state = "cancelled"

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.state != "reserved":
            return False
        if exc_type is not None:
            try:
                self._ledger.rollback(self.row_id)
                self.state = "rolled_back"
            except Exception:  # the reservation stays counted: over-count, never under-count
                logger.exception("could not roll back reservation %s of client %r; it stays counted",
                                 self.row_id, self.client_id)
            return False
        self.state = "abandoned"
        msg = (f"spend of client {self.client_id!r} left its 'with' block without confirm() or cancel(); "
               f"reservation {self.row_id} stays counted as spent")
        logger.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return False

    def __repr__(self) -> str:
        return (f"Spend(client_id={self.client_id!r}, queries={self.queries}, "
                f"mechanism={self.cost.describe()}, state={self.state})")

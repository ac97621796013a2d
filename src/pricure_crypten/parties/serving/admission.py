"""Admission: may this client's request run, and at what privacy cost? One interface, both modes.

* :class:`Admission` is the local rule: a request of ``rows`` queries is
  reserved in a privacy ledger (:meth:`Admission.reserve`, through the
  ledger's public :meth:`~pricure_crypten.privacy.accounting.PrivacyLedger.spend`)
  BEFORE any MPC work; the reservation is confirmed before anything is
  delivered, and rolled back if anything fails first. Without a ledger
  nothing is charged. The library mode admits every request so, once.
* Across servers (the networked mode), every server applies the same local
  rule to its OWN ledger and casts a :class:`Vote`; :func:`agree` turns the
  gathered votes of one request into the one decision every server takes
  (a pure function of public votes).

Who sees what: the admitting party sees the client's identity, the row
count and the mechanism's cost, never a share's value.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Optional, Sequence

OK, WAIT, REFUSE = "ok", "wait", "refuse"


class Admission:
    """Reserve a request's privacy cost in one ledger (or charge nothing without one).

    Args:
        ledger: a :class:`~pricure_crypten.privacy.accounting.PrivacyLedger`, or None (nothing charged).
        mechanism: the calibrated noise mechanism: what each answered query costs.
    """

    def __init__(self, ledger: Any, mechanism: Any) -> None:
        if ledger is not None and not callable(getattr(ledger, "spend", None)):
            raise TypeError(f"ledger must be a PrivacyLedger (with a spend() method), not {type(ledger).__name__}")
        self.ledger = ledger
        self.mechanism = mechanism

    def reserve(self, client: str, rows: int) -> ContextManager[Any]:
        """A context manager: entering reserves ``rows`` queries (or raises ``BudgetExceededError``).

        The value it gives has ``confirm()`` (call it BEFORE delivering) and
        ``cancel()``; leaving the block with an exception rolls the
        reservation back (nothing was delivered). ``None`` without a ledger.
        """
        if self.ledger is None:
            return contextlib.nullcontext()
        return self.ledger.spend(client, self.mechanism, queries=rows)


@dataclass(frozen=True)
class Vote:
    """One server's public vote on one request: ``ok`` (held and, when reserving, reserved), ``wait``
    (its share has not arrived here yet) or ``refuse`` (``reason`` says why); ``age`` in seconds."""

    kind: str
    reason: Optional[str] = None
    age: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What every server does with one request: ``run``, ``refuse`` (reason), ``drop`` (reason) or ``wait``."""

    action: str
    reason: Optional[str] = None


def agree(votes: Sequence[Vote], *, incomplete_after: float) -> Decision:
    """The one decision on a request from every server's vote (the same on every server).

    Run only if every server voted ``ok``; a refusal anywhere refuses it
    everywhere (with every reason); a request whose share has not reached
    some server within ``incomplete_after`` seconds is dropped everywhere.
    """
    if all(v.kind == OK for v in votes):
        return Decision("run")
    refusals = sorted({v.reason for v in votes if v.kind == REFUSE})
    if refusals:
        return Decision("refuse", "refused: " + "; ".join(refusals))
    if max(v.age for v in votes) > incomplete_after:
        waiting = ", ".join(str(rank) for rank, v in enumerate(votes) if v.kind == WAIT)
        return Decision("drop", f"the query share did not reach server(s) {waiting} within {incomplete_after:g} s; "
                                "dropped on every server, nothing charged")
    return Decision("wait")

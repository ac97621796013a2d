"""Admission: may these requests run, and at what privacy cost? One interface, two rules.

Both rules implement :class:`Admission`: ``admit(tickets)`` returns one
:class:`Verdict` per ticket, and a ticket that may run holds a reservation
in a privacy ledger, made BEFORE any MPC work on it; the serving core
(:class:`~.pipeline.ServingCore`) confirms the reservation before anything
is delivered and rolls it back if anything fails first.

* :class:`LedgerAdmission` is the local rule (the library mode): each
  ticket is claimed (a cancelled one is dropped) and its rows are reserved
  in one ledger (answered-only tickets reserve their worst case, see
  :meth:`~pricure_crypten.privacy.accounting.PrivacyLedger.spend_answered_only`).
  Without a ledger nothing is charged.
* :class:`AgreedAdmission` is the rule across servers (the networked mode):
  every server applies the local rule to its OWN ledger and casts a
  :class:`Vote`, the votes are gathered, and :func:`agree` turns each
  ticket's votes into the one decision every server takes (a pure function
  of public votes). A server that reserved for a ticket refused elsewhere
  gives its reservation back.

Who sees what: the admitting party sees the client's identity, the row
count and the mechanism's cost, never a share's value; the gathered votes
are public metadata.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

OK, WAIT, REFUSE = "ok", "wait", "refuse"


class Refused(RuntimeError):
    """A request was refused before any MPC work: nothing was computed, revealed or charged.

    ``budget`` is True when a refusal was for the client's privacy budget (on some server's ledger).
    """

    def __init__(self, message: str, *, budget: bool = False) -> None:
        super().__init__(message)
        self.budget = budget


class Dropped(Refused):
    """A request did not reach every server in time: dropped everywhere, nothing charged."""


@dataclass(eq=False)
class Verdict:
    """Admission's answer for one ticket: ``error`` None means it may run (its ``stack`` holds the reservation)."""

    error: Optional[BaseException] = None
    stack: Optional[contextlib.ExitStack] = None  # holds the entered reservation (its ``with`` block)
    reservation: Any = None  # the ledger's Spend / OutcomeSpend, or None without a ledger

    def give_back(self) -> None:
        """Nothing derived from the request was or will be released: the reservation is rolled back."""
        if self.reservation is not None and self.reservation.state == "reserved":
            self.reservation.cancel()
        if self.stack is not None:
            self.stack.close()

    def confirm(self, *, answered: Optional[int] = None) -> None:
        """Charge it (BEFORE delivering): plainly, or, answered-only, with ``answered`` of its rows answered."""
        if self.reservation is not None:
            if answered is None:
                self.reservation.confirm()
            else:
                self.reservation.confirm(answered=answered)
        if self.stack is not None:
            self.stack.close()


class Admission(Protocol):
    """The one interface: a verdict per ticket, in order; every ``ok`` verdict holds its reservation."""

    def admit(self, tickets: Sequence[Any]) -> list[Verdict]: ...


class LedgerAdmission:
    """The local rule: claim each ticket, then reserve its rows in one ledger (or charge nothing without one).

    Args:
        ledger: a :class:`~pricure_crypten.privacy.accounting.PrivacyLedger`, or None (nothing charged).
        mechanism: the calibrated noise mechanism: what each answered query costs.
    """

    def __init__(self, ledger: Any, mechanism: Any) -> None:
        if ledger is not None and not callable(getattr(ledger, "spend", None)):
            raise TypeError(f"ledger must be a PrivacyLedger (with a spend() method), not {type(ledger).__name__}")
        self.ledger = ledger
        self.mechanism = mechanism

    def spend(self, client: str, rows: int, *, outcome: bool = False) -> Any:
        """The ledger's (not yet entered) spend for ``rows`` queries; answered-only when ``outcome``. None: no ledger."""
        if self.ledger is None:
            return None
        if outcome:
            from ...privacy.accounting.outcome import AnsweredOnlyCosts

            return self.ledger.spend_answered_only(client, AnsweredOnlyCosts.of(self.mechanism), queries=rows)
        return self.ledger.spend(client, self.mechanism, queries=rows)

    def reserve_one(self, ticket: Any) -> Verdict:
        """Reserve one ticket's rows (a refusal is a verdict, never an exception)."""
        from ...privacy.accounting.errors import BudgetExceededError

        stack = contextlib.ExitStack()
        try:
            spend = self.spend(ticket.client, ticket.rows, outcome=ticket.outcome)
            reservation = stack.enter_context(spend) if spend is not None else None
        except (BudgetExceededError, ValueError, TypeError) as error:
            stack.close()
            return Verdict(error=error)
        return Verdict(stack=stack, reservation=reservation)

    def admit(self, tickets: Sequence[Any]) -> list[Verdict]:
        verdicts = []
        for ticket in tickets:
            reason = ticket.claim()
            verdicts.append(Verdict(error=Refused(reason)) if reason is not None else self.reserve_one(ticket))
        return verdicts


@dataclass(frozen=True)
class Vote:
    """One server's public vote on one request: ``ok`` (held and, when reserving, reserved), ``wait``
    (its share has not arrived here yet) or ``refuse`` (``reason`` says why); ``age`` in seconds."""

    kind: str
    reason: Optional[str] = None
    age: float = 0.0
    budget: bool = False  # a refusal because the client's budget in this server's ledger has no room


@dataclass(frozen=True)
class Decision:
    """What every server does with one request: ``run``, ``refuse`` (reason), ``drop`` (reason) or ``wait``;
    ``budget``: some server refused it for the client's budget."""

    action: str
    reason: Optional[str] = None
    budget: bool = False


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
        return Decision("refuse", "refused: " + "; ".join(refusals),
                        budget=any(v.budget for v in votes if v.kind == REFUSE))
    if max(v.age for v in votes) > incomplete_after:
        waiting = ", ".join(str(rank) for rank, v in enumerate(votes) if v.kind == WAIT)
        return Decision("drop", f"the query share did not reach server(s) {waiting} within {incomplete_after:g} s; "
                                "dropped on every server, nothing charged")
    return Decision("wait")


class AgreedAdmission:
    """The rule across servers: every server votes with its own ledger; all take the gathered decision.

    Args:
        local: this server's :class:`LedgerAdmission` (its OWN ledger).
        gather: gathers one public object from every server, in rank order (all servers call it together).
        rank: this server's rank (named in its refusals).
        incomplete_after: seconds after which a request missing on some server is dropped.

    A ticket here also has ``age`` (seconds since it arrived at this server)
    and ``vote_checks()`` (a refusal reason from this server's own checks,
    or None), consulted before its ``claim()``.
    """

    def __init__(self, local: LedgerAdmission, gather: Callable[[Any], list], *, rank: int,
                 incomplete_after: float) -> None:
        self.local = local
        self.gather = gather
        self.rank = rank
        self.incomplete_after = incomplete_after

    def admit(self, tickets: Sequence[Any]) -> list[Verdict]:
        from ...privacy.accounting.errors import BudgetExceededError

        mine: list[Vote] = []
        local: list[Verdict] = []
        for ticket in tickets:
            reason = ticket.vote_checks() or ticket.claim()
            verdict = Verdict(error=Refused(reason)) if reason is not None else self.local.reserve_one(ticket)
            budget = False
            if verdict.error is not None and reason is None:
                reason = f"over budget on server {self.rank}: {verdict.error}"
                budget = isinstance(verdict.error, BudgetExceededError)
            local.append(verdict)
            mine.append(Vote(REFUSE, reason, ticket.age, budget) if reason is not None else Vote(OK, None, ticket.age))
        gathered = self.gather(mine)
        out = []
        for index, verdict in enumerate(local):
            decision = agree([votes[index] for votes in gathered], incomplete_after=self.incomplete_after)
            if decision.action == "run":
                out.append(verdict)
                continue
            verdict.give_back()  # reserved here, refused elsewhere: nothing was computed
            kind = Dropped if decision.action == "drop" else Refused
            out.append(Verdict(error=kind(decision.reason or "not every server has this request yet",
                                          budget=decision.budget)))
        return out

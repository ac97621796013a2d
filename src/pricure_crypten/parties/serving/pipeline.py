"""The serving pipeline, written once: submit -> pack -> reserve -> run -> confirm -> deliver.

Both modes serve requests through one :class:`ServingCore`. A transport
(the library mode's :class:`~pricure_crypten.parties.batching.RequestScheduler`,
or the networked node) turns each client request into a :class:`Ticket`
and calls :meth:`ServingCore.step` with the waiting tickets, in the agreed
order; one step is one MPC batch:

1. **pack**: which rows of the waiting tickets go into this batch
   (:func:`~.packing.pack`; an answered-only ticket runs alone);
2. **reserve**: the tickets starting in this batch are admitted
   (:class:`~.admission.Admission`: one ledger, or every server's ledger by
   agreement) BEFORE any MPC work; a refused ticket fails with nothing
   computed or charged;
3. **run**: the packed shares (padded to an Offline batch size) go through
   one MPC batch, and the label shares and public costs are cut back at the
   same row boundaries (:func:`run_packed`);
4. **confirm**: a ticket whose last rows ran has its reservation confirmed
   (answered-only: with the servers' revealed outcome bits);
5. **deliver**: only then is its :class:`Delivery` handed to the transport.

A failure of the batch fails every ticket in it: a reservation is rolled
back (nothing was released), except that an answered-only ticket whose
outcome bits the servers may already have opened keeps its worst case
charged (over-count, never under-count). The failure is then re-raised to
the transport (the library mode fails the futures and goes on; a networked
server restarts its party).

Who sees what: shares and public figures only; nothing is reconstructed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .admission import Admission, Verdict
from .messages import BatchReply
from .packing import add_costs, gather, pack, pad_with_zeros, split_batch
from .results import ServerCost

#: run(query shares, one per server held; outcome_rows=n) -> one BatchReply per server held. With n > 0 the
#: servers also reveal among themselves the answered bit of the batch's first n rows (answered-only labelling).
RunBatch = Callable[..., list[BatchReply]]


def _always() -> Optional[str]:
    return None


@dataclass(eq=False)
class Ticket:
    """One client request inside the serving core, whichever transport brought it.

    Args:
        client: the client's name (its budget key).
        shares: its query shares, one per server this caller holds (every
            server's in library mode, this server's own in the networked mode).
        outcome: answered-only labelling: runs alone in its batches; the servers
            reveal among themselves each of its rows' answered bit, which sets its charge.
        key: the transport's handle (a future, a request id).
        claim: called once, when the ticket is about to be admitted: a refusal
            reason (e.g. "cancelled by the client"), or None (it may no longer be cancelled).
        vote_checks: the networked servers' own checks before their vote (reason or None).
        age: seconds since it arrived (networked: a request missing somewhere is dropped after a while).
    """

    client: str
    shares: list[np.ndarray]
    outcome: bool = False
    key: Any = None
    claim: Callable[[], Optional[str]] = _always
    vote_checks: Callable[[], Optional[str]] = _always
    age: float = 0.0
    next_row: int = 0
    verdict: Optional[Verdict] = None
    parts: list = field(default_factory=list)
    costs: Optional[list[ServerCost]] = None
    outcomes: list = field(default_factory=list)
    finished: bool = False

    @property
    def rows(self) -> int:
        return int(self.shares[0].shape[0])

    @property
    def remaining(self) -> int:
        return self.rows - self.next_row


@dataclass(frozen=True)
class Delivery:
    """What a ticket gets back: its own label shares and costs (one per server held), and outcome bits if asked."""

    label_shares: list[np.ndarray]
    costs: list[ServerCost]
    outcomes: Optional[np.ndarray] = None  # answered bits (1/0) per row, if requested (answered-only)


def run_packed(
    parts: Sequence[Sequence[np.ndarray]],
    run: Callable[[list[np.ndarray]], list[BatchReply]],
    *,
    padded_rows: Optional[Callable[[int], int]] = None,
    zero_shares: Optional[Callable[[np.ndarray], Sequence[np.ndarray]]] = None,
) -> tuple[list[BatchReply], list[tuple[list[np.ndarray], list[ServerCost]]]]:
    """One MPC batch of packed requests: the servers' replies, and per request its label shares and costs.

    Args:
        parts: per packed request (in batch order), its share slice for each server held.
        run: runs the batch (one share per server held) and returns one reply per server held.
        padded_rows: the row count the batch runs as (an Offline stocked size), or None.
        zero_shares: shares of zero rows for the padding (one per server held).
    """
    servers = len(parts[0])
    shares = [gather([part[server] for part in parts]) for server in range(servers)]
    if padded_rows is not None:
        shares = pad_with_zeros(shares, padded_rows(shares[0].shape[0]), zero_shares)
    replies = run(shares)
    return replies, split_batch([part[0].shape[0] for part in parts], replies)


class ServingCore:
    """One MPC batch at a time: pack, reserve, run, confirm, deliver (see the module docstring).

    Args:
        admission: the :class:`~.admission.Admission` rule.
        run: runs one MPC batch (:data:`RunBatch`).
        deliver: ``deliver(ticket, delivery)``, called after the ticket's charge is confirmed.
        fail: ``fail(ticket, error)``, called for a refused ticket and for every ticket of a failed batch.
        max_rows: rows per MPC batch.
        merge: pack several tickets into one batch (dynamic batching).
        split: a ticket larger than the room left is split across batches;
            otherwise it waits for a batch it fits in whole (the networked
            servers never split: a request is admitted and run in one batch).
        padded_rows / zero_shares: Offline padding (see :func:`run_packed`).
    """

    def __init__(self, *, admission: Admission, run: RunBatch, deliver: Callable[[Ticket, Delivery], None],
                 fail: Callable[[Ticket, BaseException], None], max_rows: int, merge: bool = True,
                 split: bool = True, padded_rows: Optional[Callable[[int], int]] = None,
                 zero_shares: Optional[Callable[[np.ndarray], Sequence[np.ndarray]]] = None) -> None:
        self.admission = admission
        self._run = run
        self._deliver = deliver
        self._fail = fail
        self.max_rows = max_rows
        self.merge = merge
        self.split = split
        self._padded_rows = padded_rows
        self._zero_shares = zero_shares
        self.batches_run = 0

    def step(self, queue: Sequence[Ticket]) -> list[Ticket]:
        """One batch from ``queue`` (waiting tickets, in the agreed order); returns the tickets that ended in it.

        Raises the batch's failure after failing (and settling) every ticket in it.
        """
        ended: list[Ticket] = []
        chosen = [(queue[i], take) for i, take in pack(
            [t.remaining for t in queue], self.max_rows, split=self.split, merge=self.merge,
            alone={i for i, t in enumerate(queue) if t.outcome})]
        new = [t for t, _ in chosen if t.verdict is None]
        for ticket, verdict in zip(new, self.admission.admit(new) if new else []):
            if verdict.error is not None:  # refused: nothing reserved, nothing computed
                ended.append(ticket)
                self._give_up(ticket, verdict.error, worst_case=False)
            else:
                ticket.verdict = verdict
        batch = [(t, t.next_row, t.next_row + take) for t, take in chosen if not t.finished]
        if not batch:
            return ended
        first, start, stop = batch[0]
        outcome_rows = stop - start if first.outcome else 0  # alone in its batch, its rows first: only theirs
        ran = False

        def run(shares: list[np.ndarray]) -> list[BatchReply]:
            nonlocal ran
            ran = True
            return self._run(shares, outcome_rows=outcome_rows) if outcome_rows else self._run(shares)

        try:
            replies, pieces = run_packed([[s[a:b] for s in t.shares] for t, a, b in batch], run,
                                         padded_rows=self._padded_rows, zero_shares=self._zero_shares)
        except BaseException as error:
            for ticket, _, _ in batch:
                ended.append(ticket)
                self._give_up(ticket, error, worst_case=ran and ticket.outcome)
            raise
        self.batches_run += 1
        for (ticket, start, stop), (label_shares, costs) in zip(batch, pieces):
            ticket.next_row = stop
            ticket.parts.append(label_shares)
            ticket.costs = add_costs(ticket.costs, costs)
            try:
                if ticket.outcome:
                    ticket.outcomes.append(_agreed_outcome(replies, stop - start))
                if stop == ticket.rows:
                    ended.append(ticket)
                    self._finish(ticket)
            except BaseException as error:  # noqa: BLE001 - this ticket only: the others of the batch are fine
                if not ticket.finished:
                    ended.append(ticket)
                    self._give_up(ticket, error, worst_case=ticket.outcome)
        return ended

    def _finish(self, ticket: Ticket) -> None:
        """Confirm (before anything is delivered), then deliver."""
        outcomes = np.concatenate(ticket.outcomes) if ticket.outcome else None
        ticket.verdict.confirm(answered=int(outcomes.sum()) if outcomes is not None else None)
        ticket.finished = True
        servers = len(ticket.shares)
        self._deliver(ticket, Delivery(
            label_shares=[gather([part[server] for part in ticket.parts]) for server in range(servers)],
            costs=list(ticket.costs), outcomes=outcomes))

    def _give_up(self, ticket: Ticket, error: BaseException, *, worst_case: bool) -> None:
        """Nothing is delivered: roll the reservation back (or keep the worst case if outcome bits may be
        open), then hand ``error`` to the transport."""
        ticket.finished = True
        verdict = ticket.verdict
        if verdict is not None:  # admitted: settle its reservation
            try:
                if worst_case and verdict.reservation is not None and verdict.reservation.state == "reserved":
                    verdict.confirm(answered=ticket.rows)  # both steps for every row: over-count, never under-count
                else:
                    verdict.give_back()
            except Exception:  # noqa: BLE001 - the ledger keeps an unsettled reservation counted (over-count)
                pass
        self._fail(ticket, error)


def _agreed_outcome(replies: Sequence[BatchReply], rows: int) -> np.ndarray:
    """The outcome bits every server revealed for the batch's first ``rows`` rows (they must agree)."""
    outcomes = [np.asarray(reply.outcome, dtype=np.int64) for reply in replies]
    if any(o.shape != (rows,) or not np.array_equal(o, outcomes[0]) for o in outcomes):
        raise RuntimeError("the servers disagree on the revealed outcomes: the computation was corrupted")
    return outcomes[0]

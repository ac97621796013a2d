"""The MPC loop of one server: one tick of the agreement protocol, in lockstep with the other servers.

Every tick, each server says which uploads it holds per owner and server 0
adds its proposal, all public metadata (``all_gather_object``). If the
holdings changed, the tick is a load (:mod:`.loading`). Otherwise server 0's
proposal is the request ids to consider (round robin over clients, each
client's in arrival order). For requests, every server first says which ids
it holds (phase 1, nothing reserved); the ids held everywhere go to the
serving core (:class:`~pricure_crypten.parties.serving.pipeline.ServingCore`)
as tickets, in the proposed order. The core packs them into one MPC batch,
skipping any that does not fit (so shares sent to some servers only never
block complete requests), and every server votes on those
(:class:`~pricure_crypten.parties.serving.admission.AgreedAdmission`): ``ok``
(the id is new and the client's budget in ITS OWN ledger has room: reserved)
or a refusal. Only ids that every server accepted are computed; a refusal
anywhere stops the request everywhere before any MPC work, and every
reservation is rolled back; an id that has not reached every server within
``incomplete_after`` seconds is dropped everywhere. Each decision is a
function of the gathered votes
(:func:`~pricure_crypten.parties.serving.admission.agree`), so all servers
take the same one. The packing, the padding up to an Offline batch size and
the split of the label shares and of the public costs are the serving
core's, as in library mode. On idle ticks with Offline batch sizes, every
server tops its stock up (all servers in lockstep).

Who sees what: this server computes on its shares only and decodes nothing
(a batch reply with decodes is an error); the label share of a request is
handed to :mod:`.requests` only after this server's charge is confirmed. A
client receives with its label share this server's public cost figures for
its request (rounds, bytes, seconds, decodes, dealer requests), from which
:meth:`RemoteEnsemble.predict` builds the same ``Cost`` as library mode.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ...config import Offline
from ..serving.admission import OK, REFUSE, WAIT, AgreedAdmission, Decision, Dropped, Refused, Vote, agree
from ..serving.messages import Predict, Refill
from ..serving.pipeline import Delivery, ServingCore, Ticket
from .config import Seat
from .loading import Loading
from .requests import Requests

MAX_CANDIDATES = 512  # request ids server 0 proposes per tick (public metadata only)


@dataclass(frozen=True)
class Candidate:
    """One request server 0 proposes to consider (public metadata only)."""

    request_id: str
    client: str
    shape: tuple[int, ...]
    outcome: bool  # answered-only accounting


@dataclass(frozen=True)
class Proposal:
    """Server 0's proposal for one tick: its last load decision, whether a load is due, and the candidates."""

    considered: list
    loaded: list
    load_due: bool
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class TickReport:
    """What every server contributes to a tick: the uploads it holds per owner; server 0 adds its proposal."""

    holdings: dict
    proposal: Optional[Proposal] = None


class Loop:
    """One tick at a time (:meth:`step`), called by every server in lockstep.

    Args:
        seat: this server's place (its rank, ``incomplete_after``).
        servers: the number of servers.
        max_rows: rows per MPC batch.
        offline: the stocked batch sizes (padding, refills).
        requests: this server's requests (:mod:`.requests`).
        loading: this server's models (:mod:`.loading`).
        admission: this server's own :class:`~..serving.admission.LedgerAdmission`.
        lock: the node's lock (also guards ``batches`` and ``totals``).
    """

    def __init__(self, *, seat: Seat, servers: int, max_rows: int, offline: Offline, requests: Requests,
                 loading: Loading, admission: Any, lock: threading.Lock) -> None:
        self.rank, self.incomplete_after, self.servers, self.max_rows, self.offline = (
            seat.rank, seat.incomplete_after, servers, max_rows, offline)
        self.requests, self.loading, self.admission, self.lock = requests, loading, admission, lock
        self.batches = 0
        self.totals = {"rows": 0, "mpc_seconds": 0.0, "bytes": 0, "rounds": 0, "decodes": 0}
        self._core: Optional[ServingCore] = None  # built when the party has joined the MPC (see step)

    def proposal(self) -> Proposal:
        """Server 0's proposal: the requests to consider, and what it last decided about the models."""
        considered, loaded, load_due = self.loading.proposal()
        queues: dict[str, list] = {}
        with self.lock:
            for rid, item in self.requests.pending.items():  # insertion order = arrival order at server 0
                if item.status == "pending":
                    queues.setdefault(item.client, []).append(Candidate(rid, item.client, tuple(item.share.shape),
                                                                        item.ticket.outcome))
        ids: list[Candidate] = []  # round robin over clients, each client's requests in arrival order
        for turn in range(max((len(q) for q in queues.values()), default=0)):
            ids.extend(q[turn] for q in queues.values() if turn < len(q))
        return Proposal(considered=considered, loaded=loaded, load_due=load_due,
                        candidates=tuple(ids[:MAX_CANDIDATES]))

    def vote_held(self, candidates: tuple[Candidate, ...]) -> list[Vote]:
        """Phase 1 (no reservation): this server's vote on each proposed id: held (``ok``), ``wait`` or ``refuse``."""
        votes = []
        now = time.monotonic()
        for rid, client, shape, outcome in ((c.request_id, c.client, c.shape, c.outcome) for c in candidates):
            with self.lock:
                item = self.requests.pending.get(rid)
            if item is None:
                row = self.requests.log.lookup(rid)
                if row is not None and row[1] != "pending":  # 'pending' here: being submitted right now
                    votes.append(Vote(REFUSE, f"server {self.rank} has already finished request {rid} ({row[1]})"))
                else:
                    votes.append(Vote(WAIT))
                continue
            age = now - item.arrived
            if item.status != "pending":
                votes.append(Vote(REFUSE, f"server {self.rank} already finished this request", age))
            elif item.client != client or tuple(item.share.shape) != shape or item.ticket.outcome != outcome:
                votes.append(Vote(REFUSE, "the servers received different clients, shapes or accounting modes for "
                                          "this request id", age))
            else:
                votes.append(Vote(OK, None, age))
        return votes

    def serving_core(self, state: Any, dist: Any, group: Any) -> ServingCore:
        """The serving core this server runs its share of every batch through (agreement across servers)."""
        if self._core is None:
            def gather(mine: Any) -> list:
                gathered: list = [None] * self.servers
                dist.all_gather_object(gathered, mine, group=group)
                return gathered

            def run(shares: list[np.ndarray], *, outcome_rows: int = 0) -> list:
                reply = state.predict(Predict(query_share=shares[0], outcome_rows=outcome_rows))
                if reply.decodes:
                    raise RuntimeError(f"server {self.rank} decoded {reply.decodes} values (must be 0)")
                with self.lock:
                    self.batches += 1
                    self.totals["rows"] += int(reply.label_share.shape[0])
                    self.totals["mpc_seconds"] += reply.seconds
                    self.totals["bytes"] += reply.bytes
                    self.totals["rounds"] += reply.rounds
                    self.totals["decodes"] += reply.decodes
                return [reply]

            self._core = ServingCore(
                admission=AgreedAdmission(self.admission, gather, rank=self.rank,
                                          incomplete_after=self.incomplete_after),
                run=run, deliver=self._deliver, fail=self._fail, max_rows=self.max_rows, merge=True,
                split=False,  # a networked request is admitted and run in one batch
                # padding up to a stocked size: this server's share of public zero rows is zero (labels dropped)
                padded_rows=self.offline.padded_rows if self.offline.enabled else None,
                zero_shares=lambda zeros: [zeros])
        return self._core

    def _deliver(self, ticket: Ticket, delivery: Delivery) -> None:
        """The core confirmed this server's charge: the label share may now be served."""
        self.requests.finish(ticket.key, "done", label_share=delivery.label_shares[0], cost=delivery.costs[0],
                             outcome=delivery.outcomes)

    def _fail(self, ticket: Ticket, error: BaseException) -> None:
        if isinstance(error, Dropped):
            self.settle(ticket.key, ticket.client, Decision("drop", str(error)))
        elif isinstance(error, Refused):
            self.requests.finish(ticket.key, "failed", error=str(error), refused="budget" if error.budget else None)
        else:
            settled = ("nothing was revealed; its worst case stays charged (the servers may have opened its outcome "
                       "bits)" if ticket.outcome else "nothing was revealed or charged")
            self.requests.finish(ticket.key, "failed", error=(f"the MPC failed on server {self.rank} "
                                                              f"({type(error).__name__}); {settled}"))

    def step(self, state: Any, comm: Any, dist: Any) -> None:
        """One tick of the agreement protocol (all servers call it in lockstep).

        Every server contributes what it holds of each owner's model
        (metadata); server 0 adds its proposal. If the holdings changed since
        the last load decision, the tick is a load (at once if a model being
        served is no longer held by every server, i.e. withdrawn or replaced
        somewhere; else at most once a second); otherwise it considers the
        proposed requests, or (nothing proposed, with Offline stock) tops the
        stock up. All depend only on the gathered data, so every server takes
        the same decision.
        """
        group = comm.main_group
        mine = TickReport(holdings=self.loading.models.holdings(),
                          proposal=self.proposal() if self.rank == 0 else None)
        gathered: list = [None] * self.servers
        dist.all_gather_object(gathered, mine, group=group)
        proposal: Proposal = gathered[0].proposal
        holdings = [g.holdings for g in gathered]
        if holdings != proposal.considered:
            gone = any(any(h.get(o) is None or u not in h[o] for h in holdings) for o, u in proposal.loaded)
            if gone or proposal.load_due:
                self.loading.agree_and_load(state, dist, group, holdings, dict(proposal.loaded))
                return
        if not proposal.candidates:
            if self.offline.enabled and self.offline.refill and self.loading.aggregation_ready:
                self.loading.stock(state, state.refill(Refill()))
            return
        # phase 1 (no reservation): which proposed ids has every server? Refused and stale ones end here.
        candidates = proposal.candidates
        votes: list = [None] * self.servers
        dist.all_gather_object(votes, self.vote_held(candidates), group=group)
        held = []
        for index, candidate in enumerate(candidates):
            decision = agree([v[index] for v in votes], incomplete_after=self.incomplete_after)
            if decision.action == "run":
                held.append(candidate)
            else:
                self.settle(candidate.request_id, candidate.client, decision)
        # phase 2: the serving core packs the held ids in the proposed (fair) order, every server reserves in
        # its own ledger and votes (AgreedAdmission), the agreed ones run as one MPC batch, each charge is
        # confirmed, then its label share is served. An MPC failure is raised after every ticket is settled.
        now = time.monotonic()
        tickets = []
        with self.lock:
            for candidate in held:
                item = self.requests.pending[candidate.request_id]
                item.ticket.age = now - item.arrived
                tickets.append(item.ticket)
        if tickets:
            self.serving_core(state, dist, group).step(tickets)

    def settle(self, rid: str, client: str, decision: Decision) -> None:
        """An id not every server accepted: refused -> failed everywhere; missing too long -> dropped everywhere."""
        log = self.requests.log
        if decision.action == "refuse":
            self.requests.finish(rid, "failed", error=decision.reason)
        elif decision.action == "drop":
            if log.lookup(rid) is None:  # a late share is then refused as a replay
                log.claim(rid, client)
            self.requests.finish(rid, "failed", error=decision.reason)
            log.finish(rid, "failed", decision.reason)

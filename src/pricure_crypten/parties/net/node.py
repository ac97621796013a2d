"""One networked server (``pricure serve``): an HTTPS front door and the MPC loop, in one process.

Two threads share one :class:`Node`:

* the **front door** (FastAPI on uvicorn, TLS) authenticates owners and
  clients by bearer token (:mod:`.credentials`), stores owners' share
  bundles on disk and queues clients' query shares; it never computes;
* the **MPC loop** (the main thread) is a CrypTen party. It drives the same
  :class:`~pricure_crypten.parties.server.ServerState` as the in-process
  mode. Every tick, each server says which uploads it holds per owner
  (current and previous version ids) and server 0 adds its proposal, all
  public metadata (``all_gather_object``). If the holdings changed, the
  tick is a load: per owner, the upload every server holds
  (:func:`~.store.choose_versions`), so a withdrawal on any server takes that owner
  out of the next batch, and an owner whose new upload is on only some
  servers stays on its previous version if every server still holds it
  (else it is out until its upload is everywhere), without holding back
  the other owners. Every server votes per owner and a bundle that is
  unusable anywhere is quarantined (not loaded; its owner sees why) while
  the others load. Otherwise server 0's proposal is the request ids to
  consider (round robin over clients, each client's in arrival order).
  For requests, every server first says which
  ids it holds (``all_gather_object``); the ids held everywhere are packed
  into one MPC batch, skipping any that does not fit (so shares sent to some
  servers only never block complete requests), and every server then votes
  on those: ``ok`` (the id is new and the client's budget in ITS OWN ledger
  has room: reserved) or a refusal. Only ids that every server accepted are
  computed; a refusal anywhere stops the request everywhere before any MPC
  work, and every reservation is rolled back; an id that has not reached
  every server within ``incomplete_after`` seconds is dropped everywhere.
  Each decision is a function of the gathered votes
  (:func:`~pricure_crypten.parties.serving.admission.agree`), so all servers
  take the same one. The packing, the padding up to an Offline batch size,
  the split of the label shares and of the public costs are the serving
  core's (:mod:`~pricure_crypten.parties.serving`), as in library mode; so
  are the settings the owners' shares are loaded with (built from the same
  config objects, :class:`NodeConfig`). With Offline batch sizes, every
  server stocks their dealer tuples after each load and tops the stock up
  on idle ticks (all servers in lockstep). A client has at most ``max_client_requests`` pending
  requests and ``max_client_rows`` pending rows per server (HTTP 429).
  A client may cancel its own request (:meth:`Node.cancel`): a server that
  has not yet voted to run it (no budget reserved) refuses it at its next
  vote, so no server computes or charges it; after that vote the cancel
  only stops this server from serving the label share, and says so.

A failure of the MPC itself (a peer or the dealer dies, a collective times
out) fails every request in flight (reservations rolled back: nothing was
released, since a label share is served only after its spend is confirmed),
then the process re-executes itself and waits at the rendezvous for the
restarted peer, reloading the owners' shares from disk.

Who sees what: this process holds one share of every model and query and
one share of every label; the only thing it learns in the clear is public
metadata (ids, row counts, shapes, client identities, votes, cost figures).
A client receives with its label share this server's public cost figures
for its request (rounds, bytes, seconds, decodes, dealer requests), from
which :meth:`RemoteEnsemble.predict` builds the same ``Cost`` as library mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ...config import Aggregation, Batching, Cluster, Offline
from ...privacy.noise import NoNoise
from ..serving.admission import OK, REFUSE, WAIT, Admission, Decision, Vote, agree
from ..serving.messages import Load, Precompute, Predict, Refill, ServerSettings
from ..serving.packing import pack
from ..serving.pipeline import run_packed
from ..serving.results import ServerCost
from .credentials import CredentialTable
from .store import ModelStore, RequestLog, choose_versions
from .wire import (MAX_BUNDLE_BYTES, MAX_QUERY_ROWS, REQUEST_ID, BundleLimits, ShapeError, TooManyRequests,
                   WireError, encode_array)

logger = logging.getLogger("pricure_crypten.serve")

JOIN_TIMEOUT_EXIT = 3
SETTINGS_MISMATCH_EXIT = 4
RESULT_TTL = 600.0  # seconds a finished request's outcome stays readable
RESTARTED = "server {rank} restarted (its MPC failed) before this request finished; nothing was charged"
MAX_CANDIDATES = 512  # request ids server 0 proposes per tick (public metadata only)
_LIMITS = BundleLimits()


def _no_noise() -> Aggregation:
    return Aggregation(noise=NoNoise())


@dataclass(frozen=True)
class NodeConfig:
    """One networked server: its place in the deployment, and the shared config objects.

    The privacy, topology, batching and offline settings are the same
    validated objects as in library mode (:mod:`pricure_crypten.config`):
    ``aggregation`` (default: votes at epsilon inf, i.e. :class:`NoNoise`; ``pricure serve
    --epsilon``), ``cluster`` (servers, colluding, provider, threads,
    ``request_timeout`` = the collectives' timeout), ``batching`` (``max_rows``
    per MPC batch) and ``offline`` (batch sizes whose dealer tuples are stocked
    ahead of time, as in :class:`~pricure_crypten.config.Offline`). The other
    fields are the front door's own (addresses, files, limits, timeouts).
    """

    rank: int
    rendezvous: str
    host: str
    port: int
    data_dir: Path
    certfile: Optional[Path]
    keyfile: Optional[Path]
    aggregation: Aggregation = field(default_factory=_no_noise)
    cluster: Cluster = field(default_factory=Cluster)
    batching: Batching = field(default_factory=Batching)
    offline: Offline = field(default_factory=Offline)
    budget_epsilon: float = float("inf")
    budget_delta: float = 0.0
    wait: float = 120.0  # bound on waiting for the other parties at the rendezvous
    incomplete_after: float = 10.0  # a request not at every server by then is dropped
    max_upload: int = MAX_BUNDLE_BYTES
    max_params: int = _LIMITS.max_params  # int64 share elements per bundle
    max_input_elements: int = _LIMITS.max_input_elements  # elements of one example
    max_activation: int = _LIMITS.max_activation  # elements of any layer's output, per example
    max_client_requests: int = 16  # pending requests per client on this server
    max_client_rows: int = 1024  # pending rows per client on this server (at least max_rows)
    max_connections: int = 128  # open connections to the front door
    header_timeout: float = 10.0  # seconds to send a request's headers (also after a TLS handshake)
    keep_alive: float = 5.0  # seconds an idle kept-alive connection stays open
    body_timeout: float = 120.0  # seconds to send a request's body
    log_retention: float = 30 * 86400.0  # seconds a finished request id stays in requests.sqlite3
    log_max_entries: int = 1_000_000  # finished request ids kept at most (the oldest go first)
    tick: float = 0.1
    argv: tuple[str, ...] = field(default=(), compare=False)  # to re-execute after an MPC failure

    def __post_init__(self) -> None:
        for name, kind in (("aggregation", Aggregation), ("cluster", Cluster), ("batching", Batching),
                           ("offline", Offline)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a pricure_crypten.config.{kind.__name__}, "
                                f"not {type(getattr(self, name)).__name__}")
        if not 0 <= self.rank < self.cluster.num_servers:
            raise ValueError(f"rank must be in [0, {self.cluster.num_servers}), got {self.rank}")
        self.offline.check_against(self.cluster, self.batching)

    @property
    def servers(self) -> int:
        return self.cluster.num_servers

    @property
    def max_rows(self) -> int:
        return self.batching.max_rows

    @property
    def threads(self) -> int:
        return self.cluster.threads_per_server or 1

    @property
    def limits(self) -> BundleLimits:
        return BundleLimits(max_bytes=self.max_upload, max_params=self.max_params,
                            max_input_elements=self.max_input_elements, max_activation=self.max_activation)

    @property
    def settings(self) -> ServerSettings:
        """What this server loads the owners' shares with (built as in library mode; never a seed)."""
        return ServerSettings.of(aggregation=self.aggregation, cluster=self.cluster)

    def public_settings(self) -> dict:
        """What every server must agree on (checked after joining the MPC)."""
        return {"servers": self.servers, "provider": self.cluster.provider, **self.settings.public(),
                "offline": [list(self.offline.batch_sizes), self.offline.depth, self.offline.pad],
                "max_rows": self.max_rows}


@dataclass
class Pending:
    client: str
    share: np.ndarray
    arrived: float
    status: str = "pending"  # pending | done | failed
    label_share: Optional[np.ndarray] = None
    error: Optional[str] = None
    finished: float = 0.0
    reserved: bool = False  # this server voted to run it (its budget reserved): a cancel comes too late
    cancelled: bool = False  # the client cancelled it before that: this server refuses it at the next vote
    discard: bool = False  # cancelled too late: the label share is never served
    cost: Optional[ServerCost] = None  # this server's public figures for it, served with the label share


class Node:
    """The state the front door and the MPC loop share."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.credentials = CredentialTable(data)
        self.models = ModelStore(data / "models", config.limits)
        self.log = RequestLog(data / "requests.sqlite3")
        restarted = self.log.fail_unfinished(RESTARTED.format(rank=config.rank))
        if restarted:
            logger.warning("%d requests were unfinished when this server last stopped: marked failed", restarted)
        self.lock = threading.Lock()
        self.pending: dict[str, Pending] = {}
        self.mpc_state = "joining"
        self.loaded: list[tuple[str, str]] = []
        self.considered: list[tuple[str, str]] = []  # the uploads the last load decided on (loaded or not)
        self.quarantined: dict[str, dict] = {}  # owner -> {"upload_id", "reason"}: not loaded, others unaffected
        self._next_prune = 0.0
        self.input_shape: Optional[tuple[int, ...]] = None
        self.num_classes: Optional[int] = None
        self.batches = 0
        self.totals = {"rows": 0, "mpc_seconds": 0.0, "bytes": 0, "rounds": 0, "decodes": 0}
        self.ledger = self._open_ledger(data / "ledger.sqlite3")
        self.admission = Admission(self.ledger, config.aggregation.noise)  # this server's own ledger
        self.offline_figures: list = []  # this server's OfflineReply figures, latest last (public)
        self._loading_marker = data / LOADING_MARKER
        self.died_loading = _read_loading_marker(self._loading_marker)
        if self.died_loading:
            logger.error("the previous party process died while building or loading the uploads %s: they are "
                         "voted unusable (quarantined on every server)",
                         ", ".join(f"{o}/{u}" for o, u in sorted(self.died_loading)))

    def _open_ledger(self, path: Path) -> Any:
        from ...privacy.accounting import PrivacyLedger

        ledger = PrivacyLedger(path, total_epsilon=self.config.budget_epsilon, total_delta=self.config.budget_delta)
        # A reservation left by a killed process belongs to a request whose label share this server never
        # released (shares go out only after confirm): give it back, through the ledger's audited operation.
        voided = ledger.void_stale_reservations(
            admin=f"pricure server rank {self.config.rank} (startup)",
            reason="reservations of a stopped server process; its label shares are released only after confirm")
        if voided:
            logger.warning("voided %d reservations left by the previous process (never released)", voided)
        return ledger

    # -- front door side --

    def public_info(self, details: bool = True) -> dict:
        """Liveness for anyone; with ``details`` (a valid credential) owners, shapes and traffic too."""
        if not details:
            with self.lock:
                return {"alive": True, "rank": self.config.rank, "mpc": self.mpc_state}
        meta = self.models.meta()
        first = next(iter(meta.values()), None)
        with self.lock:
            return {"alive": True, "rank": self.config.rank, "servers": self.config.servers, "mpc": self.mpc_state,
                    "owners_loaded": [o for o, _ in self.loaded], "owners_stored": sorted(meta),
                    "input_shape": first["input_shape"] if first else None,
                    "num_classes": first["num_classes"] if first else None,
                    "pending": sum(p.status == "pending" for p in self.pending.values()),
                    "owners_quarantined": sorted(self.quarantined),
                    "connections": self.open_connections(),
                    "batches": self.batches, "totals": dict(self.totals),
                    "offline": [dataclasses.asdict(r) for r in self.offline_figures[-8:]],
                    "settings": self.config.public_settings()}

    def model_status(self, owner: str) -> Optional[dict]:
        """An owner's view of its own upload on this server: metadata and whether it is loaded or quarantined."""
        meta = self.models.meta().get(owner)
        if meta is None:
            return None
        with self.lock:
            serving = dict(self.loaded).get(owner)
            bad = self.quarantined.get(owner)
        if bad is not None and bad["upload_id"] == meta.get("upload_id"):
            return dict(meta, status="quarantined", reason=bad["reason"])
        if serving == meta.get("upload_id"):
            return dict(meta, status="loaded")
        if serving is not None:
            return dict(meta, status="stored (not on every server yet); the previous upload is served",
                        serving_upload_id=serving)
        return dict(meta, status="stored (not loaded yet)")

    def store_model(self, owner: str, upload_id: str, data: bytes) -> dict:
        """An owner's upload: becomes its current version; the version being served is kept as the previous one."""
        with self.lock:
            serving = dict(self.loaded).get(owner)
        return self.models.put(owner, upload_id, data, keep=serving)

    def cancel(self, client: str, request_id: str) -> Optional[dict]:
        """The client gives up on its request: what this server can promise (None: not this client's, or unknown).

        ``cancelled``: this server had not reserved its budget; it refuses the
        request at the next vote, so no server computes or charges it.
        ``too late``: this server had reserved its budget (the request may be
        computed and charged); its label share will not be served. ``failed``
        and ``expired``: it had ended already (``error`` says how).
        """
        rank = self.config.rank
        with self.lock:
            item = self.pending.get(request_id)
            if item is not None:
                if item.client != client:
                    return None
                if item.status == "pending" and not item.reserved:
                    item.cancelled = True
                    return {"request_id": request_id, "status": "cancelled",
                            "detail": f"server {rank} had not reserved any budget for it; it refuses the request, "
                                      "so no server computes or charges it"}
                if item.status in ("pending", "done"):
                    item.discard = True
                    if item.status == "done":
                        item.label_share = None
                        item.status, item.error = "failed", (f"cancelled by the client after it was computed and "
                                                             f"charged on server {rank}; its label share is discarded")
                    return {"request_id": request_id, "status": "too late",
                            "detail": f"server {rank} had already reserved its budget: the request may have been "
                                      "computed and charged; its label share will not be served"}
                return {"request_id": request_id, "status": item.status, "detail": item.error}
        row = self.log.lookup(request_id)
        if row is None or row[0] != client:
            return None
        if row[1] == "done":
            return {"request_id": request_id, "status": "expired",
                    "detail": "computed and charged; its result is no longer held by this server"}
        return {"request_id": request_id, "status": "failed", "detail": row[2]}

    def submit(self, client: str, request_id: str, share: np.ndarray) -> None:
        if not REQUEST_ID.match(request_id):
            raise WireError("request_id must be 32 lowercase hex digits (a fresh random id per request)")
        meta = self.models.meta()
        if not meta:
            raise LookupError("no owner has uploaded a model to this server yet")
        shape = tuple(next(iter(meta.values()))["input_shape"])
        if share.ndim != len(shape) + 1 or tuple(share.shape[1:]) != shape:
            raise ShapeError(f"the query share must have shape (rows, {', '.join(map(str, shape))}), "
                            f"got {list(share.shape)}")
        if share.shape[0] > min(MAX_QUERY_ROWS, self.config.max_rows):
            raise ShapeError(f"at most {min(MAX_QUERY_ROWS, self.config.max_rows)} rows per request, "
                            f"got {share.shape[0]}")
        c = self.config
        with self.lock:  # the caps and the claim together: concurrent requests cannot overshoot them
            mine = [p for p in self.pending.values() if p.client == client and p.status == "pending"]
            rows = sum(p.share.shape[0] for p in mine)
            if len(mine) >= c.max_client_requests:
                raise TooManyRequests(f"client {client} already has {len(mine)} pending requests on server "
                                      f"{c.rank} (the limit); wait for their answers")
            if rows + share.shape[0] > max(c.max_client_rows, c.max_rows):
                raise TooManyRequests(f"client {client} already has {rows} pending rows on server {c.rank}; "
                                      f"{share.shape[0]} more exceed the limit {max(c.max_client_rows, c.max_rows)}")
            if not self.log.claim(request_id, client):
                raise FileExistsError(f"request id {request_id} was already used: a replayed request is refused")
            self.pending[request_id] = Pending(client, share, time.monotonic())

    def result(self, client: str, request_id: str) -> Optional[dict]:
        with self.lock:
            item = self.pending.get(request_id)
            if item is not None:
                if item.client != client:
                    return None  # someone else's request: indistinguishable from an unknown id
                out = {"request_id": request_id, "status": item.status, "error": item.error}
                if item.status == "done":
                    out["label_share"] = encode_array(item.label_share)
                    out["cost"] = item.cost.public()  # this server's public figures, as in library mode
                return out
        row = self.log.lookup(request_id)
        if row is None or row[0] != client:
            return None
        return {"request_id": request_id, "status": "failed" if row[1] != "done" else "expired",
                "error": row[2] or "the result is no longer held by this server"}

    # -- MPC loop side --

    def _finish(self, request_id: str, status: str, *, label_share: Any = None, error: Optional[str] = None,
                cost: Optional[ServerCost] = None) -> None:
        with self.lock:
            item = self.pending.get(request_id)
            if item is None:
                return
            if item.discard and status == "done":  # cancelled by the client too late: charged, never served
                status, label_share = "failed", None
                error = (f"cancelled by the client after server {self.config.rank} had reserved its budget: "
                         "computed and charged; its label share is discarded")
            item.status, item.label_share, item.error, item.finished = status, label_share, error, time.monotonic()
            item.cost = cost if label_share is not None else None
            item.share = np.empty(0, dtype=np.int64)
        self.log.finish(request_id, status, error)

    def _expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            for rid in [r for r, p in self.pending.items() if p.status != "pending" and now - p.finished > RESULT_TTL]:
                del self.pending[rid]
            stale = [r for r, p in self.pending.items()
                     if p.status == "pending" and now - p.arrived > 3 * self.config.incomplete_after]
        for rid in stale:  # never proposed by server 0 (it never reached it): dropped here too
            self._finish(rid, "failed", error="the request did not reach every server in time; dropped, "
                                              "nothing charged")
        if now >= self._next_prune:
            self._next_prune = now + 60.0
            gone = self.log.prune(retention=self.config.log_retention, max_entries=self.config.log_max_entries)
            if gone:
                logger.info("forgot %d finished request ids (retention)", gone)

    def _proposal(self) -> dict:
        """Server 0's proposal: the requests to consider, and what it last decided about the models."""
        with self.lock:
            base = {"considered": self.considered, "loaded": list(self.loaded),
                    "load_due": time.monotonic() >= getattr(self, "_next_load_try", 0.0)}
        queues: dict[str, list] = {}
        with self.lock:
            for rid, item in self.pending.items():  # insertion order = arrival order at server 0
                if item.status == "pending":
                    queues.setdefault(item.client, []).append((rid, item.client, list(item.share.shape)))
        ids: list = []  # round robin over clients, each client's requests in arrival order
        for turn in range(max((len(q) for q in queues.values()), default=0)):
            ids.extend(q[turn] for q in queues.values() if turn < len(q))
        if not ids:
            return dict(base, op="idle")
        return dict(base, op="predict", ids=ids[:MAX_CANDIDATES], max_rows=self.config.max_rows)

    def _vote_predict(self, ids: list, stack: Optional[contextlib.ExitStack] = None) -> tuple[list[Vote], dict]:
        """This server's vote on each proposed id; with ``stack``, each ``ok`` also reserves in this server's ledger.

        The reservations (:meth:`Admission.reserve`) are entered on ``stack``:
        whatever leaves its block with an exception is rolled back.
        """
        from ...privacy.accounting.errors import BudgetExceededError

        votes, spends = [], {}
        now = time.monotonic()
        for rid, client, shape in ids:
            with self.lock:
                item = self.pending.get(rid)
            if item is None:
                row = self.log.lookup(rid)
                if row is not None and row[1] != "pending":  # 'pending' here: being submitted right now
                    votes.append(Vote(REFUSE, f"server {self.config.rank} has already finished request {rid} "
                                              f"({row[1]})"))
                else:
                    votes.append(Vote(WAIT))
                continue
            age = now - item.arrived
            if item.status != "pending":
                votes.append(Vote(REFUSE, f"server {self.config.rank} already finished this request", age))
            elif item.client != client or list(item.share.shape) != shape:
                votes.append(Vote(REFUSE, "the servers received different clients or shapes for this request id", age))
            elif self.aggregation_ready is False:
                votes.append(Vote(REFUSE, "no owner models are loaded", age))
            elif not self._claim_for_vote(item, stack is not None):
                votes.append(Vote(REFUSE, f"cancelled by the client (server {self.config.rank} had reserved no "
                                          "budget for it); nothing computed or charged", age))
            elif stack is None:
                votes.append(Vote(OK, None, age))
            else:
                try:
                    spends[rid] = stack.enter_context(self.admission.reserve(client, shape[0]))
                except BudgetExceededError as error:
                    votes.append(Vote(REFUSE, f"over budget on server {self.config.rank}: {error}", age))
                    continue
                votes.append(Vote(OK, None, age))
        return votes, spends

    def _claim_for_vote(self, item: Pending, reserve: bool) -> bool:
        """False if the client cancelled the request; else, for the reserving vote, marks it reserved (atomically)."""
        with self.lock:
            if item.cancelled:
                return False
            if reserve:
                item.reserved = True
            return True

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
        mine = {"holdings": self.models.holdings(), "proposal": self._proposal() if self.config.rank == 0 else None}
        gathered: list = [None] * self.config.servers
        dist.all_gather_object(gathered, mine, group=group)
        proposal = gathered[0]["proposal"]
        holdings = [g["holdings"] for g in gathered]
        if holdings != proposal["considered"]:
            gone = any(any(h.get(o) is None or u not in h[o] for h in holdings) for o, u in proposal["loaded"])
            if gone or proposal["load_due"]:
                self._agree_and_load(state, dist, group, holdings, dict(proposal["loaded"]))
                return
        if proposal["op"] == "idle":
            if self.config.offline.enabled and self.config.offline.refill and self.aggregation_ready:
                self._stock(state, state.refill(Refill()))
            return
        # phase 1 (no reservation): which proposed ids has every server? Refused and stale ones end here;
        # the others are packed in the proposed (fair) order, skipping any that does not fit the batch.
        ids = proposal["ids"]
        have, _ = self._vote_predict(ids)
        votes: list = [None] * self.config.servers
        dist.all_gather_object(votes, have, group=group)
        held = []
        for index, entry in enumerate(ids):
            decision = agree([v[index] for v in votes], incomplete_after=self.config.incomplete_after)
            if decision.action == "run":
                held.append(entry)
            else:
                self._settle(entry, decision)
        chosen = [held[i] for i, _ in pack([e[2][0] for e in held], proposal["max_rows"], split=False)]
        if not chosen:
            return
        # phase 2: the chosen ids, with reservations in every server's own ledger (rolled back on any failure)
        with contextlib.ExitStack() as stack:
            mine, spends = self._vote_predict(chosen, stack)
            try:
                self._decide_and_run(state, dist, group, chosen, mine, spends)
            except BaseException:
                for rid, spend in spends.items():  # reserved in this step, never confirmed: nothing was released
                    if spend.state == "reserved":
                        self._finish(rid, "failed", error=f"the MPC failed on server {self.config.rank}; nothing "
                                                          "was revealed or charged")
                raise

    def _settle(self, entry: tuple, decision: Decision) -> None:
        """An id not every server accepted: refused -> failed everywhere; missing too long -> dropped everywhere."""
        rid, client, _ = entry
        if decision.action == "refuse":
            self._finish(rid, "failed", error=decision.reason)
        elif decision.action == "drop":
            if self.log.lookup(rid) is None:  # a late share is then refused as a replay
                self.log.claim(rid, client)
            self._finish(rid, "failed", error=decision.reason)
            self.log.finish(rid, "failed", decision.reason)

    def _decide_and_run(self, state: Any, dist: Any, group: Any, ids: list, mine: list, spends: dict) -> None:
        """Run the ids every server reserved: one MPC batch; confirm each spend, then serve its label share."""
        votes = [None] * self.config.servers
        dist.all_gather_object(votes, mine, group=group)
        run = []
        for index, entry in enumerate(ids):
            decision = agree([v[index] for v in votes], incomplete_after=self.config.incomplete_after)
            if decision.action == "run":
                run.append((entry[0], entry[2][0]))
                continue
            spend = spends.pop(entry[0], None)
            if spend is not None:
                spend.cancel()  # refused or incomplete: nothing charged
            self._settle(entry, decision)
        if not run:
            return
        with self.lock:
            parts = [[self.pending[rid].share] for rid, _ in run]
        # Padding up to a stocked size: this server's share of public zero rows is zero (their labels are dropped)
        (reply,), pieces = run_packed(parts, lambda shares: [state.predict(Predict(query_share=shares[0]))],
                                      padded_rows=self.config.offline.padded_rows, zero_shares=lambda zeros: [zeros])
        if reply.decodes:
            raise RuntimeError(f"server {self.config.rank} decoded {reply.decodes} values (must be 0)")
        for (rid, _), (label_shares, costs) in zip(run, pieces):
            spends[rid].confirm()  # committed before the share is served
            self._finish(rid, "done", label_share=label_shares[0], cost=costs[0])
        rows = sum(count for _, count in run)
        with self.lock:
            self.batches += 1
            self.totals["rows"] += rows
            self.totals["mpc_seconds"] += reply.seconds
            self.totals["bytes"] += reply.bytes
            self.totals["rounds"] += reply.rounds
            self.totals["decodes"] += reply.decodes

    aggregation_ready: Optional[bool] = False
    open_connections: Any = staticmethod(lambda: None)  # set by the front door

    def _check_buildable(self, bundle: Any) -> Optional[str]:
        """None if this owner's network alone builds on this server (local, no communication), else why not."""
        from ...mpc.stacked import StackedNetwork
        from ..owner import stack_shares

        try:
            StackedNetwork(stack_shares([bundle]), 1)
        except Exception as error:  # noqa: BLE001 - reported as the quarantine reason
            return f"the stored model cannot be built: {type(error).__name__}: {str(error)[:300]}"
        return None

    def _agree_and_load(self, state: Any, dist: Any, group: Any, holdings: list, loaded: dict) -> None:
        """All servers agree, owner by owner, on what to load; a bundle bad on any server is quarantined.

        The candidates are, per owner, the upload every server holds
        (:func:`~.store.choose_versions`): an owner withdrawn on any server is out, an
        owner whose new upload is on only some servers stays on its previous
        version if every server still holds it (else it is out until its
        upload is everywhere), and neither holds back the other owners. Each
        server then votes per candidate: ``ok``, ``missing`` (gone since the
        holdings were gathered: out this time, retried) or a reason it is
        unusable (unreadable or refused on disk, or its network does not
        build). The owners every server accepts are loaded; the others are
        quarantined with the reason (visible to that owner). Should loading
        the agreed set still fail on some server, every server falls back to
        the owners it had loaded before and quarantines the new ones: never a
        crash, never a restart loop.
        """
        wanted = sorted(choose_versions(holdings, loaded).items())
        found = self.models.load(wanted)
        # Until this agreement is over, a marker on disk names the uploads this process is about to build or
        # load for the first time: should it die meanwhile (a signal, the OOM killer, a crash in native code),
        # the restarted process votes them unusable instead of dying on them again (no restart loop).
        _write_loading_marker(self._loading_marker, [(o, u) for o, u in wanted if (o, u) not in self.loaded])
        mine = {}
        for owner, upload_id in wanted:
            item = found.get(owner)
            if item is None:
                mine[owner] = "missing"
            elif isinstance(item, str):
                mine[owner] = f"server {self.config.rank}: {item}"
            elif (owner, upload_id) in self.died_loading:
                mine[owner] = f"server {self.config.rank}: {DIED_LOADING}"
            else:
                problem = (None if (owner, upload_id) in self.loaded  # built and served already
                           else self._check_buildable(item))
                mine[owner] = "ok" if problem is None else f"server {self.config.rank}: {problem}"
        votes: list = [None] * self.config.servers
        dist.all_gather_object(votes, {"votes": mine, "loaded": list(self.loaded)}, group=group)
        was_loaded = [v["loaded"] for v in votes]
        votes = [v["votes"] for v in votes]
        bad = {owner: "; ".join(sorted({v[owner] for v in votes if v[owner] not in ("ok", "missing")}))
               for owner, _ in wanted}
        bad = {owner: reason for owner, reason in bad.items() if reason}
        missing = {o for o, _ in wanted if o not in bad and any(v[o] == "missing" for v in votes)}
        upload = dict(wanted)
        with self.lock:
            for owner, reason in bad.items():
                if self.quarantined.get(owner, {}).get("upload_id") != upload[owner]:
                    logger.error("quarantined the upload %s of owner %s (not loaded): %s", upload[owner], owner,
                                 reason)
            # only uploads still chosen are quarantined: a withdrawn or replaced one is forgotten
            self.quarantined = {owner: {"upload_id": upload[owner], "reason": reason} for owner, reason in bad.items()}
        good = [(o, u) for o, u in wanted if o not in bad and o not in missing]
        if any(list(w) != good for w in was_loaded):  # else every server serves exactly this set already
            ok = True
            try:
                self._load(state, good, [found[o] for o, _ in good])
            except Exception as error:  # noqa: BLE001 - local: agreed on below
                ok = False
                logger.error("loading %d owners failed: %s: %s", len(good), type(error).__name__,
                             str(error)[:300])
            flags: list = [None] * self.config.servers
            dist.all_gather_object(flags, ok, group=group)
            if not all(flags):
                before = [(o, u) for o, u in good if (o, u) in self.loaded]
                reason = "the servers could not load this upload together with the other owners' models"
                with self.lock:
                    for owner, upload_id in good:
                        if (owner, upload_id) not in before:
                            self.quarantined[owner] = {"upload_id": upload_id, "reason": reason}
                try:
                    self._load(state, before, [found[o] for o, _ in before])
                except Exception:  # noqa: BLE001 - even the previous set fails: serve no model rather than crash
                    self._load(state, [], [])
            if self.config.offline.enabled and self.aggregation_ready:  # the same on every server (agreed above)
                self._stock(state)
        # an owner whose current version is served (on every server): its previous version goes, on every server
        served = dict(self.loaded)
        after = [{o: ((v[0], None) if served.get(o) == v[0] else v) for o, v in h.items()} for h in holdings]
        for owner, (current, previous) in holdings[self.config.rank].items():
            if previous is not None and served.get(owner) == current:
                self.models.drop_previous(owner, previous)
        with self.lock:
            if not missing:  # else retried at the next due load (a version vanished while being read)
                self.considered = after
            self._next_load_try = time.monotonic() + 1.0
        self._loading_marker.unlink(missing_ok=True)  # this process survived building and loading them

    def _load(self, state: Any, wanted: list[tuple[str, str]], bundles: list[Any]) -> None:
        meta = next(iter(self.models.meta().values()), None)  # every stored model takes the same input shape
        shape = tuple(meta["input_shape"]) if meta is not None else None
        state.load(Load(bundles=tuple(bundles), settings=self.config.settings, input_shape=shape))
        with self.lock:
            self.loaded = list(wanted)
            self.aggregation_ready = bool(bundles)
        logger.info("loaded the shares of %d owners: %s", len(wanted), ", ".join(o for o, _ in wanted))

    def _stock(self, state: Any, replies: Optional[list] = None) -> None:
        """The offline phase (all servers in lockstep): stock every Offline batch size, or record a refill's figures."""
        if replies is None:
            replies = [state.precompute(Precompute(rows=rows, depth=self.config.offline.depth))
                       for rows in self.config.offline.batch_sizes]
        with self.lock:
            self.offline_figures.extend(replies)
            del self.offline_figures[:-64]  # the latest figures only (public)

    def fail_all(self, error: str) -> None:
        with self.lock:
            ids = [r for r, p in self.pending.items() if p.status == "pending"]
        for rid in ids:
            self._finish(rid, "failed", error=error)


LOADING_MARKER = "loading.json"
DIED_LOADING = "the server's party process died while building or loading this upload (a signal or a crash)"


def _write_loading_marker(path: Path, uploads: list[tuple[str, str]]) -> None:
    """Atomically record the uploads about to be built or loaded for the first time (nothing to record: no file)."""
    if not uploads:
        path.unlink(missing_ok=True)
        return
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps([list(u) for u in uploads]))
    os.replace(partial, path)


def _read_loading_marker(path: Path) -> set[tuple[str, str]]:
    """The uploads a previous process of this server died on (empty if it did not die while loading)."""
    try:
        return {(str(o), str(u)) for o, u in json.loads(path.read_text())}
    except FileNotFoundError:
        return set()
    except (ValueError, TypeError) as error:  # a torn or foreign file: nothing to quarantine, say so
        logger.warning("ignored an unreadable %s: %s", path, error)
        return set()


def _watchdog(what: str, wait: float, message: str) -> None:
    """Exit with a clear message if this party has not joined the MPC within ``wait`` seconds."""

    def watch() -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.1)
            check = getattr(sys.modules.get("crypten.communicator"), "is_initialized", None)
            try:
                if check is not None and check():
                    return
            except Exception:  # noqa: BLE001 - still importing
                pass
        sys.stderr.write(f"pricure {what}: error: {message}\n")
        sys.stderr.flush()
        os._exit(JOIN_TIMEOUT_EXIT)

    threading.Thread(target=watch, name="pricure-join-watchdog", daemon=True).start()


def run_dealer_node(*, servers: int, rendezvous: str, wait: float, argv: Sequence[str]) -> int:
    """``pricure dealer``: the dealer as its own process; rejoins (a fresh child) when the servers' MPC ends."""
    from . import supervisor

    if not supervisor.is_child():
        return supervisor.supervise("dealer", argv, wait=wait)
    supervisor.watch_parent()
    from ..dealer import DEALER_IDLE_TIMEOUT, run_dealer

    print(f"pricure dealer: joining the MPC of {servers} servers at {rendezvous}", file=sys.stderr, flush=True)
    _watchdog("dealer", wait, f"the dealer waited {wait:g} s at the rendezvous {rendezvous} for the {servers} "
                              "servers; start them (any order) with the same --servers and --rendezvous, or raise "
                              "--wait")
    try:
        run_dealer(world_size=servers, rendezvous=rendezvous, timeout=DEALER_IDLE_TIMEOUT)
    except KeyboardInterrupt:
        return 0
    except Exception as error:  # noqa: BLE001 - the rendezvous broke or a peer died mid-deal: rejoin
        print(f"pricure dealer: the MPC failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
              "rejoining", file=sys.stderr, flush=True)
    else:  # TTPServer returns when a server's connection drops (or on 'terminate')
        print("pricure dealer: the servers' MPC ended; rejoining", file=sys.stderr, flush=True)
    os._exit(supervisor.REJOIN)


def serve(config: NodeConfig) -> int:
    """Run one server until killed: a supervisor, and in its child the front door and the MPC loop."""
    from . import supervisor

    if not supervisor.is_child():
        return supervisor.supervise("serve", config.argv, wait=config.wait)
    supervisor.watch_parent()
    from .app import start_front_door
    from ..server import ServerConfig, ServerState, start_party

    node = Node(config)
    front = start_front_door(node)
    print(f"pricure serve: server {config.rank}/{config.servers} front door on "
          f"{'https' if config.certfile else 'http'}://{config.host}:{config.port}; "
          f"joining the MPC at {config.rendezvous}", file=sys.stderr, flush=True)
    _watchdog("serve", config.wait,
              f"server {config.rank} waited {config.wait:g} s at the rendezvous {config.rendezvous} for the other "
              f"{config.servers - 1} server(s) and the dealer; start them (any order) with the same --servers and "
              "--rendezvous, or raise --wait")
    try:
        audit = start_party(rank=config.rank, world_size=config.servers, rendezvous=config.rendezvous,
                            provider=config.cluster.crypten_provider, threads=config.threads,
                            timeout=config.cluster.request_timeout,
                            join_timeout=max(config.cluster.request_timeout, config.wait + 5.0))
        import torch.distributed as dist

        from ...mpc._crypten import crypten

        comm = crypten.communicator.get()
        settings: list = [None] * config.servers
        dist.all_gather_object(settings, config.public_settings(), group=comm.main_group)
    except Exception as error:  # noqa: BLE001 - a peer left during the rendezvous: retry (bounded)
        print(f"pricure serve: server {config.rank}: joining failed ({str(error).splitlines()[0][:200]}); retrying",
              file=sys.stderr, flush=True)
        front.stop()
        os._exit(supervisor.JOIN_FAILED)
    if any(s != settings[0] for s in settings):
        print(f"pricure serve: error: the servers disagree on their settings: {settings}", file=sys.stderr,
              flush=True)
        os._exit(SETTINGS_MISMATCH_EXIT)
    state = ServerState(ServerConfig(config.rank, config.servers, config.rendezvous, config.cluster.crypten_provider,
                                     config.threads, config.cluster.request_timeout, os.getppid()), audit)
    with node.lock:
        node.mpc_state = "ready"
    print(f"pricure serve: server {config.rank} joined the MPC with {config.servers - 1} other server(s) and "
          "the dealer", file=sys.stderr, flush=True)
    try:
        while True:
            node._expire()
            started = time.monotonic()
            node.step(state, comm, dist)
            time.sleep(max(0.0, config.tick - (time.monotonic() - started)))
    except KeyboardInterrupt:
        front.stop()
        return 0
    except BaseException:  # noqa: BLE001 - the MPC is broken: fail what is in flight, rejoin fresh
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        with node.lock:
            node.mpc_state = "failed"  # health shows it until the fresh party process answers
        node.fail_all(f"the MPC between the servers failed ({detail}); nothing was revealed or charged")
        print(f"pricure serve: server {config.rank}: the MPC failed ({detail}); restarting to rejoin",
              file=sys.stderr, flush=True)
        time.sleep(0.3)  # polling clients read the failures now, or from disk after the restart
        front.stop()
        os._exit(supervisor.REJOIN)
    return 0

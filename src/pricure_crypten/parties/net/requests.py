"""The front-door side of clients' requests on one server: queue, caps, cancel, results, the request log.

A client's query share is checked here before any MPC work (id, shape, row
count, the client's caps: at most ``max_client_requests`` pending requests
and ``max_client_rows`` pending rows per server, HTTP 429) and its id is
claimed in the request log (``requests.sqlite3``: a replayed id is refused
while the id is kept). The MPC loop (:mod:`.loop`) then feeds the held
requests to the serving core and ends each one here (:meth:`Requests.finish`).

A client may cancel its own request (:meth:`Requests.cancel`): a server that
has not yet voted to run it (no budget reserved) refuses it at its next vote,
so no server computes or charges it; after that vote the cancel only stops
this server from serving the label share, and says so.

Who sees what: this server holds one share of each query and, once its
charge is confirmed, one share of its label, served only to the client that
sent the query (another client's id is indistinguishable from an unknown
one). In the clear it learns public metadata only: ids, row counts, shapes,
client identities and, for answered-only requests, the outcome bits every
server revealed among themselves (served to the client to check).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..serving.budget import answered_only_costs
from ..serving.pipeline import Ticket
from ..serving.results import ServerCost
from .config import FrontDoor, Seat
from .store import ModelStore, RequestLog
from .wire import MAX_QUERY_ROWS, REQUEST_ID, ShapeError, TooManyRequests, WireError, encode_array

logger = logging.getLogger("pricure_crypten.serve")

RESULT_TTL = 600.0  # seconds a finished request's outcome stays readable
RESTARTED = "server {rank} restarted (its MPC failed) before this request finished; nothing was charged"


@dataclass
class Pending:
    client: str
    share: np.ndarray
    arrived: float
    ticket: Optional[Ticket] = None  # the serving core's view of it (set at submit)
    outcome: Optional[np.ndarray] = None  # answered-only: the outcome bits the servers revealed, served with the share
    status: str = "pending"  # pending | done | failed
    label_share: Optional[np.ndarray] = None
    error: Optional[str] = None
    finished: float = 0.0
    reserved: bool = False  # this server voted to run it (its budget reserved): a cancel comes too late
    cancelled: bool = False  # the client cancelled it before that: this server refuses it at the next vote
    discard: bool = False  # cancelled too late: the label share is never served
    cost: Optional[ServerCost] = None  # this server's public figures for it, served with the label share
    refused: Optional[str] = None  # "budget": refused (everywhere) because some server's ledger had no room


class Requests:
    """This server's clients' requests, pending and recently finished (shared by the front door and the loop).

    Args:
        seat: this server's place (rank, ``incomplete_after``, the request log's retention).
        front_door: the per-client caps.
        max_rows: rows per MPC batch (a request must fit in one).
        models: the stored models (the input shape a query must have).
        log: the request log (``requests.sqlite3``).
        admission: this server's :class:`~..serving.admission.LedgerAdmission` (its ledger and mechanism).
        models_ready: whether owner models are loaded (False: every request is refused at its vote).
        lock: the node's lock (guards ``pending`` and every :class:`Pending`).
    """

    def __init__(self, *, seat: Seat, front_door: FrontDoor, max_rows: int, models: ModelStore, log: RequestLog,
                 admission: Any, models_ready: Callable[[], Optional[bool]], lock: threading.Lock) -> None:
        self.seat, self.front_door, self.max_rows = seat, front_door, max_rows
        self.models, self.log, self.admission, self.models_ready, self.lock = models, log, admission, models_ready, lock
        self.pending: dict[str, Pending] = {}
        self._next_prune = 0.0
        restarted = log.fail_unfinished(RESTARTED.format(rank=seat.rank))
        if restarted:
            logger.warning("%d requests were unfinished when this server last stopped: marked failed", restarted)

    def submit(self, client: str, request_id: str, share: np.ndarray, *, outcome: bool = False) -> None:
        """Queue a client's query share (checked here, before any MPC work).

        ``outcome``: answered-only labelling (Confident-GNMax on a ledger with
        the ``rdp-filter`` accountant): the request runs alone, the servers
        reveal among themselves each row's answered bit, and each server's
        ledger charges the argmax step only for answered rows.
        """
        if not REQUEST_ID.match(request_id):
            raise WireError("request_id must be 32 lowercase hex digits (a fresh random id per request)")
        meta = self.models.meta()
        if not meta:
            raise LookupError("no owner has uploaded a model to this server yet")
        shape = tuple(next(iter(meta.values()))["input_shape"])
        if share.ndim != len(shape) + 1 or tuple(share.shape[1:]) != shape:
            raise ShapeError(f"the query share must have shape (rows, {', '.join(map(str, shape))}), "
                            f"got {list(share.shape)}")
        if share.shape[0] > min(MAX_QUERY_ROWS, self.max_rows):
            raise ShapeError(f"at most {min(MAX_QUERY_ROWS, self.max_rows)} rows per request, got {share.shape[0]}")
        if outcome:
            self._check_answered_only(client)
        rank, door = self.seat.rank, self.front_door
        with self.lock:  # the caps and the claim together: concurrent requests cannot overshoot them
            mine = [p for p in self.pending.values() if p.client == client and p.status == "pending"]
            rows = sum(p.share.shape[0] for p in mine)
            if len(mine) >= door.max_client_requests:
                raise TooManyRequests(f"client {client} already has {len(mine)} pending requests on server "
                                      f"{rank} (the limit); wait for their answers")
            if rows + share.shape[0] > max(door.max_client_rows, self.max_rows):
                raise TooManyRequests(f"client {client} already has {rows} pending rows on server {rank}; "
                                      f"{share.shape[0]} more exceed the limit "
                                      f"{max(door.max_client_rows, self.max_rows)}")
            if not self.log.claim(request_id, client):
                raise FileExistsError(f"request id {request_id} was already used: a replayed request is refused")
            item = Pending(client, share, time.monotonic())
            item.ticket = Ticket(client=client, shares=[share], outcome=bool(outcome), key=request_id,
                                 claim=lambda: self.claim(item), vote_checks=lambda: self.vote_checks(item))
            self.pending[request_id] = item

    def _check_answered_only(self, client: str) -> None:
        """Refuse (before any MPC work) an answered-only request this server cannot charge that way."""
        try:  # TypeError unless Confident-GNMax, ValueError unless an 'rdp-filter' ledger; nothing reserved
            answered_only_costs(self.admission.ledger, client, self.admission.mechanism)
        except (TypeError, ValueError) as error:
            raise WireError(f"answered-only accounting is not available on server {self.seat.rank}: {error}") \
                from None

    def result(self, client: str, request_id: str) -> Optional[dict]:
        """The client's own request: its status, and once done its label share and this server's public costs."""
        with self.lock:
            item = self.pending.get(request_id)
            if item is not None:
                if item.client != client:
                    return None  # someone else's request: indistinguishable from an unknown id
                out = {"request_id": request_id, "status": item.status, "error": item.error}
                if item.refused is not None:  # why it was refused, as a machine-readable kind ("budget")
                    out["refused"] = item.refused
                if item.status == "done":
                    out["label_share"] = encode_array(item.label_share)
                    out["cost"] = item.cost.public()  # this server's public figures, as in library mode
                    if item.outcome is not None:  # what every server learned (answered-only): the client's to check
                        out["outcome"] = [int(bit) for bit in item.outcome]
                return out
        row = self.log.lookup(request_id)
        if row is None or row[0] != client:
            return None
        return {"request_id": request_id, "status": "failed" if row[1] != "done" else "expired",
                "error": row[2] or "the result is no longer held by this server"}

    def cancel(self, client: str, request_id: str) -> Optional[dict]:
        """The client gives up on its request: what this server can promise (None: not this client's, or unknown).

        ``cancelled``: this server had not reserved its budget; it refuses the
        request at the next vote, so no server computes or charges it.
        ``too late``: this server had reserved its budget (the request may be
        computed and charged); its label share will not be served. ``failed``
        and ``expired``: it had ended already (``error`` says how).
        """
        rank = self.seat.rank
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

    # -- the serving core's hooks (phase 2, on the MPC loop's thread) --

    def vote_checks(self, item: Pending) -> Optional[str]:
        """This server's own checks before it reserves for a request (phase 2): a refusal reason, or None."""
        if item.status != "pending":
            return f"server {self.seat.rank} already finished this request"
        if self.models_ready() is False:
            return "no owner models are loaded"
        return None

    def claim(self, item: Pending) -> Optional[str]:
        """The core is about to reserve: refuse a cancelled request, else mark it reserved (a cancel comes too late)."""
        with self.lock:
            if item.cancelled:
                return (f"cancelled by the client (server {self.seat.rank} had reserved no budget for it); "
                        "nothing computed or charged")
            item.reserved = True
            return None

    # -- ending requests (the MPC loop) --

    def finish(self, request_id: str, status: str, *, label_share: Any = None, error: Optional[str] = None,
               cost: Optional[ServerCost] = None, outcome: Optional[np.ndarray] = None,
               refused: Optional[str] = None) -> None:
        """End a request: ``done`` (its charge confirmed: the label share may be served) or ``failed``."""
        with self.lock:
            item = self.pending.get(request_id)
            if item is None:
                return
            if item.discard and status == "done":  # cancelled by the client too late: charged, never served
                status, label_share = "failed", None
                error = (f"cancelled by the client after server {self.seat.rank} had reserved its budget: "
                         "computed and charged; its label share is discarded")
            item.status, item.label_share, item.error, item.finished = status, label_share, error, time.monotonic()
            item.cost = cost if label_share is not None else None
            item.outcome = outcome if label_share is not None else None
            item.refused = refused
            item.share = np.empty(0, dtype=np.int64)
        self.log.finish(request_id, status, error)

    def expire(self) -> None:
        """Forget finished requests after :data:`RESULT_TTL`, drop stale ones, prune the request log (each tick)."""
        now = time.monotonic()
        with self.lock:
            for rid in [r for r, p in self.pending.items() if p.status != "pending" and now - p.finished > RESULT_TTL]:
                del self.pending[rid]
            stale = [r for r, p in self.pending.items()
                     if p.status == "pending" and now - p.arrived > 3 * self.seat.incomplete_after]
        for rid in stale:  # never proposed by server 0 (it never reached it): dropped here too
            self.finish(rid, "failed", error="the request did not reach every server in time; dropped, "
                                             "nothing charged")
        if now >= self._next_prune:
            self._next_prune = now + 60.0
            gone = self.log.prune(retention=self.seat.log_retention, max_entries=self.seat.log_max_entries)
            if gone:
                logger.info("forgot %d finished request ids (retention)", gone)

    def fail_all(self, error: str) -> None:
        """Fail every pending request (the MPC failed; their reservations were rolled back)."""
        with self.lock:
            ids = [r for r, p in self.pending.items() if p.status == "pending"]
        for rid in ids:
            self.finish(rid, "failed", error=error)

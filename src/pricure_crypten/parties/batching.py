"""Concurrent clients: one agreed order, dynamic batching, and each client's own rows only.

Any number of threads (clients) call :meth:`RequestScheduler.submit` at once.
Each request is queued in arrival order with its own id; one worker thread
takes requests in that order and runs MPC batches one at a time, so all
servers compute the same batches in the same order. With dynamic batching,
the rows of the waiting requests are packed into one MPC batch of at most
``max_rows`` rows (a larger request is split across consecutive batches):
concatenating shares row-wise is local, and a row's result depends only on
that row, so packing changes nothing but the speed. The label shares that
come back are cut at the same row boundaries, and each request's future
receives exactly its own rows, nothing else.

Who sees what: the scheduler lives with the launcher and sees only shares
and public figures; it never reconstructs anything.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..config import Batching
from ..mpc.randomness import SecureRandom
from ..mpc.sharing import share_encoded
from .serving.messages import BatchReply
from .serving.packing import add_costs, gather, pack
from .serving.pipeline import run_packed
from .serving.results import ServerCost

#: run_batch(query shares per server) -> one :class:`~.serving.messages.BatchReply` per server. For a
#: request submitted with ``outcome=True`` it is called as ``run_batch(shares, outcome_rows=n)`` and each
#: reply also carries ``outcome`` (n,): the threshold step's answered bits of the first n rows, revealed to the servers.
RunBatch = Callable[..., list[BatchReply]]


class SchedulerClosedError(RuntimeError):
    """The ensemble was closed while this request waited; nothing was computed for it."""


@dataclass
class RequestResult:
    """What one request gets back: its own label shares and costs (one per server), and outcome bits if asked."""

    request_id: int
    label_shares: list[np.ndarray]
    costs: list[ServerCost]
    outcomes: np.ndarray | None = None  # answered bits (1/0) per row, if requested (answered-only)


@dataclass
class _Request:
    request_id: int
    shares: list[np.ndarray]
    rows: int
    future: Future
    outcome: bool = False  # reveal the answered bit of each row to the servers; never packed with others
    next_row: int = 0
    parts: list[list[np.ndarray]] = field(default_factory=list)  # per batch: one slice per server
    costs: list[ServerCost] | None = None  # per server, summed over the request's batches
    outcomes: list[np.ndarray] = field(default_factory=list)


class RequestScheduler:
    """Serialises and packs concurrent prediction requests into MPC batches.

    Args:
        run_batch: runs one MPC batch on every server (see :data:`RunBatch`).
        batching: the packing policy (:class:`~pricure_crypten.config.Batching`).
        num_servers: N (one share per server per request).
    """

    def __init__(self, run_batch: RunBatch, batching: Batching, num_servers: int, *,
                 pad_rows: Callable[[int], int] | None = None, idle: Callable[[], None] | None = None) -> None:
        self._run_batch = run_batch
        self.batching = batching
        self.num_servers = num_servers
        self._pad_rows = pad_rows
        self._idle = idle
        self._pad_rng = SecureRandom()
        self._pending: collections.deque[_Request] = collections.deque()
        self._condition = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._worker: threading.Thread | None = None
        self.batches_run = 0

    def submit(self, shares: Sequence[np.ndarray], rows: int, *, outcome: bool = False) -> Future:
        """Queue one request (its query shares, one per server); the future resolves to a :class:`RequestResult`.

        With ``outcome`` (answered-only labelling), the request's MPC batches
        carry no other request's rows, and the servers reveal among themselves
        the answered bit of each of its rows (never of padding rows).
        """
        if len(shares) != self.num_servers or any(s.shape[0] != rows for s in shares):
            raise ValueError(f"need one share of {rows} rows per server ({self.num_servers})")
        future: Future = Future()
        with self._condition:
            if self._closed:
                raise SchedulerClosedError("the ensemble is closed")
            self._pending.append(_Request(next(self._ids), list(shares), rows, future, outcome=bool(outcome)))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="pricure-scheduler", daemon=True)
                self._worker.start()
            self._condition.notify_all()
        return future

    def close(self) -> None:
        """Accept nothing more; fail what is still queued (not computed, so nothing to roll back)."""
        with self._condition:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._condition.notify_all()
        for request in dropped:
            if not request.future.done() and (request.next_row > 0 or request.future.set_running_or_notify_cancel()):
                request.future.set_exception(SchedulerClosedError("the ensemble was closed before this request ran"))

    def join(self, timeout: float | None = None) -> None:
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    # -- the worker --

    def _queued_rows(self) -> int:
        return sum(r.rows - r.next_row for r in self._pending)

    def _next_batch(self) -> list[tuple[_Request, int, int]] | None:
        """Wait for work; return [(request, first row, last row)] in arrival order, or None when closed."""
        with self._condition:
            idle = not self._pending
        if idle and self._idle is not None and not self._closed:
            try:
                self._idle()  # e.g. the offline phase: top up the dealer's tuples while nobody waits
            except Exception:  # noqa: BLE001 - a failed refill leaves the next batch to the on-line dealer
                pass
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            if self.batching.enabled and self.batching.window > 0:
                deadline = time.monotonic() + self.batching.window
                while self._queued_rows() < self.batching.max_rows and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                if self._closed:
                    return None
            while True:  # a request cancelled while queued is dropped (its caller is gone); pack again
                queue = list(self._pending)
                chosen = pack([r.rows - r.next_row for r in queue], self.batching.max_rows,
                              merge=self.batching.enabled, alone={i for i, r in enumerate(queue) if r.outcome})
                cancelled = [queue[i] for i, _ in chosen
                             if queue[i].next_row == 0 and not queue[i].future.running()
                             and not queue[i].future.set_running_or_notify_cancel()]
                if not cancelled:
                    break
                for request in cancelled:
                    self._pending.remove(request)
            batch = []
            for index, take in chosen:
                request = queue[index]
                batch.append((request, request.next_row, request.next_row + take))
                request.next_row += take
                if request.next_row == request.rows:
                    self._pending.remove(request)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            first, start, stop = batch[0]
            # alone in its batch, its rows first: reveal only theirs
            outcome_rows = stop - start if first.outcome else 0
            try:
                replies, pieces = run_packed(
                    [[share[a:b] for share in r.shares] for r, a, b in batch],
                    lambda shares: self._run_batch(shares, outcome_rows=outcome_rows) if outcome_rows
                    else self._run_batch(shares),
                    padded_rows=self._pad_rows, zero_shares=self._zero_shares)
            except BaseException as error:  # noqa: BLE001 - handed to every request of the batch
                self._fail([r for r, _, _ in batch], error)
                continue
            self.batches_run += 1
            self._deliver(batch, replies, pieces)

    def _zero_shares(self, zeros: np.ndarray) -> list[np.ndarray]:
        """Fresh shares of zero (padding) rows, one per server."""
        return share_encoded(zeros, num_parties=self.num_servers, rng=self._pad_rng)

    def _fail(self, requests: list[_Request], error: BaseException) -> None:
        with self._condition:
            for request in requests:
                if request in self._pending:  # its other rows must not run either
                    self._pending.remove(request)
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)

    def _deliver(self, batch: list[tuple[_Request, int, int]], replies: list[BatchReply], pieces: list) -> None:
        for (request, start, stop), (label_shares, costs) in zip(batch, pieces):
            request.parts.append(label_shares)
            request.costs = add_costs(request.costs, costs)
            if request.outcome:
                outcomes = [np.asarray(reply.outcome, dtype=np.int64) for reply in replies]
                if any(o.shape != (stop - start,) or not np.array_equal(o, outcomes[0]) for o in outcomes):
                    error = RuntimeError("the servers disagree on the revealed outcomes: the computation was corrupted")
                    if not request.future.done():
                        request.future.set_exception(error)
                    continue
                request.outcomes.append(outcomes[0])
            if stop == request.rows and not request.future.done():
                request.future.set_result(RequestResult(
                    request_id=request.request_id,
                    label_shares=[gather([part[server] for part in request.parts]) for server in range(self.num_servers)],
                    costs=list(request.costs),
                    outcomes=np.concatenate(request.outcomes) if request.outcome else None,
                ))

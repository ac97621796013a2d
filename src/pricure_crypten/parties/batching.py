"""Concurrent clients (library mode): one agreed order, dynamic batching, each client's own rows only.

Any number of threads (clients) call :meth:`RequestScheduler.submit` at once.
Each request becomes a :class:`~.serving.pipeline.Ticket`, queued in arrival
order; one worker thread hands the waiting tickets to the serving core
(:class:`~.serving.pipeline.ServingCore`: pack -> reserve -> run -> confirm
-> deliver, the same code as the networked servers run), one MPC batch at a
time, so all servers compute the same batches in the same order. With
dynamic batching, the rows of the waiting requests are packed into one MPC
batch of at most ``max_rows`` rows (a larger request is split across
consecutive batches): concatenating shares row-wise is local, and a row's
result depends only on that row, so packing changes nothing but the speed.
Each request's future receives exactly its own rows, nothing else, and only
after its charge is confirmed.

Who sees what: the scheduler lives with the launcher and sees only shares
and public figures; it never reconstructs anything.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from typing import Callable, Sequence

import numpy as np

from ..config import Batching
from ..mpc.randomness import SecureRandom
from ..mpc.sharing import share_encoded
from .serving.admission import Admission, LedgerAdmission
from .serving.pipeline import Delivery, RunBatch, ServingCore, Ticket

__all__ = ["Delivery", "RequestScheduler", "RunBatch", "SchedulerClosedError"]


class SchedulerClosedError(RuntimeError):
    """The ensemble was closed while this request waited; nothing was computed for it."""


def _claim(future: Future) -> Callable[[], str | None]:
    def claim() -> str | None:  # the caller gave up while it was queued: dropped, never computed or charged
        return None if future.set_running_or_notify_cancel() else "cancelled by the caller while queued"
    return claim


class RequestScheduler:
    """Serialises and packs concurrent prediction requests into MPC batches, through the serving core.

    Args:
        run_batch: runs one MPC batch on every server (see :data:`~.serving.pipeline.RunBatch`).
        batching: the packing policy (:class:`~pricure_crypten.config.Batching`).
        num_servers: N (one share per server per request).
        admission: who admits a request (default: charge nothing): a
            :class:`~.serving.admission.LedgerAdmission` reserves in the ledger
            when the request's first rows are packed, before any MPC work.
        pad_rows: Offline padding (the row count a batch runs as), or None.
        idle: called when nothing waits (e.g. the offline phase's top-up).
    """

    def __init__(self, run_batch: RunBatch, batching: Batching, num_servers: int, *,
                 admission: Admission | None = None, pad_rows: Callable[[int], int] | None = None,
                 idle: Callable[[], None] | None = None) -> None:
        self.batching = batching
        self.num_servers = num_servers
        self._idle = idle
        self._pad_rng = SecureRandom()
        self.core = ServingCore(
            admission=admission if admission is not None else LedgerAdmission(None, None), run=run_batch,
            deliver=lambda ticket, delivery: _settle(ticket.key, result=delivery),
            fail=lambda ticket, error: _settle(ticket.key, error=error),
            max_rows=batching.max_rows, merge=batching.enabled, split=True,
            padded_rows=pad_rows, zero_shares=self._zero_shares)
        self._pending: collections.deque[Ticket] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    @property
    def batches_run(self) -> int:
        return self.core.batches_run

    def submit(self, shares: Sequence[np.ndarray], rows: int, *, client: str = "", outcome: bool = False) -> Future:
        """Queue one request (its query shares, one per server); the future resolves to a
        :class:`~.serving.pipeline.Delivery`, or raises the admission's refusal or the batch's failure.

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
            self._pending.append(Ticket(client=client, shares=list(shares), outcome=bool(outcome), key=future,
                                        claim=_claim(future)))
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
        for ticket in dropped:
            future = ticket.key
            if not future.done() and (ticket.verdict is not None or future.set_running_or_notify_cancel()):
                if ticket.verdict is not None:
                    ticket.verdict.give_back()  # admitted, some rows computed, nothing delivered
                future.set_exception(SchedulerClosedError("the ensemble was closed before this request ran"))

    def join(self, timeout: float | None = None) -> None:
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    # -- the worker --

    def _queued_rows(self) -> int:
        return sum(t.remaining for t in self._pending)

    def _waiting(self) -> list[Ticket] | None:
        """Wait for work (and the batching window); the waiting tickets in arrival order, or None when closed."""
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
            return list(self._pending)

    def _work(self) -> None:
        while True:
            queue = self._waiting()
            if queue is None:
                return
            try:
                ended = self.core.step(queue)
            except BaseException:  # noqa: BLE001 - the core failed every ticket of the batch; go on
                ended = [t for t in queue if t.finished]
            with self._condition:
                for ticket in ended:
                    if ticket in self._pending:
                        self._pending.remove(ticket)

    def _zero_shares(self, zeros: np.ndarray) -> list[np.ndarray]:
        """Fresh shares of zero (padding) rows, one per server."""
        return share_encoded(zeros, num_parties=self.num_servers, rng=self._pad_rng)


def _settle(future: Future, *, result: Delivery | None = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if not future.running() and not future.set_running_or_notify_cancel():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

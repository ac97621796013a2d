"""The path of a query, top to bottom: the public API of pricure-crypten.

:class:`PrivateEnsemble` wires the parties together:

1. construction validates everything (owners agree on input shape and
   classes, supported layers; the :mod:`~pricure_crypten.config` objects
   validate themselves and each other) and starts nothing;
2. the first call (or :meth:`PrivateEnsemble.start`) launches the servers and
   the dealer, and every owner sends one fresh bundle of shares to each server
   (:meth:`ModelOwner.share`);
3. :meth:`PrivateEnsemble.predict`, from any number of threads at once: the
   client's queries are validated and its privacy budget reserved BEFORE any
   MPC work; the client shares its batch; the scheduler
   (:mod:`~pricure_crypten.parties.batching`) puts the request in the one
   order all servers follow, possibly packed with other clients' rows into
   one MPC batch; each server runs the stacked owners and the encrypted
   aggregation with its noise partial; the spend is committed; then, and only
   then, the shares of this client's own rows go to the client, whose
   :meth:`Client.reveal` is the single reveal.
4. A failure (a server or the dealer dies, stops answering, or errs) raises
   :class:`ServerError` to every request in the failed batch, reveals
   nothing and charges nothing; the next call launches a fresh cluster and
   the owners share their models again. :meth:`close` is final and idempotent.

Deployment note: in this library mode the owners and the clients run in the
calling process; the servers and the dealer are separate processes that
receive only shares. The calling process routes shares and never
reconstructs anything except through ``Client.reveal``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import numpy as np
import torch

from ._validation import check_int
from .config import Aggregation, Batching, Cluster, ExperimentOptions, Offline
from .mpc.randomness import SecureRandom
from .parties.batching import RequestScheduler
from .parties.client import Client
from .parties.cluster import ServerProcesses, ServerError
from .parties.owner import ModelOwner, check_owners
from .parties.serving.admission import LedgerAdmission
from .parties.serving.budget import check_accounting, check_budget, rows_that_fit, spent, worst_case
from .parties.serving.labelling import ACCOUNTING_MODES, NOT_SENT, Labelling, label_in_chunks
from .parties.serving.messages import Info, Load, Precompute, Predict, Profile, Refill, ServerSettings
from .parties.serving.results import Cost, OfflineCost, Prediction

_MOVED = {
    "epsilon": "aggregation=Aggregation(noise=calibrate(epsilon=..., mechanism=...))",
    "delta": "aggregation=Aggregation(noise=calibrate(epsilon=..., delta=..., mechanism=...))",
    "mechanism": "aggregation=Aggregation(noise=calibrate(epsilon=..., mechanism=...))",
    "noise": "aggregation=Aggregation(noise=...)",
    "logit_bound": "aggregation=Aggregation(logit_bound=...)",
    "num_servers": "cluster=Cluster(num_servers=...)",
    "colluding": "cluster=Cluster(colluding=...)",
    "provider": "cluster=Cluster(provider=...)",
    "threads_per_server": "cluster=Cluster(threads_per_server=...)",
    "noise_seed": "experiment=ExperimentOptions(noise_seed=...)",
    "share_seed": "experiment=ExperimentOptions(share_seed=...)",
    "stacking": "experiment=ExperimentOptions(stacking=...)",
}


class EnsembleClosedError(RuntimeError):
    """The ensemble was closed; create a new one."""


_STAGE_CATEGORY = {"linear": "linear", "conv2d": "linear", "affine": "linear", "flatten": "linear",
                   "relu": "activation", "square": "activation", "avgpool2d": "pooling", "maxpool2d": "pooling"}


def summarise_profile(replies: list[dict], wall_seconds: float) -> dict[str, float]:
    """Per-category seconds of a profiled batch (the slowest server per category)."""
    per_server = []
    for reply in replies:
        totals: dict[str, float] = {"communication": 0.0, "dealer": float(reply["dealer_seconds"]), "total": 0.0}
        for stage in reply["stages"]:
            kind = stage["stage"].split(":")[-1]
            category = _STAGE_CATEGORY.get(kind, kind if kind.startswith("aggregation") else "other")
            totals[category] = totals.get(category, 0.0) + stage["seconds"]
            totals["communication"] += stage["communication_seconds"]
            totals["total"] += stage["seconds"]
        per_server.append(totals)
    keys = sorted({k for totals in per_server for k in totals})
    summary = {k: max(t.get(k, 0.0) for t in per_server) for k in keys}
    summary["routing"] = max(0.0, wall_seconds - summary["total"])
    return summary


def _checked(value: Any, kind: type, name: str) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a pricure_crypten.{kind.__name__}, not {type(value).__name__}")
    return value


class PrivateEnsemble:
    """PRICURE on CrypTen: K owners' models, N servers, DP-noised aggregation, one reveal per call.

    Args:
        owners: the model owners (K >= 1), each with an ordinary ``torch.nn``
            model; owners with the same architecture are evaluated stacked.
        aggregation: what is released and its privacy (:class:`~pricure_crypten.config.Aggregation`;
            default: votes, Laplace noise at epsilon 1 per query).
        cluster: servers, dealer and failure bounds (:class:`~pricure_crypten.config.Cluster`;
            default: 2 servers and a dealer).
        batching: how concurrent calls share MPC batches (:class:`~pricure_crypten.config.Batching`).
        ledger: optional privacy ledger (:class:`~pricure_crypten.privacy.accounting.PrivacyLedger`);
            when given, every query is charged to the calling client's budget.
        experiment: benchmark/test switches (:class:`~pricure_crypten.config.ExperimentOptions`).
        offline: batch sizes whose dealer tuples are precomputed (:class:`~pricure_crypten.config.Offline`;
            default none). See also :meth:`precompute`.

    Who sees what: this object (the caller's process) holds the owners'
    plaintext models and routes shares; the server processes see only shares;
    only ``Client.reveal`` reconstructs, and only the calling client's rows.
    """

    def __init__(
        self,
        owners: Sequence[ModelOwner],
        *,
        aggregation: Aggregation | None = None,
        cluster: Cluster | None = None,
        batching: Batching | None = None,
        ledger: Any = None,
        experiment: ExperimentOptions | None = None,
        offline: Offline | None = None,
        **moved: Any,
    ) -> None:
        for name in moved:
            hint = _MOVED.get(name)
            raise TypeError(f"PrivateEnsemble got an unexpected keyword argument {name!r}"
                            + (f"; it moved: use {hint}" if hint else ""))
        self.owners = list(owners) if isinstance(owners, (list, tuple)) else owners
        self.input_shape, self.num_classes = check_owners(self.owners)
        self.aggregation = _checked(aggregation, Aggregation, "aggregation")
        self.cluster = _checked(cluster, Cluster, "cluster")
        self.batching = _checked(batching, Batching, "batching")
        self.experiment = _checked(experiment, ExperimentOptions, "experiment")
        self.offline = _checked(offline, Offline, "offline")
        self.offline.check_against(self.cluster, self.batching)
        admission = LedgerAdmission(ledger, self.aggregation.noise)  # TypeError for a non-ledger
        self.ledger = ledger
        seed = self.experiment.share_seed
        self._share_rng = SecureRandom(seed=seed) if seed is not None else SecureRandom()
        self._servers = ServerProcesses(self.cluster)
        self._scheduler = RequestScheduler(
            self._run_batch, self.batching, self.num_servers, admission=admission,
            pad_rows=self.offline.padded_rows if self.offline.enabled else None,
            idle=self.refill if self.offline.enabled and self.offline.refill else None,
        )
        self.offline_costs: list[OfflineCost] = []  # every precomputation of this ensemble, in order
        self._lifecycle = threading.RLock()
        self._loaded_launch = 0  # the cluster launch the owners' shares were loaded into
        self._closed = False

    @property
    def num_servers(self) -> int:
        return self.cluster.num_servers

    @property
    def batches(self) -> int:
        """MPC batches run so far (public; a refused call runs none)."""
        return self._scheduler.batches_run

    @property
    def mechanism(self) -> Any:
        """The calibrated noise mechanism (what each answered query costs)."""
        return self.aggregation.noise

    # -- lifecycle --

    def _check_open(self) -> None:
        if self._closed:
            raise EnsembleClosedError("this PrivateEnsemble is closed; create a new one")

    def start(self) -> "PrivateEnsemble":
        """Launch the servers and the dealer (again, after a failure); every owner sends fresh shares."""
        self._check_open()
        with self._lifecycle:
            if self._servers.running and self._loaded_launch == self._servers.launches:
                return self
            self._servers.start()
            per_server: list[list] = [[] for _ in range(self.num_servers)]
            for owner in self.owners:
                for server, bundle in enumerate(owner.share(num_servers=self.num_servers, rng=self._share_rng)):
                    per_server[server].append(bundle)
            settings = ServerSettings.of(aggregation=self.aggregation, cluster=self.cluster,
                                         experiment=self.experiment)
            self._servers.request([Load(bundles=tuple(b), settings=settings, input_shape=self.input_shape)
                                   for b in per_server])
            for rows in self.offline.batch_sizes:  # the offline phase, before any query of this launch runs
                self.offline_costs.append(OfflineCost.of(self._servers.broadcast(
                    Precompute(rows=rows, depth=self.offline.depth))))
            self._loaded_launch = self._servers.launches
        return self

    def precompute(self, rows: int, *, batches: int = 1) -> OfflineCost:
        """The offline phase for MPC batches of ``rows`` rows: keep ``batches`` of them in stock.

        Records (once per size, by a rehearsal on shares of zeros) which
        tuples such a batch needs, then has the dealer deal them in bulk. A
        later batch of exactly ``rows`` rows then makes no round trip to the
        dealer. Reveals nothing and charges no privacy budget (no query is
        involved). Returns the offline cost. See :class:`~pricure_crypten.config.Offline`
        for stock that is kept topped up automatically.
        """
        rows = check_int(rows, name="rows", minimum=1, maximum=self.batching.max_rows)
        batches = check_int(batches, name="batches", minimum=1)
        if not self.cluster.needs_dealer:
            raise ValueError("precomputation needs the dealer: use Cluster(provider='ttp') (the default)")
        self.start()
        cost = OfflineCost.of(self._servers.broadcast(Precompute(rows=rows, depth=batches)))
        self.offline_costs.append(cost)
        return cost

    def profile(self, queries: torch.Tensor | np.ndarray, *, stock: bool = False) -> dict[str, float]:
        """Where the seconds of one MPC batch go (for benchmarks): nothing is revealed or charged.

        Runs ``queries`` as one batch with every stage timed on every server
        (the servers drop the result: no share leaves them). With ``stock``,
        the batch's tuples are precomputed first. Returns seconds per
        category, the slowest server's: ``linear`` (Linear, Conv2d, affine,
        Flatten), ``activation`` (ReLU, Square), ``pooling``, ``aggregation_*``
        stages, their ``communication`` part, ``dealer`` (waiting for
        on-line dealer requests, inside the stages) and ``routing`` (the
        launcher's pickling and pipes: the call's wall time minus the servers').
        """
        batch = Client.check_queries(queries, self.input_shape)
        self._check_open()
        self.start()
        if stock:
            self.precompute(batch.shape[0])
        shares = Client("profile").share_queries(batch, num_servers=self.num_servers)
        begin = time.perf_counter()
        replies = self._servers.request([Profile(query_share=s) for s in shares])
        wall = time.perf_counter() - begin
        return summarise_profile(replies, wall)

    def refill(self) -> list[OfflineCost]:
        """Top every stocked batch size back up to its depth (the scheduler does this when idle)."""
        if self._closed or not self._servers.running or self._loaded_launch != self._servers.launches:
            return []
        replies = self._servers.broadcast(Refill())  # per server: one OfflineReply per size it topped up
        costs = [OfflineCost.of([server[i] for server in replies]) for i in range(len(replies[0]))]
        self.offline_costs.extend(costs)
        return costs

    def close(self) -> None:
        """Stop the servers and the dealer; fail queued calls. Idempotent, final, interrupt-safe."""
        self._closed = True  # no lock: closing must not wait behind a slow launch
        try:
            self._scheduler.close()
        finally:
            self._servers.close(final=True)
        self._scheduler.join(timeout=30)

    def __enter__(self) -> "PrivateEnsemble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def servers(self) -> ServerProcesses:
        """The running server (and dealer) processes of library mode (``cluster`` is their config)."""
        return self._servers

    def server_info(self) -> list[dict]:
        """Public facts each server reports about itself (pid, tuple provider, decode count, memory)."""
        self.start()
        return self._servers.broadcast(Info())

    # -- the query path --

    def _run_batch(self, shares: list[np.ndarray], *, outcome_rows: int = 0) -> list:
        """One MPC batch (called by the scheduler's worker thread only).

        ``outcome_rows`` > 0 (answered-only labelling only): the servers also
        reveal among themselves the answered bit of the first ``outcome_rows`` rows.
        """
        self.start()  # relaunches and reloads after a failure
        return self._servers.request([Predict(query_share=s, outcome_rows=int(outcome_rows)) for s in shares])

    def _serve(self, batch: np.ndarray, client: Client, *, outcome: bool = False) -> Any:
        """Share the batch for the servers and wait for the serving core's :class:`Delivery` (its charge confirmed)."""
        shares = client.share_queries(batch, num_servers=self.num_servers)
        future = self._scheduler.submit(shares, batch.shape[0], client=client.name, outcome=outcome)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted while queued: never computed, never charged
            raise

    def predict(self, queries: torch.Tensor | np.ndarray, *, client: Client | None = None) -> Prediction:
        """Private labels for a batch of queries, revealed to ``client`` only. Thread-safe.

        Raises (before any MPC work, nothing revealed, nothing charged):
            TypeError / ValueError for a malformed batch or client;
            :class:`EnsembleClosedError` after :meth:`close`; the ledger's
            ``BudgetExceededError`` when the batch does not fit the budget.
            A failure inside the MPC (:class:`ServerError`) reveals nothing
            and is not charged (the ledger's reservation is rolled back); the
            next call relaunches the cluster.
        """
        start = time.perf_counter()
        client = client if client is not None else Client()
        if not isinstance(client, Client):
            raise TypeError(f"client must be a pricure_crypten.Client, not {type(client).__name__}")
        batch = Client.check_queries(queries, self.input_shape)
        if batch.shape[0] > self.batching.max_queries:
            raise ValueError(f"the batch has {batch.shape[0]} queries, more than Batching.max_queries = "
                             f"{self.batching.max_queries}; split it into several calls")
        self._check_open()
        # The serving core reserves the budget when the batch's first rows are packed (BudgetExceededError:
        # nothing computed) and confirms it before the future resolves; a failure rolls it back.
        result = self._serve(batch, client)
        reveals_before = client.reveals
        labels = client.reveal(result.label_shares)
        cost = Cost.of(result.costs, queries=batch.shape[0], seconds=time.perf_counter() - start,
                       reveals=client.reveals - reveals_before)
        return Prediction(labels=labels, cost=cost)


    # -- private labelling of a pool --

    def label(
        self,
        pool: torch.Tensor | np.ndarray,
        *,
        client: Client,
        budget: float | None = None,
        accounting: str = "conservative",
    ) -> Labelling:
        """Label a client's unlabelled pool privately, under its privacy budget (library mode; networked: below).

        The pool is cut into chunks of at most ``Batching.max_rows`` rows (the
        fewest MPC batches the batching allows). Before each chunk the ledger
        is asked how many of its rows still fit the client's budget, for the
        WORST case of each row (both steps of Confident-GNMax); those rows are
        shared, computed, charged and revealed to ``client`` (one reveal per
        chunk), exactly as :meth:`predict` does. At the first row that would
        not fit, labelling stops cleanly: that row and every later one are
        refused -- never shared with the servers, never charged, nothing
        revealed -- and reported in :attr:`Labelling.refused`.

        Args:
            pool: (rows, *input_shape) float queries.
            client: the client (its name is the budget key).
            budget: optional cap on the client's TOTAL spent epsilon after this
                call, per the ledger's accountant (it can only stop labelling
                earlier; the guarantee is the ledger's budget). Needs a ledger.
            accounting: ``"conservative"`` (default; any mechanism, any
                accountant): every sent row is charged its full per-query
                cost, answered or not. ``"answered-only"`` (Confident-GNMax,
                ledger accountant ``"rdp-filter"``): every sent row is charged
                the threshold step, and the argmax step only if it was
                answered (:meth:`PrivacyLedger.spend_answered_only`).

        Who learns what. Conservative: the servers learn nothing (shares
        only, no decode); the client learns the labels (and so which rows
        were abstentions) and the public count of refused rows. Answered-only
        additionally reveals, per sent row, the threshold step's outcome
        (answered or abstained) to EVERY SERVER, by one joint reveal per MPC
        batch among the servers (:attr:`Cost.outcome_reveals`), so that the
        ledger's side confirms the actual charge from the servers' bits,
        never from the client's word. The servers thereby learn, per query,
        whether the owners agreed (whether the noisy top count reached the
        threshold) -- the output of the threshold step's Gaussian mechanism,
        covered by its charge -- never the label, the votes or the
        histogram. Rows of an answered-only chunk are never packed with other
        clients' rows, and padding rows' bits are never opened. The client
        learns nothing more than in the conservative mode.

        Networked mode: :meth:`RemoteEnsemble.label` (``pricure query
        --label``) does the same against ``pricure serve`` servers and
        returns the same :class:`Labelling`: chunks of at most the servers'
        ``max_rows``; before each chunk every server answers, from its OWN
        ledger (``GET /v1/budget``), how many rows fit the worst case, and
        the smallest answer is sent; answered-only needs Confident-GNMax and
        ``--accountant rdp-filter`` on every server, each charging from the
        servers' revealed outcome bits (the client checks they agree with
        its labels). ``spent_before``/``spent_after`` are then the largest
        over the servers' ledgers.

        Raises (before any MPC work, nothing shared, nothing charged):
            TypeError / ValueError for a malformed pool, client, budget or
            accounting mode, an empty pool, or a budget that cannot afford
            one row (the ledger's ``BudgetExceededError``, or ValueError for
            ``budget``). A failure of the first chunk's MPC raises
            :class:`ServerError`; a failure of a later chunk returns what was
            released so far, with ``stopped`` saying so. The failed chunk
            reveals nothing to the client; it is not charged in the
            conservative mode, and charged its WORST case in the answered-only
            mode once it started running (the servers may have opened its
            outcome bits before the failure: over-count, never under-count).
        """
        from .privacy.accounting.errors import BudgetExceededError

        begin = time.perf_counter()
        if not isinstance(client, Client):
            raise TypeError(f"client must be a pricure_crypten.Client, not {type(client).__name__}")
        check_accounting(accounting)
        if isinstance(pool, (torch.Tensor, np.ndarray)) and len(pool.shape) >= 1 and pool.shape[0] == 0:
            raise ValueError("the pool is empty: nothing to label")
        rows = Client.check_queries(pool, self.input_shape)
        budget = check_budget(budget)
        if budget is not None and self.ledger is None:
            raise ValueError("budget needs a ledger: give the PrivateEnsemble a PrivacyLedger")
        ledger = self.ledger
        # answered-only: TypeError unless Confident-GNMax, ValueError unless an 'rdp-filter' ledger; nothing reserved
        worst, costs = worst_case(ledger, client.name, self.mechanism, accounting)
        self._check_open()

        def fit(limit: int) -> int:
            return rows_that_fit(ledger, client.name, worst, limit, budget=budget)

        total = rows.shape[0]
        chunk = min(self.batching.max_rows, self.batching.max_queries)
        first = fit(min(chunk, total))
        if first == 0:  # refuse before any MPC work, with the ledger's own message where it is the ledger
            ledger.check(client.name, worst, queries=1)
            raise ValueError(f"budget={budget!r} cannot afford one row: the client's total spent epsilon would "
                             f"exceed it (per the ledger's {ledger.accountant!r} accountant); nothing was charged")
        before = spent(ledger, client.name)
        labels, sent, stopped, chunk_costs = label_in_chunks(
            total, chunk, first=first, rows_that_fit=fit,
            run=lambda start, stop: self._label_chunk(rows[start:stop], client=client, costs=costs),
            over_budget=(BudgetExceededError,), failure=(ServerError,))
        return Labelling(
            labels=labels, answered=labels >= 0, sent=sent,
            refused=total - sent if stopped == "budget" else 0, accounting=accounting,
            spent_before=before, spent_after=spent(ledger, client.name), batches=sum(c.batches for c in chunk_costs),
            cost=Cost.total(chunk_costs, time.perf_counter() - begin), stopped=stopped,
        )

    def _label_chunk(self, batch: np.ndarray, *, client: Client, costs: Any) -> tuple[np.ndarray, Cost]:
        """One chunk of :meth:`label`: reserve (worst case), compute, confirm (the outcome), reveal."""
        start = time.perf_counter()
        rows = batch.shape[0]
        # reserved (the worst case, answered-only) before any MPC work, confirmed -- from the servers'
        # revealed outcome bits, never the client's word -- before the result comes back (the serving core)
        result = self._serve(batch, client, outcome=costs is not None)
        reveals_before = client.reveals
        labels = client.reveal(result.label_shares)
        if result.outcomes is not None and not np.array_equal(labels >= 0, result.outcomes == 1):
            raise RuntimeError("the client's labels disagree with the servers' revealed outcomes: "
                               "the computation was corrupted")
        return labels, Cost.of(result.costs, queries=rows, seconds=time.perf_counter() - start,
                               reveals=client.reveals - reveals_before)

__all__ = ["ACCOUNTING_MODES", "NOT_SENT", "Cost", "EnsembleClosedError", "Labelling", "OfflineCost", "Prediction",
           "PrivateEnsemble", "ServerError"]

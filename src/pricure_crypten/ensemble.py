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

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ._validation import check_int
from .config import Aggregation, Batching, Cluster, ExperimentOptions, Offline
from .mpc.randomness import SecureRandom
from .parties.batching import RequestScheduler
from .parties.client import Client
from .parties.cluster import ServerCluster, ServerError
from .parties.owner import ModelOwner, check_owners

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


@dataclass(frozen=True)
class Cost:
    """What one prediction call cost.

    ``rounds`` and ``mpc_seconds`` are those of the MPC batch(es) that carried
    the call (per server; equal on all servers), ``batches`` how many there
    were and ``batch_queries`` the rows of the largest (other clients' rows
    included, under dynamic batching); ``bytes_sent`` is summed over the
    servers and pro-rated to this call's rows; ``reveals`` counts client
    reconstructions and ``server_decodes`` plaintext decodes on servers (0 by
    design). ``dealer_requests`` counts round trips to the dealer during the
    call (0 when the batch ran from precomputed tuples: a pure online phase).
    """

    queries: int
    seconds: float
    mpc_seconds: float
    rounds: int
    bytes_sent: float
    reveals: int
    server_decodes: int
    batches: int = 1
    batch_queries: int = 0
    dealer_requests: int = 0

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / self.queries

    @property
    def bytes_per_query(self) -> float:
        return self.bytes_sent / self.queries


@dataclass(frozen=True)
class OfflineCost:
    """What one precomputation (the offline phase) cost; public figures, the slowest server's.

    ``seconds`` includes ``rehearsal_seconds``, the one-off run on shares of
    zeros that records which tuples a batch of this size needs; ``rounds``
    and ``bytes_sent`` (summed over the servers) are those of the rehearsal
    and of the bulk exchanges with the dealer; ``stock_bytes`` is the largest
    server's stock afterwards (its memory cost), ``tuples`` the tuples dealt.
    """

    rows: int
    batches: int
    seconds: float
    rehearsal_seconds: float
    rounds: int
    bytes_sent: int
    exchanges: int
    tuples: int
    requests_per_batch: int
    stock_bytes: int

    @property
    def stock_bytes_per_query(self) -> float:
        """Offline storage per query on one server, from the stock held for ``batches`` batches."""
        return self.stock_bytes / (self.rows * self.batches) if self.batches else float("nan")

    @classmethod
    def of(cls, replies: list[dict]) -> "OfflineCost":
        return cls(
            rows=int(replies[0]["rows"]), batches=int(replies[0]["batches"]),
            seconds=max(float(r["seconds"]) for r in replies),
            rehearsal_seconds=max(float(r["rehearsal_seconds"]) for r in replies),
            rounds=max(int(r["rounds"]) for r in replies), bytes_sent=sum(int(r["bytes"]) for r in replies),
            exchanges=max(int(r["exchanges"]) for r in replies), tuples=max(int(r["tuples"]) for r in replies),
            requests_per_batch=int(replies[0]["requests_per_batch"]),
            stock_bytes=max(int(r["stock_bytes"]) for r in replies),
        )


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


@dataclass(frozen=True)
class Prediction:
    """The client's view of one prediction call: labels (-1 = abstain) and its cost."""

    labels: np.ndarray
    cost: Cost


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
        self.cluster_config = _checked(cluster, Cluster, "cluster")
        self.batching = _checked(batching, Batching, "batching")
        self.experiment = _checked(experiment, ExperimentOptions, "experiment")
        self.offline = _checked(offline, Offline, "offline")
        if self.offline.enabled and not self.cluster_config.needs_dealer:
            raise ValueError("Offline precomputation needs the dealer: use Cluster(provider='ttp') (the default)")
        if self.offline.enabled and self.offline.batch_sizes[-1] > self.batching.max_rows:
            raise ValueError(f"Offline.batch_sizes {self.offline.batch_sizes} has a size above Batching.max_rows = "
                             f"{self.batching.max_rows}: no MPC batch that large ever runs")
        if ledger is not None and not callable(getattr(ledger, "spend", None)):
            raise TypeError(f"ledger must be a PrivacyLedger (with a spend() method), not {type(ledger).__name__}")
        self.ledger = ledger
        seed = self.experiment.share_seed
        self._share_rng = SecureRandom(seed=seed) if seed is not None else SecureRandom()
        self._cluster = ServerCluster(self.cluster_config)
        self._scheduler = RequestScheduler(
            self._run_batch, self.batching, self.num_servers,
            pad_rows=self.offline.padded_rows if self.offline.enabled else None,
            idle=self.refill if self.offline.enabled and self.offline.refill else None,
        )
        self.offline_costs: list[OfflineCost] = []  # every precomputation of this ensemble, in order
        self._lifecycle = threading.RLock()
        self._loaded_launch = 0  # the cluster launch the owners' shares were loaded into
        self._closed = False

    @property
    def num_servers(self) -> int:
        return self.cluster_config.num_servers

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
            if self._cluster.running and self._loaded_launch == self._cluster.launches:
                return self
            self._cluster.start()
            per_server: list[list] = [[] for _ in range(self.num_servers)]
            for owner in self.owners:
                for server, bundle in enumerate(owner.share(num_servers=self.num_servers, rng=self._share_rng)):
                    per_server[server].append(bundle)
            settings = dict(
                aggregation=self.aggregation.method, mechanism=self.aggregation.noise,
                colluding=self.cluster_config.colluding, logit_bound=self.aggregation.logit_bound,
                noise_seed=self.experiment.noise_seed, stacking=self.experiment.stacking,
                test_only_noise_seed=self.experiment.test_only_noise_seed,
                input_shape=self.input_shape,
            )
            self._cluster.request("load", [dict(settings, bundles=b) for b in per_server])
            for rows in self.offline.batch_sizes:  # the offline phase, before any query of this launch runs
                self.offline_costs.append(OfflineCost.of(self._cluster.broadcast(
                    "precompute", {"rows": rows, "depth": self.offline.depth})))
            self._loaded_launch = self._cluster.launches
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
        if not self.cluster_config.needs_dealer:
            raise ValueError("precomputation needs the dealer: use Cluster(provider='ttp') (the default)")
        self.start()
        cost = OfflineCost.of(self._cluster.broadcast("precompute", {"rows": rows, "depth": batches}))
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
        replies = self._cluster.request("profile", [{"query_share": s} for s in shares])
        wall = time.perf_counter() - begin
        return summarise_profile(replies, wall)

    def refill(self) -> list[OfflineCost]:
        """Top every stocked batch size back up to its depth (the scheduler does this when idle)."""
        if self._closed or not self._cluster.running or self._loaded_launch != self._cluster.launches:
            return []
        replies = self._cluster.broadcast("refill")  # per server: one figure dict per size it topped up
        costs = [OfflineCost.of([server[i] for server in replies]) for i in range(len(replies[0]))]
        self.offline_costs.extend(costs)
        return costs

    def close(self) -> None:
        """Stop the servers and the dealer; fail queued calls. Idempotent, final, interrupt-safe."""
        self._closed = True  # no lock: closing must not wait behind a slow launch
        try:
            self._scheduler.close()
        finally:
            self._cluster.close(final=True)
        self._scheduler.join(timeout=30)

    def __enter__(self) -> "PrivateEnsemble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def cluster(self) -> ServerCluster:
        return self._cluster

    def server_info(self) -> list[dict]:
        """Public facts each server reports about itself (pid, tuple provider, decode count, memory)."""
        self.start()
        return self._cluster.broadcast("info")

    # -- the query path --

    def _run_batch(self, shares: list[np.ndarray]) -> list[dict]:
        """One MPC batch (called by the scheduler's worker thread only)."""
        self.start()  # relaunches and reloads after a failure
        return self._cluster.request("predict", [{"query_share": s} for s in shares])

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
        spend = (
            self.ledger.spend(client.name, self.mechanism, queries=batch.shape[0])
            if self.ledger is not None else contextlib.nullcontext()
        )
        # Entering reserves the budget (committed) or raises BudgetExceededError;
        # an exception inside rolls the reservation back: nothing was revealed.
        with spend as reservation:
            shares = client.share_queries(batch, num_servers=self.num_servers)
            future = self._scheduler.submit(shares, batch.shape[0])
            try:
                result = future.result()
            except BaseException:
                future.cancel()  # interrupted while queued: never computed
                raise
            if reservation is not None:
                reservation.confirm()  # committed before the client receives anything
        reveals_before = client.reveals
        labels = client.reveal(result.label_shares)
        cost = Cost(
            queries=batch.shape[0],
            seconds=time.perf_counter() - start,
            mpc_seconds=result.mpc_seconds,
            rounds=result.rounds,
            bytes_sent=result.bytes_sent,
            reveals=client.reveals - reveals_before,
            server_decodes=result.decodes,
            batches=result.batches,
            batch_queries=result.batch_rows,
            dealer_requests=result.dealer_requests,
        )
        return Prediction(labels=labels, cost=cost)


__all__ = ["Cost", "EnsembleClosedError", "OfflineCost", "Prediction", "PrivateEnsemble", "ServerError"]

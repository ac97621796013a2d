"""The path of a query, top to bottom: the public API of pricure-crypten.

:class:`PrivateEnsemble` wires the parties together:

1. construction validates everything (owners agree on input shape and
   classes, supported layers, N, epsilon/delta, mechanism, aggregation);
2. :meth:`PrivateEnsemble.start` launches the servers and the dealer, and
   every owner sends one bundle of shares to each server
   (:meth:`ModelOwner.share`);
3. :meth:`PrivateEnsemble.predict`: the client's queries are validated and
   the privacy budget is checked BEFORE any MPC work; the client shares the
   batch; each server runs the stacked owners (:mod:`inference`) and the
   encrypted aggregation with its noise partial (:mod:`aggregation`); the
   spend is committed; then, and only then, the servers' label shares go to
   the client, whose :meth:`Client.reveal` is the single reveal.

Deployment note: in this library the owners and the client run in the
calling process; the servers and the dealer are separate processes that
receive only shares. The calling process routes the shares and never
reconstructs anything except through ``Client.reveal``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .aggregation import DEFAULT_LOGIT_BOUND, check_logit_bound
from .client import Client
from .dealer import check_provider
from .noise import ConfidentGNMax, Mechanism, calibrate
from .noise.base import check_split
from .owners import ModelOwner, check_owners
from .randomness import SecureRandom
from .servers import ServerCluster


@dataclass(frozen=True)
class Cost:
    """What one prediction call cost. ``rounds`` is per server (equal on all
    servers); ``bytes_sent`` is summed over the servers; ``reveals`` counts
    client reconstructions and ``server_decodes`` plaintext decodes on servers
    (0 by design)."""

    queries: int
    seconds: float
    mpc_seconds: float
    rounds: int
    bytes_sent: int
    reveals: int
    server_decodes: int

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / self.queries

    @property
    def bytes_per_query(self) -> float:
        return self.bytes_sent / self.queries


@dataclass(frozen=True)
class Prediction:
    """The client's view of one prediction call: labels (-1 = abstain) and its cost."""

    labels: np.ndarray
    cost: Cost


class PrivateEnsemble:
    """PRICURE on CrypTen: K owners' models, N servers, DP-noised aggregation, one reveal.

    Args:
        owners: the model owners (K >= 1); owners with the same architecture
            are evaluated stacked, in one batched pass.
        num_servers: N >= 2 non-colluding servers.
        epsilon: per-query epsilon (> 0; ``float("inf")`` for no noise).
        delta: per-query delta (default 0 for Laplace, 1e-5 for Gaussian).
        mechanism: ``"laplace"`` (default) or ``"gaussian"``.
        aggregation: ``"vote"`` (default) or ``"softmax"``.
        colluding: t < N: the noise stays fully calibrated even if t servers
            pool their partials (each partial is drawn for N - t servers).
        provider: ``"ttp"`` (secure, default: a dealer process) or
            ``"insecure-tfp"`` (speed experiments only).
        logit_bound: owners' logits are clamped to [-bound, bound] under MPC.
        ledger: optional privacy ledger (:mod:`pricure_crypten.accounting`);
            when given, every query is charged to the client's budget.
        noise_seed / share_seed: deterministic CSPRNG streams for reproducible
            experiments and tests only (default: the OS CSPRNG).
        threads_per_server: torch threads in each server process.
        noise: a ready-made mechanism (e.g. :class:`~pricure_crypten.noise.ConfidentGNMax`)
            instead of calibrating one from epsilon/delta/mechanism.
        stacking: ``True`` (default) evaluates same-architecture owners in one
            batched pass; ``False`` evaluates the owners one after the other
            (the naive baseline, for benchmarks: rounds grow with K).
    """

    def __init__(
        self,
        owners: Sequence[ModelOwner],
        *,
        num_servers: int = 2,
        epsilon: float = 1.0,
        delta: float | None = None,
        mechanism: str = "laplace",
        aggregation: str = "vote",
        colluding: int = 0,
        provider: str = "ttp",
        logit_bound: float = DEFAULT_LOGIT_BOUND,
        ledger: Any = None,
        noise_seed: str | int | None = None,
        share_seed: str | int | None = None,
        threads_per_server: int | None = None,
        stacking: bool = True,
        noise: Mechanism | None = None,
    ) -> None:
        self.owners = list(owners) if isinstance(owners, (list, tuple)) else owners
        self.input_shape, self.num_classes = check_owners(self.owners)
        check_split(num_servers, colluding)
        self.num_servers = num_servers
        self.colluding = colluding
        self.aggregation = aggregation
        self.mechanism: Mechanism = (
            calibrate(epsilon=epsilon, delta=delta, mechanism=mechanism, aggregation=aggregation)
            if noise is None else noise
        )
        if isinstance(self.mechanism, ConfidentGNMax) and aggregation != "vote":
            raise ValueError("Confident-GNMax aggregates votes: use aggregation='vote'")
        self.logit_bound = check_logit_bound(logit_bound)
        self.provider = check_provider(provider)
        self.ledger = ledger
        self.noise_seed = noise_seed
        self.stacking = bool(stacking)
        self._share_rng = SecureRandom(seed=share_seed) if share_seed is not None else SecureRandom()
        self._cluster = ServerCluster(
            num_servers=num_servers, provider=provider, threads_per_server=threads_per_server
        )
        self._loaded = False

    # -- lifecycle --

    def start(self) -> "PrivateEnsemble":
        """Launch the servers and the dealer; every owner sends its shares."""
        if self._loaded:
            return self
        self._cluster.start()
        per_server: list[list] = [[] for _ in range(self.num_servers)]
        for owner in self.owners:
            for server, bundle in enumerate(owner.share(num_servers=self.num_servers, rng=self._share_rng)):
                per_server[server].append(bundle)
        settings = dict(
            aggregation=self.aggregation, mechanism=self.mechanism, colluding=self.colluding,
            logit_bound=self.logit_bound, noise_seed=self.noise_seed, stacking=self.stacking,
        )
        self._cluster.request("load", [dict(settings, bundles=b) for b in per_server])
        self._loaded = True
        return self

    def close(self) -> None:
        self._cluster.close()
        self._loaded = False

    def __enter__(self) -> "PrivateEnsemble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def cluster(self) -> ServerCluster:
        return self._cluster

    def server_info(self) -> list[dict]:
        """Public facts each server reports about itself (pid, tuple provider, decode count)."""
        return self._cluster.broadcast("info")

    # -- the query path --

    def predict(self, queries: torch.Tensor | np.ndarray, *, client: Client | None = None) -> Prediction:
        """Private labels for a batch of queries, revealed to ``client`` only.

        Raises (before any MPC work, nothing revealed, nothing charged):
            TypeError / ValueError for a malformed batch; the ledger's
            ``BudgetExceededError`` when the batch does not fit the budget.
            A failure inside the MPC (``ServerError``) reveals nothing and is
            not charged: the ledger's reservation is rolled back.
        """
        start = time.perf_counter()
        client = client if client is not None else Client()
        batch = Client.check_queries(queries, self.input_shape)
        spend = (
            self.ledger.spend(client.name, self.mechanism, queries=batch.shape[0])
            if self.ledger is not None else contextlib.nullcontext()
        )
        # Entering reserves the budget (committed) or raises BudgetExceededError;
        # an exception inside rolls the reservation back: nothing was revealed.
        with spend as reservation:
            if not self._loaded:
                self.start()
            shares = client.share_queries(batch, num_servers=self.num_servers)
            replies = self._cluster.request("predict", [{"query_share": s} for s in shares])
            if reservation is not None:
                reservation.confirm()  # committed before the client receives anything
        reveals_before = client.reveals
        labels = client.reveal([r["label_share"] for r in replies])
        cost = Cost(
            queries=batch.shape[0],
            seconds=time.perf_counter() - start,
            mpc_seconds=max(r["seconds"] for r in replies),
            rounds=max(r["rounds"] for r in replies),
            bytes_sent=sum(r["bytes"] for r in replies),
            reveals=client.reveals - reveals_before,
            server_decodes=sum(r["decodes"] for r in replies),
        )
        return Prediction(labels=labels, cost=cost)

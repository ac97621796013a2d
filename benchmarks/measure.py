"""Timing one configuration: the private protocol (batched or naive) and the plaintext ensemble.

Private figures come from :class:`pricure_crypten.Cost` of each measured
``predict`` call: ``seconds`` (end to end in the calling process: the
client's sharing, the MPC, the reveal) divided by the batch size gives
seconds per query; ``mpc_seconds`` is the slowest server's time for the
batch; ``rounds`` (per server) and ``bytes_sent`` (summed over the servers)
are deterministic for a configuration. Each call is exactly one MPC batch
(dynamic batching off and ``max_rows`` at least the largest batch: there is
one client, so nothing to merge and no batching window to wait for). Every
ensemble is started once per point; the first ``predict`` of each batch size
is a warm-up and is not measured; then ``repeats`` calls are measured. The scaling sweeps use
Laplace noise at epsilon = 1 with vote aggregation (the noise costs the same
at any epsilon).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn

from pricure_crypten import (
    Aggregation,
    Batching,
    Client,
    Cluster,
    ExperimentOptions,
    ModelOwner,
    PrivateEnsemble,
    calibrate,
)
from pricure_crypten.experiments import reference

from .memory import largest_peak_mib

T = TypeVar("T")
FAILURES = (RuntimeError, MemoryError, OSError)  # ServerError is a RuntimeError
PLAINTEXT_MIN_REPEATS = 10


@dataclass(frozen=True)
class Spread:
    """Median and range (min, max) of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))

    def inverse(self) -> "Spread":
        """The spread of 1 / value (e.g. queries per second from seconds per query)."""
        return Spread(1 / self.median, 1 / self.high, 1 / self.low)


@dataclass(frozen=True)
class PrivateTiming:
    """The measured cost of one batch size on one running ensemble."""

    batch: int
    repeats: int
    startup_seconds: float
    seconds_per_query: Spread
    mpc_seconds_per_batch: Spread
    rounds_per_batch: int
    bytes_per_batch: float
    server_peak_mib: float | None
    dealer_peak_mib: float | None

    @property
    def bytes_per_query(self) -> float:
        return self.bytes_per_batch / self.batch


def time_private(
    owners: Sequence[ModelOwner],
    batches: Sequence[torch.Tensor],
    *,
    num_servers: int,
    stacking: bool,
    repeats: int,
) -> Iterator[PrivateTiming]:
    """Start one ensemble, then warm up and time each batch in increasing size, yielding as it goes.

    The ensemble runs until the generator is exhausted or closed. Peak RSS
    (``VmHWM``, see :mod:`benchmarks.memory`) is read after each batch size,
    so with sizes in increasing order each figure is the peak up to and
    including that size; None where ``/proc`` is unavailable.
    """
    client = Client("bench")
    begin = time.perf_counter()
    with PrivateEnsemble(
        owners,
        aggregation=Aggregation(method="vote", noise=calibrate(epsilon=1.0, mechanism="laplace", aggregation="vote")),
        cluster=Cluster(num_servers=num_servers),
        batching=Batching(enabled=False, max_rows=max([256, *map(len, batches)])),
        experiment=ExperimentOptions(stacking=stacking),
    ) as ensemble:
        startup = time.perf_counter() - begin
        for queries in sorted(batches, key=len):
            ensemble.predict(queries, client=client)  # warm-up, not measured
            costs = [ensemble.predict(queries, client=client).cost for _ in range(repeats)]
            yield PrivateTiming(
                batch=len(queries),
                repeats=repeats,
                startup_seconds=startup,
                seconds_per_query=Spread.of([c.seconds_per_query for c in costs]),
                mpc_seconds_per_batch=Spread.of([c.mpc_seconds for c in costs]),
                rounds_per_batch=max(c.rounds for c in costs),
                bytes_per_batch=max(c.bytes_sent for c in costs),
                server_peak_mib=largest_peak_mib(ensemble.servers.server_pids),
                dealer_peak_mib=largest_peak_mib([ensemble.servers.dealer_pid]),
            )


def measure_plaintext(models: Sequence[nn.Module], queries: torch.Tensor, *, repeats: int) -> Spread:
    """Seconds per query of the plaintext ensemble (all owners' logits, vote histogram, argmax).

    Noiseless (epsilon = inf); the same inputs as the private run, in the
    calling process with its torch thread count; one unmeasured warm-up, then
    at least :data:`PLAINTEXT_MIN_REPEATS` measured runs (they take
    milliseconds, and single runs are at the mercy of a busy machine).
    """
    no_noise = calibrate(epsilon=float("inf"))

    def once() -> float:
        start = time.perf_counter()
        counts = reference.histogram(reference.ensemble_logits(models, queries), aggregation="vote")
        reference.noisy_argmax(counts, aggregation="vote", mechanism=no_noise)
        return (time.perf_counter() - start) / len(queries)

    once()
    return Spread.of([once() for _ in range(max(repeats, PLAINTEXT_MIN_REPEATS))])


def attempt(run: Callable[[], T]) -> tuple[T | None, str]:
    """``(result, "")``, or ``(None, reason)`` if the point failed."""
    try:
        return run(), ""
    except FAILURES as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
        cause = f" ... {lines[-1]}" if len(lines) > 1 else ""  # e.g. the server's exception
        return None, f"{type(err).__name__}: {lines[0]}{cause}"[:400]

"""The scaling sweeps (owners, servers, batch): one CSV row per point.

Each suite is a generator of rows (dicts with the same keys for every row
of a suite), so the caller can write results as they come. A point that
fails (a server dies, memory runs out) yields a row whose ``error`` column
says why and whose figures are empty; the sweep goes on.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any, Iterator

from tqdm.auto import tqdm

from .grid import Grid
from .measure import PrivateTiming, Spread, attempt, measure_plaintext, time_private
from .memory import cumulative_peaks
from .netmodel import NETWORKS, estimate_batch_seconds
from .workloads import random_owners, random_queries


def _spread_columns(name: str, spread: Spread | None) -> dict[str, float | None]:
    if spread is None:
        return {name: None, f"{name}_min": None, f"{name}_max": None}
    return {name: spread.median, f"{name}_min": spread.low, f"{name}_max": spread.high}


def _estimates(timing: PrivateTiming) -> dict[str, float]:
    return {
        network.name: estimate_batch_seconds(
            timing.mpc_seconds_per_batch.median, timing.rounds_per_batch, timing.bytes_per_batch, network
        )
        for network in NETWORKS
    }


def private_columns(prefix: str, timing: PrivateTiming | None) -> dict[str, Any]:
    """The measured figures of one protocol (and its network-model estimates), prefixed."""
    t = timing
    columns = {
        **_spread_columns(f"{prefix}_seconds_per_query", t and t.seconds_per_query),
        f"{prefix}_mpc_seconds_per_batch": t and t.mpc_seconds_per_batch.median,
        f"{prefix}_rounds_per_batch": t and t.rounds_per_batch,
        f"{prefix}_bytes_per_query": t and t.bytes_per_query,
        f"{prefix}_startup_seconds": t and t.startup_seconds,
        f"{prefix}_server_peak_mib": t and t.server_peak_mib,
        f"{prefix}_dealer_peak_mib": t and t.dealer_peak_mib,
    }
    estimates = _estimates(t) if t is not None else {}
    for network in NETWORKS:
        columns[f"{prefix}_model_{network.name}_seconds_per_batch"] = estimates.get(network.name)
    return columns


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def comparison_row(
    point: dict[str, Any], batched: PrivateTiming | None, naive: PrivateTiming | None,
    plaintext: Spread | None, error: str,
) -> dict[str, Any]:
    """One row: the batched and naive protocols, the plaintext ensemble and their ratios."""
    row = {**point, **private_columns("batched", batched), **private_columns("naive", naive),
           **_spread_columns("plaintext_seconds_per_query", plaintext)}
    plain = row["plaintext_seconds_per_query"]
    row["batched_over_plaintext_time"] = _ratio(row["batched_seconds_per_query"], plain)
    row["naive_over_plaintext_time"] = _ratio(row["naive_seconds_per_query"], plain)
    for what, column in (("time", "seconds_per_query"), ("rounds", "rounds_per_batch"),
                         ("bytes", "bytes_per_query"),
                         *((f"model_{n.name}", f"model_{n.name}_seconds_per_batch") for n in NETWORKS)):
        row[f"naive_over_batched_{what}"] = _ratio(row[f"naive_{column}"], row[f"batched_{column}"])
    return {**row, **cumulative_peaks(), "error": error}


def _compare(point: dict[str, Any], owners_count: int, servers: int, grid: Grid, seed: int,
             run_naive: bool) -> dict[str, Any]:
    owners = random_owners(owners_count, seed=seed)
    queries = random_queries(grid.owners_batch, seed=seed)

    def private(stacking: bool) -> tuple[PrivateTiming | None, str]:
        return attempt(lambda: list(time_private(
            owners, [queries], num_servers=servers, stacking=stacking, repeats=grid.repeats))[0])

    batched, batched_error = private(True)
    naive, naive_error = private(False) if run_naive else (None, "")
    plaintext = measure_plaintext([o.model for o in owners], queries, repeats=grid.repeats)
    error = "; ".join(f"{name}: {e}" for name, e in (("batched", batched_error), ("naive", naive_error)) if e)
    return comparison_row(point, batched, naive, plaintext, error)


def owners_suite(grid: Grid, *, seed: int) -> Iterator[dict[str, Any]]:
    """K owners (small CNN, batch ``grid.owners_batch``, N = ``grid.fixed_servers``):
    batched vs naive (up to ``grid.naive_max_owners``) vs plaintext."""
    for k in tqdm(grid.owners, desc="owners"):
        point = {"owners": k, "servers": grid.fixed_servers, "batch": grid.owners_batch, "repeats": grid.repeats}
        yield _compare(point, k, grid.fixed_servers, grid, seed, run_naive=k <= grid.naive_max_owners)


def servers_suite(grid: Grid, *, seed: int) -> Iterator[dict[str, Any]]:
    """N servers (K = ``grid.fixed_owners``, batch ``grid.owners_batch``): batched vs naive vs plaintext."""
    for n in tqdm(grid.servers, desc="servers"):
        point = {"owners": grid.fixed_owners, "servers": n, "batch": grid.owners_batch, "repeats": grid.repeats}
        yield _compare(point, grid.fixed_owners, n, grid, seed,
                       run_naive=grid.fixed_owners <= grid.naive_max_owners)


def batch_suite(grid: Grid, *, seed: int) -> Iterator[dict[str, Any]]:
    """Batch sizes on ONE batched ensemble (K = ``grid.fixed_owners``, N = ``grid.fixed_servers``):
    throughput and seconds per query, against the plaintext ensemble."""
    owners = random_owners(grid.fixed_owners, seed=seed)
    models = [o.model for o in owners]
    batches = {b: random_queries(b, seed=seed) for b in sorted(grid.batches)}
    timings = time_private(owners, list(batches.values()), num_servers=grid.fixed_servers,
                           stacking=True, repeats=grid.repeats)
    error = ""  # once the ensemble has failed, the remaining sizes fail with it
    with closing(timings):
        for size, queries in tqdm(batches.items(), desc="batch"):
            timing, failure = (None, error) if error else attempt(lambda: next(timings))
            error = error or failure
            plaintext = measure_plaintext(models, queries, repeats=grid.repeats)
            point = {"owners": grid.fixed_owners, "servers": grid.fixed_servers, "batch": size,
                     "repeats": grid.repeats}
            row = {**point, **private_columns("batched", timing),
                   **_spread_columns("queries_per_second", timing and timing.seconds_per_query.inverse()),
                   **_spread_columns("plaintext_seconds_per_query", plaintext)}
            row["batched_over_plaintext_time"] = _ratio(row["batched_seconds_per_query"], plaintext.median)
            yield {**row, **cumulative_peaks(), "error": error}

"""The performance suite (``--suite perf``): offline/online split, MPC-friendly models, stacking, a profile.

Every figure the performance issue asks for, side by side in ONE run (ratios
within a run are what to compare; absolute seconds depend on the machine):

* ``k10``: K = 10 owners, batch 128, N = 2 (quick: K = 4, batch 8), for each architecture in
  :data:`ARCHITECTURES`: the plaintext ensemble, the private path with the
  dealer on-line (no precomputation) and the private path from stock
  (``PrivateEnsemble.precompute`` before each measured batch: its offline
  seconds, rounds, bytes and stock per query are reported separately);
* ``k50``: K = 50 owners, batch 8, small_cnn: stacked against naive (both
  from stock, online), and the stacked round count at K = 1;
* ``readme``: the README's example call (5 MLP owners, 30 features, 8
  queries): online rounds and seconds with the dealer on-line and from stock.

Each configuration starts one ensemble, makes one unmeasured warm-up call,
then ``repeats`` measured calls per mode. Untrained, seeded owners: time,
rounds and bytes do not depend on the weights (accuracy is measured by
``python -m benchmarks.zoo``). Column prefixes: ``live_`` (the dealer asked during the
call, CrypTen's TTP as is) and ``precomputed_`` (the call's tuples dealt
beforehand: its online phase; ``precomputed_offline_*`` is the offline
phase). Rows also carry the profile of one batch per mode
(``*_profile_<category>_seconds``: where the servers' seconds went).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

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
from pricure_crypten.experiments.models import build_model

from .measure import attempt, measure_plaintext
from .memory import largest_peak_mib

#: The zoo's architectures compared at K = 10 (small_cnn first: the reference).
ARCHITECTURES = ("small_cnn", "coarse_cnn", "strided_narrow_cnn", "strided_cnn", "pool_first_cnn", "narrow_cnn",
                 "square_cnn", "hybrid_cnn")
IMAGE = (1, 28, 28)
README_FEATURES = 30


def _arch(name: str, num_classes: int = 2) -> dict[str, Any]:
    if name == "readme_mlp":
        return {"name": "mlp", "in_features": README_FEATURES, "num_classes": num_classes, "hidden": [16]}
    if name.startswith("mlp") and name[3:].isdigit():  # mlp16: a 28x28 image flattened, one hidden layer of 16
        return {"name": "mlp", "in_features": 28 * 28, "num_classes": num_classes, "hidden": [int(name[3:])]}
    return {"name": name, "in_channels": 1, "image_size": 28, "num_classes": num_classes}


def _owners(arch: str, count: int, seed: int, num_classes: int = 2) -> list[ModelOwner]:
    shape = (README_FEATURES,) if arch == "readme_mlp" else IMAGE
    return [ModelOwner(name=f"owner-{i}", model=build_model(_arch(arch, num_classes), seed=seed * 100_003 + i).eval(),
                       input_shape=shape, num_classes=num_classes) for i in range(count)]


def _queries(arch: str, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if arch == "readme_mlp":
        return torch.randn((batch, README_FEATURES), generator=generator)
    return torch.rand((batch, *IMAGE), generator=generator)


def _measure(ensemble: PrivateEnsemble, queries: torch.Tensor, *, repeats: int, stock: bool,
             profile: bool = True) -> dict[str, Any]:
    """``repeats`` calls of one batch; with ``stock`` each call's tuples are precomputed first (offline)."""
    client = Client("bench")
    rows = len(queries)
    online, offline = [], []
    for _ in range(repeats):
        if stock:
            offline.append(ensemble.precompute(rows))
        online.append(ensemble.predict(queries, client=client).cost)
    stages = ensemble.profile(queries, stock=stock) if profile else {}
    figures = {
        "seconds_per_query": statistics.median(c.seconds_per_query for c in online),
        "mpc_seconds_per_batch": statistics.median(c.mpc_seconds for c in online),
        "mpc_seconds_min": min(c.mpc_seconds for c in online),
        "mpc_seconds_max": max(c.mpc_seconds for c in online),
        "rounds_per_batch": max(c.rounds for c in online),
        "bytes_per_query": max(c.bytes_per_query for c in online),
        "dealer_requests": max(c.dealer_requests for c in online),
        **{f"profile_{stage}_seconds": seconds for stage, seconds in stages.items()},
    }
    if offline:
        figures.update(
            offline_seconds_per_batch=statistics.median(c.seconds for c in offline),
            offline_rehearsal_seconds=offline[0].rehearsal_seconds,
            offline_rounds_per_batch=max(c.rounds for c in offline[1:] or offline),
            offline_bytes_per_query=statistics.median(c.bytes_sent for c in offline[1:] or offline) / rows,
            offline_exchanges_per_batch=max(c.exchanges for c in offline[1:] or offline),
            stock_mib_per_query=max(c.stock_bytes_per_query for c in offline) / 2**20,
        )
    return figures


def run_configuration(arch: str, owners_count: int, batch: int, *, stacking: bool, repeats: int, seed: int,
                      modes: Sequence[str] = ("live", "precomputed"), cluster: Cluster | None = None,
                      num_classes: int = 2, noise: Any = None, profile: bool = True) -> dict[str, Any]:
    """One ensemble: the dealer on-line and/or from stock, the plaintext ensemble, peaks and ratios.

    ``cluster`` sets N and the timeouts (default ``Cluster()``: N = 2);
    ``noise`` the aggregation's mechanism (default Laplace at epsilon 1 per
    query); ``profile`` adds one profiled batch per mode.
    """
    cluster = cluster or Cluster()
    servers = cluster.num_servers
    owners = _owners(arch, owners_count, seed, num_classes)
    queries = _queries(arch, batch, seed)
    row: dict[str, Any] = {"arch": arch, "owners": owners_count, "batch": batch, "servers": servers,
                           "stacking": stacking, "repeats": repeats}
    aggregation = Aggregation(noise=noise if noise is not None else calibrate(epsilon=1.0, mechanism="laplace"))
    begin = time.perf_counter()
    with PrivateEnsemble(owners, aggregation=aggregation, batching=Batching(enabled=False, max_rows=max(256, batch)),
                         cluster=cluster,
                         experiment=ExperimentOptions(stacking=stacking)) as ensemble:
        row["startup_seconds"] = time.perf_counter() - begin
        ensemble.predict(queries)  # warm-up, not measured
        for mode in modes:
            row.update({f"{mode}_{k}": v for k, v in _measure(ensemble, queries, repeats=repeats, profile=profile,
                                                               stock=mode == "precomputed").items()})
        server_peaks = [largest_peak_mib([pid]) for pid in ensemble.servers.server_pids]
        row["server_peak_mib"] = largest_peak_mib(ensemble.servers.server_pids)
        row["server_peaks_mib"] = " ".join("-" if p is None else f"{p:.0f}" for p in server_peaks)
        row["dealer_peak_mib"] = largest_peak_mib([ensemble.servers.dealer_pid])
    plain = measure_plaintext([o.model for o in owners], queries, repeats=repeats)
    row["plaintext_seconds_per_query"] = plain.median
    for mode in modes:
        row[f"{mode}_over_plaintext_time"] = row[f"{mode}_seconds_per_query"] / plain.median
        row[f"{mode}_mpc_over_plaintext_time"] = row[f"{mode}_mpc_seconds_per_batch"] / batch / plain.median
    return row


def perf_suite(*, quick: bool, seed: int, repeats: int, architectures: Sequence[str] = ARCHITECTURES,
               ) -> Iterator[dict[str, Any]]:
    """The rows of the performance suite (see the module docstring); ``quick`` shrinks the ensembles.

    Quick (the CI smoke test): the reference architecture only, K = 4 and batch 8 for k10 and k50, so
    k10's point is k50's stacked one: that configuration is measured once and reported under both workloads.
    """
    k10_owners, k10_batch, k50_owners = (4, 8, 4) if quick else (10, 128, 50)
    architectures = architectures[:1] if quick else architectures  # quick (the CI smoke test): the reference only
    points: list[tuple[str, str, int, int, bool]] = [("readme", "readme_mlp", 5, 8, True)]
    points += [("k10", arch, k10_owners, k10_batch, True) for arch in architectures]
    points += [("k50", "small_cnn", k50_owners, 8, True), ("k50", "small_cnn", k50_owners, 8, False),
               ("k50", "small_cnn", 1, 8, True)]
    measured: dict[tuple[str, int, int, bool], tuple[dict[str, Any] | None, str]] = {}
    for workload, arch, owners, batch, stacking in tqdm(points, desc="perf"):
        key = (arch, owners, batch, stacking)
        if key not in measured:
            measured[key] = attempt(lambda: run_configuration(arch, owners, batch, stacking=stacking,
                                                              repeats=repeats, seed=seed))
        row, error = measured[key]
        yield {"workload": workload, **(row or {"arch": arch, "owners": owners, "batch": batch,
                                                 "stacking": stacking}), "error": error}


def _fmt(value: Any, spec: str = ".3g", scale: float = 1.0) -> str:
    if value is None or value == "":
        return "–"
    return format(float(value) * scale, spec)


def _profile_line(row: dict[str, Any], mode: str) -> str:
    stages = {key[len(f"{mode}_profile_"):-len("_seconds")]: value for key, value in row.items()
              if key.startswith(f"{mode}_profile_") and value not in (None, "")}
    total = float(stages.pop("total", 0) or 0)
    if not total:
        return "–"
    parts = [f"{name} {float(seconds):.2f}" for name, seconds in sorted(stages.items(), key=lambda kv: -float(kv[1]))
             if float(seconds) >= 0.005]
    return f"{total:.2f} s: " + ", ".join(parts)


def perf_report(rows: Sequence[dict[str, Any]] | None) -> str:
    """The performance section of ``summary.md`` (empty when the suite did not run)."""
    if not rows:
        return ""
    out = ["## Performance: offline/online split, MPC-friendly owners, stacking", "",
           "Online = the prediction call itself with its tuples precomputed (no dealer round trip); "
           "dealer on-line = CrypTen's TTP, asked during the call. Offline = `precompute` of one batch "
           "(bulk exchanges with the dealer). Seconds are the slowest server's MPC seconds per batch; "
           "ratios against the plaintext ensemble's seconds per query, all in this run.", "",
           "| workload | arch | K | batch | stacked | dealer on-line: rounds, s/batch, x plaintext | "
           "online: rounds, s/batch, x plaintext | online MB/query | offline s/batch | offline MB/query | "
           "stock MiB/query/server | server / dealer peak MiB | error |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r.get('workload')} | {r.get('arch')} | {r.get('owners')} | {r.get('batch')} | {r.get('stacking')} | "
            f"{_fmt(r.get('live_rounds_per_batch'), '.0f')}, {_fmt(r.get('live_mpc_seconds_per_batch'))}, "
            f"{_fmt(r.get('live_mpc_over_plaintext_time'), '.0f')}x | "
            f"{_fmt(r.get('precomputed_rounds_per_batch'), '.0f')}, {_fmt(r.get('precomputed_mpc_seconds_per_batch'))}, "
            f"{_fmt(r.get('precomputed_mpc_over_plaintext_time'), '.0f')}x | "
            f"{_fmt(r.get('precomputed_bytes_per_query'), '.3g', 1e-6)} | {_fmt(r.get('precomputed_offline_seconds_per_batch'))} | "
            f"{_fmt(r.get('precomputed_offline_bytes_per_query'), '.3g', 1e-6)} | {_fmt(r.get('precomputed_stock_mib_per_query'))} | "
            f"{_fmt(r.get('server_peak_mib'), '.0f')} / {_fmt(r.get('dealer_peak_mib'), '.0f')} | {r.get('error') or ''} |")
    out += ["", "Where one batch's seconds go (slowest server; `communication` and `dealer` are parts of the "
            "stages, `routing` is the launcher's pickling and pipes):", "",
            "| workload | arch | K | batch | stacked | dealer on-line | online |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.get('workload')} | {r.get('arch')} | {r.get('owners')} | {r.get('batch')} | "
                   f"{r.get('stacking')} | {_profile_line(r, 'live')} | {_profile_line(r, 'precomputed')} |")
    return "\n".join(out) + "\n\n"

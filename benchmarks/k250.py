"""PATE-scale cost: K = 250 stacked owners on 10-class 28x28 images, N = 2 and 3, dealer on-line and from stock.

``python -m benchmarks.k250 [--quick] [--out docs/results]`` writes
``k250-cost.csv`` (one row per configuration) and ``k250-cost.json`` (per
run: the command, commit, date, machine; the notes and the rows, each naming
its run; ``--append`` adds a run to the files); ``python -m
benchmarks.run --suite k250`` runs the same points inside the suite runner.
Points, each one ensemble measured by :func:`benchmarks.perf.run_configuration`
(one warm-up batch, then ``--repeats`` batches with the dealer on-line and
``--repeats`` from stock, i.e. ``PrivateEnsemble.precompute`` before each):

* every architecture of ``--archs`` at K = ``--owners``, N = 2 (the teachers'
  accuracy/cost trade-off);
* the first architecture (the chosen one) at K = ``--owners``, N = 3;
* every architecture at K = 1, N = 2: the rounds per batch must not grow
  with K (stacking), the bytes do.

Untrained, seeded owners (rounds, bytes and seconds do not depend on the
weights), vote aggregation, Gaussian noise at per-query epsilon
``--epsilon`` (default 0.1 at delta 1e-5: sigma 43.5, PATE's GNMax used 40).
Rounds and bytes are exact counts; seconds are medians on a shared machine;
peaks are ``VmHWM`` of each server (largest, and each) and of the dealer.
``--quick``: K = 3, N = 2, batch 2, mlp16 only, no K = 1 point (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from pricure_crypten import Cluster, calibrate
from pricure_crypten.experiments.models import build_model, nonlinear_elements, parameter_count

from .env import REPO_ROOT, RunStart, environment
from .measure import attempt
from .perf import IMAGE, _arch, run_configuration
from .report import write_csv, write_json

NUM_CLASSES = 10
#: The chosen teacher first (its N = 3 point is measured), then the alternatives.
ARCHS = ("coarse_cnn", "mlp16", "hybrid_cnn")
OWNERS = 250
BATCH = 32
#: What a table of k250-cost shows (see docs/results/README.md).
COLUMNS = [
    {"column": "arch", "header": "owners' model"},
    {"column": "owners", "header": "K", "format": "d"},
    {"column": "servers", "header": "N", "format": "d"},
    {"column": "batch", "header": "batch", "format": "d"},
    {"column": "relu_per_query", "header": "ReLU/query", "format": "d"},
    {"column": "live_rounds_per_batch", "header": "rounds, dealer on-line", "format": "d"},
    {"column": "precomputed_rounds_per_batch", "header": "rounds, from stock", "format": "d"},
    {"column": "live_bytes_per_query", "header": "MB/query, dealer on-line", "format": ".3g", "scale": 1e-6},
    {"column": "precomputed_bytes_per_query", "header": "MB/query, from stock", "format": ".3g", "scale": 1e-6},
    {"column": "live_seconds_per_query", "header": "s/query, dealer on-line", "format": ".2g"},
    {"column": "precomputed_seconds_per_query", "header": "s/query, from stock", "format": ".2g"},
    {"column": "precomputed_offline_seconds_per_batch", "header": "offline s/batch", "format": ".2g"},
    {"column": "precomputed_offline_bytes_per_query", "header": "offline MB/query", "format": ".3g", "scale": 1e-6},
    {"column": "precomputed_stock_mib_per_query", "header": "stock MiB/query/server", "format": ".3g"},
    {"column": "server_peaks_mib", "header": "peak MiB per server"},
    {"column": "dealer_peak_mib", "header": "dealer peak MiB", "format": ".0f"},
]
EPSILON = 0.1  # per query, Gaussian at delta 1e-5: sigma 43.5 (PATE 2018's GNMax on MNIST: 40)


def points(*, quick: bool, archs: Sequence[str] = ARCHS, owners: int = OWNERS, batch: int = BATCH,
           servers: Sequence[int] = (2, 3), k1: bool = True) -> list[tuple[str, int, int, int]]:
    """The configurations ``(arch, K, N, batch)``, in the order they are run."""
    if quick:
        return [("mlp16", 3, 2, 2)]
    chosen = archs[0]
    out = [(arch, owners, 2, batch) for arch in archs] if 2 in servers else []
    out += [(chosen, owners, n, batch) for n in servers if n != 2]
    out += [(arch, 1, 2, batch) for arch in archs] if k1 else []
    return out


def k250_suite(*, quick: bool, seed: int, repeats: int, archs: Sequence[str] = ARCHS, owners: int = OWNERS,
               batch: int = BATCH, servers: Sequence[int] = (2, 3), epsilon: float = EPSILON, k1: bool = True,
               ) -> Iterator[dict[str, Any]]:
    """One row per point of :func:`points` (a failed point: its ``error`` says why, figures empty)."""
    noise = calibrate(epsilon=epsilon, delta=1e-5, mechanism="gaussian")
    for arch, k, n, rows in points(quick=quick, archs=archs, owners=owners, batch=batch, servers=servers, k1=k1):
        model = build_model(_arch(arch, NUM_CLASSES))
        elements = nonlinear_elements(model, IMAGE)
        cluster = Cluster(num_servers=n, threads_per_server=1, start_timeout=1800.0, request_timeout=3600.0)
        row, error = attempt(lambda: run_configuration(
            arch, k, rows, stacking=True, repeats=repeats, seed=seed, cluster=cluster, num_classes=NUM_CLASSES,
            noise=noise, profile=False))
        yield {"arch": arch, "owners": k, "servers": n, "batch": rows, **(row or {}),
               "relu_per_owner": elements["relu"], "square_per_owner": elements["square"],
               "relu_per_query": elements["relu"] * k, "params_per_owner": parameter_count(model),
               "noise": repr(noise), "error": error}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.k250", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small point (K = 3, N = 2, batch 2, mlp16)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="folder for k250-cost.csv and k250-cost.json (default: docs/results)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS),
                        help="zoo names or mlp16; the first is the chosen teacher (default: %(default)s)")
    parser.add_argument("--owners", type=int, default=OWNERS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--servers", type=int, nargs="+", default=[2, 3],
                        help="N = 2 runs every arch, other N the first arch only (default: %(default)s)")
    parser.add_argument("--no-k1", dest="k1", action="store_false", help="skip the K = 1 points")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows (and commands) already in k250-cost.csv/json and add these")
    parser.add_argument("--repeats", type=int, default=1, help="measured batches per mode (default: 1)")
    parser.add_argument("--epsilon", type=float, default=EPSILON, help="per-query epsilon (Gaussian, delta 1e-5)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = RunStart.now()
    env = environment(argv)
    env["command"] = "python -m benchmarks.k250" + "".join(f" {a}" for a in argv)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    if args.append and (args.out / "k250-cost.json").exists():
        earlier = json.loads((args.out / "k250-cost.json").read_text())
        rows, runs = earlier["rows"], earlier["runs"]
    run = {"command": env["command"], **start.checkout(), "environment": env}
    runs.append(run)
    suite = k250_suite(quick=args.quick, seed=args.seed, repeats=args.repeats, archs=args.archs, owners=args.owners,
                       batch=args.batch, servers=args.servers, epsilon=args.epsilon, k1=args.k1)
    meta: dict[str, Any] = {
        "title": "Cost of private prediction at PATE scale (K stacked owners, 10 classes, 28x28)",
        "command": " && ".join(r["command"] for r in runs),
        "runs": runs, "columns": COLUMNS,
        "notes": ("Untrained seeded owners (cost does not depend on the weights); vote aggregation, Gaussian noise; "
                  "one ensemble per row: a warm-up batch, then `repeats` batches with the dealer on-line (live_*) "
                  "and `repeats` batches from stock (precomputed_*: the online phase; precomputed_offline_*: "
                  "the offline phase, PrivateEnsemble.precompute). Rounds per batch are per server; bytes per "
                  "query are CrypTen's counts summed over the servers, each party counting what it sends AND "
                  "receives (live rows include the servers' exchanges with the dealer). Seconds are medians of "
                  "`repeats` batches on a shared machine (noisy); server_peak_mib is the largest server's VmHWM, "
                  "server_peaks_mib each server's, dealer_peak_mib the dealer's, over the whole row (on-line and "
                  "stock)."),
    }
    for row in suite:
        rows.append({**row, "run": len(runs) - 1})
        write_csv(rows, args.out / "k250-cost.csv")
        print(f"k250: {row['arch']} K={row['owners']} N={row['servers']}: {row['error'] or 'done'}", flush=True)
        run.update(start.stamp(finished=False))
        meta["rows"] = rows
        write_json(meta, args.out / "k250-cost.json")
    return 0 if all(not r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.run``: the benchmark suites, their CSVs, plots and summary.

Examples::

    python -m benchmarks.run --quick                      # reduced sweep, a few minutes
    python -m benchmarks.run --out benchmarks/results/full
    python -m benchmarks.run --suite owners batch --repeats 5

The library spawns its server processes, so all work happens in :func:`main`,
called only under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .env import REPO_ROOT, environment
from .grid import Grid, select
from .k250 import k250_suite
from .exposure import DEFAULT_MNIST_ROOT, exposure_markdown, exposure_suite
from .mia import mia_report, mia_suite
from .perf import perf_report, perf_suite
from .netmodel import NETWORKS
from .plots import make_plots
from .privacy import privacy_suite
from .report import read_csv, summary_markdown, write_csv, write_json
from .suites import batch_suite, owners_suite, servers_suite
from .transfer import transfer_suite
from .utility import utility_suite

SUITES = ("owners", "servers", "batch", "privacy", "perf", "mia", "exposure", "utility", "k250", "transfer")
# exposure: MIA where noiseless leaks. "mia" (attacks, minutes), "exposure" and "utility" (trains up to
# 250 owners per point, an hour) and "k250" (K = 250 cost, N = 2 and 3; also `python -m benchmarks.k250`,
# which writes docs/results/k250-cost.*) only when asked for
DEFAULT_SUITES = ("owners", "servers", "batch", "privacy", "perf")
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data" / "medmnist"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="Run the pricure-crypten benchmark suites: CSVs, plots, summary.md.")
    parser.add_argument("--suite", nargs="+", choices=SUITES, default=list(DEFAULT_SUITES),
                        help="which suites to run (default: all but mia and utility; --suite mia runs the "
                             "membership-inference attacks, --suite utility the accuracy-vs-K study)")
    parser.add_argument("--quick", action="store_true", help="the reduced sweep (a few minutes)")
    parser.add_argument("--repeats", type=_positive, default=None,
                        help="measured calls per point after the warm-up (default: 3, quick: 1)")
    parser.add_argument("--naive-max-owners", type=int, default=None,
                        help="run the naive baseline only up to this K (default: 50, quick: 5)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/results/<YYYYmmdd-HHMMSS>)")
    parser.add_argument("--mnist-root", type=Path, default=DEFAULT_MNIST_ROOT,
                        help="folder with MNIST for the exposure suite (digits when missing)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="folder with pneumoniamnist.npz (skipped when missing)")
    parser.add_argument("--privacy-batch", type=_positive, default=128, help="queries per call in the privacy suite")
    parser.add_argument("--privacy-max-queries", type=_positive, default=None,
                        help="cap on the test queries per dataset in the privacy suite (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seeds owners, queries, shards, training and noise")
    parser.add_argument("--replot", action="store_true",
                        help="measure nothing: rebuild the plots and summary.md from the CSVs in --out")
    return parser.parse_args(argv)


def _suite_rows(name: str, grid: Grid, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    runners: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
        "owners": lambda: owners_suite(grid, seed=args.seed),
        "servers": lambda: servers_suite(grid, seed=args.seed),
        "batch": lambda: batch_suite(grid, seed=args.seed),
        "privacy": lambda: privacy_suite(grid, seed=args.seed, root=args.data_root, batch_size=args.privacy_batch,
                                         max_queries=args.privacy_max_queries),
        "perf": lambda: perf_suite(quick=args.quick, seed=args.seed, repeats=grid.repeats),
        "mia": lambda: mia_suite(quick=args.quick, seed=args.seed, root=args.data_root),
        "exposure": lambda: exposure_suite(quick=args.quick, seed=args.seed, root=args.mnist_root),
        "utility": lambda: utility_suite(quick=args.quick, seed=args.seed, out=args.out),
        "k250": lambda: k250_suite(quick=args.quick, seed=args.seed, repeats=grid.repeats),
        "transfer": lambda: transfer_suite(quick=args.quick, seed=args.seed, out=args.out),
    }
    return runners[name]()


def _write_report(results: dict[str, list[dict[str, Any]]], env: dict[str, Any], out: Path) -> None:
    plots = make_plots(results, out)
    mia_plots, mia_section = mia_report(results.get("mia"), out)
    perf_section = perf_report(results.get("perf"))
    exposure_section = exposure_markdown(results.get("exposure") or [])
    (out / "summary.md").write_text(summary_markdown(results, env, plots + mia_plots) + perf_section + mia_section
                                    + exposure_section)


def _replot(out: Path) -> int:
    env = json.loads((out / "environment.json").read_text())
    results = {name: read_csv(out / f"{name}.csv") for name in env["run"]["suites"] if (out / f"{name}.csv").exists()}
    _write_report(results, env, out)
    print(f"benchmarks: plots and summary.md rebuilt in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected suites; write CSVs (as points complete), plots, environment.json, summary.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.replot:
        if args.out is None:
            raise SystemExit("--replot needs --out (the folder of an earlier run)")
        return _replot(args.out)
    grid = select(quick=args.quick, repeats=args.repeats, naive_max_owners=args.naive_max_owners)
    out = args.out or REPO_ROOT / "benchmarks" / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    args.out = out  # suites that write their own summaries (utility) write them here
    env = environment(argv)
    env["run"] = {"suites": args.suite, "quick": args.quick, "grid": grid.__dict__, "seed": args.seed,
                  "network_model": [n.__dict__ for n in NETWORKS], "wall_seconds": None}
    write_json(env, out / "environment.json")
    results: dict[str, list[dict[str, Any]]] = {}
    begin = time.perf_counter()
    for name in dict.fromkeys(args.suite):
        results[name] = []
        for row in _suite_rows(name, grid, args):
            results[name].append(row)
            write_csv(results[name], out / f"{name}.csv")
    env["run"]["wall_seconds"] = time.perf_counter() - begin
    write_json(env, out / "environment.json")
    _write_report(results, env, out)
    print(f"benchmarks: {env['run']['wall_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.cost``: the README's cost table (rounds, bytes, seconds per query), small and cheap.

Writes ``docs/results/cost.csv`` (one row per configuration) and
``docs/results/cost.json`` (the command, commit, date, machine and the columns
the README shows). Configurations, each one ensemble of N = 2 servers + dealer,
Laplace votes at epsilon 1 per query, untrained seeded models
(rounds, bytes and seconds do not depend on the weights), measured by
:func:`benchmarks.perf.run_configuration`: one warm-up call, then
``--repeats`` calls with the dealer on-line and ``--repeats`` from stock:

* the README's example call (5 MLP owners, 30 features, batch 8);
* small_cnn (the reference CNN, 1x28x28) at K = 1, 10 and 50, batch 8;
* coarse_cnn (the MPC-friendly variant) at K = 10, batch 8;
* small_cnn at K = 10 and 50, batch 8, NOT stacked (the naive schedule:
  one network per owner, evaluated one after the other).

Rounds and bytes are exact counts (the same on every run of the same
configuration); seconds are medians on whatever machine runs it, and on a
shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .env import REPO_ROOT, RunStart
from .measure import attempt
from .perf import run_configuration
from .report import write_csv, write_json

#: (workload label, architecture, owners K, batch, stacked)
POINTS = (
    ("README call", "readme_mlp", 5, 8, True),
    ("small_cnn (stacked)", "small_cnn", 1, 8, True),
    ("small_cnn (stacked)", "small_cnn", 10, 8, True),
    ("small_cnn (stacked)", "small_cnn", 50, 8, True),
    ("coarse_cnn", "coarse_cnn", 10, 8, True),
    ("small_cnn (naive: one network per owner)", "small_cnn", 10, 8, False),
    ("small_cnn (naive: one network per owner)", "small_cnn", 50, 8, False),
)

#: What the README shows (rendered by ``python -m benchmarks.tables``).
COLUMNS = [
    {"column": "workload", "header": "owners' model"},
    {"column": "owners", "header": "K", "format": "d"},
    {"column": "batch", "header": "batch", "format": "d"},
    {"column": "live_rounds_per_batch", "header": "rounds, dealer on-line", "format": "d"},
    {"column": "precomputed_rounds_per_batch", "header": "rounds, from stock", "format": "d"},
    {"column": "live_bytes_per_query", "header": "MB/query, dealer on-line", "format": ".4g", "scale": 1e-6},
    {"column": "precomputed_bytes_per_query", "header": "MB/query, from stock", "format": ".4g", "scale": 1e-6},
    {"column": "live_seconds_per_query", "header": "s/query, dealer on-line", "format": ".2g"},
    {"column": "precomputed_seconds_per_query", "header": "s/query, from stock", "format": ".2g"},
    {"column": "plaintext_seconds_per_query", "header": "plaintext ms/query", "format": ".2g", "scale": 1e3},
]

#: Further tables of the same file (docs/speed.md).
VIEWS = {
    "offline": {"columns": [
        {"column": "workload", "header": "owners' model"},
        {"column": "owners", "header": "K", "format": "d"},
        {"column": "batch", "header": "batch", "format": "d"},
        {"column": "precomputed_offline_rounds_per_batch", "header": "offline rounds/batch", "format": "d"},
        {"column": "precomputed_offline_bytes_per_query", "header": "offline MB/query", "format": ".3g",
         "scale": 1e-6},
        {"column": "precomputed_offline_seconds_per_batch", "header": "offline s/batch", "format": ".2g"},
        {"column": "precomputed_stock_mib_per_query", "header": "stock MiB/query/server", "format": ".3g"},
        {"column": "live_mpc_seconds_per_batch", "header": "MPC s/batch, dealer on-line", "format": ".2g"},
        {"column": "precomputed_mpc_seconds_per_batch", "header": "MPC s/batch, from stock", "format": ".2g"},
        {"column": "server_peak_mib", "header": "server peak MiB", "format": ".0f"},
        {"column": "dealer_peak_mib", "header": "dealer peak MiB", "format": ".0f"},
    ]},
    "profile": {"columns": [
        {"column": "workload", "header": "owners' model"},
        {"column": "owners", "header": "K", "format": "d"},
        {"column": "live_profile_total_seconds", "header": "dealer on-line: total s", "format": ".2g"},
        {"column": "live_profile_communication_seconds", "header": "communication", "format": ".2g"},
        {"column": "live_profile_dealer_seconds", "header": "dealer", "format": ".2g"},
        {"column": "precomputed_profile_total_seconds", "header": "from stock: total s", "format": ".2g"},
        {"column": "precomputed_profile_communication_seconds", "header": "communication", "format": ".2g"},
        {"column": "precomputed_profile_activation_seconds", "header": "activation", "format": ".2g"},
        {"column": "precomputed_profile_linear_seconds", "header": "linear", "format": ".2g"},
        {"column": "precomputed_profile_aggregation_clamp+histogram_seconds", "header": "clamp + histogram",
         "format": ".2g"},
        {"column": "precomputed_profile_aggregation_release_seconds", "header": "noisy argmax", "format": ".2g"},
    ]},
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="folder for cost.csv and cost.json (default: docs/results)")
    parser.add_argument("--repeats", type=int, default=3, help="measured calls per mode (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = RunStart.now()
    rows: list[dict[str, Any]] = []
    for workload, arch, owners, batch, stacked in POINTS:
        row, error = attempt(lambda: run_configuration(arch, owners, batch, stacking=stacked,
                                                       repeats=args.repeats, seed=args.seed))
        rows.append({"workload": workload, **(row or {"arch": arch, "owners": owners, "batch": batch,
                                                      "stacking": stacked}),
                     "error": error})
        write_csv(rows, args.out / "cost.csv")
        print(f"cost: {workload} K={owners}: {error or 'done'}", flush=True)
    wall = time.perf_counter() - start.clock
    meta = {
        "title": "Cost of one private prediction call",
        "command": "python -m benchmarks.cost" + "".join(f" {a}" for a in argv),
        **start.checkout(),  # the code that ran: the checkout when the run started
        **start.stamp(),
        "notes": ("N = 2 servers + dealer, Laplace votes at epsilon 1 per query, batch 8; stacked owners except "
                  "the naive rows (one network per owner, one after the other); "
                  "rounds and bytes are exact counts; seconds are medians of "
                  f"{args.repeats} calls on a shared machine and are noisy. Bytes per query are CrypTen's counts summed "
                  "over the servers: each party counts what it sends AND what it receives, so a byte between two "
                  "servers is counted twice (halve for the bytes on the wire); with the dealer on-line they "
                  "include the servers' exchanges with the dealer (the offline bytes of the from-stock rows)."),
        "columns": COLUMNS,
        "views": VIEWS,
    }
    write_json(meta, args.out / "cost.json")
    print(f"cost: {wall:.0f} s; {args.out / 'cost.csv'}")
    return 0 if all(not r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

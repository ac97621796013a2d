"""``python -m benchmarks.cost``: the README's cost table (rounds, bytes, seconds per query), small and cheap.

Writes ``docs/results/cost.csv`` (one row per configuration) and
``docs/results/cost.json`` (the command, commit, date, machine and the columns
the README shows). Configurations, each one ensemble of N = 2 servers + dealer,
Laplace votes at epsilon 1 per query, stacked owners, untrained seeded models
(rounds, bytes and seconds do not depend on the weights), measured by
:func:`benchmarks.perf.run_configuration`: one warm-up call, then
``--repeats`` calls with the dealer on-line and ``--repeats`` from stock:

* the README's example call (5 MLP owners, 30 features, batch 8);
* small_cnn (the reference CNN, 1x28x28) at K = 1, 10 and 50, batch 8;
* coarse_cnn (the MPC-friendly variant) at K = 10, batch 8.

Rounds and bytes are exact counts (the same on every run of the same
configuration); seconds are medians on whatever machine runs it, and on a
shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .env import REPO_ROOT, _git
from .measure import attempt
from .perf import run_configuration
from .report import write_csv, write_json

#: (workload label, architecture, owners K, batch)
POINTS = (
    ("README call", "readme_mlp", 5, 8),
    ("small_cnn", "small_cnn", 1, 8),
    ("small_cnn", "small_cnn", 10, 8),
    ("small_cnn", "small_cnn", 50, 8),
    ("coarse_cnn", "coarse_cnn", 10, 8),
)

#: What the README shows (rendered by ``python -m benchmarks.tables``).
COLUMNS = [
    {"column": "workload", "header": "owners' model"},
    {"column": "owners", "header": "K", "format": "d"},
    {"column": "batch", "header": "batch", "format": "d"},
    {"column": "live_rounds_per_batch", "header": "rounds (dealer on-line)", "format": "d"},
    {"column": "precomputed_rounds_per_batch", "header": "rounds (from stock)", "format": "d"},
    {"column": "live_bytes_per_query", "header": "MB per query (all servers)", "format": ".3g", "scale": 1e-6},
    {"column": "live_seconds_per_query", "header": "s per query (dealer on-line)", "format": ".3g"},
    {"column": "precomputed_seconds_per_query", "header": "s per query (from stock)", "format": ".3g"},
    {"column": "plaintext_seconds_per_query", "header": "plaintext ms per query", "format": ".3g", "scale": 1e3},
]


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
    load_before = os.getloadavg()
    begin = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for workload, arch, owners, batch in POINTS:
        row, error = attempt(lambda: run_configuration(arch, owners, batch, stacking=True,
                                                       repeats=args.repeats, seed=args.seed))
        rows.append({"workload": workload, **(row or {"arch": arch, "owners": owners, "batch": batch}),
                     "error": error})
        write_csv(rows, args.out / "cost.csv")
        print(f"cost: {workload} K={owners}: {error or 'done'}", flush=True)
    wall = time.perf_counter() - begin
    status = _git("status", "--porcelain")
    meta = {
        "title": "Cost of one private prediction call",
        "command": "python -m benchmarks.cost" + "".join(f" {a}" for a in argv),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
                    f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after), one host, loopback; "
                    f"{wall:.0f} s wall"),
        "notes": ("N = 2 servers + dealer, Laplace votes at epsilon 1 per query, stacked owners, batch 8; "
                  "rounds and bytes are exact counts; seconds are medians of "
                  f"{args.repeats} calls on a shared machine and are noisy. Bytes are summed over the "
                  "servers (what CrypTen counts as sent), per query."),
        "columns": COLUMNS,
    }
    write_json(meta, args.out / "cost.json")
    print(f"cost: {wall:.0f} s; {args.out / 'cost.csv'}")
    return 0 if all(not r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

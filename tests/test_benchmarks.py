"""Smoke test of the benchmark harness: ``python -m benchmarks.run --quick`` end to end.

Checks the files, the CSV columns, one row per point of the quick grid, that
every figure is a finite number, and the protocol's shape: the batched
(stacked) protocol's rounds do not change with K while the naive baseline's
grow. Timings are never asserted.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.mpc

REPO = Path(__file__).resolve().parent.parent

PRIVATE = ["seconds_per_query", "seconds_per_query_min", "seconds_per_query_max", "mpc_seconds_per_batch",
           "rounds_per_batch", "bytes_per_query", "startup_seconds", "server_peak_mib", "dealer_peak_mib",
           "model_lan_seconds_per_batch", "model_wan_seconds_per_batch"]
MEMORY = ["parent_peak_mib", "children_peak_mib", "error"]
COMPARISON = ["owners", "servers", "batch", "repeats", *(f"batched_{c}" for c in PRIVATE),
              *(f"naive_{c}" for c in PRIVATE), "plaintext_seconds_per_query", "batched_over_plaintext_time",
              "naive_over_plaintext_time", "naive_over_batched_time", "naive_over_batched_rounds",
              "naive_over_batched_bytes", "naive_over_batched_model_lan", "naive_over_batched_model_wan", *MEMORY]
COLUMNS = {
    "owners": COMPARISON,
    "servers": COMPARISON,
    "batch": ["owners", "servers", "batch", "repeats", *(f"batched_{c}" for c in PRIVATE), "queries_per_second",
              "queries_per_second_min", "queries_per_second_max", "plaintext_seconds_per_query",
              "batched_over_plaintext_time", *MEMORY],
    "privacy": ["dataset", "owners", "servers", "queries", "aggregation", "mechanism", "epsilon", "delta",
                "noise_scale", "private_accuracy", "reference_noisy_accuracy", "plaintext_ensemble_accuracy",
                "best_single_owner_accuracy", "mean_single_owner_accuracy", "agreement_with_plaintext",
                "rounds_per_batch", "wall_seconds", "server_peak_mib", *MEMORY],
}
MODE = ["seconds_per_query", "mpc_seconds_per_batch", "rounds_per_batch", "bytes_per_query", "dealer_requests",
        "profile_total_seconds", "profile_communication_seconds", "mpc_over_plaintext_time"]
COLUMNS["perf"] = ["workload", "arch", "owners", "batch", "stacking", *(f"live_{c}" for c in MODE),
                   *(f"precomputed_{c}" for c in MODE), "precomputed_offline_seconds_per_batch",
                   "precomputed_offline_bytes_per_query", "precomputed_stock_mib_per_query",
                   "plaintext_seconds_per_query", "server_peak_mib", "dealer_peak_mib", "error"]
TEXT = {"dataset", "aggregation", "mechanism", "error", "workload", "arch", "stacking",
        "server_peaks_mib"}  # the last: one peak per server, space-separated (checked in test_k250_benchmark)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("benchmarks")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def _grid(out: Path) -> SimpleNamespace:
    """The grid the run used, as it recorded it in environment.json (the test does not import benchmarks)."""
    grid = json.loads((out / "environment.json").read_text())["run"]["grid"]
    return SimpleNamespace(**{k: tuple(v) if isinstance(v, list) else v for k, v in grid.items()})


def _rows(out: Path, suite: str) -> list[dict[str, str]]:
    with open(out / f"{suite}.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert set(COLUMNS[suite]) <= set(reader.fieldnames or []), suite
        return list(reader)


def test_files(quick_run: Path) -> None:
    for name in ["owners.csv", "servers.csv", "batch.csv", "privacy.csv", "perf.csv", "environment.json", "summary.md",
                 "owners.png", "owners_netmodel.png", "servers.png", "batch.png", "privacy_breast-cancer.png"]:
        assert (quick_run / name).stat().st_size > 0, name
    env = json.loads((quick_run / "environment.json").read_text())
    for key in ["python", "torch", "crypten", "numpy", "cpu_count", "platform", "git_commit", "command"]:
        assert key in env
    assert "--quick" in env["command"]
    summary = (quick_run / "summary.md").read_text()
    assert "Network MODEL" in summary and "| owners |" in summary and "## Performance" in summary


@pytest.mark.parametrize("suite", ["owners", "servers", "batch", "privacy", "perf"])
def test_figures_are_finite_and_no_point_failed(quick_run: Path, suite: str) -> None:
    for row in _rows(quick_run, suite):
        assert row["error"] == "", row["error"]
        for column, cell in row.items():
            if column in TEXT or cell == "" or (column == "epsilon" and cell == "inf"):
                continue
            assert math.isfinite(float(cell)), (suite, column, cell)


def test_one_row_per_point(quick_run: Path) -> None:
    QUICK = _grid(quick_run)
    assert json.loads((quick_run / "environment.json").read_text())["run"]["quick"] is True
    assert [int(r["owners"]) for r in _rows(quick_run, "owners")] == list(QUICK.owners)
    assert [int(r["servers"]) for r in _rows(quick_run, "servers")] == list(QUICK.servers)
    assert [int(r["batch"]) for r in _rows(quick_run, "batch")] == sorted(QUICK.batches)
    privacy = _rows(quick_run, "privacy")
    points = [(r["dataset"], r["aggregation"], r["mechanism"], float(r["epsilon"])) for r in privacy]
    assert points == [(d, a, m, float(e)) for d in QUICK.datasets for a in QUICK.aggregations  # "inf" in the JSON
                      for m in QUICK.mechanisms for e in QUICK.epsilons]


def test_batched_rounds_flat_naive_rounds_grow(quick_run: Path) -> None:
    QUICK = _grid(quick_run)
    rows = _rows(quick_run, "owners")
    batched = {int(r["owners"]): int(r["batched_rounds_per_batch"]) for r in rows}
    assert len(set(batched.values())) == 1, batched
    naive = [int(r["naive_rounds_per_batch"]) for r in rows if int(r["owners"]) <= QUICK.naive_max_owners]
    assert len(naive) >= 2 and all(a < b for a, b in zip(naive, naive[1:])), naive
    assert all(r["naive_rounds_per_batch"] == "" for r in rows if int(r["owners"]) > QUICK.naive_max_owners)
    for row in rows:  # all protocols and the plaintext ensemble measured the same points
        assert float(row["batched_seconds_per_query"]) > 0 and float(row["plaintext_seconds_per_query"]) > 0


def test_noiseless_private_labels_match_plaintext(quick_run: Path) -> None:
    noiseless = [r for r in _rows(quick_run, "privacy") if r["epsilon"] == "inf"]
    assert noiseless
    for row in noiseless:  # fixed-point rounding may flip a rare near-tie, nothing more
        assert float(row["agreement_with_plaintext"]) >= 0.95


def test_precomputed_batches_skip_the_dealer_and_stacking_keeps_rounds_flat(quick_run: Path) -> None:
    rows = _rows(quick_run, "perf")
    assert {r["workload"] for r in rows} == {"readme", "k10", "k50"}
    for row in rows:
        assert int(row["precomputed_dealer_requests"]) == 0 < int(row["live_dealer_requests"])
        assert int(row["precomputed_rounds_per_batch"]) < int(row["live_rounds_per_batch"])
        assert float(row["precomputed_stock_mib_per_query"]) > 0
    k50 = [r for r in rows if r["workload"] == "k50"]
    stacked = {int(r["owners"]): int(r["precomputed_rounds_per_batch"]) for r in k50 if r["stacking"] == "True"}
    naive = [int(r["precomputed_rounds_per_batch"]) for r in k50 if r["stacking"] == "False"]
    assert len(stacked) == 2 and len(set(stacked.values())) == 1, stacked  # K owners cost K = 1's rounds
    assert naive and naive[0] > max(stacked.values())

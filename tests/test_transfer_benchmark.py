"""Smoke test of the ``transfer`` suite: ``python -m benchmarks.run --suite transfer --quick`` end to end.

Quick mode (embedded digits, 4 hybrid_cnn owners of 200 images, 2 epochs, 60 training images held out as the
audit's non-members, 40 queries, 40 student steps): the owners
learn little, so only the harness is checked: the files, the columns, finite figures, and the accounting
columns against the library's own accounting functions (a different code path from the suite's file
writing; the accounting itself is tested against dp_accounting in tests/test_transfer.py). Timings are never
asserted. Does not import from ``benchmarks``.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pricure_crypten.experiments.transfer import gaussian_with_sigma, gnmax_total_epsilon, queries_within
from pricure_crypten.privacy.noise import ConfidentGNMax, calibrate

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["source", "dataset", "owners", "arch", "queries", "answered", "answered_label_accuracy",
           "student_supervised", "student_semi_supervised", "epsilon_conservative", "epsilon_answered_only",
           "epsilon_data_dependent", "epsilon_data_dependent_smooth", "per_query_bought_conservative",
           "per_query_bought_answered_only", "per_query_direct_accuracy", "delta"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("transfer")
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "transfer", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_files_columns_and_finite_figures(quick_run: Path) -> None:
    for name in ("transfer.csv", "transfer-digits.csv", "transfer-digits.json", "transfer-digits.md"):
        assert (quick_run / name).stat().st_size > 0, name
    with open(quick_run / "transfer-digits.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and list(rows[0]) == COLUMNS
    row = rows[0]
    assert (row["dataset"], int(row["owners"]), int(row["queries"])) == ("digits", 4, 40)
    for column in COLUMNS[4:]:
        if column in ("epsilon_data_dependent_smooth", "answered_label_accuracy") and row[column] == "":
            continue  # quick mode skips the smooth-sensitivity release; no label if nothing was answered
        assert math.isfinite(float(row[column])), (column, row[column])


def test_accounting_columns_match_the_library(quick_run: Path) -> None:
    record = json.loads((quick_run / "transfer-digits.json").read_text())["result"]
    m = record["mechanism"]
    mechanism = ConfidentGNMax(threshold=m["threshold"], sigma_threshold=m["sigma1"], sigma=m["sigma2"], delta=1e-5)
    q, a = record["queries"], record["answered"]
    assert 0 <= a <= q
    for mode in ("conservative", "answered-only"):
        expected = gnmax_total_epsilon(mechanism, queries=q, answered=a, delta=1e-5, mode=mode)
        assert record["epsilon"][mode] == pytest.approx(expected, rel=1e-12)
    assert record["epsilon"]["answered-only"] <= record["epsilon"]["conservative"]
    per_query_1 = calibrate(epsilon=1.0, mechanism="gaussian", delta=1e-5)
    plain_gnmax = gaussian_with_sigma(m["sigma2"], delta=1e-5)  # PATE's argmax noise without the threshold step
    assert len(record["per_query"]) == 4
    for entry in record["per_query"]:
        direct = per_query_1 if entry["mechanism"].startswith("Gaussian noisy argmax") else plain_gnmax
        assert entry["sigma"] == pytest.approx(direct.scale, rel=1e-9)
        assert entry["queries_bought"] == queries_within(direct, total=entry["total_epsilon"], delta=1e-5)
    assert {s["student"] for s in record["students"]} == {"supervised", "semi-supervised"}


def test_owner_recipe_and_held_out_non_members(quick_run: Path) -> None:
    """Owners: hybrid_cnn with benchmarks.teachers' recipe (quick mode shortens only epochs/patience);
    non-members: training-split records held out from every owner (the split is re-derived here from the
    loader, not from the suite: owners' data + hold-out = the digits training split, train + val)."""
    from pricure_crypten.experiments.data import load_dataset

    record = json.loads((quick_run / "transfer-digits.json").read_text())["result"]
    assert record["arch"] == "hybrid_cnn"
    recipe = record["owner_recipe"]
    assert (recipe["lr"], recipe["batch_size"], recipe["val_fraction"], recipe["shift"]) == (3e-3, 32, 0.1, 2)
    digits = load_dataset("digits", seed=0)
    assert record["owner_data"] + record["holdout"] == len(digits.train_y) + len(digits.val_y)
    assert record["owners"] * record["shard_size"] <= record["owner_data"]
    assert record["holdout"] == 60
    for e in record["exposure"]:
        assert (e["members"], e["non_members"]) == (60, record["holdout"])
    # the audited non-members are the last 60 training-split records (their labels, recomputed from the loader)
    held_out = torch.cat([digits.train_y, digits.val_y])[-60:]
    assert record["audit"]["non_member_class_counts"] == torch.bincount(held_out, minlength=10).tolist()
    assert sum(record["audit"]["member_class_counts"]) == 60


def test_exposure_rows_are_audits_against_both_totals(quick_run: Path) -> None:
    record = json.loads((quick_run / "transfer-digits.json").read_text())["result"]
    exposure = record["exposure"]
    assert len(exposure) == 4  # 2 students x (confidence, label-only)
    for e in exposure:
        assert 0.0 <= e["auc"] <= 1.0
        assert 0.0 <= e["epsilon_lower"] <= e["max_refutable_epsilon"] + 1e-9
        assert e["bound_conservative"] == record["epsilon"]["conservative"]
        assert e["within_bound"] == (e["epsilon_lower"] <= min(e["bound_conservative"], e["bound_answered_only"]))

"""Smoke test of ``python -m benchmarks.teachers --quick`` (2 owners of mlp16 and coarse_cnn on 240-image MNIST
shards, 8 epochs, 500 test images).

Checks what can fail: one row per architecture, shards of 240 images (60,000 / 250), the 95% interval recomputed
independently from the per-owner accuracies (Student t with n - 1 degrees of freedom, scipy), the mean inside
it, accuracies above chance (1/10; the bound 0.2 is more than 7 binomial standard deviations of 500 test
images above it, and 8 epochs on 240 images give 0.3 and more; a broken label or shard pairing gives about 0.1), and the nonlinear counts and parameters of the two architectures counted by hand.
Skipped when MNIST (``../shared/data/mnist/mnist.npz``) is absent.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist.npz"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MNIST.exists():
        pytest.skip(f"MNIST not found at {MNIST}")
    out = tmp_path_factory.mktemp("teachers")
    done = subprocess.run([sys.executable, "-m", "benchmarks.teachers", "--quick", "--root", str(MNIST.parent),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def test_quick_teachers(quick: Path) -> None:
    with open(quick / "k250-teachers.csv", newline="") as handle:
        rows = {r["arch"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"mlp16", "coarse_cnn"}
    for row in rows.values():
        assert int(row["shard_size"]) == 240 and int(row["owners_evaluated"]) == 2
        accuracies = [float(a) for a in row["owner_accuracies"].split()]
        assert len(accuracies) == 2 and min(accuracies) > 0.2
        half = stats.t.ppf(0.975, 1) * np.std(accuracies, ddof=1) / math.sqrt(2)
        low, high = float(row["owner_accuracy_ci95_low"]), float(row["owner_accuracy_ci95_high"])
        assert low == pytest.approx(np.mean(accuracies) - half, abs=1e-5)  # accuracies are written to 4 decimals
        assert high == pytest.approx(np.mean(accuracies) + half, abs=1e-5)  # accuracies are written to 4 decimals
        assert low <= float(row["owner_accuracy_mean"]) <= high
    assert (rows["mlp16"]["relu_per_owner"], rows["mlp16"]["params"]) == ("16", str(784 * 16 + 16 + 16 * 10 + 10))
    # coarse_cnn: conv 1->8 5x5 stride 2 (12x12), avgpool 3 (4x4), ReLU 8*4*4 = 128, dense 128->32, ReLU 32, 32->10
    assert rows["coarse_cnn"]["relu_per_owner"] == str(8 * 4 * 4 + 32)
    assert rows["coarse_cnn"]["params"] == str(8 * 25 + 8 + 128 * 32 + 32 + 32 * 10 + 10)
    assert int(rows["coarse_cnn"]["relu_per_query_k250"]) == 250 * 160
    assert json.loads((quick / "k250-teachers.json").read_text())["command"].startswith("python -m benchmarks.teachers")

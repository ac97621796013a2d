"""Smoke test of the PATE-scale cost suite: ``python -m benchmarks.k250 --quick`` end to end (K = 3, N = 2).

Checks the files and what can fail on a broken measurement: one row, no
error, the owners' nonlinear work per query (3 owners x 16 hidden ReLU of
the 784-16-10 MLP = 48, counted independently here), positive rounds and
bytes, a batch from stock that asks the dealer nothing and takes fewer
rounds than with the dealer on-line, one memory peak per server and one for
the dealer, and the command recorded in the JSON. Timings are never asserted.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpc

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k250")
    done = subprocess.run([sys.executable, "-m", "benchmarks.k250", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def test_quick_k250_cost_row(quick: Path) -> None:
    with open(quick / "k250-cost.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert row["error"] == ""
    assert (row["arch"], row["owners"], row["servers"], row["batch"]) == ("mlp16", "3", "2", "2")
    assert int(row["relu_per_query"]) == 3 * 16 and int(row["params_per_owner"]) == 784 * 16 + 16 + 16 * 10 + 10
    assert int(row["precomputed_dealer_requests"]) == 0 < int(row["live_dealer_requests"])
    assert 0 < int(row["precomputed_rounds_per_batch"]) < int(row["live_rounds_per_batch"])
    for column in ("live_bytes_per_query", "precomputed_bytes_per_query", "precomputed_offline_bytes_per_query",
                   "precomputed_stock_mib_per_query", "dealer_peak_mib", "server_peak_mib"):
        assert float(row[column]) > 0, column
    peaks = [float(p) for p in row["server_peaks_mib"].split()]
    assert len(peaks) == 2 and max(peaks) == pytest.approx(float(row["server_peak_mib"]), abs=1)
    meta = json.loads((quick / "k250-cost.json").read_text())
    assert meta["runs"][0]["command"] == f"python -m benchmarks.k250 --quick --out {quick}"
    assert meta["rows"][0]["arch"] == "mlp16" and meta["rows"][0]["run"] == 0

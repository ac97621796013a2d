"""The main job, `pricure demo`, end to end on small settings, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pricure_crypten import Aggregation, calibrate
from pricure_crypten.experiments.demo import DemoConfig, format_table, run_demo
from tests.helpers import REPO, SHARED_DATA, cli_exit_code

REQUIRED_KEYS = {
    "dataset", "owners", "servers", "epsilon", "mechanism", "aggregation", "queries",
    "single_owner_accuracy_mean", "single_owner_accuracy_best", "plaintext_ensemble_accuracy",
    "private_accuracy", "seconds_per_query", "rounds_per_batch", "bytes_per_query", "reveals_per_batch",
}


@pytest.mark.mpc
def test_demo_json_without_noise_matches_the_plaintext_ensemble():
    result = subprocess.run(
        [sys.executable, "-m", "pricure_crypten", "demo", "--epsilon", "inf", "--json",
         "--owners", "4", "--queries", "30", "--batch-size", "15"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object
    out = json.loads(lines[0])
    assert REQUIRED_KEYS <= set(out)
    assert out["epsilon"] == "inf" and out["owners"] == 4 and out["queries"] == 30
    assert out["private_accuracy"] == out["plaintext_ensemble_accuracy"]
    assert out["private_equals_plaintext"] == 1.0
    assert out["reveals_per_batch"] == 1 and out["server_decodes"] == 0
    assert out["rounds_per_batch"] > 0 and out["bytes_per_query"] > 0


@pytest.mark.mpc
def test_demo_with_noise_reports_the_privacy_spent():
    result = run_demo(DemoConfig(dataset="digits", owners=3, queries=12, batch_size=6,
                                 aggregation=Aggregation(noise=calibrate(epsilon=2.0)), quiet=True))
    assert result["batches"] == 2 and result["reveals_per_batch"] == 1
    assert result["client_spent_epsilon"] <= 12 * 2.0 + 1e-9  # never above basic composition
    assert 0.0 <= result["private_accuracy"] <= 1.0
    # the guarantee is the client's TOTAL over all its queries: basic composition is exactly 12 x 2
    assert result["client_answered_queries"] == 12
    totals = result["client_total_epsilon_by_accountant"]
    assert set(totals) == {"basic", "rdp", "pld"} and totals["basic"] == pytest.approx(24.0)
    assert 2.0 < totals["pld"] <= totals["basic"] and 2.0 < totals["rdp"] <= totals["basic"]
    table = format_table(result)
    assert "private accuracy" in table
    assert "client's total epsilon after 12 queries (delta 1e-05" in table
    assert f"TOTAL epsilon of {result['client_spent_epsilon']:.4g} at delta = 1e-05" in table


@pytest.mark.mpc
@pytest.mark.skipif(not (SHARED_DATA / "pneumoniamnist.npz").exists(), reason="shared PneumoniaMNIST file absent")
def test_demo_on_pneumoniamnist_beats_080_in_plaintext():
    result = run_demo(DemoConfig(dataset="pneumoniamnist", data_root=str(SHARED_DATA), owners=10,
                                 aggregation=Aggregation(noise=calibrate(epsilon=float("inf"))), quiet=True))
    assert result["plaintext_ensemble_accuracy"] >= 0.80
    assert result["private_accuracy"] == result["plaintext_ensemble_accuracy"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["demo", "--dataset", "no-such-data"], "unknown dataset 'no-such-data'"),
        (["demo", "--epsilon", "abc"], "--epsilon must be a number"),
        (["demo", "--owners", "100000"], "--owners 100000 exceeds"),
        (["demo", "--queries", "100000"], "--queries 100000 exceeds"),
        (["demo", "--servers", "1"], "--servers must be >= 2"),
        (["demo", "--epsilon", "-1"], "--epsilon must be > 0"),
        (["demo", "--mechanism", "gaussian", "--delta", "2"], "delta must be in [0, 1)"),
    ],
)
def test_bad_input_gets_one_clear_line_and_a_nonzero_exit(argv, fragment, capsys):
    assert cli_exit_code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]




def test_missing_data_file_names_file_and_folder(tmp_path, capsys):
    assert cli_exit_code(["demo", "--dataset", "pneumoniamnist", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pneumoniamnist.npz" in err[0] and str(tmp_path) in err[0]

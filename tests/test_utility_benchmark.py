"""Smoke test of the ``utility`` benchmark suite: ``python -m benchmarks.run --suite utility --quick``.

The quick run trains K = 1, 4, 16 owners on the digits data (2 seeds) and
writes per-seed rows, the summaries with their intervals, and the
equal-total-epsilon comparison. Checked here against independent references,
never against the suite's own code (tests do not import ``benchmarks``):

* privacy calibration: every calibrated mechanism's client total (queries-fold
  composition at delta) is recomputed from its noise scale and the vote
  histogram's sensitivities (L1 = 2, L2 = sqrt 2), with the Gaussian's exact
  closed form (Balle & Wang 2018; n Gaussians with noise multiplier z compose
  to one with z / sqrt n) and, for Laplace, a numerical privacy-loss
  distribution written here (the exact loss law of Laplace vs shifted Laplace,
  binned on a grid 1/400 of the per-query epsilon, n-fold by FFT). Agreement
  with the suite's PLD accountant within 0.5% (it is dp_accounting's
  pessimistic discretisation; a calibration by basic composition, or with the
  wrong sensitivity, is off by a factor of 2 or more here);
* one row per (K, seed, estimator); mean owner <= best owner; with K = 1 the
  two agree and there are no vote ties;
* the summary's means and 95% t-intervals, recomputed from the per-seed rows;
* the mechanism comparison: equal client total for the three mechanisms (and
  equal to the closed form for Confident-GNMax's combined Gaussian), the
  Gaussian's noise multiplier equal to Confident-GNMax's combined one (two
  Gaussian events of equal multiplier and count cost the same), accuracy on all
  = coverage x accuracy on answered, full coverage without a threshold, and
  about ``answered_labels`` answered labels for Confident-GNMax.

No statistical claim is tested (accuracies are not compared with each other
beyond the deterministic inequalities above), so no power is stated.
Timings are never asserted.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

REPO = Path(__file__).resolve().parent.parent
QUICK_OWNERS = (1, 4, 16)
QUICK_SEEDS = (0, 1)
QUICK_QUERIES = 100
ANSWERED_LABELS = 50
DELTA = 1e-5
L1_SENSITIVITY = 2.0  # one owner's vote moves: two counts change by 1
L2_SENSITIVITY = math.sqrt(2.0)
FIXED_ESTIMATORS = {"mean owner", "best owner (in hindsight)", "plaintext ensemble (lowest-index ties)",
                    "plaintext ensemble (random ties)"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("utility")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--suite", "utility", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _num(cell: str) -> float | None:
    return None if cell == "" else float(cell)


# -- independent privacy references ------------------------------------------------------------------

def gaussian_delta(epsilon: float, mu: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism with shift/sigma = mu (Balle & Wang 2018, Thm. 8)."""
    return float(stats.norm.cdf(mu / 2 - epsilon / mu) - math.exp(epsilon + stats.norm.logcdf(-mu / 2 - epsilon / mu)))


def gaussian_epsilon(*, noise_multiplier: float, count: int, delta: float) -> float:
    mu = math.sqrt(count) / noise_multiplier
    return optimize.brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, 10 * mu * mu + 10 * mu + 10)


def laplace_epsilon(*, noise_multiplier: float, count: int, delta: float, resolution: int = 400) -> float:
    """Epsilon at delta of ``count`` Laplace releases (sensitivity 1, scale ``noise_multiplier``), numerically.

    The privacy loss of Lap(0, b) against Lap(1, b) is +1/b for x <= 0 (mass 1/2), -1/b for x >= 1 (mass
    e^(-1/b) / 2) and (1 - 2x) / b in between; binned to the nearest multiple of (1/b) / resolution,
    convolved ``count`` times by FFT; delta(eps) = E[(1 - e^(eps - L))_+]. Symmetric, so one direction.
    """
    b = noise_multiplier
    eps0, r = 1.0 / b, resolution
    pmf = np.zeros(2 * r + 1)
    pmf[2 * r] += 0.5
    pmf[0] += 0.5 * math.exp(-1.0 / b)
    edges = np.linspace(0.0, 1.0, 200_001)
    masses = 0.5 * (np.exp(-edges[:-1] / b) - np.exp(-edges[1:] / b))
    losses = (1.0 - (edges[:-1] + edges[1:])) / b
    np.add.at(pmf, np.rint(losses / eps0 * r).astype(int) + r, masses)
    size = 1 << int(math.ceil(math.log2(count * 2 * r + 1)))
    total = np.fft.irfft(np.fft.rfft(pmf, size) ** count, size)[: count * 2 * r + 1].clip(min=0.0)
    values = (np.arange(len(total)) - count * r) * eps0 / r

    def delta_at(epsilon: float) -> float:
        tail = values > epsilon
        return float(np.sum(total[tail] * -np.expm1(epsilon - values[tail])))

    return optimize.brentq(lambda e: delta_at(e) - delta, 0.0, count * eps0 + 1e-9)


def independent_total(mechanism: str, scale: float, count: int) -> float:
    if mechanism == "laplace":
        return laplace_epsilon(noise_multiplier=scale / L1_SENSITIVITY, count=count, delta=DELTA)
    return gaussian_epsilon(noise_multiplier=scale / L2_SENSITIVITY, count=count, delta=DELTA)


def test_references_on_known_values() -> None:
    """The references themselves: one Gaussian at sigma with the textbook bound's sigma is (eps, delta)-DP
    with room to spare; one Laplace release costs at most its pure epsilon, 100 of them at most 100x."""
    eps = 1.0
    classical = math.sqrt(2 * math.log(1.25 / DELTA)) / eps
    assert gaussian_delta(eps, 1.0 / classical) < DELTA
    single = laplace_epsilon(noise_multiplier=1.0, count=1, delta=DELTA)
    assert 0.99 < single <= 1.0 + 1e-9
    many = laplace_epsilon(noise_multiplier=10.0, count=100, delta=DELTA)
    assert many < 100 * 0.1 and many > math.sqrt(100) * 0.1  # tighter than basic, more than one sqrt-n step


def test_calibration_composes_to_the_stated_totals(quick_run: Path) -> None:
    meta = json.loads((quick_run / "utility-k.json").read_text())
    entries = meta["calibration"]
    assert {(e["mechanism"], e["budget"]) for e in entries} == {
        (m, b) for m in ("laplace", "gaussian") for b in ("per-query", "total")}
    for entry in entries:
        assert entry["client_queries"] == QUICK_QUERIES and entry["delta"] == DELTA
        reference = independent_total(entry["mechanism"], entry["noise_scale"], entry["client_queries"])
        assert entry["client_total_epsilon"] == pytest.approx(reference, rel=0.005), entry
        if entry["budget"] == "total":
            assert entry["client_total_epsilon"] <= entry["target"] * (1 + 1e-9)
            assert reference == pytest.approx(entry["target"], rel=0.005), entry
        elif entry["mechanism"] == "laplace":
            assert entry["noise_scale"] == pytest.approx(L1_SENSITIVITY / entry["target"])
        else:  # one Gaussian release is (target, delta)-DP, tightly (analytic calibration)
            mu = L2_SENSITIVITY / entry["noise_scale"]
            assert gaussian_delta(entry["target"], mu) == pytest.approx(DELTA, rel=0.01)


def test_rows_for_every_owner_count_and_seed(quick_run: Path) -> None:
    rows = _rows(quick_run / "utility.csv")
    meta = json.loads((quick_run / "utility-k.json").read_text())
    private = {f"private: {e['mechanism']}, ε={e['target']:g} {'per query' if e['budget'] == 'per-query' else 'total'}"
               for e in meta["calibration"]}
    expected = {(k, s, e) for k in QUICK_OWNERS for s in QUICK_SEEDS for e in FIXED_ESTIMATORS | private}
    found = [(int(r["owners"]), int(r["seed"]), r["estimator"]) for r in rows]
    assert sorted(found) == sorted(expected)
    by_point: dict[tuple, dict[str, dict[str, str]]] = {}
    for row in rows:
        by_point.setdefault((int(row["owners"]), int(row["seed"])), {})[row["estimator"]] = row
        assert 0.0 <= float(row["accuracy"]) <= 1.0
    for (owners, _), point in by_point.items():
        mean, best = float(point["mean owner"]["accuracy"]), float(point["best owner (in hindsight)"]["accuracy"])
        assert mean <= best + 1e-12
        sizes = int(point["mean owner"]["shard_size_min"]), int(point["mean owner"]["shard_size_max"])
        assert sizes[1] - sizes[0] <= 1  # IID shards of one fixed training set
        if owners == 1:
            assert mean == best
            assert float(point["mean owner"]["tie_rate"]) == 0.0
            assert point["plaintext ensemble (random ties)"]["accuracy"] == \
                point["plaintext ensemble (lowest-index ties)"]["accuracy"]
    totals = {int(p["mean owner"]["shard_size_min"]) * k for (k, _), p in by_point.items()}
    assert max(totals) - min(totals) < max(QUICK_OWNERS)  # a fixed total, whatever K


def test_summary_means_and_t_intervals(quick_run: Path) -> None:
    rows = _rows(quick_run / "utility.csv")
    summary = _rows(quick_run / "utility-k.csv")
    assert len(summary) == len(rows) // len(QUICK_SEEDS)
    for line in summary:
        values = np.array([float(r["accuracy"]) for r in rows
                           if r["owners"] == line["owners"] and r["estimator"] == line["estimator"]])
        assert len(values) == len(QUICK_SEEDS) == int(line["seeds"])
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        mean, low, high = float(line["accuracy"]), float(line["accuracy_lo"]), float(line["accuracy_hi"])
        assert mean == pytest.approx(values.mean(), abs=1e-12)
        assert low <= mean <= high
        assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-9)
    markdown = (quick_run / "utility-k.md").read_text()
    assert "in hindsight" in markdown and "fixed TOTAL ε" in markdown and "random ties" in markdown


def _gnmax_multiplier(parameters: str) -> float:
    values = dict(re.findall(r"(σ1|σ2)=([0-9.eE+-]+)", parameters))
    z1 = float(values["σ1"]) / 1.0  # the top count moves by at most 1
    z2 = float(values["σ2"]) / L2_SENSITIVITY
    return (z1 ** -2 + z2 ** -2) ** -0.5


def test_mechanisms_at_equal_total_epsilon(quick_run: Path) -> None:
    rows = _rows(quick_run / "mechanisms-seeds.csv")
    assert {r["mechanism"] for r in rows} == {"laplace", "gaussian", "confident-gnmax"}
    assert {int(r["seed"]) for r in rows} == set(QUICK_SEEDS)
    by_mech = {m: [r for r in rows if r["mechanism"] == m] for m in ("laplace", "gaussian", "confident-gnmax")}
    gnmax = by_mech["confident-gnmax"][0]
    queries = int(gnmax["client_queries"])
    total = float(gnmax["client_total_epsilon"])
    z = _gnmax_multiplier(gnmax["parameters"])
    assert total == pytest.approx(gaussian_epsilon(noise_multiplier=z, count=queries, delta=DELTA), rel=0.02)
    for mech, group in by_mech.items():
        for row in group:
            assert int(row["client_queries"]) == queries
            assert float(row["client_total_epsilon"]) == pytest.approx(total, rel=1e-3)
            assert float(row["client_total_epsilon"]) <= total * (1 + 1e-9)
            coverage, on_all = float(row["coverage"]), float(row["accuracy_on_all"])
            if mech == "confident-gnmax":
                assert 0.0 < coverage <= 1.0
            else:
                assert coverage == 1.0
            assert on_all == pytest.approx(coverage * float(row["accuracy_on_answered"]), abs=1e-12)
    gaussian = by_mech["gaussian"][0]
    assert float(gaussian["noise_multiplier"]) == pytest.approx(z, rel=1e-3)
    mean_coverage = np.mean([float(r["coverage"]) for r in by_mech["confident-gnmax"]])
    assert queries == math.ceil(ANSWERED_LABELS / mean_coverage)
    assert ANSWERED_LABELS <= queries * mean_coverage < ANSWERED_LABELS + 1
    summary = _rows(quick_run / "mechanisms-total-epsilon.csv")
    assert len(summary) == 3
    for line in summary:
        if line["accuracy_on_all_lo"]:
            assert float(line["accuracy_on_all_lo"]) <= float(line["accuracy_on_all"]) <= float(line["accuracy_on_all_hi"])
    assert "abstain = error" in (quick_run / "mechanisms-total-epsilon.md").read_text()

"""PATE 2018's data-dependent analysis (evaluation module): hand values, monotonicity, brute force.

Published figures: only the DATA-INDEPENDENT epsilon of the paper's MNIST
Confident-GNMax setting (T=200, sigma1=150, sigma2=40, 640 queries of which
286 answered, delta=1e-5) is checked, against a closed form. The paper's
data-dependent epsilon (1.97, Table 2) needs its vote histograms, which are not
available here, and is NOT reproduced. Local sensitivities are checked against
brute-force enumeration of every histogram within a small distance (an
independent, direct computation), Theorem 6 against the formula evaluated in
50-digit arithmetic (mpmath).
"""

from __future__ import annotations

import itertools
import math

import dp_accounting
import mpmath
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from pricure_crypten.experiments import pate_analysis as pa

ORDERS = np.array([1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64])


# --------------------------------------------------------------------------- q
def test_log_q_two_classes_by_hand():
    # P[N(0, 2 * 25) >= 10] = P[Z >= 10 / (5 sqrt 2)] = erfc(1) / 2
    assert pa.log_q_gnmax([10, 0], 5.0) == pytest.approx(math.log(0.5 * math.erfc(1.0)), rel=1e-12)
    # three classes: union bound of two tails
    q = 0.5 * math.erfc(8 / 10) + 0.5 * math.erfc(12 / 10)
    assert pa.log_q_gnmax([12, 4, 0], 5.0) == pytest.approx(math.log(q), rel=1e-12)
    # a tie is capped at 1 - 1/m
    assert pa.log_q_gnmax([5, 5], 3.0) == pytest.approx(math.log(0.5))
    assert pa.log_q_gnmax([5, 5, 5], 3.0) == pytest.approx(math.log(2 / 3))


# --------------------------------------------------------------------------- RDP
def test_data_independent_curves_by_hand():
    assert pa.rdp_data_independent([8.0], 40.0)[0] == pytest.approx(8 / 1600)
    # at p = 1/2 the threshold step is at its worst: data-independent a / (2 sigma1^2)
    assert pa.rdp_threshold(math.log(0.5), 150.0, [8.0])[0] == pytest.approx(8 / (2 * 150**2))
    # a tie gives GNMax no data-dependent saving
    assert pa.rdp_gnmax(pa.log_q_gnmax([5, 5], 40.0), 40.0, ORDERS) == pytest.approx(ORDERS / 1600)


@pytest.mark.parametrize("sigma, log_q, order", [(2.0, -5.0, 4.0), (10.0, -6.0, 6.0)])
def test_theorem6_matches_the_formula_in_high_precision(sigma, log_q, order):
    mpmath.mp.dps = 50
    q = mpmath.exp(log_q)
    mu2 = sigma * mpmath.sqrt(-log_q)
    mu1 = mu2 + 1
    e1, e2 = mu1 / sigma**2, mu2 / sigma**2
    A = (1 - q) / (1 - (q * mpmath.exp(e2)) ** ((mu2 - 1) / mu2))
    B = mpmath.exp(e1) / q ** (1 / (mu1 - 1))
    expected = mpmath.log((1 - q) * A ** (order - 1) + q * B ** (order - 1)) / (order - 1)
    got = pa.rdp_gnmax(log_q, sigma, [order])[0]
    assert got == pytest.approx(float(expected), rel=1e-9, abs=0)
    assert 0.01 * order / sigma**2 < got < order / sigma**2  # a substantial, data-dependent value


def test_more_consensus_never_costs_more_and_never_above_data_independent():
    sigma, n = 20.0, 250
    curves = [pa.rdp_gnmax(pa.log_q_gnmax([n - k, k, 0], sigma), sigma, ORDERS) for k in range(0, n // 2 + 1, 5)]
    curves = np.array(curves)  # rows: less and less consensus
    assert np.all(np.diff(curves, axis=0) >= -1e-15)
    assert np.all(curves <= ORDERS / sigma**2 + 1e-15)
    assert np.all(curves[0] < ORDERS / sigma**2)  # unanimity: strictly cheaper at every order here


def test_bound_is_non_decreasing_in_q_condition_c5_numerically():
    for sigma, order in ((10.0, 4.0), (40.0, 8.0), (40.0, 20.0)):
        grid = -np.geomspace(1e4, 1e-3, 400)
        values = [pa.rdp_gnmax(float(lq), sigma, [order])[0] for lq in grid]
        assert np.all(np.diff(values) >= -1e-12)


def test_confident_gnmax_composition_charges_gnmax_only_when_answered():
    votes = np.array([[240, 5, 5], [100, 80, 70], [250, 0, 0]])
    answered = np.array([True, False, True])
    kw = dict(threshold=200, sigma_threshold=150, sigma=40, orders=ORDERS)
    ind = pa.confident_gnmax_rdp(votes, answered, data_dependent=False, **kw)
    assert ind == pytest.approx(3 * ORDERS / (2 * 150**2) + 2 * ORDERS / 40**2)
    dep = pa.confident_gnmax_rdp(votes, answered, **kw)
    assert np.all(dep <= ind + 1e-15) and np.any(dep < ind)
    none = pa.confident_gnmax_rdp(votes, np.zeros(3, bool), **kw)
    thresholds = sum(pa.rdp_threshold(pa.log_pr_answered(v, threshold=200, sigma_threshold=150), 150, ORDERS)
                     for v in votes)
    assert none == pytest.approx(thresholds)


# ------------------------------------------------------------ the published MNIST setting
def test_mnist_confident_gnmax_data_independent_epsilon():
    """PATE 2018 Table 2 setting (T=200, sigma1=150, sigma2=40, 640 queries, 286 answered, delta=1e-5):
    the data-independent curve equals dp_accounting's for the same Gaussians, and its epsilon on a fine
    order grid meets the closed form min_a c a + log(1/delta)/(a-1) = c + 2 sqrt(c log(1/delta))."""
    orders = np.arange(1.25, 200, 0.25)
    ours = pa.confident_gnmax_rdp(np.zeros((640, 10)), np.arange(640) < 286, threshold=200, sigma_threshold=150,
                                  sigma=40, orders=orders, data_dependent=False)
    ref = RdpAccountant(orders=list(orders))
    ref.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(150.0), 640),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(40.0 / math.sqrt(2)), 286)]))
    assert ours == pytest.approx(np.asarray(ref._rdp), rel=1e-12)
    c = 640 / (2 * 150**2) + 286 / 40**2
    closed = c + 2 * math.sqrt(c * math.log(1e5))
    eps, order = pa.epsilon_from_rdp(orders, ours, 1e-5)
    assert closed <= eps <= closed + 1e-4
    assert eps == pytest.approx(3.174, abs=1e-3) and order == pytest.approx(1 + math.sqrt(math.log(1e5) / c), abs=0.25)


# ------------------------------------------------------------------ smooth sensitivity
def _histograms_within(h0, d):
    """Every histogram reachable from h0 by at most d single-vote moves (one owner changes its vote)."""
    seen, frontier = {tuple(h0)}, {tuple(h0)}
    for _ in range(d):
        nxt = set()
        for h in frontier:
            for i, j in itertools.permutations(range(len(h)), 2):
                if h[i] > 0:
                    g = list(h)
                    g[i] -= 1
                    g[j] += 1
                    nxt.add(tuple(g))
        frontier = nxt - seen
        seen |= nxt
    return seen


def _brute_ls(f, h0, d):
    best = 0.0
    for h in _histograms_within(h0, d):
        fh = f(h)
        best = max([best] + [abs(f(g) - fh) for g in _histograms_within(h, 1)])
    return best


@pytest.mark.parametrize("h0", [(11, 1, 0), (8, 3, 1), (6, 6, 0)])
def test_gnmax_local_sensitivity_bounds_brute_force(h0):
    sigma, order = 2.0, 3.0
    cache = {}

    def f(h):
        if h not in cache:
            cache[h] = pa.rdp_gnmax(pa.log_q_gnmax(list(h), sigma), sigma, [order])[0]
        return cache[h]

    ls = pa.local_sensitivity_gnmax(list(h0), sigma=sigma, order=order, max_distance=4)
    for d in range(4):
        brute = _brute_ls(f, h0, d)
        assert ls[d] >= brute - 1e-12, (d, ls[d], brute)
    assert _brute_ls(f, h0, 3) > 0  # the case is not trivial
    assert np.all(np.diff(ls) >= 0) and np.all(ls <= order / sigma**2)


def test_threshold_local_sensitivity_equals_brute_force():
    T, s1, order, h0 = 6.0, 1.0, 3.0, (8, 3, 1)

    def f(h):
        return pa.rdp_threshold(pa.log_pr_answered(list(h), threshold=T, sigma_threshold=s1), s1, [order])[0]

    ls = pa.local_sensitivity_threshold(list(h0), threshold=T, sigma_threshold=s1, order=order, max_distance=4)
    for d in range(4):
        brute = _brute_ls(f, h0, d)
        assert ls[d] >= brute - 1e-12
        assert ls[d] == pytest.approx(brute, rel=1e-9)  # max counts 8-d..8+d are all reachable here
    assert ls[0] > 0


def test_smooth_sensitivity_and_gnss_by_hand():
    assert pa.smooth_sensitivity([1.0, 3.0, 2.0], 0.5) == pytest.approx(3 * math.exp(-0.5))
    assert pa.smooth_sensitivity([5.0, 0.0], 0.1) == 5.0
    expected = 5 * math.exp(0.02) / 100 + (0.05 - 0.5 * math.log(1 - 0.1)) / 4
    assert pa.rdp_gnss(beta=0.01, sigma_s=10.0, order=5.0) == pytest.approx(expected, rel=1e-12)


def test_analysis_report_is_consistent():
    rng = np.random.default_rng(0)
    votes = np.array([np.bincount(rng.choice(10, 250, p=np.r_[0.9, np.full(9, 0.1 / 9)]), minlength=10)
                      for _ in range(6)])
    answered = np.array([True, False, True, True, False, True])
    r = pa.analyze_confident_gnmax(votes, answered, threshold=200, sigma_threshold=150, sigma=40, delta=1e-5,
                                   orders=ORDERS, order=8.0, beta=0.05, sigma_s=10.0)
    assert (r.queries, r.answered) == (6, 4)
    assert r.epsilon_data_dependent < r.epsilon_data_independent
    assert r.smooth_sensitivity > 0 and r.release_noise_std == pytest.approx(10 * r.smooth_sensitivity)
    assert r.epsilon_smooth_release == pytest.approx(
        r.rdp_data_dependent_at_order + pa.rdp_gnss(beta=0.05, sigma_s=10.0, order=8.0) + math.log(1e5) / 7)


# ------------------------------------------------------------------------- bad input
def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="vote histogram"):
        pa.log_q_gnmax([[1, 2], [3, 4]], 1.0)
    with pytest.raises(ValueError, match="vote histogram"):
        pa.log_q_gnmax([3, -1], 1.0)
    with pytest.raises(ValueError, match="orders"):
        pa.rdp_gnmax(-1.0, 1.0, [1.0])
    with pytest.raises(ValueError, match="log_q"):
        pa.rdp_gnmax(0.5, 1.0, [2.0])
    with pytest.raises(ValueError, match="sigma"):
        pa.rdp_data_independent([2.0], 0.0)
    with pytest.raises(ValueError, match=r"1/\(2 beta\)"):
        pa.rdp_gnss(beta=0.1, sigma_s=1.0, order=6.0)
    with pytest.raises(ValueError, match="answered"):
        pa.confident_gnmax_rdp(np.zeros((2, 3)), [1, 0], threshold=1, sigma_threshold=1, sigma=1, orders=[2.0])
    with pytest.raises(ValueError, match="beta"):
        pa.smooth_sensitivity([1.0], 0.0)
    with pytest.raises(ValueError, match="underflows"):
        pa.local_sensitivity_gnmax([5000, 0], sigma=1.0, order=2.0, max_distance=2)

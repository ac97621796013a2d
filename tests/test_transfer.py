"""Private knowledge transfer: the total-epsilon accounting of a labelling, the per-query comparison, the audit.

References are independent of the code under test: ``dp_accounting``'s own RDP
accountant (Gaussian RDP composed by the library, converted at delta / K as the
filter's union bound over its K orders requires) and closed forms written here.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from pricure_crypten.experiments.transfer import (answered_labels, confidence_scores, gaussian_with_sigma,
                                                  gnmax_total_epsilon, membership_exposure, queries_within)
from pricure_crypten.privacy.accounting import DEFAULT_FILTER_ORDERS
from pricure_crypten.privacy.noise import ConfidentGNMax, calibrate

DELTA = 1e-5
PATE = ConfidentGNMax(threshold=200, sigma_threshold=150, sigma=40, delta=DELTA)


def reference_epsilon(rdp_per_order, delta: float = DELTA) -> float:
    """min_a S(a) + log(1 - 1/a) - log(delta' a) / (a - 1), delta' = delta / K (Canonne-Kamath-Steinke conversion,
    union bound over the filter's K orders), written out here."""
    a = np.asarray(DEFAULT_FILTER_ORDERS)
    d = delta / len(a)
    return max(0.0, float(np.min(np.asarray(rdp_per_order) + np.log1p(-1 / a) - np.log(d * a) / (a - 1))))


def dp_accounting_epsilon(events, delta: float = DELTA) -> float:
    """The same through dp_accounting's RdpAccountant (Gaussian events, count each)."""
    acc = RdpAccountant(orders=list(DEFAULT_FILTER_ORDERS))
    for z, count in events:
        acc.compose(dp_accounting.GaussianDpEvent(z), count)
    return acc.get_epsilon(delta / len(DEFAULT_FILTER_ORDERS))


@pytest.mark.parametrize("queries, answered", [(640, 286), (640, 640), (100, 0), (1, 1)])
def test_gnmax_totals_match_independent_accounting(queries, answered):
    a = np.asarray(DEFAULT_FILTER_ORDERS)
    # PATE's conventions: threshold step a / (2 sigma1^2) (sensitivity 1), argmax a / sigma2^2 (L2 sensitivity sqrt 2)
    conservative = queries * (a / (2 * 150**2) + a / 40**2)
    answered_only = queries * a / (2 * 150**2) + answered * a / 40**2
    ours_c = gnmax_total_epsilon(PATE, queries=queries, answered=answered, delta=DELTA, mode="conservative")
    ours_a = gnmax_total_epsilon(PATE, queries=queries, answered=answered, delta=DELTA, mode="answered-only")
    assert ours_c == pytest.approx(reference_epsilon(conservative), rel=1e-9)
    assert ours_a == pytest.approx(reference_epsilon(answered_only), rel=1e-9)
    z1, z2 = 150.0, 40 / math.sqrt(2)
    events = [(z1, queries), (z2, answered)] if answered else [(z1, queries)]
    assert ours_a == pytest.approx(dp_accounting_epsilon(events), rel=1e-6)
    assert ours_c == pytest.approx(dp_accounting_epsilon([(z1, queries), (z2, queries)]), rel=1e-6)
    if answered < queries:
        assert ours_a < ours_c
    else:
        assert ours_a == pytest.approx(ours_c, rel=1e-12)


@pytest.mark.parametrize("epsilon, total", [(1.0, 4.25), (1.0, 2.97), (0.5, 10.0), (4.0, 1.0)])
def test_queries_within_is_the_largest_count_that_fits(epsilon, total):
    direct = calibrate(epsilon=epsilon, mechanism="gaussian", delta=DELTA)
    z = direct.dp_event().noise_multiplier
    n = queries_within(direct, total=total, delta=DELTA)
    # independent: dp_accounting composes n Gaussian releases of multiplier z
    if n == 0:
        assert dp_accounting_epsilon([(z, 1)]) > total
        return
    assert dp_accounting_epsilon([(z, n)]) <= total * (1 + 1e-9)
    assert dp_accounting_epsilon([(z, n + 1)]) > total * (1 - 1e-9)


def test_gaussian_with_a_given_sigma():
    """PATE's sigma2 = 40 as a plain noisy argmax: noise std 40, noise multiplier 40 / sqrt 2 for the accountant."""
    g = gaussian_with_sigma(40.0, delta=DELTA)
    assert g.scale == pytest.approx(40.0, rel=1e-8)
    assert g.dp_event().noise_multiplier == pytest.approx(40 / math.sqrt(2), rel=1e-8)
    n = queries_within(g, total=4.81, delta=DELTA)
    assert dp_accounting_epsilon([(40 / math.sqrt(2), n)]) <= 4.81 < dp_accounting_epsilon([(40 / math.sqrt(2), n + 1)])
    with pytest.raises(ValueError, match="sigma"):
        gaussian_with_sigma(0.0, delta=DELTA)


def test_per_query_epsilon_4_buys_nothing_at_total_1():
    assert queries_within(calibrate(epsilon=4.0, mechanism="gaussian", delta=DELTA), total=1.0, delta=DELTA) == 0


def test_bad_accounting_input_is_named():
    with pytest.raises(ValueError, match="mode"):
        gnmax_total_epsilon(PATE, queries=10, answered=3, delta=DELTA, mode="optimistic")
    with pytest.raises(ValueError, match="answered"):
        gnmax_total_epsilon(PATE, queries=10, answered=11, delta=DELTA, mode="conservative")
    with pytest.raises(ValueError, match="queries"):
        gnmax_total_epsilon(PATE, queries=0, answered=0, delta=DELTA, mode="conservative")
    with pytest.raises(ValueError, match="rdp-filter"):
        gnmax_total_epsilon(PATE, queries=10, answered=3, delta=DELTA, mode="answered-only", accountant="pld")
    with pytest.raises(TypeError, match="Confident-GNMax"):
        gnmax_total_epsilon(calibrate(epsilon=1.0, mechanism="gaussian"), queries=10, answered=3, delta=DELTA,
                            mode="conservative")
    with pytest.raises(ValueError, match="total"):
        queries_within(calibrate(epsilon=1.0, mechanism="gaussian"), total=0.0, delta=DELTA)


def test_answered_labels_and_confidence_scores():
    rows, labels = answered_labels([3, -1, 0, -1, 9], num_classes=10)
    assert rows.tolist() == [0, 2, 4] and labels.tolist() == [3, 0, 9]
    with pytest.raises(ValueError, match="abstain"):
        answered_labels([3, -2], num_classes=10)
    with pytest.raises(ValueError, match="abstain"):
        answered_labels([10], num_classes=10)
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert confidence_scores(p, [0, 0, 1]).tolist() == [0.7, 0.2, 0.4]
    with pytest.raises(ValueError, match="match"):
        confidence_scores(p, [0, 1])


def test_exposure_of_a_perfect_and_of_a_blind_attack():
    """Perfect separation: AUC 1 and a positive empirical bound, never above what the sample can refute.
    Identical score distributions (seeded): AUC near 1/2 (|AUC - 0.5| < 0.1 has probability > 0.999 for
    500 + 500 records: the AUC's sd is about 0.018) and nothing refuted at 95%."""
    perfect = membership_exposure("perfect", np.linspace(2, 3, 500), np.linspace(0, 1, 500), delta=DELTA)
    assert perfect.auc == 1.0
    assert 0 < perfect.epsilon_lower <= perfect.max_refutable + 1e-12
    rng = np.random.default_rng(0)
    blind = membership_exposure("blind", rng.normal(size=500), rng.normal(size=500), delta=DELTA)
    assert abs(blind.auc - 0.5) < 0.1
    assert blind.epsilon_lower == 0.0
    assert blind.row()["members"] == 500
    with pytest.raises(ValueError, match="at least 2"):
        membership_exposure("x", [1.0], [0.0, 1.0], delta=DELTA)

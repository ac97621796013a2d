"""The empirical privacy audit (pricure_crypten.experiments.attacks.audit), against independent references.

References used: scipy.stats.beta quantiles and closed forms for the
Clopper-Pearson limits; hand-derived epsilons; mechanisms whose epsilon is
known exactly (randomized response: pure eps-DP, tight; the Gaussian shift:
its exact (eps, delta) curve, Balle & Wang 2018).

Statistical checks (seeds fixed, so each run is the same draw) and their error rates:

* Soundness (the bound must not exceed the true epsilon): by construction
  ``P[epsilon_lower > true eps] <= 1 - confidence = 5%`` per audit. Over
  200 independent seeds the number of exceedances is then stochastically
  below Binomial(200, 0.05); the test allows up to its 99.9% quantile
  (22), so a correct audit fails it with probability < 0.1%. A broken
  audit using point estimates instead of confidence limits exceeds the true
  epsilon in ~50% of seeds at a boundary-tight mechanism (fails surely).
* Power ("too little noise" MUST be caught): randomized response at eps 4
  claimed as eps 1, 233 + 233 records: on the audit part (117 + 117) the
  bound averages 2.95 (simulated over 1000 seeds: minimum 2.2, > 1 in all);
  the test asks all of 20 seeds to refute eps 1. Mutation check: an audit
  that plugs in the LOWER limit of FPR fails 10 of these tests.
* Tightness with a large sample: randomized response at eps 1, 20000 +
  20000 records: the bound is ~0.95 (half-width of the TPR interval ~0.009);
  the test asks > 0.85.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from pricure_crypten.experiments.attacks.audit import (
    AuditResult, clopper_pearson, empirical_epsilon, epsilon_from_rates, max_refutable_epsilon)

DELTA = 1e-5


def randomized_response(epsilon: float, members: int, non_members: int, seed: int):
    """Members answer 1 with probability e^eps / (1 + e^eps), non-members with 1 / (1 + e^eps): exactly eps-DP."""
    rng = np.random.default_rng(seed)
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    is_member = np.r_[np.ones(members, np.int64), np.zeros(non_members, np.int64)]
    answer = np.where(is_member == 1, rng.random(len(is_member)) < p, rng.random(len(is_member)) < 1 - p)
    return is_member, answer.astype(np.float64)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon at ``delta`` of the Gaussian shift N(mu, 1) vs N(0, 1) (Balle & Wang 2018, Thm 8)."""
    def excess(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(excess, 0.0, 50.0)


# --------------------------------------------------------------------------- the maths, by hand

def test_clopper_pearson_matches_beta_quantiles_and_closed_forms():
    for k, n in [(5, 10), (1, 20), (19, 20), (117, 233), (3, 1000)]:
        low, high = clopper_pearson(k, n, confidence=0.95)
        assert low == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1))
        assert high == pytest.approx(stats.beta.ppf(0.975, k + 1, n - k))
    # k = 0 and k = n have closed forms: 1 - (alpha/2)^(1/n) and (alpha/2)^(1/n)
    assert clopper_pearson(0, 10, confidence=0.95) == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10, confidence=0.95) == pytest.approx((0.025 ** 0.1, 1.0))
    # a hand value: 5 of 10, 95%: (0.187086, 0.812914) (standard tables)
    assert clopper_pearson(5, 10, confidence=0.95) == pytest.approx((0.187086, 0.812914), abs=1e-6)


def test_epsilon_from_rates_by_hand():
    # TPR 0.5, FPR 0.1: (i) log(0.5 / 0.1) = log 5; (ii) log(0.9 / 0.5) = log 1.8
    assert epsilon_from_rates(0.5, 0.1, delta=0.0) == pytest.approx(math.log(5))
    # TPR 0.9, FPR 0.5: (i) log 1.8; (ii) log(0.5 / 0.1) = log 5: the complement rule wins
    assert epsilon_from_rates(0.9, 0.5, delta=0.0) == pytest.approx(math.log(5))
    # delta subtracts from both numerators
    assert epsilon_from_rates(0.5, 0.1, delta=0.1) == pytest.approx(math.log(4))
    assert epsilon_from_rates(0.3, 0.3, delta=0.0) == 0.0  # chance
    assert epsilon_from_rates(0.2, 0.5, delta=0.0) == 0.0  # worse than chance: nothing refuted
    assert epsilon_from_rates(1.0, 0.0, delta=0.0) == math.inf


def test_max_refutable_epsilon_by_hand():
    # a perfect attack on m + n records: TPR_lo = 0.025^(1/m), FPR_hi = 1 - 0.025^(1/n)
    lo = 0.025 ** (1 / 233)
    expected = math.log((lo - DELTA) / (1 - lo))  # (i) and (ii) coincide when m = n
    assert max_refutable_epsilon(233, 233, delta=DELTA) == pytest.approx(expected)
    assert max_refutable_epsilon(233, 233, delta=DELTA) == pytest.approx(4.138, abs=1e-3)  # the "about 4"
    # more records, larger ceiling; more tests (union bound), smaller ceiling
    assert max_refutable_epsilon(2000, 2000, delta=DELTA) > max_refutable_epsilon(233, 233, delta=DELTA)
    assert max_refutable_epsilon(233, 233, delta=DELTA, tests=20) < max_refutable_epsilon(233, 233, delta=DELTA)
    # unbalanced: both terms by hand
    tpr_lo, fpr_hi = 0.025 ** (1 / 50), 1 - 0.025 ** (1 / 400)
    expected = max(math.log((tpr_lo - DELTA) / fpr_hi), math.log((1 - fpr_hi - DELTA) / (1 - tpr_lo)))
    assert max_refutable_epsilon(50, 400, delta=DELTA) == pytest.approx(expected)


# --------------------------------------------------------------------------- perfect and random attacks

@pytest.mark.parametrize("selection", ["split", "union"])
def test_a_perfect_attack_reaches_the_ceiling(selection):
    rng = np.random.default_rng(0)
    is_member = rng.permutation(np.r_[np.ones(233, np.int64), np.zeros(233, np.int64)])
    scores = is_member * 10.0 + rng.random(466)  # every member above every non-member, many distinct scores
    result = empirical_epsilon(is_member, scores, delta=DELTA, selection=selection)
    assert isinstance(result, AuditResult)
    ceiling = max_refutable_epsilon(result.members, result.non_members, delta=DELTA,
                                    tests=result.thresholds_tested)
    assert result.epsilon_lower == pytest.approx(ceiling)
    assert result.max_refutable == pytest.approx(ceiling)
    assert result.threshold is not None and 10 <= result.threshold <= 11  # between the two groups
    assert result.fpr_interval[0] == 0.0 and result.tpr_interval[1] == 1.0
    if selection == "split":
        assert (result.members, result.non_members) == (117, 117)  # 233 - round(233 / 2) of each class
        assert result.thresholds_tested == 1
    else:
        assert (result.members, result.non_members, result.thresholds_tested) == (233, 233, 466)


def test_a_given_threshold_is_tested_on_all_records():
    is_member = np.r_[np.ones(233, np.int64), np.zeros(233, np.int64)]
    result = empirical_epsilon(is_member, is_member.astype(float), delta=DELTA, threshold=0.5)
    assert result.selection == "given" and (result.members, result.non_members) == (233, 233)
    assert result.epsilon_lower == pytest.approx(max_refutable_epsilon(233, 233, delta=DELTA))


def test_a_random_attack_refutes_nothing():
    """Scores independent of membership (true epsilon 0). A bound > 0 is a false alarm (<= 5% per seed):
    allowed in at most 13 of 100 seeds (Binomial(100, 0.05) 99.9% quantile)."""
    alarms = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        is_member = np.r_[np.ones(233, np.int64), np.zeros(233, np.int64)]
        result = empirical_epsilon(is_member, rng.normal(size=466), delta=DELTA, seed=seed)
        alarms += result.epsilon_lower > 0
        if result.epsilon_lower == 0:
            assert result.threshold is None
    assert alarms <= stats.binom.ppf(0.999, 100, 0.05)


# --------------------------------------------------------------------------- mechanisms with known epsilon

@pytest.mark.parametrize("epsilon", [0.5, 2.0, 4.0])
def test_randomized_response_is_never_refuted_beyond_its_epsilon(epsilon):
    """Soundness over 200 seeds: exceedances <= 22 (Binomial(200, 0.05) 99.9% quantile); see the module doc."""
    exceed = 0
    for seed in range(200):
        is_member, scores = randomized_response(epsilon, 500, 500, seed)
        exceed += empirical_epsilon(is_member, scores, delta=0.0, seed=seed).epsilon_lower > epsilon
    assert exceed <= stats.binom.ppf(0.999, 200, 0.05)


def test_point_estimates_would_fail_the_soundness_check():
    """The soundness check above has power: the same data with point estimates instead of Clopper-Pearson
    limits (a broken audit) exceeds the true epsilon in far more than 22 of 200 seeds."""
    exceed = 0
    for seed in range(200):
        is_member, scores = randomized_response(2.0, 500, 500, seed)
        tpr, fpr = scores[is_member == 1].mean(), scores[is_member == 0].mean()
        exceed += epsilon_from_rates(tpr, fpr, delta=0.0) > 2.0
    assert exceed > stats.binom.ppf(0.999, 200, 0.05)


def test_gaussian_mechanism_at_its_exact_delta():
    """Scores N(mu, 1) for members, N(0, 1) for non-members: exactly (eps(delta), delta)-DP (Balle & Wang).
    Continuous scores, so the split mode really chooses among ~500 thresholds. Soundness over 100 seeds
    (<= 13 exceedances, Binomial(100, 0.05) 99.9% quantile), both modes. Not tight: a threshold test on
    1000 Gaussian scores sees little of the tail that sets epsilon (bounds ~0.6 of the true 3.1); the
    randomized-response tests carry the power."""
    mu, delta = 1.0, 1e-3
    true_eps = gaussian_epsilon(mu, delta)
    assert true_eps == pytest.approx(3.1387, abs=1e-3)  # the reference itself (value from its formula)
    # at epsilon 0 the formula's delta is the total-variation distance 2 Phi(mu / 2) - 1
    assert gaussian_epsilon(mu, 2 * stats.norm.cdf(mu / 2) - 1 - 1e-9) == pytest.approx(0.0, abs=1e-6)
    for selection in ("split", "union"):
        exceed = 0
        for seed in range(100):
            rng = np.random.default_rng(seed)
            is_member = np.r_[np.ones(500, np.int64), np.zeros(500, np.int64)]
            scores = rng.normal(size=1000) + mu * is_member
            exceed += empirical_epsilon(is_member, scores, delta=delta, selection=selection,
                                        seed=seed).epsilon_lower > true_eps
        assert exceed <= stats.binom.ppf(0.999, 100, 0.05)


def test_large_sample_gets_close_to_the_true_epsilon():
    is_member, scores = randomized_response(1.0, 20000, 20000, seed=0)
    result = empirical_epsilon(is_member, scores, delta=0.0)
    assert 0.85 < result.epsilon_lower <= 1.0
    assert result.threshold == 1.0


@pytest.mark.parametrize("actual", [4.0, math.inf])
def test_too_little_noise_is_caught(actual):
    """A mechanism that claims epsilon 1 but is really epsilon 4 (or has no noise at all), 233 + 233 records:
    the claim is refuted in every one of 20 seeds (power ~1, see the module doc)."""
    for seed in range(20):
        if math.isinf(actual):  # no noise: the answer is the membership bit
            is_member = np.r_[np.ones(233, np.int64), np.zeros(233, np.int64)]
            scores = is_member.astype(np.float64)
        else:
            is_member, scores = randomized_response(actual, 233, 233, seed)
        result = empirical_epsilon(is_member, scores, delta=DELTA, seed=seed)
        assert result.epsilon_lower > 1.0, (seed, result)
        assert result.epsilon_lower <= result.max_refutable + 1e-12


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(is_member=[1, 0, 2], scores=[0.1, 0.2, 0.3]), "only 0"),
    (dict(is_member=[1, 1, 1], scores=[0.1, 0.2, 0.3]), "at least one member and one non-member"),
    (dict(is_member=[1, 0], scores=[0.1, 0.2, 0.3]), "same length"),
    (dict(is_member=[1, 0], scores=[0.1, float("nan")]), "finite"),
    (dict(is_member=[1, 0, 1, 0], scores=[1, 0, 1, 0], delta=1.0), "delta"),
    (dict(is_member=[1, 0, 1, 0], scores=[1, 0, 1, 0], delta=-0.1), "delta"),
    (dict(is_member=[1, 0, 1, 0], scores=[1, 0, 1, 0], confidence=1.0), "confidence"),
    (dict(is_member=[1, 0, 1, 0], scores=[1, 0, 1, 0], selection="best"), "selection"),
    (dict(is_member=[1, 0, 1, 0], scores=[1, 0, 1, 0], selection_fraction=0), "selection_fraction"),
    (dict(is_member=[1, 0], scores=[1, 0]), "both parts"),
    (dict(is_member=[1, 0, 1, 0], scores=[1, 0, 1, 0], threshold=float("inf")), "threshold"),
])
def test_bad_input_is_refused_with_a_clear_error(kwargs, match):
    kwargs = {"delta": DELTA, **kwargs}
    with pytest.raises(ValueError, match=match):
        empirical_epsilon(**kwargs)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="members"):
        max_refutable_epsilon(0, 10, delta=DELTA)
    with pytest.raises(TypeError, match="non_members"):
        max_refutable_epsilon(10, 2.5, delta=DELTA)
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(11, 10, confidence=0.95)

"""DP noise: calibration, exact secret-shared decomposition, CSPRNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffprivlib.mechanisms import GaussianAnalytic
from scipy import stats

from pricure_crypten.privacy.noise import GaussianNoise, LaplaceNoise, NoNoise, calibrate
from pricure_crypten.mpc.randomness import SecureRandom

DRAWS = 20_000


def test_laplace_calibration_uses_l1_sensitivity_two():
    for aggregation in ("vote", "softmax"):
        m = calibrate(epsilon=0.5, mechanism="laplace", aggregation=aggregation)
        assert isinstance(m, LaplaceNoise) and m.scale == pytest.approx(2.0 / 0.5)
        assert m.dp_event().noise_multiplier == pytest.approx(0.5 ** -1)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_gaussian_calibration_is_diffprivlibs_analytic_gaussian(epsilon):
    m = calibrate(epsilon=epsilon, delta=1e-5, mechanism="gaussian")
    expected = GaussianAnalytic(epsilon=epsilon, delta=1e-5, sensitivity=math.sqrt(2))._scale
    assert isinstance(m, GaussianNoise) and m.scale == pytest.approx(expected)
    assert m.dp_event().noise_multiplier == pytest.approx(expected / math.sqrt(2))


def test_infinite_epsilon_means_no_noise():
    m = calibrate(epsilon=float("inf"))
    assert isinstance(m, NoNoise)
    assert not np.any(m.partial((3, 4), num_servers=2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=0.0), "epsilon must be > 0"),
        (dict(epsilon=-1.0), "epsilon must be > 0"),
        (dict(epsilon=float("nan")), "epsilon must be > 0"),
        (dict(epsilon=1.0, delta=1.0, mechanism="gaussian"), r"delta must be in \[0, 1\)"),
        (dict(epsilon=1.0, delta=-0.1, mechanism="gaussian"), r"delta must be in \[0, 1\)"),
        (dict(epsilon=1.0, delta=1e-5, mechanism="laplace"), "delta must be 0"),
        (dict(epsilon=1.0, delta=0.0, mechanism="gaussian"), "needs delta > 0"),
        (dict(epsilon=1.0, mechanism="exponential"), "unknown mechanism"),
        (dict(epsilon=1.0, aggregation="median"), "unknown aggregation"),
    ],
)
def test_bad_privacy_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibrate(**kwargs)


def test_epsilon_must_be_a_number():
    with pytest.raises(TypeError, match="epsilon must be a number"):
        calibrate(epsilon="1")


def _sum_of_partials(mechanism, num_servers, colluding, honest, seed):
    rngs = [SecureRandom(seed=f"{seed}/{i}") for i in range(num_servers)]
    parts = [mechanism.partial(DRAWS, num_servers=num_servers, colluding=colluding, rng=r) for r in rngs]
    return sum(parts[:honest])


def _target(mechanism, scale=None):
    scale = mechanism.scale if scale is None else scale
    if isinstance(mechanism, LaplaceNoise):
        return stats.laplace(scale=scale).cdf
    return stats.norm(scale=scale).cdf


MECHANISMS = [
    calibrate(epsilon=1.0, mechanism="laplace"),
    calibrate(epsilon=2.0, delta=1e-5, mechanism="gaussian"),
]


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.name)
@pytest.mark.parametrize("num_servers", [2, 3, 5])
def test_sum_of_server_partials_is_exactly_the_calibrated_noise(mechanism, num_servers):
    total = _sum_of_partials(mechanism, num_servers, 0, num_servers, seed=f"ks-{mechanism.name}-{num_servers}")
    assert stats.kstest(total, _target(mechanism)).pvalue > 1e-3
    # Power: the same test rejects the noise at half or double the scale.
    assert stats.kstest(total, _target(mechanism, mechanism.scale * 2)).pvalue < 1e-6
    assert stats.kstest(total, _target(mechanism, mechanism.scale / 2)).pvalue < 1e-6


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.name)
def test_any_n_minus_t_honest_partials_already_give_the_full_noise(mechanism):
    num_servers, colluding = 4, 2
    honest = _sum_of_partials(mechanism, num_servers, colluding, num_servers - colluding, seed="collude")
    assert stats.kstest(honest, _target(mechanism)).pvalue > 1e-3
    # A single server's partial alone is NOT the full noise (it is smaller).
    single = _sum_of_partials(mechanism, num_servers, 0, 1, seed="single")
    assert stats.kstest(single, _target(mechanism)).pvalue < 1e-6


def test_partial_validates_the_split():
    m = MECHANISMS[0]
    with pytest.raises(ValueError, match="num_servers must be >= 2"):
        m.partial(3, num_servers=1)
    with pytest.raises(ValueError, match="colluding must be in"):
        m.partial(3, num_servers=3, colluding=3)


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0, 3.7])
def test_csprng_gamma_and_normal_are_exact(k):
    rng = SecureRandom(seed=f"gamma-{k}")
    assert stats.kstest(rng.gamma(k, DRAWS, scale=1.5), stats.gamma(k, scale=1.5).cdf).pvalue > 1e-3
    assert stats.kstest(rng.gamma(k, DRAWS, scale=1.5), stats.gamma(k, scale=3.0).cdf).pvalue < 1e-6
    assert stats.kstest(rng.standard_normal(DRAWS), "norm").pvalue > 1e-3


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: m.name)
def test_noise_partials_come_from_the_os_csprng_by_default(mechanism, monkeypatch):
    from pricure_crypten.mpc import randomness

    calls = []
    real = randomness.os.urandom
    monkeypatch.setattr(randomness.os, "urandom", lambda n: calls.append(n) or real(n))
    np.random.seed(0)
    a = mechanism.partial(64, num_servers=2)
    np.random.seed(0)
    b = mechanism.partial(64, num_servers=2)
    assert calls and not np.array_equal(a, b)  # not numpy's (seeded) global generator

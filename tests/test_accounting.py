"""Accountants: basic/advanced (diffprivlib), RDP/PLD (dp_accounting), auto, registry."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from diffprivlib.accountant import BudgetAccountant
from dp_accounting.pld import PLDAccountant as DpPLDAccountant
from dp_accounting.rdp import RdpAccountant as DpRdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from pricure_crypten.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_SLACK,
    AdvancedAccountant,
    AutoAccountant,
    BasicAccountant,
    PLDAccountant,
    RDPAccountant,
    ReleaseCost,
    make_accountant,
)
from pricure_crypten.privacy.accounting.pld import DEFAULT_VALUE_DISCRETIZATION_INTERVAL
from pricure_crypten.privacy.noise import NoNoise, calibrate

DELTA = 1e-5
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def laplace(eps: float = 1.0):
    return calibrate(epsilon=eps, mechanism="laplace")


def gaussian(eps: float = 1.0, delta: float = 1e-5):
    return calibrate(epsilon=eps, delta=delta, mechanism="gaussian")


def direct_rdp(mechanism, count: int, delta: float) -> float:
    acc = DpRdpAccountant(neighboring_relation=ADD_REMOVE)
    return acc.compose(dp_accounting.SelfComposedDpEvent(mechanism.dp_event(), count)).get_epsilon(delta)


def direct_pld(mechanism, count: int, delta: float, vdi: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL) -> float:
    acc = DpPLDAccountant(neighboring_relation=ADD_REMOVE, value_discretization_interval=vdi)
    return acc.compose(dp_accounting.SelfComposedDpEvent(mechanism.dp_event(), count)).get_epsilon(delta)


class _Custom:
    """A mechanism dp_accounting cannot compose (only basic composition applies)."""

    name = "custom"
    epsilon = 0.5
    delta = 0.0

    def dp_event(self):
        return dp_accounting.UnsupportedDpEvent()


# --------------------------------------------------------------- RDP and PLD
@pytest.mark.parametrize("make_mech", [laplace, gaussian], ids=["laplace", "gaussian"])
@pytest.mark.parametrize("count", [10, 100])
def test_rdp_and_pld_equal_dp_accounting_and_beat_basic(make_mech, count):
    mech = make_mech()
    rdp = RDPAccountant().step(mech, count).get_epsilon(DELTA)
    pld = PLDAccountant().step(mech, count).get_epsilon(DELTA)
    assert abs(rdp - direct_rdp(mech, count, DELTA)) <= 1e-9
    assert abs(pld - direct_pld(mech, count, DELTA)) <= 1e-9
    basic_epsilon = BasicAccountant().step(mech, count).spent(DELTA)[0]
    assert basic_epsilon == count * mech.epsilon
    assert rdp < basic_epsilon and pld < basic_epsilon
    assert pld <= rdp  # PLD is the tighter of the two here


def test_pld_with_dp_accountings_default_discretisation_matches_too():
    mech = laplace()
    ours = PLDAccountant(value_discretization_interval=1e-4).step(mech, 10).get_epsilon(DELTA)
    assert abs(ours - direct_pld(mech, 10, DELTA, vdi=1e-4)) <= 1e-9
    # our coarser default stays within 1e-4 (relative) of it, and above it (pessimistic)
    coarse = PLDAccountant().step(mech, 10).get_epsilon(DELTA)
    assert ours <= coarse <= ours * (1 + 1e-4)


def test_grouping_is_exact_and_many_queries_are_one_event():
    mech = gaussian()
    pieces = RDPAccountant()
    for _ in range(10):
        pieces.step(mech, 100)
    assert pieces.events == ((ReleaseCost.of(mech), 1000),)
    assert pieces.get_epsilon(DELTA) == RDPAccountant().step(mech, 1000).get_epsilon(DELTA)
    assert abs(pieces.get_epsilon(DELTA) - direct_rdp(mech, 1000, DELTA)) <= 1e-9


def test_one_release_costs_its_calibrated_epsilon():
    """The noise multiplier is normalised by the sensitivity of PRICURE's neighbouring
    relation, so one release must cost the calibrated epsilon (not twice it)."""
    fine = PLDAccountant(value_discretization_interval=1e-4)
    assert fine.step(gaussian(), 1).get_epsilon(DELTA) == pytest.approx(1.0, abs=1e-6)
    assert PLDAccountant().step(laplace(0.7), 1).get_epsilon(DELTA) <= 0.7 * (1 + 1e-3)
    assert RDPAccountant().step(laplace(0.7), 1).get_epsilon(DELTA) == pytest.approx(0.7, rel=0.01)


def test_mixed_mechanisms_compose_in_one_accountant():
    acc = PLDAccountant().compose([(laplace(0.5), 20), (gaussian(1.0), 5)])
    direct = DpPLDAccountant(neighboring_relation=ADD_REMOVE,
                             value_discretization_interval=DEFAULT_VALUE_DISCRETIZATION_INTERVAL)
    direct.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(gaussian(1.0).dp_event(), 5),
        dp_accounting.SelfComposedDpEvent(laplace(0.5).dp_event(), 20),
    ]))
    assert abs(acc.get_epsilon(DELTA) - direct.get_epsilon(DELTA)) <= 1e-9


# --------------------------------------------------------------------- basic
@pytest.mark.parametrize("eps", [0.1, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("count", [1, 7, 10, 1000])
def test_basic_is_exactly_count_times_epsilon(eps, count):
    acc = BasicAccountant().step(laplace(eps), count)
    assert acc.spent(0.0) == (count * eps, 0.0)
    assert acc.get_epsilon(0.0) == count * eps


def test_basic_composes_deltas_like_diffprivlib():
    mech = gaussian(0.5, 1e-6)
    eps, delta = BasicAccountant().step(mech, 50).spent(1e-3)
    ref = BudgetAccountant()
    for _ in range(50):
        ref.spend(0.5, 1e-6)
    assert eps == 25.0
    assert delta == pytest.approx(ref.total()[1], rel=1e-12)
    assert delta <= 50 * 1e-6
    # asked at a delta smaller than the composed one: no guarantee at that delta
    assert BasicAccountant().step(mech, 50).get_epsilon(1e-6) == math.inf


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0.1, 0.25, 0.5, 1.0]), min_size=1, max_size=40))
def test_basic_is_the_sum_over_any_sequence_of_queries(epsilons):
    acc = BasicAccountant()
    for eps in epsilons:
        acc.step(laplace(eps))
    assert acc.spent(0.0)[0] == pytest.approx(sum(epsilons), rel=1e-12)
    assert acc.num_releases == len(epsilons)


# ------------------------------------------------------------------ advanced
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_advanced_is_below_basic_for_many_queries_and_is_diffprivlibs(eps):
    count = 1000
    acc = AdvancedAccountant().step(laplace(eps), count)
    epsilon, delta = acc.spent(DELTA)
    ref = BudgetAccountant(slack=DEFAULT_SLACK)
    for _ in range(count):
        ref.spend(eps, 0.0)
    assert (epsilon, delta) == pytest.approx(tuple(ref.total()), rel=1e-12)
    assert delta == pytest.approx(DEFAULT_SLACK)
    assert epsilon < count * eps
    assert epsilon < 0.7 * count * eps


def test_advanced_falls_back_to_basic_when_the_slack_does_not_fit():
    acc = AdvancedAccountant(slack=1e-6).step(laplace(0.1), 1000)
    assert acc.spent(0.0) == (100.0, 0.0)  # exact, like basic
    assert acc.spent(1e-5)[0] < 100.0


def test_advanced_rejects_bad_slack():
    for bad in (0.0, -1e-6, 1.0, float("nan")):
        with pytest.raises(ValueError, match="slack"):
            AdvancedAccountant(slack=bad)
    with pytest.raises(TypeError, match="slack"):
        AdvancedAccountant(slack="1e-6")


# ---------------------------------------------------------------------- auto
@pytest.mark.parametrize("make_mech", [laplace, gaussian], ids=["laplace", "gaussian"])
def test_auto_picks_pld(make_mech):
    mech = make_mech()
    auto = make_accountant().step(mech, 100)
    assert isinstance(auto, AutoAccountant)
    assert auto.spent(DELTA) == PLDAccountant().step(mech, 100).spent(DELTA)
    assert auto.selected == "pld"
    auto_epsilon = make_accountant("auto").step(mech, 100).get_epsilon(DELTA)
    assert auto_epsilon == pytest.approx(direct_pld(mech, 100, DELTA), abs=1e-9)


def test_auto_uses_basic_at_delta_zero_where_pld_is_infinite():
    mech = laplace(0.5)
    assert PLDAccountant().step(mech, 10).get_epsilon(0.0) == math.inf  # truncated PLD: no pure-DP bound
    assert RDPAccountant().step(mech, 10).get_epsilon(0.0) == math.inf
    auto = AutoAccountant().step(mech, 10)
    assert auto.spent(0.0) == (5.0, 0.0)
    assert auto.selected == "basic"


def test_auto_uses_basic_for_events_dp_accounting_cannot_compose():
    auto = AutoAccountant().compose([(_Custom(), 4), (laplace(1.0), 2)])
    assert auto.spent(DELTA) == (4 * 0.5 + 2.0, 0.0)
    assert auto.selected == "basic"
    for name in ("rdp", "pld"):
        with pytest.raises(ValueError, match="cannot account"):
            make_accountant(name).step(_Custom(), 1)
        assert not make_accountant(name).supports(_Custom())


# --------------------------------------------------------- no noise / edges
@pytest.mark.parametrize("name", list(ACCOUNTANTS))
def test_no_noise_means_infinite_epsilon(name):
    acc = make_accountant(name).compose([(laplace(), 3), (NoNoise(), 1)])
    assert acc.get_epsilon(DELTA) == math.inf
    assert make_accountant(name).step(calibrate(epsilon=math.inf)).spent(DELTA)[0] == math.inf


@pytest.mark.parametrize("name", list(ACCOUNTANTS))
def test_empty_accountant_spent_nothing(name):
    acc = make_accountant(name)
    assert acc.spent(DELTA) == (0.0, 0.0)
    assert acc.get_epsilon(0.0) == 0.0
    assert acc.step(laplace(), 0).num_releases == 0


def test_registry_names_and_errors():
    assert set(ACCOUNTANTS) == {"auto", "basic", "advanced", "rdp", "pld", "rdp-filter"}
    assert isinstance(make_accountant("rdp"), RDPAccountant)
    assert make_accountant("advanced", slack=1e-7).slack == 1e-7
    with pytest.raises(ValueError, match="auto, basic, advanced, rdp, pld, rdp-filter"):
        make_accountant("moments")
    with pytest.raises(TypeError, match="does not take"):
        make_accountant("basic", slack=1e-6)
    with pytest.raises(TypeError):
        make_accountant(3)
    with pytest.raises(ValueError, match="orders"):
        make_accountant("rdp", orders=[0.5, 2])
    with pytest.raises(ValueError, match="value_discretization_interval"):
        make_accountant("pld", value_discretization_interval=0.0)


def test_bad_compose_input_composes_nothing():
    acc = BasicAccountant()
    with pytest.raises(ValueError, match="count"):
        acc.compose([(laplace(), 2), (laplace(), -1)])
    assert acc.num_releases == 0
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="count"):
            acc.step(laplace(), bad)
    with pytest.raises(TypeError, match="pairs"):
        acc.compose((laplace(), 3))
    with pytest.raises(TypeError, match="noise mechanism"):
        acc.step("laplace", 1)
    with pytest.raises(ValueError, match="target delta"):
        acc.spent(1.0)
    with pytest.raises(ValueError, match="target delta"):
        acc.spent(float("nan"))


def test_release_cost_validates_and_round_trips():
    mech = gaussian()
    cost = ReleaseCost.of(mech)
    assert cost == ReleaseCost("gaussian", 1.0, 1e-5, "gaussian", mech.scale / mech.sensitivity)
    assert cost.dp_event() == mech.dp_event()
    assert ReleaseCost.of(NoNoise()).event == "nonprivate"
    with pytest.raises(ValueError, match="disagrees"):
        ReleaseCost("laplace", 2.0, 0.0, "laplace", 1.0)  # Laplace with b/L1 = 1 is 1-DP, not 2-DP
    with pytest.raises(ValueError, match="NonPrivate"):
        ReleaseCost("none", 1.0, 0.0, "nonprivate")
    with pytest.raises(ValueError, match="epsilon"):
        ReleaseCost("laplace", -1.0, 0.0, "laplace", 1.0)
    with pytest.raises(ValueError, match="delta"):
        ReleaseCost("gaussian", 1.0, 1.0, "gaussian", 3.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        ReleaseCost("gaussian", 1.0, 1e-5, "gaussian", float("nan"))

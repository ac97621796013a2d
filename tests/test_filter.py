"""The Rényi privacy filter and answered-only Confident-GNMax accounting.

Hand-computed references: the RDP of a Gaussian with sensitivity D and noise
sigma is ``a * D^2 / (2 sigma^2)`` (threshold step D = 1, argmax step
D = sqrt 2), and the "classic" conversion gives the filter's budget
``B(a) = eps - log(K/delta)/(a - 1)`` for K orders. The "cks" conversion is
checked against dp_accounting (an independent implementation of both the
RDP of the events and the RDP-to-DP conversion).
"""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant, compute_epsilon

from pricure_crypten.privacy.accounting import (
    AnsweredOnlyCosts,
    BudgetExceededError,
    FilterAccountant,
    LedgerError,
    PrivacyLedger,
    RenyiFilter,
    make_accountant,
)
from pricure_crypten.privacy.accounting.filter import rdp_to_epsilon
from pricure_crypten.privacy.noise import ConfidentGNMax, calibrate

EPS, DELTA = 4.0, 1e-5
# Order 8, classic conversion: B = 4 - log(1e5)/7 = 2.355300...
# threshold sigma1 = 10: 8 / (2 * 100) = 0.04; argmax sigma2 = 20: 8 * 2 / (2 * 400) = 0.02.
B8 = 4.0 - math.log(1e5) / 7.0
RHO_T, RHO_A = 0.04, 0.02
CGN = ConfidentGNMax(threshold=5.0, sigma_threshold=10.0, sigma=20.0, delta=DELTA)


def _filter(**kw) -> RenyiFilter:
    return RenyiFilter(epsilon=EPS, delta=DELTA, orders=[8], conversion="classic", **kw)


def run_filter(f: RenyiFilter, outcomes, rho_t=RHO_T, rho_a=RHO_A) -> int:
    """Run queries with the given outcomes (True = answered) until refused; returns how many ran."""
    for i, answered in enumerate(outcomes):
        if not f.admits([rho_t + rho_a]):  # worst case, before running
            return i
        f.charge([rho_t])
        if answered:
            f.charge([rho_a])
    return len(outcomes)


# ------------------------------------------------------------ hand-computed refusals
def test_budget_is_the_classic_conversion():
    assert _filter().budget == pytest.approx([B8], rel=1e-12)
    assert B8 == pytest.approx(2.35530, abs=1e-5)


def test_conservative_refuses_at_hand_computed_index():
    # every query charged 0.06: 39 * 0.06 = 2.34 <= 2.3553 < 40 * 0.06 = 2.40
    assert run_filter(_filter(), [True] * 100) == 39


def test_answered_only_all_abstain_refuses_at_hand_computed_index():
    # admitted while 0.04 k + 0.06 <= 2.3553, i.e. k <= 57: queries 0..57 run, index 58 refused
    assert run_filter(_filter(), [False] * 100) == 58


def test_answered_then_abstain_refuses_at_hand_computed_index():
    # 10 answered (0.6), then abstentions while 0.6 + 0.04 k + 0.06 <= 2.3553 (k <= 42): 10 + 43 run
    assert run_filter(_filter(), [True] * 10 + [False] * 100) == 53


def test_multi_order_filter_uses_delta_over_k_and_the_best_order():
    # orders {4, 16}, eps = 8: B(4) = 8 - log(2e5)/3 = 3.93131, B(16) = 8 - log(2e5)/15 = 7.18626.
    # sigma1 = 20, sigma2 = 40: worst case 4/800 + 4/1600 = 0.0075 at a=4 (524 fit), 0.03 at a=16 (239 fit).
    f = RenyiFilter(epsilon=8.0, delta=DELTA, orders=[4, 16], conversion="classic")
    assert f.budget == pytest.approx([8 - math.log(2e5) / 3, 8 - math.log(2e5) / 15], rel=1e-12)
    n = 0
    while f.admits([0.0075, 0.03]):
        f.charge([0.0075, 0.03])
        n += 1
    assert n == 524  # the order that admits the most decides ("there is an order")
    with pytest.raises(ValueError, match="refuses"):
        f.charge([0.0075, 0.03])
    assert f.spent == pytest.approx([524 * 0.0075, 524 * 0.03])  # the refused charge added nothing


# ----------------------------------------------------------- answered-only vs conservative
def test_answered_only_spends_less_when_some_abstain_and_equal_when_all_answer():
    outcomes = [True, False, True, True, False, False, True, False, True, True]
    cons, some, all_ = _filter(), _filter(), _filter()
    for answered in outcomes:
        cons.charge([RHO_T + RHO_A])
        some.charge([RHO_T])
        all_.charge([RHO_T])
        if answered:
            some.charge([RHO_A])
        all_.charge([RHO_A])
    assert some.epsilon_spent() < cons.epsilon_spent()
    assert some.spent[0] == pytest.approx(10 * RHO_T + 6 * RHO_A)
    assert all_.epsilon_spent() == pytest.approx(cons.epsilon_spent(), rel=1e-12)


def test_adaptive_sequences_never_exceed_the_fixed_order_budget():
    """Outcomes and mechanisms chosen adversarially from the history (abstain when it would let
    more queries in, and random sigmas); the RDP at the fixed order, recomputed here by hand,
    never exceeds B(8), and the filter stops only when the next worst case no longer fits."""
    rng = np.random.default_rng(7)
    for trial in range(30):
        f = _filter()
        total = 0.0
        for _ in range(400):
            s1, s2 = rng.uniform(5, 30), rng.uniform(5, 30)
            r1, r2 = 8 / (2 * s1**2), 8 * 2 / (2 * s2**2)
            if not f.admits([r1 + r2]):
                assert total + r1 + r2 > B8  # refused only when the worst case does not fit
                break
            total += r1
            f.charge([r1])
            if (trial + int(total * 100)) % 3 or rng.random() < 0.5:  # history-dependent outcome
                total += r2
                f.charge([r2])
            assert total <= B8 * (1 + 1e-12)
            assert f.spent[0] == pytest.approx(total, rel=1e-12)
        else:
            pytest.fail("the filter never refused")


# -------------------------------------------------------------------- conversion
@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_cks_conversion_matches_dp_accounting(delta):
    orders = [1.5, 2, 3, 5, 8, 16, 32, 64]
    for z, count in ((1.0, 1), (3.0, 50), (20.0, 700)):
        acc = RdpAccountant(orders=orders)
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), count))
        expected = acc.get_epsilon(delta)
        rdp = np.array([count * a / (2 * z**2) for a in orders])
        assert rdp_to_epsilon(orders, rdp, delta) == pytest.approx(expected, rel=1e-9)
        assert compute_epsilon(orders, rdp, delta)[0] == pytest.approx(expected, rel=1e-12)


def test_filter_accountant_is_dp_accounting_at_delta_over_k():
    """Spent epsilon of the ledger accountant = dp_accounting's RDP accountant (its own event RDP,
    Gaussian and Laplace) converted at delta / K (the union bound over the K orders)."""
    orders = (2.0, 4.0, 8.0, 16.0, 32.0)
    gauss, lap = calibrate(epsilon=1.0, delta=1e-5, mechanism="gaussian"), calibrate(epsilon=0.5)
    ours = FilterAccountant(orders=orders).compose([(gauss, 30), (lap, 7)])
    ref = RdpAccountant(orders=list(orders), neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    ref.compose(dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(gauss.dp_event(), 30),
                                               dp_accounting.SelfComposedDpEvent(lap.dp_event(), 7)]))
    assert ours.spent(1e-6) == (pytest.approx(ref.get_epsilon(1e-6 / len(orders)), rel=1e-9), 1e-6)
    assert make_accountant("rdp-filter", orders=orders).spent(1e-6) == (0.0, 0.0)


# -------------------------------------------------------------------------- ledger
@pytest.fixture
def ledger(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=EPS, total_delta=DELTA, accountant="rdp-filter",
                       accountant_options={"orders": [8], "conversion": "classic"}) as led:
        yield led


def _count_until_refused(ledger, client, outcome) -> int:
    for i in range(200):
        try:
            with ledger.spend_answered_only(client, CGN) as spend:
                spend.confirm(answered=int(outcome(i)))
        except BudgetExceededError:
            return i
    pytest.fail("never refused")


def test_ledger_filter_refuses_at_the_hand_computed_index(ledger):
    for i in range(39):
        with ledger.spend("conservative", CGN) as spend:
            spend.confirm()
    with pytest.raises(BudgetExceededError):
        with ledger.spend("conservative", CGN) as spend:
            spend.confirm()
    assert _count_until_refused(ledger, "abstains", lambda i: False) == 58
    assert _count_until_refused(ledger, "first-ten", lambda i: i < 10) == 53
    assert _count_until_refused(ledger, "answers", lambda i: True) == 39
    st = ledger.status("abstains")
    assert (st.answered_queries, st.reserved_queries, st.refused_queries) == (58, 0, 1)


def test_ledger_answered_only_spends_less_and_equal_when_all_answer(ledger):
    for client, answered in (("cons", None), ("some", 3), ("all", 5)):
        if answered is None:
            with ledger.spend(client, CGN, queries=5) as spend:
                spend.confirm()
        else:
            with ledger.spend_answered_only(client, CGN, queries=5) as spend:
                spend.confirm(answered=answered)
    cons, some, all_ = (ledger.status(c).spent_epsilon for c in ("cons", "some", "all"))
    # classic, order 8: spent = rdp + log(1e5)/7 with rdp 5 * 0.06 and 5 * 0.04 + 3 * 0.02
    assert cons == pytest.approx(0.30 + math.log(1e5) / 7, rel=1e-9)
    assert some == pytest.approx(0.26 + math.log(1e5) / 7, rel=1e-9)
    assert all_ == pytest.approx(cons, rel=1e-12)


def test_crash_between_reserve_and_confirm_keeps_the_worst_case(ledger, tmp_path):
    costs = AnsweredOnlyCosts.of(CGN)
    ledger.reserve("crashed", costs.answered, 5)  # a process killed here never confirms
    with PrivacyLedger(ledger.path, total_epsilon=EPS, total_delta=DELTA, accountant="rdp-filter",
                       accountant_options={"orders": [8], "conversion": "classic"}) as reopened:
        st = reopened.status("crashed")
    assert st.reserved_queries == 5
    assert st.spent_epsilon == pytest.approx(5 * 0.06 + math.log(1e5) / 7, rel=1e-9)


def test_process_killed_inside_an_answered_only_spend_keeps_the_worst_case(ledger):
    """A real process dies (os._exit) after the reservation and before confirm(answered=0)."""
    code = textwrap.dedent(f"""
        import os
        from pricure_crypten.privacy.accounting import PrivacyLedger
        from pricure_crypten.privacy.noise import ConfidentGNMax
        m = ConfidentGNMax(threshold=5.0, sigma_threshold=10.0, sigma=20.0, delta={DELTA!r})
        led = PrivacyLedger({str(ledger.path)!r}, total_epsilon={EPS!r}, total_delta={DELTA!r},
                            accountant="rdp-filter", accountant_options={{"orders": [8], "conversion": "classic"}})
        with led.spend_answered_only("killed", m, queries=5) as spend:
            os._exit(0)  # every query would have abstained; nothing was confirmed
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    st = ledger.status("killed")
    assert (st.reserved_queries, st.answered_queries) == (5, 0)
    assert st.spent_epsilon == pytest.approx(5 * 0.06 + math.log(1e5) / 7, rel=1e-9)  # not 5 * 0.04


def test_abstained_charge_is_threshold_only_and_rows_are_split(ledger):
    with ledger.spend_answered_only("c", CGN, queries=4) as spend:
        spend.confirm(answered=1)
    conn = sqlite3.connect(ledger.path)
    got = sorted(conn.execute("SELECT status, queries, mechanism, noise_multiplier FROM spends").fetchall())
    conn.close()
    z = (10.0**-2 + (20.0 / math.sqrt(2)) ** -2) ** -0.5
    assert [g[:3] for g in got] == [("answered", 1, "confident-gnmax"), ("answered", 3, "confident-gnmax:abstained")]
    assert got[0][3] == pytest.approx(z) and got[1][3] == pytest.approx(10.0)


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, exc, match", [
    ({"orders": []}, ValueError, "empty"),
    ({"orders": [1.0, 2]}, ValueError, "> 1"),
    ({"orders": [float("nan")]}, ValueError, "> 1"),
    ({"orders": [2, 2]}, ValueError, "distinct"),
    ({"orders": "8"}, TypeError, "sequence"),
    ({"delta": 0.0}, ValueError, "delta > 0"),
    ({"epsilon": math.inf}, ValueError, "finite epsilon"),
    ({"epsilon": -1.0}, ValueError, "> 0"),
    ({"conversion": "mironov"}, ValueError, "conversion"),
    ({"epsilon": 0.1, "orders": [1.5]}, ValueError, "positive RDP budget"),
])
def test_filter_refuses_bad_configuration(kwargs, exc, match):
    args = {"epsilon": EPS, "delta": DELTA, "orders": [8]} | kwargs
    with pytest.raises(exc, match=match):
        RenyiFilter(**args)


def test_filter_refuses_bad_curves():
    f = _filter()
    for bad in ([0.1, 0.1], [-0.1], [math.nan], [math.inf]):
        with pytest.raises(ValueError, match="curve"):
            f.admits(bad)
    assert f.spent[0] == 0.0


def test_ledger_refuses_answered_only_misuse(ledger, tmp_path):
    with pytest.raises(TypeError, match="Confident-GNMax"):
        ledger.spend_answered_only("c", calibrate(epsilon=1.0))
    with pytest.raises(ValueError, match="answered must be <= 1"):
        with ledger.spend_answered_only("c", CGN) as spend:
            spend.confirm(answered=2)
    assert ledger.status("c").reserved_queries == 0  # rolled back: nothing was released
    other = AnsweredOnlyCosts.from_sigmas(sigma_threshold=11.0, sigma=20.0, delta=DELTA)
    row = ledger.reserve("c", AnsweredOnlyCosts.of(CGN).answered, 1)
    with pytest.raises(LedgerError, match="must NOT be released"):
        ledger.confirm_outcome(row, costs=other, answered=0)
    ledger.confirm_outcome(row, costs=AnsweredOnlyCosts.of(CGN), answered=0)
    with pytest.raises(LedgerError, match="must NOT be released"):  # already settled
        ledger.confirm_outcome(row, costs=AnsweredOnlyCosts.of(CGN), answered=0)
    # a non-filter ledger neither takes answered-only spends nor composes them afterwards
    with PrivacyLedger(ledger.path, total_epsilon=EPS, total_delta=DELTA, accountant="rdp") as rdp:
        with pytest.raises(ValueError, match="rdp-filter"):
            rdp.spend_answered_only("c", CGN)
        with pytest.raises(LedgerError, match="only a privacy filter"):
            rdp.status("c")
    with pytest.raises(ValueError, match="total_delta"):
        PrivacyLedger(tmp_path / "x.sqlite3", total_epsilon=1.0, total_delta=0.0, accountant="rdp-filter")

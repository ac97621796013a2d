"""How many rows fit a budget (``serving.budget``), and the front door's budget question and accounting flag.

Unit tests (no process, no MPC). Independent references: the rows that fit under basic composition computed
by hand (``floor(total / epsilon)``), and a linear scan of the ledger's own dry run for the Renyi filter.
The front door (``parties.net.app``) is exercised in-process (Starlette's test client) over a stub node
holding a real ledger.
"""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest

from pricure_crypten import ConfidentGNMax, calibrate
from pricure_crypten.parties.net.wire import encode_array
from pricure_crypten.parties.serving.budget import answered_only_costs, rows_that_fit, worst_case
from pricure_crypten.privacy.accounting import PrivacyLedger

GNMAX = dict(threshold=4.0, sigma_threshold=0.1, sigma=0.5, delta=1e-5)


def _charge(ledger: PrivacyLedger, client: str, mechanism, queries: int) -> None:
    with ledger.spend(client, mechanism, queries=queries) as spend:
        spend.confirm()


def test_rows_that_fit_stops_at_the_row_basic_composition_allows(tmp_path):
    """Laplace at epsilon 0.5 per row, basic composition, total 3.2, one row spent: floor(3.2 / 0.5) - 1 = 5."""
    laplace = calibrate(epsilon=0.5)
    with PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=3.2, accountant="basic") as ledger:
        _charge(ledger, "alice", laplace, 1)
        fit = math.floor(3.2 / 0.5 + 1e-9) - 1
        for limit in range(0, 12):
            assert rows_that_fit(ledger, "alice", laplace, limit) == min(limit, fit), limit
        assert rows_that_fit(ledger, "bob", laplace, 12) == 6  # another client: its own budget
        # a cap on the total spent epsilon (1.6: the spent 0.5 plus 2 rows) only lowers the answer
        assert rows_that_fit(ledger, "alice", laplace, 10, budget=1.6) == 2
        assert rows_that_fit(ledger, "alice", laplace, 10, budget=0.6) == 0
        status = ledger.status("alice")
        assert (status.answered_queries, status.reserved_queries, status.refused_queries) == (1, 0, 0)  # no write


def test_rows_that_fit_without_a_ledger_is_the_limit_and_never_asks():
    assert rows_that_fit(None, "alice", calibrate(epsilon=1.0), 7) == 7


@pytest.mark.parametrize("k", [1, 3, 6])
def test_rows_that_fit_the_filter_equals_a_linear_scan_of_the_ledgers_dry_run(tmp_path, k):
    """Answered-only's worst case under the Renyi filter, a budget just above k worst-case rows: exactly k fit."""
    mechanism = ConfidentGNMax(**GNMAX)
    worst = answered_only_costs(PrivacyLedger(tmp_path / "p.sqlite3", total_epsilon=1e4, total_delta=1e-3,
                                              accountant="rdp-filter"), "x", mechanism).answered
    probe = PrivacyLedger(tmp_path / "probe.sqlite3", total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    total = probe.check("x", worst, queries=k)[0] * (1 + 1e-9)
    with PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=total, total_delta=1e-3,
                       accountant="rdp-filter") as ledger:
        scan = 0
        while scan < 20:
            try:
                ledger.check("carol", worst, queries=scan + 1)
            except Exception:  # noqa: BLE001 - BudgetExceededError: the scan ends
                break
            scan += 1
        assert scan == k
        assert rows_that_fit(ledger, "carol", worst, 20) == k
        assert rows_that_fit(ledger, "carol", worst, k - 1) == k - 1


def test_worst_case_refuses_what_the_ledger_or_mechanism_cannot_charge(tmp_path):
    gnmax, laplace = ConfidentGNMax(**GNMAX), calibrate(epsilon=1.0)
    basic = PrivacyLedger(tmp_path / "b.sqlite3", total_epsilon=10.0, accountant="basic")
    flt = PrivacyLedger(tmp_path / "f.sqlite3", total_epsilon=10.0, total_delta=1e-3, accountant="rdp-filter")
    assert worst_case(basic, "a", laplace, "conservative") == (laplace, None)
    with pytest.raises(ValueError, match="rdp-filter"):
        worst_case(basic, "a", gnmax, "answered-only")
    with pytest.raises(TypeError, match="Confident-GNMax"):
        worst_case(flt, "a", laplace, "answered-only")
    with pytest.raises(ValueError, match="ledger"):
        worst_case(None, "a", gnmax, "answered-only")
    with pytest.raises(ValueError, match="accounting must be one of"):
        worst_case(flt, "a", gnmax, "optimistic")
    worst, costs = worst_case(flt, "a", gnmax, "answered-only")
    assert worst == costs.answered and costs.abstained.epsilon < costs.answered.epsilon
    assert flt.status("a").reserved_queries == 0  # nothing reserved by the check


# -- the front door, in-process over a stub node --

TOKENS = {"t-alice": ("client", "alice"), "t-bob": ("client", "bob"), "t-owner": ("owner", "o1")}


def _door(tmp_path, *, mechanism, accountant="basic", total=3.2, delta=0.0, submit=None):
    from pricure_crypten.parties.net.app import build_app

    tmp_path.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3", total_epsilon=total, total_delta=delta, accountant=accountant)
    node = types.SimpleNamespace(
        seat=types.SimpleNamespace(rank=1), front_door=types.SimpleNamespace(body_timeout=10.0), ledger=ledger,
        mechanism=mechanism,
        credentials=types.SimpleNamespace(lookup=lambda token: TOKENS.get(token)),
        submit=submit or (lambda *args, **kwargs: None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx (the client it uses)
        from starlette.testclient import TestClient

        client = TestClient(build_app(node))
    return client, node


def _as(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_budget_endpoint_shows_the_calling_clients_own_figures_only(tmp_path):
    laplace = calibrate(epsilon=0.5)
    door, node = _door(tmp_path, mechanism=laplace)
    _charge(node.ledger, "bob", laplace, 4)  # bob's spend: never visible to alice
    _charge(node.ledger, "alice", laplace, 1)
    alice = door.get("/v1/budget", params={"rows": "10"}, headers=_as("t-alice")).json()
    assert alice["client"] == "alice" and alice["rank"] == 1 and alice["accountant"] == "basic"
    assert alice["spent_epsilon"] == pytest.approx(0.5) and alice["total_epsilon"] == pytest.approx(3.2)
    assert alice["answered_queries"] == 1 and alice["rows_that_fit"] == 5  # floor(3.2 / 0.5) - 1
    bob = door.get("/v1/budget", params={"rows": "10"}, headers=_as("t-bob")).json()
    assert bob["client"] == "bob" and bob["spent_epsilon"] == pytest.approx(2.0) and bob["rows_that_fit"] == 2
    assert "alice" not in str(bob) and "bob" not in str(alice)
    capped = door.get("/v1/budget", params={"rows": "10", "budget": "1.6"}, headers=_as("t-alice")).json()
    assert capped["rows_that_fit"] == 2
    assert door.get("/v1/budget", params={"rows": "1"}).status_code == 401
    assert door.get("/v1/budget", params={"rows": "1"}, headers=_as("t-owner")).status_code == 403
    for params in ({"rows": "-1"}, {"rows": "x"}, {"rows": "1", "accounting": "optimistic"},
                   {"rows": "1", "budget": "0"}):
        answer = door.get("/v1/budget", params=params, headers=_as("t-alice"))
        assert answer.status_code == 422 and answer.json()["detail"], params
    refused = door.get("/v1/budget", params={"rows": "1", "accounting": "answered-only"}, headers=_as("t-alice"))
    assert refused.status_code == 422 and "Confident-GNMax" in refused.json()["detail"]
    status = node.ledger.status("alice")
    assert (status.answered_queries, status.reserved_queries, status.refused_queries) == (1, 0, 0)  # no write


def test_budget_endpoint_answered_only_needs_a_filter_and_reports_infinity_as_text(tmp_path):
    door, _ = _door(tmp_path, mechanism=ConfidentGNMax(**GNMAX), total=math.inf, delta=1e-3)
    answer = door.get("/v1/budget", params={"rows": "3", "accounting": "answered-only"}, headers=_as("t-alice"))
    assert answer.status_code == 422 and "rdp-filter" in answer.json()["detail"]  # accountant "basic"
    answer = door.get("/v1/budget", params={"rows": "3"}, headers=_as("t-alice"))
    assert answer.status_code == 200 and answer.json()["total_epsilon"] == "inf" and answer.json()["rows_that_fit"] == 3


def test_post_query_passes_the_accounting_flag_and_refuses_what_this_server_cannot_charge(tmp_path):
    calls = []

    def submit(client, request_id, share, **kwargs):
        calls.append((client, request_id, share.shape, kwargs))

    share = encode_array(np.zeros((2, 3), dtype=np.int64))
    rid = "ab" * 16
    gnmax = ConfidentGNMax(**GNMAX)
    basic, _ = _door(tmp_path / "basic", mechanism=gnmax, total=10.0, delta=1e-3, submit=submit)
    assert basic.post("/v1/queries", json={"request_id": rid, "share": share}, headers=_as("t-alice")).status_code == 202
    assert basic.post("/v1/queries", json={"request_id": rid, "share": share, "accounting": "conservative"},
                      headers=_as("t-alice")).status_code == 202
    assert calls == [("alice", rid, (2, 3), {}), ("alice", rid, (2, 3), {})]
    refused = basic.post("/v1/queries", json={"request_id": rid, "share": share, "accounting": "answered-only"},
                         headers=_as("t-alice"))
    assert refused.status_code == 422 and "not available on server 1" in refused.json()["detail"]
    assert "rdp-filter" in refused.json()["detail"] and len(calls) == 2  # never reached the node
    for body in ({"request_id": rid, "share": share, "accounting": "optimistic"},
                 {"request_id": rid, "share": share, "accounting": True},
                 {"request_id": rid, "share": share, "extra": 1}):
        answer = basic.post("/v1/queries", json=body, headers=_as("t-alice"))
        assert answer.status_code == 400 and answer.json()["detail"], body
    assert len(calls) == 2
    flt, node = _door(tmp_path / "filter", mechanism=gnmax, accountant="rdp-filter", total=10.0, delta=1e-3,
                      submit=submit)
    assert flt.post("/v1/queries", json={"request_id": rid, "share": share, "accounting": "answered-only"},
                    headers=_as("t-bob")).status_code == 202
    assert calls[-1] == ("bob", rid, (2, 3), {"outcome": True})
    assert node.ledger.status("bob").reserved_queries == 0  # the check reserved nothing


# -- the chunk loop both modes share (fake chunks: no MPC) --


class _Refused(Exception):
    pass


class _Failed(Exception):
    pass


def _loop(total, chunk, budget_rows, script=()):
    """label_in_chunks over a budget of ``budget_rows`` rows, spent by every chunk that runs; chunk i's ``run``
    raises ``script[i]`` (None: it runs, spends its rows and returns labels ``row % 3``)."""
    from pricure_crypten.parties.serving.labelling import label_in_chunks

    runs, asked, spent = [], [], [0]

    def rows_that_fit(limit):
        asked.append(limit)
        return max(0, min(limit, budget_rows - spent[0]))

    def run(start, stop):
        action = script[len(runs)] if len(runs) < len(script) else None
        runs.append((start, stop))
        if action is not None:
            raise action
        spent[0] += stop - start
        return np.arange(start, stop) % 3, ("cost", start, stop)  # the loop only collects the costs

    result = label_in_chunks(total, chunk, first=rows_that_fit(min(chunk, total)), rows_that_fit=rows_that_fit,
                             run=run, over_budget=(_Refused,), failure=(_Failed,))
    return result, runs, asked


def test_chunk_loop_sends_the_fitting_prefix_and_stops_cleanly_at_the_budget():
    from pricure_crypten.parties.serving.labelling import NOT_SENT

    (labels, sent, stopped, costs), runs, asked = _loop(10, 4, budget_rows=100)
    assert runs == [(0, 4), (4, 8), (8, 10)] and (sent, stopped) == (10, "complete") and asked == [4, 4, 2]
    (labels, sent, stopped, costs), runs, asked = _loop(10, 4, budget_rows=6)
    assert runs == [(0, 4), (4, 6)] and (sent, stopped) == (6, "budget") and asked == [4, 4, 4]
    assert costs == [("cost", 0, 4), ("cost", 4, 6)]
    np.testing.assert_array_equal(labels[:6], np.arange(6) % 3)
    assert np.all(labels[6:] == NOT_SENT)


def test_chunk_loop_resizes_after_a_refusal_and_gives_up_after_three_retries():
    (labels, sent, stopped, _), runs, asked = _loop(6, 4, budget_rows=100, script=[_Refused(), None])
    assert runs == [(0, 4), (0, 4), (4, 6)] and (sent, stopped) == (6, "complete") and asked == [4, 4, 2]
    (labels, sent, stopped, _), runs, _ = _loop(6, 4, budget_rows=100, script=[_Refused()] * 4)
    assert len(runs) == 4 and (sent, stopped) == (0, "budget") and np.all(labels == -2)


def test_chunk_loop_raises_a_first_chunk_failure_and_reports_a_later_one():
    with pytest.raises(_Failed):
        _loop(6, 4, budget_rows=100, script=[_Failed("boom")])
    (labels, sent, stopped, costs), runs, _ = _loop(10, 4, budget_rows=100, script=[None, _Failed("boom")])
    assert (sent, stopped) == (4, "error: boom") and len(costs) == 1 and runs == [(0, 4), (4, 8)]
    np.testing.assert_array_equal(labels[:4], np.arange(4) % 3)
    assert np.all(labels[4:] == -2)

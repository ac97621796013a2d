"""Private labelling of a client's pool (``PrivateEnsemble.label``, ``pricure label``): labels, budget, abstentions.

Independent references: the plaintext vote (each owner's torch forward, numpy argmax, ties to the lowest
index), the row at which the budget stops computed from the per-query epsilon by hand (basic composition:
``floor(total / epsilon)``), and the rows the servers received counted by a spy on the MPC batch call.
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from pricure_crypten import (ABSTAIN, NOT_SENT, Aggregation, Batching, Client, ConfidentGNMax, NoNoise,
                             PrivateEnsemble, calibrate)
from pricure_crypten.config import Batching as BatchingConfig
from pricure_crypten.parties.batching import RequestScheduler
from pricure_crypten.parties.serving.messages import BatchReply
from pricure_crypten.privacy.accounting import PrivacyLedger
from pricure_crypten.privacy.accounting.errors import BudgetExceededError
from tests.helpers import AGREE, CLASSES, FEATURES, cli_exit_code
from tests.helpers import CERTAIN_GNMAX as GNMAX
from tests.helpers import agreement_owners as _agreement_owners
from tests.helpers import agreement_pool as _gnmax_pool
from tests.helpers import label_owners as _random_owners
from tests.helpers import label_pool as _pool
from tests.helpers import plain_votes as _plain_votes

class _Spy:
    """Counts the rows of every MPC batch the servers receive (wraps the ensemble's batch call)."""

    def __init__(self, ensemble: PrivateEnsemble) -> None:
        self.rows: list[int] = []
        self.outcome_rows: list[int] = []
        original = ensemble._run_batch

        def run(shares, **kwargs):
            self.rows.append(int(shares[0].shape[0]))
            self.outcome_rows.append(int(kwargs.get("outcome_rows", 0)))
            return original(shares, **kwargs)

        ensemble._scheduler.core._run = run


@pytest.mark.mpc
def test_labels_equal_the_plaintext_vote_in_the_fewest_batches():
    owners = _random_owners(3)
    pool = _pool(10)
    with PrivateEnsemble(owners, aggregation=Aggregation(noise=NoNoise()),
                         batching=Batching(max_rows=4, window=0.0)) as ensemble:
        spy = _Spy(ensemble)
        result = ensemble.label(pool, client=Client("alice"))
    np.testing.assert_array_equal(result.labels, _plain_votes(owners, pool))
    assert result.sent == 10 and result.refused == 0 and result.stopped == "complete"
    assert result.answered.all() and result.abstained == 0
    assert result.batches == 3 and spy.rows == [4, 4, 2]  # ceil(10 / 4) batches
    assert result.cost.reveals == 3 and result.cost.server_decodes == 0 and result.cost.outcome_reveals == 0
    assert spy.outcome_rows == [0, 0, 0]
    assert result.spent_before is None and result.spent_after is None  # no ledger: nothing charged


@pytest.mark.mpc
def test_budget_stops_at_exactly_the_right_row_and_refused_rows_are_never_sent_or_charged(tmp_path):
    """Laplace at epsilon 0.5 per query, basic composition, total 3.2: floor(3.2 / 0.5) = 6 queries fit in
    all; one is spent beforehand, so 5 of the pool's 10 rows fit: a full chunk of 4, then 1 of the next."""
    per_query, total = 0.5, 3.2
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=total, accountant="basic")
    mechanism = calibrate(epsilon=per_query)
    with ledger.spend("alice", mechanism, queries=1) as spend:
        spend.confirm()
    fit = math.floor(total / per_query + 1e-9) - 1
    assert fit == 5
    owners = _random_owners(3)
    pool = _pool(10)
    with PrivateEnsemble(owners, aggregation=Aggregation(noise=mechanism), ledger=ledger,
                         batching=Batching(max_rows=4, window=0.0)) as ensemble:
        spy = _Spy(ensemble)
        before = ledger.status("alice")
        result = ensemble.label(pool, client=Client("alice"))
        after = ledger.status("alice")
        assert spy.rows == [4, 1]  # the refused rows never reached the servers
        assert result.sent == fit and result.refused == 10 - fit and result.stopped == "budget"
        assert np.all(result.labels[fit:] == NOT_SENT) and np.all(result.labels[:fit] >= 0)
        assert result.cost.queries == fit and result.cost.reveals == 2 and result.batches == 2
        assert after.answered_queries - before.answered_queries == fit
        assert after.reserved_queries == 0 and after.refused_queries == before.refused_queries == 0
        assert after.spent_epsilon == pytest.approx((fit + 1) * per_query)
        assert result.spent_before == pytest.approx((per_query, 0.0))
        assert result.spent_after == pytest.approx((after.spent_epsilon, after.spent_delta))
        # Nothing left for one more row: refused before any MPC work, nothing charged or counted.
        with pytest.raises(BudgetExceededError, match="budget exceeded"):
            ensemble.label(pool, client=Client("alice"))
        assert spy.rows == [4, 1]
        final = ledger.status("alice")
        assert (final.spent_epsilon, final.answered_queries, final.refused_queries) == (
            after.spent_epsilon, after.answered_queries, after.refused_queries)


@pytest.mark.mpc
def test_budget_cap_stops_earlier_than_the_ledger(tmp_path):
    """budget=1.6 at 0.5 per query (basic): floor(1.6 / 0.5) = 3 rows, though the ledger allows 20."""
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=10.0, accountant="basic")
    with PrivateEnsemble(_random_owners(2), aggregation=Aggregation(noise=calibrate(epsilon=0.5)), ledger=ledger,
                         batching=Batching(max_rows=8, window=0.0)) as ensemble:
        spy = _Spy(ensemble)
        result = ensemble.label(_pool(6), client=Client("bob"), budget=1.6)
    assert result.sent == 3 and result.refused == 3 and spy.rows == [3]
    assert ledger.status("bob").spent_epsilon == pytest.approx(1.5)


@pytest.mark.mpc
def test_a_failure_after_some_chunks_returns_what_was_released_and_charges_only_that(tmp_path):
    """The second MPC batch fails: the first chunk's labels (released, charged) are returned; the failed
    chunk is neither revealed nor charged (its reservation rolled back); nothing after it is sent."""
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=1000.0, accountant="basic")
    owners = _random_owners(3)
    pool = _pool(7)
    with PrivateEnsemble(owners, aggregation=Aggregation(noise=calibrate(epsilon=100.0)), ledger=ledger,
                         batching=Batching(max_rows=3, window=0.0)) as ensemble:
        calls = _fail_second_batch(ensemble)
        client = Client("gil")
        result = ensemble.label(pool, client=client)
    assert calls == [3, 3] and result.stopped.startswith("error") and "injected" in result.stopped
    assert result.sent == 3 and result.refused == 0 and client.reveals == 1
    assert np.all(result.labels[:3] >= 0) and np.all(result.labels[3:] == NOT_SENT)
    status = ledger.status("gil")
    assert status.answered_queries == 3 and status.reserved_queries == 0
    assert status.spent_epsilon == pytest.approx(3 * 100.0)


def _fail_second_batch(ensemble: PrivateEnsemble) -> list[int]:
    from pricure_crypten.parties.cluster import ServerError

    calls: list[int] = []
    original = ensemble._run_batch

    def failing(shares, **kwargs):
        calls.append(int(shares[0].shape[0]))
        if len(calls) == 2:
            raise ServerError("injected failure")
        return original(shares, **kwargs)

    ensemble._scheduler.core._run = failing
    return calls


@pytest.mark.mpc
def test_answered_only_failure_keeps_the_worst_case_of_the_failed_chunk(tmp_path):
    """Answered-only: a chunk whose MPC batch started and failed may have opened outcome bits to the servers,
    so it stays charged at its worst case (both steps, every row); the released chunk at its outcome."""
    mechanism = ConfidentGNMax(**GNMAX)
    budget = dict(total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", **budget)
    with PrivateEnsemble(_agreement_owners(), aggregation=Aggregation(noise=mechanism), ledger=ledger,
                         batching=Batching(max_rows=4, window=0.0)) as ensemble:
        calls = _fail_second_batch(ensemble)
        result = ensemble.label(_gnmax_pool(), client=Client("hal"), accounting="answered-only")
    assert calls == [4, 3] and result.stopped.startswith("error") and result.sent == 4
    np.testing.assert_array_equal(result.labels, np.where(AGREE, 0, ABSTAIN)[:4].tolist() + [NOT_SENT] * 3)
    reference = PrivacyLedger(tmp_path / "ref.sqlite3", **budget)
    for answered, rows in ((int(AGREE[:4].sum()), 4), (3, 3)):  # the failed chunk: all 3 as if answered
        with reference.spend_answered_only("hal", mechanism, queries=rows) as spend:
            spend.confirm(answered=answered)
    status = ledger.status("hal")
    assert status.reserved_queries == 0
    assert status.spent_epsilon == pytest.approx(reference.status("hal").spent_epsilon)


@pytest.mark.mpc
def test_confident_gnmax_abstentions_and_answered_only_accounting(tmp_path):
    mechanism = ConfidentGNMax(**GNMAX)
    budget = dict(total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", **budget)
    with PrivateEnsemble(_agreement_owners(), aggregation=Aggregation(noise=mechanism), ledger=ledger,
                         batching=Batching(max_rows=4, window=0.0)) as ensemble:
        spy = _Spy(ensemble)
        only = ensemble.label(_gnmax_pool(), client=Client("carol"), accounting="answered-only")
        conservative = ensemble.label(_gnmax_pool(), client=Client("dave"))
        prediction = ensemble.predict(_gnmax_pool()[:2], client=Client("erin"))
    expected = np.where(AGREE, 0, ABSTAIN)
    for result in (only, conservative):
        np.testing.assert_array_equal(result.labels, expected)
        np.testing.assert_array_equal(result.answered, AGREE)
        assert result.abstained == int((~AGREE).sum()) and result.sent == 7 and result.batches == 2
        assert result.cost.server_decodes == 0
    # The outcome reveal: one per answered-only batch, for exactly that batch's rows; none otherwise.
    assert only.cost.outcome_reveals == 2 and conservative.cost.outcome_reveals == 0
    assert spy.outcome_rows == [4, 3, 0, 0, 0] and spy.rows[:2] == [4, 3]
    assert prediction.cost.reveals == 1 and prediction.cost.server_decodes == 0
    assert prediction.cost.outcome_reveals == 0
    # Charges: answered-only = both steps for the answered rows, the threshold step for the others (per chunk,
    # as a reference ledger charged by hand with the design's counts); conservative = both steps for all 7.
    reference = PrivacyLedger(tmp_path / "ref.sqlite3", **budget)
    for answered, rows in ((int(AGREE[:4].sum()), 4), (int(AGREE[4:].sum()), 3)):
        with reference.spend_answered_only("carol", mechanism, queries=rows) as spend:
            spend.confirm(answered=answered)
    with reference.spend("dave", mechanism, queries=7) as spend:
        spend.confirm()
    assert ledger.status("carol").spent_epsilon == pytest.approx(reference.status("carol").spent_epsilon)
    assert ledger.status("dave").spent_epsilon == pytest.approx(reference.status("dave").spent_epsilon)
    assert ledger.status("carol").spent_epsilon < ledger.status("dave").spent_epsilon
    assert only.spent_after[0] == pytest.approx(ledger.status("carol").spent_epsilon)


@pytest.mark.mpc
def test_answered_only_budget_stops_at_the_worst_case_row(tmp_path):
    """The ledger is asked for the WORST case (both steps) of every row: with a budget that fits exactly
    n worst-case rows, at most n rows are sent (the first chunk), whatever the outcomes turn out to be."""
    mechanism = ConfidentGNMax(**GNMAX)
    probe = PrivacyLedger(tmp_path / "probe.sqlite3", total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    worst3 = probe.check("x", mechanism, queries=3)[0]
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=worst3 * (1 + 1e-9), total_delta=1e-3,
                           accountant="rdp-filter")
    with PrivateEnsemble(_agreement_owners(), aggregation=Aggregation(noise=mechanism), ledger=ledger,
                         batching=Batching(max_rows=8, window=0.0)) as ensemble:
        spy = _Spy(ensemble)
        result = ensemble.label(_gnmax_pool(), client=Client("fay"), accounting="answered-only")
    assert spy.rows[0] == 3 and result.labels[2] != NOT_SENT
    assert result.stopped == "budget" and result.refused == 7 - result.sent
    assert np.all(result.labels[result.sent:] == NOT_SENT)


def test_bad_input_is_refused_before_any_mpc_work(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=1.0, accountant="basic")
    laplace = PrivateEnsemble(_random_owners(2), aggregation=Aggregation(noise=calibrate(epsilon=0.5)), ledger=ledger)
    free = PrivateEnsemble(_random_owners(2), aggregation=Aggregation(noise=NoNoise()))
    gnmax = PrivateEnsemble(_agreement_owners(), aggregation=Aggregation(noise=ConfidentGNMax(**GNMAX)), ledger=ledger)
    alice = Client("alice")
    try:
        with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
            laplace.label(np.zeros((3, 5)), client=alice)
        with pytest.raises(ValueError, match="pool is empty"):
            laplace.label(np.zeros((0, FEATURES)), client=alice)
        with pytest.raises(TypeError, match="floating-point"):
            laplace.label(np.zeros((3, FEATURES), dtype=np.int64), client=alice)
        with pytest.raises(TypeError, match="client must be"):
            laplace.label(_pool(3), client="alice")
        with pytest.raises(ValueError, match="accounting must be one of"):
            laplace.label(_pool(3), client=alice, accounting="optimistic")
        with pytest.raises(TypeError, match="Confident-GNMax"):
            laplace.label(_pool(3), client=alice, accounting="answered-only")
        with pytest.raises(ValueError, match="budget must be an epsilon > 0"):
            laplace.label(_pool(3), client=alice, budget=0.0)
        with pytest.raises(ValueError, match="budget needs a ledger"):
            free.label(_pool(3), client=alice, budget=1.0)
        with pytest.raises(ValueError, match="cannot afford one row"):
            laplace.label(_pool(3), client=alice, budget=0.25)
        with pytest.raises(BudgetExceededError, match="budget exceeded"):  # 1.0 total, 0.5 spent + 0.75 would not fit
            with ledger.spend("alice", calibrate(epsilon=0.75), queries=1) as spend:
                spend.confirm()
            laplace.label(_pool(3), client=alice)
        with pytest.raises(ValueError, match="rdp-filter"):
            gnmax.label(_gnmax_pool(), client=alice, accounting="answered-only")
        assert not laplace.servers.running and not free.servers.running and not gnmax.servers.running
        assert alice.reveals == 0
        status = ledger.status("alice")
        assert status.spent_epsilon == pytest.approx(0.75) and status.answered_queries == 1
    finally:
        for ensemble in (laplace, free, gnmax):
            ensemble.close()


def test_scheduler_never_packs_an_outcome_request_with_other_rows():
    """A fake MPC batch (no MPC): records what each batch held and whether outcomes were asked."""
    calls: list[tuple[int, int]] = []
    gate = threading.Event()

    def run_batch(shares, outcome_rows=0):
        gate.wait(5)
        rows = shares[0].shape[0]
        calls.append((rows, outcome_rows))
        outcome = np.ones(outcome_rows, dtype=np.int64) if outcome_rows else None
        reply = BatchReply(label_share=np.zeros((rows, 2), dtype=np.int64), rounds=1, bytes=0, seconds=0.0,
                           decodes=0, outcome=outcome, outcome_reveals=1 if outcome_rows else 0)
        return [reply, reply]

    scheduler = RequestScheduler(run_batch, BatchingConfig(max_rows=16, window=0.05), 2)
    share = lambda rows: [np.zeros((rows, 2), dtype=np.int64)] * 2  # noqa: E731
    try:
        futures: list[Future] = [scheduler.submit(share(2), 2), scheduler.submit(share(3), 3, outcome=True),
                                 scheduler.submit(share(4), 4), scheduler.submit(share(1), 1)]
        time.sleep(0.1)
        gate.set()
        results = [f.result(timeout=10) for f in futures]
    finally:
        scheduler.close()
    assert calls == [(2, 0), (3, 3), (5, 0)]  # the outcome request ran alone; the others were packed
    np.testing.assert_array_equal(results[1].outcomes, [1, 1, 1])
    assert [c.outcome_reveals for c in results[1].costs] == [1, 1] and results[0].outcomes is None
    assert [c.outcome_reveals for c in results[2].costs] == [0, 0]


@pytest.mark.mpc
def test_cli_label_writes_labels_and_a_summary(tmp_path):
    owners = _random_owners(3)
    paths = []
    for i, owner in enumerate(owners):
        paths.append(tmp_path / f"owner{i}.pt")
        torch.save(owner.model, paths[-1])
    pool = _pool(5).astype(np.float64)
    np.save(tmp_path / "pool.npy", pool)
    argv = ["label", str(tmp_path / "pool.npy"), *[a for p in paths for a in ("--owner", str(p))],
            "--input-shape", str(FEATURES), "--classes", str(CLASSES), "--epsilon", "inf",
            "--ledger", str(tmp_path / "l.sqlite3"), "--budget-epsilon", "inf", "--client", "cli",
            "--max-batch", "2", "--out", str(tmp_path / "labels.npy"), "--summary", str(tmp_path / "s.json")]
    assert cli_exit_code(argv) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), _plain_votes(owners, pool))
    summary = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert summary["sent"] == 5 and summary["batches"] == 3 and summary["refused"] == 0
    assert summary["server_decodes"] == 0 and summary["reveals"] == 3


def test_cli_label_refuses_bad_input_with_one_line(tmp_path, capsys):
    np.save(tmp_path / "pool.npy", np.zeros((2, 3)))
    assert cli_exit_code(["label", str(tmp_path / "missing.npy"), "--owner", "x.pt", "--input-shape", "3",
                          "--classes", "2", "--out", str(tmp_path / "o.npy")]) == 2
    assert "missing.npy" in capsys.readouterr().err

"""The serving core alone (no process, no MPC): the order reserve -> run -> confirm -> deliver, and settlement.

A fake ``run`` stands for the MPC batch; the ledgers are real (SQLite in a
temporary folder). The reference for every charge is a fresh ledger asked
through its own public interface (``check`` / an entered spend), not the
core's code.
"""

from __future__ import annotations

import numpy as np
import pytest

from pricure_crypten import ConfidentGNMax, calibrate
from pricure_crypten.parties.serving.admission import (AgreedAdmission, Dropped, LedgerAdmission, Refused, Vote,
                                                       REFUSE)
from pricure_crypten.parties.serving.messages import BatchReply
from pricure_crypten.parties.serving.pipeline import ServingCore, Ticket
from pricure_crypten.privacy.accounting import PrivacyLedger
from pricure_crypten.privacy.accounting.errors import BudgetExceededError

LAPLACE = calibrate(epsilon=0.5)


def _reply(rows: int, outcome_rows: int = 0, bits: int = 1) -> BatchReply:
    return BatchReply(label_share=np.arange(rows * 2, dtype=np.int64).reshape(rows, 2), rounds=3, bytes=8 * rows,
                      seconds=0.0, decodes=0,
                      outcome=np.full(outcome_rows, bits, dtype=np.int64) if outcome_rows else None,
                      outcome_reveals=1 if outcome_rows else 0)


class _Recorder:
    """deliver/fail callbacks that record the ledger's spend at the moment of delivery."""

    def __init__(self, ledger: PrivacyLedger | None = None) -> None:
        self.ledger = ledger
        self.delivered: dict = {}
        self.failed: dict = {}
        self.spent_at_delivery: dict = {}

    def deliver(self, ticket, delivery) -> None:
        self.delivered[ticket.key] = delivery
        if self.ledger is not None:
            self.spent_at_delivery[ticket.key] = self.ledger.status(ticket.client).answered_queries

    def fail(self, ticket, error) -> None:
        self.failed[ticket.key] = error


def _ticket(key: str, rows: int, client: str = "alice", **kwargs) -> Ticket:
    return Ticket(client=client, shares=[np.zeros((rows, 2), dtype=np.int64)] * 2, key=key, **kwargs)


def _core(admission, recorder: _Recorder, run, **kwargs) -> ServingCore:
    return ServingCore(admission=admission, run=run, deliver=recorder.deliver, fail=recorder.fail, **kwargs)


def test_charge_is_confirmed_before_delivery_and_a_refused_ticket_never_runs(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=1.0, accountant="basic")
    recorder = _Recorder(ledger)
    batches: list[int] = []

    def run(shares, **_):
        batches.append(int(shares[0].shape[0]))
        return [_reply(shares[0].shape[0])] * 2

    core = _core(LedgerAdmission(ledger, LAPLACE), recorder, run, max_rows=8)
    # 2 rows fit the basic budget (2 x 0.5); the 1-row ticket of bob has its own budget; 3 rows of carol do not fit
    tickets = [_ticket("a", 2), _ticket("b", 1, client="bob"), _ticket("c", 3, client="carol")]
    ended = core.step(tickets)
    assert {t.key for t in ended} == {"a", "b", "c"}
    assert batches == [3]  # the refused ticket's rows were never sent to the MPC
    assert isinstance(recorder.failed["c"], BudgetExceededError)
    assert recorder.spent_at_delivery == {"a": 2, "b": 1}  # confirmed (answered) when delivered
    assert ledger.status("carol").answered_queries == 0 and ledger.status("carol").reserved_queries == 0
    np.testing.assert_array_equal(recorder.delivered["b"].label_shares[0], _reply(3).label_share[2:3])


def test_a_failed_batch_rolls_plain_reservations_back_and_keeps_an_answered_only_worst_case(tmp_path):
    mechanism = ConfidentGNMax(threshold=4.0, sigma_threshold=1.0, sigma=1.0, delta=1e-5)
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    recorder = _Recorder(ledger)

    def broken(shares, **_):
        raise RuntimeError("a peer died")

    admission = LedgerAdmission(ledger, mechanism)
    with pytest.raises(RuntimeError, match="a peer died"):
        _core(admission, recorder, broken, max_rows=8).step([_ticket("plain", 2, client="p")])
    assert ledger.status("p").spent_epsilon == 0 and ledger.status("p").reserved_queries == 0
    with pytest.raises(RuntimeError, match="a peer died"):
        _core(admission, recorder, broken, max_rows=8).step([_ticket("ao", 3, client="q", outcome=True)])
    assert set(recorder.failed) == {"plain", "ao"} and not recorder.delivered
    # reference: a fresh ledger charged the worst case (both steps) for 3 rows through its own interface
    reference = PrivacyLedger(tmp_path / "r.sqlite3", total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    with admission.__class__(reference, mechanism).spend("q", 3, outcome=True) as spend:
        spend.confirm(answered=3)
    assert ledger.status("q").spent_epsilon == pytest.approx(reference.status("q").spent_epsilon)
    assert ledger.status("q").reserved_queries == 0


def test_answered_only_is_charged_from_the_revealed_bits_and_runs_alone(tmp_path):
    mechanism = ConfidentGNMax(threshold=4.0, sigma_threshold=1.0, sigma=1.0, delta=1e-5)
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    recorder = _Recorder(ledger)
    calls: list[tuple[int, int]] = []

    def run(shares, outcome_rows=0):
        calls.append((int(shares[0].shape[0]), outcome_rows))
        reply = _reply(shares[0].shape[0], outcome_rows, bits=0)  # every row abstained
        return [reply, reply]

    core = _core(LedgerAdmission(ledger, mechanism), recorder, run, max_rows=16)
    queue = [_ticket("x", 2, client="x"), _ticket("y", 3, client="y", outcome=True), _ticket("z", 1, client="z")]
    for _ in range(3):
        done = core.step(queue)
        queue = [t for t in queue if t not in done]
    assert calls == [(2, 0), (3, 3), (1, 0)]
    reference = PrivacyLedger(tmp_path / "r.sqlite3", total_epsilon=1e4, total_delta=1e-3, accountant="rdp-filter")
    with LedgerAdmission(reference, mechanism).spend("y", 3, outcome=True) as spend:
        spend.confirm(answered=0)  # the threshold step only, for each of the 3 rows
    assert ledger.status("y").spent_epsilon == pytest.approx(reference.status("y").spent_epsilon)
    np.testing.assert_array_equal(recorder.delivered["y"].outcomes, [0, 0, 0])


def test_agreed_admission_runs_only_what_every_server_accepted_and_gives_back_the_rest(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=10.0, accountant="basic")
    other_server = [Vote("ok"), Vote(REFUSE, "over budget on server 1", budget=True), Vote("ok")]

    def gather(mine):
        assert [v.kind for v in mine] == ["ok", "ok", "refuse"]  # this server's own votes
        return [mine, other_server]

    admission = AgreedAdmission(LedgerAdmission(ledger, LAPLACE), gather, rank=0, incomplete_after=10.0)
    cancelled = _ticket("c", 1, client="c", claim=lambda: "cancelled by the client")
    verdicts = admission.admit([_ticket("a", 1, client="a"), _ticket("b", 2, client="b"), cancelled])
    assert verdicts[0].error is None and verdicts[0].reservation.state == "reserved"
    assert isinstance(verdicts[1].error, Refused) and "server 1" in str(verdicts[1].error)
    assert verdicts[1].error.budget  # machine-readable: the client learns it was its budget
    assert isinstance(verdicts[2].error, Refused) and "cancelled" in str(verdicts[2].error)
    assert not verdicts[2].error.budget
    assert ledger.status("b").reserved_queries == 0 and ledger.status("b").spent_epsilon == 0  # given back
    assert ledger.status("a").reserved_queries == 1
    verdicts[0].give_back()
    assert ledger.status("a").reserved_queries == 0


def test_agreed_admission_drops_a_request_missing_on_a_server_for_too_long(tmp_path):
    admission = AgreedAdmission(LedgerAdmission(None, LAPLACE), lambda mine: [mine, [Vote("wait", None, 0.0)]],
                                rank=0, incomplete_after=5.0)
    (verdict,) = admission.admit([_ticket("late", 1, age=6.0)])
    assert isinstance(verdict.error, Dropped) and "server(s) 1" in str(verdict.error)


def test_agreed_admission_marks_a_refusal_for_this_servers_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite3", total_epsilon=0.5, accountant="basic")  # one query of 0.5
    seen = []

    def gather(mine):
        seen.extend(mine)
        return [mine, [Vote("ok")]]

    admission = AgreedAdmission(LedgerAdmission(ledger, LAPLACE), gather, rank=0, incomplete_after=10.0)
    (verdict,) = admission.admit([_ticket("big", 2, client="dave")])
    assert seen[0].kind == REFUSE and seen[0].budget and "over budget on server 0" in seen[0].reason
    assert isinstance(verdict.error, Refused) and verdict.error.budget
    assert ledger.status("dave").reserved_queries == 0 and ledger.status("dave").spent_epsilon == 0

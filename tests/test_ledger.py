"""The persistent privacy ledger: protocol, crashes, races, bad input, CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pricure_crypten.privacy.accounting import (
    ENV_VAR,
    SCHEMA_VERSION,
    BudgetExceededError,
    BudgetStatus,
    LedgerError,
    PrivacyLedger,
    default_ledger_path,
)
from pricure_crypten.privacy.accounting import ledger as ledger_module
from pricure_crypten.privacy.accounting.base import ReleaseCost
from pricure_crypten.privacy.accounting.cli import budget_main
from pricure_crypten.privacy.noise import calibrate

LAPLACE_1 = calibrate(epsilon=1.0)
CHILD_TIMEOUT = 120


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def answer(ledger: PrivacyLedger, client: str, mechanism=LAPLACE_1, queries: int = 1) -> None:
    with ledger.spend(client, mechanism, queries=queries) as spend:
        spend.confirm()


def rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ protocol
def test_spend_confirm_and_status(path):
    with PrivacyLedger(path, total_epsilon=5.0, accountant="basic") as ledger:
        assert ledger.status("alice") == BudgetStatus(
            "alice", "basic", None, 5.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0, 0, 0)
        answer(ledger, "alice", queries=2)
        answer(ledger, "alice", calibrate(epsilon=0.5))
        status = ledger.status("alice")
        assert (status.spent_epsilon, status.spent_delta) == (2.5, 0.0)
        assert status.remaining_epsilon == 2.5
        assert (status.answered_queries, status.reserved_queries, status.refused_queries) == (3, 0, 0)
        assert ledger.clients() == ["alice"]
    # persisted: a new ledger on the same file sees the same spend
    with PrivacyLedger(path, total_epsilon=5.0, accountant="basic") as again:
        assert again.status("alice") == status
    assert rows(path, "SELECT status, queries FROM spends ORDER BY id") == [("answered", 2), ("answered", 1)]


def test_reservation_counts_as_spent_before_confirm(path):
    with PrivacyLedger(path, total_epsilon=2.0, accountant="basic") as ledger:
        with ledger.spend("alice", LAPLACE_1) as spend:
            assert rows(path, "SELECT status FROM spends") == [("reserved",)]  # committed, visible to others
            assert ledger.status("alice").reserved_queries == 1
            assert ledger.status("alice").spent_epsilon == 1.0
            spend.confirm()
            assert rows(path, "SELECT status FROM spends") == [("answered",)]
        assert spend.state == "answered"


def test_over_budget_raises_and_charges_nothing(path):
    with PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as ledger:
        answer(ledger, "alice", queries=2)
        before = ledger.status("alice")
        spends_before = rows(path, "SELECT * FROM spends")
        with pytest.raises(BudgetExceededError) as info:
            with ledger.spend("alice", LAPLACE_1, queries=2):
                pytest.fail("the body of a refused spend must not run")
        err = info.value
        assert isinstance(err, ValueError)
        assert "'alice'" in str(err) and "already spent (epsilon=2" in str(err)
        assert "remaining epsilon=1" in str(err) and "2 more queries" in str(err)
        assert err.spent == (2.0, 0.0) and err.projected == (4.0, 0.0) and err.remaining_epsilon == 1.0
        after = ledger.status("alice")
        assert (after.spent_epsilon, after.answered_queries) == (before.spent_epsilon, before.answered_queries)
        assert after.refused_queries == before.refused_queries + 2
        assert rows(path, "SELECT * FROM spends") == spends_before
        # a single over-budget query: refused counter +1; the last query that fits still fits
        answer(ledger, "alice")
        with pytest.raises(BudgetExceededError):
            answer(ledger, "alice")
        final = ledger.status("alice")
        assert (final.spent_epsilon, final.answered_queries, final.refused_queries) == (3.0, 3, 3)


def test_failure_inside_the_block_rolls_back_the_reservation(path):
    with PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as ledger:
        answer(ledger, "alice")
        with pytest.raises(RuntimeError, match="mpc failed"):
            with ledger.spend("alice", LAPLACE_1, queries=2) as spend:
                assert ledger.status("alice").spent_epsilon == 3.0
                raise RuntimeError("mpc failed")
        assert spend.state == "rolled_back"
        status = ledger.status("alice")
        assert (status.spent_epsilon, status.answered_queries, status.reserved_queries) == (1.0, 1, 0)
        assert rows(path, "SELECT count(*) FROM spends") == [(1,)]


def test_unconfirmed_exit_keeps_the_spend_and_cancel_gives_it_back(path):
    with PrivacyLedger(path, total_epsilon=5.0, accountant="basic") as ledger:
        with pytest.warns(RuntimeWarning, match="without confirm"):
            with ledger.spend("alice", LAPLACE_1):
                pass
        assert ledger.status("alice").reserved_queries == 1
        with ledger.spend("alice", LAPLACE_1) as spend:
            spend.cancel()
        assert ledger.status("alice").spent_epsilon == 1.0
        with pytest.raises(LedgerError, match="answered spend stays charged"):
            with ledger.spend("alice", LAPLACE_1) as spend:
                spend.confirm()
                spend.cancel()
        assert ledger.status("alice").spent_epsilon == 2.0


def test_check_is_a_dry_run(path):
    with PrivacyLedger(path, total_epsilon=2.0, accountant="basic") as ledger:
        answer(ledger, "alice")
        assert ledger.check("alice", LAPLACE_1, 1) == (2.0, 0.0)
        with pytest.raises(BudgetExceededError):
            ledger.check("alice", LAPLACE_1, 2)
        status = ledger.status("alice")
        assert (status.spent_epsilon, status.refused_queries) == (1.0, 0)


def test_auto_ledger_uses_pld_with_delta_and_stays_within_budget(path):
    mech = calibrate(epsilon=0.5, delta=1e-6, mechanism="gaussian")
    with PrivacyLedger(path, total_epsilon=3.0, total_delta=1e-5) as ledger:
        answered = 0
        with pytest.raises(BudgetExceededError):
            for _ in range(100):
                answer(ledger, "alice", mech, queries=5)
                answered += 5
        status = ledger.status("alice")
        assert status.bound == "pld" and status.accountant == "auto"
        assert status.spent_epsilon <= 3.0 and status.answered_queries == answered
        assert answered > 6  # basic composition would have stopped at 6 queries
    # the rows are facts; another accountant composes them differently
    with PrivacyLedger(path, total_epsilon=3.0, total_delta=1e-5, accountant="rdp") as rdp:
        assert rdp.status("alice").spent_epsilon > status.spent_epsilon


def test_no_noise_is_only_admitted_by_an_unlimited_budget(path):
    with PrivacyLedger(path, total_epsilon=100.0) as ledger:
        with pytest.raises(BudgetExceededError, match="epsilon=inf"):
            answer(ledger, "alice", calibrate(epsilon=math.inf))
    with PrivacyLedger(path, total_epsilon=math.inf) as unlimited:
        answer(unlimited, "alice", calibrate(epsilon=math.inf))
        assert unlimited.status("alice").spent_epsilon == math.inf


def test_confirm_after_a_reset_refuses_to_release(path, caplog):
    with PrivacyLedger(path, total_epsilon=2.0, accountant="basic") as ledger:
        with pytest.raises(LedgerError, match="must NOT be released"):
            with ledger.spend("alice", LAPLACE_1) as spend:
                ledger.reset("alice", admin="ops", reason="test in-flight reset")
                spend.confirm()


# ---------------------------------------------------------------- crash (SIGKILL)
_STREAM_CHILD = textwrap.dedent("""
    import random, sys, time
    from pricure_crypten.privacy.accounting import PrivacyLedger
    from pricure_crypten.privacy.noise import calibrate
    ledger = PrivacyLedger(sys.argv[1], total_epsilon=float("inf"), accountant="basic")
    mech = calibrate(epsilon=0.5)
    print("ready", flush=True)
    i = 0
    while True:
        with ledger.spend("alice", mech, queries=1) as spend:
            time.sleep(random.random() * 0.003)   # the MPC evaluation
            spend.confirm()
        print(f"received {i}", flush=True)         # the client reconstructs after confirm
        i += 1
""")

_HANG_CHILD = textwrap.dedent("""
    import sys, time
    from pricure_crypten.privacy.accounting import PrivacyLedger
    from pricure_crypten.privacy.noise import calibrate
    ledger = PrivacyLedger(sys.argv[1], total_epsilon=5.0, accountant="basic")
    with ledger.spend("bob", calibrate(epsilon=1.0), queries=3) as spend:
        print("reserved", flush=True)
        time.sleep(600)                            # killed in the middle of the MPC
        spend.confirm()
""")


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, prefix: str, count: int = 1) -> list[str]:
    lines: list[str] = []
    seen = 0
    while seen < count:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited early: {proc.wait()} {proc.stderr.read()}")
        lines.append(line.strip())
        seen += line.startswith(prefix)
    return lines


def test_sigkill_mid_stream_never_under_counts(path):
    PrivacyLedger(path, total_epsilon=math.inf, accountant="basic").close()
    proc = _spawn(_STREAM_CHILD, str(path))
    try:
        lines = _wait_for(proc, "received", count=25)
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    received = sum(line.startswith("received") for line in lines + rest.splitlines())
    assert received >= 25
    with PrivacyLedger(path, total_epsilon=math.inf, accountant="basic") as ledger:
        status = ledger.status("alice")
    counted = status.answered_queries + status.reserved_queries
    assert status.answered_queries >= received           # every received result was confirmed first
    assert received <= counted <= received + 1           # at most the one in flight is over-counted
    assert status.spent_epsilon >= 0.5 * received


def test_sigkill_between_reserve_and_confirm_keeps_the_reservation(path):
    PrivacyLedger(path, total_epsilon=5.0, accountant="basic").close()
    proc = _spawn(_HANG_CHILD, str(path))
    try:
        _wait_for(proc, "reserved")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with PrivacyLedger(path, total_epsilon=5.0, accountant="basic") as ledger:
        status = ledger.status("bob")
        assert (status.reserved_queries, status.answered_queries, status.spent_epsilon) == (3, 0, 3.0)
        with pytest.raises(BudgetExceededError):  # would fit only if the crashed reservation were forgotten
            answer(ledger, "bob", queries=3)
        answer(ledger, "bob", queries=2)



def _killed_reservation(path: Path, *, reap: bool = True) -> subprocess.Popen:
    """A child that reserved 3 queries of bob and was SIGKILLed before confirm (reaped unless told)."""
    proc = _spawn(_HANG_CHILD, str(path))
    try:
        _wait_for(proc, "reserved")
        os.kill(proc.pid, signal.SIGKILL)
        if reap:
            proc.communicate(timeout=CHILD_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def test_void_stale_reservations_voids_a_killed_process_reservation_audited(path, caplog):
    """The crash between reserve and confirm: counted as before until the audited void gives it back."""
    PrivacyLedger(path, total_epsilon=5.0, accountant="basic").close()
    proc = _killed_reservation(path)
    with PrivacyLedger(path, total_epsilon=5.0, accountant="basic") as ledger:
        answer(ledger, "alice", queries=2)  # answered: never voided
        assert ledger.status("bob").reserved_queries == 3  # still counted: over-count, as before
        with pytest.raises(TypeError):
            ledger.void_stale_reservations()  # keyword-only admin and reason are required
        with pytest.raises(ValueError, match="admin"):
            ledger.void_stale_reservations(admin=" ", reason="restart")
        with caplog.at_level(logging.WARNING, logger="pricure_crypten.privacy.accounting.ledger"):
            assert ledger.void_stale_reservations(admin="server 0", reason="restart") == 1
        assert "voided 1 stale reservations (3 queries) of client 'bob' by 'server 0'" in caplog.text
        bob, alice = ledger.status("bob"), ledger.status("alice")
        assert (bob.reserved_queries, bob.spent_epsilon) == (0, 0.0)
        assert (alice.answered_queries, alice.spent_epsilon) == (2, 2.0)
        (entry,) = ledger.audit_log()
        assert (entry.action, entry.client_id, entry.admin, entry.reason) == (
            "void_stale_reservations", "bob", "server 0", "restart")
        assert entry.details["queries"] == 3 and entry.details["pids"] == [proc.pid]
        assert ledger.void_stale_reservations(admin="server 0", reason="again") == 0  # idempotent
        assert len(ledger.audit_log()) == 1
    assert budget_main(["--ledger", str(path), "void-stale", "--admin", "ops", "--reason", "cli"]) == 0
    assert budget_main(["--ledger", str(path), "void-stale", "--admin", "ops"]) == 2  # --reason required
    # voided, not deleted; linked to its audit entry
    assert rows(path, "SELECT client_id, status, reset_id FROM spends ORDER BY id") == [
        ("bob", "reset", 1), ("alice", "answered", None)]


def test_void_stale_reservations_keeps_live_reservations(path):
    """A reservation of a live process (another one, or this one in flight) is not stale."""
    PrivacyLedger(path, total_epsilon=10.0, accountant="basic").close()
    proc = _spawn(_HANG_CHILD, str(path))
    try:
        _wait_for(proc, "reserved")
        with PrivacyLedger(path, total_epsilon=10.0, accountant="basic") as ledger:
            with ledger.spend("carol", LAPLACE_1, queries=1) as spend:  # this process, in flight
                assert ledger.void_stale_reservations(admin="ops", reason="check") == 0
                spend.confirm()  # still reserved, so it confirms
            assert ledger.status("bob").reserved_queries == 3
            assert ledger.audit_log() == []
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=CHILD_TIMEOUT)
            assert ledger.void_stale_reservations(admin="ops", reason="check") == 1
            assert ledger.status("carol").answered_queries == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_void_stale_reservations_treats_a_zombie_and_a_reused_pid_as_stopped(path):
    PrivacyLedger(path, total_epsilon=10.0, accountant="basic").close()
    proc = _killed_reservation(path, reap=False)  # killed, not yet waited for: a zombie
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with PrivacyLedger(path, total_epsilon=10.0, accountant="basic") as ledger:
            assert ledger.void_stale_reservations(admin="ops", reason="zombie") == 1
            # a reservation recorded under THIS pid an hour ago: an earlier process that had the same pid
            row = ledger.reserve("dave", ReleaseCost.of(LAPLACE_1), 1)
            conn = sqlite3.connect(path)
            conn.execute("UPDATE spends SET reserved_at = '2000-01-01T00:00:00+00:00' WHERE id = ?", (row,))
            conn.commit()
            conn.close()
            assert ledger.void_stale_reservations(admin="ops", reason="restart with the same pid") == 1
            with pytest.raises(LedgerError, match="must NOT be released"):
                ledger.confirm(row)  # voided: its result may not be released
    finally:
        proc.wait()


def test_the_ledger_reservations_interface_is_public_and_validated(path):
    with PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as ledger:
        row = ledger.reserve("erin", ReleaseCost.of(LAPLACE_1), 2)
        assert ledger.status("erin").reserved_queries == 2
        ledger.confirm(row)
        ledger.rollback(ledger.reserve("erin", ReleaseCost.of(LAPLACE_1), 1))
        assert (ledger.status("erin").answered_queries, ledger.status("erin").reserved_queries) == (2, 0)
        with pytest.raises(TypeError, match="ReleaseCost"):
            ledger.reserve("erin", LAPLACE_1, 1)
        with pytest.raises(ValueError, match="reservation_id"):
            ledger.confirm(0)
        with pytest.raises(BudgetExceededError):
            ledger.reserve("erin", ReleaseCost.of(LAPLACE_1), 2)


# --------------------------------------------------------------- concurrency
_RACE_CHILD = textwrap.dedent("""
    import os, sys, time
    from pricure_crypten.privacy.accounting import BudgetExceededError, PrivacyLedger
    from pricure_crypten.privacy.accounting import ledger as ledger_module
    from pricure_crypten.privacy.noise import calibrate
    path, go = sys.argv[1], sys.argv[2]
    ledger = PrivacyLedger(path, total_epsilon=3.0, accountant="basic")
    evaluate = ledger_module.PrivacyLedger._evaluate
    def slow_evaluate(self, groups):            # widen the window: both decide "fits" concurrently
        result = evaluate(self, groups)
        time.sleep(0.3)
        return result
    ledger_module.PrivacyLedger._evaluate = slow_evaluate
    mech = calibrate(epsilon=1.0)
    print("ready", flush=True)
    while not os.path.exists(go):                # barrier: both start together
        time.sleep(0.0005)
    try:
        with ledger.spend("carol", mech) as spend:
            spend.confirm()
        print("answered", flush=True)
    except BudgetExceededError:
        print("refused", flush=True)
""")


def test_two_processes_at_the_budget_edge_do_not_both_succeed(path, tmp_path):
    with PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as ledger:
        answer(ledger, "carol", queries=2)  # exactly one more query fits
    go = tmp_path / "go"
    procs = [_spawn(_RACE_CHILD, str(path), str(go)) for _ in range(2)]
    try:
        for proc in procs:
            _wait_for(proc, "ready")
        go.touch()
        results = [proc.communicate(timeout=CHILD_TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcomes = sorted(out.strip() for out, _ in results)
    assert outcomes == ["answered", "refused"], [err for _, err in results]
    with PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as ledger:
        status = ledger.status("carol")
    assert (status.spent_epsilon, status.answered_queries, status.refused_queries) == (3.0, 3, 1)


def test_spend_retries_when_another_writer_changed_the_client(path, monkeypatch):
    """Deterministic version of the race inside one process: a second connection
    spends between our snapshot and our write lock."""
    with PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as ledger, \
            PrivacyLedger(path, total_epsilon=3.0, accountant="basic") as other:
        answer(ledger, "carol", queries=2)
        evaluate = PrivacyLedger._evaluate
        sneaked = []

        def evaluate_then_interfere(self, groups):
            result = evaluate(self, groups)
            if self is ledger and not sneaked:
                sneaked.append(True)
                answer(other, "carol")  # the last query that fits, taken by someone else
            return result

        monkeypatch.setattr(PrivacyLedger, "_evaluate", evaluate_then_interfere)
        with pytest.raises(BudgetExceededError):
            answer(ledger, "carol")
        assert ledger.status("carol").spent_epsilon == 3.0


def test_threads_sharing_one_ledger_never_overspend(path):
    with PrivacyLedger(path, total_epsilon=20.0, accountant="basic") as ledger:
        outcomes: list[str] = []

        def client_thread() -> None:
            for _ in range(10):
                try:
                    answer(ledger, "dave")
                    outcomes.append("answered")
                except BudgetExceededError:
                    outcomes.append("refused")

        threads = [threading.Thread(target=client_thread) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status = ledger.status("dave")
    assert outcomes.count("answered") == 20 and outcomes.count("refused") == 20
    assert (status.spent_epsilon, status.answered_queries, status.refused_queries) == (20.0, 20, 20)


def test_budget_exceeded_error_survives_pickling(path):
    with PrivacyLedger(path, total_epsilon=1.0, accountant="basic") as ledger:
        with pytest.raises(BudgetExceededError) as info:
            answer(ledger, "erin", queries=2)
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value) and clone.projected == (2.0, 0.0) and clone.client_id == "erin"


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("total_epsilon, exc", [
    (-1.0, ValueError), (0.0, ValueError), (float("nan"), ValueError), (float("-inf"), ValueError),
    ("1", TypeError), (True, TypeError), (None, TypeError),
])
def test_bad_total_epsilon(path, total_epsilon, exc):
    with pytest.raises(exc, match="total_epsilon"):
        PrivacyLedger(path, total_epsilon=total_epsilon)
    assert not path.exists()


@pytest.mark.parametrize("total_delta, exc", [
    (-0.1, ValueError), (1.0, ValueError), (1.5, ValueError), (float("nan"), ValueError), ("0", TypeError),
])
def test_bad_total_delta(path, total_delta, exc):
    with pytest.raises(exc, match="total_delta"):
        PrivacyLedger(path, total_epsilon=1.0, total_delta=total_delta)
    assert not path.exists()


def test_bad_accountant_and_combinations(path):
    with pytest.raises(ValueError, match="unknown accountant 'moments'; choose one of auto, basic"):
        PrivacyLedger(path, total_epsilon=1.0, accountant="moments")
    with pytest.raises(ValueError, match="total_delta=0"):
        PrivacyLedger(path, total_epsilon=1.0, total_delta=0.0, accountant="rdp")
    with pytest.raises(ValueError, match="slack"):
        PrivacyLedger(path, total_epsilon=1.0, total_delta=1e-7, accountant="advanced")
    with pytest.raises(TypeError, match="does not take"):
        PrivacyLedger(path, total_epsilon=1.0, accountant="basic", accountant_options={"slack": 1e-6})
    with pytest.raises(ValueError, match="in-memory"):
        PrivacyLedger(":memory:", total_epsilon=1.0)
    assert not path.exists()


def test_bad_spend_arguments(path):
    with PrivacyLedger(path, total_epsilon=5.0) as ledger:
        for client, exc in (("", ValueError), ("   ", ValueError), (42, TypeError), (None, TypeError)):
            with pytest.raises(exc, match="client_id"):
                ledger.spend(client, LAPLACE_1)
        for queries, exc in ((0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)):
            with pytest.raises(exc, match="queries"):
                ledger.spend("alice", LAPLACE_1, queries=queries)
        with pytest.raises(TypeError, match="noise mechanism"):
            ledger.spend("alice", "laplace")
        assert ledger.clients() == []


def test_garbage_file_is_refused_and_left_untouched(path):
    path.write_bytes(b"\x00\x01garbage, not a ledger\n" * 64)
    digest = sha256(path)
    with pytest.raises(LedgerError, match=str(path)) as info:
        PrivacyLedger(path, total_epsilon=1.0)
    assert "not a SQLite database" in str(info.value)
    assert sha256(path) == digest
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no -wal / -shm either


def test_foreign_sqlite_database_is_refused_and_left_untouched(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE spends (id INTEGER, what TEXT)")
    conn.execute("INSERT INTO spends VALUES (1, 'somebody else''s data')")
    conn.commit()
    conn.close()
    digest = sha256(path)
    with pytest.raises(LedgerError, match="not a pricure-crypten ledger") as info:
        PrivacyLedger(path, total_epsilon=1.0)
    assert str(path) in str(info.value)
    assert sha256(path) == digest


def test_newer_schema_and_truncated_ledger_are_refused(path, tmp_path):
    with PrivacyLedger(path, total_epsilon=5.0) as ledger:
        answer(ledger, "alice")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    digest = sha256(path)
    with pytest.raises(LedgerError, match="newer"):
        PrivacyLedger(path, total_epsilon=5.0)
    assert sha256(path) == digest

    truncated = tmp_path / "truncated.sqlite3"
    truncated.write_bytes(path.read_bytes()[:1500])
    digest = sha256(truncated)
    with pytest.raises(LedgerError, match=str(truncated)):
        PrivacyLedger(truncated, total_epsilon=5.0)
    assert sha256(truncated) == digest


def test_schema_version_and_wal_are_stored(path):
    PrivacyLedger(path, total_epsilon=2.0, total_delta=1e-6, accountant="pld").close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert json.loads(meta["last_policy"])["accountant"] == "pld"
    assert PrivacyLedger.stored_policy(path)["total_delta"] == 1e-6


def test_unwritable_ledger_is_refused_via_read_only_sqlite(path, monkeypatch):
    """Works as root too: the file is opened through SQLite's URI mode=ro."""
    PrivacyLedger(path, total_epsilon=5.0).close()
    connect = sqlite3.connect

    def connect_read_only(database, *args, **kwargs):
        return connect(database.replace("mode=rwc", "mode=ro"), *args, **kwargs)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", connect_read_only)
    with pytest.raises(LedgerError, match="not writable") as info:
        PrivacyLedger(path, total_epsilon=5.0)
    assert str(path) in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod does not stop root from writing (covered via SQLite mode=ro)")
def test_unwritable_ledger_is_refused_via_chmod(path):
    PrivacyLedger(path, total_epsilon=5.0).close()
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        with pytest.raises(LedgerError, match="not writable"):
            PrivacyLedger(path, total_epsilon=5.0)
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)


def test_read_only_ledger_reports_but_never_spends(path):
    with pytest.raises(LedgerError, match="does not exist"):
        PrivacyLedger(path, total_epsilon=5.0, read_only=True)
    with PrivacyLedger(path, total_epsilon=5.0) as ledger:
        answer(ledger, "alice")
    with PrivacyLedger(path, total_epsilon=5.0, read_only=True) as ro:
        assert ro.status("alice").spent_epsilon == 1.0
        assert ro.check("alice", LAPLACE_1, 4) == (5.0, 0.0)
        with pytest.raises(LedgerError, match="read-only"):
            ro.spend("alice", LAPLACE_1)
        with pytest.raises(LedgerError, match="read-only"):
            ro.reset("alice", admin="ops", reason="x")


def test_default_location_is_the_user_data_dir_or_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert default_ledger_path() == tmp_path / "xdg" / "pricure-crypten" / "ledger.sqlite3"
    with PrivacyLedger(total_epsilon=1.0) as ledger:
        assert ledger.path == tmp_path / "xdg" / "pricure-crypten" / "ledger.sqlite3"
    assert ledger.path.is_file()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env" / "budget.sqlite3"))
    with PrivacyLedger(total_epsilon=1.0) as ledger:
        assert ledger.path == tmp_path / "env" / "budget.sqlite3"
    with PrivacyLedger(tmp_path / "explicit.sqlite3", total_epsilon=1.0) as ledger:
        assert ledger.path == tmp_path / "explicit.sqlite3"


# --------------------------------------------------------------------- reset
def test_reset_needs_admin_and_reason_and_is_audited(path, caplog):
    with PrivacyLedger(path, total_epsilon=2.0, accountant="basic") as ledger:
        answer(ledger, "alice", queries=2)
        with pytest.raises(BudgetExceededError):
            answer(ledger, "alice")
        with pytest.raises(TypeError):
            ledger.reset("alice")  # keyword-only admin and reason are required
        for admin, reason in (("", "why"), ("ops", ""), ("ops", "   ")):
            with pytest.raises(ValueError, match="admin|reason"):
                ledger.reset("alice", admin=admin, reason=reason)
        with pytest.raises(ValueError, match="no client 'mallory'"):
            ledger.reset("mallory", admin="ops", reason="typo")
        assert ledger.status("alice").spent_epsilon == 2.0  # nothing happened so far
        assert ledger.audit_log() == []

        with caplog.at_level(logging.WARNING, logger="pricure_crypten.privacy.accounting.ledger"):
            before = ledger.reset("alice", admin="ops-oncall", reason="ticket 123: new data-use agreement")
        assert (before.spent_epsilon, before.answered_queries, before.refused_queries) == (2.0, 2, 1)
        assert "RESET by 'ops-oncall'" in caplog.text and "ticket 123" in caplog.text
        after = ledger.status("alice")
        assert (after.spent_epsilon, after.answered_queries, after.refused_queries) == (0.0, 0, 0)
        (entry,) = ledger.audit_log("alice")
        assert (entry.action, entry.admin) == ("reset", "ops-oncall")
        assert entry.reason == "ticket 123: new data-use agreement"
        assert entry.details["before"]["spent_epsilon"] == 2.0
    # persistent audit table; voided spends are kept, not deleted
    assert rows(path, "SELECT action, client_id, admin FROM audit") == [("reset", "alice", "ops-oncall")]
    assert rows(path, "SELECT status, reset_id FROM spends") == [("reset", 1)]


# ----------------------------------------------------------------------- CLI
def test_cli_show_json_matches_the_api(path, capsys):
    with PrivacyLedger(path, total_epsilon=4.0, total_delta=1e-5) as ledger:
        answer(ledger, "alice", queries=3)
        with pytest.raises(BudgetExceededError):
            answer(ledger, "alice", queries=2)
        expected = ledger.status("alice")
    assert budget_main(["--ledger", str(path), "show", "alice", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == expected.to_dict()
    assert shown["bound"] == "pld" and shown["refused_queries"] == 2

    assert budget_main(["--ledger", str(path), "--accountant", "basic", "show", "alice"]) == 0
    out = capsys.readouterr().out
    assert "spent       epsilon 3, delta 0" in out and "refused     2 queries" in out

    assert budget_main(["--ledger", str(path), "list", "--json"]) == 0
    assert [s["client_id"] for s in json.loads(capsys.readouterr().out)] == ["alice"]


def test_cli_reset_requires_admin_and_reason(path, capsys):
    with PrivacyLedger(path, total_epsilon=4.0, accountant="basic") as ledger:
        answer(ledger, "alice")
    for argv in (["reset", "alice"], ["reset", "alice", "--admin", "ops"],
                 ["reset", "alice", "--reason", "why"], ["reset", "alice", "--admin", "ops", "--reason", " "]):
        assert budget_main(["--ledger", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pricure budget: error:")
    assert budget_main(["--ledger", str(path), "--total-epsilon", "9", "reset", "alice",
                        "--admin", "ops", "--reason", "test"]) == 0
    assert "reset client alice" in capsys.readouterr().out
    assert PrivacyLedger.stored_policy(path)["total_epsilon"] == 4.0  # the CLI never changes the servers' policy
    assert rows(path, "SELECT admin, reason FROM audit") == [("ops", "test")]


@pytest.mark.parametrize("argv", [
    ["--total-epsilon", "-1", "show", "alice"],
    ["--total-epsilon", "nan", "show", "alice"],
    ["--total-epsilon", "abc", "show", "alice"],
    ["--total-delta", "1.5", "show", "alice"],
    ["--accountant", "moments", "show", "alice"],
    ["show", ""],
    ["frobnicate"],
    [],
])
def test_cli_bad_input_exits_2_with_one_line(path, capsys, argv):
    PrivacyLedger(path, total_epsilon=4.0).close()
    assert budget_main(["--ledger", str(path), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("pricure budget: error:")
    assert "Traceback" not in captured.err and captured.out == ""


def test_cli_corrupted_or_missing_ledger_exits_2(tmp_path, capsys):
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 10)
    assert budget_main(["--ledger", str(garbage), "--total-epsilon", "1", "show", "alice"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(garbage) in err and "not a SQLite database" in err
    assert budget_main(["--ledger", str(garbage), "show", "alice"]) == 2  # no budget given: still the real cause
    assert "not a SQLite database" in capsys.readouterr().err
    assert budget_main(["--ledger", str(tmp_path / "missing.sqlite3"), "show", "alice"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err

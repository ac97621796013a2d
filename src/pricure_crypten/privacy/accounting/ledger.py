"""A persistent privacy-budget ledger per client, in SQLite (WAL mode).

Who sees what: the ledger is kept by the party that admits queries (the
servers' coordinator). It stores, per client identity, only *which*
calibrated mechanism was released *how many times* and when -- never a
query, a vote, a histogram or a label. The client sees nothing of it except
the outcome: its query is answered, or refused with a
:class:`BudgetExceededError` stating its own spent and remaining budget.

Protocol (the order is what makes a crash over-count, never under-count)::

    with ledger.spend(client_id, mechanism, queries=B) as spend:
        # entered: the spend is checked against the budget and a 'reserved'
        # row is COMMITTED -- from now on it counts as spent
        shares = run_mpc(...)       # raises -> the reservation is deleted
        spend.confirm()             # row 'answered', committed
    client.reconstruct(shares)      # only now is anything revealed

Answered-only Confident-GNMax (accountant ``"rdp-filter"`` only):
``ledger.spend_answered_only(...)`` reserves the WORST case (both steps for
every query) and ``spend.confirm(answered=k)`` settles the outcome (the
other queries are charged the threshold step only); see :mod:`.outcome`
for the protocol and what it reveals, :mod:`.filter` for why only a
privacy filter may compose these charges. A ledger holding such spends
refuses to be composed by any other accountant.

A process killed at any point leaves either nothing (before the reservation
commits: nothing was computed) or a 'reserved'/'answered' row that keeps
counting after a restart. Only two audited operations give budget back:
:meth:`PrivacyLedger.reset` (an administrator gives a client everything
back) and :meth:`PrivacyLedger.void_stale_reservations` (the reservations of
processes that no longer run, whose results were therefore never released).

Concurrency: every write is a ``BEGIN IMMEDIATE`` transaction, so processes
sharing the file serialise their writes. The (possibly slow, e.g. PLD)
composition runs *outside* the write lock on a snapshot of the client's
spends; inside the lock the snapshot is re-read and, if another process
changed it meanwhile, the decision is recomputed. Two requests that fit only
one at a time therefore never both pass.

Location: the ``path`` argument, else ``$PRICURE_LEDGER``, else
``platformdirs.user_data_dir("pricure-crypten")/ledger.sqlite3`` -- never the
working tree.

This module is the budget policy: it groups a client's spends, composes them
with the accountant, decides whether a request fits and runs the protocol
above. The SQLite file itself -- schema, validation, locking, transactions and
the rows -- is :class:`~pricure_crypten.privacy.accounting.store.LedgerStore`.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..._validation import check_delta, check_epsilon, check_int, check_name
from .base import MechanismLike, ReleaseCost, release_sort_key, within
from .errors import BudgetExceededError
from .outcome import ABSTAINED_SUFFIX, AnsweredOnlyCosts, OutcomeSpend
from .registry import check_accountant_name, make_accountant
from .spend import Spend
from .status import AuditEntry, BudgetStatus
from .store import ENV_VAR, SCHEMA_VERSION, LedgerStore, default_ledger_path, read_stored_policy

__all__ = ["ENV_VAR", "SCHEMA_VERSION", "PrivacyLedger", "default_ledger_path"]

logger = logging.getLogger(__name__)

_MAX_CLIENT_ID = 1024
_OPTIMISTIC_ATTEMPTS = 5
_CACHE_SIZE = 128

Groups = tuple[tuple[ReleaseCost, int], ...]


def _check_client_id(client_id: Any) -> str:
    return check_name(client_id, name="client_id", max_length=_MAX_CLIENT_ID)


def _check_queries(queries: Any) -> int:
    return check_int(queries, name="queries", minimum=1)


def _check_text(name: str, value: Any) -> str:
    return check_name(value, name=name).strip()


def _check_total_epsilon(value: Any) -> float:
    return check_epsilon(value, name="total_epsilon", infinite="unlimited")


def _check_total_delta(value: Any) -> float:
    return check_delta(value, name="total_delta")


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


class PrivacyLedger:
    """Persistent per-client privacy budget, composed by an accountant.

    Args:
        path: the SQLite file; default ``$PRICURE_LEDGER`` or the user data
            directory (see :func:`default_ledger_path`). Created if missing;
            a file that is not a ledger of this schema is refused, never reset.
        total_epsilon: each client's budget epsilon, > 0 (``inf``: unlimited).
        total_delta: each client's budget delta, in [0, 1).
        accountant: ``"auto"`` (default), ``"basic"``, ``"advanced"``, ``"rdp"``, ``"pld"`` or
            ``"rdp-filter"`` (the Rényi filter, :mod:`.filter`; required for answered-only spends).
        accountant_options: keyword options of the accountant (e.g. ``{"slack": 1e-7}``).
        read_only: open without writing (status/check/list only); the file must exist.
        timeout: seconds to wait for another process's write lock.
        record_policy: record the budget and accountant as the ledger's
            ``last_policy`` (the CLI's default budget). The CLI passes False.

    The ledger stores the spends, not the budget: the same rows are composed
    by whichever accountant and totals the ledger is opened with.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike, None] = None,
        *,
        total_epsilon: float,
        total_delta: float = 0.0,
        accountant: str = "auto",
        accountant_options: Optional[Mapping[str, Any]] = None,
        read_only: bool = False,
        timeout: float = 30.0,
        record_policy: bool = True,
    ) -> None:
        self.total_epsilon = _check_total_epsilon(total_epsilon)
        self.total_delta = _check_total_delta(total_delta)
        self.accountant = check_accountant_name(accountant)
        if accountant_options is not None and not isinstance(accountant_options, Mapping):
            raise TypeError(f"accountant_options must be a mapping, not {type(accountant_options).__name__}")
        self.accountant_options = dict(accountant_options or {})
        probe = make_accountant(self.accountant, **self.accountant_options)  # validates the options
        if self.total_delta == 0.0 and self.accountant in ("rdp", "pld", "rdp-filter"):
            raise ValueError(
                f"the {self.accountant!r} accountant gives no finite epsilon at total_delta=0; "
                "use total_delta > 0, or accountant 'basic' or 'auto' for pure epsilon-DP"
            )
        if self.accountant == "advanced" and self.total_delta < getattr(probe, "slack", 0.0):
            raise ValueError(
                f"advanced composition spends a delta slack of {probe.slack:g} but total_delta is "
                f"{self.total_delta:g}; raise total_delta or pass accountant_options={{'slack': ...}}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        for name, flag in (("read_only", read_only), ("record_policy", record_policy)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, not {type(flag).__name__}")
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[Groups, tuple[float, float, str]] = OrderedDict()
        policy = {
            "total_epsilon": self.total_epsilon,
            "total_delta": self.total_delta,
            "accountant": self.accountant,
            "accountant_options": self.accountant_options,
        }
        self._store = LedgerStore(path, read_only=read_only, timeout=float(timeout),
                                  policy=policy if record_policy else None)
        logger.debug("opened privacy ledger %s (accountant %s, budget eps=%s delta=%s, read_only=%s)",
                     self.path, self.accountant, self.total_epsilon, self.total_delta, self.read_only)

    @property
    def path(self) -> Path:
        """The ledger file (absolute)."""
        return self._store.path

    @property
    def read_only(self) -> bool:
        """Whether the ledger was opened without writing."""
        return self._store.read_only

    @property
    def timeout(self) -> float:
        """Seconds to wait for another process's write lock."""
        return self._store.timeout

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        self._store.close()

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PrivacyLedger({str(self.path)!r}, total_epsilon={self.total_epsilon:g}, "
                f"total_delta={self.total_delta:g}, accountant={self.accountant!r})")

    @staticmethod
    def stored_policy(path: Union[str, os.PathLike, None] = None) -> Optional[dict[str, Any]]:
        """The budget and accountant the ledger at ``path`` was last opened with (``None`` if unknown)."""
        return read_stored_policy(path)

    # ------------------------------------------------------------------- reading
    def _groups(self, conn: sqlite3.Connection, client_id: str) -> Groups:
        return tuple(sorted(self._store.counted_spends(conn, client_id), key=release_sort_key))

    def _snapshot(self, client_id: str) -> Groups:
        with self._store.transaction("read the spends", immediate=False) as conn:
            return self._groups(conn, client_id)

    def _evaluate(self, groups: Groups) -> tuple[float, float, str]:
        """(epsilon, delta, bound) of ``groups`` under this ledger's accountant (memoised)."""
        with self._cache_lock:
            if groups in self._cache:
                self._cache.move_to_end(groups)
                return self._cache[groups]
        accountant = make_accountant(self.accountant, **self.accountant_options)
        if not getattr(accountant, "adaptive", False) and any(
                cost.mechanism.endswith(ABSTAINED_SUFFIX) for cost, _ in groups):
            raise self._store.error(
                f"holds answered-only (outcome-dependent) spends, which only a privacy filter composes "
                f"soundly; open it with accountant 'rdp-filter', not {self.accountant!r}")
        accountant.compose(groups)
        epsilon, delta = accountant.spent(self.total_delta)
        bound = getattr(accountant, "selected", None) or accountant.name
        result = (epsilon, delta, bound)
        with self._cache_lock:
            self._cache[groups] = result
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return result

    @staticmethod
    def _merge(groups: Groups, cost: ReleaseCost, queries: int) -> Groups:
        merged = dict(groups)
        merged[cost] = merged.get(cost, 0) + queries
        return tuple(sorted(merged.items(), key=release_sort_key))

    def _fits(self, spent: tuple[float, float]) -> bool:
        return within(spent[0], self.total_epsilon) and within(spent[1], self.total_delta)

    def _remaining_epsilon(self, spent_epsilon: float) -> float:
        if math.isinf(self.total_epsilon):
            return math.inf
        return max(self.total_epsilon - spent_epsilon, 0.0)

    def _verdict(
        self, client_id: str, groups: Groups, cost: ReleaseCost, queries: int
    ) -> Optional[BudgetExceededError]:
        """``None`` if ``queries`` more releases of ``cost`` fit, else the error to raise."""
        projected = self._evaluate(self._merge(groups, cost, queries))
        if self._fits(projected[:2]):
            return None
        spent = self._evaluate(groups) if groups else (0.0, 0.0, self.accountant)
        remaining = self._remaining_epsilon(spent[0])
        bound = f"{self.accountant} ({projected[2]})" if projected[2] != self.accountant else self.accountant
        message = (
            f"privacy budget exceeded for client {client_id!r}: {queries} more quer"
            f"{'y' if queries == 1 else 'ies'} of {cost.describe()} would bring the spend to "
            f"(epsilon={_fmt(projected[0])}, delta={_fmt(projected[1])}), over the budget "
            f"(epsilon={_fmt(self.total_epsilon)}, delta={_fmt(self.total_delta)}); already spent "
            f"(epsilon={_fmt(spent[0])}, delta={_fmt(spent[1])}), remaining epsilon={_fmt(remaining)} "
            f"[accountant {bound}]; nothing was charged"
        )
        return BudgetExceededError(
            message, client_id=client_id, spent=(spent[0], spent[1]), requested_queries=queries,
            projected=(projected[0], projected[1]), total=(self.total_epsilon, self.total_delta),
            remaining_epsilon=remaining,
        )

    # -------------------------------------------------------------- the protocol
    def spend(self, client_id: str, mechanism: Union[MechanismLike, ReleaseCost], queries: int = 1) -> Spend:
        """A context manager that reserves, then (on :meth:`Spend.confirm`) charges, ``queries`` releases.

        Entering it raises :class:`BudgetExceededError` if they do not fit
        (nothing charged; the client's refused counter grows by ``queries``).
        """
        client_id = _check_client_id(client_id)
        queries = _check_queries(queries)
        cost = ReleaseCost.of(mechanism)
        self._store.require_writable("spend budget")
        return Spend(self, client_id, cost, queries)

    def spend_answered_only(self, client_id: str, mechanism: Any, queries: int = 1) -> OutcomeSpend:
        """Like :meth:`spend`, for Confident-GNMax in answered-only mode (:mod:`.outcome`).

        Entering reserves the WORST case (both steps for every query) through
        the filter; :meth:`OutcomeSpend.confirm` ``(answered=k)`` keeps both
        steps for ``k`` queries and only the threshold step for the others.
        Needs accountant ``"rdp-filter"``: only a filter composes charges that
        depend on the outcomes soundly.
        """
        client_id = _check_client_id(client_id)
        queries = _check_queries(queries)
        self._require_filter("answered-only spends")
        costs = mechanism if isinstance(mechanism, AnsweredOnlyCosts) else AnsweredOnlyCosts.of(mechanism)
        self._store.require_writable("spend budget")
        return OutcomeSpend(self, client_id, costs, queries)

    def _require_filter(self, what: str) -> None:
        if not getattr(make_accountant(self.accountant, **self.accountant_options), "adaptive", False):
            raise ValueError(f"{what} depend on the outcomes and need a privacy filter: open the ledger with "
                             f"accountant='rdp-filter', not {self.accountant!r}")

    def check(
        self, client_id: str, mechanism: Union[MechanismLike, ReleaseCost], queries: int = 1
    ) -> tuple[float, float]:
        """Dry run: the (epsilon, delta) the client would have spent after ``queries`` more releases.

        Raises :class:`BudgetExceededError` if they do not fit. Writes nothing.
        """
        client_id = _check_client_id(client_id)
        queries = _check_queries(queries)
        cost = ReleaseCost.of(mechanism)
        groups = self._snapshot(client_id)
        error = self._verdict(client_id, groups, cost, queries)
        if error is not None:
            raise error
        projected = self._evaluate(self._merge(groups, cost, queries))
        return projected[0], projected[1]

    # ------------------------------------------------ the reservations interface
    # Public so that :class:`Spend` needs no private access; callers use :meth:`spend`.
    def reserve(self, client_id: str, cost: ReleaseCost, queries: int) -> int:
        """Check ``queries`` releases of ``cost`` against the budget and commit a reservation.

        Returns its id; from now on it counts as spent. Raises
        :class:`BudgetExceededError` (nothing reserved, the refusal counted) if it does not fit.
        """
        client_id = _check_client_id(client_id)
        queries = _check_queries(queries)
        if not isinstance(cost, ReleaseCost):
            raise TypeError(f"cost must be a ReleaseCost, not {type(cost).__name__}")
        self._store.require_writable("spend budget")
        for attempt in range(_OPTIMISTIC_ATTEMPTS + 1):
            last = attempt == _OPTIMISTIC_ATTEMPTS
            if not last:  # compose outside the write lock, on a snapshot
                snapshot = self._snapshot(client_id)
                error = self._verdict(client_id, snapshot, cost, queries)
            with self._store.transaction("reserve budget") as conn:
                groups = self._groups(conn, client_id)
                if last:  # contended: decide under the lock
                    snapshot, error = groups, self._verdict(client_id, groups, cost, queries)
                elif groups != snapshot:
                    continue  # changed meanwhile: release the lock (nothing written), decide again
                if error is not None:
                    self._store.record_refusal(conn, client_id, queries)
                else:
                    row_id = self._store.record_reservation(conn, client_id, cost, queries)
            if error is not None:
                logger.info("refused %d queries of client %r: %s", queries, client_id, error)
                raise error
            return row_id
        raise AssertionError("unreachable")  # pragma: no cover

    def confirm(self, reservation_id: int) -> None:
        """Mark the reservation answered. Raises :class:`LedgerError` if it is not reserved
        (voided by :meth:`reset` or :meth:`void_stale_reservations`): then nothing may be released."""
        row_id = check_int(reservation_id, name="reservation_id", minimum=1)
        with self._store.transaction("confirm a spend") as conn:
            if not self._store.mark_answered(conn, row_id):
                status = self._store.spend_status(conn, row_id)
                raise self._store.error(f"reservation {row_id} is {status!r} (voided by an audited reset or "
                                        "void of stale reservations?); the result must NOT be released")

    def confirm_outcome(self, reservation_id: int, *, costs: AnsweredOnlyCosts, answered: int) -> None:
        """Mark a worst-case reservation answered with its outcome: ``answered`` of its queries keep
        ``costs.answered``, the others are charged ``costs.abstained``. Raises :class:`LedgerError`
        if it is not a reservation of ``costs.answered`` (voided, or another mechanism's): then
        nothing may be released."""
        row_id = check_int(reservation_id, name="reservation_id", minimum=1)
        if not isinstance(costs, AnsweredOnlyCosts):
            raise TypeError(f"costs must be AnsweredOnlyCosts, not {type(costs).__name__}")
        answered = check_int(answered, name="answered", minimum=0)
        self._require_filter("answered-only confirmations")
        with self._store.transaction("confirm an answered-only spend") as conn:
            if not self._store.settle_outcome(conn, row_id, worst=costs.answered, abstained=costs.abstained,
                                              answered=answered):
                status = self._store.spend_status(conn, row_id)
                raise self._store.error(f"reservation {row_id} is {status!r} or not a worst-case reservation of "
                                        f"{costs.answered.describe()}; the result must NOT be released")

    def rollback(self, reservation_id: int) -> None:
        """Delete the reservation if it is still only reserved. Only if nothing derived from it was
        or will be released."""
        row_id = check_int(reservation_id, name="reservation_id", minimum=1)
        with self._store.transaction("roll back a reservation") as conn:
            self._store.delete_reservation(conn, row_id)

    # --------------------------------------------------------------- reporting
    def status(self, client_id: str) -> BudgetStatus:
        """The client's budget: spent and remaining (epsilon, delta), answered/reserved/refused queries."""
        client_id = _check_client_id(client_id)
        with self._store.transaction("read the status", immediate=False) as conn:
            return self._status(conn, client_id)

    def _status(self, conn: sqlite3.Connection, client_id: str) -> BudgetStatus:
        groups = self._groups(conn, client_id)
        counts = self._store.counted_queries(conn, client_id)
        refused = self._store.refused_queries(conn, client_id)
        if groups:
            spent_epsilon, spent_delta, bound = self._evaluate(groups)
        else:
            spent_epsilon, spent_delta, bound = 0.0, 0.0, None
        return BudgetStatus(
            client_id=client_id,
            accountant=self.accountant,
            bound=bound,
            total_epsilon=self.total_epsilon,
            total_delta=self.total_delta,
            spent_epsilon=spent_epsilon,
            spent_delta=spent_delta,
            remaining_epsilon=self._remaining_epsilon(spent_epsilon),
            remaining_delta=max(self.total_delta - spent_delta, 0.0),
            answered_queries=int(counts.get("answered", 0)),
            reserved_queries=int(counts.get("reserved", 0)),
            refused_queries=refused,
        )

    def clients(self) -> list[str]:
        """Every client id the ledger has seen (answered, reserved or refused), sorted."""
        with self._store.transaction("list the clients", immediate=False) as conn:
            return self._store.client_ids(conn)

    def audit_log(self, client_id: Optional[str] = None) -> list[AuditEntry]:
        """The administrator actions recorded in the ledger (oldest first)."""
        if client_id is not None:
            client_id = _check_client_id(client_id)
        with self._store.transaction("read the audit log", immediate=False) as conn:
            return self._store.audit_entries(conn, client_id)

    # ------------------------------------------------------------ administration
    def reset(self, client_id: str, *, admin: str, reason: str) -> BudgetStatus:
        """Give a client its whole budget back. Explicit administrator action only.

        Voids (does not delete) the client's spends and zeroes its refused
        counter, and records who did it, why, and what was voided in the
        persistent audit table and on the ``logging`` module (WARNING).
        Reservations in flight are voided too: confirming them then fails, so
        their results are never released. Returns the status BEFORE the reset.
        """
        client_id = _check_client_id(client_id)
        admin = _check_text("admin", admin)
        reason = _check_text("reason", reason)
        self._store.require_writable("reset a client")
        with self._store.transaction("reset a client") as conn:
            if not self._store.has_client(conn, client_id):
                raise ValueError(f"privacy ledger {self.path}: no client {client_id!r} to reset")
            before = self._status(conn, client_id)
            details = {"before": before.to_dict(), "pid": os.getpid()}
            audit_id = self._store.record_reset(conn, client_id, admin=admin, reason=reason, details=details)
        logger.warning(
            "privacy budget of client %r RESET by %r (reason: %s); voided spend epsilon=%s delta=%s, "
            "%d answered + %d reserved queries; audit id %s in %s",
            client_id, admin, reason, _fmt(before.spent_epsilon), _fmt(before.spent_delta),
            before.answered_queries, before.reserved_queries, audit_id, self.path,
        )
        return before

    def void_stale_reservations(self, *, admin: str, reason: str) -> int:
        """Void the reservations of processes that no longer run. Audited, like :meth:`reset`.

        A reservation is stale when the process that made it (its recorded
        pid) no longer runs on this machine (killed between reserve and
        confirm): no such pid, a zombie, or a pid reused by a process that
        started after the reservation (:func:`_reserver_running`). Its result
        was never released if the caller releases results only after confirm,
        as :class:`Spend` requires; call this only where that holds (e.g. a
        server restarting on its own ledger). Reservations of live processes,
        of processes whose state cannot be read (over-counted, never
        under-counted) and answered spends are left alone. Per client, the
        stale rows become ``'reset'`` (voided, not deleted) and one audit entry
        ``'void_stale_reservations'`` records who, why, which rows, queries and
        pids; a WARNING goes to ``logging``. Returns the number voided.
        """
        admin = _check_text("admin", admin)
        reason = _check_text("reason", reason)
        self._store.require_writable("void stale reservations")
        voided: list[tuple[str, int, int, int]] = []  # (client, rows, queries, audit id)
        with self._store.transaction("void stale reservations") as conn:
            stale: dict[str, list[tuple[int, int, int]]] = {}
            for row_id, client_id, queries, pid, reserved_at in self._store.reservations(conn):
                if pid is not None and not _reserver_running(pid, reserved_at):
                    stale.setdefault(client_id, []).append((row_id, queries, pid))
            for client_id, rows in stale.items():
                details = {"reservations": [r[0] for r in rows], "queries": sum(r[1] for r in rows),
                           "pids": sorted({r[2] for r in rows}), "pid": os.getpid()}
                audit_id = self._store.record_void(conn, client_id, [r[0] for r in rows], admin=admin,
                                                   reason=reason, details=details)
                voided.append((client_id, len(rows), details["queries"], audit_id))
        for client_id, count, queries, audit_id in voided:  # after the commit
            logger.warning("voided %d stale reservations (%d queries) of client %r by %r (reason: %s); "
                           "audit id %s in %s", count, queries, client_id, admin, reason, audit_id, self.path)
        return sum(v[1] for v in voided)


_PID_REUSE_MARGIN = 2.0  # seconds; a start-time reading is only this precise (/proc/stat btime)


def _reserver_running(pid: int, reserved_at: str) -> bool:
    """Whether the process that made a reservation at ``reserved_at`` may still run as ``pid``.

    False only when that is certain: no such process, a zombie, or (Linux) a
    process that started more than a couple of seconds after the reservation
    (the pid was reused, e.g. by this very process after a restart). Anything
    unknown answers True, so the reservation stays counted.
    """
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):  # exited, not yet reaped: it can release nothing any more
            return False
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        reserved = datetime.fromisoformat(reserved_at).timestamp()
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return started <= reserved + _PID_REUSE_MARGIN

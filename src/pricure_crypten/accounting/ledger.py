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

A process killed at any point leaves either nothing (before the reservation
commits: nothing was computed) or a 'reserved'/'answered' row that keeps
counting after a restart. Only :meth:`PrivacyLedger.reset`, an explicit and
audited administrator action, gives budget back.

Concurrency: every write is a ``BEGIN IMMEDIATE`` transaction, so processes
sharing the file serialise their writes. The (possibly slow, e.g. PLD)
composition runs *outside* the write lock on a snapshot of the client's
spends; inside the lock the snapshot is re-read and, if another process
changed it meanwhile, the decision is recomputed. Two requests that fit only
one at a time therefore never both pass.

Location: the ``path`` argument, else ``$PRICURE_LEDGER``, else
``platformdirs.user_data_dir("pricure-crypten")/ledger.sqlite3`` -- never the
working tree.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union
from urllib.parse import quote

import platformdirs

from ..noise import check_delta
from .base import MechanismLike, ReleaseCost, release_sort_key, within
from .errors import BudgetExceededError, LedgerError
from .registry import check_accountant_name, make_accountant
from .spend import Spend
from .status import AuditEntry, BudgetStatus

logger = logging.getLogger(__name__)

APP_NAME = "pricure-crypten"
LEDGER_FILENAME = "ledger.sqlite3"
ENV_VAR = "PRICURE_LEDGER"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x50524C47  # "PRLG": marks the SQLite file as a pricure-crypten ledger
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MAX_CLIENT_ID = 1024
_OPTIMISTIC_ATTEMPTS = 5
_CACHE_SIZE = 128

_SCHEMA = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE clients (
        client_id        TEXT PRIMARY KEY,
        refused_queries  INTEGER NOT NULL DEFAULT 0,
        refused_requests INTEGER NOT NULL DEFAULT 0,
        first_seen       TEXT NOT NULL
    )""",
    """CREATE TABLE audit (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        action    TEXT NOT NULL,
        client_id TEXT,
        admin     TEXT NOT NULL,
        reason    TEXT NOT NULL,
        details   TEXT NOT NULL
    )""",
    """CREATE TABLE spends (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        client_id        TEXT NOT NULL REFERENCES clients(client_id),
        status           TEXT NOT NULL CHECK (status IN ('reserved', 'answered', 'reset')),
        queries          INTEGER NOT NULL CHECK (queries >= 1),
        mechanism        TEXT NOT NULL,
        epsilon          REAL NOT NULL,
        delta            REAL NOT NULL,
        event            TEXT NOT NULL,
        noise_multiplier REAL,
        reserved_at      TEXT NOT NULL,
        answered_at      TEXT,
        reset_id         INTEGER REFERENCES audit(id),
        pid              INTEGER
    )""",
    "CREATE INDEX spends_by_client ON spends (client_id, status)",
)
_REQUIRED_COLUMNS = {
    "meta": {"key", "value"},
    "clients": {"client_id", "refused_queries", "refused_requests", "first_seen"},
    "audit": {"id", "at", "action", "client_id", "admin", "reason", "details"},
    "spends": {
        "id", "client_id", "status", "queries", "mechanism", "epsilon", "delta", "event",
        "noise_multiplier", "reserved_at", "answered_at", "reset_id", "pid",
    },
}
_COUNTED = "('reserved', 'answered')"  # statuses that count as spent

Groups = tuple[tuple[ReleaseCost, int], ...]


def default_ledger_path() -> Path:
    """``$PRICURE_LEDGER`` if set, else ``<user data dir>/pricure-crypten/ledger.sqlite3``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME)) / LEDGER_FILENAME


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check_client_id(client_id: Any) -> str:
    if not isinstance(client_id, str):
        raise TypeError(f"client_id must be a str, not {type(client_id).__name__}")
    if not client_id.strip():
        raise ValueError("client_id must be a non-empty string")
    if len(client_id) > _MAX_CLIENT_ID or "\x00" in client_id:
        raise ValueError(f"client_id must be at most {_MAX_CLIENT_ID} characters without NUL, "
                         f"got {client_id[:40]!r}...")
    return client_id


def _check_queries(queries: Any) -> int:
    if isinstance(queries, bool) or not isinstance(queries, numbers.Integral):
        raise TypeError(f"queries must be an int, not {type(queries).__name__}")
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    return int(queries)


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()


def _check_total_epsilon(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"total_epsilon must be a number, not {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value <= 0.0:
        raise ValueError(f"total_epsilon must be > 0 (inf means unlimited), got {value}")
    return value


def _check_total_delta(value: Any) -> float:
    try:
        return check_delta(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"total_{exc}") from None


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
        accountant: ``"auto"`` (default), ``"basic"``, ``"advanced"``, ``"rdp"`` or ``"pld"``.
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
        if self.total_delta == 0.0 and self.accountant in ("rdp", "pld"):
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
        self.read_only = read_only
        self._record_policy = record_policy
        self.timeout = float(timeout)
        if path is None:
            path = default_ledger_path()
        elif not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        if str(path) == "" or str(path) == ":memory:":
            raise ValueError("path must name a ledger file (an in-memory ledger would forget every spend)")
        self.path = Path(path).expanduser().absolute()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._cache: OrderedDict[Groups, tuple[float, float, str]] = OrderedDict()
        self._conn: Optional[sqlite3.Connection] = None
        self._open()

    # ------------------------------------------------------------------ opening
    def _error(self, what: str, exc: Optional[BaseException] = None) -> LedgerError:
        detail = f": {exc}" if exc is not None else ""
        return LedgerError(f"privacy ledger {self.path}: {what}{detail}")

    def _open(self) -> None:
        path = self.path
        if path.is_dir():
            raise self._error("is a directory, not a ledger file")
        exists = path.exists()
        if exists:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise self._error("cannot be read", exc) from None
            if head and head != _SQLITE_MAGIC:
                raise self._error(
                    "is not a SQLite database (corrupted or not a ledger); it was left untouched -- "
                    "restore it from a backup or move it away"
                )
        elif self.read_only:
            raise self._error("does not exist (nothing has been spent here yet?)")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._error("cannot create its directory", exc) from None
        mode = "ro" if self.read_only else "rwc"
        uri = f"file:{quote(str(path))}?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("cannot be opened", exc) from None
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            state = self._schema_state(conn)
            if state == "empty":
                if self.read_only:
                    raise self._error("is empty, not an initialised ledger")
                self._initialise(conn)
            self._validate(conn)
            if not self.read_only:
                mode_now = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                conn.execute("PRAGMA synchronous = FULL")
                if str(mode_now).lower() != "wal":
                    raise self._error(f"cannot switch to WAL journal mode (got {mode_now!r}); is it writable?")
                self._probe_writable(conn)
        except LedgerError:
            self._close_quietly()
            raise
        except sqlite3.Error as exc:
            self._close_quietly()
            if self.read_only and "unable to open" in str(exc):
                raise self._error("cannot be opened for reading", exc) from None
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise self._error("is not writable; refusing to answer queries whose spend cannot be recorded",
                                  exc) from None
            raise self._error("is not a usable ledger database (corrupted?); it was left untouched", exc) from None
        except BaseException:
            self._close_quietly()
            raise
        logger.debug("opened privacy ledger %s (accountant %s, budget eps=%s delta=%s, read_only=%s)",
                     path, self.accountant, self.total_epsilon, self.total_delta, self.read_only)

    def _retry(self, fn):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _schema_state(conn: sqlite3.Connection) -> str:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and n_objects == 0:
            return "empty"
        return "existing"

    def _initialise(self, conn: sqlite3.Connection) -> None:
        def init() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._schema_state(conn) == "empty":  # another process may have won the race
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("created_at", _now()),
                        ("application", APP_NAME),
                    ])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        self._retry(init)
        logger.info("created privacy ledger %s (schema version %d)", self.path, SCHEMA_VERSION)

    def _validate(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        if app_id != APPLICATION_ID:
            raise self._error(
                f"is a SQLite database but not a pricure-crypten ledger (application_id {app_id}, tables "
                f"{', '.join(tables) or 'none'}); it was left untouched"
            )
        if version != SCHEMA_VERSION:
            newer = "a newer" if version > SCHEMA_VERSION else "an older"
            raise self._error(f"has ledger schema version {version}, written by {newer} pricure-crypten "
                              f"(this one reads version {SCHEMA_VERSION}); it was left untouched")
        for table, columns in _REQUIRED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if not columns <= have:
                missing = ", ".join(sorted(columns - have))
                raise self._error(f"has the wrong schema (table {table!r} lacks {missing}); it was left untouched")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise self._error(f"has an inconsistent schema version in its meta table ({row}); left untouched")
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise self._error(f"failed SQLite's integrity check ({check[:3]}); it was left untouched")

    def _probe_writable(self, conn: sqlite3.Connection) -> None:
        policy = json.dumps({
            "total_epsilon": self.total_epsilon,
            "total_delta": self.total_delta,
            "accountant": self.accountant,
            "accountant_options": self.accountant_options,
        }, default=str)
        try:
            with self._transaction() as c:
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_opened_at', ?)", (_now(),))
                if self._record_policy:
                    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_policy', ?)", (policy,))
        except sqlite3.Error as exc:
            raise self._error("is not writable; refusing to answer queries whose spend cannot be recorded",
                              exc) from None

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            self._close_quietly()

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
        path = Path(path).expanduser() if path is not None else default_ledger_path()
        if not path.is_file():
            return None
        try:
            conn = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True, timeout=5.0)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'last_policy'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------- transactions
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"privacy ledger {self.path} is closed")
        if os.getpid() != self._pid:
            raise LedgerError(f"privacy ledger {self.path} was opened in process {self._pid}; "
                              "open a new PrivacyLedger in each process")
        return self._conn

    @contextmanager
    def _transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise

    @contextmanager
    def _db(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if "readonly" in str(exc):
                raise self._error(f"is not writable ({action})", exc) from None
            if "locked" in str(exc) or "busy" in str(exc):
                raise self._error(f"is busy: another process held its lock for more than {self.timeout:g}s "
                                  f"({action})", exc) from None
            raise self._error(f"database error while trying to {action}", exc) from None

    def _require_writable(self, action: str) -> None:
        if self.read_only:
            raise self._error(f"was opened read-only; cannot {action}")

    # ------------------------------------------------------------------- reading
    def _groups(self, conn: sqlite3.Connection, client_id: str) -> Groups:
        rows = conn.execute(
            f"SELECT mechanism, epsilon, delta, event, noise_multiplier, SUM(queries) FROM spends "
            f"WHERE client_id = ? AND status IN {_COUNTED} "
            f"GROUP BY mechanism, epsilon, delta, event, noise_multiplier",
            (client_id,),
        ).fetchall()
        groups = []
        for mechanism, epsilon, delta, event, nm, count in rows:
            try:
                cost = ReleaseCost(mechanism, epsilon, delta, event, nm)
            except (TypeError, ValueError) as exc:
                raise self._error(f"holds an invalid spend of client {client_id!r}", exc) from None
            groups.append((cost, int(count)))
        return tuple(sorted(groups, key=release_sort_key))

    def _snapshot(self, client_id: str) -> Groups:
        with self._db("read the spends"), self._transaction(immediate=False) as conn:
            return self._groups(conn, client_id)

    def _evaluate(self, groups: Groups) -> tuple[float, float, str]:
        """(epsilon, delta, bound) of ``groups`` under this ledger's accountant (memoised)."""
        with self._lock:
            if groups in self._cache:
                self._cache.move_to_end(groups)
                return self._cache[groups]
        accountant = make_accountant(self.accountant, **self.accountant_options)
        accountant.compose(groups)
        epsilon, delta = accountant.spent(self.total_delta)
        bound = getattr(accountant, "selected", None) or accountant.name
        result = (epsilon, delta, bound)
        with self._lock:
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
        self._require_writable("spend budget")
        return Spend(self, client_id, cost, queries)

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

    def _reserve(self, client_id: str, cost: ReleaseCost, queries: int) -> int:
        self._require_writable("spend budget")
        for attempt in range(_OPTIMISTIC_ATTEMPTS + 1):
            last = attempt == _OPTIMISTIC_ATTEMPTS
            if not last:  # compose outside the write lock, on a snapshot
                snapshot = self._snapshot(client_id)
                error = self._verdict(client_id, snapshot, cost, queries)
            with self._db("reserve budget"), self._transaction() as conn:
                groups = self._groups(conn, client_id)
                if last:  # contended: decide under the lock
                    snapshot, error = groups, self._verdict(client_id, groups, cost, queries)
                elif groups != snapshot:
                    continue  # changed meanwhile: release the lock (nothing written), decide again
                now = _now()
                conn.execute(
                    "INSERT INTO clients (client_id, first_seen) VALUES (?, ?) ON CONFLICT (client_id) DO NOTHING",
                    (client_id, now),
                )
                if error is not None:
                    conn.execute(
                        "UPDATE clients SET refused_queries = refused_queries + ?, "
                        "refused_requests = refused_requests + 1 WHERE client_id = ?",
                        (queries, client_id),
                    )
                    row_id = None
                else:
                    row_id = conn.execute(
                        "INSERT INTO spends (client_id, status, queries, mechanism, epsilon, delta, event, "
                        "noise_multiplier, reserved_at, pid) VALUES (?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?)",
                        (client_id, queries, cost.mechanism, cost.epsilon, cost.delta, cost.event,
                         cost.noise_multiplier, now, os.getpid()),
                    ).lastrowid
            if error is not None:
                logger.info("refused %d queries of client %r: %s", queries, client_id, error)
                raise error
            return int(row_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def _confirm(self, row_id: int) -> None:
        with self._db("confirm a spend"), self._transaction() as conn:
            updated = conn.execute(
                "UPDATE spends SET status = 'answered', answered_at = ? WHERE id = ? AND status = 'reserved'",
                (_now(), row_id),
            ).rowcount
            if updated != 1:
                row = conn.execute("SELECT status FROM spends WHERE id = ?", (row_id,)).fetchone()
                status = row[0] if row else "deleted"
                raise self._error(f"reservation {row_id} is {status!r} (voided by an administrator reset?); "
                                  "the result must NOT be released")

    def _rollback(self, row_id: int) -> None:
        with self._db("roll back a reservation"), self._transaction() as conn:
            conn.execute("DELETE FROM spends WHERE id = ? AND status = 'reserved'", (row_id,))

    # --------------------------------------------------------------- reporting
    def status(self, client_id: str) -> BudgetStatus:
        """The client's budget: spent and remaining (epsilon, delta), answered/reserved/refused queries."""
        client_id = _check_client_id(client_id)
        with self._db("read the status"), self._transaction(immediate=False) as conn:
            return self._status(conn, client_id)

    def _status(self, conn: sqlite3.Connection, client_id: str) -> BudgetStatus:
        groups = self._groups(conn, client_id)
        counts = dict(conn.execute(
            f"SELECT status, COALESCE(SUM(queries), 0) FROM spends WHERE client_id = ? AND status IN {_COUNTED} "
            "GROUP BY status", (client_id,)).fetchall())
        row = conn.execute("SELECT refused_queries FROM clients WHERE client_id = ?", (client_id,)).fetchone()
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
            refused_queries=int(row[0]) if row else 0,
        )

    def clients(self) -> list[str]:
        """Every client id the ledger has seen (answered, reserved or refused), sorted."""
        with self._db("list the clients"), self._transaction(immediate=False) as conn:
            return [r[0] for r in conn.execute("SELECT client_id FROM clients ORDER BY client_id")]

    def audit_log(self, client_id: Optional[str] = None) -> list[AuditEntry]:
        """The administrator actions recorded in the ledger (oldest first)."""
        sql = "SELECT id, at, action, client_id, admin, reason, details FROM audit"
        args: tuple = ()
        if client_id is not None:
            sql += " WHERE client_id = ?"
            args = (_check_client_id(client_id),)
        with self._db("read the audit log"), self._transaction(immediate=False) as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

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
        self._require_writable("reset a client")
        with self._db("reset a client"), self._transaction() as conn:
            if conn.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone() is None:
                raise ValueError(f"privacy ledger {self.path}: no client {client_id!r} to reset")
            before = self._status(conn, client_id)
            details = {"before": before.to_dict(), "pid": os.getpid()}
            audit_id = conn.execute(
                "INSERT INTO audit (at, action, client_id, admin, reason, details) VALUES (?, 'reset', ?, ?, ?, ?)",
                (_now(), client_id, admin, reason, json.dumps(details, default=str)),
            ).lastrowid
            conn.execute(
                f"UPDATE spends SET status = 'reset', reset_id = ? WHERE client_id = ? AND status IN {_COUNTED}",
                (audit_id, client_id),
            )
            conn.execute("UPDATE clients SET refused_queries = 0, refused_requests = 0 WHERE client_id = ?",
                         (client_id,))
        logger.warning(
            "privacy budget of client %r RESET by %r (reason: %s); voided spend epsilon=%s delta=%s, "
            "%d answered + %d reserved queries; audit id %s in %s",
            client_id, admin, reason, _fmt(before.spent_epsilon), _fmt(before.spent_delta),
            before.answered_queries, before.reserved_queries, audit_id, self.path,
        )
        return before

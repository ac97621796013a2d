"""The privacy ledger's SQLite file: location, schema, validation, transactions, rows.

:class:`LedgerStore` owns the file behind a
:class:`~pricure_crypten.privacy.accounting.ledger.PrivacyLedger`. It finds the file,
creates the schema in a new one, and refuses an existing file that is
corrupted, foreign or of another schema version (:class:`LedgerError`, the
file left untouched, never reset). It checks that the file is writable
before any query is answered, serialises writes with ``BEGIN IMMEDIATE``
transactions, and turns SQLite errors into :class:`LedgerError` naming the
file. Its row helpers read and write spends, clients and audit entries; what
the rows mean for a client's budget is decided in :mod:`.ledger`.

Who sees what: the file is kept by the party that admits queries (the
servers' coordinator). Per client id it holds only mechanism parameters,
query counts, timestamps and process ids, plus the administrators' audit
trail -- never a query, a vote, a histogram or a label.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar, Union
from urllib.parse import quote

import platformdirs

from .base import ReleaseCost
from .errors import LedgerError
from .status import AuditEntry

logger = logging.getLogger("pricure_crypten.privacy.accounting.ledger")

APP_NAME = "pricure-crypten"
LEDGER_FILENAME = "ledger.sqlite3"
ENV_VAR = "PRICURE_LEDGER"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x50524C47  # "PRLG": marks the SQLite file as a pricure-crypten ledger
_SQLITE_MAGIC = b"SQLite format 3\x00"

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

_T = TypeVar("_T")


def default_ledger_path() -> Path:
    """``$PRICURE_LEDGER`` if set, else ``<user data dir>/pricure-crypten/ledger.sqlite3``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME)) / LEDGER_FILENAME


def read_stored_policy(path: Union[str, os.PathLike, None] = None) -> Optional[dict[str, Any]]:
    """The ``last_policy`` recorded in the ledger at ``path`` (``None`` if missing or unreadable)."""
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class LedgerStore:
    """One open ledger file: its connection, its lock and its transactions.

    Args:
        path: the SQLite file, or ``None`` for :func:`default_ledger_path`.
        read_only: open without writing; the file must exist.
        timeout: seconds to wait for another process's write lock (validated by the caller).
        policy: recorded as the file's ``last_policy`` when opened for writing (``None``: not recorded).

    A connection belongs to the process that opened it; threads share it
    under the store's lock.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike, None],
        *,
        read_only: bool,
        timeout: float,
        policy: Optional[Mapping[str, Any]],
    ) -> None:
        if path is None:
            path = default_ledger_path()
        elif not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        if str(path) == "" or str(path) == ":memory:":
            raise ValueError("path must name a ledger file (an in-memory ledger would forget every spend)")
        self.path = Path(path).expanduser().absolute()
        self.read_only = read_only
        self.timeout = timeout
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn: Optional[sqlite3.Connection] = None
        self._open(policy)

    def error(self, what: str, exc: Optional[BaseException] = None) -> LedgerError:
        """A :class:`LedgerError` naming this ledger file."""
        detail = f": {exc}" if exc is not None else ""
        return LedgerError(f"privacy ledger {self.path}: {what}{detail}")

    # ------------------------------------------------------------------ opening
    def _open(self, policy: Optional[Mapping[str, Any]]) -> None:
        path = self.path
        if path.is_dir():
            raise self.error("is a directory, not a ledger file")
        exists = path.exists()
        if exists:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise self.error("cannot be read", exc) from None
            if head and head != _SQLITE_MAGIC:
                raise self.error(
                    "is not a SQLite database (corrupted or not a ledger); it was left untouched -- "
                    "restore it from a backup or move it away"
                )
        elif self.read_only:
            raise self.error("does not exist (nothing has been spent here yet?)")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self.error("cannot create its directory", exc) from None
        mode = "ro" if self.read_only else "rwc"
        uri = f"file:{quote(str(path))}?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self.error("cannot be opened", exc) from None
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            state = self._schema_state(conn)
            if state == "empty":
                if self.read_only:
                    raise self.error("is empty, not an initialised ledger")
                self._initialise(conn)
            self._validate(conn)
            if not self.read_only:
                mode_now = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                conn.execute("PRAGMA synchronous = FULL")
                if str(mode_now).lower() != "wal":
                    raise self.error(f"cannot switch to WAL journal mode (got {mode_now!r}); is it writable?")
                self._probe_writable(policy)
        except LedgerError:
            self._close_quietly()
            raise
        except sqlite3.Error as exc:
            self._close_quietly()
            if self.read_only and "unable to open" in str(exc):
                raise self.error("cannot be opened for reading", exc) from None
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise self.error("is not writable; refusing to answer queries whose spend cannot be recorded",
                                 exc) from None
            raise self.error("is not a usable ledger database (corrupted?); it was left untouched", exc) from None
        except BaseException:
            self._close_quietly()
            raise

    def _retry(self, fn: Callable[[], _T]) -> _T:
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
            raise self.error(
                f"is a SQLite database but not a pricure-crypten ledger (application_id {app_id}, tables "
                f"{', '.join(tables) or 'none'}); it was left untouched"
            )
        if version != SCHEMA_VERSION:
            newer = "a newer" if version > SCHEMA_VERSION else "an older"
            raise self.error(f"has ledger schema version {version}, written by {newer} pricure-crypten "
                             f"(this one reads version {SCHEMA_VERSION}); it was left untouched")
        for table, columns in _REQUIRED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if not columns <= have:
                missing = ", ".join(sorted(columns - have))
                raise self.error(f"has the wrong schema (table {table!r} lacks {missing}); it was left untouched")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise self.error(f"has an inconsistent schema version in its meta table ({row}); left untouched")
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise self.error(f"failed SQLite's integrity check ({check[:3]}); it was left untouched")

    def _probe_writable(self, policy: Optional[Mapping[str, Any]]) -> None:
        try:
            with self._transaction() as c:
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_opened_at', ?)", (_now(),))
                if policy is not None:
                    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_policy', ?)",
                              (json.dumps(dict(policy), default=str),))
        except sqlite3.Error as exc:
            raise self.error("is not writable; refusing to answer queries whose spend cannot be recorded",
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
                raise self.error(f"is not writable ({action})", exc) from None
            if "locked" in str(exc) or "busy" in str(exc):
                raise self.error(f"is busy: another process held its lock for more than {self.timeout:g}s "
                                 f"({action})", exc) from None
            raise self.error(f"database error while trying to {action}", exc) from None

    @contextmanager
    def transaction(self, action: str, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction, committed on success and rolled back on any exception.

        ``immediate`` takes the write lock at once (``BEGIN IMMEDIATE``), so
        writers sharing the file serialise; reads pass ``immediate=False``.
        SQLite errors become :class:`LedgerError` saying what failed (``action``).
        """
        with self._db(action), self._transaction(immediate) as conn:
            yield conn

    def require_writable(self, action: str) -> None:
        """Raise :class:`LedgerError` if the file was opened read-only."""
        if self.read_only:
            raise self.error(f"was opened read-only; cannot {action}")

    # --------------------------------------------------------------- row helpers
    def counted_spends(self, conn: sqlite3.Connection, client_id: str) -> list[tuple[ReleaseCost, int]]:
        """The client's spends that count (reserved or answered): queries summed per release cost."""
        rows = conn.execute(
            f"SELECT mechanism, epsilon, delta, event, noise_multiplier, SUM(queries) FROM spends "
            f"WHERE client_id = ? AND status IN {_COUNTED} "
            f"GROUP BY mechanism, epsilon, delta, event, noise_multiplier",
            (client_id,),
        ).fetchall()
        spends = []
        for mechanism, epsilon, delta, event, nm, count in rows:
            try:
                cost = ReleaseCost(mechanism, epsilon, delta, event, nm)
            except (TypeError, ValueError) as exc:
                raise self.error(f"holds an invalid spend of client {client_id!r}", exc) from None
            spends.append((cost, int(count)))
        return spends

    @staticmethod
    def counted_queries(conn: sqlite3.Connection, client_id: str) -> dict[str, int]:
        """The client's queries that count as spent, by status (``reserved``, ``answered``)."""
        return dict(conn.execute(
            f"SELECT status, COALESCE(SUM(queries), 0) FROM spends WHERE client_id = ? AND status IN {_COUNTED} "
            "GROUP BY status", (client_id,)).fetchall())

    @staticmethod
    def refused_queries(conn: sqlite3.Connection, client_id: str) -> int:
        """The client's refused queries since its last reset (0 for an unknown client)."""
        row = conn.execute("SELECT refused_queries FROM clients WHERE client_id = ?", (client_id,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def has_client(conn: sqlite3.Connection, client_id: str) -> bool:
        """Whether the ledger has seen the client."""
        return conn.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone() is not None

    @staticmethod
    def client_ids(conn: sqlite3.Connection) -> list[str]:
        """Every client id the ledger has seen, sorted."""
        return [r[0] for r in conn.execute("SELECT client_id FROM clients ORDER BY client_id")]

    @staticmethod
    def audit_entries(conn: sqlite3.Connection, client_id: Optional[str] = None) -> list[AuditEntry]:
        """The audit table (of one client if given), oldest first."""
        sql = "SELECT id, at, action, client_id, admin, reason, details FROM audit"
        args: tuple = ()
        if client_id is not None:
            sql += " WHERE client_id = ?"
            args = (client_id,)
        rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    @staticmethod
    def _add_client(conn: sqlite3.Connection, client_id: str, now: str) -> None:
        conn.execute(
            "INSERT INTO clients (client_id, first_seen) VALUES (?, ?) ON CONFLICT (client_id) DO NOTHING",
            (client_id, now),
        )

    def record_refusal(self, conn: sqlite3.Connection, client_id: str, queries: int) -> None:
        """Count ``queries`` refused queries (one refused request) of the client."""
        self._add_client(conn, client_id, _now())
        conn.execute(
            "UPDATE clients SET refused_queries = refused_queries + ?, "
            "refused_requests = refused_requests + 1 WHERE client_id = ?",
            (queries, client_id),
        )

    def record_reservation(self, conn: sqlite3.Connection, client_id: str, cost: ReleaseCost, queries: int) -> int:
        """Insert a 'reserved' spend of ``queries`` releases of ``cost``; returns its row id."""
        now = _now()
        self._add_client(conn, client_id, now)
        return int(conn.execute(
            "INSERT INTO spends (client_id, status, queries, mechanism, epsilon, delta, event, "
            "noise_multiplier, reserved_at, pid) VALUES (?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?)",
            (client_id, queries, cost.mechanism, cost.epsilon, cost.delta, cost.event,
             cost.noise_multiplier, now, os.getpid()),
        ).lastrowid)

    @staticmethod
    def mark_answered(conn: sqlite3.Connection, row_id: int) -> bool:
        """Turn the 'reserved' spend ``row_id`` into 'answered'; False if it is not reserved (any more)."""
        return conn.execute(
            "UPDATE spends SET status = 'answered', answered_at = ? WHERE id = ? AND status = 'reserved'",
            (_now(), row_id),
        ).rowcount == 1

    @staticmethod
    def settle_outcome(conn: sqlite3.Connection, row_id: int, *, worst: ReleaseCost, abstained: ReleaseCost,
                       answered: int) -> bool:
        """Answer the 'reserved' spend ``row_id`` of ``worst`` with its outcome: ``answered`` of its
        queries keep ``worst``, the others become ``abstained`` (a new 'answered' row). False if the
        row is not reserved (any more) or was not reserved for ``worst``; ValueError if ``answered``
        exceeds its queries. One transaction: the caller's."""
        row = conn.execute(
            "SELECT client_id, queries, mechanism, epsilon, delta, event, noise_multiplier, reserved_at, pid "
            "FROM spends WHERE id = ? AND status = 'reserved'", (row_id,)).fetchone()
        if row is None or tuple(row[2:7]) != (worst.mechanism, worst.epsilon, worst.delta, worst.event,
                                             worst.noise_multiplier):
            return False
        client_id, queries, reserved_at, pid = row[0], int(row[1]), row[7], row[8]
        if not 0 <= answered <= queries:
            raise ValueError(f"answered={answered} is not between 0 and the {queries} reserved queries")
        now = _now()
        if not answered:  # all abstained: the row itself becomes threshold-only
            conn.execute(
                "UPDATE spends SET status = 'answered', answered_at = ?, mechanism = ?, epsilon = ?, delta = ?, "
                "event = ?, noise_multiplier = ? WHERE id = ?",
                (now, abstained.mechanism, abstained.epsilon, abstained.delta, abstained.event,
                 abstained.noise_multiplier, row_id))
            return True
        conn.execute("UPDATE spends SET status = 'answered', answered_at = ?, queries = ? WHERE id = ?",
                     (now, answered, row_id))
        if answered < queries:
            conn.execute(
                "INSERT INTO spends (client_id, status, queries, mechanism, epsilon, delta, event, "
                "noise_multiplier, reserved_at, answered_at, pid) VALUES (?, 'answered', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (client_id, queries - answered, abstained.mechanism, abstained.epsilon, abstained.delta,
                 abstained.event, abstained.noise_multiplier, reserved_at, now, pid))
        return True

    @staticmethod
    def spend_status(conn: sqlite3.Connection, row_id: int) -> str:
        """The status of the spend ``row_id`` (``"deleted"`` if there is none)."""
        row = conn.execute("SELECT status FROM spends WHERE id = ?", (row_id,)).fetchone()
        return row[0] if row else "deleted"

    @staticmethod
    def delete_reservation(conn: sqlite3.Connection, row_id: int) -> None:
        """Delete the spend ``row_id`` if it is still only reserved."""
        conn.execute("DELETE FROM spends WHERE id = ? AND status = 'reserved'", (row_id,))

    @staticmethod
    def record_reset(
        conn: sqlite3.Connection, client_id: str, *, admin: str, reason: str, details: Mapping[str, Any]
    ) -> int:
        """Audit a reset, void the client's counted spends and zero its refusals; returns the audit id."""
        audit_id = conn.execute(
            "INSERT INTO audit (at, action, client_id, admin, reason, details) VALUES (?, 'reset', ?, ?, ?, ?)",
            (_now(), client_id, admin, reason, json.dumps(dict(details), default=str)),
        ).lastrowid
        conn.execute(
            f"UPDATE spends SET status = 'reset', reset_id = ? WHERE client_id = ? AND status IN {_COUNTED}",
            (audit_id, client_id),
        )
        conn.execute("UPDATE clients SET refused_queries = 0, refused_requests = 0 WHERE client_id = ?",
                     (client_id,))
        return int(audit_id)

    @staticmethod
    def reservations(conn: sqlite3.Connection) -> list[tuple[int, str, int, Optional[int], str]]:
        """Every spend still only reserved: (id, client_id, queries, pid, reserved_at), oldest first."""
        return [(int(r[0]), r[1], int(r[2]), r[3], r[4]) for r in conn.execute(
            "SELECT id, client_id, queries, pid, reserved_at FROM spends WHERE status = 'reserved' ORDER BY id")]

    @staticmethod
    def record_void(
        conn: sqlite3.Connection, client_id: str, row_ids: list[int], *, admin: str, reason: str,
        details: Mapping[str, Any],
    ) -> int:
        """Audit the voiding of the client's reservations ``row_ids`` and void them (status 'reset',
        rows kept); returns the audit id."""
        audit_id = conn.execute(
            "INSERT INTO audit (at, action, client_id, admin, reason, details) "
            "VALUES (?, 'void_stale_reservations', ?, ?, ?, ?)",
            (_now(), client_id, admin, reason, json.dumps(dict(details), default=str)),
        ).lastrowid
        conn.executemany(
            "UPDATE spends SET status = 'reset', reset_id = ? WHERE id = ? AND client_id = ? AND status = 'reserved'",
            [(audit_id, row_id, client_id) for row_id in row_ids],
        )
        return int(audit_id)

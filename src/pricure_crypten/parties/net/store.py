"""What a networked server keeps on disk: the owners' share bundles and every request id it accepted.

* :class:`ModelStore`: the owners' uploads (current and one previous version
  per owner), each checked completely before it is stored and again when loaded;
* :func:`choose_versions`: per owner, the upload every server holds (a pure
  function of public metadata, so every server computes the same choice);
* :class:`RequestLog`: every accepted request id, so that a replay is refused even after a restart.

Who sees what: a bundle on disk is one share of every parameter (uniformly
random on its own); the log holds ids, client identities and statuses (public metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .wire import BundleLimits, WireError, bundle_from_bytes


def choose_versions(holdings: Sequence[dict], loaded: dict) -> dict[str, str]:
    """Per owner, the upload every server holds (as its current or previous version); owners without one are out.

    ``holdings[rank]`` maps owner -> (current upload id, previous upload id
    or None) on that server. Among the versions every server holds, the one
    that is current on the most servers is chosen (then the one being served,
    then the smallest id): an upload that has reached only some servers
    leaves the owner on its previous version if every server still holds it,
    and a withdrawal on any server takes the owner out. A pure function of
    public metadata, so every server computes the same choice.
    """
    owners = set(holdings[0]).intersection(*holdings[1:])
    out = {}
    for owner in sorted(owners):
        common = set.intersection(*({v for v in h[owner] if v} for h in holdings))
        if common:
            current = [h[owner][0] for h in holdings]
            out[owner] = max(sorted(common), key=lambda u: (current.count(u), u == loaded.get(owner)))
    return out


class RequestLog:
    """Every request id this server ever accepted, on disk: a replayed id is refused even after a restart."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, client TEXT NOT NULL, "
                         "status TEXT NOT NULL, error TEXT)")
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(requests)")]
        if "at" not in columns:  # a data dir of an older version: its ids count as claimed now
            self._db.execute("ALTER TABLE requests ADD COLUMN at REAL NOT NULL DEFAULT 0")
            self._db.execute("UPDATE requests SET at = ?", (time.time(),))
        self._db.execute("CREATE INDEX IF NOT EXISTS requests_at ON requests (at)")

    def claim(self, request_id: str, client: str) -> bool:
        with self._lock:
            try:
                self._db.execute("INSERT INTO requests (id, client, status, error, at) VALUES (?, ?, 'pending', "
                                 "NULL, ?)", (request_id, client, time.time()))
                return True
            except sqlite3.IntegrityError:
                return False

    def prune(self, *, retention: float, max_entries: int) -> int:
        """Forget finished ids older than ``retention`` seconds, and the oldest beyond ``max_entries``.

        A forgotten id could be submitted again by its client; it is then a
        new request, answered and charged like any other.
        """
        with self._lock:
            gone = self._db.execute("DELETE FROM requests WHERE status != 'pending' AND at < ?",
                                    (time.time() - retention,)).rowcount
            extra = self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] - max_entries
            if extra > 0:
                gone += self._db.execute("DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE status "
                                         "!= 'pending' ORDER BY at LIMIT ?)", (extra,)).rowcount
            return gone

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def finish(self, request_id: str, status: str, error: Optional[str] = None) -> None:
        with self._lock:
            self._db.execute("UPDATE requests SET status = ?, error = ? WHERE id = ?", (status, error, request_id))

    def lookup(self, request_id: str) -> Optional[tuple[str, str, Optional[str]]]:
        with self._lock:
            return self._db.execute("SELECT client, status, error FROM requests WHERE id = ?",
                                    (request_id,)).fetchone()

    def fail_unfinished(self, error: str) -> int:
        with self._lock:
            return self._db.execute("UPDATE requests SET status = 'failed', error = ? WHERE status = 'pending'",
                                    (error,)).rowcount


class ModelStore:
    """The owners' share bundles on disk (``models/OWNER.npz`` + ``.json``); on their own, uniformly random.

    A bundle is checked completely (:func:`~.wire.bundle_from_bytes` with this
    server's :class:`~.wire.BundleLimits`) before it is stored, and again when
    it is loaded: a stored bundle that fails then is reported, never raised.
    """

    def __init__(self, directory: Path, limits: BundleLimits) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.previous = directory / "previous"  # one earlier version per owner, until its successor is served
        self.limits = limits
        self.max_bytes = limits.max_bytes
        self._lock = threading.Lock()

    def meta(self) -> dict[str, dict]:
        with self._lock:
            return self._meta_unlocked()

    def put(self, owner: str, upload_id: str, data: bytes, *, keep: Optional[str] = None) -> dict:
        """Store an upload as the owner's current one; the version being served (``keep``) stays as its previous one.

        One previous version per owner is kept (``previous/OWNER.*``) so that
        an owner whose new upload has reached only some servers can go on
        being served with the version every server still holds.
        """
        bundle, shape, classes = bundle_from_bytes(data, owner=owner, limits=self.limits)  # checks first
        with self._lock:
            for other, meta in self._meta_unlocked().items():
                if other != owner and (tuple(meta["input_shape"]) != shape or meta["num_classes"] != classes):
                    raise WireError(f"this model takes inputs {list(shape)} with {classes} classes, but owner "
                                    f"{other}'s takes {meta['input_shape']} with {meta['num_classes']}")
            meta = {"owner": owner, "upload_id": upload_id, "input_shape": list(shape), "num_classes": classes,
                    "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            current = self._upload_id(self.dir, owner)
            previous = self._upload_id(self.previous, owner)
            if current is not None and current != upload_id and not (previous is not None and previous == keep
                                                                      and current != keep):
                self.previous.mkdir(exist_ok=True)  # the current one becomes the previous one
                for suffix in (".npz", ".json"):
                    os.replace(self.dir / f"{owner}{suffix}", self.previous / f"{owner}{suffix}")
            tmp = self.dir / f".{owner}.npz.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.dir / f"{owner}.npz")
            tmp = self.dir / f".{owner}.json.tmp"
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, self.dir / f"{owner}.json")
        return meta

    @staticmethod
    def _upload_id(directory: Path, owner: str) -> Optional[str]:
        try:
            return str(json.loads((directory / f"{owner}.json").read_text())["upload_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def holdings(self) -> dict[str, tuple[Optional[str], Optional[str]]]:
        """owner -> (current upload id, previous upload id or None): what this server could load (metadata only)."""
        with self._lock:
            out = {}
            for owner in self._meta_unlocked():
                out[owner] = (self._upload_id(self.dir, owner), self._upload_id(self.previous, owner))
            return {o: v for o, v in out.items() if v[0] is not None}

    def drop_previous(self, owner: str, upload_id: str) -> None:
        """Forget an owner's previous version ``upload_id`` (its current one is being served everywhere)."""
        with self._lock:
            if self._upload_id(self.previous, owner) != upload_id:
                return  # replaced meanwhile by the version being served: kept
            for suffix in (".json", ".npz"):
                (self.previous / f"{owner}{suffix}").unlink(missing_ok=True)

    def _meta_unlocked(self) -> dict[str, dict]:
        out = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return out

    def remove(self, owner: str) -> bool:
        with self._lock:
            found = (self.dir / f"{owner}.json").exists()
            for directory in (self.dir, self.previous):  # a withdrawal removes every version
                for suffix in (".json", ".npz"):
                    (directory / f"{owner}{suffix}").unlink(missing_ok=True)
            return found

    def load(self, wanted: list[tuple[str, str]]) -> dict[str, Any]:
        """For each (owner, upload id): its bundle, None if this server lacks that upload, or why it is unusable.

        The upload is looked for as the owner's current version, then as its previous one.
        """
        out: dict[str, Any] = {}
        with self._lock:
            for owner, upload_id in wanted:
                try:
                    directory = next((d for d in (self.dir, self.previous)
                                      if self._upload_id(d, owner) == upload_id), None)
                    if directory is None:
                        out[owner] = None
                        continue
                    data = (directory / f"{owner}.npz").read_bytes()
                except (OSError, ValueError, KeyError, TypeError):
                    out[owner] = None
                    continue
                try:
                    out[owner] = bundle_from_bytes(data, owner=owner, limits=self.limits)[0]
                except WireError as error:
                    out[owner] = f"the stored bundle is refused: {error}"
        return out

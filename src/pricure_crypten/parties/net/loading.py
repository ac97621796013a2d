"""Which owners' models one server loads: the agreement across servers, quarantine, and the Offline stock.

Every tick each server says which uploads it holds per owner (current and
previous version ids; :mod:`.loop` gathers them). If the holdings changed,
the tick is a load (:meth:`Loading.agree_and_load`): per owner, the upload
every server holds (:func:`~.store.choose_versions`), so a withdrawal on any
server takes that owner out of the next batch, and an owner whose new upload
is on only some servers stays on its previous version if every server still
holds it (else it is out until its upload is everywhere), without holding
back the other owners. Every server votes per owner and a bundle that is
unusable anywhere is quarantined (not loaded; its owner sees why) while the
others load. A bundle that kills the party process while it is built or
loaded is named in ``loading.json`` first, so the restarted process votes it
unusable instead of dying on it again (no restart loop).

The owners' shares are loaded with the same settings as in library mode
(:func:`~.config.load_settings`). With Offline batch sizes, every server
stocks their dealer tuples after each load (all servers in lockstep).

Who sees what: this server holds one share of every loaded owner's model;
what the servers exchange here is public metadata (upload ids, votes,
quarantine reasons). An owner sees the status of its own upload only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ...config import Offline
from ..serving.messages import Load, Precompute, ServerSettings
from .config import Seat
from .store import ModelStore, choose_versions

logger = logging.getLogger("pricure_crypten.serve")

LOADING_MARKER = "loading.json"
DIED_LOADING = "the server's party process died while building or loading this upload (a signal or a crash)"


class Loading:
    """The owners' models this server serves, and how all servers agree on them.

    Args:
        seat: this server's place (its rank, and the data directory that holds ``loading.json``).
        servers: the number of servers.
        models: the stored uploads (:class:`~.store.ModelStore`).
        settings: what the owners' shares are loaded with (never a seed).
        offline: the batch sizes to stock after each load.
        lock: the node's lock (guards ``loaded``, ``considered``, ``quarantined``, ``offline_figures``).
    """

    def __init__(self, *, seat: Seat, servers: int, models: ModelStore, settings: ServerSettings, offline: Offline,
                 lock: threading.Lock) -> None:
        self.rank, self.servers, self.models, self.settings, self.offline, self.lock = (
            seat.rank, servers, models, settings, offline, lock)
        self.loaded: list[tuple[str, str]] = []
        self.considered: list = []  # the holdings the last load decided on (loaded or not)
        self.quarantined: dict[str, dict] = {}  # owner -> {"upload_id", "reason"}: not loaded, others unaffected
        self.aggregation_ready: Optional[bool] = False
        self.offline_figures: list = []  # this server's OfflineReply figures, latest last (public)
        self._next_load_try = 0.0
        self._marker = Path(seat.data_dir) / LOADING_MARKER
        self.died_loading = _read_loading_marker(self._marker)
        if self.died_loading:
            logger.error("the previous party process died while building or loading the uploads %s: they are "
                         "voted unusable (quarantined on every server)",
                         ", ".join(f"{o}/{u}" for o, u in sorted(self.died_loading)))

    # -- the front door's side --

    def model_status(self, owner: str) -> Optional[dict]:
        """An owner's view of its own upload on this server: metadata and whether it is loaded or quarantined."""
        meta = self.models.meta().get(owner)
        if meta is None:
            return None
        with self.lock:
            serving = dict(self.loaded).get(owner)
            bad = self.quarantined.get(owner)
        if bad is not None and bad["upload_id"] == meta.get("upload_id"):
            return dict(meta, status="quarantined", reason=bad["reason"])
        if serving == meta.get("upload_id"):
            return dict(meta, status="loaded")
        if serving is not None:
            return dict(meta, status="stored (not on every server yet); the previous upload is served",
                        serving_upload_id=serving)
        return dict(meta, status="stored (not loaded yet)")

    def store_model(self, owner: str, upload_id: str, data: bytes) -> dict:
        """An owner's upload: becomes its current version; the version being served is kept as the previous one."""
        with self.lock:
            serving = dict(self.loaded).get(owner)
        return self.models.put(owner, upload_id, data, keep=serving)

    # -- the MPC loop's side --

    def proposal(self) -> tuple[list, list, bool]:
        """Server 0's part of the proposal: its last load decision (considered, loaded), and whether a load is due."""
        with self.lock:
            return self.considered, list(self.loaded), time.monotonic() >= self._next_load_try

    def _check_buildable(self, bundle: Any) -> Optional[str]:
        """None if this owner's network alone builds on this server (local, no communication), else why not."""
        from ...mpc.stacked import StackedNetwork
        from ..owner import stack_shares

        try:
            StackedNetwork(stack_shares([bundle]), 1)
        except Exception as error:  # noqa: BLE001 - reported as the quarantine reason
            return f"the stored model cannot be built: {type(error).__name__}: {str(error)[:300]}"
        return None

    def agree_and_load(self, state: Any, dist: Any, group: Any, holdings: list, loaded: dict) -> None:
        """All servers agree, owner by owner, on what to load; a bundle bad on any server is quarantined.

        The candidates are, per owner, the upload every server holds
        (:func:`~.store.choose_versions`): an owner withdrawn on any server is out, an
        owner whose new upload is on only some servers stays on its previous
        version if every server still holds it (else it is out until its
        upload is everywhere), and neither holds back the other owners. Each
        server then votes per candidate: ``ok``, ``missing`` (gone since the
        holdings were gathered: out this time, retried) or a reason it is
        unusable (unreadable or refused on disk, or its network does not
        build). The owners every server accepts are loaded; the others are
        quarantined with the reason (visible to that owner). Should loading
        the agreed set still fail on some server, every server falls back to
        the owners it had loaded before and quarantines the new ones: never a
        crash, never a restart loop.
        """
        wanted = sorted(choose_versions(holdings, loaded).items())
        found = self.models.load(wanted)
        # Until this agreement is over, a marker on disk names the uploads this process is about to build or
        # load for the first time: should it die meanwhile (a signal, the OOM killer, a crash in native code),
        # the restarted process votes them unusable instead of dying on them again (no restart loop).
        _write_loading_marker(self._marker, [(o, u) for o, u in wanted if (o, u) not in self.loaded])
        mine = {}
        for owner, upload_id in wanted:
            item = found.get(owner)
            if item is None:
                mine[owner] = "missing"
            elif isinstance(item, str):
                mine[owner] = f"server {self.rank}: {item}"
            elif (owner, upload_id) in self.died_loading:
                mine[owner] = f"server {self.rank}: {DIED_LOADING}"
            else:
                problem = (None if (owner, upload_id) in self.loaded  # built and served already
                           else self._check_buildable(item))
                mine[owner] = "ok" if problem is None else f"server {self.rank}: {problem}"
        votes: list = [None] * self.servers
        dist.all_gather_object(votes, {"votes": mine, "loaded": list(self.loaded)}, group=group)
        was_loaded = [v["loaded"] for v in votes]
        votes = [v["votes"] for v in votes]
        bad = {owner: "; ".join(sorted({v[owner] for v in votes if v[owner] not in ("ok", "missing")}))
               for owner, _ in wanted}
        bad = {owner: reason for owner, reason in bad.items() if reason}
        missing = {o for o, _ in wanted if o not in bad and any(v[o] == "missing" for v in votes)}
        upload = dict(wanted)
        with self.lock:
            for owner, reason in bad.items():
                if self.quarantined.get(owner, {}).get("upload_id") != upload[owner]:
                    logger.error("quarantined the upload %s of owner %s (not loaded): %s", upload[owner], owner,
                                 reason)
            # only uploads still chosen are quarantined: a withdrawn or replaced one is forgotten
            self.quarantined = {owner: {"upload_id": upload[owner], "reason": reason} for owner, reason in bad.items()}
        good = [(o, u) for o, u in wanted if o not in bad and o not in missing]
        if any(list(w) != good for w in was_loaded):  # else every server serves exactly this set already
            ok = True
            try:
                self._load(state, good, [found[o] for o, _ in good])
            except Exception as error:  # noqa: BLE001 - local: agreed on below
                ok = False
                logger.error("loading %d owners failed: %s: %s", len(good), type(error).__name__,
                             str(error)[:300])
            flags: list = [None] * self.servers
            dist.all_gather_object(flags, ok, group=group)
            if not all(flags):
                before = [(o, u) for o, u in good if (o, u) in self.loaded]
                reason = "the servers could not load this upload together with the other owners' models"
                with self.lock:
                    for owner, upload_id in good:
                        if (owner, upload_id) not in before:
                            self.quarantined[owner] = {"upload_id": upload_id, "reason": reason}
                try:
                    self._load(state, before, [found[o] for o, _ in before])
                except Exception:  # noqa: BLE001 - even the previous set fails: serve no model rather than crash
                    self._load(state, [], [])
            if self.offline.enabled and self.aggregation_ready:  # the same on every server (agreed above)
                self.stock(state)
        # an owner whose current version is served (on every server): its previous version goes, on every server
        served = dict(self.loaded)
        after = [{o: ((v[0], None) if served.get(o) == v[0] else v) for o, v in h.items()} for h in holdings]
        for owner, (current, previous) in holdings[self.rank].items():
            if previous is not None and served.get(owner) == current:
                self.models.drop_previous(owner, previous)
        with self.lock:
            if not missing:  # else retried at the next due load (a version vanished while being read)
                self.considered = after
            self._next_load_try = time.monotonic() + 1.0
        self._marker.unlink(missing_ok=True)  # this process survived building and loading them

    def _load(self, state: Any, wanted: list[tuple[str, str]], bundles: list[Any]) -> None:
        meta = next(iter(self.models.meta().values()), None)  # every stored model takes the same input shape
        shape = tuple(meta["input_shape"]) if meta is not None else None
        state.load(Load(bundles=tuple(bundles), settings=self.settings, input_shape=shape))
        with self.lock:
            self.loaded = list(wanted)
            self.aggregation_ready = bool(bundles)
        logger.info("loaded the shares of %d owners: %s", len(wanted), ", ".join(o for o, _ in wanted))

    def stock(self, state: Any, replies: Optional[list] = None) -> None:
        """The offline phase (all servers in lockstep): stock every Offline batch size, or record a refill's figures."""
        if replies is None:
            replies = [state.precompute(Precompute(rows=rows, depth=self.offline.depth))
                       for rows in self.offline.batch_sizes]
        with self.lock:
            self.offline_figures.extend(replies)
            del self.offline_figures[:-64]  # the latest figures only (public)


def _write_loading_marker(path: Path, uploads: list[tuple[str, str]]) -> None:
    """Atomically record the uploads about to be built or loaded for the first time (nothing to record: no file)."""
    if not uploads:
        path.unlink(missing_ok=True)
        return
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps([list(u) for u in uploads]))
    os.replace(partial, path)


def _read_loading_marker(path: Path) -> set[tuple[str, str]]:
    """The uploads a previous process of this server died on (empty if it did not die while loading)."""
    try:
        return {(str(o), str(u)) for o, u in json.loads(path.read_text())}
    except FileNotFoundError:
        return set()
    except (ValueError, TypeError) as error:  # a torn or foreign file: nothing to quarantine, say so
        logger.warning("ignored an unreadable %s: %s", path, error)
        return set()

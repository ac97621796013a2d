"""One networked server (``pricure serve``): an HTTPS front door and the MPC loop share one :class:`Node`.

Two threads share one :class:`Node`:

* the **front door** (FastAPI on uvicorn, TLS; :mod:`.app`) authenticates
  owners and clients by bearer token (:mod:`.credentials`), stores owners'
  share bundles on disk (:mod:`.store`) and queues clients' query shares
  (:mod:`.requests`); it never computes;
* the **MPC loop** (the main thread; :mod:`.loop`) is a CrypTen party. It
  drives the same :class:`~pricure_crypten.parties.server.ServerState` as
  the in-process mode, and runs its share of every batch through the same
  serving core as library mode
  (:class:`~pricure_crypten.parties.serving.pipeline.ServingCore`), with
  an admission every server agrees on
  (:class:`~pricure_crypten.parties.serving.admission.AgreedAdmission`):
  each server reserves in ITS OWN ledger, and a request runs only if every
  server accepted it.

The parts: :mod:`.config` (the front door's, the seat's and the ledger's
settings; with :mod:`pricure_crypten.config`'s Aggregation, Cluster,
Batching and Offline they configure a server), :mod:`.requests` (queue,
caps, cancel, results, request log), :mod:`.loading` (which owners' uploads
every server loads, quarantine, the Offline stock), :mod:`.loop` (one tick
of the agreement protocol), :mod:`.serve` (the process: supervisor, join,
settings check, exit codes). :class:`Node` composes them and is the facade
the front door calls.

Who sees what: this process holds one share of every model and query and
one share of every label; the only thing it learns in the clear is public
metadata (ids, row counts, shapes, client identities, votes, cost figures).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...config import Aggregation, Batching, Cluster, Offline
from ..serving.admission import LedgerAdmission
from .config import Budget, FrontDoor, Seat, check_fits, load_settings, public_settings, with_defaults
from .credentials import CredentialTable
from .loading import Loading
from .loop import Loop
from .requests import Requests
from .store import ModelStore, RequestLog

logger = logging.getLogger("pricure_crypten.serve")


def open_ledger(path: Path, *, budget: Budget, rank: int) -> Any:
    """This server's own ledger; a reservation left by a killed process is voided (audited)."""
    from ...privacy.accounting import PrivacyLedger

    ledger = PrivacyLedger(path, total_epsilon=budget.epsilon, total_delta=budget.delta,
                           accountant=budget.accountant)
    # A reservation left by a killed process belongs to a request whose label share this server never
    # released (shares go out only after confirm): give it back, through the ledger's audited operation.
    voided = ledger.void_stale_reservations(
        admin=f"pricure server rank {rank} (startup)",
        reason="reservations of a stopped server process; its label shares are released only after confirm")
    if voided:
        logger.warning("voided %d reservations left by the previous process (never released)", voided)
    return ledger


class Node:
    """The state the front door and the MPC loop share (keyword-only; validated on construction).

    Args:
        seat: this server's place (:class:`~.config.Seat`).
        front_door: the front door's settings (:class:`~.config.FrontDoor`).
        budget: each client's total budget in this server's ledger (default: unlimited).
        aggregation: what is released (default: votes without noise, epsilon inf).
        cluster, batching, offline: as in library mode (:mod:`pricure_crypten.config`).
    """

    open_connections: Any = staticmethod(lambda: None)  # set by the front door

    def __init__(self, *, seat: Seat, front_door: FrontDoor, budget: Optional[Budget] = None,
                 aggregation: Optional[Aggregation] = None, cluster: Optional[Cluster] = None,
                 batching: Optional[Batching] = None, offline: Optional[Offline] = None) -> None:
        budget, aggregation, cluster, batching, offline = with_defaults(budget, aggregation, cluster, batching,
                                                                        offline)
        check_fits(seat=seat, aggregation=aggregation, cluster=cluster, batching=batching, offline=offline)
        for name, value, kind in (("front_door", front_door, FrontDoor), ("budget", budget, Budget)):
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a pricure_crypten.parties.net.config.{kind.__name__}, "
                                f"not {type(value).__name__}")
        self.seat, self.front_door, self.budget = seat, front_door, budget
        self.aggregation, self.cluster, self.batching, self.offline = aggregation, cluster, batching, offline
        data = seat.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.credentials = CredentialTable(data)
        self.models = ModelStore(data / "models", front_door.limits)
        self.lock = threading.Lock()
        self.mpc_state = "joining"
        self.ledger = open_ledger(data / "ledger.sqlite3", budget=budget, rank=seat.rank)
        self.mechanism = aggregation.noise
        self.admission = LedgerAdmission(self.ledger, self.mechanism)  # this server's own ledger
        self.loading = Loading(seat=seat, servers=cluster.num_servers, models=self.models,
                               settings=load_settings(aggregation=aggregation, cluster=cluster), offline=offline,
                               lock=self.lock)
        self.requests = Requests(seat=seat, front_door=front_door, max_rows=batching.max_rows, models=self.models,
                                 log=RequestLog(data / "requests.sqlite3"), admission=self.admission,
                                 models_ready=lambda: self.loading.aggregation_ready, lock=self.lock)
        self.loop = Loop(seat=seat, servers=cluster.num_servers, max_rows=batching.max_rows, offline=offline,
                         requests=self.requests, loading=self.loading, admission=self.admission, lock=self.lock)

    def public_settings(self) -> dict:
        """What every server must agree on (checked after joining the MPC)."""
        return public_settings(aggregation=self.aggregation, cluster=self.cluster, batching=self.batching,
                               offline=self.offline)

    # -- the front door's calls --

    def public_info(self, details: bool = True) -> dict:
        """Liveness for anyone; with ``details`` (a valid credential) owners, shapes and traffic too."""
        rank = self.seat.rank
        if not details:
            with self.lock:
                return {"alive": True, "rank": rank, "mpc": self.mpc_state}
        meta = self.models.meta()
        first = next(iter(meta.values()), None)
        loading, loop = self.loading, self.loop
        with self.lock:
            return {"alive": True, "rank": rank, "servers": self.cluster.num_servers, "mpc": self.mpc_state,
                    "owners_loaded": [o for o, _ in loading.loaded], "owners_stored": sorted(meta),
                    "input_shape": first["input_shape"] if first else None,
                    "num_classes": first["num_classes"] if first else None,
                    "pending": sum(p.status == "pending" for p in self.requests.pending.values()),
                    "owners_quarantined": sorted(loading.quarantined),
                    "connections": self.open_connections(),
                    "batches": loop.batches, "totals": dict(loop.totals),
                    "offline": [dataclasses.asdict(r) for r in loading.offline_figures[-8:]],
                    "settings": self.public_settings()}

    def model_status(self, owner: str) -> Optional[dict]:
        """An owner's view of its own upload on this server (see :meth:`.loading.Loading.model_status`)."""
        return self.loading.model_status(owner)

    def store_model(self, owner: str, upload_id: str, data: bytes) -> dict:
        """An owner's upload (see :meth:`.loading.Loading.store_model`)."""
        return self.loading.store_model(owner, upload_id, data)

    def submit(self, client: str, request_id: str, share: np.ndarray, *, outcome: bool = False) -> None:
        """Queue a client's query share (see :meth:`.requests.Requests.submit`)."""
        self.requests.submit(client, request_id, share, outcome=outcome)

    def result(self, client: str, request_id: str) -> Optional[dict]:
        """The client's own request's status and, once done, its label share (see :meth:`.requests.Requests.result`)."""
        return self.requests.result(client, request_id)

    def cancel(self, client: str, request_id: str) -> Optional[dict]:
        """The client gives up on its request (see :meth:`.requests.Requests.cancel`)."""
        return self.requests.cancel(client, request_id)

    def fail_all(self, error: str) -> None:
        """Fail every pending request (the MPC failed)."""
        self.requests.fail_all(error)

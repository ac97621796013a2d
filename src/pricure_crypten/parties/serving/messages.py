"""Typed messages to and from one server party (both modes), and the load settings built once.

A server party (:class:`~pricure_crypten.parties.server.ServerState`) takes
one request message at a time and answers with a reply: the in-process
launcher (:mod:`~pricure_crypten.parties.cluster`) sends them through pipes,
the networked node (:mod:`~pricure_crypten.parties.net.loop`) calls the party
directly. Every message is a frozen dataclass; a party dispatches on its type.

Who sees what: requests carry one server's shares (of models or queries) and
public settings; a :class:`BatchReply` carries that server's share of the
released one-hot, for the client only, and public cost figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np


@dataclass(frozen=True)
class ServerSettings:
    """What every server loads the owners' shares with: public, equal on all servers.

    Built once from the config objects (:meth:`of`), by both modes; the
    networked servers also check at start-up that they agree on :meth:`public`.
    """

    aggregation: str
    mechanism: Any  # a calibrated NoiseMechanism
    colluding: int
    logit_bound: float
    stacking: bool = True
    noise_seed: Optional[str | int] = None  # experiments only (ExperimentOptions); never set by `pricure serve`
    test_only_noise_seed: Any = None  # TEST ONLY (ExperimentOptions); never set by `pricure serve`

    @classmethod
    def of(cls, *, aggregation: Any, cluster: Any, experiment: Any = None) -> "ServerSettings":
        """From :class:`~pricure_crypten.config.Aggregation`, ``Cluster`` and (optional) ``ExperimentOptions``."""
        return cls(aggregation=aggregation.method, mechanism=aggregation.noise, colluding=cluster.colluding,
                   logit_bound=aggregation.logit_bound,
                   stacking=experiment.stacking if experiment is not None else True,
                   noise_seed=experiment.noise_seed if experiment is not None else None,
                   test_only_noise_seed=experiment.test_only_noise_seed if experiment is not None else None)

    def public(self) -> dict:
        """The settings as plain public data (what the networked servers compare at start-up)."""
        return {"aggregation": self.aggregation, "mechanism": repr(self.mechanism), "colluding": self.colluding,
                "logit_bound": self.logit_bound, "stacking": self.stacking}


class Message:
    """A request to a server party; ``op`` names it in error messages."""

    op: ClassVar[str] = "message"


@dataclass(frozen=True)
class Load(Message):
    """Stack these bundles (this server's shares of the owners' models) and build the aggregation."""

    op: ClassVar[str] = "load"
    bundles: tuple
    settings: ServerSettings
    input_shape: Optional[tuple[int, ...]] = None  # needed only to rehearse a batch for the offline phase


@dataclass(frozen=True, eq=False)
class Predict(Message):
    """One MPC batch: this server's share of the queries (rows, *input_shape), int64.

    ``outcome_rows`` > 0 (answered-only labelling only): the servers also
    reveal among themselves the answered bit of the first ``outcome_rows`` rows.
    """

    op: ClassVar[str] = "predict"
    query_share: np.ndarray
    outcome_rows: int = 0


@dataclass(frozen=True, eq=False)
class Profile(Message):
    """One batch timed stage by stage; the result is dropped on the server."""

    op: ClassVar[str] = "profile"
    query_share: np.ndarray


@dataclass(frozen=True)
class Precompute(Message):
    """Keep ``depth`` batches of ``rows`` rows' dealer tuples in stock (the offline phase)."""

    op: ClassVar[str] = "precompute"
    rows: int
    depth: int = 1


@dataclass(frozen=True)
class Refill(Message):
    """Top every stocked batch size back up to its depth."""

    op: ClassVar[str] = "refill"


@dataclass(frozen=True)
class Info(Message):
    """Public facts about the server (pid, provider, decode count, memory)."""

    op: ClassVar[str] = "info"


@dataclass(frozen=True)
class Shutdown(Message):
    op: ClassVar[str] = "shutdown"


@dataclass(frozen=True, eq=False)
class BatchReply:
    """One server's answer to :class:`Predict`: its label share (for the client only) and public figures."""

    label_share: np.ndarray  # (rows, classes) int64
    rounds: int
    bytes: int
    seconds: float
    decodes: int
    dealer_requests: int = 0
    outcome: Optional[np.ndarray] = None  # (outcome_rows,) answered bits, revealed to the servers
    outcome_reveals: int = 0


@dataclass(frozen=True)
class OfflineReply:
    """One server's public figures of a precomputation (:class:`Precompute` or one size of :class:`Refill`)."""

    rows: int
    batches: int
    seconds: float
    rehearsal_seconds: float
    rounds: int
    bytes: int
    exchanges: int
    tuples: int
    requests_per_batch: int
    stock_bytes: int

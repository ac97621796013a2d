"""The settings of one networked server (``pricure serve``) that are not library mode's.

A server is configured by seven validated, frozen objects: the four shared
with library mode (:mod:`pricure_crypten.config`: :class:`Aggregation`,
:class:`Cluster`, :class:`Batching`, :class:`Offline`) and three of its own:

* :class:`FrontDoor`: the HTTPS front door (address, TLS files, the limits on
  uploads and on each client's pending work, connection cap, timeouts);
* :class:`Seat`: this server's place in the deployment (rank, rendezvous,
  data directory, how long it waits for the others, its tick);
* :class:`Budget`: each client's total privacy budget in THIS server's own
  ledger (every server keeps one and refuses a request its ledger cannot afford).

:func:`check_fits` checks them together (before any process starts);
:func:`public_settings` is what every server must agree on after joining the
MPC (all public); :func:`load_settings` is what the owners' shares are
loaded with (built as in library mode; never a seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..._validation import check_delta, check_epsilon, check_int, check_positive
from ...config import Aggregation, Batching, Cluster, Offline
from ...privacy.noise import NoNoise
from ..serving.messages import ServerSettings
from .wire import MAX_BUNDLE_BYTES, BundleLimits

_LIMITS = BundleLimits()


def _positive_seconds(owner: Any, *names: str) -> None:
    for name in names:
        object.__setattr__(owner, name, check_positive(getattr(owner, name), name=name))


@dataclass(frozen=True, kw_only=True)
class FrontDoor:
    """The front door (FastAPI on uvicorn): where it listens, what it accepts, and how long it waits.

    ``certfile``/``keyfile``: TLS (both, or neither: plain HTTP, for tests
    behind a trusted loopback only). The limits bound what one owner may
    upload (:class:`~.wire.BundleLimits`) and what one client may have
    pending on this server (HTTP 429 beyond).
    """

    host: str
    port: int
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None
    max_upload: int = MAX_BUNDLE_BYTES
    max_params: int = _LIMITS.max_params  # int64 share elements per bundle
    max_input_elements: int = _LIMITS.max_input_elements  # elements of one example
    max_activation: int = _LIMITS.max_activation  # elements of any layer's output, per example
    max_client_requests: int = 16  # pending requests per client on this server
    max_client_rows: int = 1024  # pending rows per client on this server (at least Batching.max_rows)
    max_connections: int = 128  # open connections to the front door
    header_timeout: float = 10.0  # seconds to send a request's headers (also after a TLS handshake)
    keep_alive: float = 5.0  # seconds an idle kept-alive connection stays open
    body_timeout: float = 120.0  # seconds to send a request's body

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise TypeError(f"host must be a non-empty str, not {self.host!r}")
        check_int(self.port, name="port", minimum=0, maximum=65535)
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("give both certfile and keyfile (TLS), or neither")
        for name in ("max_upload", "max_params", "max_input_elements", "max_activation", "max_client_requests",
                     "max_client_rows", "max_connections"):
            check_int(getattr(self, name), name=name, minimum=1)
        _positive_seconds(self, "header_timeout", "keep_alive", "body_timeout")

    @property
    def limits(self) -> BundleLimits:
        return BundleLimits(max_bytes=self.max_upload, max_params=self.max_params,
                            max_input_elements=self.max_input_elements, max_activation=self.max_activation)


@dataclass(frozen=True, kw_only=True)
class Seat:
    """This server's place in the deployment.

    ``wait`` bounds the wait for the other parties at the rendezvous;
    ``incomplete_after``: a request not at every server by then is dropped
    everywhere (nothing charged); ``log_retention`` / ``log_max_entries``:
    how long and how many finished request ids ``requests.sqlite3`` keeps
    (a replayed id is refused while it is kept); ``argv``: what the
    supervisor re-executes after an MPC failure.
    """

    rank: int
    rendezvous: str
    data_dir: Path
    wait: float = 120.0
    incomplete_after: float = 10.0
    log_retention: float = 30 * 86400.0
    log_max_entries: int = 1_000_000
    tick: float = 0.1
    argv: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        check_int(self.rank, name="rank", minimum=0)
        if not isinstance(self.rendezvous, str) or not self.rendezvous:
            raise TypeError(f"rendezvous must be a non-empty str, not {self.rendezvous!r}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        _positive_seconds(self, "wait", "incomplete_after", "log_retention", "tick")
        check_int(self.log_max_entries, name="log_max_entries", minimum=1)
        object.__setattr__(self, "argv", tuple(self.argv))


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Each client's TOTAL privacy budget in this server's own ledger (``ledger.sqlite3`` in the data dir).

    ``epsilon`` (``inf``: unlimited) at ``delta``, composed by ``accountant``
    (``"rdp-filter"`` for answered-only labelling with Confident-GNMax). A
    request runs only if every server's ledger has room for it.
    """

    epsilon: float = math.inf
    delta: float = 0.0
    accountant: str = "auto"

    def __post_init__(self) -> None:
        from ...privacy.accounting.registry import check_accountant_name

        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon, name="budget epsilon", infinite="unlimited"))
        object.__setattr__(self, "delta", check_delta(self.delta, name="budget delta"))
        check_accountant_name(self.accountant)


def with_defaults(budget: Optional[Budget], aggregation: Optional[Aggregation], cluster: Optional[Cluster],
                  batching: Optional[Batching], offline: Optional[Offline]
                  ) -> tuple[Budget, Aggregation, Cluster, Batching, Offline]:
    """The objects given, else a server's defaults: no budget limit, votes without noise (epsilon inf)."""
    return (budget if budget is not None else Budget(),
            aggregation if aggregation is not None else Aggregation(noise=NoNoise()),
            cluster if cluster is not None else Cluster(), batching if batching is not None else Batching(),
            offline if offline is not None else Offline())


def check_fits(*, seat: Seat, aggregation: Aggregation, cluster: Cluster, batching: Batching,
               offline: Offline) -> None:
    """Raise ``TypeError``/``ValueError`` unless this seat and the shared objects go together (before any MPC)."""
    for name, value, kind in (("seat", seat, Seat), ("aggregation", aggregation, Aggregation),
                              ("cluster", cluster, Cluster), ("batching", batching, Batching),
                              ("offline", offline, Offline)):
        if not isinstance(value, kind):
            where = "pricure_crypten.config" if kind is not Seat else "pricure_crypten.parties.net.config"
            raise TypeError(f"{name} must be a {where}.{kind.__name__}, not {type(value).__name__}")
    if not 0 <= seat.rank < cluster.num_servers:
        raise ValueError(f"rank must be in [0, {cluster.num_servers}), got {seat.rank}")
    offline.check_against(cluster, batching)


def load_settings(*, aggregation: Aggregation, cluster: Cluster) -> ServerSettings:
    """What this server loads the owners' shares with (built as in library mode; never a seed)."""
    return ServerSettings.of(aggregation=aggregation, cluster=cluster)


def public_settings(*, aggregation: Aggregation, cluster: Cluster, batching: Batching, offline: Offline) -> dict:
    """What every server must agree on (gathered and compared after joining the MPC; all public)."""
    return {"servers": cluster.num_servers, "provider": cluster.provider,
            **load_settings(aggregation=aggregation, cluster=cluster).public(),
            "offline": [list(offline.batch_sizes), offline.depth, offline.pad], "max_rows": batching.max_rows}

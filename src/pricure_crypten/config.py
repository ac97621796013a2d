"""The few validated settings objects of a private ensemble, one per concern.

* :class:`Aggregation`: WHAT is released: the histogram kind, the noise
  mechanism (any :class:`~pricure_crypten.privacy.noise.NoiseMechanism`,
  including :class:`NoNoise` and :class:`ConfidentGNMax`) and the logit clamp.
* :class:`Cluster`: WHO computes it: the servers, how many may collude, the
  triple provider, threads and the failure-detection bounds.
* :class:`Batching`: HOW concurrent requests share MPC batches.
* :class:`Offline`: which batch shapes get the dealer's tuples ahead of time.
* :class:`ExperimentOptions`: benchmark and test switches that a deployment
  never sets (fixed seeds warn as loudly as the insecure provider).

Each object validates on construction, so a bad or conflicting setting raises
before any process starts; the demo, the CLI and the benchmarks build these
same objects. All are frozen dataclasses (hashable, printable, picklable).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from ._validation import (
    DEFAULT_LOGIT_BOUND,
    check_aggregation,
    check_int,
    check_logit_bound,
    check_non_negative,
    check_positive,
    check_split,
)
from .privacy.noise import LaplaceNoise, NoiseMechanism

PROVIDERS = {"ttp": "TTP", "insecure-tfp": "TFP"}  # our names -> CrypTen's
SECURE_PROVIDER = "ttp"


class InsecureProviderWarning(UserWarning):
    """The insecure trusted-first-party provider is in use: server 0 sees every triple."""


class InsecureSeedWarning(UserWarning):
    """Fixed seeds make shares or noise predictable: for reproducible tests and experiments only."""


def check_provider(provider: Any) -> str:
    """Validate a provider name; warn loudly for the insecure one."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose 'ttp' (secure, default) or 'insecure-tfp'")
    if provider != SECURE_PROVIDER:
        warnings.warn(
            "INSECURE: provider 'insecure-tfp' lets server 0 generate all Beaver triples in the clear, "
            "so server 0 alone can unmask every secret-shared value. Use only for speed experiments.",
            InsecureProviderWarning,
            stacklevel=4,
        )
    return provider


def _default_noise() -> NoiseMechanism:
    return LaplaceNoise(epsilon=1.0)


@dataclass(frozen=True)
class Aggregation:
    """What the servers release per query, and its privacy.

    Args:
        method: ``"vote"`` (sum of the owners' one-hot votes, default) or
            ``"softmax"`` (sum of their probability vectors).
        noise: the calibrated mechanism; default Laplace at epsilon 1 per
            query. Build one with :func:`~pricure_crypten.privacy.noise.calibrate`
            or directly (``GaussianNoise(epsilon=2)``, ``NoNoise()``,
            ``ConfidentGNMax(...)``).
        logit_bound: the owners' logits are clamped to ``[-bound, bound]``
            under MPC, in (0, 128].
    """

    method: str = "vote"
    noise: NoiseMechanism = field(default_factory=_default_noise)
    logit_bound: float = DEFAULT_LOGIT_BOUND

    def __post_init__(self) -> None:
        check_aggregation(self.method)
        if not isinstance(self.noise, NoiseMechanism):
            raise TypeError(
                f"noise must be a NoiseMechanism (LaplaceNoise, GaussianNoise, NoNoise, ConfidentGNMax, or "
                f"calibrate(...)), not {type(self.noise).__name__}"
            )
        self.noise.check_aggregation(self.method)  # e.g. Confident-GNMax needs votes
        object.__setattr__(self, "logit_bound", check_logit_bound(self.logit_bound))


@dataclass(frozen=True)
class Cluster:
    """The servers and the dealer, and how failures are detected.

    Args:
        num_servers: N >= 2 non-colluding servers (CrypTen parties).
        colluding: t < N: the noise stays fully calibrated even if t servers
            pool their partials (each partial is drawn for N - t servers).
        provider: ``"ttp"`` (secure, default: a separate dealer process) or
            ``"insecure-tfp"`` (speed experiments only; warns).
        threads_per_server: torch threads per server process (default: the
            CPU count divided by N, at least 1).
        start_timeout: seconds for the servers and the dealer to start, meet
            and load the owners' shares.
        request_timeout: seconds one MPC batch may take before the cluster is
            declared stuck (also torch.distributed's own timeout on the
            servers' collectives). Default 120.
        heartbeat_timeout: a process whose heartbeat (every 0.25 s) is older
            than this is declared silent (SIGSTOP, a frozen host). Default 5.
    """

    num_servers: int = 2
    colluding: int = 0
    provider: str = "ttp"
    threads_per_server: Optional[int] = None
    start_timeout: float = 120.0
    request_timeout: float = 120.0
    heartbeat_timeout: float = 5.0

    def __post_init__(self) -> None:
        check_split(self.num_servers, self.colluding)
        check_provider(self.provider)
        if self.threads_per_server is not None:
            check_int(self.threads_per_server, name="threads_per_server", minimum=1)
        for name in ("start_timeout", "request_timeout", "heartbeat_timeout"):
            object.__setattr__(self, name, check_positive(getattr(self, name), name=name))
        if self.heartbeat_timeout < 1.0:
            raise ValueError(f"heartbeat_timeout must be >= 1 s (heartbeats come every 0.25 s), "
                             f"got {self.heartbeat_timeout}")

    @property
    def needs_dealer(self) -> bool:
        return PROVIDERS[self.provider] == "TTP"

    @property
    def crypten_provider(self) -> str:
        return PROVIDERS[self.provider]


@dataclass(frozen=True)
class Batching:
    """How concurrent requests share MPC batches (dynamic batching).

    Requests from any number of threads or clients are queued in arrival
    order and computed in that order, one MPC batch at a time. With
    ``enabled`` (default), the rows of the requests that are waiting, or that
    arrive within ``window`` seconds of the first, are packed into one MPC
    batch of at most ``max_rows`` rows (a larger request is split across
    batches); each client receives the shares of its own rows only.

    Args:
        enabled: merge concurrent requests (default True); False runs every
            request as its own MPC batch(es).
        window: seconds to wait for more requests after the first (default 0.005;
            requests that arrive while a batch runs are packed into the next one anyway).
        max_rows: rows per MPC batch (default 256; bounds server memory).
        max_queries: the largest batch one call may submit (default 65,536);
            a larger one is refused before any MPC work.
    """

    enabled: bool = True
    window: float = 0.005
    max_rows: int = 256
    max_queries: int = 65536

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be a bool, not {type(self.enabled).__name__}")
        object.__setattr__(self, "window", check_non_negative(self.window, name="window"))
        check_int(self.max_rows, name="max_rows", minimum=1)
        check_int(self.max_queries, name="max_queries", minimum=1)


@dataclass(frozen=True)
class Offline:
    """The offline/online split: the dealer's tuples for whole batches, dealt before queries arrive.

    The secure MPC is data oblivious: which Beaver triples, binary triples and
    helpers a batch needs depends only on public facts (the architectures, the
    batch's row count, the aggregation). For each size in ``batch_sizes`` the
    servers record that list once (a rehearsal on shares of zeros) and keep
    ``depth`` batches' worth of tuples in stock, dealt in bulk by the dealer
    when the ensemble starts and topped up whenever no query waits. A batch
    whose tuples are in stock makes no round trip to the dealer (its online
    phase); any other batch falls back to CrypTen's on-line dealer requests.
    Security is unchanged: a server's stock holds only its own shares. The
    cost is memory: :attr:`~pricure_crypten.ensemble.OfflineCost.stock_bytes`.

    Args:
        batch_sizes: MPC batch row counts to stock (default none: everything on-line).
        depth: batches of each size kept in stock (default 1).
        pad: pad a smaller MPC batch with shares of zero rows up to the next
            stocked size, so that it runs from stock (default True). Padding
            rows are computed and dropped; their labels reach nobody.
        refill: top the stock up after each batch, when no query waits
            (default True); otherwise call ``PrivateEnsemble.refill()``. A
            query that arrives during a top-up waits for it to finish (at
            most ``depth`` batches' offline seconds per stocked size).
    """

    batch_sizes: tuple[int, ...] = ()
    depth: int = 1
    pad: bool = True
    refill: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch_sizes, (int, str)) or not hasattr(self.batch_sizes, "__iter__"):
            raise TypeError(f"batch_sizes must be a sequence of positive integers, not {self.batch_sizes!r}")
        sizes = tuple(sorted(set(check_int(b, name="batch_sizes[i]", minimum=1) for b in self.batch_sizes)))
        object.__setattr__(self, "batch_sizes", sizes)
        check_int(self.depth, name="depth", minimum=1)
        for name in ("pad", "refill"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, not {type(getattr(self, name)).__name__}")

    @property
    def enabled(self) -> bool:
        return bool(self.batch_sizes)

    def check_against(self, cluster: "Cluster", batching: "Batching") -> None:
        """Raise ``ValueError`` unless this stock can be used with ``cluster`` and ``batching`` (both modes)."""
        if self.enabled and not cluster.needs_dealer:
            raise ValueError("Offline precomputation needs the dealer: use Cluster(provider='ttp') (the default)")
        if self.enabled and self.batch_sizes[-1] > batching.max_rows:
            raise ValueError(f"Offline.batch_sizes {self.batch_sizes} has a size above Batching.max_rows = "
                             f"{batching.max_rows}: no MPC batch that large ever runs")

    def padded_rows(self, rows: int) -> int:
        """The stocked size a batch of ``rows`` runs as (``rows`` itself if none fits or padding is off)."""
        if not self.pad:
            return rows
        return next((size for size in self.batch_sizes if size >= rows), rows)


@dataclass(frozen=True)
class ExperimentOptions:
    """Switches for benchmarks and reproducible tests; a deployment sets none of them.

    Args:
        noise_seed: a fixed seed for every server's noise partials. Each
            server derives its stream from it, so ANYONE who knows the seed
            (every server does) knows the total noise: no differential
            privacy against the servers. Warns (:class:`InsecureSeedWarning`).
        share_seed: a fixed seed for the owners' and the client's shares:
            whoever knows it can unmask them. Warns.
        stacking: True (default) evaluates same-architecture owners in one
            batched pass; False evaluates them one after the other (the naive
            baseline of the benchmarks; rounds grow with K).
        test_only_noise_seed: TEST ONLY, a :class:`~pricure_crypten.mpc.randomness.TestOnlyNoiseSeed`:
            per-row seeded noise partials that a plaintext simulation reproduces
            exactly (:mod:`pricure_crypten.experiments.conformance`). Refused
            unless ``PRICURE_TEST_ONLY_SEEDED_NOISE=1`` is set here and in the
            server processes; not reachable from the CLI or ``pricure serve``.
    """

    noise_seed: Optional[str | int] = None
    share_seed: Optional[str | int] = None
    stacking: bool = True
    test_only_noise_seed: Any = None

    def __post_init__(self) -> None:
        for name in ("noise_seed", "share_seed"):
            seed = getattr(self, name)
            if seed is None:
                continue
            if isinstance(seed, bool) or not isinstance(seed, (str, int)):
                raise TypeError(f"{name} must be None, a str or an int, not {type(seed).__name__}")
            warnings.warn(
                f"INSECURE: {name}={seed!r} makes every "
                f"{'noise partial' if name == 'noise_seed' else 'share'} predictable to anyone who knows the "
                "seed. Use only for reproducible tests and experiments.",
                InsecureSeedWarning,
                stacklevel=4,
            )
        if not isinstance(self.stacking, bool):
            raise TypeError(f"stacking must be a bool, not {type(self.stacking).__name__}")
        if self.test_only_noise_seed is not None:
            from .mpc.randomness import TestOnlyNoiseSeed, require_test_only_noise_enabled

            if not isinstance(self.test_only_noise_seed, TestOnlyNoiseSeed):
                raise TypeError("test_only_noise_seed must be a pricure_crypten.mpc.randomness.TestOnlyNoiseSeed, "
                                f"not {type(self.test_only_noise_seed).__name__}")
            if self.noise_seed is not None:
                raise ValueError("give noise_seed or test_only_noise_seed, not both")
            require_test_only_noise_enabled("ExperimentOptions(test_only_noise_seed=...)")

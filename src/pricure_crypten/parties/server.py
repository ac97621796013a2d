"""One server: a CrypTen party in its own process, computing on shares only.

Who sees what: a server receives from each owner one share of every
parameter, from the client one share of the query batch, and exchanges only
masked values with the other servers (CrypTen's protocols). It returns to the
client one share of the one-hot label and, to the operator, public cost
figures (rounds, bytes, seconds, decode count). It never decodes a value:
every decode path of CrypTen is counted here (:class:`DecodeAudit`) and the
count is reported with every prediction, so tests can check it is zero.
The one exception is opt-in and counted apart: an answered-only labelling
batch (``Predict.outcome_rows``, :func:`reveal_outcome`) opens, to every server, the
threshold step's answered bit of each of that client's rows, and nothing else.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .process import adopt_environment, join_rendezvous, set_distributed_timeout, start_heartbeat
from .serving.messages import (BatchReply, Info, Load, Message, OfflineReply, Precompute, Predict, Profile, Refill,
                               Shutdown)


class DecodeAudit:
    """Counts calls, in this process, of every CrypTen function that yields plaintext."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        from crypten.encoder import FixedPointEncoder
        from crypten.mpc import MPCTensor

        def counted(owner: type, name: str) -> None:
            original = getattr(owner, name)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self.count += 1
                return original(*args, **kwargs)

            setattr(owner, name, wrapper)

        counted(FixedPointEncoder, "decode")
        counted(MPCTensor, "get_plain_text")
        counted(MPCTensor, "reveal")


def reveal_outcome(released: Any, rows: int) -> Any:
    """Answered-only labelling: reveal to EVERY server whether each of the first ``rows`` rows was answered.

    ``released`` is the (B, C) one-hot of the release, all zeros where
    Confident-GNMax abstained, so the sum over classes of a row is its
    threshold step's outcome bit (1: answered, 0: abstained). Only those
    ``rows`` bits are opened (a joint reveal among the servers: one round);
    never the label, the votes or the histogram, and never the bits of any
    other row of the batch (other clients' rows are never packed with such a
    request, padding rows come after ``rows``). This is the leak answered-only
    accounting documents (:mod:`pricure_crypten.privacy.accounting.outcome`):
    it lets the servers' side confirm the actual charge to the ledger without
    trusting the client. Returns an int64 array of 0/1, shape (rows,).
    """
    import numpy as np

    bits = released[:rows].sum(-1).get_plain_text().numpy()
    outcome = np.rint(bits).astype(np.int64)
    if not np.all((outcome == 0) | (outcome == 1)) or not np.allclose(bits, outcome, atol=1e-3):
        raise RuntimeError("the outcome of the threshold step is not a bit: the computation was corrupted")
    return outcome


@dataclass(frozen=True)
class ServerConfig:
    """Public settings a server process is started with."""

    rank: int
    world_size: int
    rendezvous: str
    provider: str  # "TTP" or "TFP" (CrypTen's names)
    threads: int
    request_timeout: float  # torch.distributed's timeout for this server's collectives
    parent_pid: int


class ServerState:
    """What one server holds between requests: stacked owner shares and the aggregation layer."""

    def __init__(self, config: ServerConfig, audit: DecodeAudit) -> None:
        self.config = config
        self.audit = audit
        self.networks: list[Any] = []
        self.aggregation: Any = None
        self.input_shape: tuple[int, ...] | None = None
        self.patterns: dict[int, list] = {}  # batch rows -> the tuple requests of one batch (public)
        self.depths: dict[int, int] = {}  # batch rows -> batches to keep in stock
        self.test_only_noise: Any = None  # TEST ONLY: TestOnlySeededServerNoise (see load)

    @property
    def provider(self) -> Any:
        """The stocking TTP provider (None with the insecure first-party provider)."""
        from ..mpc._crypten import crypten
        from ..mpc.offline import PrecomputedTTP

        provider = crypten.mpc.get_default_provider()
        return provider if isinstance(provider, PrecomputedTTP) else None

    def handle(self, message: Message) -> Any:
        """Answer one request message (:mod:`~pricure_crypten.parties.serving.messages`), dispatched on its type."""
        handler = {Info: self.info, Load: self.load, Predict: self.predict, Profile: self.profile,
                   Precompute: self.precompute, Refill: self.refill}.get(type(message))
        if handler is None:
            raise TypeError(f"unknown server message {type(message).__name__}")
        return handler(message)

    def info(self, message: Info | None = None) -> dict:
        """Public facts about this server: identity, provider, decode count, memory."""
        import resource

        from ..mpc._crypten import crypten

        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {
            "rank": self.config.rank,
            "pid": os.getpid(),
            "provider": type(crypten.mpc.get_default_provider()).__name__,
            "cfg_provider": crypten.cfg.mpc.provider,
            "decodes": self.audit.count,
            "stock_bytes": self.provider.stock_bytes if self.provider is not None else 0,
            "rss_bytes": rss,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }

    def load(self, message: Load) -> dict:
        """Stack this server's shares of the owners' models; build the aggregation layer."""
        from ..mpc.aggregation import EncryptedAggregation
        from ..mpc.baseline import SequentialOwners
        from ..mpc.randomness import SecureRandom
        from ..mpc.stacked import StackedNetwork
        from .owner import group_by_architecture, stack_shares

        settings = message.settings
        self.test_only_noise = None
        if settings.test_only_noise_seed is not None:  # TEST ONLY; refused without the env var HERE
            from ..mpc.randomness import TestOnlySeededServerNoise

            self.test_only_noise = TestOnlySeededServerNoise.enable(settings.test_only_noise_seed,
                                                                    server=self.config.rank)
        bundles = list(message.bundles)
        self.input_shape = tuple(message.input_shape) if message.input_shape is not None else None
        self.patterns, self.depths = {}, {}
        if self.provider is not None:
            self.provider.clear()  # tuples recorded for other models are never used
        if not bundles:
            self.networks, self.aggregation = [], None
            return {"groups": []}
        if settings.stacking:
            self.networks = [StackedNetwork(stack_shares(g), len(g)) for g in group_by_architecture(bundles)]
        else:
            self.networks = [SequentialOwners([b.layers for b in bundles])]
        seed = settings.noise_seed
        rng = SecureRandom(seed=f"{seed}/server-{self.config.rank}") if seed is not None else SecureRandom()
        self.aggregation = EncryptedAggregation(
            aggregation=settings.aggregation,
            mechanism=settings.mechanism,
            num_servers=self.config.world_size,
            colluding=settings.colluding,
            logit_bound=settings.logit_bound,
            rng=rng,
        )
        return {"groups": [n.num_owners for n in self.networks]}

    def _forward(self, query_share: Any, timed: Any = None) -> Any:
        """Query shares -> this server's share of the released one-hot (a CrypTen tensor).

        With ``timed`` (profiling), every stage of every network and of the
        aggregation goes through ``timed(name, stage, value)`` instead of the
        modules being called whole.
        """
        from ..mpc._crypten import crypten
        from ..mpc.stacked import load_share

        if self.aggregation is None:
            raise RuntimeError("no owners loaded on this server")

        def run(module: Any, value: Any, prefix: str = "") -> Any:
            if timed is None:
                return module(value)
            for name, stage in (module.stages() if hasattr(module, "stages") else [("network", module)]):
                value = timed(prefix + name, stage, value)
            return value

        query = load_share(query_share)
        logits = [run(network, query) for network in self.networks]
        stacked = logits[0] if len(logits) == 1 else crypten.cat(logits, dim=0)
        return run(self.aggregation, stacked, "aggregation_")

    def predict(self, message: Predict) -> BatchReply:
        """One batch: query shares -> one-hot label shares for the client, plus public costs.

        With tuples in stock for this batch (:meth:`precompute`) the batch
        makes no round trip to the dealer; ``dealer_requests`` counts those it made.
        """
        from ..mpc._crypten import crypten

        comm = crypten.communicator
        provider = self.provider
        decodes_before = self.audit.count
        misses_before = provider.misses if provider is not None else 0
        comm.get().reset_communication_stats()
        start = time.perf_counter()
        if self.test_only_noise is not None and self.aggregation is not None:  # TEST ONLY: seeded partials
            self.aggregation.ops.test_only_batch = self.test_only_noise.next_batch(len(message.query_share))
        try:
            released = self._forward(message.query_share)
        finally:
            if self.aggregation is not None:
                self.aggregation.ops.test_only_batch = None  # rehearsals and profiles use the CSPRNG
        label_share = released.share.numpy().copy()
        outcome, outcome_reveals = None, 0
        if message.outcome_rows:  # answered-only labelling: the ONE extra, counted decode (see reveal_outcome)
            audited = self.audit.count
            outcome, outcome_reveals = reveal_outcome(released, int(message.outcome_rows)), 1
            decodes_before += self.audit.count - audited  # counted apart from "decodes"
        seconds = time.perf_counter() - start
        stats = comm.get().get_communication_stats()
        return BatchReply(
            label_share=label_share, rounds=int(stats["rounds"]), bytes=int(stats["bytes"]), seconds=seconds,
            decodes=self.audit.count - decodes_before,
            dealer_requests=(provider.misses - misses_before) if provider is not None else 0,
            outcome=outcome, outcome_reveals=outcome_reveals,
        )

    def profile(self, message: Profile) -> dict:
        """One batch, timed stage by stage; the label share is dropped (nothing leaves this server).

        Public figures only: for each stage (every layer of every stacked
        network, the aggregation's clamp, histogram and release) its seconds
        and the part of them spent in communication; the time spent waiting
        for on-line dealer requests. No share is returned, so nothing can be revealed.
        """
        from ..mpc._crypten import crypten

        comm = crypten.communicator
        provider = self.provider
        dealer_before = provider.dealer_seconds if provider is not None else 0.0
        stages: list[dict] = []

        def timed(name: str, step: Any, value: Any) -> Any:
            comm.get().reset_communication_stats()
            start = time.perf_counter()
            out = step(value)
            stats = comm.get().get_communication_stats()
            stages.append({"stage": name, "seconds": time.perf_counter() - start,
                           "communication_seconds": float(stats["time"]), "rounds": int(stats["rounds"])})
            return out

        self._forward(message.query_share, timed)  # the label share is dropped here
        dealer = (provider.dealer_seconds - dealer_before) if provider is not None else 0.0
        return {"stages": stages, "dealer_seconds": dealer}

    # -- the offline phase --

    def _record(self, rows: int) -> dict:
        """Record the tuple requests of a batch of ``rows`` (a rehearsal on shares of zeros; output dropped)."""
        import numpy as np

        if self.input_shape is None:
            raise RuntimeError("no owners (or no input shape) loaded on this server: nothing to precompute for")
        start = time.perf_counter()
        with self.provider.record() as requests:
            self._forward(np.zeros((rows,) + self.input_shape, dtype=np.int64))
        self.patterns[rows] = list(requests)
        return {"rehearsal_seconds": time.perf_counter() - start, "requests": len(requests)}

    def precompute(self, message: Precompute) -> OfflineReply:
        """Keep ``depth`` batches of ``rows`` in stock (record the batch's requests first if new).

        Public figures only: seconds, rounds and bytes of this offline work
        (the rehearsal included), dealer exchanges, tuples and bytes in stock.
        """
        from ..mpc._crypten import crypten

        if self.provider is None:
            raise RuntimeError("precomputation needs the secure TTP provider (Cluster(provider='ttp'))")
        rows, depth = int(message.rows), int(message.depth)
        comm = crypten.communicator
        comm.get().reset_communication_stats()
        start = time.perf_counter()
        rehearsal, exchanges, tuples, batches = 0.0, 0, 0, 0
        if rows not in self.patterns:
            rehearsal = self._record(rows)["rehearsal_seconds"]
        self.depths[rows] = max(depth, self.depths.get(rows, 0))
        missing = self.depths[rows] - self.provider.copies_in_stock(self.patterns[rows])
        if missing > 0:
            dealt = self.provider.precompute(self.patterns[rows], copies=missing)
            exchanges, tuples, batches = dealt["exchanges"], dealt["tuples"], missing
        stats = comm.get().get_communication_stats()
        return OfflineReply(rows=rows, batches=batches, seconds=time.perf_counter() - start,
                            rehearsal_seconds=rehearsal, rounds=int(stats["rounds"]), bytes=int(stats["bytes"]),
                            exchanges=exchanges, tuples=tuples, requests_per_batch=len(self.patterns[rows]),
                            stock_bytes=self.provider.stock_bytes)

    def refill(self, message: Refill | None = None) -> list[OfflineReply]:
        """Top every stocked batch size back up to its depth (after batches consumed it)."""
        if self.provider is None:
            return []
        return [self.precompute(Precompute(rows=rows, depth=depth)) for rows, depth in sorted(self.depths.items())
                if self.provider.copies_in_stock(self.patterns[rows]) < depth]


def start_party(*, rank: int, world_size: int, rendezvous: str, provider: str, threads: int,
                timeout: float, join_timeout: float | None = None) -> DecodeAudit:
    """Join the MPC as server ``rank`` (both modes: the in-process cluster and ``pricure serve``).

    Sets the environment CrypTen reads (RENDEZVOUS explicit), an explicit
    torch.distributed timeout, installs the decode audit and runs
    ``crypten.init()``. ``timeout`` bounds each collective (and point-to-point
    exchange) of the MPC. ``join_timeout`` (default: ``timeout``) bounds the
    wait for the other parties at the rendezvous (the default process group,
    complete once every party, the dealer too, has connected); so a generous
    rendezvous wait does not lengthen how long a dead or cut peer holds a
    collective.
    """
    join_rendezvous(rank=rank, world_size=world_size, rendezvous=rendezvous)
    import torch

    from ..mpc._crypten import crypten

    torch.set_num_threads(threads)
    crypten.cfg.mpc.provider = provider
    crypten.cfg.communicator.verbose = True
    set_distributed_timeout(timeout)
    if join_timeout is not None:
        _join_within(join_timeout)
    audit = DecodeAudit()
    audit.install()
    if provider == "TTP":
        from ..mpc.offline import install

        install()  # CrypTen's TTP provider, able to stock tuples dealt ahead of time
    crypten.init()
    return audit


def _join_within(seconds: float) -> None:
    """Let CrypTen's ``init_process_group`` (the rendezvous) wait up to ``seconds`` for the other parties.

    Only the default process group gets this bound: it is where every party
    (the dealer too) meets, and it is complete only once all have connected.
    The groups CrypTen then creates and runs every exchange on (``main_group``,
    ``ttp_group``, ``ttp_comm_group``; all of this project's collectives name
    their group) keep the collective timeout of :func:`set_distributed_timeout`.
    """
    import datetime

    import torch.distributed as dist

    bound = datetime.timedelta(seconds=seconds)
    collective = dist.init_process_group

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = bound
        return collective(*args, **kwargs)

    init_process_group.__wrapped__ = collective  # type: ignore[attr-defined]
    init_process_group._pricure_timeout = bound  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group


def server_main(config: ServerConfig, inbox: Any, replies: Any, heartbeat: Any, environment: dict) -> None:
    """Entry point of a server process (spawned): serve requests in sequence order until 'shutdown'.

    ``inbox`` carries ``(sequence number, message)`` from the
    launcher; every reply on ``replies`` carries the sequence number of its
    request. Requests must arrive numbered 1, 2, 3, ... (the one order all
    servers agree on); anything else is an error, and after an error the
    server exits (the launcher then tears the cluster down: nothing is revealed).
    """
    adopt_environment(environment)
    start_heartbeat(heartbeat, config.parent_pid)
    audit = start_party(rank=config.rank, world_size=config.world_size, rendezvous=config.rendezvous,
                        provider=config.provider, threads=config.threads, timeout=config.request_timeout)
    from ..mpc._crypten import crypten

    replies.send((0, "ready", {"pid": os.getpid()}))
    state = ServerState(config, audit)
    expected = 1
    while True:
        sequence, message = inbox.get()
        if isinstance(message, Shutdown):
            crypten.uninit()
            return
        try:
            if sequence != expected:
                raise RuntimeError(f"request {sequence} arrived out of order (expected {expected})")
            expected += 1
            result = state.handle(message)
        except Exception:  # noqa: BLE001 - reported to the operator; the cluster is then torn down
            replies.send((sequence, "error", traceback.format_exc()))
            return
        replies.send((sequence, "ok", result))

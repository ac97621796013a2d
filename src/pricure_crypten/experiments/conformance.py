"""Does the MPC path release what the plaintext simulation releases? Two checks, both reusable.

The privacy experiments (membership inference, utility) run on the plaintext
simulation (:mod:`pricure_crypten.experiments.reference`). These checks
justify that, on real CrypTen server processes:

1. **Per query, with test-only seeded noise** (:func:`compare_mpc_to_simulation`).
   With a :class:`~pricure_crypten.mpc.randomness.TestOnlyNoiseSeed` every
   server draws its noise partial of row ``j`` from a stream keyed by
   ``(seed, server, j, noise addition)``. :class:`SeededSimulationOps` draws the
   same partials, and the reference simulation
   (:class:`~pricure_crypten.experiments.reference.PlaintextReleaseOps`) rounds
   each to the 2**-16 grid, sums them and takes the argmax with ties to the
   lowest index, exactly as the servers do on the ring. The noisy histograms
   are then equal to the bit, so the labels must be EQUAL query by query.
   The one thing the simulation does not reproduce exactly is each owner's
   logits: the servers evaluate the models in 16-bit fixed point. The
   simulation evaluates them with parameters and queries rounded to that grid
   (:func:`fixed_point_logits`), which leaves only the servers' truncations
   (a few units of 2**-16 per layer, :func:`truncation_error_bound`). A query is
   therefore EXCLUDED (and counted) when some owner's vote could change under
   a logit error of ``margin_bound`` (:func:`robust_votes`, an exact interval
   test on the clamped logits) AND that could change the released label
   under the query's actual seeded noise (:func:`decided_releases`: the
   mechanism's own release run on (fewest, most) vote bounds; sound). With
   many owners some owner is nearly always near its boundary, so the first
   test alone would exclude most queries at K = 250. Vote histograms only: the softmax histogram
   under MPC uses approximate exp/reciprocal and cannot match to the bit.
2. **Statistically, with the production CSPRNG noise** (:func:`compare_flip_rates`):
   the rate at which the private label differs from the noiseless ensemble's
   label, MPC against simulation, by a paired per-query test and by Fisher's
   exact test, with the smallest difference each detects at the stated power.

Everything here sees plaintext (models, queries, histograms): evaluation
only. Seeded mode needs ``PRICURE_TEST_ONLY_SEEDED_NOISE=1`` in the
environment (the spawned servers inherit it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats

from .._validation import DEFAULT_LOGIT_BOUND, check_logit_bound, check_split
from ..config import Aggregation, Batching, Cluster, ExperimentOptions
from ..ensemble import PrivateEnsemble
from ..mpc.randomness import TestOnlyNoiseSeed
from ..mpc.sharing import SCALE
from ..parties.owner import ModelOwner
from ..privacy.noise import NoiseMechanism
from .reference import PlaintextReleaseOps, ensemble_logits, histogram, labels_from_one_hot, release

DEFAULT_MARGIN_BOUND = 0.02
"""Logit error (absolute, per logit) up to which an owner's vote must be stable for a query to be
compared. It must be at least :func:`truncation_error_bound` of the owners (checked); for the small
MLP/CNN owners used here that bound is about 1e-3 or less."""


# -- the per-query check (test-only seeded noise) --


class SeededSimulationOps(PlaintextReleaseOps):
    """The reference simulation with each server's partials drawn from its test-only seeded streams.

    Covers rows ``first_row .. first_row + rows - 1`` (the rows' indices in the
    order the servers compute them). Only :meth:`server_partials` differs from
    the reference: the rounding to the fixed-point grid, the sum and the
    lowest-index argmax are the reference's own.
    """

    def __init__(self, *, seed: TestOnlyNoiseSeed, first_row: int, rows: int, num_servers: int = 2,
                 colluding: int = 0) -> None:
        super().__init__(num_servers=num_servers, colluding=colluding)
        self.batches = [seed.batch(server=r, first_row=first_row, rows=rows) for r in range(num_servers)]

    def server_partials(self, partial: Callable[..., np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
        return [batch.partial(partial, shape, num_servers=self.num_servers, colluding=self.colluding)
                for batch in self.batches]


OpsFactory = Callable[..., PlaintextReleaseOps]


def simulate_seeded(
    histograms: np.ndarray,
    *,
    mechanism: NoiseMechanism,
    seed: TestOnlyNoiseSeed,
    num_servers: int = 2,
    colluding: int = 0,
    first_row: int = 0,
    batch_rows: int = 256,
    ops_factory: OpsFactory = SeededSimulationOps,
) -> np.ndarray:
    """Labels (B,) that the MPC path with ``seed`` releases for vote histograms (B, C) of rows ``first_row...``.

    ``ops_factory`` (keyword arguments of :class:`SeededSimulationOps`) exists
    so that tests can show the check catches a broken simulation.
    """
    check_split(num_servers, colluding)
    histograms = np.asarray(histograms, dtype=np.float64)
    labels = []
    for start in range(0, histograms.shape[0], batch_rows):
        chunk = histograms[start:start + batch_rows]
        ops = ops_factory(seed=seed, first_row=first_row + start, rows=chunk.shape[0], num_servers=num_servers,
                          colluding=colluding)
        labels.append(labels_from_one_hot(mechanism.release(chunk, ops)))
    return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def _grid(values: Any) -> np.ndarray:
    """Values rounded to the 2**-16 grid as :func:`~pricure_crypten.mpc.sharing.encode` does (exact in float64)."""
    return np.rint(np.asarray(values, dtype=np.float64) * SCALE) / SCALE


def fixed_point_logits(owners: Sequence[ModelOwner], queries: Any) -> np.ndarray:
    """Every owner's logits (K, B, C) with its parameters and the queries on the 2**-16 grid, as the servers hold them.

    Evaluated exactly (float64) on the owner's converted layers (BatchNorm
    folded, as shared). What is left between these and the servers' logits is
    their truncations only (:func:`truncation_error_bound`).
    """
    x0 = _grid_queries(queries)
    outputs = []
    for owner in owners:
        x = x0
        for spec in owner.layers:
            x = _fixed_point_layer(owner, spec, x)
        outputs.append(x.numpy())
    return np.stack(outputs)


def _grid_queries(queries: Any) -> torch.Tensor:
    return torch.from_numpy(_grid(torch.as_tensor(np.asarray(queries)).double().numpy()))


def _fixed_point_layer(owner: ModelOwner, spec: Any, x: torch.Tensor) -> torch.Tensor:
    """One converted layer on float64 inputs, its parameters on the 2**-16 grid (see :func:`fixed_point_logits`)."""
    import torch.nn.functional as F

    params = [torch.from_numpy(_grid(p)) for p in spec.params]
    if spec.kind == "linear":
        return F.linear(x, *params)
    if spec.kind == "conv2d":
        return F.conv2d(x, *params, stride=spec.option("stride"), padding=spec.option("padding"),
                        dilation=spec.option("dilation"))
    if spec.kind in ("avgpool2d", "maxpool2d"):
        pool = F.avg_pool2d if spec.kind == "avgpool2d" else F.max_pool2d
        return pool(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
    if spec.kind == "flatten":
        return x.flatten(1)
    if spec.kind == "relu":
        return x.clamp(min=0)
    if spec.kind == "square":
        return x * x
    if spec.kind == "affine":
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        return x * params[0].reshape(shape) + params[1].reshape(shape)
    raise ValueError(f"owner {owner.name}: no fixed-point reference for layer kind {spec.kind!r}")


def truncation_error_bound(owners: Sequence[ModelOwner], *, num_servers: int = 2, queries: Any = None) -> float:
    """A worst-case bound on |server logit - :func:`fixed_point_logits`| over all owners (inf if none is known).

    Assumes each truncating step (Linear, Conv2d, AvgPool2d, affine, Square)
    errs by at most ``num_servers`` units of 2**-16 per output; later layers
    amplify an input error by at most their operator inf-norm (the largest
    absolute row sum of the weights; ReLU, MaxPool, Flatten by 1). Square's
    error depends on the values: with input error at most E around the
    reference input x, ``|(x + E')**2 - x**2| <= (2 |x| + E) E``, so with
    ``queries`` (the bound then holds for these queries only) it uses the
    largest |x| of the reference evaluation of those queries at that layer;
    without them a Square gives inf.
    """
    unit = num_servers / SCALE
    worst = 0.0
    x0 = None if queries is None else _grid_queries(queries)
    for owner in owners:
        error = 0.0
        x = x0
        for spec in owner.layers:
            if spec.kind == "square":
                if x is None:
                    return math.inf
                error = (2 * float(x.abs().max()) + error) * error + unit
            if x is not None:
                x = _fixed_point_layer(owner, spec, x)
            if spec.kind in ("linear", "conv2d"):
                weight = np.abs(_grid(spec.params[0]))
                error = float(weight.reshape(weight.shape[0], -1).sum(axis=1).max()) * error + unit
            elif spec.kind == "affine":
                error = float(np.abs(_grid(spec.params[0])).max()) * error + unit
            elif spec.kind == "avgpool2d":
                error += unit
        worst = max(worst, error)
    return worst


def robust_votes(logits: np.ndarray, *, margin_bound: float, logit_bound: float = DEFAULT_LOGIT_BOUND) -> np.ndarray:
    """(B,) True where EVERY owner's vote is the same for every logit error of at most ``margin_bound``.

    Exact for the MPC vote (the lowest-index argmax of the clamped logits): with
    ``lo = clamp(x - b)`` and ``hi = clamp(x + b)`` (the clamp is monotone), the
    winner w stays the winner iff ``lo_w >= hi_c`` for every class c > w and
    ``lo_w > hi_c`` for every c < w.
    """
    logits = np.asarray(logits, dtype=np.float64)  # (K, B, C)
    clamped = np.clip(logits, -logit_bound, logit_bound)
    winner = clamped.argmax(axis=-1)  # (K, B), lowest index on ties
    low = np.clip(logits - margin_bound, -logit_bound, logit_bound)
    high = np.clip(logits + margin_bound, -logit_bound, logit_bound)
    low_winner = np.take_along_axis(low, winner[..., None], axis=-1)  # (K, B, 1)
    classes = np.arange(logits.shape[-1])
    above = classes[None, None, :] > winner[..., None]
    below = classes[None, None, :] < winner[..., None]
    stable = np.where(above, low_winner >= high, True) & np.where(below, low_winner > high, True)
    return stable.all(axis=-1).all(axis=0)


def vote_bounds(logits: np.ndarray, *, margin_bound: float,
                logit_bound: float = DEFAULT_LOGIT_BOUND) -> tuple[np.ndarray, np.ndarray]:
    """Per query and class, the fewest and the most votes (B, C) under any logit error of at most ``margin_bound``.

    An owner may vote for class c only if ``clamp(x_c + b) >= clamp(x_w - b)``
    for its float winner w (a superset of the classes it can vote for), so
    ``low[c]`` counts the owners that surely vote c, ``high[c]`` those that may.
    """
    logits = np.asarray(logits, dtype=np.float64)
    clamped = np.clip(logits, -logit_bound, logit_bound)
    winner = clamped.argmax(axis=-1)
    low_winner = np.take_along_axis(np.clip(logits - margin_bound, -logit_bound, logit_bound), winner[..., None], -1)
    may = np.clip(logits + margin_bound, -logit_bound, logit_bound) >= low_winner  # (K, B, C)
    may |= np.eye(logits.shape[-1], dtype=bool)[winner]
    sure = may & (may.sum(axis=-1, keepdims=True) == 1)
    return sure.sum(axis=0).astype(np.float64), may.sum(axis=0).astype(np.float64)


class IntervalSeededOps(SeededSimulationOps):
    """The seeded release on histogram INTERVALS: values (2, B, C) = (fewest, most) votes per class.

    Adds the very noise the servers add (the same seeded partials on the same
    2**-16 grid) to both bounds; an argmax, threshold or top is "decided" when
    it is the same for every histogram within the bounds (lowest index on
    ties). Results are (lower, upper) pairs: equal where decided, (0, 1)
    where not. Sound, not exact: the bounds ignore that one owner's vote
    moving lowers one class while raising another.
    """

    def add_noise(self, values: np.ndarray, partial: Callable[..., np.ndarray]) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        noise = np.zeros(values.shape[1:])
        for draw in self.server_partials(partial, values.shape[1:]):
            noise += np.round(draw * SCALE) / SCALE
        return values + noise

    def argmax(self, values: np.ndarray) -> np.ndarray:
        low, high = values
        classes = low.shape[-1]
        winner = low.argmax(axis=-1)
        low_w = np.take_along_axis(low, winner[..., None], axis=-1)
        index = np.arange(classes)
        beats = np.where(index > winner[..., None], low_w >= high, low_w > high)
        beats |= index == winner[..., None]
        decided = beats.all(axis=-1)
        one_hot = np.eye(classes)[winner]
        return np.stack([np.where(decided[..., None], one_hot, 0.0), np.where(decided[..., None], one_hot, 1.0)])

    def top(self, values: np.ndarray) -> np.ndarray:
        return values.max(axis=-1)

    def at_least(self, values: np.ndarray, threshold: float) -> np.ndarray:
        return (values >= threshold).astype(np.float64)  # (surely, possibly)

    def mask(self, one_hot: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return one_hot * keep[..., None]


def decided_releases(logits: np.ndarray, *, mechanism: NoiseMechanism, seed: TestOnlyNoiseSeed, margin_bound: float,
                     logit_bound: float = DEFAULT_LOGIT_BOUND, num_servers: int = 2, colluding: int = 0,
                     batch_rows: int = 256) -> np.ndarray:
    """(B,) True where the seeded release is the same for every vote histogram that owners' logit errors
    of at most ``margin_bound`` allow (:func:`vote_bounds`, :class:`IntervalSeededOps`)."""
    low, high = vote_bounds(logits, margin_bound=margin_bound, logit_bound=logit_bound)
    decided = []
    for start in range(0, low.shape[0], batch_rows):
        rows = low[start:start + batch_rows].shape[0]
        ops = IntervalSeededOps(seed=seed, first_row=start, rows=rows, num_servers=num_servers, colluding=colluding)
        lower, upper = mechanism.release(np.stack([low[start:start + rows], high[start:start + rows]]), ops)
        decided.append((lower == upper).all(axis=-1))
    return np.concatenate(decided)


@dataclass(frozen=True)
class ConformanceReport:
    """The per-query comparison. ``disagreements`` are indices among the compared queries.

    The simulation's histograms come from :func:`fixed_point_logits` (the
    owners' parameters and the queries on the servers' 2**-16 grid);
    ``float_vote_changes`` counts the owner votes that differ from a float32
    evaluation of the torch models (informative). ``truncation_bound`` is the
    worst-case error the servers' truncations can add
    (:func:`truncation_error_bound`; ``margin_bound`` must be at least that).
    ``near_tie_queries`` counts the queries where some owner's vote could
    change under a logit error of ``margin_bound``; those whose released
    label could then change too (:func:`decided_releases`) are excluded
    (``excluded_near_ties``), the others are compared.

    ``passed`` is True when at least one query was compared and every compared
    query got the same label from the MPC path and from the simulation.
    """

    queries: int
    compared: int
    agreements: int
    disagreements: tuple[int, ...]
    near_tie_queries: int
    truncation_bound: float
    float_vote_changes: int
    excluded_near_ties: tuple[int, ...]
    excluded_disagreements: tuple[int, ...]
    margin_bound: float
    num_owners: int
    num_classes: int
    num_servers: int
    colluding: int
    mechanism: str
    seed: str
    batch_rows: int
    flips: int  # compared queries whose private label differs from the noiseless ensemble's
    mpc_seconds: float
    mpc_labels: tuple[int, ...] = field(repr=False, default=())
    simulation_labels: tuple[int, ...] = field(repr=False, default=())

    @property
    def passed(self) -> bool:
        return self.compared > 0 and not self.disagreements

    def summary(self) -> dict[str, Any]:
        """The small, JSON-friendly part (no per-query labels)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("mpc_labels", "simulation_labels")}
        out["disagreements"] = list(self.disagreements)
        out["excluded_near_ties"] = len(self.excluded_near_ties)
        out["excluded_disagreements"] = list(self.excluded_disagreements)
        out["passed"] = self.passed
        return out


def _check_owners_and_queries(owners: Sequence[ModelOwner], queries: Any) -> tuple[list[ModelOwner], torch.Tensor]:
    owners = list(owners)
    if not owners or not all(isinstance(o, ModelOwner) for o in owners):
        raise TypeError("owners must be a non-empty sequence of pricure_crypten.ModelOwner")
    queries = torch.as_tensor(np.asarray(queries), dtype=torch.float32)
    if queries.ndim < 2 or queries.shape[0] == 0:
        raise ValueError(f"queries must be a non-empty batch (B, ...), got shape {tuple(queries.shape)}")
    return owners, queries


def mpc_labels(
    owners: Sequence[ModelOwner],
    queries: torch.Tensor,
    *,
    mechanism: NoiseMechanism,
    cluster: Cluster | None = None,
    batch_rows: int = 128,
    logit_bound: float = DEFAULT_LOGIT_BOUND,
    seed: TestOnlyNoiseSeed | None = None,
    repeats: int = 1,
) -> tuple[np.ndarray, float]:
    """The MPC path's labels (repeats, B) on real server processes, one batch of ``batch_rows`` at a time.

    With ``seed`` the noise is test-only seeded (a fresh ensemble: rows are
    counted from 0), else the production CSPRNG. Returns the labels and the
    summed MPC seconds.
    """
    experiment = ExperimentOptions(test_only_noise_seed=seed) if seed is not None else None
    ensemble = PrivateEnsemble(owners, aggregation=Aggregation(method="vote", noise=mechanism, logit_bound=logit_bound),
                               cluster=cluster, batching=Batching(enabled=False, max_rows=batch_rows),
                               experiment=experiment)
    labels, seconds = [], 0.0
    with ensemble:
        for _ in range(repeats):
            run = []
            for start in range(0, queries.shape[0], batch_rows):
                prediction = ensemble.predict(queries[start:start + batch_rows])
                if prediction.cost.server_decodes:
                    raise RuntimeError(f"a server decoded {prediction.cost.server_decodes} values (must be 0)")
                run.append(prediction.labels)
                seconds += prediction.cost.mpc_seconds
            labels.append(np.concatenate(run))
    return np.stack(labels), seconds


def compare_mpc_to_simulation(
    owners: Sequence[ModelOwner],
    queries: Any,
    *,
    mechanism: NoiseMechanism,
    seed: TestOnlyNoiseSeed,
    cluster: Cluster | None = None,
    batch_rows: int = 128,
    logit_bound: float = DEFAULT_LOGIT_BOUND,
    margin_bound: float = DEFAULT_MARGIN_BOUND,
    ops_factory: OpsFactory = SeededSimulationOps,
    labels: np.ndarray | None = None,
) -> ConformanceReport:
    """Per-query check: the MPC path's labels (test-only seeded noise) against the seeded simulation's.

    Runs the owners on real CrypTen servers (``cluster``; default 2 servers
    and the dealer), batches of ``batch_rows``, then simulates the same
    release from the owners' float logits (vote histograms). Queries where an
    owner's vote is not robust to a logit error of ``margin_bound`` are
    excluded and counted (their disagreements are listed apart). ``labels``
    (the MPC labels of an earlier run with the same seed and settings) skips
    the MPC run, e.g. to check a deliberately broken ``ops_factory``.
    """
    owners, queries = _check_owners_and_queries(owners, queries)
    if not isinstance(seed, TestOnlyNoiseSeed):
        raise TypeError(f"seed must be a TestOnlyNoiseSeed, not {type(seed).__name__}")
    if not (isinstance(margin_bound, (int, float)) and math.isfinite(margin_bound) and margin_bound >= 0):
        raise ValueError(f"margin_bound must be a finite number >= 0, got {margin_bound!r}")
    mechanism.check_aggregation("vote")
    logit_bound = check_logit_bound(logit_bound)
    cluster = cluster if cluster is not None else Cluster()
    logits = fixed_point_logits(owners, queries)
    counts = histogram(logits, aggregation="vote", logit_bound=logit_bound)
    bound = truncation_error_bound(owners, num_servers=cluster.num_servers, queries=queries)
    if margin_bound < bound:
        raise ValueError(f"margin_bound {margin_bound:g} is below the worst-case truncation error {bound:g} of these "
                         "owners under MPC: exclusions would not be sound")
    seconds = 0.0
    if labels is None:
        runs, seconds = mpc_labels(owners, queries, mechanism=mechanism, cluster=cluster, batch_rows=batch_rows,
                                   logit_bound=logit_bound, seed=seed)
        labels = runs[0]
    labels = np.asarray(labels)
    if labels.shape != (counts.shape[0],):
        raise ValueError(f"labels must have shape ({counts.shape[0]},), got {labels.shape}")
    simulated = simulate_seeded(counts, mechanism=mechanism, seed=seed, num_servers=cluster.num_servers,
                                colluding=cluster.colluding, batch_rows=batch_rows, ops_factory=ops_factory)
    near_tie = ~robust_votes(logits, margin_bound=margin_bound, logit_bound=logit_bound)
    robust = decided_releases(logits, mechanism=mechanism, seed=seed, margin_bound=margin_bound,
                              logit_bound=logit_bound, num_servers=cluster.num_servers, colluding=cluster.colluding,
                              batch_rows=batch_rows) | ~near_tie
    noiseless = counts.argmax(axis=-1)
    differ = labels != simulated
    return ConformanceReport(
        queries=len(labels), compared=int(robust.sum()), agreements=int((robust & ~differ).sum()),
        disagreements=tuple(int(i) for i in np.flatnonzero(robust & differ)),
        near_tie_queries=int(near_tie.sum()), truncation_bound=float(bound),
        float_vote_changes=int(np.sum(histogram(ensemble_logits([o.model for o in owners], queries),
                                                aggregation="vote", logit_bound=logit_bound) != counts) // 2),
        excluded_near_ties=tuple(int(i) for i in np.flatnonzero(~robust)),
        excluded_disagreements=tuple(int(i) for i in np.flatnonzero(~robust & differ)),
        margin_bound=float(margin_bound), num_owners=len(owners), num_classes=counts.shape[-1],
        num_servers=cluster.num_servers, colluding=cluster.colluding, mechanism=repr(mechanism), seed=seed.seed,
        batch_rows=batch_rows, flips=int((robust & (labels != noiseless)).sum()), mpc_seconds=seconds,
        mpc_labels=tuple(int(v) for v in labels), simulation_labels=tuple(int(v) for v in simulated),
    )


# -- the statistical check (production CSPRNG noise) --


def minimum_detectable_difference(p: float, n1: int, n2: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |p2 - p1| that the two-sided two-proportion z-test at ``alpha`` detects with ``power``.

    Normal approximation, ``p1 = p`` (n1 trials) against ``p2 = p + d`` (n2
    trials), the pooled variance under H0: the root of
    ``z_{1-alpha/2} sqrt(pbar (1 - pbar) (1/n1 + 1/n2)) + z_power sqrt(p1 q1 / n1 + p2 q2 / n2) = d``.
    """
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

    def excess(d: float) -> float:
        p2 = min(max(p + d, 0.0), 1.0)
        pbar = (n1 * p + n2 * p2) / (n1 + n2)
        need = za * math.sqrt(pbar * (1 - pbar) * (1 / n1 + 1 / n2)) + zb * math.sqrt(
            p * (1 - p) / n1 + p2 * (1 - p2) / n2)
        return d - need

    high = 1.0 - p
    if high <= 0 or excess(high) < 0:
        return float("nan")
    low = 0.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if excess(mid) < 0 else (low, mid)
    return high


@dataclass(frozen=True)
class FlipRateReport:
    """Flip rates (private label != noiseless ensemble label; an abstention counts as a flip).

    ``paired_*``: per-query test. Under H0 (query i flips with the same
    probability p_i under MPC and in the simulation) ``D = mean(x_ij - q_i)``
    has mean 0 and variance ``sum_i p_i (1 - p_i) (1/R_mpc + 1/R_sim) / n^2``
    (p_i estimated from both samples pooled); ``z = D / sd``. It removes the
    spread of flip rates between queries, so it is far more powerful than the
    unpaired tests when most queries rarely or always flip.
    ``paired_detectable`` is the smallest uniform shift of the per-query flip
    rates it detects with 80% power at alpha = 0.05 (two-sided),
    ``(z_0.975 + z_0.8) sd``; ``unpaired_detectable`` the same for Fisher's
    exact test (normal approximation of its power) on the pooled 2x2 counts,
    which treats trials as independent (conservative here).
    """

    queries: int
    mpc_repeats: int
    simulation_repeats: int
    mpc_flips: int
    simulation_flips: int
    mpc_rate: float
    simulation_rate: float
    fisher_p: float
    unpaired_detectable: float
    paired_z: float
    paired_p: float
    paired_detectable: float
    alpha: float
    power: float
    mechanism: str
    num_owners: int
    num_servers: int
    mpc_seconds: float

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def flip_rate_test(
    mpc_flips: np.ndarray, simulation_flips: np.ndarray, *, alpha: float = 0.05, power: float = 0.8
) -> dict[str, float]:
    """The tests of :class:`FlipRateReport` on flip indicators (R_mpc, n) and (R_sim, n) of the same n queries."""
    x = np.asarray(mpc_flips, dtype=np.float64)
    y = np.asarray(simulation_flips, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.shape[1] == 0:
        raise ValueError(f"flip indicators must be (repeats, queries) over the same queries, got {x.shape}, {y.shape}")
    r_mpc, n = x.shape
    r_sim = y.shape[0]
    a, b = int(x.sum()), int(y.sum())
    fisher_p = float(stats.fisher_exact([[a, x.size - a], [b, y.size - b]])[1])
    pooled = (x.sum(axis=0) + y.sum(axis=0)) / (r_mpc + r_sim)
    sd = math.sqrt(float(np.sum(pooled * (1 - pooled))) * (1 / r_mpc + 1 / r_sim)) / n
    diff = float(x.mean() - y.mean(axis=0).mean())
    z = diff / sd if sd > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    zsum = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return {
        "mpc_flips": a, "simulation_flips": b, "mpc_rate": a / x.size, "simulation_rate": b / y.size,
        "fisher_p": fisher_p,
        "unpaired_detectable": minimum_detectable_difference(b / y.size, x.size, y.size, alpha=alpha, power=power),
        "paired_z": float(z), "paired_p": float(2 * stats.norm.sf(abs(z))), "paired_detectable": float(zsum * sd),
    }


def compare_flip_rates(
    owners: Sequence[ModelOwner],
    queries: Any,
    *,
    mechanism: NoiseMechanism,
    cluster: Cluster | None = None,
    batch_rows: int = 128,
    logit_bound: float = DEFAULT_LOGIT_BOUND,
    mpc_repeats: int = 1,
    simulation_repeats: int = 50,
    simulation_seed: str = "flip-rates",
    alpha: float = 0.05,
    power: float = 0.8,
    labels: np.ndarray | None = None,
) -> FlipRateReport:
    """Flip rates of the MPC path (production CSPRNG noise) against the simulation's, same queries.

    The simulation (:func:`~pricure_crypten.experiments.reference.release`,
    the one the privacy experiments use) draws its noise from a seeded
    SHAKE-256 stream (reproducible). The noiseless label is the lowest-index
    argmax of the plaintext vote histogram. ``labels`` (R_mpc, B): MPC labels
    of an earlier run (skips the MPC run, e.g. to test the test against a
    simulation of another mechanism).
    """
    owners, queries = _check_owners_and_queries(owners, queries)
    cluster = cluster if cluster is not None else Cluster()
    logits = ensemble_logits([o.model for o in owners], queries)
    counts = histogram(logits, aggregation="vote", logit_bound=logit_bound)
    noiseless = counts.argmax(axis=-1)
    if labels is None:
        runs, seconds = mpc_labels(owners, queries, mechanism=mechanism, cluster=cluster, batch_rows=batch_rows,
                                   logit_bound=logit_bound, repeats=mpc_repeats)
    else:
        runs, seconds = np.atleast_2d(np.asarray(labels)), 0.0
        mpc_repeats = runs.shape[0]
    simulated = np.stack([
        release(counts, mechanism=mechanism, num_servers=cluster.num_servers, colluding=cluster.colluding,
                seed=f"{simulation_seed}/{r}")
        for r in range(simulation_repeats)
    ])
    result = flip_rate_test(runs != noiseless, simulated != noiseless, alpha=alpha, power=power)
    return FlipRateReport(
        queries=counts.shape[0], mpc_repeats=mpc_repeats, simulation_repeats=simulation_repeats, alpha=alpha,
        power=power, mechanism=repr(mechanism), num_owners=len(owners), num_servers=cluster.num_servers,
        mpc_seconds=seconds, **result,
    )


__all__ = [
    "ConformanceReport",
    "DEFAULT_MARGIN_BOUND",
    "FlipRateReport",
    "SeededSimulationOps",
    "compare_flip_rates",
    "compare_mpc_to_simulation",
    "decided_releases",
    "fixed_point_logits",
    "truncation_error_bound",
    "vote_bounds",
    "flip_rate_test",
    "minimum_detectable_difference",
    "mpc_labels",
    "robust_votes",
    "simulate_seeded",
]

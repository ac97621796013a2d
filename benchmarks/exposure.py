"""Membership-inference exposure where the noiseless system leaks (the ``exposure`` suite; issue 16, item 3).

Question: with few owners, small shards and deliberately overfit owners (the
regime where label-only membership inference works), how much does the
private ensemble's noise reduce what a client learns about who was trained
on, at a stated TOTAL privacy budget of that client?

Setting (per :class:`Setting`): a pool of records (MNIST train + validation;
digits in quick mode or when MNIST is missing) is cut at random into

* K owners' disjoint chunks of ``shard`` records; with ``duplicate_fraction``
  f > 0 the first f * shard records of owner k's chunk are ALSO given to owner
  k + 1 (mod K): the same patient in two hospitals;
* held-out non-members (``non_members`` records, never trained on);
* the attacker's pool: K shadow chunks of the same size (duplicated the same
  way) and as many shadow non-members as the target has non-members.

Owners and shadow owners train with :class:`~pricure_crypten.experiments.attacks.Recipe`
``kind="overfit"`` (plain Adam, no validation, no early stopping, no
regularisation); every owner's accuracy on its own shard (TRAIN) and on the
test split (TEST) is reported, so the overfitting is measured.

Targets (each a separate membership-inference game):

* ``single_owner``: owner 0 alone as a label API; members = owner 0's shard;
* ``plaintext_ensemble``: the K owners' vote, no noise; members = the union
  of the owners' records (at most ``max_members``, drawn at random);
* ``private_ensemble``: the same vote histogram with Gaussian noise, released
  as the noisy argmax, simulated in plaintext by
  :class:`~pricure_crypten.experiments.attacks.EnsembleOracle`
  (:func:`pricure_crypten.experiments.reference.release`: the mechanism's own
  ``release`` with the servers' noise partials, i.e. what the MPC path computes).

TOTAL epsilon. For a private row, ``total_epsilon`` bounds ALL the queries the
attacker (one client) sends to the target in that row's experiment:
``records x queries_per_record`` (members + non-members, every augmentation).
The per-query Gaussian noise is calibrated from the total with the PLD
accountant (:func:`calibrate_total`, bisection on the per-query epsilon at
per-query delta 1e-5; the total is taken at delta = 1e-5); the analytical
total is reported per accountant (PLD and RDP) beside every row. Shadow
calibration queries go to the attacker's OWN shadow ensemble (same public
mechanism), not to the target, so they cost nothing. Each attack is its own
experiment (its own client and budget): an attack with more queries per
record gets more noise per query. The neighbouring relation of the
calibration is one training record of ONE owner (L2 sensitivity sqrt 2); a
record duplicated in two owners moves two votes (sensitivity 2 sqrt 2), so
its guarantee is the group-of-two bound, reported as
``analytical_epsilon_pld_duplicated``.

The private ensemble's test ``accuracy`` is measured at the same per-query
noise (on ``test_queries`` test records; those queries are not part of the
attacker's total): the privacy/utility trade-off of the row.

Attacks (label-only, thresholds calibrated on shadows of the target's size,
no ground truth): gap (1 query/record), augmentation by shifts and by
Gaussian noise (``augment_n`` + 1 queries/record), and the decision-boundary
attack (HopSkipJump, ART) on ``boundary_records`` members and as many
non-members against the noiseless targets only (its thousands of adaptive
queries per record are not known in advance, so no per-query noise can be
calibrated from a total before it runs; at any of these totals each of its
answers would carry more noise than the ensemble has votes).

Metrics: AUC, TPR at 1% and 0.1% FPR with stratified bootstrap 95% intervals
(:func:`~pricure_crypten.experiments.attacks.evaluate`), the empirical epsilon
lower bound (:func:`pricure_crypten.experiments.attacks.audit.empirical_epsilon`,
delta 1e-5, 95% confidence) and the largest epsilon this many members and
non-members could refute at all (``max_refutable_epsilon``). A private row
whose empirical lower bound exceeded its analytical total would be a bug.

Run alone (``python -m benchmarks.exposure --out DIR``: exposure.csv,
exposure.md, exposure.json) or as ``python -m benchmarks.run --suite exposure``.
Settings are seeded independently, so ``--settings NAME`` runs can go in
parallel processes and be merged with ``--combine DIR...``; ``--totals`` with
``--private-only`` adds private rows at other totals (e.g. large ones, to see
where the private ensemble's accuracy comes back) to a finished run.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pricure_crypten.experiments.attacks import (
    AugmentationAttack, BoundaryAttack, EnsembleOracle, GapAttack, LabelOnlyAttack, LabelOracle, Recipe,
    SingleOwnerOracle, evaluate, roc)
from pricure_crypten.experiments.data import DatasetNotFoundError, load_dataset
from pricure_crypten.experiments.models import default_architecture
from pricure_crypten.experiments.training import accuracy as model_accuracy
from pricure_crypten.privacy.accounting import ReleaseCost, make_accountant
from pricure_crypten.privacy.noise import GaussianNoise, NoiseMechanism, NoNoise
from pricure_crypten.privacy.noise.gaussian import SENSITIVITY_L2

from .env import REPO_ROOT

DELTA = 1e-5  # the total delta at which every total epsilon is stated
PER_QUERY_DELTA = 1e-5  # the delta that parameterises the per-query analytic Gaussian (its sigma)
CALIBRATION_ACCOUNTANT = "pld"
REPORTED_ACCOUNTANTS = ("pld", "rdp")
CONFIDENCE = 0.95
DEFAULT_MNIST_ROOT = REPO_ROOT.parent / "shared" / "data" / "mnist"


@dataclass(frozen=True)
class Setting:
    """K owners with ``shard`` records each; ``duplicate_fraction`` of each shard also given to the next owner."""

    name: str
    owners: int
    shard: int
    duplicate_fraction: float = 0.0
    boundary: bool = False  # also run HopSkipJump (noiseless targets) in this setting

    def __post_init__(self) -> None:
        if self.owners < 1 or self.shard < 2:
            raise ValueError(f"setting {self.name!r}: need owners >= 1 and shard >= 2")
        if not 0 <= self.duplicate_fraction <= 1:
            raise ValueError(f"setting {self.name!r}: duplicate_fraction must be in [0, 1]")
        if self.duplicate_fraction and self.owners < 2:
            raise ValueError(f"setting {self.name!r}: duplication needs at least two owners")


@dataclass(frozen=True)
class ExposureGrid:
    """The points and sizes of one run."""

    dataset: str
    settings: tuple[Setting, ...]
    total_epsilons: tuple[float, ...]
    epochs: int
    max_members: int  # members evaluated per ensemble target (a random subset of the union)
    non_members: int
    test_queries: int
    augment_n: int
    noise_std: float
    boundary_records: int  # members (= non-members) for HopSkipJump, noiseless targets only (0: skip)
    boundary: dict[str, int] = field(hash=False, default_factory=dict)
    noiseless: bool = True  # also the single-owner and plaintext-ensemble targets
    resamples: int = 500
    lr: float = 3e-3
    batch_size: int = 32
    roc_points: int = 30


FULL = ExposureGrid(
    dataset="mnist",
    settings=(Setting("k3", 3, 300, boundary=True), Setting("k3-dup", 3, 300, 0.5), Setting("k25", 25, 100)),
    total_epsilons=(1.0, 4.0, 16.0), epochs=150, max_members=1500, non_members=1500, test_queries=2000,
    augment_n=10, noise_std=0.1, boundary_records=25,
    boundary={"max_iter": 5, "max_eval": 200, "init_eval": 20, "init_size": 50}, resamples=300,
)
QUICK = ExposureGrid(
    dataset="digits",
    settings=(Setting("k3-dup", 3, 60, 0.5),),
    total_epsilons=(1.0, 4.0, 16.0), epochs=40, max_members=180, non_members=200, test_queries=300,
    augment_n=4, noise_std=0.1, boundary_records=0, resamples=50,
)


# ------------------------------------------------------------------------------------ calibration

@functools.lru_cache(maxsize=None)
def _composed(cost: ReleaseCost, queries: int, accountant: str, delta: float) -> float:
    return float(make_accountant(accountant).step(cost, queries).spent(delta)[0])


def composed(mechanism: NoiseMechanism | ReleaseCost, queries: int, *, accountant: str, delta: float = DELTA) -> float:
    """Total epsilon at ``delta`` of ``queries`` releases of ``mechanism`` (inf without noise)."""
    if isinstance(mechanism, NoNoise):
        return math.inf
    return _composed(ReleaseCost.of(mechanism), queries, accountant, delta)


def calibrate_total(total_epsilon: float, queries: int, *, delta: float = DELTA,
                    accountant: str = CALIBRATION_ACCOUNTANT, rel_tol: float = 1e-3) -> GaussianNoise:
    """The per-query Gaussian mechanism whose ``queries`` releases compose to ``total_epsilon`` at ``delta``.

    T releases of a Gaussian mechanism with noise multiplier z compose exactly to
    ONE Gaussian release with multiplier z / sqrt(T) (Gaussian DP, Dong, Roth &
    Su 2019), whose exact (epsilon, delta) curve is the analytic Gaussian's
    (Balle & Wang 2018). So: z / sqrt(T) = the analytic Gaussian's sigma for
    (total_epsilon, delta) at sensitivity 1 (diffprivlib), times (1 + 1e-6)
    on the safe side; the per-query epsilon (at per-query delta
    :data:`PER_QUERY_DELTA`) is found by bisection on the analytic
    Gaussian's scale. The result is CHECKED with ``accountant`` (PLD by
    default, a pessimistic numerical bound): its total must lie within
    ``rel_tol`` of the target, else this raises.
    """
    from diffprivlib.mechanisms import GaussianAnalytic

    if not (math.isfinite(total_epsilon) and total_epsilon > 0):
        raise ValueError(f"total_epsilon must be a finite number > 0, got {total_epsilon!r}")
    if not (isinstance(queries, int) and queries >= 1):
        raise ValueError(f"queries must be a positive integer, got {queries!r}")
    one = GaussianAnalytic(epsilon=total_epsilon, delta=delta, sensitivity=1.0)._scale
    target_scale = one * math.sqrt(queries) * SENSITIVITY_L2 * (1 + 1e-6)  # sigma per query, in votes

    def scale(per_query: float) -> float:
        return GaussianNoise(epsilon=per_query, delta=PER_QUERY_DELTA).scale

    low, high = 1e-9, 100.0  # the scale decreases with the per-query epsilon
    if not scale(high) <= target_scale <= scale(low):
        raise ValueError(f"cannot calibrate {queries} queries to a total epsilon of {total_epsilon}")
    for _ in range(200):
        middle = math.sqrt(low * high)
        if scale(middle) >= target_scale:
            low = middle
        else:
            high = middle
        if high / low - 1 < 1e-10:
            break
    mechanism = GaussianNoise(epsilon=low, delta=PER_QUERY_DELTA)  # scale >= target: at least the noise asked
    reached = composed(mechanism, queries, accountant=accountant, delta=delta)
    if reached < total_epsilon * (1 - rel_tol):  # large totals: the accountant finds the analytic sigma loose;
        high = low * 2                            # refine on the accountant itself, staying at or below the total
        while composed(GaussianNoise(epsilon=high, delta=PER_QUERY_DELTA), queries, accountant=accountant,
                       delta=delta) <= total_epsilon:
            low, high = high, high * 2
        for _ in range(60):
            middle = math.sqrt(low * high)
            if composed(GaussianNoise(epsilon=middle, delta=PER_QUERY_DELTA), queries, accountant=accountant,
                        delta=delta) <= total_epsilon:
                low = middle
            else:
                high = middle
            if high / low - 1 < rel_tol / 10:
                break
        mechanism = GaussianNoise(epsilon=low, delta=PER_QUERY_DELTA)
        reached = composed(mechanism, queries, accountant=accountant, delta=delta)
    if abs(reached - total_epsilon) > rel_tol * total_epsilon:
        raise RuntimeError(f"calibration missed: {queries} queries compose to {reached} ({accountant}), "
                           f"asked {total_epsilon}")
    return mechanism


def group_cost(mechanism: GaussianNoise, group: int = 2) -> ReleaseCost:
    """One release's cost for a record present in ``group`` owners: the L2 sensitivity is ``group`` times larger."""
    event = ReleaseCost.of(mechanism)
    return ReleaseCost(f"{event.mechanism}-group{group}", event.epsilon, event.delta, "gaussian",
                       event.noise_multiplier / group)


# ------------------------------------------------------------------------------------------ setup

@dataclass
class Prepared:
    """One setting: trained owners and shadows, the evaluation records and the owners' accuracies."""

    setting: Setting
    dataset: Any
    x: np.ndarray  # the pool (train + validation split)
    y: np.ndarray
    shards: list[np.ndarray]
    duplicated: np.ndarray  # pool indices present in two owners
    non_members: np.ndarray
    shadow_shards: list[np.ndarray]
    shadow_non_members: np.ndarray
    models: list
    shadows: list
    owner_accuracy: list[dict[str, float]]


def _shards(chunks: list[np.ndarray], fraction: float) -> tuple[list[np.ndarray], np.ndarray]:
    copies = [chunk[: int(round(fraction * len(chunk)))] for chunk in chunks]
    k = len(chunks)
    shards = [np.concatenate([chunks[i], copies[(i - 1) % k]]) if fraction else chunks[i] for i in range(k)]
    return shards, np.sort(np.concatenate(copies)) if fraction else np.zeros(0, np.int64)


def split_pool(size: int, setting: Setting, *, non_members: int, seed: int) -> dict[str, Any]:
    """Disjoint random index sets of the pool: target chunks, non-members, shadow chunks, shadow non-members."""
    k, n = setting.owners, setting.shard
    need = 2 * k * n + 2 * non_members
    if need > size:
        raise ValueError(f"setting {setting.name!r} needs {need} records, the pool has {size}")
    order = np.random.default_rng(seed).permutation(size)
    cuts = np.cumsum([k * n, non_members, k * n, non_members])
    target, outs, shadow, shadow_outs = np.split(order[: cuts[-1]], cuts[:-1])
    shards, duplicated = _shards(np.split(target, k), setting.duplicate_fraction)
    shadow_shards, _ = _shards(np.split(shadow, k), setting.duplicate_fraction)
    return {"shards": shards, "duplicated": duplicated, "non_members": outs, "shadow_shards": shadow_shards,
            "shadow_non_members": shadow_outs}


def _pool(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([dataset.train_x, dataset.val_x]), torch.cat([dataset.train_y, dataset.val_y])


def prepare(dataset, setting: Setting, grid: ExposureGrid, *, seed: int) -> Prepared:
    """Split, train the owners and shadow owners (overfit recipe), measure their train/test accuracy."""
    x, y = _pool(dataset)
    parts = split_pool(len(y), setting, non_members=grid.non_members, seed=seed)
    recipe = Recipe(arch=default_architecture(dataset), kind="overfit", epochs=grid.epochs, lr=grid.lr,
                    batch_size=grid.batch_size)
    models = recipe.train_all(x, y, parts["shards"], seed=seed)
    shadows = recipe.train_all(x, y, parts["shadow_shards"], seed=seed + 1000)
    test_x, test_y = dataset.test_x[: grid.test_queries], dataset.test_y[: grid.test_queries]
    owner_accuracy = []
    for role, group, shards in (("owner", models, parts["shards"]), ("shadow", shadows, parts["shadow_shards"])):
        for k, (model, shard) in enumerate(zip(group, shards)):
            index = torch.as_tensor(shard)
            owner_accuracy.append({"setting": setting.name, "role": role, "index": k, "records": len(shard),
                                   "train_accuracy": model_accuracy(model, x[index], y[index]),
                                   "test_accuracy": model_accuracy(model, test_x, test_y)})
    return Prepared(setting, dataset, x.numpy(), y.numpy(), parts["shards"], parts["duplicated"],
                    parts["non_members"], parts["shadow_shards"], parts["shadow_non_members"], models, shadows,
                    owner_accuracy)


# ---------------------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Game:
    """One target's membership game: the records the attacker asks about and the shadow calibration sets."""

    target: str
    members: np.ndarray  # pool indices
    non_members: np.ndarray
    shadow_in: np.ndarray
    shadow_out: np.ndarray

    @property
    def records(self) -> np.ndarray:
        return np.concatenate([self.members, self.non_members])

    @property
    def is_member(self) -> np.ndarray:
        return np.r_[np.ones(len(self.members), np.int64), np.zeros(len(self.non_members), np.int64)]


def games(prep: Prepared, grid: ExposureGrid, *, seed: int) -> dict[str, Game]:
    """The single-owner game and the ensemble game (shared by the plaintext and private ensembles)."""
    rng = np.random.default_rng([seed, 7])

    def cap(indices: np.ndarray) -> np.ndarray:
        unique = np.unique(indices)
        return np.sort(rng.permutation(unique)[: grid.max_members])

    single = Game("single_owner", cap(prep.shards[0]), prep.non_members, cap(prep.shadow_shards[0]),
                  prep.shadow_non_members)
    union = cap(np.concatenate(prep.shards))
    ensemble = Game("ensemble", union, prep.non_members, cap(np.concatenate(prep.shadow_shards)),
                    prep.shadow_non_members)
    return {"single_owner": single, "ensemble": ensemble}


def _oracle(target: str, models: Sequence, dataset, mechanism: NoiseMechanism, seed: int | str) -> LabelOracle:
    if target == "single_owner":
        return SingleOwnerOracle(model=models[0], num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    return EnsembleOracle(models=models, num_classes=dataset.num_classes, input_shape=dataset.input_shape,
                          aggregation="vote", mechanism=mechanism, seed=seed)


def attacks(grid: ExposureGrid, *, seed: int) -> list[tuple[str, LabelOnlyAttack]]:
    """The label-only attacks with a fixed number of queries per record."""
    n = grid.augment_n
    return [("gap", GapAttack()),
            (f"augmentation-shift-n{n}", AugmentationAttack(n=n, kind="shift", seed=seed)),
            (f"augmentation-noise-std{grid.noise_std:g}-n{n}",
             AugmentationAttack(n=n, kind="noise", noise_std=grid.noise_std, seed=seed))]


# -------------------------------------------------------------------------------------------- rows

def _roc_text(is_member: np.ndarray, scores: np.ndarray, points: int) -> str:
    fpr, tpr, _ = roc(is_member, scores)
    if len(fpr) > points:  # the ends and a log-spread of the low-FPR region
        keep = np.unique(np.r_[0, len(fpr) - 1, np.searchsorted(fpr, np.geomspace(1e-3, 1, points - 2))])
        keep = keep[keep < len(fpr)]
        fpr, tpr = fpr[keep], tpr[keep]
    return " ".join(f"{f:.4g}:{t:.4g}" for f, t in zip(fpr, tpr))


def _metrics(is_member: np.ndarray, scores: np.ndarray, *, threshold: float, grid: ExposureGrid,
             seed: int) -> dict[str, Any]:
    from pricure_crypten.experiments.attacks.audit import empirical_epsilon

    report = evaluate(is_member, scores, threshold=threshold, resamples=grid.resamples, seed=seed).to_row()
    # the audit's default "split" selection: threshold chosen on half of each class, tested once on the other half
    audit = empirical_epsilon(is_member, scores, delta=DELTA, confidence=CONFIDENCE, seed=seed)
    return {**report, "empirical_epsilon_lower": audit.epsilon_lower, "audit_threshold": audit.tested_threshold,
            "audit_members": audit.members, "audit_non_members": audit.non_members,
            "max_refutable_epsilon": audit.max_refutable, "roc": _roc_text(is_member, scores, grid.roc_points)}


def _test_accuracy(target: str, prep: Prepared, mechanism: NoiseMechanism, grid: ExposureGrid, stream: str) -> float:
    oracle = _oracle(target, prep.models, prep.dataset, mechanism, stream)
    x, y = prep.dataset.test_x[: grid.test_queries].numpy(), prep.dataset.test_y[: grid.test_queries].numpy()
    return float(np.mean(oracle(x) == y))


def _base_row(prep: Prepared, target: str, total: float) -> dict[str, Any]:
    s = prep.setting
    owners = [a for a in prep.owner_accuracy if a["role"] == "owner"]
    if target == "single_owner":
        owners = owners[:1]
    return {"dataset": prep.dataset.name, "setting": s.name, "owners": s.owners, "shard": s.shard,
            "duplicate_fraction": s.duplicate_fraction, "target": target, "total_epsilon": total, "delta": DELTA,
            "owner_train_accuracy": float(np.mean([a["train_accuracy"] for a in owners])),
            "owner_test_accuracy": float(np.mean([a["test_accuracy"] for a in owners]))}


def _accounting(mechanism: NoiseMechanism, queries: int) -> dict[str, Any]:
    noisy = not isinstance(mechanism, NoNoise)
    row: dict[str, Any] = {"calibration_accountant": CALIBRATION_ACCOUNTANT if noisy else "",
                           "per_query_epsilon": mechanism.epsilon, "per_query_delta": mechanism.delta,
                           "noise_sigma": mechanism.scale}
    for name in REPORTED_ACCOUNTANTS:
        row[f"analytical_epsilon_{name}"] = composed(mechanism, queries, accountant=name)
    return row


def attack_rows(prep: Prepared, grid: ExposureGrid, *, seed: int) -> Iterator[dict[str, Any]]:
    """Every (target, total epsilon, attack) of one prepared setting; a row per member subset."""
    ds = prep.dataset
    by_target = games(prep, grid, seed=seed)
    plan = [("single_owner", math.inf), ("plaintext_ensemble", math.inf)] if grid.noiseless else []
    plan += [("private_ensemble", eps) for eps in grid.total_epsilons]
    duplicated = set(prep.duplicated.tolist())
    for target, total in plan:
        game = by_target["single_owner" if target == "single_owner" else "ensemble"]
        records, is_member = game.records, game.is_member
        for attack_name, attack in attacks(grid, seed=seed):
            queries = len(records) * attack.queries_per_record()
            mechanism = NoNoise() if math.isinf(total) else calibrate_total(total, queries)
            begin = time.perf_counter()
            stream = f"{seed}/{prep.setting.name}/{target}/{total}/{attack_name}"  # independent noise per row
            attack.calibrate(_oracle(target, prep.shadows, ds, mechanism, f"{stream}/shadow"),
                             prep.x[game.shadow_in], prep.y[game.shadow_in],
                             prep.x[game.shadow_out], prep.y[game.shadow_out])
            target_oracle = _oracle(target, prep.models, ds, mechanism, f"{stream}/target")
            scores = attack.scores(target_oracle, prep.x[records], prep.y[records])
            assert target_oracle.queries == queries, (target_oracle.queries, queries)
            seconds = time.perf_counter() - begin
            common = {**_base_row(prep, target, total), "attack": attack_name,
                      "queries_per_record": attack.queries_per_record(), "records_queried": len(records),
                      "queries_total": queries, **_accounting(mechanism, queries),
                      "test_accuracy": _test_accuracy(target, prep, mechanism, grid, f"{stream}/test"),
                      "attack_seconds": seconds}
            yield {**common, "members_subset": "all",
                   **_metrics(is_member, scores, threshold=attack.threshold, grid=grid, seed=seed)}
            if target != "single_owner" and duplicated:
                keep = np.array([(not m) or (r in duplicated) for r, m in zip(records, is_member)])
                group = {"analytical_epsilon_pld_duplicated": math.inf if isinstance(mechanism, NoNoise)
                         else composed(group_cost(mechanism), queries, accountant="pld")}
                yield {**common, "members_subset": "duplicated", **group,
                       **_metrics(is_member[keep], scores[keep], threshold=attack.threshold, grid=grid, seed=seed)}
        if target != "private_ensemble" and grid.boundary_records and prep.setting.boundary:
            yield boundary_row(prep, target, game, grid, seed=seed)


def boundary_row(prep: Prepared, target: str, game: Game, grid: ExposureGrid, *, seed: int) -> dict[str, Any]:
    """HopSkipJump on a subset of the game's members and non-members, against a noiseless target."""
    ds = prep.dataset
    n = grid.boundary_records
    rng = np.random.default_rng([seed, 11])
    members, outs = rng.permutation(game.members)[:n], rng.permutation(game.non_members)[:n]
    shadow_in, shadow_out = rng.permutation(game.shadow_in)[:n], rng.permutation(game.shadow_out)[:n]
    records = np.r_[members, outs]
    is_member = np.r_[np.ones(len(members), np.int64), np.zeros(len(outs), np.int64)]
    clip = (0.0, 1.0) if len(ds.input_shape) == 3 else None
    attack = BoundaryAttack(**grid.boundary, clip_values=clip, seed=seed)
    begin = time.perf_counter()
    attack.calibrate(_oracle(target, prep.shadows, ds, NoNoise(), f"{seed}/shadow"), prep.x[shadow_in],
                     prep.y[shadow_in], prep.x[shadow_out], prep.y[shadow_out])
    oracle = _oracle(target, prep.models, ds, NoNoise(), f"{seed}/target")
    scores = attack.scores(oracle, prep.x[records], prep.y[records])
    return {**_base_row(prep, target, math.inf), "attack": "boundary-hopskipjump",
            "queries_per_record": oracle.queries / len(records), "records_queried": len(records),
            "queries_total": oracle.queries, **_accounting(NoNoise(), oracle.queries),
            "test_accuracy": _test_accuracy(target, prep, NoNoise(), grid, f"{seed}/boundary/test"),
            "attack_seconds": time.perf_counter() - begin, "members_subset": "all",
            **_metrics(is_member, scores, threshold=attack.threshold, grid=grid, seed=seed)}


COLUMNS = [
    "dataset", "setting", "owners", "shard", "duplicate_fraction", "target", "total_epsilon", "delta", "attack",
    "members_subset", "members", "non_members", "records_queried", "queries_per_record", "queries_total",
    "calibration_accountant", "per_query_epsilon", "per_query_delta", "noise_sigma", "analytical_epsilon_pld",
    "analytical_epsilon_rdp", "analytical_epsilon_pld_duplicated",
    *(f"{m}{s}" for m in ("auc", "balanced_accuracy", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr")
      for s in ("", "_low", "_high")),
    "threshold", "empirical_epsilon_lower", "audit_threshold", "audit_members", "audit_non_members",
    "max_refutable_epsilon",
    "test_accuracy", "owner_train_accuracy", "owner_test_accuracy", "attack_seconds", "roc",
]


def load(grid: ExposureGrid, *, root: Path, seed: int) -> tuple[Any, ExposureGrid]:
    """The grid's dataset; without MNIST's file, the quick grid on digits (the caller records which ran)."""
    try:
        return load_dataset(grid.dataset, root=root, seed=seed), grid
    except DatasetNotFoundError as err:
        tqdm.write(f"exposure: {grid.dataset} not found ({err}); falling back to the quick grid on digits")
        return load_dataset(QUICK.dataset, seed=seed), QUICK


def run(grid: ExposureGrid, *, root: Path, seed: int, owners_out: list | None = None,
        used: dict | None = None) -> Iterator[dict[str, Any]]:
    """Rows of every setting (owners' accuracies appended to ``owners_out``; the grid that ran in ``used``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the machine is shared
    try:
        dataset, grid = load(grid, root=root, seed=seed)
        if used is not None:
            used.update(dataset=dataset.name, grid=grid)
        for setting in tqdm(grid.settings, desc="exposure"):
            prep = prepare(dataset, setting, grid, seed=seed)
            if owners_out is not None:
                owners_out.extend(prep.owner_accuracy)
            for row in attack_rows(prep, grid, seed=seed):
                yield {c: row.get(c) for c in COLUMNS}
    finally:
        torch.set_num_threads(threads)


def exposure_suite(*, quick: bool, seed: int, root: Path = DEFAULT_MNIST_ROOT) -> Iterator[dict[str, Any]]:
    """The rows for ``python -m benchmarks.run --suite exposure``."""
    yield from run(QUICK if quick else FULL, root=root, seed=seed)


# ------------------------------------------------------------------------------------------ report

def _f(value: Any, spec: str = ".3f") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return format(value, spec)


def _interval(row: dict[str, Any], name: str) -> str:
    return f"{_f(row[name])} [{_f(row[name + '_low'])}, {_f(row[name + '_high'])}]"


def headline(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per (setting, target, total epsilon): the strongest of the attacks on every metric, and the cost.

    The maximum over attacks is the evaluator's choice with the ground truth
    (an upper envelope, optimistic for the attacker); the largest of A empirical
    lower bounds, each at 95%, holds at confidence 1 - A * 5% (union bound).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["members_subset"] == "all":
            groups.setdefault((r["setting"], r["target"], r["total_epsilon"]), []).append(r)

    def best(group: list[dict[str, Any]], column: str) -> dict[str, Any]:
        finite = [r for r in group if isinstance(r[column], (int, float)) and not math.isnan(r[column])]
        return max(finite, key=lambda r: r[column]) if finite else group[0]

    lines = ["| setting (K × shard) | target | total ε | best AUC (attack) | best TPR@1%FPR | best TPR@0.1%FPR "
             "| largest emp. ε lower (attack) | analytical ε PLD | test acc | owner train / test acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (setting, target, total), group in groups.items():
        a, t1, t01, e = (best(group, c) for c in ("auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr",
                                                   "empirical_epsilon_lower"))
        fixed = [r for r in group if not str(r["attack"]).startswith("boundary")] or group
        dup = f", dup {a['duplicate_fraction']:g}" if a["duplicate_fraction"] else ""
        which = f"; {e['attack']}" if e["empirical_epsilon_lower"] >= 0.005 else ""
        accuracies = "/".join(sorted({_f(r["test_accuracy"]) for r in fixed}))
        lines.append(
            f"| {setting} ({a['owners']} × {a['shard']}{dup}) | {target} | {_f(total, 'g')} "
            f"| {_interval(a, 'auc')} ({a['attack']}) | {_interval(t1, 'tpr_at_1pct_fpr')} "
            f"| {_interval(t01, 'tpr_at_01pct_fpr')} | {_f(e['empirical_epsilon_lower'], '.2f')} "
            f"(≤ {_f(e['max_refutable_epsilon'], '.2f')} refutable{which}) "
            f"| {_f(fixed[0]['analytical_epsilon_pld'], '.3g')} | {accuracies} "
            f"| {_f(a['owner_train_accuracy'])} / {_f(a['owner_test_accuracy'])} |")
    attacks = sorted({r["attack"] for r in rows})
    return [f"Strongest of the {len(attacks)} attacks ({', '.join(attacks)}) per target: the maximum is chosen "
            "by the evaluator with the ground truth (optimistic for the attacker); the largest of A empirical "
            f"lower bounds, each at {CONFIDENCE:.0%}, holds at 1 - A × {1 - CONFIDENCE:.0%} (union bound). Test "
            "acc: one value per attack's noise level (each attack is its own client with its own total).", "",
            *lines]


def exposure_markdown(rows: Sequence[dict[str, Any]], owners: Sequence[dict[str, Any]] = ()) -> str:
    """The summary: the exposure table (every attack), the duplicated-record rows and the owners' accuracies."""
    if not rows:
        return ""
    header = ("| setting | target | total ε | attack | members / non-members | queries | σ/query | AUC [95% CI] "
              "| TPR@1%FPR [95% CI] | TPR@0.1%FPR [95% CI] | emp. ε lower | refutable ≤ | analytical ε PLD / RDP "
              "| test acc |")
    rule = "|" + "---|" * (header.count("|") - 1)

    def line(r: dict[str, Any], extra: str = "") -> str:
        return (f"| {r['setting']} | {r['target']} | {_f(r['total_epsilon'], 'g')} | {r['attack']} | "
                f"{r['members']} / {r['non_members']} | {r['queries_total']} | {_f(r['noise_sigma'], '.3g')} | "
                f"{_interval(r, 'auc')} | "
                f"{_interval(r, 'tpr_at_1pct_fpr')} | {_interval(r, 'tpr_at_01pct_fpr')} | "
                f"{_f(r['empirical_epsilon_lower'], '.2f')} | {_f(r['max_refutable_epsilon'], '.2f')} | "
                f"{_f(r['analytical_epsilon_pld'], '.3g')} / {_f(r['analytical_epsilon_rdp'], '.3g')}{extra} | "
                f"{_f(r['test_accuracy'])} |")

    first = rows[0]
    lines = [f"## Membership-inference exposure ({first['dataset']})", "", *headline(rows), "",
             "### Every attack", "",
             "Total ε = the attacking client's budget over ALL its queries to the target in that row "
             f"(δ = {DELTA:g}); the per-query Gaussian noise σ is calibrated from it with the PLD accountant, "
             "and the analytical total is given per accountant. Members: the single owner's shard, or the union "
             "of the owners' records (at most the grid's max_members); queries = members + non-members times the "
             "attack's queries per record. Empirical ε lower: the audit's Clopper-Pearson bound "
             f"({CONFIDENCE:.0%} confidence, δ = {DELTA:g}; threshold chosen on half the records, tested on the "
             "other half); 'refutable ≤' is the largest ε that audit could refute at all. Test acc: the target's "
             "accuracy on the test split at the same per-query noise (those queries are not in the total).", "",
             header, rule]
    lines += [line(r) for r in rows if r["members_subset"] == "all"]
    dup = [r for r in rows if r["members_subset"] == "duplicated"]
    if dup:
        lines += ["", "Records present in TWO owners (members = the duplicated records only; the calibration covers "
                  "one record of one owner, so their guarantee is the group-of-two bound, third figure in the "
                  "analytical column):", "", header, rule]
        lines += [line(r, f" / dup {_f(r['analytical_epsilon_pld_duplicated'], '.3g')}") for r in dup]
    if owners:
        lines += ["", "Owners (overfit recipe): accuracy on their own shard (train) and on the test split:", "",
                  "| setting | role | owner | records | train acc | test acc |", "|---|---|---|---|---|---|"]
        lines += [f"| {o['setting']} | {o['role']} | {o['index']} | {o['records']} | {_f(o['train_accuracy'])} | "
                  f"{_f(o['test_accuracy'])} |" for o in owners]
    return "\n".join(lines + [""])


# --------------------------------------------------------------------------------------- stand-alone

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exposure", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny digits grid (CI smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/results/exposure-<YYYYmmdd-HHMMSS>)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_MNIST_ROOT,
                        help="folder with MNIST (mnist.npz or torchvision's files); digits when missing")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, training, attacks and noise")
    parser.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                        help="run only these settings of the grid (same results as in a run of all: each "
                             "setting is seeded on its own), e.g. to run settings in parallel processes")
    parser.add_argument("--totals", nargs="+", type=float, default=None, metavar="EPS",
                        help="total epsilons of the private rows instead of the grid's (1, 4, 16)")
    parser.add_argument("--private-only", action="store_true",
                        help="only the private-ensemble rows (e.g. with --totals, to add totals to a finished run)")
    parser.add_argument("--combine", nargs="+", type=Path, default=None, metavar="DIR",
                        help="measure nothing: merge the exposure.csv/json of these runs into --out")
    return parser.parse_args(argv)


def _select(grid: ExposureGrid, names: Sequence[str] | None) -> ExposureGrid:
    if names is None:
        return grid
    known = [s.name for s in grid.settings]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; this grid has {known}")
    return replace(grid, settings=tuple(s for s in grid.settings if s.name in names))


def combine(parts: Sequence[Path], out: Path, command: str) -> int:
    """Merge finished runs (rows and owners in the order given) into one exposure.csv/md/json."""
    import json

    from .report import read_csv, write_csv, write_json

    rows: list[dict[str, Any]] = []
    owners: list[dict[str, Any]] = []
    metas = []
    for part in parts:
        meta = json.loads((part / "exposure.json").read_text())
        if not meta.get("complete"):
            raise SystemExit(f"{part} is not a finished run (exposure.json has complete = false)")
        metas.append(meta)
        rows += [{c: r.get(c) for c in COLUMNS} for r in read_csv(part / "exposure.csv")]
        for owner in meta["owners"]:  # a setting run twice (e.g. --totals) trains the same owners again
            same = [o for o in owners if (o["setting"], o["role"], o["index"]) == (owner["setting"], owner["role"],
                                                                                   owner["index"])]
            if same and same[0] != owner:
                raise SystemExit(f"{part}: owner {owner} differs from the same owner of an earlier run")
            if not same:
                owners.append(owner)
    if len({(m["dataset"], m["seed"]) for m in metas}) != 1:
        raise SystemExit("the runs differ in dataset or seed; not merging")
    merged = {**metas[0], "command": command, "parts": [{"dir": str(p), "command": m["command"],
                                                         "git_commit": m["git_commit"],
                                                         "date_utc": m["date_utc"], "wall_seconds": m["wall_seconds"]}
                                                        for p, m in zip(parts, metas)],
              "owners": owners, "wall_seconds": sum(m["wall_seconds"] for m in metas)}
    merged["grid"]["settings"] = list({s["name"]: s for m in metas for s in m["grid"]["settings"]}.values())
    merged["grid"]["total_epsilons"] = sorted({t for m in metas for t in m["grid"]["total_epsilons"]})
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "exposure.csv")
    write_json(merged, out / "exposure.json")
    (out / "exposure.md").write_text(exposure_markdown(rows, owners))
    print(f"exposure: {len(rows)} rows of {len(parts)} runs merged into {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Write exposure.csv, exposure.md and exposure.json (the command, commit, date, seed, grid and owners)."""
    from .env import environment
    from .report import write_csv, write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join([Path(sys.executable).name, "-m", "benchmarks.exposure", *argv])
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"exposure-{datetime.now():%Y%m%d-%H%M%S}"
    if args.combine:
        return combine(args.combine, out, command)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    env["command"] = command
    grid = _select(QUICK if args.quick else FULL, args.settings)
    if args.totals:
        if not all(math.isfinite(t) and t > 0 for t in args.totals):
            raise SystemExit(f"--totals must be finite numbers > 0, got {args.totals}")
        grid = replace(grid, total_epsilons=tuple(args.totals))
    if args.private_only:
        grid = replace(grid, noiseless=False)
    meta: dict[str, Any] = {**env, "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "seed": args.seed, "requested_grid": asdict(grid), "delta": DELTA,
                            "per_query_delta": PER_QUERY_DELTA, "calibration_accountant": CALIBRATION_ACCOUNTANT,
                            "reported_accountants": list(REPORTED_ACCOUNTANTS), "confidence": CONFIDENCE,
                            "complete": False}
    rows: list[dict[str, Any]] = []
    owners: list[dict[str, Any]] = []
    used: dict[str, Any] = {}
    begin = time.perf_counter()
    for row in run(grid, root=args.data_root, seed=args.seed, owners_out=owners, used=used):
        rows.append(row)
        write_csv(rows, out / "exposure.csv")
        meta.update(dataset=used["dataset"], grid=asdict(used["grid"]), owners=owners,
                    wall_seconds=time.perf_counter() - begin)
        write_json(meta, out / "exposure.json")  # so far (complete = false until the end)
        tqdm.write(f"exposure: {row['setting']} {row['target']} ε={row['total_epsilon']} {row['attack']} "
                   f"({row['members_subset']}): AUC {row['auc']:.3f}, TPR@1% {row['tpr_at_1pct_fpr']:.3f}, "
                   f"emp. ε {row['empirical_epsilon_lower']:.2f}, test acc {row['test_accuracy']:.3f}")
    meta.update(dataset=used["dataset"], grid=asdict(used["grid"]), owners=owners,
                wall_seconds=time.perf_counter() - begin, complete=True)
    write_json(meta, out / "exposure.json")
    (out / "exposure.md").write_text(exposure_markdown(rows, owners))
    print(f"exposure: {meta['wall_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Utility across the number of owners K, and the mechanisms at equal TOTAL epsilon (the ``utility`` suite).

Question: PRICURE claims "acceptable accuracy loss for tens of owners". This
suite measures the test accuracy of K = 1 ... 250 trained owners that share a
FIXED total training set (IID shards of the whole training split, so more
owners means smaller shards), and of their ensemble with and without the
library's DP noise. Everything is plaintext (no MPC): the private ensemble is
simulated by :func:`pricure_crypten.experiments.reference.release`, which runs
the mechanism's own ``release`` on the vote histogram exactly as the MPC path
does (sum of N = 2 server partials, each rounded to the 2**-16 fixed-point
grid; exact ties to the lowest class index). The MPC path's agreement with
that simulation is tested elsewhere (tests of the reference and the privacy
suite); here only accuracy is measured.

Per (dataset, K, seed): the training split is cut into K IID shards
(:func:`pricure_crypten.experiments.partition.partition`, seeded), every owner
trains :func:`pricure_crypten.experiments.models.coarse_cnn` (the project's
MPC-friendly CNN: 160 ReLU per 28x28 image) on its own shard with
:func:`pricure_crypten.experiments.training.train_owners` (Adam, class-weighted
loss, 20% of the shard held out for early stopping; initial weights seeded
from (seed, owner)). Reported on the test split:

* ``mean owner``: the mean test accuracy of the K owners;
* ``best owner (in hindsight)``: the best owner's test accuracy, CHOSEN ON THE
  TEST SET (an optimistic bound, not something a client can pick);
* ``plaintext ensemble``: the noiseless vote argmax with the MPC path's
  lowest-index tie-break, and the same with uniformly random tie-breaking
  (its exact expectation), because on binary tasks with an even K the
  lowest-index rule decides every K/2-K/2 split in favour of class 0;
* ``private``: Laplace and Gaussian noise on the vote histogram, mean accuracy
  over ``noise_draws`` draws, at (a) a fixed per-query epsilon and (b) a fixed
  TOTAL epsilon for a client that asks ``queries`` queries, the per-query noise
  calibrated from that total by the PLD accountant
  (:class:`pricure_crypten.privacy.accounting.PLDAccountant`, dp_accounting,
  add-or-remove-one neighbours, delta = 1e-5). Every row also states the
  client's total epsilon after ``queries`` queries, whatever the budget was
  fixed on: a per-query epsilon alone bounds nothing a client can do.

Running it: ``python -m benchmarks.run --suite utility --out DIR`` trains and evaluates everything
(``--quick``: digits, K = 1, 4, 16, 2 seeds, under a minute of CPU). The training dominates; it
can be done first by several processes at once, ``python -m benchmarks.utility --out DIR`` each
(they share DIR/utility-cache), after which the suite only evaluates. With the environment variable
``PRICURE_UTILITY_CACHED_ONLY=1`` the suite evaluates only the (dataset, K, seed) points already in
the cache and lists the others as ``missing`` in its JSON (for a run cut short by a deadline).

Intervals: 95% Student-t intervals over the seeds (mean +- t(0.975, s-1) *
sd / sqrt(s)); each seed's value is already averaged over the noise draws, so
the interval is over partitions and initialisations (and draws), not over
test sampling.

Mechanisms at equal total epsilon (``mechanisms-total-epsilon.*``): for K in
``comparison_owners``, Confident-GNMax (threshold 0.8 K, sigma_threshold 0.6 K,
sigma 0.16 K: PATE's MNIST setting T = 200, 150, 40 at K = 250, scaled with K)
is run on the test queries; ``n`` = the number of queries whose expected
answers give ``answered_labels`` labels (from its coverage, mean over seeds).
Its total epsilon for n queries (PLD, data-independent: every query pays for
both Gaussian steps, answered or not) is the budget; Laplace and Gaussian are
calibrated so that n queries cost the same total. Reported per mechanism:
per-query epsilon (one release, at delta for the Gaussians), the total and
its share per query and per answered label, coverage, accuracy on the
answered queries (abstentions excluded) and on all queries (abstentions
counted as errors).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from pricure_crypten._validation import DEFAULT_LOGIT_BOUND
from pricure_crypten.experiments import reference
from pricure_crypten.experiments.data import Dataset, DatasetNotFoundError, load_dataset
from pricure_crypten.experiments.models import build_model  # noqa: F401  (architecture names are checked there)
from pricure_crypten.experiments.partition import partition
from pricure_crypten.experiments.training import train_owners
from pricure_crypten.privacy.accounting import ReleaseCost, make_accountant
from pricure_crypten.privacy.noise import ConfidentGNMax, NoiseMechanism, calibrate

from .env import REPO_ROOT, environment

DATA = REPO_ROOT.parent / "shared" / "data"
FOLDERS = {"mnist": "mnist", "fashion-mnist": "mnist", "pneumoniamnist": "medmnist"}
CACHED_ONLY_ENV = "PRICURE_UTILITY_CACHED_ONLY"
GNMAX_RATIOS = (0.8, 0.6, 0.16)  # threshold, sigma_threshold, sigma as fractions of K (PATE MNIST at K = 250)


@dataclass(frozen=True)
class UtilityConfig:
    """One run of the suite (see the module docstring)."""

    datasets: tuple[str, ...] = ("pneumoniamnist", "mnist")
    owners: tuple[int, ...] = (1, 5, 10, 25, 50, 100, 250)
    seeds: tuple[int, ...] = (0, 1, 2)
    arch: str = "coarse_cnn"
    epochs: int = 15
    patience: int = 3
    batch_size: int = 32
    per_query_epsilons: tuple[float, ...] = (1.0, 4.0)
    total_epsilons: tuple[float, ...] = (4.0, 16.0)
    queries: int = 1000
    delta: float = 1e-5
    accountant: str = "pld"
    mechanisms: tuple[str, ...] = ("laplace", "gaussian")
    noise_draws: int = 3
    num_servers: int = 2
    comparison_owners: tuple[int, ...] = (50, 100, 250)
    answered_labels: int = 200
    max_test: int | None = None


FULL = UtilityConfig()
QUICK = UtilityConfig(datasets=("digits",), owners=(1, 4, 16), seeds=(0, 1), epochs=20, patience=3,
                      queries=100, noise_draws=3, comparison_owners=(16,), answered_labels=50)


# -- privacy calibration -----------------------------------------------------------------------------

def total_epsilon(mechanism: NoiseMechanism | ReleaseCost, *, queries: int, delta: float, accountant: str) -> float:
    """The client's total epsilon after ``queries`` releases of ``mechanism``, at ``delta``.

    ``queries`` Gaussian releases of noise multiplier z compose EXACTLY (in RDP and in their privacy-loss
    distributions) to one Gaussian release of multiplier z / sqrt(queries); that single release is what
    the accountant is given (same answer, and fast: dp_accounting's PLD of a self-composed Gaussian with
    a small multiplier takes a minute). Every other mechanism is composed ``queries`` times as it is.
    """
    cost = ReleaseCost.of(mechanism)
    if cost.event == "gaussian" and queries > 1:
        cost = ReleaseCost(cost.mechanism, cost.epsilon, cost.delta, "gaussian",
                           cost.noise_multiplier / math.sqrt(queries))
        queries = 1
    return make_accountant(accountant).compose([(cost, queries)]).spent(delta)[0]


def calibrate_total(*, mechanism: str, total: float, queries: int, delta: float, accountant: str,
                    rel_tol: float = 1e-4) -> NoiseMechanism:
    """The per-query mechanism whose ``queries``-fold composition costs at most ``total`` (and within
    ``rel_tol`` of it) at ``delta`` under ``accountant``: bisection on the per-query epsilon in log space.

    The Gaussian's per-query epsilon is taken at per-query delta = ``delta``; that only names its sigma
    (the accountant composes the Gaussian itself, not its per-query (epsilon, delta)).
    """
    def make(eps: float) -> NoiseMechanism:
        return calibrate(epsilon=eps, mechanism=mechanism, delta=None if mechanism == "laplace" else delta)

    def cost(eps: float) -> float:
        return total_epsilon(make(eps), queries=queries, delta=delta, accountant=accountant)

    # bracket upwards from total / queries (what basic composition would allow); huge per-query epsilons
    # are never tried (a PLD of a very large epsilon is slow to discretise)
    low = total / queries
    while cost(low) > total:
        low /= 2
    high = low * 2
    while cost(high) <= total:
        low, high = high, high * 2
    while high / low > 1 + rel_tol / 10:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if cost(mid) <= total else (low, mid)
    chosen = make(low)
    reached = cost(low)
    if not (reached <= total and reached >= total * (1 - rel_tol) - 1e-9):
        raise RuntimeError(f"{mechanism}: calibration reached epsilon {reached} for target {total}")
    return chosen


def gnmax_for(owners: int, *, delta: float) -> ConfidentGNMax:
    """Confident-GNMax with PATE's MNIST parameters scaled to K owners."""
    t, s1, s2 = GNMAX_RATIOS
    return ConfidentGNMax(threshold=t * owners, sigma_threshold=s1 * owners, sigma=s2 * owners, delta=delta)


# -- owners --------------------------------------------------------------------------------------------

def _root(name: str, data: Path) -> Path | None:
    folder = data / FOLDERS[name] if name in FOLDERS else None
    return folder if folder is not None and folder.exists() else None


def _arch(dataset: Dataset, name: str) -> dict[str, Any]:
    channels, side, _ = dataset.input_shape
    return {"name": name, "in_channels": channels, "image_size": side, "num_classes": dataset.num_classes}


def _cache_path(cache: Path, name: str, owners: int, seed: int, config: UtilityConfig) -> Path:
    return cache / f"{name}-K{owners}-seed{seed}-{config.arch}-e{config.epochs}p{config.patience}b{config.batch_size}.npz"


def owner_votes(dataset: Dataset, *, owners: int, seed: int, config: UtilityConfig,
                cache: Path) -> dict[str, Any]:
    """Train K owners on IID shards of the training split; their test votes (K, Q) and accuracies.

    Cached in ``cache`` (the votes only, a few MB), so an interrupted run resumes.
    """
    path = _cache_path(cache, dataset.name, owners, seed, config)
    if path.exists():
        saved = np.load(path)
        return {k: saved[k] for k in saved.files}
    labels = dataset.train_y.numpy()
    parts = partition(labels, num_owners=owners, scheme="iid", seed=seed, min_size=2)
    begin = time.perf_counter()
    results = train_owners(dataset, parts, arch=_arch(dataset, config.arch), seed=seed, quiet=True,
                           epochs=config.epochs, patience=config.patience, batch_size=config.batch_size)
    seconds = time.perf_counter() - begin
    test_x = dataset.test_x if config.max_test is None else dataset.test_x[:config.max_test]
    truth = (dataset.test_y if config.max_test is None else dataset.test_y[:config.max_test]).numpy()
    votes, plain = [], []
    with torch.no_grad():
        for result in results:
            model = result.model.eval()
            logits = torch.cat([model(test_x[i:i + 2048]) for i in range(0, len(test_x), 2048)]).double().numpy()
            plain.append(logits.argmax(axis=1))
            # the vote the servers count: argmax of the clamped logits (reference.histogram)
            votes.append(np.clip(logits, -DEFAULT_LOGIT_BOUND, DEFAULT_LOGIT_BOUND).argmax(axis=1))
    found = {
        "votes": np.asarray(votes, dtype=np.int16),
        "owner_accuracy": (np.asarray(plain) == truth[None, :]).mean(axis=1),
        "truth": truth.astype(np.int16),
        "shard_sizes": np.asarray([len(p) for p in parts]),
        "epochs_run": np.asarray([r.epochs_run for r in results]),
        "train_seconds": np.asarray(seconds),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **found)
    return found


def vote_histogram(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """(Q, C) vote counts from the (K, Q) votes."""
    counts = np.zeros((votes.shape[1], num_classes))
    for owner_votes_ in votes:
        counts[np.arange(votes.shape[1]), owner_votes_] += 1
    return counts


def random_tie_accuracy(counts: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Expected accuracy of the noiseless argmax with uniformly random tie-breaking, and the tie rate."""
    top = counts == counts.max(axis=1, keepdims=True)
    size = top.sum(axis=1)
    return float(np.mean(top[np.arange(len(truth)), truth] / size)), float(np.mean(size > 1))


def released(counts: np.ndarray, mechanism: NoiseMechanism, *, seed: str, num_servers: int) -> np.ndarray:
    """Labels (-1 = abstain) as the MPC path releases them (plaintext simulation, seeded: test-only)."""
    return reference.release(counts, mechanism=mechanism, num_servers=num_servers, seed=seed)


# -- statistics -----------------------------------------------------------------------------------------

def t_interval(values: Sequence[float | None], level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """Mean and the Student-t interval over ``values`` (None for fewer than 2 values)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if len(data) == 0:
        return None, None, None
    mean = float(data.mean())
    if len(data) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
    return mean, mean - half, mean + half


# -- the suite --------------------------------------------------------------------------------------------

@dataclass
class Budget:
    """A calibrated mechanism with the budget it was fixed by and the client's total for ``queries``."""

    mechanism: NoiseMechanism
    budget: str  # "per-query" or "total"
    target: float
    total_epsilon: float
    label: str = field(init=False)

    def __post_init__(self) -> None:
        word = "per query" if self.budget == "per-query" else "total"
        self.label = f"{self.mechanism.name}, ε={self.target:g} {word}"


def budgets(config: UtilityConfig) -> list[Budget]:
    """Every calibrated mechanism of the utility table (per-query ones, then the total-calibrated ones)."""
    found = []
    for mech in config.mechanisms:
        for eps in config.per_query_epsilons:
            m = calibrate(epsilon=eps, mechanism=mech, delta=None if mech == "laplace" else config.delta)
            found.append(Budget(m, "per-query", eps, total_epsilon(m, queries=config.queries, delta=config.delta,
                                                                    accountant=config.accountant)))
    for mech in config.mechanisms:
        for total in config.total_epsilons:
            m = calibrate_total(mechanism=mech, total=total, queries=config.queries, delta=config.delta,
                                accountant=config.accountant)
            found.append(Budget(m, "total", total, total_epsilon(m, queries=config.queries, delta=config.delta,
                                                                  accountant=config.accountant)))
    return found


def _mean_draws(counts, truth, mechanism, *, config, tag) -> float:
    return float(np.mean([np.mean(released(counts, mechanism, seed=f"{tag}/{d}", num_servers=config.num_servers)
                                  == truth) for d in range(config.noise_draws)]))


def seed_rows(name: str, owners: int, seed: int, found: dict[str, Any], num_classes: int,
              calibrated: Sequence[Budget], config: UtilityConfig) -> list[dict[str, Any]]:
    """The per-seed utility rows of one (dataset, K)."""
    truth = found["truth"].astype(int)
    counts = vote_histogram(found["votes"].astype(int), num_classes)
    lowest = float(np.mean(released(counts, calibrate(epsilon=math.inf), seed="none", num_servers=config.num_servers) == truth))
    randomized, ties = random_tie_accuracy(counts, truth)
    base = {"dataset": name, "owners": owners, "seed": seed, "test_queries": len(truth),
            "shard_size_min": int(found["shard_sizes"].min()), "shard_size_max": int(found["shard_sizes"].max()),
            "mean_epochs_run": float(found["epochs_run"].mean()), "train_seconds": float(found["train_seconds"]),
            "tie_rate": ties}
    none = {"mechanism": "none", "budget": "none", "epsilon_target": math.inf, "noise_scale": 0.0,
            "epsilon_per_query": math.inf, "client_total_epsilon": math.inf}
    rows = [
        {**base, "estimator": "mean owner", **none, "accuracy": float(found["owner_accuracy"].mean())},
        {**base, "estimator": "best owner (in hindsight)", **none, "accuracy": float(found["owner_accuracy"].max())},
        {**base, "estimator": "plaintext ensemble (lowest-index ties)", **none, "accuracy": lowest},
        {**base, "estimator": "plaintext ensemble (random ties)", **none, "accuracy": randomized},
    ]
    for b in calibrated:
        tag = f"{name}/{owners}/{seed}/{b.label}"
        rows.append({**base, "estimator": f"private: {b.label}", "mechanism": b.mechanism.name,
                     "budget": b.budget, "epsilon_target": b.target, "noise_scale": b.mechanism.scale,
                     "epsilon_per_query": b.mechanism.epsilon, "client_total_epsilon": b.total_epsilon,
                     "accuracy": _mean_draws(counts, truth, b.mechanism, config=config, tag=tag)})
    for row in rows:
        row.update({"delta": config.delta, "client_queries": config.queries, "accountant": config.accountant,
                    "noise_draws": 0 if row["mechanism"] == "none" else config.noise_draws})
    return rows


def summarize(rows: Sequence[dict[str, Any]], keys: Sequence[str], values: Sequence[str]) -> list[dict[str, Any]]:
    """Group ``rows`` by ``keys``; per value column its mean and 95% t-interval over the seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, group in groups.items():
        summary = dict(zip(keys, key))
        summary["seeds"] = len(group)
        for column in values:
            mean, low, high = t_interval([r[column] for r in group])
            summary.update({column: mean, f"{column}_lo": low, f"{column}_hi": high})
        out.append(summary)
    return out


def mechanism_rows(name: str, owners: int, per_seed: dict[int, dict[str, Any]], num_classes: int,
                   config: UtilityConfig) -> list[dict[str, Any]]:
    """Per-seed rows of Laplace, Gaussian and Confident-GNMax at equal total epsilon for one (dataset, K)."""
    gnmax = gnmax_for(owners, delta=config.delta)
    counts = {s: vote_histogram(f["votes"].astype(int), num_classes) for s, f in per_seed.items()}
    truths = {s: f["truth"].astype(int) for s, f in per_seed.items()}
    labels = {s: [released(counts[s], gnmax, seed=f"gnmax/{name}/{owners}/{s}/{d}", num_servers=config.num_servers)
                  for d in range(config.noise_draws)] for s in per_seed}
    coverage = float(np.mean([np.mean(lab >= 0) for s in per_seed for lab in labels[s]]))
    if coverage == 0:
        return []
    queries = math.ceil(config.answered_labels / coverage)
    total = total_epsilon(gnmax, queries=queries, delta=config.delta, accountant=config.accountant)
    mechanisms: list[NoiseMechanism] = [
        calibrate_total(mechanism=m, total=total, queries=queries, delta=config.delta, accountant=config.accountant)
        for m in ("laplace", "gaussian")]
    rows = []
    for mech in [*mechanisms, gnmax]:
        reached = total_epsilon(mech, queries=queries, delta=config.delta, accountant=config.accountant)
        params = (f"T={gnmax.threshold:g}, σ1={gnmax.sigma_threshold:g}, σ2={gnmax.sigma:g}" if mech is gnmax
                  else f"scale={mech.scale:.4g}")
        for s in per_seed:
            draws = labels[s] if mech is gnmax else [
                released(counts[s], mech, seed=f"{mech.name}/{name}/{owners}/{s}/{d}", num_servers=config.num_servers)
                for d in range(config.noise_draws)]
            answered = sum(int(np.sum(lab >= 0)) for lab in draws)
            correct = sum(int(np.sum(lab == truths[s])) for lab in draws)
            asked = len(truths[s]) * len(draws)
            cov = answered / asked
            rows.append({
                "dataset": name, "owners": owners, "seed": s, "mechanism": mech.name, "parameters": params,
                "noise_multiplier": mech.dp_event().noise_multiplier, "client_queries": queries,
                "client_total_epsilon": reached, "delta": config.delta, "accountant": config.accountant,
                "epsilon_per_query": total_epsilon(mech, queries=1, delta=config.delta, accountant=config.accountant),
                "total_epsilon_per_query": reached / queries,
                "expected_answered_labels": queries * cov, "total_epsilon_per_answered_label":
                    reached / (queries * cov) if cov else math.inf,
                "coverage": cov, "accuracy_on_answered": correct / answered if answered else None,
                "accuracy_on_all": correct / asked, "test_queries": len(truths[s]), "noise_draws": len(draws),
            })
    return rows


def _cell(row: dict[str, Any], column: str, spec: str = ".3f") -> str:
    value = row.get(column)
    if value is None:
        return "–"
    if row.get(f"{column}_lo") is None:
        return format(value, spec)
    return f"{value:{spec}} [{row[f'{column}_lo']:{spec}}, {row[f'{column}_hi']:{spec}}]"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(l) + " |" for l in lines), ""]


def utility_markdown(summary: Sequence[dict[str, Any]], calibrated: Sequence[Budget], config: UtilityConfig,
                     meta: dict[str, Any]) -> str:
    """The utility-vs-K tables (one per dataset and budget kind) and the calibration table."""
    out = ["# Utility across the number of owners K", "",
           f"Command: `{meta['command']}`; commit `{meta['git_commit']}`; {meta['date']}; seeds {list(config.seeds)}.", "",
           f"Owners: `{config.arch}` (MPC-friendly, 160 ReLU per 28x28 image) trained on IID shards of the WHOLE "
           f"training split (fixed total; K owners get 1/K each), Adam, {config.epochs} epochs max, early stopping "
           f"(patience {config.patience}) on 20% of each shard. Test accuracy; cells are the mean over seeds "
           f"[95% Student-t interval over {len(config.seeds)} seeds (partition + initialisation)]. Private columns: "
           f"plaintext simulation of the MPC release (N = {config.num_servers} servers' noise partials, fixed-point, "
           f"lowest-index ties), mean of {config.noise_draws} noise draws per seed. 'Best owner' is chosen on the "
           f"test set (in hindsight). Client total ε: after {config.queries} queries, at δ = {config.delta:g}, "
           f"{config.accountant.upper()} accountant. Training set sizes (the fixed total): "
           f"{', '.join(f'{k} {v:,}' for k, v in meta.get('training_set_sizes', {}).items())} (MNIST: the 60,000 "
           f"training images minus a stratified 10% validation split that is not used). 'vote ties': share of test "
           f"queries whose noiseless vote histogram has a tied maximum (decided by the lowest-index rule in the "
           f"MPC path; the 'random ties' column is the exact expectation of a fair coin instead).", ""]
    if meta.get("points_from_cache"):
        out += [f"{meta['points_from_cache']} (dataset, K, seed) points' owners were read from DIR/utility-cache, "
                f"trained ahead with the same configuration by `python -m benchmarks.utility --out DIR` (several "
                f"processes at once); the rest were trained in this run.", ""]
    if meta.get("missing"):
        out += [f"NOT run (deadline): {meta['missing']}.", ""]
    out += ["## Calibration", "", *_table(
        ["mechanism", "budget fixed", "per-query ε (one release)", "noise scale (b or σ)",
         f"client total ε after {config.queries} queries (δ={config.delta:g}, {config.accountant})"],
        [[b.mechanism.name, f"ε = {b.target:g} " + ("per query" if b.budget == "per-query" else "total"),
          f"{b.mechanism.epsilon:.4g}" + ("" if b.mechanism.name == "laplace" else f" at δ={config.delta:g}"),
          f"{b.mechanism.scale:.4g}", f"{b.total_epsilon:.4g}"] for b in calibrated])]
    fixed = ["mean owner", "best owner (in hindsight)", "plaintext ensemble (lowest-index ties)",
             "plaintext ensemble (random ties)"]
    for name in dict.fromkeys(r["dataset"] for r in summary):
        for kind, title in (("per-query", "fixed PER-QUERY ε (the client's total grows with its queries: see the "
                                          "calibration table)"),
                            ("total", f"fixed TOTAL ε for {config.queries} queries (per-query noise from the "
                                      f"{config.accountant.upper()} accountant)")):
            private = [f"private: {b.label}" for b in calibrated if b.budget == kind]
            rows = [r for r in summary if r["dataset"] == name]
            by_k: dict[int, dict[str, dict[str, Any]]] = {}
            for r in rows:
                by_k.setdefault(r["owners"], {})[r["estimator"]] = r
            header = ["K", "shard size", "vote ties", *fixed, *(p.removeprefix("private: ") for p in private)]
            lines = []
            for k in sorted(by_k):
                cells = by_k[k]
                any_row = next(iter(cells.values()))
                seeds = "" if any_row["seeds"] == len(config.seeds) else f" ({any_row['seeds']} seed{'s' * (any_row['seeds'] > 1)})"
                lines.append([f"{k}{seeds}", f"{any_row['shard_size_min']}–{any_row['shard_size_max']}",
                              _cell(any_row, "tie_rate"),
                              *(_cell(cells[e], "accuracy") if e in cells else "–" for e in [*fixed, *private])])
            out += [f"## {name}: {title}", "", *_table(header, lines)]
    return "\n".join(out)


def mechanisms_markdown(summary: Sequence[dict[str, Any]], config: UtilityConfig, meta: dict[str, Any]) -> str:
    """The equal-total-epsilon comparison table."""
    header = ["dataset", "K", "mechanism", "parameters", "queries n", "client total ε", "per-query ε (one release)",
              "total ε / n", "answered labels", "total ε / answered label", "coverage", "accuracy on answered",
              "accuracy on all (abstain = error)"]
    lines = [[r["dataset"], str(r["owners"]) + ("" if r["seeds"] == len(config.seeds) else f" ({r['seeds']} seeds)"),
              r["mechanism"], r["parameters"], str(r["client_queries"]),
              f"{r['client_total_epsilon']:.3g}", f"{r['epsilon_per_query']:.3g}",
              f"{r['total_epsilon_per_query']:.3g}", _cell(r, "expected_answered_labels", ".0f"),
              _cell(r, "total_epsilon_per_answered_label", ".3g"), _cell(r, "coverage"),
              _cell(r, "accuracy_on_answered"), _cell(r, "accuracy_on_all")] for r in summary]
    return "\n".join([
        "# Mechanisms at equal TOTAL ε", "",
        f"Command: `{meta['command']}`; commit `{meta['git_commit']}`; {meta['date']}; seeds {list(config.seeds)}.", "",
        f"Per (dataset, K): n = the queries after which Confident-GNMax (threshold 0.8K, σ1 = 0.6K, σ2 = 0.16K; "
        f"PATE's MNIST setting scaled to K) is expected to have answered {config.answered_labels} labels (its "
        f"coverage, mean over seeds). The client's total ε for n queries of Confident-GNMax (δ = {config.delta:g}, "
        f"{config.accountant.upper()} accountant, data-independent: every query pays for both Gaussian steps) is the "
        f"budget; Laplace and Gaussian are calibrated so that n queries cost the same total. 'per-query ε' is one "
        f"release's ε at δ = {config.delta:g} under the same accountant, 'total ε / n' an average share, not a guarantee. "
        f"Cells: mean over seeds [95% t-interval]; each seed averages {config.noise_draws} noise draws over the whole "
        f"test split (plaintext simulation of the MPC release). Accuracy on answered excludes abstentions; accuracy "
        f"on all counts them as errors.", "", *_table(header, lines)])


UTILITY_VALUES = ["accuracy"]
MECHANISM_KEYS = ["dataset", "owners", "mechanism", "parameters", "noise_multiplier", "client_queries",
                  "client_total_epsilon", "delta", "accountant", "epsilon_per_query", "total_epsilon_per_query"]
MECHANISM_VALUES = ["expected_answered_labels", "total_epsilon_per_answered_label", "coverage",
                    "accuracy_on_answered", "accuracy_on_all"]
UTILITY_KEYS = ["dataset", "owners", "estimator", "mechanism", "budget", "epsilon_target", "noise_scale",
                "epsilon_per_query", "client_total_epsilon", "delta", "client_queries", "accountant"]


def utility_suite(*, quick: bool, out: Path, seed: int = 0, data: Path = DATA,
                  config: UtilityConfig | None = None) -> Iterator[dict[str, Any]]:
    """Yield the per-seed utility rows; write the summaries (CSV, Markdown, JSON) to ``out`` as K completes."""
    config = config or (QUICK if quick else FULL)
    # Evaluate only what `python -m benchmarks.utility` already trained (a deadline; recorded as "missing")
    cached_only = os.environ.get(CACHED_ONLY_ENV, "") == "1"
    if seed:
        config = replace(config, seeds=tuple(s + seed for s in config.seeds))
    begin = time.perf_counter()
    env = environment(sys.argv[1:])
    meta = {"command": env["command"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seeds": list(config.seeds),
            "config": asdict(config), "interval": "95% Student-t over seeds", "cached_only": cached_only,
            "torch_threads": torch.get_num_threads(), "cpu_count": env["cpu_count"]}
    calibrated = budgets(config)
    meta["calibration"] = [{"mechanism": b.mechanism.name, "budget": b.budget, "target": b.target,
                            "epsilon_per_query": b.mechanism.epsilon, "noise_scale": b.mechanism.scale,
                            "sensitivity": getattr(b.mechanism, "sensitivity", None),
                            "noise_multiplier": b.mechanism.dp_event().noise_multiplier,
                            "client_queries": config.queries, "delta": config.delta,
                            "accountant": config.accountant, "client_total_epsilon": b.total_epsilon}
                           for b in calibrated]
    all_rows: list[dict[str, Any]] = []
    mech_rows: list[dict[str, Any]] = []
    for name in config.datasets:
        try:
            dataset = load_dataset(name, root=_root(name, data), seed=0)  # one fixed training set for all seeds
        except DatasetNotFoundError as err:
            tqdm.write(f"utility: skipping {name}: {err}")
            continue
        meta.setdefault("training_set_sizes", {})[name] = len(dataset.train_y)
        # largest K first: the PATE regime and the mechanism comparison come first if time runs short
        for owners in tqdm(sorted(config.owners, reverse=True), desc=f"utility {name}"):
            if owners > len(dataset.train_y) // 2:
                tqdm.write(f"utility: skipping K={owners} on {name}: fewer than 2 training images per owner")
                continue
            cached = [s for s in config.seeds if _cache_path(out / "utility-cache", name, owners, s, config).exists()]
            meta["points_from_cache"] = meta.get("points_from_cache", 0) + len(cached)
            if cached_only:
                per_seed = {s: owner_votes(dataset, owners=owners, seed=s, config=config, cache=out / "utility-cache")
                            for s in config.seeds if _cache_path(out / "utility-cache", name, owners, s, config).exists()}
                missing = [s for s in config.seeds if s not in per_seed]
                if missing:
                    meta.setdefault("missing", []).append({"dataset": name, "owners": owners, "seeds": missing})
                if not per_seed:
                    continue
            else:
                per_seed = {s: owner_votes(dataset, owners=owners, seed=s, config=config,
                                           cache=out / "utility-cache") for s in config.seeds}
            for s, found in per_seed.items():
                rows = seed_rows(name, owners, s, found, dataset.num_classes, calibrated, config)
                all_rows += rows
                yield from rows
            if owners in config.comparison_owners:
                mech_rows += mechanism_rows(name, owners, per_seed, dataset.num_classes, config)
            meta["wall_seconds"] = time.perf_counter() - begin
            _write(out, all_rows, mech_rows, calibrated, config, meta)


def _write(out: Path, rows, mech_rows, calibrated, config, meta) -> None:
    from .report import write_csv, write_json  # here: report imports privacy, which imports this module

    summary = summarize(rows, UTILITY_KEYS + ["shard_size_min", "shard_size_max"], UTILITY_VALUES + ["tie_rate"])
    write_csv(summary, out / "utility-k.csv")
    (out / "utility-k.md").write_text(utility_markdown(summary, calibrated, config, meta))
    write_json(meta, out / "utility-k.json")
    if mech_rows:
        write_csv(mech_rows, out / "mechanisms-seeds.csv")
        mech_summary = summarize(mech_rows, MECHANISM_KEYS, MECHANISM_VALUES)
        write_csv(mech_summary, out / "mechanisms-total-epsilon.csv")
        (out / "mechanisms-total-epsilon.md").write_text(mechanisms_markdown(mech_summary, config, meta))
        write_json(meta, out / "mechanisms-total-epsilon.json")


# -- training ahead, in several processes -------------------------------------------------------------------

def training_tasks(config: UtilityConfig) -> list[tuple[str, int, int]]:
    """Every (dataset, K, seed) to train, most valuable first: largest K first, then seed, then dataset."""
    return [(name, k, s) for k in sorted(config.owners, reverse=True) for s in config.seeds for name in config.datasets]


def train_ahead(*, out: Path, config: UtilityConfig, data: Path = DATA) -> int:
    """Fill ``out/utility-cache`` with every task's votes; returns the number trained here.

    Several processes may run this at once on the same ``out``: each task is claimed by creating a lock
    file exclusively, so no task is trained twice. The suite (``--suite utility --out`` the same folder)
    then finds everything in the cache and only evaluates.
    """
    cache = out / "utility-cache"
    cache.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, Dataset] = {}
    trained = 0
    for name, owners, seed in training_tasks(config):
        lock = cache / f"{name}-K{owners}-seed{seed}.claimed"
        try:
            lock.open("x").close()
        except FileExistsError:
            continue
        if name not in datasets:
            try:
                datasets[name] = load_dataset(name, root=_root(name, data), seed=0)
            except DatasetNotFoundError as err:
                print(f"utility: skipping {name}: {err}", flush=True)
                continue
        if owners > len(datasets[name].train_y) // 2:
            continue
        begin = time.perf_counter()
        owner_votes(datasets[name], owners=owners, seed=seed, config=config, cache=cache)
        trained += 1
        print(f"{datetime.now(timezone.utc):%H:%M:%S} trained {name} K={owners} seed={seed} in "
              f"{time.perf_counter() - begin:.0f} s", flush=True)
    return trained


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.utility --out DIR [--quick]``: train the owners ahead (see :func:`train_ahead`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.utility",
                                     description="Train the utility suite's owners into DIR/utility-cache "
                                                 "(run several at once to share the work), then run "
                                                 "`python -m benchmarks.run --suite utility --out DIR`.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_ahead(out=args.out, config=QUICK if args.quick else FULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())

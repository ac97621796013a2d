"""Private accuracy vs the noise level, on trained owners (the ``privacy`` suite).

Per dataset: K = 10 owners train on Dirichlet(alpha = 1.0) label-skewed
shards of the training split (:func:`pricure_crypten.experiments.training.train_owners`,
default architecture: an MLP for breast-cancer, the small CNN for
PneumoniaMNIST). The test split (optionally capped) is the query set, asked
by ONE client. For every (aggregation, mechanism, epsilon), ONE ensemble
(N = 2 servers and the dealer) is started and answers all queries in batches;
its accuracy is what the client measures. epsilon = inf means no noise for
either mechanism, so that run is made once per aggregation and reported under
both mechanisms.

What the privacy columns bound. ``epsilon``/``delta`` only NAME the noise
(the calibration of one release: Laplace b = 2 / epsilon, analytic Gaussian
at delta 1e-5); they are not a guarantee for anything a client can do. The
guarantee stated is the client's TOTAL: ``client_total_epsilon`` at
``client_total_delta`` (1e-5) after the ``client_queries`` queries it asked
in that run (empty without noise: no guarantee), by the PLD accountant (dp_accounting, add-or-remove-one
neighbours), through :func:`benchmarks.utility.total_epsilon`. A deployment
that lets a client ask more pays more (see the ``utility`` suite for
accuracy at a fixed total).

Reference columns, all plaintext (evaluation only): the noiseless plaintext
ensemble, the best and mean single owner, and ``reference_noisy_accuracy``,
the mean accuracy of the plaintext histogram with the same calibrated noise
(simulated as the servers draw it, :func:`pricure_crypten.experiments.reference.noisy_argmax`)
over :data:`REFERENCE_DRAWS` draws: the expected value of the
private accuracy, which is itself one draw.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pricure_crypten import (
    Aggregation,
    Batching,
    Client,
    Cluster,
    ExperimentOptions,
    InsecureSeedWarning,
    ModelOwner,
    PrivateEnsemble,
    calibrate,
)
from pricure_crypten.experiments import reference
from pricure_crypten.experiments.data import DatasetNotFoundError, load_dataset
from pricure_crypten.experiments.partition import partition
from pricure_crypten.experiments.training import accuracy, train_owners

from .memory import cumulative_peaks, largest_peak_mib
from .grid import Grid
from .measure import attempt
from .utility import total_epsilon

NUM_OWNERS = 10
ALPHA = 1.0
NUM_SERVERS = 2
REFERENCE_DRAWS = 20
TOLERANCE = 0.02  # "within 2 points" of the plaintext ensemble
CLIENT_DELTA = 1e-5  # the delta at which a client's total epsilon is stated
ACCOUNTANT = "pld"


def client_total(mechanism: Any, queries: int) -> float | None:
    """The client's total epsilon after ``queries`` releases of ``mechanism`` (PLD, delta 1e-5).

    None without noise (epsilon = inf: no guarantee at all; an empty CSV cell).
    """
    if mechanism.deterministic:
        return None
    return total_epsilon(mechanism, queries=queries, delta=CLIENT_DELTA, accountant=ACCOUNTANT)


@dataclass
class Setup:
    """A dataset's trained owners, query set and plaintext references."""

    dataset: str
    owners: list[ModelOwner]
    queries: torch.Tensor
    truth: np.ndarray
    logits: np.ndarray  # (K, Q, C) plaintext logits, for the references
    single_accuracies: list[float]


def prepare(name: str, *, root: Path, seed: int, max_queries: int | None) -> Setup:
    """Load, partition, train the owners and pick the queries (raises DatasetNotFoundError)."""
    dataset = load_dataset(name, root=root, seed=seed)
    labels = dataset.train_y.numpy()
    parts = partition(labels, num_owners=NUM_OWNERS, scheme="dirichlet", alpha=ALPHA, seed=seed,
                      min_size=min(10, len(labels) // NUM_OWNERS))
    models = [r.model for r in train_owners(dataset, parts, seed=seed, quiet=True)]
    count = len(dataset.test_y) if max_queries is None else min(max_queries, len(dataset.test_y))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(dataset.test_y))[:count])
    queries, truth = dataset.test_x[order], dataset.test_y[order]
    owners = [ModelOwner(name=f"owner-{i}", model=m, input_shape=dataset.input_shape,
                         num_classes=dataset.num_classes) for i, m in enumerate(models)]
    return Setup(name, owners, queries, truth.numpy(), reference.ensemble_logits(models, queries),
                 [accuracy(m, queries, truth) for m in models])


def _reference_accuracy(setup: Setup, aggregation: str, mechanism: str, epsilon: float, draws: int,
                        seed: int) -> float:
    counts = reference.histogram(setup.logits, aggregation=aggregation)
    calibrated = calibrate(epsilon=epsilon, mechanism=mechanism, aggregation=aggregation)
    return float(np.mean([
        np.mean(reference.noisy_argmax(counts, aggregation=aggregation, mechanism=calibrated,
                                       random_state=seed + draw) == setup.truth)
        for draw in range(draws)
    ]))


def _private_run(setup: Setup, aggregation: str, mechanism: str, epsilon: float, batch_size: int,
                 seed: int) -> dict[str, Any]:
    begin = time.perf_counter()
    client = Client("bench")
    with warnings.catch_warnings():
        # A fixed noise seed is deliberate here: reproducible benchmark runs, never a deployment.
        warnings.simplefilter("ignore", InsecureSeedWarning)
        experiment = ExperimentOptions(noise_seed=f"{seed}/{setup.dataset}/{aggregation}/{mechanism}/{epsilon}")
    noise = calibrate(epsilon=epsilon, mechanism=mechanism, aggregation=aggregation)
    with PrivateEnsemble(setup.owners, aggregation=Aggregation(method=aggregation, noise=noise),
                         cluster=Cluster(num_servers=NUM_SERVERS),
                         batching=Batching(enabled=False, max_rows=max(256, batch_size)),
                         experiment=experiment) as ensemble:
        predictions = [ensemble.predict(setup.queries[i:i + batch_size], client=client)
                       for i in range(0, len(setup.queries), batch_size)]
        peaks = (largest_peak_mib(ensemble.servers.server_pids), largest_peak_mib([ensemble.servers.dealer_pid]))
    return {
        "labels": np.concatenate([p.labels for p in predictions]),
        "wall_seconds": time.perf_counter() - begin,
        "rounds_per_batch": max(p.cost.rounds for p in predictions),
        "server_peak_mib": peaks[0],
        "dealer_peak_mib": peaks[1],
    }


def privacy_points(grid: Grid) -> list[tuple[str, str, float]]:
    """The (aggregation, mechanism, epsilon) points of one dataset."""
    return [(a, m, e) for a in grid.aggregations for m in grid.mechanisms for e in grid.epsilons]


def dataset_rows(setup: Setup, grid: Grid, *, seed: int, batch_size: int) -> Iterator[dict[str, Any]]:
    """One row per (aggregation, mechanism, epsilon) of one prepared dataset."""
    plain_labels = {
        agg: reference.noisy_argmax(reference.histogram(setup.logits, aggregation=agg), aggregation=agg,
                                    mechanism=calibrate(epsilon=math.inf))
        for agg in grid.aggregations
    }
    noiseless: dict[str, tuple[dict[str, Any] | None, str]] = {}  # epsilon = inf, per aggregation
    for agg, mech, eps in tqdm(privacy_points(grid), desc=f"privacy {setup.dataset}"):
        calibrated = calibrate(epsilon=eps, mechanism=mech, aggregation=agg)
        if math.isinf(eps) and agg in noiseless:
            run, error = noiseless[agg]
        else:
            run, error = attempt(lambda: _private_run(setup, agg, mech, eps, batch_size, seed))
            if math.isinf(eps):
                noiseless[agg] = (run, error)
        labels = run["labels"] if run else None
        yield {
            "dataset": setup.dataset, "owners": len(setup.owners), "servers": NUM_SERVERS,
            "queries": len(setup.truth), "aggregation": agg, "mechanism": mech, "epsilon": eps,
            "delta": calibrated.delta, "noise_scale": calibrated.scale,
            "client_queries": len(setup.truth), "client_total_epsilon": client_total(calibrated, len(setup.truth)),
            "client_total_delta": CLIENT_DELTA,
            "private_accuracy": None if labels is None else float(np.mean(labels == setup.truth)),
            "reference_noisy_accuracy": _reference_accuracy(setup, agg, mech, eps,
                                                            1 if math.isinf(eps) else REFERENCE_DRAWS, seed),
            "plaintext_ensemble_accuracy": float(np.mean(plain_labels[agg] == setup.truth)),
            "best_single_owner_accuracy": max(setup.single_accuracies),
            "mean_single_owner_accuracy": float(np.mean(setup.single_accuracies)),
            "agreement_with_plaintext": None if labels is None else float(np.mean(labels == plain_labels[agg])),
            "rounds_per_batch": run and run["rounds_per_batch"],
            "wall_seconds": run and run["wall_seconds"],
            "server_peak_mib": run and run["server_peak_mib"],
            "dealer_peak_mib": run and run["dealer_peak_mib"],
            **cumulative_peaks(),
            "error": error,
        }


def privacy_suite(grid: Grid, *, seed: int, root: Path, batch_size: int,
                  max_queries: int | None) -> Iterator[dict[str, Any]]:
    """All datasets of ``grid`` whose data is available (missing files are skipped with a note)."""
    for name in grid.datasets:
        try:
            setup = prepare(name, root=root, seed=seed, max_queries=max_queries)
        except DatasetNotFoundError as err:
            tqdm.write(f"privacy: skipping {name}: {err}")
            continue
        yield from dataset_rows(setup, grid, seed=seed, batch_size=batch_size)


def smallest_epsilon_within(rows: Sequence[dict[str, Any]], tolerance: float = TOLERANCE) -> list[dict[str, Any]]:
    """Per (dataset, aggregation, mechanism): the smallest noise calibration ``epsilon`` FROM WHICH ON
    (this and every larger one of the grid) private accuracy is within ``tolerance`` of the plaintext
    ensemble, with the client's total epsilon for the queries of that run (the guarantee)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["aggregation"], row["mechanism"]), []).append(row)
    found = []
    for (dataset, agg, mech), group in groups.items():
        best = None
        for row in sorted(group, key=lambda r: r["epsilon"], reverse=True):
            ok = row["private_accuracy"] is not None and \
                row["private_accuracy"] >= row["plaintext_ensemble_accuracy"] - tolerance
            if not ok:
                break
            best = row
        found.append({"dataset": dataset, "aggregation": agg, "mechanism": mech,
                      "epsilon": best and best["epsilon"],
                      "client_queries": group[0].get("client_queries"),
                      "client_total_epsilon": best and (math.inf if math.isinf(best["epsilon"])
                                                        else best.get("client_total_epsilon")),
                      "client_total_delta": group[0].get("client_total_delta"),
                      "private_accuracy": best and best["private_accuracy"],
                      "plaintext_ensemble_accuracy": group[0]["plaintext_ensemble_accuracy"],
                      "best_single_owner_accuracy": group[0]["best_single_owner_accuracy"]})
    return found

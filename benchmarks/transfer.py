"""PATE-scale private knowledge transfer to a client's student (the ``transfer`` suite).

Question: how good a model can a client get, and at what TOTAL epsilon, by
privately labelling part of its own pool with K owners' Confident-GNMax
ensemble and training a student on it, against asking every query directly?

Setting (MNIST, PATE 2018's, with a membership hold-out): K = 250 owners on
DISJOINT 236-image shards of the first 59,000 of the 60,000 MNIST training
images (the loader's training and validation splits together, in that order;
seeded permutation, 250 x 236 = all 59,000; PATE used 240-image shards of all
60,000). The last ``holdout`` = 1,000 training images in the loader's order
(59,000..59,999: the last 1,000 of its seeded stratified 6,000-image
validation part) are never seen by an owner, never queried and not in the
student's data: they are the non-members of the exposure audit. Each owner trains ``arch``
(default ``hybrid_cnn``) with the recipe of ``benchmarks.teachers`` (the
K = 250 teacher trade-off, docs/results/k250-teachers.md: owner accuracy
0.904 on 240-image shards): :func:`pricure_crypten.experiments.training.train_owners`
with Adam lr 3e-3, batch 32, class-weighted loss, at most 150 epochs, early
stopping with patience 25 on 10% of the shard, random shifts of up to 2
pixels (training augmentation).
The client's pool is the FIRST 9,000 MNIST test images (as in PATE); it asks
the first ``queries`` = 640 of them; the student is evaluated on the LAST
1,000 test images, which were never queried and never seen by an owner. (The
MNIST test split's first 5,000 images are from NIST's SD-3, the last 5,000
from SD-1, reputed harder; PATE's split has the same property.)

Mechanism: Confident-GNMax, T = 200, sigma1 = 150, sigma2 = 40 (PATE 2018's
MNIST row), plaintext simulation of the MPC release
(:func:`pricure_crypten.experiments.reference.release`: N = 2 servers' noise
partials on the fixed-point grid, lowest-index ties; the noise there is
SEEDED, a test-only mode, for reproducibility). Reported:

* answered, and the accuracy of the released labels;
* the client's TOTAL epsilon at delta = 1e-5, data-independent, by the
  ledger's ``rdp-filter`` accountant, in both accounting modes
  (conservative: both steps on every query; answered-only: the argmax step
  only when answered; :func:`pricure_crypten.experiments.transfer.gnmax_total_epsilon`),
  and the conservative mode under the ``pld`` accountant too;
* PATE 2018's DATA-DEPENDENT epsilon of the same run (analysis figure, it
  sees the vote histograms: :mod:`pricure_crypten.experiments.pate_analysis`)
  without and with the smooth-sensitivity cost of publishing it (order =
  the data-dependent optimum, beta = 0.4 / order, sigma_s = ``sigma_s``: our
  choice, not the paper's);
* the students (:mod:`pricure_crypten.experiments.student`): supervised on
  the answered rows, and semi-supervised (FixMatch) with the rest of the pool;
* the per-query mode for comparison: how many direct queries of the
  library's Gaussian noisy argmax at per-query epsilon ``per_query_epsilon``
  (delta 1e-5; :func:`pricure_crypten.privacy.noise.calibrate`) the same total
  buys under the same accountant, the accuracy of those direct answers (mean
  over the evaluation images, one noise draw each), and a supervised student
  on that many directly labelled pool rows;
* the student's membership exposure w.r.t. the OWNERS' training records
  (members: ``mia_records`` records drawn (seeded) from the owners' shards;
  non-members: the ``holdout`` training-split records held out from every
  owner, never queried and not in the student's data, so members and
  non-members come from the same split and distribution): white-box
  confidence (probability of the true label) and label-only (augmentation
  attack, Choquette-Choo et al. 2021), audited with Clopper-Pearson
  (:func:`pricure_crypten.experiments.transfer.membership_exposure`), against
  the total epsilon in each mode. Membership here is fixed, not randomised as
  in a DP audit game: the bound is descriptive. (An earlier design took the
  non-members from the test split, like the student's pool; that biased the
  attack, AUC < 1/2.)

PneumoniaMNIST: ``holdout`` = 400 of its 3,882 training images (shared
file; a seeded random subset, as that split is ordered by label) are held out
as the audit's non-members; owners on disjoint
240-image shards of the remaining 3,482, so K = 14 (the most 240-image shards
they hold; with smaller shards the owners collapse to the majority class: see
docs/results/utility-k.md, K >= 25), same owner recipe (``hybrid_cnn``);
400 members drawn from the shards; Confident-GNMax with PATE's parameters
scaled to K (T = 0.8K, sigma1 = 0.6K, sigma2 = 0.16K); the pool is its 524
validation images (200 queried), the evaluation set its 624 test images.

Owners' votes are cached one file per owner in ``--cache`` (default
``OUT/transfer-cache``, gitignored; rerunning or resuming is cheap; ``--train-part
I/N`` trains only owners ``k % N == I`` into the cache, so N processes can share
the training). Run:
``python -m benchmarks.run --suite transfer --out DIR`` (both datasets), or
``python -m benchmarks.transfer --out docs/results --dataset mnist [--arch NAME]``;
``--quick``: digits, 4 owners, a few queries, a few hundred student steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from pricure_crypten._validation import DEFAULT_LOGIT_BOUND
from pricure_crypten.experiments import pate_analysis, reference
from pricure_crypten.experiments.attacks.augmentation import AugmentationAttack
from pricure_crypten.experiments.attacks.oracle import SingleOwnerOracle
from pricure_crypten.experiments.data import Dataset, DatasetNotFoundError, load_dataset
from pricure_crypten.experiments.student import StudentConfig, student_predict, student_probabilities, train_student
from pricure_crypten.experiments.models import build_model
from pricure_crypten.experiments.training import train_owner
from pricure_crypten.experiments.transfer import (answered_labels, confidence_scores, gnmax_total_epsilon,
                                                  gaussian_with_sigma, membership_exposure, optional_float,
                                                  queries_within)
from pricure_crypten.privacy.noise import ConfidentGNMax, calibrate

from .env import REPO_ROOT, environment

DATA = REPO_ROOT.parent / "shared" / "data"
FOLDERS = {"mnist": "mnist", "pneumoniamnist": "medmnist"}
PATE_2018_MNIST = {"source": "Papernot et al. 2018, Table 2 (MNIST, Confident-GNMax)", "owners": 250,
                   "threshold": 200, "sigma1": 150, "sigma2": 40, "queries": 640, "answered": 286,
                   "student_accuracy": 0.985, "epsilon_data_dependent": 1.97, "delta": 1e-5}
ORDERS = np.r_[np.arange(1.25, 2, 0.25), np.arange(2, 20, 0.5), np.arange(20, 101, 2), [128, 256]]


@dataclass(frozen=True)
class TransferConfig:
    """One dataset's run (see the module docstring)."""

    dataset: str = "mnist"
    owners: Optional[int] = 250          # None: as many ``shard_size`` shards as the owners' data holds
    shard_size: int = 236
    holdout: int = 1000                  # ``holdout`` records of the owners' split: the audit's non-members
    holdout_order: str = "last"          # "last": the last ``holdout``; "random": a seeded random subset
    layout: str = "pate"                 # "pate": owners = train+val, pool/eval = test; "val-pool": owners = train,
                                         # pool = val, eval = test
    eval_size: int = 1000                # "pate": the last eval_size test images
    queries: int = 640
    arch: str = "hybrid_cnn"             # owner recipe: benchmarks.teachers (docs/results/k250-teachers.md)
    epochs: int = 150
    patience: int = 25
    batch_size: int = 32
    lr: float = 3e-3
    val_fraction: float = 0.1
    shift: int = 2
    threshold: float = 200.0             # absolute at ``owners``; scaled by owners / 250 otherwise
    sigma1: float = 150.0
    sigma2: float = 40.0
    delta: float = 1e-5
    num_servers: int = 2
    per_query_epsilon: float = 1.0
    student_steps: int = 1500
    mia_records: int = 1000
    aug_n: int = 10
    sigma_s: float = 10.0
    smooth: bool = True
    seed: int = 0


MNIST = TransferConfig()
# PneumoniaMNIST's shared training split is ordered by label (its last 400 hold 388 of its 388 normal images):
# its hold-out is a seeded random subset
PNEUMONIA = TransferConfig(dataset="pneumoniamnist", owners=None, shard_size=240, holdout=400, holdout_order="random",
                           layout="val-pool", queries=200, mia_records=400)
QUICK = TransferConfig(dataset="digits", owners=4, shard_size=200, holdout=60, eval_size=80, queries=40, epochs=2,
                       patience=1, student_steps=40, mia_records=60, aug_n=2, smooth=False)


# --------------------------------------------------------------------------------------------- data

def _root(name: str, data: Path) -> Optional[Path]:
    folder = data / FOLDERS[name] if name in FOLDERS else None
    return folder if folder is not None and folder.exists() else None


@dataclass
class Split:
    owners_x: torch.Tensor
    owners_y: torch.Tensor
    holdout_x: torch.Tensor   # same split as the owners' data, seen by no owner, not queried, not the student's
    holdout_y: torch.Tensor
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor


def split(dataset: Dataset, config: TransferConfig) -> Split:
    """Owners' data, the hold-out, the client's pool and the evaluation set (disjoint; see the module docstring).

    The hold-out is the last ``config.holdout`` records of the owners' split (training split: train + val for
    "pate", train for "val-pool"), or a seeded random subset of that size (``holdout_order="random"``); the
    owners' data is the rest, in order.
    """
    if config.layout == "pate":
        ox, oy = torch.cat([dataset.train_x, dataset.val_x]), torch.cat([dataset.train_y, dataset.val_y])
        cut = len(dataset.test_y) - config.eval_size
        if cut <= config.queries:
            raise ValueError(f"{dataset.name}: a pool of {cut} test images cannot hold {config.queries} queries")
        pool_x, pool_y, eval_x, eval_y = dataset.test_x[:cut], dataset.test_y[:cut], dataset.test_x[cut:], \
            dataset.test_y[cut:]
    elif config.layout == "val-pool":
        ox, oy = dataset.train_x, dataset.train_y
        pool_x, pool_y, eval_x, eval_y = dataset.val_x, dataset.val_y, dataset.test_x, dataset.test_y
    else:
        raise ValueError(f"layout must be 'pate' or 'val-pool', got {config.layout!r}")
    if not 2 <= config.holdout < len(oy):
        raise ValueError(f"{dataset.name}: holdout must be in [2, {len(oy)}), got {config.holdout}")
    if config.holdout_order == "last":
        order = torch.arange(len(oy))
    elif config.holdout_order == "random":
        order = torch.as_tensor(np.random.default_rng([config.seed, 59]).permutation(len(oy)))
    else:
        raise ValueError(f"holdout_order must be 'last' or 'random', got {config.holdout_order!r}")
    keep, held = order[:len(oy) - config.holdout], order[len(oy) - config.holdout:]
    return Split(ox[keep], oy[keep], ox[held], oy[held], pool_x, pool_y, eval_x, eval_y)


def owner_count(config: TransferConfig, available: int) -> int:
    """K: ``config.owners``, or as many ``shard_size`` shards as ``available`` records hold."""
    k = config.owners if config.owners is not None else available // config.shard_size
    if k < 1 or k * config.shard_size > available:
        raise ValueError(f"{k} owners x {config.shard_size} images need more than the {available} available")
    return k


def shards(available: int, owners: int, size: int, seed: int) -> list[np.ndarray]:
    """``owners`` disjoint index arrays of exactly ``size`` (a seeded permutation, cut in order)."""
    order = np.random.default_rng(seed).permutation(available)
    return [np.sort(order[i * size:(i + 1) * size]) for i in range(owners)]


def _cache_dir(cache: Path, config: TransferConfig, owners: int) -> Path:
    return cache / (f"{config.dataset}-{config.layout}-h{config.holdout}{config.holdout_order}-K{owners}-s{config.shard_size}-{config.arch}-"
                    f"e{config.epochs}p{config.patience}b{config.batch_size}lr{config.lr:g}v{config.val_fraction:g}"
                    f"sh{config.shift}-seed{config.seed}")


def _train_one(dataset: Dataset, data: Split, part: np.ndarray, owner: int, config: TransferConfig) -> dict[str, Any]:
    """Owner ``owner`` (seeded from ``(seed, owner)`` as in ``train_owners``): votes on pool + eval, accuracy."""
    arch = {"name": config.arch, "in_channels": dataset.input_shape[0], "image_size": dataset.input_shape[1],
            "num_classes": dataset.num_classes}
    owner_seed = int(np.random.SeedSequence([config.seed, owner]).generate_state(1)[0])
    index = torch.as_tensor(np.asarray(part), dtype=torch.int64)
    begin = time.perf_counter()
    result = train_owner(build_model(arch, seed=owner_seed), data.owners_x[index], data.owners_y[index],
                         num_classes=dataset.num_classes, seed=owner_seed, quiet=True, epochs=config.epochs,
                         patience=config.patience, batch_size=config.batch_size, lr=config.lr,
                         val_fraction=config.val_fraction, shift=config.shift)
    seconds = time.perf_counter() - begin
    x = torch.cat([data.pool_x, data.eval_x])
    with torch.no_grad():
        logits = torch.cat([result.model.eval()(x[i:i + 2048]) for i in range(0, len(x), 2048)]).double().numpy()
    return {"votes": np.clip(logits, -DEFAULT_LOGIT_BOUND, DEFAULT_LOGIT_BOUND).argmax(axis=1).astype(np.int16),
            "accuracy": float((logits[len(data.pool_y):].argmax(1) == data.eval_y.numpy()).mean()),
            "seconds": seconds, "epochs_run": result.epochs_run}


def owner_votes(dataset: Dataset, data: Split, *, owners: int, config: TransferConfig, cache: Path,
                part: tuple[int, int] = (0, 1), log=print) -> Optional[dict[str, Any]]:
    """Train the K owners; their votes on the pool and the evaluation set, (K, pool + eval).

    Cached one file per owner, so a run resumes where it stopped; ``part = (i, n)`` trains only the owners
    ``k % n == i`` and returns None unless all K are then cached.
    """
    folder = _cache_dir(cache, config, owners)
    folder.mkdir(parents=True, exist_ok=True)
    parts = shards(len(data.owners_y), owners, config.shard_size, config.seed)
    i, n = part
    for owner in range(i, owners, n):
        path = folder / f"owner-{owner:04d}.npz"
        if not path.exists():
            one = _train_one(dataset, data, parts[owner], owner, config)
            tmp = folder / f"owner-{owner:04d}.tmp.npz"
            np.savez_compressed(tmp, **one)
            tmp.replace(path)
            log(f"transfer {config.dataset}: owner {owner} trained, accuracy {one['accuracy']:.3f}, "
                f"{one['epochs_run']} epochs, {one['seconds']:.0f} s")
    paths = [folder / f"owner-{k:04d}.npz" for k in range(owners)]
    if not all(p.exists() for p in paths):
        return None
    saved = [np.load(p) for p in paths]
    return {"votes": np.stack([s["votes"] for s in saved]), "parts": np.asarray(parts),
            "owner_accuracy_eval": np.asarray([float(s["accuracy"]) for s in saved]),
            "train_seconds": np.asarray(sum(float(s["seconds"]) for s in saved)),
            "epochs_run": np.asarray([int(s["epochs_run"]) for s in saved])}


def histogram(votes: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.zeros((votes.shape[1], num_classes))
    for row in votes:
        counts[np.arange(votes.shape[1]), row] += 1
    return counts


# --------------------------------------------------------------------------------------------- run

def _student_row(name: str, result, data: Split, labelled: int, label_accuracy: float) -> dict[str, Any]:
    accuracy = float((student_predict(result.model, data.eval_x) == data.eval_y.numpy()).mean())
    return {"student": name, "labelled": labelled, "unlabelled": result.unlabelled, "label_accuracy": label_accuracy,
            "accuracy": accuracy, "mask_rate": optional_float(result.mask_rate)}


def run_dataset(config: TransferConfig, *, out: Path, data_root: Path = DATA, cache: Optional[Path] = None,
                part: tuple[int, int] = (0, 1), log=print) -> Optional[dict[str, Any]]:
    """Everything of one dataset; returns the JSON-able record (also written by :func:`write`).

    None when ``part`` left some owners untrained (a training-only process; see :func:`owner_votes`).
    """
    begin = time.perf_counter()
    dataset = load_dataset(config.dataset, root=_root(config.dataset, data_root), seed=0)
    data = split(dataset, config)
    k = owner_count(config, len(data.owners_y))
    scale = k / 250
    mechanism = ConfidentGNMax(threshold=config.threshold * scale, sigma_threshold=config.sigma1 * scale,
                               sigma=config.sigma2 * scale, delta=config.delta)
    c = dataset.num_classes
    found = owner_votes(dataset, data, owners=k, config=config, cache=cache or out / "transfer-cache", part=part,
                        log=log)
    if found is None:
        return None
    log(f"transfer {config.dataset}: K={k} owners ready ({float(found['train_seconds']):.0f} s of training)")
    votes = found["votes"].astype(np.int64)
    n_pool = len(data.pool_y)
    pool_counts, eval_counts = histogram(votes[:, :n_pool], c), histogram(votes[:, n_pool:], c)
    truth_pool, truth_eval = data.pool_y.numpy(), data.eval_y.numpy()
    queries = min(config.queries, n_pool)
    counts_q = pool_counts[:queries]
    released = reference.release(counts_q, mechanism=mechanism, num_servers=config.num_servers,
                                 seed=f"transfer-{config.dataset}-{config.seed}")
    rows, labels = answered_labels(released, num_classes=c)
    answered = len(rows)
    label_accuracy = float((labels == truth_pool[rows]).mean()) if answered else math.nan
    record: dict[str, Any] = {
        "dataset": config.dataset, "owners": k, "shard_size": config.shard_size, "arch": config.arch,
        "owner_recipe": {"epochs_max": config.epochs, "patience": config.patience, "batch_size": config.batch_size,
                         "lr": config.lr, "val_fraction": config.val_fraction, "shift": config.shift,
                         "epochs_run_mean": float(found["epochs_run"].mean())},
        "owner_data": len(data.owners_y), "holdout": len(data.holdout_y), "pool": n_pool, "eval": len(data.eval_y), "queries": queries,
        "answered": answered, "answered_label_accuracy": label_accuracy,
        "mechanism": {"threshold": mechanism.threshold, "sigma1": mechanism.sigma_threshold,
                      "sigma2": mechanism.sigma, "num_servers": config.num_servers},
        "owner_accuracy_mean": float(found["owner_accuracy_eval"].mean()),
        "owner_accuracy_min": float(found["owner_accuracy_eval"].min()),
        "owner_accuracy_max": float(found["owner_accuracy_eval"].max()),
        "owner_train_seconds": float(found["train_seconds"]),
        "ensemble_accuracy_eval": float((eval_counts.argmax(1) == truth_eval).mean()),
        "ensemble_accuracy_queries": float((counts_q.argmax(1) == truth_pool[:queries]).mean()),
    }
    # -- accounting (data-independent; what the ledger enforces)
    totals = {mode: gnmax_total_epsilon(mechanism, queries=queries, answered=answered, delta=config.delta, mode=mode)
              for mode in ("conservative", "answered-only")}
    record["epsilon"] = {"delta": config.delta, "accountant": "rdp-filter", **totals,
                         "conservative_pld": gnmax_total_epsilon(mechanism, queries=queries, answered=answered,
                                                                 delta=config.delta, mode="conservative",
                                                                 accountant="pld")}
    # -- PATE 2018's data-dependent analysis (sees the histograms: an analysis figure, not a guarantee)
    answered_mask = released >= 0
    kw = dict(threshold=mechanism.threshold, sigma_threshold=mechanism.sigma_threshold, sigma=mechanism.sigma)
    dep = pate_analysis.confident_gnmax_rdp(counts_q, answered_mask, orders=ORDERS, **kw)
    eps_dep, order_dep = pate_analysis.epsilon_from_rdp(ORDERS, dep, config.delta)
    ind = pate_analysis.confident_gnmax_rdp(counts_q, answered_mask, orders=ORDERS, data_dependent=False, **kw)
    record["data_dependent"] = {"epsilon": eps_dep, "order": order_dep,
                                "epsilon_data_independent_classic": pate_analysis.epsilon_from_rdp(ORDERS, ind,
                                                                                                   config.delta)[0]}
    if config.smooth:
        order = float(order_dep)
        beta = 0.4 / order
        t0 = time.perf_counter()
        analysis = pate_analysis.analyze_confident_gnmax(counts_q, answered_mask, delta=config.delta, orders=ORDERS,
                                                         order=order, beta=beta, sigma_s=config.sigma_s, **kw)
        record["data_dependent"].update({
            "smooth_order": order, "beta": beta, "sigma_s": config.sigma_s,
            "smooth_sensitivity": analysis.smooth_sensitivity, "release_noise_std": analysis.release_noise_std,
            "epsilon_with_smooth_sensitivity": analysis.epsilon_smooth_release,
            "seconds": time.perf_counter() - t0})
    log(f"transfer {config.dataset}: {answered}/{queries} answered; eps {totals}; data-dependent {eps_dep:.3g}")
    # -- students
    student_cfg = StudentConfig(steps=config.student_steps, seed=config.seed)
    x_lab, y_lab = data.pool_x[rows], torch.as_tensor(labels)
    rest = np.setdiff1d(np.arange(n_pool), rows)
    students = {}
    sup = train_student(x_lab, y_lab, num_classes=c, config=student_cfg)
    semi = train_student(x_lab, y_lab, num_classes=c, unlabelled=data.pool_x[rest], config=student_cfg)
    students["supervised"], students["semi-supervised"] = sup, semi
    record["students"] = [_student_row(n, r, data, answered, label_accuracy) for n, r in students.items()]
    log(f"transfer {config.dataset}: students {[(r['student'], round(r['accuracy'], 4)) for r in record['students']]}")
    # -- the per-query mode at the same totals: the library's Gaussian noisy argmax at per-query epsilon
    # ``per_query_epsilon``, and at PATE's argmax noise sigma2 without the threshold step (every query answered)
    directs = [(f"Gaussian noisy argmax, ε = {config.per_query_epsilon:g} per query",
                calibrate(epsilon=config.per_query_epsilon, mechanism="gaussian", delta=config.delta)),
               (f"GNMax at σ2 = {mechanism.sigma:g} (no threshold)", gaussian_with_sigma(mechanism.sigma,
                                                                                       delta=config.delta))]
    per_query = []
    for label, direct in directs:
        direct_eval = reference.release(eval_counts, mechanism=direct, num_servers=config.num_servers,
                                        seed=f"transfer-direct-{config.dataset}-{config.seed}")
        direct_accuracy = float((direct_eval == truth_eval).mean())
        for mode, total in totals.items():
            n = queries_within(direct, total=total, delta=config.delta)
            entry = {"budget_mode": mode, "total_epsilon": total, "mechanism": label,
                     "per_query_epsilon": direct.epsilon, "sigma": direct.scale, "queries_bought": n,
                     "direct_answer_accuracy": direct_accuracy, "student_accuracy": None}
            if 0 < n <= n_pool:
                labels_n = reference.release(pool_counts[:n], mechanism=direct, num_servers=config.num_servers,
                                             seed=f"transfer-direct-pool-{config.dataset}-{config.seed}")
                student_n = train_student(data.pool_x[:n], torch.as_tensor(labels_n), num_classes=c,
                                          config=student_cfg)
                entry["student_accuracy"] = float((student_predict(student_n.model, data.eval_x)
                                                   == truth_eval).mean())
                entry["student_label_accuracy"] = float((labels_n == truth_pool[:n]).mean())
            per_query.append(entry)
    record["per_query"] = per_query
    # -- exposure of the students w.r.t. the owners' training records
    rng = np.random.default_rng(config.seed + 1)
    in_shards = np.concatenate(list(found["parts"]))  # records some owner trained on (not the unused remainder)
    members = rng.choice(in_shards, size=min(config.mia_records, len(in_shards)), replace=False)
    mx, my = data.owners_x[members], data.owners_y[members].numpy()
    nx, ny = data.holdout_x, data.holdout_y.numpy()  # same split, seen by no owner, not queried, not the student's
    exposure = []
    for name, result in students.items():
        conf = membership_exposure("confidence (white-box)",
                                   confidence_scores(student_probabilities(result.model, mx), my),
                                   confidence_scores(student_probabilities(result.model, nx), ny), delta=config.delta)
        oracle = SingleOwnerOracle(model=result.model, num_classes=c, input_shape=tuple(dataset.input_shape))
        attack = AugmentationAttack(n=config.aug_n, kind="shift")
        label = membership_exposure(f"label-only (augmentation, n={config.aug_n})",
                                    attack.scores(oracle, mx.numpy(), my), attack.scores(oracle, nx.numpy(), ny),
                                    delta=config.delta)
        for e in (conf, label):
            exposure.append({"student": name, **e.row(),
                             "bound_conservative": totals["conservative"],
                             "bound_answered_only": totals["answered-only"],
                             "within_bound": bool(e.epsilon_lower <= min(totals.values()))})
    record["exposure"] = exposure
    record["audit"] = {"member_class_counts": np.bincount(my, minlength=c).tolist(),
                       "non_member_class_counts": np.bincount(ny, minlength=c).tolist()}
    record["wall_seconds"] = time.perf_counter() - begin
    return record


# ----------------------------------------------------------------------------------------- output

def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV: one row for this run, one for PATE 2018's published MNIST row (MNIST only)."""
    students = {s["student"]: s for s in record["students"]}
    dd = record["data_dependent"]
    per = {p["budget_mode"]: p for p in record["per_query"] if p["mechanism"].startswith("Gaussian noisy argmax")}
    row = {"source": "this run (plaintext simulation)", "dataset": record["dataset"], "owners": record["owners"],
           "arch": record["arch"], "queries": record["queries"], "answered": record["answered"],
           "answered_label_accuracy": record["answered_label_accuracy"],
           "student_supervised": students["supervised"]["accuracy"],
           "student_semi_supervised": students["semi-supervised"]["accuracy"],
           "epsilon_conservative": record["epsilon"]["conservative"],
           "epsilon_answered_only": record["epsilon"]["answered-only"],
           "epsilon_data_dependent": dd["epsilon"],
           "epsilon_data_dependent_smooth": dd.get("epsilon_with_smooth_sensitivity"),
           "per_query_bought_conservative": per["conservative"]["queries_bought"],
           "per_query_bought_answered_only": per["answered-only"]["queries_bought"],
           "per_query_direct_accuracy": per["conservative"]["direct_answer_accuracy"],
           "delta": record["epsilon"]["delta"]}
    rows = [row]
    if record["dataset"] == "mnist":
        p = PATE_2018_MNIST
        rows.append({"source": p["source"], "dataset": "mnist", "owners": p["owners"], "arch": "(PATE teachers)",
                     "queries": p["queries"], "answered": p["answered"], "answered_label_accuracy": None,
                     "student_supervised": None, "student_semi_supervised": p["student_accuracy"],
                     "epsilon_conservative": None, "epsilon_answered_only": None,
                     "epsilon_data_dependent": p["epsilon_data_dependent"], "epsilon_data_dependent_smooth": None,
                     "per_query_bought_conservative": None, "per_query_bought_answered_only": None,
                     "per_query_direct_accuracy": None, "delta": p["delta"]})
    return rows


# how benchmarks/tables.py renders NAME.csv (docs/results/README.md)
TABLE_COLUMNS = [
    {"column": "source", "header": "source"}, {"column": "owners", "header": "K"},
    {"column": "queries", "header": "queries"}, {"column": "answered", "header": "answered"},
    {"column": "student_supervised", "header": "student (supervised)", "format": ".3f"},
    {"column": "student_semi_supervised", "header": "student (semi-supervised)", "format": ".3f"},
    {"column": "epsilon_conservative", "header": "total ε conservative", "format": ".3g"},
    {"column": "epsilon_answered_only", "header": "total ε answered-only", "format": ".3g"},
    {"column": "epsilon_data_dependent", "header": "ε data-dependent (analysis)", "format": ".3g"},
    {"column": "epsilon_data_dependent_smooth", "header": "ε data-dep. + smooth sens.", "format": ".3g"},
    {"column": "per_query_bought_conservative", "header": "direct queries for the same total (conservative)",
     "format": "d"},
]


def _recipe(r: dict[str, Any]) -> str:
    o = r.get("owner_recipe")
    if not o:
        return "–"
    return (f"Adam lr {o['lr']:g}, batch {o['batch_size']}, at most {o['epochs_max']} epochs (mean "
            f"{o['epochs_run_mean']:.0f} run), early stopping with patience {o['patience']} on "
            f"{o['val_fraction']:.0%} of the shard, random shifts of up to {o['shift']} px")


def _f(v: Any, fmt: str = ".3f") -> str:
    if isinstance(v, str):  # NaN as written to JSON
        return "–" if v.lower() in ("nan", "") else v
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def markdown(record: dict[str, Any], meta: dict[str, Any]) -> str:
    r = record
    eps, dd = r["epsilon"], r["data_dependent"]
    lines = [f"# Private knowledge transfer to a student: {r['dataset']}", "",
             f"Command: `{meta['command']}`; commit `{meta['git_commit']}`{' (dirty)' if meta['git_dirty'] else ''}; "
             f"{meta['date']}; {r['wall_seconds']:.0f} s.", "",
             f"K = {r['owners']} owners (`{r['arch']}`) on disjoint {r['shard_size']}-image shards of {r['owner_data']:,} "
             f"training images ({r['holdout']:,} further training images held out from every owner, the audit's "
             f"non-members); owner recipe {_recipe(r)}; mean owner accuracy {r['owner_accuracy_mean']:.3f} (min {r['owner_accuracy_min']:.3f}, "
             f"max {r['owner_accuracy_max']:.3f}); noiseless vote ensemble {r['ensemble_accuracy_eval']:.3f} on the "
             f"evaluation set. Client pool {r['pool']:,} images, {r['queries']} asked; evaluation on {r['eval']:,} "
             f"images never queried and never seen by an owner. Confident-GNMax T = {r['mechanism']['threshold']:g}, "
             f"σ1 = {r['mechanism']['sigma1']:g}, σ2 = {r['mechanism']['sigma2']:g} (plaintext simulation of the MPC "
             f"release, N = {r['mechanism']['num_servers']}, seeded test-only noise). Total ε at δ = {eps['delta']:g}.",
             "", "## Table", "",
             "| source | K | queries | answered | label acc. | student sup. | student semi-sup. | ε conservative "
             "(rdp-filter) | ε answered-only (rdp-filter) | ε data-dependent (analysis) | ε data-dep. + smooth "
             "sensitivity |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table_rows(r):
        lines.append(f"| {row['source']} | {row['owners']} | {row['queries']} | {row['answered']} | "
                     f"{_f(row['answered_label_accuracy'])} | {_f(row['student_supervised'])} | "
                     f"{_f(row['student_semi_supervised'])} | {_f(row['epsilon_conservative'], '.3g')} | "
                     f"{_f(row['epsilon_answered_only'], '.3g')} | {_f(row['epsilon_data_dependent'], '.3g')} | "
                     f"{_f(row['epsilon_data_dependent_smooth'], '.3g')} |")
    lines += ["", f"Conservative mode under the PLD accountant: ε = {eps['conservative_pld']:.3g}. The data-dependent "
              f"figures see the vote histograms (PATE 2018's analysis, order {dd['order']:g}); the ledger enforces the "
              f"data-independent ones."]
    if "epsilon_with_smooth_sensitivity" in dd:
        lines += [f"Smooth-sensitivity release: order {dd['smooth_order']:g}, β = {dd['beta']:.4g}, σ_s = "
                  f"{dd['sigma_s']:g} (our choice), smooth sensitivity {dd['smooth_sensitivity']:.4g}, noise std of the "
                  f"released RDP {dd['release_noise_std']:.4g}."]
    lines += ["", "## Students", "", "| student | labelled rows | unlabelled rows | accuracy (eval) | mask rate |",
              "|---|---|---|---|---|"]
    for s in r["students"]:
        lines.append(f"| {s['student']} | {s['labelled']} | {s['unlabelled']} | {s['accuracy']:.4f} | "
                     f"{_f(s['mask_rate'])} |")
    lines += ["", "## Per-query mode at the same total ε", "",
              "| budget (mode) | total ε | direct mechanism | direct queries bought | accuracy of a direct answer | "
              "supervised student on that many direct labels |", "|---|---|---|---|---|---|"]
    for p in r["per_query"]:
        per_query_eps = "" if "per query" in p["mechanism"] else f"; ε = {p['per_query_epsilon']:.3g} per query"
        lines.append(f"| {p['budget_mode']} | {p['total_epsilon']:.3g} | {p['mechanism']} (σ = {p['sigma']:.3g}"
                     f"{per_query_eps}) | {p['queries_bought']} | "
                     f"{p['direct_answer_accuracy']:.3f} | {_f(p['student_accuracy'])} |")
    lines += ["", "## Student exposure (membership of the owners' training records)", "",
              "| student | attack | members / non-members | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR | empirical ε lower bound "
              "(95% CP) | max refutable ε | bound: total ε conservative / answered-only | within |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["exposure"]:
        lines.append(f"| {e['student']} | {e['attack']} | {e['members']} / {e['non_members']} | {e['auc']:.3f} | "
                     f"{_f(e['tpr_at_fpr_1pct'])} | {_f(e['tpr_at_fpr_0.1pct'])} | {e['epsilon_lower']:.3g} | "
                     f"{e['max_refutable_epsilon']:.3g} | {e['bound_conservative']:.3g} / "
                     f"{e['bound_answered_only']:.3g} | {'yes' if e['within_bound'] else 'NO'} |")
    lines += ["", f"Members: owner training records drawn (seeded) from the owners' shards; non-members: the "
              f"{r['holdout']:,} held-out training-split images (same split as the members; no owner trained on them, "
              f"never queried, not in the student's data). The empirical bound is at δ = 1e-5, threshold chosen on "
              "half the records and tested on the other half; 'max refutable' is what a perfect attack could show "
              "with this sample, so a bound above it cannot be refuted here at all (a 'yes' with a bound above 'max "
              "refutable' says only that nothing was refuted). Membership is fixed, not randomised as in a DP audit "
              "game: the comparison is descriptive.", ""]
    return "\n".join(lines)


def write(record: dict[str, Any], meta: dict[str, Any], out: Path, name: str) -> None:
    from .report import write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_csv(table_rows(record), out / f"{name}.csv")
    write_json({**meta, "columns": TABLE_COLUMNS, "result": record, "pate_2018_mnist": PATE_2018_MNIST},
               out / f"{name}.json")
    (out / f"{name}.md").write_text(markdown(record, meta))


def _meta(config: TransferConfig, command: Optional[str] = None) -> dict[str, Any]:
    env = environment(sys.argv[1:])
    return {"command": command or env["command"], "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "config": asdict(config),
            "torch_threads": torch.get_num_threads(), "cpu_count": env["cpu_count"]}


def result_name(config: TransferConfig) -> str:
    short = {"pneumoniamnist": "pneumonia"}.get(config.dataset, config.dataset)
    return f"transfer-{short}"


def transfer_suite(*, quick: bool, out: Path, seed: int = 0, data: Path = DATA, arch: Optional[str] = None,
                   configs: Optional[Sequence[TransferConfig]] = None, command: Optional[str] = None,
                   cache: Optional[Path] = None, part: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Any]]:
    """Yield one row per dataset (this run's table row); write ``transfer-<dataset>.{csv,json,md}`` to ``out``."""
    configs = list(configs or ([QUICK] if quick else [MNIST, PNEUMONIA]))
    for config in configs:
        config = replace(config, seed=config.seed + seed, **({"arch": arch} if arch else {}))
        try:
            record = run_dataset(config, out=out, data_root=data, cache=cache, part=part,
                                 log=lambda m: print(m, flush=True))
        except DatasetNotFoundError as err:
            print(f"transfer: skipping {config.dataset}: {err}", flush=True)
            continue
        if record is None:
            print(f"transfer {config.dataset}: part {part[0]}/{part[1]} of the owners trained", flush=True)
            continue
        write(record, _meta(config, command), out, result_name(config))
        yield table_rows(record)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.transfer --out DIR [--dataset mnist|pneumoniamnist] [--arch NAME] [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", choices=["mnist", "pneumoniamnist"], nargs="+", default=["mnist", "pneumoniamnist"])
    parser.add_argument("--arch", default=None, help="the owners' architecture (default hybrid_cnn)")
    parser.add_argument("--cache", type=Path, default=None, help="owner cache folder (default OUT/transfer-cache)")
    parser.add_argument("--train-part", default="0/1", help="I/N: train only owners k %% N == I (then stop unless "
                        "all owners are cached)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--student-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    configs = [QUICK] if args.quick else [{"mnist": MNIST, "pneumoniamnist": PNEUMONIA}[d] for d in args.dataset]
    if args.student_steps:
        configs = [replace(c, student_steps=args.student_steps) for c in configs]
    command = " ".join(["python", "-m", "benchmarks.transfer", *(sys.argv[1:] if argv is None else argv)])
    i, n = (int(v) for v in args.train_part.split("/"))
    if not 0 <= i < n:
        parser.error(f"--train-part must be I/N with 0 <= I < N, got {args.train_part!r}")
    for row in transfer_suite(quick=args.quick, out=args.out, seed=args.seed, arch=args.arch, configs=configs,
                              command=command, cache=args.cache, part=(i, n)):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

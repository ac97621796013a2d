"""The model zoo's accuracy against its MPC cost: ``python -m benchmarks.zoo [--quick] [--out DIR] [--seeds 3]``.

For each dataset (PneumoniaMNIST from ``--data-root``, skipped with a message
when the file is absent; digits from scikit-learn, offline) and each seed, the
training split is cut into K=10 IID shards
(:func:`~pricure_crypten.experiments.partition.partition`), and every
architecture is trained on the SAME shards with the project's usual recipe
(:func:`~pricure_crypten.experiments.training.train_owners`: Adam,
class-weighted loss, early stopping on a validation split of each shard).
Reported per architecture, over the seeds (mean and min..max):

* ``single``: the mean test accuracy of the K single owners;
* ``ensemble``: the test accuracy of the plaintext vote ensemble with no
  noise (:mod:`pricure_crypten.experiments.reference`: ``ensemble_logits``,
  ``histogram``, ``noisy_argmax`` with ``calibrate(epsilon=inf)``);
* the nonlinear elements per image that the secure backend evaluates
  (:func:`~pricure_crypten.experiments.models.nonlinear_elements`), the
  parameter count and the training time of the K owners.

Writes ``runs.csv`` (one row per dataset, architecture and seed),
``summary.csv`` and ``zoo.md`` to ``--out`` (default
``benchmarks/results/zoo-<timestamp>``) and prints the table. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pricure_crypten.experiments import reference
from pricure_crypten.experiments.data import DatasetNotFoundError, load_dataset
from pricure_crypten.experiments.models import (
    ARCHITECTURES,
    MPC_FRIENDLY,
    build_model,
    nonlinear_elements,
    parameter_count,
)
from pricure_crypten.experiments.partition import partition
from pricure_crypten.experiments.training import accuracy, train_owners
from pricure_crypten.privacy.noise import calibrate

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data" / "medmnist"
DATASETS = ("pneumoniamnist", "digits")
DEFAULT_ARCHS = ("small_cnn", *MPC_FRIENDLY)
REFERENCE_ARCH = "small_cnn"
NUM_OWNERS = 10
QUICK_EPOCHS = 10


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"one seed and at most {QUICK_EPOCHS} epochs per owner (a smoke run)")
    parser.add_argument("--seeds", type=_positive, default=3, help="number of seeds (0..n-1; default 3)")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="directory holding pneumoniamnist.npz")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--archs", nargs="+", choices=sorted(a for a in ARCHITECTURES if a != "mlp"),
                        default=list(DEFAULT_ARCHS), help=f"architectures (default: {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    return parser.parse_args(argv)


def _arch(name: str, dataset) -> dict[str, Any]:
    channels, side, _ = dataset.input_shape
    return {"name": name, "in_channels": channels, "image_size": side, "num_classes": dataset.num_classes}


def run_dataset(name: str, archs: Sequence[str], *, seeds: Sequence[int], root: Path,
                options: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (architecture, seed); raises DatasetNotFoundError when the data is missing."""
    rows = []
    no_noise = calibrate(epsilon=math.inf)
    for seed in seeds:
        dataset = load_dataset(name, root=root, seed=seed)
        parts = partition(dataset.train_y.numpy(), num_owners=NUM_OWNERS, scheme="iid", seed=seed)
        test_x, test_y = dataset.test_x, dataset.test_y
        for arch_name in archs:
            arch = _arch(arch_name, dataset)
            start = time.perf_counter()
            results = train_owners(dataset, parts, arch=arch, seed=seed, quiet=True, **options)
            seconds = time.perf_counter() - start
            models = [r.model for r in results]
            counts = reference.histogram(reference.ensemble_logits(models, test_x), aggregation="vote")
            labels = reference.noisy_argmax(counts, aggregation="vote", mechanism=no_noise)
            model = build_model(arch)
            elements = nonlinear_elements(model, dataset.input_shape)
            row = {
                "dataset": name, "arch": arch_name, "seed": seed, "owners": NUM_OWNERS,
                "test_size": len(test_y),
                "single_accuracy": float(np.mean([accuracy(m, test_x, test_y) for m in models])),
                "ensemble_accuracy": float(np.mean(labels == test_y.numpy())),
                "relu": elements["relu"], "square": elements["square"],
                "maxpool_comparisons": elements["maxpool_comparisons"],
                "params": parameter_count(model),
                "train_seconds": round(seconds, 2),
                "mean_epochs": float(np.mean([r.epochs_run for r in results])),
            }
            rows.append(row)
            print(f"  {name} seed {seed} {arch_name:15s} single {row['single_accuracy']:.4f} "
                  f"ensemble {row['ensemble_accuracy']:.4f} ({seconds:.1f} s)", flush=True)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, architecture): mean/min/max over seeds, gaps to small_cnn."""
    summary = []
    keys = list(dict.fromkeys((r["dataset"], r["arch"]) for r in rows))
    for dataset, arch in keys:
        group = [r for r in rows if (r["dataset"], r["arch"]) == (dataset, arch)]
        out: dict[str, Any] = {"dataset": dataset, "arch": arch, "seeds": len(group)}
        for metric in ("single_accuracy", "ensemble_accuracy"):
            values = [r[metric] for r in group]
            out.update({f"{metric}_mean": float(np.mean(values)), f"{metric}_min": float(np.min(values)),
                        f"{metric}_max": float(np.max(values))})
        for key in ("relu", "square", "maxpool_comparisons", "params"):
            out[key] = group[0][key]
        out["train_seconds"] = float(np.mean([r["train_seconds"] for r in group]))
        summary.append(out)
    for out in summary:
        ref = next((s for s in summary if s["dataset"] == out["dataset"] and s["arch"] == REFERENCE_ARCH), None)
        for metric in ("single_accuracy", "ensemble_accuracy"):
            out[f"{metric}_gap"] = (out[f"{metric}_mean"] - ref[f"{metric}_mean"]) if ref else None
        out["relu_reduction"] = (ref["relu"] / out["relu"] if ref and out["relu"] else None)
    return summary


def _pct(mean: float, low: float, high: float) -> str:
    return f"{100 * mean:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def _gap(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}"


def markdown(summary: Sequence[dict[str, Any]], *, seeds: int, quick: bool) -> str:
    lines = [
        (f"Owner model zoo: K={NUM_OWNERS} owners on IID shards, {seeds} seed(s){' (quick)' if quick else ''}. "
         "Test accuracy in %, mean (min-max) over seeds; gaps in points vs small_cnn; "
         "nonlinear elements per image as evaluated under MPC."),
        "",
        ("| dataset | arch | single owner | vote ensemble | ens. gap | single gap | ReLU | Square "
         "| ReLU reduction | params | train s (K owners) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        reduction = "" if s["relu_reduction"] is None else f"{s['relu_reduction']:.1f}x"
        if s["relu"] == 0:
            reduction = "no ReLU"
        lines.append(
            f"| {s['dataset']} | {s['arch']} "
            f"| {_pct(s['single_accuracy_mean'], s['single_accuracy_min'], s['single_accuracy_max'])} "
            f"| {_pct(s['ensemble_accuracy_mean'], s['ensemble_accuracy_min'], s['ensemble_accuracy_max'])} "
            f"| {_gap(s['ensemble_accuracy_gap'])} | {_gap(s['single_accuracy_gap'])} "
            f"| {s['relu']} | {s['square']} | {reduction} | {s['params']} | {s['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(1 if args.quick else args.seeds))
    options = {"epochs": QUICK_EPOCHS} if args.quick else {}
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"zoo-{datetime.now():%Y%m%d-%H%M%S}"
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.datasets:
        print(f"{name}: {len(args.archs)} architectures x {len(seeds)} seed(s) x {NUM_OWNERS} owners", flush=True)
        try:
            rows += run_dataset(name, args.archs, seeds=seeds, root=args.data_root, options=options)
        except DatasetNotFoundError as error:
            print(f"skipping {name}: {error}", flush=True)
    if not rows:
        print("no dataset available; nothing written")
        return 1
    summary = summarise(rows)
    table = markdown(summary, seeds=len(seeds), quick=args.quick)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out / "runs.csv")
    _write_csv(summary, out / "summary.csv")
    (out / "zoo.md").write_text(table)
    print()
    print(table)
    print(f"written to {out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

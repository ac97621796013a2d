"""PATE-scale teachers: accuracy of MPC-friendly owner models on 240-image MNIST shards, against their MPC cost.

``python -m benchmarks.teachers [--quick] [--out docs/results] [--archs ...] [--evaluate 25]``

The 60,000 MNIST training images (this project's train + validation splits
of ``mnist.npz``) are cut into ``--shards`` (250) disjoint IID shards of 240
images (:func:`~pricure_crypten.experiments.partition.partition`, seed 0),
as PATE 2018 did for its 250 teachers. For each architecture the first
``--evaluate`` owners are trained, each on its own shard only
(:func:`~pricure_crypten.experiments.training.train_owner`: Adam, class
weights, early stopping on 10% of the shard, ``--shift`` pixels of random
translation), and tested on the 10,000 MNIST test images. Reported per
architecture: the mean owner test accuracy with a 95% Student-t interval over
the evaluated owners, their min and max, the plaintext vote ensemble of the
evaluated owners (noiseless), the nonlinear elements per owner and per query
at K = 250 (ReLU, Square), parameters, training seconds per owner, and,
where ``k250-cost.csv`` (``python -m benchmarks.k250``) is in ``--out``, its
MPC cost at K = 250, N = 2 (rounds, MB and seconds per query, dealer on-line
and from stock).

Writes ``k250-teachers.csv``, ``k250-teachers.json`` (command, environment,
rows) and ``k250-teachers.md`` to ``--out``. ``--quick``: 2 owners of
``mlp16`` and ``coarse_cnn``, 8 epochs, 500 test images (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

from pricure_crypten.experiments import reference
from pricure_crypten.experiments.data import load_dataset
from pricure_crypten.experiments.models import build_model, nonlinear_elements, parameter_count
from pricure_crypten.experiments.partition import partition
from pricure_crypten.experiments.training import accuracy, train_owner
from pricure_crypten.privacy.noise import calibrate

from .env import REPO_ROOT, environment
from .perf import _arch
from .report import read_csv, write_csv, write_json

ARCHS = ("mlp16", "mlp64", "coarse_cnn", "hybrid_cnn", "strided_cnn")
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "mnist"
RECIPE = {"epochs": 150, "patience": 25, "val_fraction": 0.1}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.teachers", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 owners, 2 archs, 8 epochs, 500 test images")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of mnist.npz")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), help="zoo names or mlp<H> (default: %(default)s)")
    p.add_argument("--shards", type=int, default=250, help="disjoint shards of the 60,000 training images")
    p.add_argument("--evaluate", type=int, default=25, help="owners trained and tested per architecture")
    p.add_argument("--shift", type=int, default=2, help="random translation in pixels (training augmentation)")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", action="store_true",
                   help="train nothing: join the K = 250 cost of k250-cost.csv in --out into the k250-teachers "
                        "files already there (after `python -m benchmarks.k250`)")
    return p.parse_args(argv)


def interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% Student-t interval of the mean of ``values`` (the mean twice for one value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean - half, mean + half


def _cost(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "k250-cost.csv"
    if not path.exists():
        return {}
    return {r["arch"]: r for r in read_csv(path) if r.get("servers") == 2 and r.get("owners") == 250
            and not r.get("error")}


COST_COLUMNS = ("live_rounds_per_batch", "precomputed_rounds_per_batch", "live_bytes_per_query",
                "precomputed_bytes_per_query", "live_seconds_per_query", "precomputed_seconds_per_query", "batch")


def join_cost(row: dict[str, Any], cost: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``row`` with the K = 250, N = 2 cost of its architecture (``k250_*`` columns; empty when not measured)."""
    measured = cost.get(row["arch"], {})
    return {**{k: v for k, v in row.items() if not k.startswith("k250_")},
            **{f"k250_{k}": measured.get(k) for k in COST_COLUMNS}}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    evaluate, archs, epochs = (2, ["mlp16", "coarse_cnn"], 8) if args.quick else (args.evaluate, args.archs,
                                                                                    args.epochs)
    dataset = load_dataset("mnist", root=args.root, seed=args.seed)
    x, y = torch.cat([dataset.train_x, dataset.val_x]), torch.cat([dataset.train_y, dataset.val_y])
    parts = partition(y.numpy(), num_owners=args.shards, scheme="iid", seed=args.seed)[:evaluate]
    test_x, test_y = (dataset.test_x[:500], dataset.test_y[:500]) if args.quick else (dataset.test_x, dataset.test_y)
    cost = _cost(args.out)
    rows = []
    for name in archs:
        arch = _arch(name, dataset.num_classes)
        begin = time.perf_counter()
        models, accuracies = [], []
        for owner, part in enumerate(parts):
            seed = int(np.random.SeedSequence([args.seed, owner]).generate_state(1)[0])
            index = torch.as_tensor(part)
            trained = train_owner(build_model(arch, seed=seed), x[index], y[index], num_classes=dataset.num_classes,
                                  seed=seed, quiet=True, shift=args.shift, **{**RECIPE, "epochs": epochs})
            models.append(trained.model)
            accuracies.append(accuracy(trained.model, test_x, test_y))
        seconds = (time.perf_counter() - begin) / len(parts)
        counts = reference.histogram(reference.ensemble_logits(models, test_x), aggregation="vote")
        vote = reference.noisy_argmax(counts, aggregation="vote", mechanism=calibrate(epsilon=math.inf))
        elements = nonlinear_elements(build_model(arch), dataset.input_shape)
        low, high = interval(accuracies)
        row = {
            "arch": name, "owners_evaluated": len(parts), "shard_size": int(np.mean([len(p) for p in parts])),
            "test_size": len(test_y), "shift": args.shift, "epochs_max": epochs,
            "owner_accuracy_mean": float(np.mean(accuracies)), "owner_accuracy_ci95_low": low,
            "owner_accuracy_ci95_high": high, "owner_accuracy_min": float(np.min(accuracies)),
            "owner_accuracy_max": float(np.max(accuracies)),
            "owner_accuracies": " ".join(f"{a:.4f}" for a in accuracies),
            "vote_accuracy_evaluated_owners": float(np.mean(vote == test_y.numpy())),
            "relu_per_owner": elements["relu"], "square_per_owner": elements["square"],
            "relu_per_query_k250": 250 * elements["relu"], "params": parameter_count(build_model(arch)),
            "train_seconds_per_owner": seconds,
        }
        rows.append(join_cost(row, cost))
        print(f"teachers: {name}: owner accuracy {row['owner_accuracy_mean']:.3f} [{low:.3f}, {high:.3f}], "
              f"vote {row['vote_accuracy_evaluated_owners']:.3f}, {seconds:.1f} s/owner", flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    def f(value: Any, spec: str, scale: float = 1.0) -> str:
        return "–" if value in (None, "") else format(float(value) * scale, spec)

    lines = ["| arch | owner accuracy (95% CI) | min-max | vote of the evaluated owners | ReLU/owner | Square/owner "
             "| ReLU/query at K = 250 | params | K = 250 rounds/batch (on-line, stock) | MB/query (on-line, stock) "
             "| s/query (on-line, stock) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {f(r['owner_accuracy_mean'], '.3f')} ({f(r['owner_accuracy_ci95_low'], '.3f')}-"
            f"{f(r['owner_accuracy_ci95_high'], '.3f')}) | {f(r['owner_accuracy_min'], '.3f')}-"
            f"{f(r['owner_accuracy_max'], '.3f')} | {f(r['vote_accuracy_evaluated_owners'], '.3f')} | "
            f"{r['relu_per_owner']} | {r['square_per_owner']} | {r['relu_per_query_k250']} | {r['params']} | "
            f"{f(r['k250_live_rounds_per_batch'], '.0f')}, {f(r['k250_precomputed_rounds_per_batch'], '.0f')} | "
            f"{f(r['k250_live_bytes_per_query'], '.3g', 1e-6)}, {f(r['k250_precomputed_bytes_per_query'], '.3g', 1e-6)} | "
            f"{f(r['k250_live_seconds_per_query'], '.3g')}, {f(r['k250_precomputed_seconds_per_query'], '.3g')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        meta = json.loads((args.out / "k250-teachers.json").read_text())
        rows = [join_cost(row, _cost(args.out)) for row in meta["rows"]]
        meta.update(rows=rows, rendered_with="python -m benchmarks.teachers" + "".join(f" {a}" for a in argv))
        write_csv(rows, args.out / "k250-teachers.csv")
        write_json(meta, args.out / "k250-teachers.json")
        (args.out / "k250-teachers.md").write_text(markdown(rows))
        print(markdown(rows))
        return 0
    begin = time.perf_counter()
    rows = run(args)
    env = environment(argv)
    env["command"] = "python -m benchmarks.teachers" + "".join(f" {a}" for a in argv)
    write_csv(rows, args.out / "k250-teachers.csv")
    write_json({"title": "PATE-scale teachers on 240-image MNIST shards: accuracy against MPC cost",
                "command": env["command"], "environment": env, "recipe": {**RECIPE, "shift": args.shift},
                "wall_seconds": time.perf_counter() - begin, "rows": rows}, args.out / "k250-teachers.json")
    (args.out / "k250-teachers.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The MPC path against the plaintext simulation at scale: per query (test-only seeded noise) and in rate.

Trains K owners (MLP with one hidden layer of 16 by default, or any
architecture the zoo knows) on IID shards of a dataset's training split, takes
``--queries`` test inputs, and runs on real CrypTen servers (N = 2 and the
dealer by default):

1. the per-query check (:func:`pricure_crypten.experiments.conformance.compare_mpc_to_simulation`)
   with a TestOnlyNoiseSeed: labels must be EQUAL on every query whose
   owners' votes are robust to a logit error of ``--margin-bound``;
2. unless ``--flip-repeats 0``, the flip-rate check with the production
   CSPRNG noise (:func:`~pricure_crypten.experiments.conformance.compare_flip_rates`),
   with the smallest difference it detects at 80% power, alpha 0.05.

Writes ``mpcsim.json`` (both reports, settings, environment), ``mpcsim.csv``
(one row per query: MPC label, simulated label, noiseless label, robust) and
``mpcsim.md`` to ``--out``. Needs ``PRICURE_TEST_ONLY_SEEDED_NOISE=1`` in the
environment (the seeded mode is refused otherwise)::

    PRICURE_TEST_ONLY_SEEDED_NOISE=1 python -m benchmarks.mpcsim --owners 25 --queries 640 \\
        --dataset mnist --root ../shared/data/mnist --out results/mpcsim-k25
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mpcsim", description=__doc__.split("\n\n")[0])
    p.add_argument("--owners", type=int, default=25, help="K")
    p.add_argument("--queries", type=int, default=640)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--root", default=None, help="data root of file-backed datasets (e.g. ../shared/data/mnist)")
    p.add_argument("--arch", default="mlp16", help="mlp<H> (one hidden layer of H, e.g. mlp16) or a zoo name, "
                                                   "e.g. coarse_cnn")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--epsilon", type=float, default=1.0, help="per-query epsilon of the noise")
    p.add_argument("--mechanism", default="laplace", choices=["laplace", "gaussian"])
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--colluding", type=int, default=0)
    p.add_argument("--batch-rows", type=int, default=64)
    p.add_argument("--margin-bound", type=float, default=None, help="default: conformance.DEFAULT_MARGIN_BOUND")
    p.add_argument("--flip-repeats", type=int, default=1, help="MPC repeats of the flip-rate check (0: skip it)")
    p.add_argument("--simulation-repeats", type=int, default=50)
    p.add_argument("--seed", default="mpcsim", help="the test-only noise seed")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per server")
    p.add_argument("--quick", action="store_true", help="K = 3, 64 queries, 2 epochs (a smoke run)")
    p.add_argument("--out", type=Path, required=True)
    return p


def _architecture(name: str, dataset: Any) -> dict[str, Any]:
    shape = dataset.input_shape
    if name.startswith("mlp") and name[3:].isdigit():
        return {"name": "mlp", "in_features": int(np.prod(shape)), "num_classes": dataset.num_classes,
                "hidden": [int(name[3:])]}
    return {"name": name, "in_channels": shape[0], "image_size": shape[1], "num_classes": dataset.num_classes}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pricure_crypten import Cluster, ModelOwner, calibrate
    from pricure_crypten.experiments import conformance
    from pricure_crypten.experiments.data import load_dataset
    from pricure_crypten.experiments.partition import partition
    from pricure_crypten.experiments.reference import ensemble_logits, histogram
    from pricure_crypten.experiments.training import accuracy, train_owners
    from pricure_crypten.mpc.randomness import TestOnlyNoiseSeed, TestOnlyNoiseWarning

    torch.set_num_threads(1)
    if args.quick:
        args.owners, args.queries, args.epochs = 3, 64, 2
    seed = TestOnlyNoiseSeed(args.seed)  # refused here without PRICURE_TEST_ONLY_SEEDED_NOISE=1
    warnings.simplefilter("ignore", TestOnlyNoiseWarning)
    dataset = load_dataset(args.dataset, root=args.root, seed=args.train_seed)
    parts = partition(dataset.train_y.numpy(), num_owners=args.owners, scheme="iid", seed=args.train_seed,
                      min_size=min(10, len(dataset.train_y) // args.owners))
    begin = time.perf_counter()
    trained = train_owners(dataset, parts, arch=_architecture(args.arch, dataset), seed=args.train_seed, quiet=True,
                           epochs=args.epochs)
    training_seconds = time.perf_counter() - begin
    models = [t.model for t in trained]
    owners = [ModelOwner(name=f"owner-{k}", model=m, input_shape=dataset.input_shape,
                         num_classes=dataset.num_classes) for k, m in enumerate(models)]
    order = np.random.default_rng(args.train_seed).permutation(len(dataset.test_y))[:args.queries]
    queries = dataset.test_x[torch.from_numpy(order)]
    truth = dataset.test_y[torch.from_numpy(order)].numpy()
    mechanism = calibrate(epsilon=args.epsilon, mechanism=args.mechanism)
    cluster = Cluster(num_servers=args.servers, colluding=args.colluding, threads_per_server=args.threads,
                      request_timeout=3600.0)
    margin = conformance.DEFAULT_MARGIN_BOUND if args.margin_bound is None else args.margin_bound

    begin = time.perf_counter()
    report = conformance.compare_mpc_to_simulation(owners, queries, mechanism=mechanism, seed=seed, cluster=cluster,
                                                   batch_rows=args.batch_rows, margin_bound=margin)
    per_query_seconds = time.perf_counter() - begin
    # negative control (simulation only): the same MPC labels against a simulation with ANOTHER seed
    control = conformance.compare_mpc_to_simulation(owners, queries, mechanism=mechanism,
                                                    seed=TestOnlyNoiseSeed(args.seed + "/control"), cluster=cluster,
                                                    batch_rows=args.batch_rows, margin_bound=margin,
                                                    labels=np.array(report.mpc_labels))
    flips = None
    if args.flip_repeats > 0:
        begin = time.perf_counter()
        flips = conformance.compare_flip_rates(owners, queries, mechanism=mechanism, cluster=cluster,
                                               batch_rows=args.batch_rows, mpc_repeats=args.flip_repeats,
                                               simulation_repeats=args.simulation_repeats)
        flip_seconds = time.perf_counter() - begin

    logits = ensemble_logits(models, queries)
    counts = histogram(logits, aggregation="vote")
    robust = conformance.robust_votes(logits, margin_bound=margin)
    mpc = np.array(report.mpc_labels)
    result: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dataset": dataset.name, "architecture": _architecture(args.arch, dataset),
        "owner_accuracy_mean": float(np.mean([accuracy(m, dataset.test_x, dataset.test_y) for m in models])),
        "noiseless_accuracy": float(np.mean(counts.argmax(axis=-1) == truth)),
        "private_accuracy_mpc": float(np.mean(mpc == truth)),
        "training_seconds": training_seconds,
        "per_query": report.summary() | {"wall_seconds": per_query_seconds},
        "mis_seeded_control": {"compared": control.compared, "disagreements": len(control.disagreements)},
        "flip_rates": (flips.summary() | {"wall_seconds": flip_seconds}) if flips is not None else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "mpcsim.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "mpc_label", "simulation_label", "noiseless_label", "true_label", "robust"])
        for i in range(len(mpc)):
            writer.writerow([i, int(mpc[i]), report.simulation_labels[i], int(counts[i].argmax()), int(truth[i]),
                             int(robust[i])])
    try:
        from .env import environment

        result["environment"] = environment(sys.argv)
    except Exception as error:  # noqa: BLE001 - the environment is informative only
        result["environment"] = {"error": repr(error)}
    (args.out / "mpcsim.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (args.out / "mpcsim.md").write_text(markdown(result) + "\n")
    return result


def markdown(result: dict[str, Any]) -> str:
    q, s = result["per_query"], result["settings"]
    lines = [
        f"### MPC vs simulation: {result['dataset']}, K = {q['num_owners']} owners ({s['arch']}), "
        f"N = {q['num_servers']} servers (t = {q['colluding']}), {q['mechanism']}",
        "",
        "Per query, test-only seeded noise (labels must be equal on every compared query):",
        "",
        "| queries | compared | agreements | disagreements | "
        f"with an owner near a tie (margin < {q['margin_bound']:g}) "
        "| excluded (label could change) | disagreements among excluded | noisy flips among compared |",
        "|---|---|---|---|---|---|---|---|",
        f"| {q['queries']} | {q['compared']} | {q['agreements']} | {len(q['disagreements'])} | "
        f"{q['near_tie_queries']} | {q['excluded_near_ties']} | {len(q['excluded_disagreements'])} | {q['flips']} |",
        "",
        f"Simulated on the servers' fixed-point grid (owner votes that differ from float32 evaluation: "
        f"{q['float_vote_changes']}); worst-case truncation error of the owners {q['truncation_bound']:.2g} "
        f"<= margin bound {q['margin_bound']:g}.",
        "",
        *([f"Negative control: the same MPC labels against a simulation with another seed disagree on "
           f"{result['mis_seeded_control']['disagreements']} of {result['mis_seeded_control']['compared']} "
           "compared queries.", ""] if "mis_seeded_control" in result else []),
        f"Result: {'PASSED' if q['passed'] else 'FAILED'}; MPC seconds {q['mpc_seconds']:.1f}; "
        f"noiseless accuracy {result['noiseless_accuracy']:.3f}, private (MPC) {result['private_accuracy_mpc']:.3f}, "
        f"mean owner {result['owner_accuracy_mean']:.3f}.",
    ]
    f = result.get("flip_rates")
    if f:
        lines += [
            "",
            "Flip rates (private label != noiseless label), production CSPRNG noise:",
            "",
            "| MPC trials | MPC rate | simulation trials | simulation rate | paired z | paired p | "
            "paired detectable (80% power, alpha 0.05) | Fisher p | Fisher detectable |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {f['queries'] * f['mpc_repeats']} | {f['mpc_rate']:.4f} | {f['queries'] * f['simulation_repeats']} | "
            f"{f['simulation_rate']:.4f} | {f['paired_z']:.2f} | {f['paired_p']:.3f} | {f['paired_detectable']:.4f} | "
            f"{f['fisher_p']:.3f} | {f['unpaired_detectable']:.4f} |",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pricure_crypten.mpc.randomness import TEST_ONLY_NOISE_ENV

    if os.environ.get(TEST_ONLY_NOISE_ENV) != "1":
        print(f"benchmarks.mpcsim: set {TEST_ONLY_NOISE_ENV}=1 (the test-only seeded noise is refused otherwise)",
              file=sys.stderr)
        return 2
    result = run(args)
    print(markdown(result))
    return 0 if result["per_query"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

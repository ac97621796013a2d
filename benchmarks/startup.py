"""How long a cluster's life takes per start method: start, one batch, close (seconds), alternating methods.

Each round runs, for each method in turn (``forkserver``, then ``spawn``),
one ``PrivateEnsemble`` of 3 small owners on 2 servers: start, one 4-row
prediction at epsilon = inf, close. Every method runs in its own fresh
interpreter (``PRICURE_START_METHOD``), so its first round includes
starting the forkserver (and its one import of torch and CrypTen). Prints
one JSON object; with ``--out`` also writes it.

    python -m benchmarks.startup --rounds 4 --out docs/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pricure_crypten  # noqa: F401 - the compatibility layer, before environment() imports crypten

from .env import REPO_ROOT, environment

METHODS = ("forkserver", "spawn")


def _child(rounds: int) -> list[float]:
    import numpy as np
    import torch
    from torch import nn

    from pricure_crypten import Aggregation, Client, ModelOwner, NoNoise, PrivateEnsemble

    torch.manual_seed(0)
    owners = [ModelOwner(name=f"o{k}", model=nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)),
                         input_shape=(8,), num_classes=3) for k in range(3)]
    seconds = []
    for round_ in range(rounds):
        start = time.perf_counter()
        with PrivateEnsemble(owners, aggregation=Aggregation(noise=NoNoise())) as ensemble:
            ensemble.predict(np.random.default_rng(round_).normal(size=(4, 8)).astype(np.float32),
                             client=Client("c"))
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="clusters started per method and interpreter (>= 2)")
    parser.add_argument("--repeats", type=int, default=2, help="interpreters per method, alternating")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.repeats < 1:
        parser.error("--rounds must be at least 2 (the first includes starting the forkserver) and --repeats >= 1")
    if args.child:
        print(json.dumps(_child(args.rounds)))
        return 0
    runs: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            env = dict(os.environ, PRICURE_START_METHOD=method)
            out = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--child", "--rounds",
                                  str(args.rounds)], cwd=REPO_ROOT, env=env, check=True, capture_output=True,
                                 text=True)
            runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    later = {m: [s for run in runs[m] for s in run[1:]] for m in METHODS}  # rounds after the first
    result = {
        "command": "",
        "what": "seconds for start + one 4-row batch + close of a 2-server PrivateEnsemble (3 owners)",
        "runs": runs,
        "median_later_rounds": {m: sorted(v)[len(v) // 2] for m, v in later.items()},
        "median_first_round": {m: sorted(r[0] for r in runs[m])[len(runs[m]) // 2] for m in METHODS},
        "environment": environment(list(argv if argv is not None else sys.argv[1:])),
    }
    result["command"] = result["environment"]["command"] = "python -m benchmarks.startup " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

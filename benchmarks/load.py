"""``python -m benchmarks.load``: many clients on one ensemble, with and without dynamic batching.

8 client threads x 125 queries each (1,000 queries), each client calling with
batches of 5, on one ensemble of 10 MLP owners trained on digits (N = 2
servers + dealer, epsilon = inf so every label can be checked against that
client's own plaintext reference). Reports throughput, MPC batches and each
server's RSS after about 100 and after 1,000 answered queries, as JSON lines
and a markdown table. Numbers, not assertions: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Sequence

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from pricure_crypten import Aggregation, Batching, Client, ModelOwner, NoNoise, PrivateEnsemble
from pricure_crypten.experiments import reference


def _owners(count: int) -> tuple[list[ModelOwner], torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    owners = []
    for i, idx in enumerate(np.array_split(np.random.default_rng(0).permutation(1400), count)):
        torch.manual_seed(i)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        owners.append(ModelOwner(name=f"owner-{i}", model=model.eval(), input_shape=(64,), num_classes=10))
    return owners, x[1400:]


def run(*, clients: int, per_client: int, call_size: int, batching: Batching, owners, pool) -> dict:
    mechanism = NoNoise()
    answered = [0]
    lock = threading.Lock()
    rss: dict[str, list] = {}
    mismatches = [0]
    with PrivateEnsemble(owners, aggregation=Aggregation(noise=mechanism), batching=batching) as ens:
        ens.predict(pool[:call_size])  # warm-up: servers started and loaded
        rss["start"] = [i["rss_bytes"] for i in ens.server_info()]

        def client_thread(c: int) -> None:
            client = Client(f"client-{c}")
            rows = pool[(np.arange(per_client) * clients + c) % len(pool)]
            for start in range(0, per_client, call_size):
                x = rows[start:start + call_size]
                labels = ens.predict(x, client=client).labels
                expected = reference.release(reference.histogram(
                    reference.ensemble_logits([o.model for o in owners], x), aggregation="vote"), mechanism=mechanism)
                with lock:
                    mismatches[0] += int(np.sum(labels != expected))
                    answered[0] += len(x)
                    if answered[0] >= 100 and "after_100" not in rss:
                        rss["after_100"] = None  # sampled below, outside the lock

        threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(clients)]
        begin = time.perf_counter()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if rss.get("after_100", 0) is None:
                rss["after_100"] = [i["rss_bytes"] for i in ens.server_info()]
            time.sleep(0.05)
        seconds = time.perf_counter() - begin
        infos = ens.server_info()
        rss["after_1000"] = [i["rss_bytes"] for i in infos]
        peak = [i["peak_rss_bytes"] for i in infos]
        batches = ens._scheduler.batches_run
    return {
        "batching": batching.enabled, "clients": clients, "queries": answered[0], "call_size": call_size,
        "seconds": seconds, "queries_per_second": answered[0] / seconds, "mpc_batches": batches - 1,
        "label_mismatches": mismatches[0],
        "rss_mb_start": [r / 2**20 for r in rss["start"]],
        "rss_mb_after_100": [r / 2**20 for r in rss["after_100"]],
        "rss_mb_after_1000": [r / 2**20 for r in rss["after_1000"]],
        "peak_rss_mb": [r / 2**20 for r in peak],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=125)
    parser.add_argument("--call-size", type=int, default=5)
    parser.add_argument("--owners", type=int, default=10)
    args = parser.parse_args(argv)
    owners, pool = _owners(args.owners)
    rows = []
    for enabled in (False, True):
        result = run(clients=args.clients, per_client=args.per_client, call_size=args.call_size,
                     batching=Batching(enabled=enabled), owners=owners, pool=pool)
        print(json.dumps(result), flush=True)
        rows.append(result)
    print("\n| dynamic batching | queries | seconds | queries/s | MPC batches | label mismatches | "
          "server RSS MB after 100 | after 1000 | peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "/".join(f"{x:.0f}" for x in v)  # noqa: E731
        print(f"| {'on' if r['batching'] else 'off'} | {r['queries']} | {r['seconds']:.1f} | "
              f"{r['queries_per_second']:.1f} | {r['mpc_batches']} | {r['label_mismatches']} | "
              f"{fmt(r['rss_mb_after_100'])} | {fmt(r['rss_mb_after_1000'])} | {fmt(r['peak_rss_mb'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

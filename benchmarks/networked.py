"""The networked deployment against the in-process path: same labels at epsilon = inf, seconds and bytes.

Every party is started by its real command (``pricure serve`` / ``pricure dealer``) on its own
loopback address (127.0.0.2, ...) by the launcher (``pricure_crypten.experiments.launch``); K owners
upload through the front door; C concurrent clients (threads, each its own credential) send Q
queries in batches; the labels are compared with ``PrivateEnsemble`` in process. Prints one JSON object.

    python -m benchmarks.networked --servers 2 --owners 10 --clients 4 --queries 1000 --batch 25
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import torch
from torch import nn

from pricure_crypten import ModelOwner, PrivateEnsemble
from pricure_crypten.config import Aggregation, Cluster
from pricure_crypten.privacy.noise import calibrate
from pricure_crypten.experiments.launch import Deployment

FEATURES, CLASSES = 64, 10


def owners(k: int) -> list[ModelOwner]:
    out = []
    for i in range(k):
        torch.manual_seed(1000 + i)
        model = nn.Sequential(nn.Linear(FEATURES, 24), nn.ReLU(), nn.Linear(24, CLASSES))
        out.append(ModelOwner(name=f"owner{i}", model=model, input_shape=(FEATURES,), num_classes=CLASSES))
    return out


def _timed_threads(work, count: int) -> float:
    """Run ``work(c)`` for c = 0..count-1 in threads at once; the wall seconds until all are done."""
    threads = [threading.Thread(target=work, args=(c,)) for c in range(count)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - begin


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--owners", type=int, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=25)
    args = p.parse_args()
    ks = owners(args.owners)
    x = np.random.default_rng(0).normal(size=(args.queries, FEATURES))
    chunks = [range(s, min(s + args.batch, args.queries)) for s in range(0, args.queries, args.batch)]
    result = {"servers": args.servers, "owners": args.owners, "clients": args.clients, "queries": args.queries,
              "batch": args.batch, "deployment": "processes"}
    t0 = time.perf_counter()
    with Deployment(servers=args.servers, owners=[o.name for o in ks],
                    clients=[f"client{c}" for c in range(args.clients)],
                    serve_flags=["--epsilon", "inf", "--max-batch", "256"]) as d:
        result["start_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        d.upload_all(ks)
        result["upload_seconds"] = time.perf_counter() - t0
        labels = np.full(args.queries, -2)
        errors = []

        def work(c: int) -> None:
            with d.remote(f"client{c}", timeout=300) as remote:
                for chunk in chunks[c::args.clients]:
                    try:
                        labels[chunk.start:chunk.stop] = remote.predict(x[chunk.start:chunk.stop]).labels
                    except Exception as error:  # noqa: BLE001
                        errors.append(str(error))

        seconds = _timed_threads(work, args.clients)
        health = [d.health(r) for r in range(args.servers)]
        result.update(errors=errors[:3], networked_seconds=seconds, networked_seconds_per_query=seconds / args.queries,
                      mpc_batches=health[0]["batches"], mpc_rows=health[0]["totals"]["rows"],
                      mpc_bytes_all_servers=sum(h["totals"]["bytes"] for h in health),
                      mpc_rounds_server0=health[0]["totals"]["rounds"],
                      mpc_seconds_server0=health[0]["totals"]["mpc_seconds"],
                      mean_batch_rows=health[0]["totals"]["rows"] / max(1, health[0]["batches"]))
    cluster = Cluster(num_servers=args.servers)
    # the in-process path with the same concurrent clients (its scheduler packs their batches too)
    reference = np.full(args.queries, -2)
    bytes_sent = [0.0]
    packed: list[int] = []
    with PrivateEnsemble(ks, aggregation=Aggregation(noise=calibrate(epsilon=float("inf"))), cluster=cluster) as e:
        def local(c: int) -> None:
            for chunk in chunks[c::args.clients]:
                prediction = e.predict(torch.tensor(x[chunk.start:chunk.stop], dtype=torch.float32))
                reference[chunk.start:chunk.stop] = prediction.labels
                bytes_sent[0] += prediction.cost.bytes_sent
                packed.append(prediction.cost.batch_queries)

        seconds = _timed_threads(local, args.clients)
    bytes_sent = bytes_sent[0]
    result.update(in_process_seconds=seconds, in_process_seconds_per_query=seconds / args.queries,
                  in_process_bytes=bytes_sent, in_process_mean_batch_rows=float(np.mean(packed)), labels_equal=bool(np.array_equal(reference, labels)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

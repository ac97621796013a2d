"""``python -m benchmarks.faults``: what the client sees when a party fails mid-batch, and how fast it heals.

For each fault (SIGKILL or SIGSTOP of server 1 or of the dealer, sent while
a long prediction is in flight): the time from the signal to the client's
``ServerError`` (detection), what was charged to the client's budget, whether
anything was revealed, whether any process of the failed cluster is left,
and the time the next call takes (recovery: relaunch, owners re-share, answer).
Numbers, not assertions: the machine is shared.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from pricure_crypten import Aggregation, Batching, Client, Cluster, ModelOwner, PrivateEnsemble, ServerError, calibrate
from pricure_crypten.privacy.accounting import PrivacyLedger


def _owners() -> list[ModelOwner]:
    torch.manual_seed(0)
    return [ModelOwner(name=f"o{i}", model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
                       input_shape=(8,), num_classes=3) for i in range(5)]


def one_fault(target: str, fault: str, cluster: Cluster) -> dict:
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(Path(tmp) / "l.sqlite3", total_epsilon=1e9,
                                                             accountant="basic") as ledger:
        ens = PrivateEnsemble(_owners(), aggregation=Aggregation(noise=calibrate(epsilon=1.0)), cluster=cluster,
                              ledger=ledger, batching=Batching(max_rows=64))
        client = Client("alice")
        try:
            ens.predict(torch.randn(8, 8), client=client)
            spent = ledger.status("alice").spent_epsilon
            old = [p.pid for p in ens.servers.processes]
            victim = ens.servers.server_pids[1] if target == "server 1" else ens.servers.dealer_pid
            outcome: dict = {}

            def call() -> None:
                try:
                    ens.predict(torch.randn(64 * 60, 8), client=client)
                except ServerError as error:
                    outcome.update(at=time.monotonic(), error=str(error).splitlines()[0])

            thread = threading.Thread(target=call)
            thread.start()
            while ens.servers._sequence < 4:
                time.sleep(0.01)
            os.kill(victim, getattr(signal, fault))
            sent = time.monotonic()
            thread.join()
            left = [pid for pid in old if os.path.exists(f"/proc/{pid}")]
            begin = time.monotonic()
            labels = ens.predict(torch.randn(8, 8), client=client).labels
            recovery = time.monotonic() - begin
            return {
                "fault": f"{fault} {target}", "detection_s": outcome["at"] - sent, "client_saw": outcome["error"],
                "charged_epsilon": ledger.status("alice").spent_epsilon - spent - 8 * 1.0,
                "reveals_for_failed_call": client.reveals - 2, "processes_left": len(left),
                "recovery_s": recovery, "next_call_labels": len(labels),
            }
        finally:
            ens.close()


def main() -> int:
    cluster = Cluster(heartbeat_timeout=5.0, request_timeout=120.0)
    print(f"Cluster: heartbeat_timeout={cluster.heartbeat_timeout:g} s, request_timeout={cluster.request_timeout:g} s")
    print("| fault | detection (s) | what the client saw | charged for the failed call | revealed | "
          "processes left | next call incl. relaunch (s) |")
    print("|---|---|---|---|---|---|---|")
    for target in ("server 1", "dealer"):
        for fault in ("SIGKILL", "SIGSTOP"):
            r = one_fault(target, fault, cluster)
            print(f"| {r['fault']} | {r['detection_s']:.2f} | ServerError: {r['client_saw'][:70]} | "
                  f"epsilon {r['charged_epsilon']:g} | {r['reveals_for_failed_call']} | {r['processes_left']} | "
                  f"{r['recovery_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run a function inside N real CrypTen parties (spawned, TTP dealer by default) and collect results.

For layer-level tests: each party calls ``fn(rank, *args)`` after joining the
MPC exactly as a server does (:func:`pricure_crypten.parties.server.start_party`),
and returns a picklable value (numpy arrays, not torch tensors). The test
reconstructs shares itself; the library's servers never do.

``fn`` must be importable by the spawned processes: define it at module level
in a test module (pytest's rootdir is on ``sys.path`` of the children via the
``tests`` package).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import traceback
from typing import Any, Callable

from pricure_crypten.parties.dealer import run_dealer
from pricure_crypten.parties.server import start_party


def _party(rank: int, world_size: int, rendezvous: str, provider: str, fn: Callable, args: tuple,
           out: Any) -> None:
    try:
        start_party(rank=rank, world_size=world_size, rendezvous=rendezvous, provider=provider, threads=1,
                    timeout=300.0)
        result = fn(rank, *args)
        from pricure_crypten.mpc._crypten import crypten

        crypten.uninit()
        out.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001 - reported to the test
        out.put((rank, "error", traceback.format_exc()))


def _dealer(world_size: int, rendezvous: str) -> None:
    run_dealer(world_size=world_size, rendezvous=rendezvous, timeout=300.0)


def run_parties(fn: Callable, *args: Any, num_parties: int = 2, provider: str = "TTP",
                timeout: float = 600.0) -> list[Any]:
    """``[fn(0, *args), ..., fn(N-1, *args)]``, each computed in its own CrypTen party process."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="pricure-test-rdv-") as folder:
        rendezvous = "file://" + os.path.join(folder, "rendezvous")
        out = ctx.Queue()
        processes = [ctx.Process(target=_party, args=(rank, num_parties, rendezvous, provider, fn, args, out),
                                 daemon=True) for rank in range(num_parties)]
        if provider == "TTP":
            processes.append(ctx.Process(target=_dealer, args=(num_parties, rendezvous), daemon=True))
        for process in processes:
            process.start()
        results: dict[int, Any] = {}
        try:
            for _ in range(num_parties):
                rank, status, value = out.get(timeout=timeout)
                if status == "error":
                    raise AssertionError(f"party {rank} failed:\n{value}")
                results[rank] = value
        finally:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
                    process.join()
    return [results[rank] for rank in range(num_parties)]

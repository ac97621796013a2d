"""Run a function inside N real CrypTen parties (spawned processes, TTP dealer by default); collect results.

For layer-level checks (tests): each party joins the MPC exactly as a server
does (:func:`pricure_crypten.parties.server.start_party`), calls
``fn(rank, *args)`` and returns a picklable value (numpy arrays, not torch
tensors). The caller reconstructs shares itself; the library's servers never do.

``fn`` must be importable by the spawned processes (defined at module level in
an importable module). Every process started here is killed on return, also on
failure.

Who sees what: this is a test harness: the caller sees whatever ``fn`` returns,
shares of every party included.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from typing import Any, Callable

from ...parties.dealer import run_dealer
from ...parties.process import adopt_environment, party_context
from ...parties.server import start_party
from .launcher import READY_BOUND

JOIN_BOUND = 300.0  # each party's rendezvous and collective timeout (generous: 2 busy cores)


def _party(rank: int, world_size: int, rendezvous: str, provider: str, fn: Callable, args: tuple,
           out: Any, environment: dict) -> None:
    adopt_environment(environment)
    try:
        start_party(rank=rank, world_size=world_size, rendezvous=rendezvous, provider=provider, threads=1,
                    timeout=JOIN_BOUND)
        result = fn(rank, *args)
        from ...mpc._crypten import crypten

        crypten.uninit()
        out.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001 - reported to the caller
        out.put((rank, "error", traceback.format_exc()))


def _dealer(world_size: int, rendezvous: str, environment: dict) -> None:
    adopt_environment(environment)
    run_dealer(world_size=world_size, rendezvous=rendezvous, timeout=JOIN_BOUND)


def run_parties(fn: Callable, *args: Any, num_parties: int = 2, provider: str = "TTP",
                timeout: float = 2 * READY_BOUND) -> list[Any]:
    """``[fn(0, *args), ..., fn(N-1, *args)]``, each computed in its own CrypTen party process.

    ``timeout`` bounds the wait for each party's result (seconds); a party's error is raised
    as an AssertionError carrying its traceback.
    """
    if isinstance(num_parties, bool) or not isinstance(num_parties, int) or num_parties < 1:
        raise ValueError(f"num_parties must be a positive integer, got {num_parties!r}")
    if provider not in ("TTP", "TFP"):
        raise ValueError(f"provider must be 'TTP' or 'TFP', got {provider!r}")
    ctx = party_context()
    with tempfile.TemporaryDirectory(prefix="pricure-rdv-") as folder:
        rendezvous = "file://" + os.path.join(folder, "rendezvous")
        out = ctx.Queue()
        environment = dict(os.environ)
        processes = [ctx.Process(target=_party, args=(rank, num_parties, rendezvous, provider, fn, args, out,
                                                      environment), daemon=True) for rank in range(num_parties)]
        if provider == "TTP":
            processes.append(ctx.Process(target=_dealer, args=(num_parties, rendezvous, environment), daemon=True))
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

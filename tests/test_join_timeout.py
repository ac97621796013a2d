"""start_party's two bounds, apart: the rendezvous waits up to ``join_timeout``, each collective ``timeout``.

Two real CrypTen parties (spawned processes, TFP: no dealer needed for this).
Server 1 reaches the rendezvous 2 x COLLECTIVE seconds after server 0: server
0 must still join (a rendezvous bounded by the collective timeout would
fail). Then server 1 stays silent while server 0 runs a collective on
CrypTen's main group: it must fail after about COLLECTIVE seconds, well
before JOIN (a collective bounded by the rendezvous wait, as ``pricure serve``
had with ``max(--timeout, --wait + 5)``, would wait JOIN). Server 1 is released
only after server 0 has reported, so nothing but the timeout ends the wait.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

pytestmark = pytest.mark.mpc

COLLECTIVE = 3.0
JOIN = 120.0  # generous: server 0 waits this long at most for server 1's (delayed, busy-machine) start


def _party(rank: int, rendezvous: str, release, out) -> None:
    if rank == 1:
        time.sleep(2 * COLLECTIVE)  # later than the collective timeout
    from pricure_crypten.parties.server import start_party

    started = time.monotonic()
    try:
        start_party(rank=rank, world_size=2, rendezvous=rendezvous, provider="TFP", threads=1, timeout=COLLECTIVE,
                    join_timeout=JOIN)
    except Exception:  # noqa: BLE001 - reported: the test fails on it
        out.put((rank, "join failed", time.monotonic() - started))
        return
    import torch
    import torch.distributed as dist

    from pricure_crypten.mpc._crypten import crypten

    out.put((rank, "joined", time.monotonic() - started))
    if rank == 1:
        release.wait(2 * JOIN)
        return
    began = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1), group=crypten.communicator.get().main_group)
        out.put((0, "answered", time.monotonic() - began))
    except RuntimeError:
        out.put((0, "timed out", time.monotonic() - began))


def test_a_late_party_is_awaited_and_a_silent_one_fails_the_collective_after_the_collective_timeout():
    from pricure_crypten.experiments.launch import free_port

    context = multiprocessing.get_context("spawn")
    release, out = context.Event(), context.Queue()
    rendezvous = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    parties = [context.Process(target=_party, args=(rank, rendezvous, release, out), daemon=True) for rank in (0, 1)]
    for party in parties:
        party.start()
    try:
        reports = {}
        while not any(rank == 0 and what != "joined" for rank, what in reports):  # server 0's outcome
            rank, what, seconds = out.get(timeout=3 * JOIN)
            reports[(rank, what)] = seconds
        assert (0, "joined") in reports and (1, "join failed") not in reports, reports
        assert "answered" not in {what for _, what in reports}, reports
        assert reports[(0, "timed out")] < JOIN / 2, reports  # the collective's bound, not the rendezvous'
    finally:
        release.set()
        for party in parties:
            party.join(timeout=30)
            if party.is_alive():
                party.kill()

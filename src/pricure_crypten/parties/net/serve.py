"""Running a networked party until killed: ``pricure serve`` (a server) and ``pricure dealer``.

Each runs under a supervisor (:mod:`.supervisor`): the supervisor re-executes
its child after an MPC failure, and the child waits at the rendezvous for
the restarted peer. A server's child starts the front door (:mod:`.app`),
joins the MPC, checks that every server has the same public settings
(:func:`~.config.public_settings`), then runs the MPC loop (:mod:`.loop`).

A failure of the MPC itself (a peer or the dealer dies, a collective times
out) fails every request in flight (reservations rolled back: nothing was
released, since a label share is served only after its spend is confirmed),
then the process re-executes itself and waits at the rendezvous for the
restarted peer, reloading the owners' shares from disk.

Exit codes: :data:`JOIN_TIMEOUT_EXIT` (the others did not come within
``--wait``), :data:`SETTINGS_MISMATCH_EXIT` (the servers disagree on their
public settings), else the supervisor's.

Who sees what: the only thing exchanged before the MPC loop starts is public
(the settings every server must agree on).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Optional, Sequence

from ...config import Aggregation, Batching, Cluster, Offline
from .config import Budget, FrontDoor, Seat, check_fits, with_defaults
from .node import Node

JOIN_TIMEOUT_EXIT = 3
SETTINGS_MISMATCH_EXIT = 4


def _watchdog(what: str, wait: float, message: str) -> None:
    """Exit with a clear message if this party has not joined the MPC within ``wait`` seconds."""

    def watch() -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.1)
            check = getattr(sys.modules.get("crypten.communicator"), "is_initialized", None)
            try:
                if check is not None and check():
                    return
            except Exception:  # noqa: BLE001 - still importing
                pass
        sys.stderr.write(f"pricure {what}: error: {message}\n")
        sys.stderr.flush()
        os._exit(JOIN_TIMEOUT_EXIT)

    threading.Thread(target=watch, name="pricure-join-watchdog", daemon=True).start()


def run_dealer_node(*, servers: int, rendezvous: str, wait: float, argv: Sequence[str]) -> int:
    """``pricure dealer``: the dealer as its own process; rejoins (a fresh child) when the servers' MPC ends."""
    from . import supervisor

    if not supervisor.is_child():
        return supervisor.supervise("dealer", argv, wait=wait)
    supervisor.watch_parent()
    from ..dealer import DEALER_IDLE_TIMEOUT, run_dealer

    print(f"pricure dealer: joining the MPC of {servers} servers at {rendezvous}", file=sys.stderr, flush=True)
    _watchdog("dealer", wait, f"the dealer waited {wait:g} s at the rendezvous {rendezvous} for the {servers} "
                              "servers; start them (any order) with the same --servers and --rendezvous, or raise "
                              "--wait")
    try:
        run_dealer(world_size=servers, rendezvous=rendezvous, timeout=DEALER_IDLE_TIMEOUT)
    except KeyboardInterrupt:
        return 0
    except Exception as error:  # noqa: BLE001 - the rendezvous broke or a peer died mid-deal: rejoin
        print(f"pricure dealer: the MPC failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
              "rejoining", file=sys.stderr, flush=True)
    else:  # TTPServer returns when a server's connection drops (or on 'terminate')
        print("pricure dealer: the servers' MPC ended; rejoining", file=sys.stderr, flush=True)
    os._exit(supervisor.REJOIN)


def serve(*, seat: Seat, front_door: FrontDoor, budget: Optional[Budget] = None,
          aggregation: Optional[Aggregation] = None, cluster: Optional[Cluster] = None,
          batching: Optional[Batching] = None, offline: Optional[Offline] = None) -> int:
    """Run one server until killed: a supervisor, and in its child the front door and the MPC loop.

    The arguments are those of :class:`~.node.Node` (the same defaults).
    """
    from . import supervisor

    budget, aggregation, cluster, batching, offline = with_defaults(budget, aggregation, cluster, batching, offline)
    check_fits(seat=seat, aggregation=aggregation, cluster=cluster, batching=batching, offline=offline)
    if not supervisor.is_child():
        return supervisor.supervise("serve", seat.argv, wait=seat.wait)
    supervisor.watch_parent()
    from .app import start_front_door
    from ..server import ServerConfig, ServerState, start_party

    node = Node(seat=seat, front_door=front_door, budget=budget, aggregation=aggregation, cluster=cluster,
                batching=batching, offline=offline)
    front = start_front_door(node)
    servers, threads = cluster.num_servers, cluster.threads_per_server or 1
    print(f"pricure serve: server {seat.rank}/{servers} front door on "
          f"{'https' if front_door.certfile else 'http'}://{front_door.host}:{front_door.port}; "
          f"joining the MPC at {seat.rendezvous}", file=sys.stderr, flush=True)
    _watchdog("serve", seat.wait,
              f"server {seat.rank} waited {seat.wait:g} s at the rendezvous {seat.rendezvous} for the other "
              f"{servers - 1} server(s) and the dealer; start them (any order) with the same --servers and "
              "--rendezvous, or raise --wait")
    try:
        audit = start_party(rank=seat.rank, world_size=servers, rendezvous=seat.rendezvous,
                            provider=cluster.crypten_provider, threads=threads,
                            timeout=cluster.request_timeout,
                            join_timeout=max(cluster.request_timeout, seat.wait + 5.0))
        import torch.distributed as dist

        from ...mpc._crypten import crypten

        comm = crypten.communicator.get()
        settings: list = [None] * servers
        dist.all_gather_object(settings, node.public_settings(), group=comm.main_group)
    except Exception as error:  # noqa: BLE001 - a peer left during the rendezvous: retry (bounded)
        print(f"pricure serve: server {seat.rank}: joining failed ({str(error).splitlines()[0][:200]}); retrying",
              file=sys.stderr, flush=True)
        front.stop()
        os._exit(supervisor.JOIN_FAILED)
    if any(s != settings[0] for s in settings):
        print(f"pricure serve: error: the servers disagree on their settings: {settings}", file=sys.stderr,
              flush=True)
        os._exit(SETTINGS_MISMATCH_EXIT)
    state = ServerState(ServerConfig(seat.rank, servers, seat.rendezvous, cluster.crypten_provider,
                                     threads, cluster.request_timeout, os.getppid()), audit)
    with node.lock:
        node.mpc_state = "ready"
    print(f"pricure serve: server {seat.rank} joined the MPC with {servers - 1} other server(s) and "
          "the dealer", file=sys.stderr, flush=True)
    try:
        while True:
            node.requests.expire()
            started = time.monotonic()
            node.loop.step(state, comm, dist)
            time.sleep(max(0.0, seat.tick - (time.monotonic() - started)))
    except KeyboardInterrupt:
        front.stop()
        return 0
    except BaseException:  # noqa: BLE001 - the MPC is broken: fail what is in flight, rejoin fresh
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        with node.lock:
            node.mpc_state = "failed"  # health shows it until the fresh party process answers
        node.fail_all(f"the MPC between the servers failed ({detail}); nothing was revealed or charged")
        print(f"pricure serve: server {seat.rank}: the MPC failed ({detail}); restarting to rejoin",
              file=sys.stderr, flush=True)
        time.sleep(0.3)  # polling clients read the failures now, or from disk after the restart
        front.stop()
        os._exit(supervisor.REJOIN)
    return 0


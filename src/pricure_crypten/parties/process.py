"""What every party process does besides its work: heartbeats, a parent watchdog, explicit timeouts.

Imported at the top of a spawned server or dealer process, before torch or
CrypTen (so it stays light):

* :func:`start_heartbeat`: a daemon thread stamps a shared clock every
  ``HEARTBEAT_INTERVAL`` seconds. The launcher reads it to tell a peer that is
  alive but silent (SIGSTOP, a frozen host) from one that is merely busy: the
  thread keeps beating while the main thread computes or waits in a collective.
  The same thread exits the process at once if its parent is gone, so a
  killed launcher (or notebook kernel) leaves no orphan party behind.
* :func:`set_distributed_timeout`: CrypTen 0.4.1 calls
  ``torch.distributed.init_process_group`` and ``new_group`` without a
  timeout, so torch's default (30 minutes) bounded a stuck collective. This
  makes the timeout explicit, in this process only.
* :func:`join_rendezvous`: the environment CrypTen's communicator reads
  (RENDEZVOUS must be explicit, or each process picks its own file).
* :func:`party_context`: how party processes are started. ``forkserver``
  (where the platform has it) with torch, CrypTen and this package
  preloaded once, so a launch forks ready interpreters instead of importing
  torch in every party; ``spawn`` elsewhere, or with
  ``PRICURE_START_METHOD=spawn``. Either way a party starts from a clean
  interpreter state, never a fork of the caller (whose threads and locks it
  must not inherit), and :func:`adopt_environment` gives it the caller's
  environment as it is at launch (a forkserver's own is that of its start).
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import threading
import time
from typing import Any, Mapping

HEARTBEAT_INTERVAL = 0.25
PARENT_GONE_EXIT_CODE = 70
START_METHOD_ENV = "PRICURE_START_METHOD"
#: imported once by the forkserver; every party forked from it has them already
PRELOAD = ["pricure_crypten", "pricure_crypten.mpc._crypten", "pricure_crypten.parties.server",
           "pricure_crypten.parties.dealer"]


def party_context() -> Any:
    """The multiprocessing context party processes are started with (see the module docstring)."""
    method = os.environ.get(START_METHOD_ENV) or (
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"{START_METHOD_ENV} must be 'forkserver' or 'spawn', got {method!r}")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)  # used when the forkserver starts (once per caller process)
    return context


def adopt_environment(environment: Mapping[str, str]) -> None:
    """Make this party's environment the caller's at launch (as ``spawn`` would have)."""
    os.environ.clear()
    os.environ.update(environment)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_heartbeat(beat: Any, parent_pid: int) -> threading.Thread:
    """Stamp ``beat.value`` (a shared double, ``time.monotonic()``) until the process ends.

    Exits the process at once when the launcher (``parent_pid``) is gone:
    re-parented (its parent died; a forkserver exits with the launcher), or
    the launcher's pid no longer exists.
    """
    started_under = os.getppid()  # the launcher itself (spawn) or its forkserver

    def loop() -> None:
        while True:
            beat.value = time.monotonic()
            if os.getppid() != started_under or (parent_pid != started_under and not _alive(parent_pid)):
                os._exit(PARENT_GONE_EXIT_CODE)  # the launcher died: no orphan party
            time.sleep(HEARTBEAT_INTERVAL)

    thread = threading.Thread(target=loop, name="pricure-heartbeat", daemon=True)
    thread.start()
    return thread


def set_distributed_timeout(seconds: float) -> None:
    """Give every process group this process creates an explicit timeout (gloo's collectives use it)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=seconds)
    for name in ("init_process_group", "new_group"):
        original = getattr(dist, name)
        if getattr(original, "_pricure_timeout", None) is not None:
            original = original.__wrapped__

        def with_timeout(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return _original(*args, **kwargs)

        with_timeout.__wrapped__ = original  # type: ignore[attr-defined]
        with_timeout._pricure_timeout = timeout  # type: ignore[attr-defined]
        setattr(dist, name, with_timeout)


def join_rendezvous(*, rank: int, world_size: int, rendezvous: str) -> None:
    """The environment CrypTen's communicator reads before ``crypten.init()``."""
    os.environ.update(
        WORLD_SIZE=str(world_size), RANK=str(rank), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo"
    )

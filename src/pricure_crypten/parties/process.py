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
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from typing import Any

HEARTBEAT_INTERVAL = 0.25
PARENT_GONE_EXIT_CODE = 70


def start_heartbeat(beat: Any, parent_pid: int) -> threading.Thread:
    """Stamp ``beat.value`` (a shared double, ``time.monotonic()``) until the process ends."""

    def loop() -> None:
        while True:
            beat.value = time.monotonic()
            if os.getppid() != parent_pid:  # re-parented: the launcher died
                os._exit(PARENT_GONE_EXIT_CODE)
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

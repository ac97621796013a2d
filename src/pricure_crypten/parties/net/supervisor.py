"""The process tree of ``pricure serve`` / ``pricure dealer``: a tiny supervisor and the party itself.

The supervisor (the process the operator starts and may kill) imports
nothing heavy. It runs the party as a child process and starts a fresh one
when the child reports that the MPC failed (a peer died or a collective
timed out, exit code :data:`REJOIN`) or that joining failed
(:data:`JOIN_FAILED`, e.g. a peer restarted during the rendezvous). A fresh
process, not a re-initialised one: torch.distributed and gloo cannot leave a
broken group cleanly, and only process exit closes every socket, which is
also how the other parties notice. Restarting after a failure is bounded by
the rendezvous wait (counted from the last successful join) and by
``max_restarts``; when the supervisor is killed, the child notices within a
fraction of a second and exits (no orphan party).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

CHILD_ENV = "PRICURE_PARTY_CHILD"
REJOIN = 75  # the party was joined and its MPC failed: restart and rejoin
JOIN_FAILED = 76  # the rendezvous broke before the party joined: retry within the wait bound
JOIN_TIMEOUT = 3  # the wait bound passed: give up with a clear message
PARENT_GONE = 70


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def watch_parent() -> None:
    """In the child: exit at once when the supervisor is gone."""
    parent = os.getppid()

    def loop() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(PARENT_GONE)
            time.sleep(0.2)

    threading.Thread(target=loop, name="pricure-parent-watch", daemon=True).start()


def supervise(what: str, argv: Sequence[str], *, wait: float, max_restarts: int = 1000) -> int:
    """Run ``python -m pricure_crypten ARGV`` as the party; restart it as described above."""
    env = dict(os.environ, **{CHILD_ENV: "1"})
    child: subprocess.Popen | None = None

    def stop(signum: int, frame: object) -> None:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + wait
    for attempt in range(max_restarts + 1):
        child = subprocess.Popen([sys.executable, "-m", "pricure_crypten", *argv], env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            child.terminate()
            child.wait(timeout=10)
            return 130
        if code == REJOIN:
            deadline = time.monotonic() + wait  # it had joined: a fresh wait for the restarted peer
        elif code == JOIN_FAILED and time.monotonic() < deadline:
            pass
        elif code == JOIN_FAILED:
            print(f"pricure {what}: error: could not join the MPC within {wait:g} s (the rendezvous kept failing); "
                  "check that every party uses the same --servers and --rendezvous", file=sys.stderr, flush=True)
            return JOIN_TIMEOUT
        else:
            return code
        print(f"pricure {what}: restarting the party (attempt {attempt + 2})", file=sys.stderr, flush=True)
        time.sleep(0.5)
    print(f"pricure {what}: error: gave up after {max_restarts} restarts", file=sys.stderr, flush=True)
    return 1

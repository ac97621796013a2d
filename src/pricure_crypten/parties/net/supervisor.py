"""The process tree of ``pricure serve`` / ``pricure dealer``: a tiny supervisor and the party itself.

The supervisor (the process the operator starts and may kill) imports
nothing heavy. It runs the party as a child process and starts a fresh one
whenever the child ends abnormally:

* the child reports that the MPC failed (a peer died or a collective timed
  out, exit code :data:`REJOIN`) or that joining failed (:data:`JOIN_FAILED`,
  e.g. a peer restarted during the rendezvous): a fresh child at once;
* the child was killed by a signal (SIGKILL from the kernel's OOM killer,
  SIGSEGV, ...) or died with any other code: a fresh child after a backoff
  (0.5 s doubling to 30 s; back to 0.5 s once a child ran a minute), with a
  log line naming the signal or code.

A fresh process, not a re-initialised one: torch.distributed and gloo cannot
leave a broken group cleanly, and only process exit closes every socket,
which is also how the other parties notice. The supervisor itself returns
only when asked (SIGTERM or SIGINT: it stops the child first, exit code
128 + the signal), or when restarting cannot help: the child exited 0, with
a configuration error (2, e.g. the front door's address is taken), a
settings mismatch between the servers (4), or joining kept failing beyond the
rendezvous wait (3, counted from the last successful join). When the
supervisor is killed, the child notices within a fraction of a second and
exits (no orphan party).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

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


FINAL = {0: "ended", 2: "a configuration error", JOIN_TIMEOUT: "the rendezvous wait passed",
         4: "the servers' settings differ"}  # exit codes a restart cannot fix


def _describe(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"the party was killed by {name}{hint}"
    if code == REJOIN:
        return "the party's MPC failed"
    if code == JOIN_FAILED:
        return "the party could not join the MPC"
    return f"the party exited with code {code}"


def supervise(what: str, argv: Sequence[str], *, wait: float, command: Optional[Sequence[str]] = None,
              backoff: tuple[float, float] = (0.5, 30.0), stable_after: float = 60.0) -> int:
    """Run ``python -m pricure_crypten ARGV`` (or ``command + ARGV``) as the party; restart it as described above."""
    env = dict(os.environ, **{CHILD_ENV: "1"})
    prefix = list(command) if command is not None else [sys.executable, "-m", "pricure_crypten"]
    asked: list[int] = []
    child: Optional[subprocess.Popen] = None

    def stop(signum: int, frame: object) -> None:
        asked.append(signum)
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + wait
    delay, restarts = backoff[0], 0
    try:
        while not asked:
            started = time.monotonic()
            child = subprocess.Popen([*prefix, *argv], env=env)
            code = child.wait()
            if asked:
                break
            now = time.monotonic()
            if code == REJOIN:
                deadline, pause = now + wait, 0.5  # it had joined: a fresh wait for the restarted peer
            elif code == JOIN_FAILED and now < deadline:
                pause = 0.5
            elif code == JOIN_FAILED:
                print(f"pricure {what}: error: could not join the MPC within {wait:g} s (the rendezvous kept "
                      "failing); check that every party uses the same --servers and --rendezvous", file=sys.stderr,
                      flush=True)
                return JOIN_TIMEOUT
            elif code in FINAL:
                if code:
                    print(f"pricure {what}: the party exited with code {code} ({FINAL[code]}); not restarting",
                          file=sys.stderr, flush=True)
                return code
            else:  # a signal or a crash: restart with backoff, so a crash loop cannot spin
                if now - started > stable_after:
                    delay = backoff[0]
                pause, delay = delay, min(2 * delay, backoff[1])
                deadline = now + wait
            restarts += 1
            print(f"pricure {what}: {_describe(code)} after {now - started:.1f} s; restarting the party in {pause:g} s "
                  f"(restart {restarts})", file=sys.stderr, flush=True)
            until = time.monotonic() + pause
            while not asked and time.monotonic() < until:
                time.sleep(min(0.1, pause))
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    signum = asked[0]
    print(f"pricure {what}: stopped ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
    return 128 + signum

"""The in-process launcher: N CrypTen server processes (and the dealer), their liveness, and routing.

:class:`ServerProcesses` starts the processes from a clean interpreter
(:func:`~.process.party_context`: a forkserver with torch and CrypTen
preloaded, or ``spawn``), never by forking the caller, so it works from a
process that has already run torch (a notebook kernel, the demo); CrypTen's
fork-based ``run_multiprocess`` deadlocks there. It lives in
the calling process and only routes messages: it hands server ``i`` the
message meant for server ``i`` (:mod:`~pricure_crypten.parties.serving.messages`) and returns the servers' replies (shares for
the client, public cost figures) to the caller.

Correct by construction under concurrency:

* one request is in flight at a time (a lock), and requests carry sequence
  numbers 1, 2, 3, ...: every server computes them in that one order and
  checks it; every reply carries its request's number and is checked against it;
* a failure of any party (an error reply, a dead process seen through its
  sentinel at once, a heartbeat older than ``heartbeat_timeout``, no reply
  within ``request_timeout``) tears the whole cluster down (SIGKILL, no
  process left behind) and raises :class:`ServerError`; the caller receives
  no share. ``start()`` afterwards launches a fresh cluster.

Who sees what: this object sees only shares and public figures.
"""

from __future__ import annotations

import multiprocessing.connection as mpc
import os
import signal
import tempfile
import threading
import time
import weakref
from typing import Any, Sequence

from ..config import Cluster
from .dealer import dealer_main
from .process import party_context
from .server import ServerConfig, server_main
from .serving.messages import Message, Shutdown

POLL_INTERVAL = 0.25


class ServerError(RuntimeError):
    """A server or the dealer failed or stopped answering; nothing was revealed."""


def _kill(processes: list[Any]) -> None:
    """SIGKILL (works on a stopped process too) and reap; idempotent."""
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for process in processes:
        if process.pid is not None:
            process.join(timeout=10)


class ServerProcesses:
    """N >= 2 server processes plus, for the secure provider, a dealer process.

    Args:
        config: the topology and the failure bounds (:class:`~pricure_crypten.config.Cluster`).
    """

    def __init__(self, config: Cluster | None = None) -> None:
        self.config = config if config is not None else Cluster()
        if not isinstance(self.config, Cluster):
            raise TypeError(f"config must be a pricure_crypten.config.Cluster, not {type(self.config).__name__}")
        self.num_servers = self.config.num_servers
        self.threads = self.config.threads_per_server or max(1, (os.cpu_count() or 1) // self.num_servers)
        self._request_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._servers: list[Any] = []
        self._dealer: Any = None
        self._inboxes: list[Any] = []
        self._replies: list[Any] = []
        self._beats: list[Any] = []  # one per server, then the dealer's
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._sequence = 0
        self._finalizer: Any = None
        self._retired = False
        self.launches = 0

    # -- lifecycle --

    @property
    def running(self) -> bool:
        return bool(self._servers)

    @property
    def processes(self) -> list[Any]:
        return self._servers + ([self._dealer] if self._dealer is not None else [])

    def start(self) -> "ServerProcesses":
        """Launch the servers (and the dealer) and wait until every server is ready."""
        with self._state_lock:
            if self._retired:
                raise ServerError("this server cluster was shut down for good (its ensemble is closed)")
            if self.running:
                return self
            try:
                self._launch()
            except BaseException:
                self.close(graceful=False)
                raise
        try:  # outside the lock: close() from another thread interrupts a slow start
            self._await_ready()
        except BaseException:
            self.close(graceful=False)
            raise
        return self

    def _launch(self) -> None:
        ctx = party_context()
        environment = dict(os.environ)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="pricure-rendezvous-")
        rendezvous = "file://" + os.path.join(self._tmpdir.name, "rendezvous")
        parent = os.getpid()
        now = time.monotonic()
        count = self.num_servers + (1 if self.config.needs_dealer else 0)
        self._beats = [ctx.Value("d", now, lock=False) for _ in range(count)]
        self._sequence = 0
        for rank in range(self.num_servers):
            inbox = ctx.Queue()
            inbox.cancel_join_thread()  # never block interpreter exit on a dead server's queue
            receive, send = ctx.Pipe(duplex=False)
            config = ServerConfig(rank, self.num_servers, rendezvous, self.config.crypten_provider, self.threads,
                                  self.config.request_timeout, parent)
            process = ctx.Process(target=server_main, args=(config, inbox, send, self._beats[rank], environment),
                                  name=f"pricure-server-{rank}", daemon=True)
            process.start()
            send.close()  # the child holds the write end; EOF then means it is gone
            self._servers.append(process)
            self._inboxes.append(inbox)
            self._replies.append(receive)
        if self.config.needs_dealer:
            self._dealer = ctx.Process(
                target=dealer_main, args=(self.num_servers, rendezvous, self._beats[-1], parent, environment),
                name="pricure-dealer", daemon=True,
            )
            self._dealer.start()
        self.launches += 1
        # Whatever happens to this object or the interpreter, its processes do not outlive it.
        self._finalizer = weakref.finalize(self, _kill, list(self.processes))

    def _await_ready(self) -> None:
        replies = self._collect(0, "start", self.config.start_timeout, check_heartbeats=False)
        for rank, reply in replies.items():
            if reply is None:
                raise ServerError(f"server {rank} did not start")

    def close(self, *, graceful: bool = True, final: bool = False) -> None:
        """Shut the servers down: ask them to stop (``graceful``), then kill what is left. Idempotent.

        ``final`` also refuses any later :meth:`start` (the owner is closed for good).

        Safe to call from another thread while a request is in flight (that
        request then fails with :class:`ServerError`) and safe to interrupt:
        whatever happens, every process is killed and reaped.
        """
        self._retired = self._retired or final
        with self._state_lock:
            processes = self.processes
            if not processes:
                return
            graceful = graceful and not self._request_lock.locked()  # busy servers would not read a shutdown
            try:
                if graceful:
                    for inbox, process in zip(self._inboxes, self._servers):
                        if process.is_alive():
                            inbox.put((0, Shutdown()))
                    deadline = time.monotonic() + 10
                    for process in processes:
                        process.join(timeout=max(0.1, deadline - time.monotonic()))
            finally:
                _kill(processes)
                if self._finalizer is not None:
                    self._finalizer.detach()
                for connection in self._replies:
                    connection.close()
                for inbox in self._inboxes:
                    inbox.close()
                self._servers, self._dealer, self._inboxes, self._replies = [], None, [], []
                if self._tmpdir is not None:
                    self._tmpdir.cleanup()
                    self._tmpdir = None

    def __enter__(self) -> "ServerProcesses":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def server_pids(self) -> list[int]:
        return [p.pid for p in self._servers]

    @property
    def dealer_pid(self) -> int | None:
        return self._dealer.pid if self._dealer is not None else None

    # -- requests --

    def request(self, messages: Sequence[Message]) -> list[Any]:
        """Send ``messages[i]`` to server ``i`` (all of one type); return the N replies in rank order.

        One request at a time, in one order for all servers; raises
        :class:`ServerError` (and tears the cluster down) on any failure.
        """
        if len(messages) != self.num_servers:
            raise ValueError(f"need one message per server ({self.num_servers}), got {len(messages)}")
        op = messages[0].op
        with self._request_lock:
            if not self.running:
                raise ServerError("the server cluster is not running (start it or use it as a context manager)")
            self._sequence += 1
            sequence = self._sequence
            try:
                for inbox, message in zip(self._inboxes, messages):
                    inbox.put((sequence, message))
                replies = self._collect(sequence, op, self.config.request_timeout, check_heartbeats=True)
            except BaseException:
                self.close(graceful=False)  # includes KeyboardInterrupt: nothing half-done survives
                raise
            return [replies[rank] for rank in range(self.num_servers)]

    def broadcast(self, message: Message) -> list[Any]:
        """Send the same (public) message to every server."""
        return self.request([message] * self.num_servers)

    def _collect(self, sequence: int, op: str, timeout: float, *, check_heartbeats: bool) -> dict[int, Any]:
        """Wait for the reply numbered ``sequence`` from every server, watching every process."""
        connections = list(self._replies)
        by_connection = {id(c): rank for rank, c in enumerate(connections)}
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < self.num_servers:
            if not self._servers:
                raise ServerError(f"the cluster was closed during {op!r}; nothing was revealed")
            waiting = [c for rank, c in enumerate(connections) if rank not in replies]
            sentinels = [p.sentinel for p in self.processes]
            try:
                ready = mpc.wait(waiting + sentinels, timeout=POLL_INTERVAL)
            except (OSError, ValueError):  # a connection closed under us by close() in another thread
                raise ServerError(f"the cluster was closed during {op!r}; nothing was revealed") from None
            for item in ready:
                if item in sentinels:
                    continue  # checked below, after the replies that are already there
                rank = by_connection[id(item)]
                try:
                    got, status, value = item.recv()
                except (EOFError, OSError):
                    raise ServerError(f"server {rank} closed its connection during {op!r}; "
                                      "the cluster was shut down and nothing was revealed") from None
                if got != sequence:
                    raise ServerError(f"server {rank} answered request {got} while {sequence} was in flight; "
                                      "the cluster was shut down and nothing was revealed")
                if status == "error":
                    dead = self._dead_within(1.0)  # a peer's death is the usual cause of a server's error
                    cause = f" after {', '.join(dead)} stopped" if dead else ""
                    raise ServerError(f"server {rank} failed during {op!r}{cause}; the cluster was shut down and "
                                      f"nothing was revealed:\n{value}")
                replies[rank] = value
            if len(replies) < self.num_servers:
                self._check_alive(op, deadline, timeout, check_heartbeats)
        return replies

    def _names(self) -> list[str]:
        return [f"server {i}" for i in range(self.num_servers)] + (["the dealer"] if self._dealer else [])

    def _dead_within(self, seconds: float) -> list[str]:
        """The processes that stopped, waiting up to ``seconds`` for a just-killed one to be reaped."""
        deadline = time.monotonic() + seconds
        while not (dead := self._dead()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return dead

    def _dead(self) -> list[str]:
        return [f"{name} (exit code {p.exitcode})" for name, p in zip(self._names(), self.processes)
                if p.exitcode is not None]

    def _check_alive(self, op: str, deadline: float, timeout: float, check_heartbeats: bool) -> None:
        names = self._names()
        dead = self._dead()
        if dead:
            raise ServerError(f"{', '.join(dead)} stopped during {op!r}; the cluster was shut down and "
                              "nothing was revealed")
        if check_heartbeats:
            now = time.monotonic()
            silent = [f"{name} (no heartbeat for {now - beat.value:.1f} s)"
                      for name, beat in zip(names, self._beats) if now - beat.value > self.config.heartbeat_timeout]
            if silent:
                raise ServerError(f"{', '.join(silent)} during {op!r}: alive but silent; the cluster was shut "
                                  "down and nothing was revealed")
        if time.monotonic() > deadline:
            raise ServerError(f"no reply within {timeout:g} s during {op!r}; the cluster was shut down and "
                              "nothing was revealed")

"""The servers: N CrypTen parties (and the dealer), each in its own process.

:class:`ServerCluster` starts the processes with the ``spawn`` start method,
so it works from a process that has already run torch (a notebook kernel, the
demo); CrypTen's fork-based ``run_multiprocess`` deadlocks there. Each server
gets its own inbox; all replies come back on one outbox. The cluster object
lives in the calling process and only routes messages: it hands server ``i``
the payload meant for server ``i`` and returns the servers' replies (shares
for the client, public cost figures) to the caller. If any server fails, the
whole cluster is torn down and :class:`ServerError` is raised: the client
receives nothing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
from typing import Any, Sequence

from .dealer import PROVIDERS, check_provider, dealer_main, needs_dealer
from .server import ServerConfig, server_main


class ServerError(RuntimeError):
    """A server failed or stopped answering; nothing was revealed."""


class ServerCluster:
    """N >= 2 server processes plus, for the secure provider, a dealer process.

    Args:
        num_servers: N, the number of non-colluding servers (CrypTen parties).
        provider: ``"ttp"`` (default; a separate dealer process) or
            ``"insecure-tfp"`` (server 0 generates triples in the clear).
        threads_per_server: torch intra-op threads per server (default: the
            CPU count divided by N, at least 1).
        timeout: seconds to wait for a reply before declaring a server dead.
    """

    def __init__(
        self,
        *,
        num_servers: int,
        provider: str = "ttp",
        threads_per_server: int | None = None,
        timeout: float = 1800.0,
    ) -> None:
        if isinstance(num_servers, bool) or not isinstance(num_servers, int):
            raise TypeError(f"num_servers must be an int, not {type(num_servers).__name__}")
        if num_servers < 2:
            raise ValueError(f"num_servers must be >= 2 (non-colluding servers), got {num_servers}")
        self.num_servers = num_servers
        self.provider = check_provider(provider)
        self.threads = threads_per_server or max(1, (os.cpu_count() or 1) // num_servers)
        self.timeout = float(timeout)
        self._servers: list[Any] = []
        self._dealer: Any = None
        self._inboxes: list[Any] = []
        self._outbox: Any = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    # -- lifecycle --

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def start(self) -> "ServerCluster":
        if self.running:
            return self
        ctx = mp.get_context("spawn")
        self._tmpdir = tempfile.TemporaryDirectory(prefix="pricure-rendezvous-")
        rendezvous = "file://" + os.path.join(self._tmpdir.name, "rendezvous")
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(self.num_servers)]
        for rank in range(self.num_servers):
            config = ServerConfig(rank, self.num_servers, rendezvous, PROVIDERS[self.provider], self.threads)
            process = ctx.Process(
                target=server_main, args=(config, self._inboxes[rank], self._outbox),
                name=f"pricure-server-{rank}", daemon=True,
            )
            process.start()
            self._servers.append(process)
        if needs_dealer(self.provider):
            self._dealer = ctx.Process(
                target=dealer_main, args=(self.num_servers, rendezvous), name="pricure-dealer", daemon=True
            )
            self._dealer.start()
        return self

    def close(self, *, graceful: bool = True) -> None:
        """Shut the servers down: ask them to stop (``graceful``), then terminate what is left."""
        if not self.running:
            return
        processes = self._servers + ([self._dealer] if self._dealer is not None else [])
        if graceful:
            for inbox, process in zip(self._inboxes, self._servers):
                if process.is_alive():
                    inbox.put(("shutdown", None))
        deadline = time.monotonic() + (20 if graceful else 0)
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._servers, self._dealer = [], None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "ServerCluster":
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

    def request(self, op: str, payloads: Sequence[Any]) -> list[Any]:
        """Send ``payloads[i]`` to server ``i``; return the N replies in rank order."""
        if not self.running:
            raise ServerError("the server cluster is not running (start it or use it as a context manager)")
        if len(payloads) != self.num_servers:
            raise ValueError(f"need one payload per server ({self.num_servers}), got {len(payloads)}")
        for inbox, payload in zip(self._inboxes, payloads):
            inbox.put((op, payload))
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout
        while len(replies) < self.num_servers:
            try:
                rank, status, value = self._outbox.get(timeout=0.2)
            except queue.Empty:
                self._check_alive(op, deadline)
                continue
            if status != "ok":
                self.close(graceful=False)
                raise ServerError(f"server {rank} failed during {op!r}; nothing was revealed:\n{value}")
            replies[rank] = value
        return [replies[rank] for rank in range(self.num_servers)]

    def broadcast(self, op: str, payload: Any = None) -> list[Any]:
        """Send the same (public) payload to every server."""
        return self.request(op, [payload] * self.num_servers)

    def _check_alive(self, op: str, deadline: float) -> None:
        dead = [f"server {i}" for i, p in enumerate(self._servers) if not p.is_alive()]
        if self._dealer is not None and not self._dealer.is_alive():
            dead.append("the dealer")
        if dead or time.monotonic() > deadline:
            reason = f"{', '.join(dead)} stopped" if dead else f"no reply within {self.timeout:g} s"
            self.close(graceful=False)
            raise ServerError(f"{reason} during {op!r}; the cluster was shut down and nothing was revealed")

"""The one launcher of the networked deployment: N ``pricure serve`` processes and one ``pricure dealer``.

:class:`Deployment` provisions a CA, one server certificate per server and a
token per owner and client in a working directory, starts every party with its
real command (``python -m pricure_crypten serve|dealer``, each in its own
session, on the addresses of its :mod:`topology <.topology>`), waits until every
server's health says the MPC is ready, and on exit (also on a failed start)
kills every process it started (the whole session: the supervisor and its party)
and removes what the topology created (namespaces, veths, the bridge).

Who sees what: the launcher holds every credential (it is the operator of a test
or benchmark deployment); the servers see only their shares; the client side
sees only labels.
"""

from __future__ import annotations

import math
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

from .topology import Loopback, Namespaces

# Bounds that must hold on a slow, loaded machine (2 busy cores): generous on purpose.
WAIT = 120.0  # --wait of every party: how long it waits for the others at the rendezvous
READY_BOUND = 300.0  # how long the launcher waits for every server to say "ready"
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding pricure_crypten (src/ in a checkout)


def _env(extra: dict[str, str]) -> dict[str, str]:
    """This environment, plus ``extra``; from a checkout (not an installed package), ``src/`` on PYTHONPATH so
    that every party runs the same source as the caller."""
    env = dict(os.environ, **extra)
    if not {"site-packages", "dist-packages"} & set(PACKAGE_ROOT.parts):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def pricure(*args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run one ``pricure ARGS`` command (``python -m pricure_crypten``) to completion, output captured."""
    out = subprocess.run([sys.executable, "-m", "pricure_crypten", *args], env=_env({}), capture_output=True,
                         text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"pricure {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


class Deployment:
    """N >= 2 servers and the dealer, each started by its own ``pricure`` command.

    Args:
        servers: the number of servers N.
        owners, clients: the identities to issue tokens for (``tokens[name]`` is the token file).
        serve_flags: flags for every ``pricure serve`` (e.g. ``["--epsilon", "inf"]``).
        server_flags: per-rank extra flags (a list of N lists), after ``serve_flags``.
        topology: :class:`Loopback` (default) or :class:`Namespaces`.
        wait: ``--wait`` of every party (rendezvous bound, seconds).
        server_wait: ``--wait`` of the servers if different (their rendezvous bound; their collectives'
            timeout is ``--timeout``, a flag of ``serve_flags``); default ``wait``.
        ready_bound: default bound of :meth:`wait_ready` (seconds).
        root: the working directory (certificates, tokens, data dirs, logs); default a fresh
            temporary one, removed on close.
        admin_cli: provision with the ``pricure admin ca|cert|add`` commands instead of the Python API.
        client_threads: the client-side thread pool (namespaces only: its threads live in the
            client namespace).

    Use as a context manager: ``with Deployment(servers=2, ...) as d:`` starts every party in a
    deliberately scrambled order (server N-1 first, the dealer, server 0 last) and waits until all
    are ready; leaving the block tears everything down.
    """

    def __init__(self, *, servers: int, owners: Sequence[str] = (), clients: Sequence[str] = (),
                 serve_flags: Sequence[str] = (), server_flags: Sequence[Sequence[str]] | None = None,
                 topology: Loopback | Namespaces | None = None, wait: float = WAIT,
                 server_wait: float | None = None, ready_bound: float = READY_BOUND,
                 root: str | os.PathLike | None = None, admin_cli: bool = False, client_threads: int = 8) -> None:
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 2:
            raise ValueError(f"servers must be an integer >= 2, got {servers!r}")
        topology = Loopback() if topology is None else topology
        if not isinstance(topology, (Loopback, Namespaces)):
            raise TypeError(f"topology must be Loopback or Namespaces, not {type(topology).__name__}")
        server_flags = [[] for _ in range(servers)] if server_flags is None else [list(f) for f in server_flags]
        if len(server_flags) != servers:
            raise ValueError(f"server_flags must hold one list per server ({servers}), got {len(server_flags)}")
        names = [*owners, *clients]
        if not names:
            raise ValueError("a deployment needs at least one owner or client (a token reads the servers' health)")
        if len(set(names)) != len(names):
            raise ValueError(f"owner and client names must be distinct, got {names}")
        self.n = servers
        self.topology = topology
        self.wait = _positive("wait", wait)
        self.server_wait = self.wait if server_wait is None else _positive("server_wait", server_wait)
        self.ready_bound = _positive("ready_bound", ready_bound)
        self.serve_flags, self.server_flags = list(serve_flags), server_flags
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="pricure-deployment-")
        self.root = Path(root) if root is not None else Path(self._tmp.name)
        self.network = topology.network(servers)
        self.hosts, self.urls, self.rendezvous = self.network.hosts, self.network.urls, self.network.rendezvous
        self.ca = self.root / "ca" / "ca.pem"
        self.tokens: dict[str, Path] = {name: self.root / f"{name}.token" for name in names}
        self.processes: dict[str, subprocess.Popen] = {}
        self._client_threads = client_threads
        self._pool = None
        self._provision(list(owners), list(clients), admin_cli)

    # -- credentials --

    def _provision(self, owners: list[str], clients: list[str], admin_cli: bool) -> None:
        dirs = [self.root / f"d{rank}" for rank in range(self.n)]
        people = [("owner", name) for name in owners] + [("client", name) for name in clients]
        if admin_cli:
            pricure("admin", "ca", "--out", str(self.root / "ca"))
            for rank, host in enumerate(self.hosts):
                pricure("admin", "cert", "--ca", str(self.root / "ca"), "--host", host, "--out", str(self.root / f"s{rank}"))
            data_dirs = [arg for d in dirs for arg in ("--data-dir", str(d))]
            for role, name in people:
                pricure("admin", "add", "--role", role, "--id", name, "--token-file", str(self.tokens[name]), *data_dirs)
            return
        from ...parties.net import credentials

        credentials.make_ca(self.root / "ca")
        for rank, host in enumerate(self.hosts):
            credentials.make_server_cert(self.root / "ca", host, self.root / f"s{rank}")
        for role, name in people:
            credentials.add_credential(role=role, identity=name, token_file=self.tokens[name], data_dirs=dirs)

    # -- the parties --

    def serve_args(self, rank: int) -> list[str]:
        """The ``pricure serve`` arguments of server ``rank``."""
        return ["serve", "--rank", str(rank), "--servers", str(self.n), "--rendezvous", self.rendezvous,
                "--listen", self.urls[rank], "--data-dir", str(self.root / f"d{rank}"),
                "--cert", str(self.root / f"s{rank}" / "server.pem"),
                "--key", str(self.root / f"s{rank}" / "server.key"), "--wait", f"{self.server_wait:g}",
                *self.serve_flags, *self.server_flags[rank]]

    def dealer_args(self) -> list[str]:
        return ["dealer", "--servers", str(self.n), "--rendezvous", self.rendezvous, "--wait", f"{self.wait:g}"]

    def start(self, name: str) -> None:
        """Start party ``name`` (``server0``.. or ``dealer``) with its real command, e.g. again after :meth:`kill`."""
        if name in self.processes:
            raise RuntimeError(f"{name} is already running")
        if name == "dealer":
            args = self.dealer_args()
        elif name.startswith("server") and name[6:].isdigit() and int(name[6:]) < self.n:
            args = self.serve_args(int(name[6:]))
        else:
            raise ValueError(f"no party {name!r}: use 'dealer' or server0..server{self.n - 1}")
        command = self.network.command(name, [sys.executable, "-m", "pricure_crypten", *args])
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(command, env=_env(self.network.env()), stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL party ``name``'s whole session (the supervisor and its party child) and reap it."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "Deployment":
        try:
            self.network.up()
            self._pool = self.network.client_executor(self._client_threads)
            # deliberately out of order: the last server first, the dealer in the middle, server 0 last
            for rank in reversed(range(1, self.n)):
                self.start(f"server{rank}")
            self.start("dealer")
            self.start("server0")
            self.wait_ready(0)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process, remove what the topology created and the temporary directory; idempotent."""
        try:
            for name in list(self.processes):
                self.kill(name)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        finally:
            try:
                self.network.down()
            finally:
                if self._tmp is not None:
                    self._tmp.cleanup()

    # -- the client side --

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the client side (a thread in the client namespace, or here)."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Like :meth:`call`, without waiting: a Future. On loopback, a fresh thread runs ``fn``."""
        if self._pool is not None:
            return self._pool.submit(fn, *args, **kwargs)
        import threading

        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

        threading.Thread(target=run, daemon=True).start()
        return future

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def http(self, rank: int, who: str | None, timeout: float = 10.0) -> Any:
        """An ``httpx.Client`` for server ``rank``'s front door with ``who``'s token (None: anonymous)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.tokens[who].read_text().strip()}"} if who else {}
        return httpx.Client(base_url=f"https://{self.urls[rank]}", verify=self.tls(), headers=headers,
                            timeout=timeout)

    def health(self, rank: int) -> dict | None:
        """Server ``rank``'s detailed health (with any credential), or None if it does not answer."""
        import httpx

        who = next(iter(self.tokens))  # the detailed health needs a credential, any one

        def get() -> dict | None:
            try:
                with self.http(rank, who, timeout=5.0) as http:
                    return http.get("/v1/health").json()
            except (httpx.HTTPError, ValueError, OSError):
                return None

        return self.call(get) if self._pool is not None else get()

    def wait_ready(self, owners: int = 0, bound: float | None = None) -> list[dict]:
        """Every server's health once all say ``mpc: ready`` with at least ``owners`` models loaded."""
        bound = self.ready_bound if bound is None else _positive("bound", bound)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            states = [self.health(r) for r in range(self.n)]
            if all(s and s["mpc"] == "ready" and len(s["owners_loaded"]) >= owners for s in states):
                return states
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs()}")
            time.sleep(0.25)
        raise RuntimeError(f"the deployment was not ready within {bound:g} s:\n{self.logs()}")

    def log(self, name: str) -> str:
        """The last 3,000 characters of party ``name``'s output."""
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.stem}\n{self.log(p.stem)}" for p in sorted(self.root.glob("*.log")))

    def upload(self, owner: Any) -> None:
        """``owner`` (a ModelOwner) uploads its shares to every server through the front doors."""
        from ...parties.net.remote import upload_model

        self.call(upload_model, owner, servers=self.urls, credential=self.tokens[owner.name], ca=self.ca)

    def upload_all(self, owners: Sequence[Any]) -> list[dict]:
        """Every owner uploads (:meth:`upload`); then every server's health once all have loaded them."""
        for owner in owners:
            self.upload(owner)
        return self.wait_ready(len(owners))

    def remote(self, client: str, timeout: float = 600.0) -> Any:
        """A RemoteEnsemble for ``client``. With namespaces, use it only inside :meth:`call`/:meth:`submit`."""
        from ...parties.net.remote import RemoteEnsemble

        return RemoteEnsemble(servers=self.urls, credential=self.tokens[client], ca=self.ca, timeout=timeout)

    def status(self, rank: int, client: str, *, total_delta: float = 0.0, accountant: str = "auto") -> Any:
        """``client``'s budget status in server ``rank``'s ledger (read-only), epsilon reported at ``total_delta``
        by ``accountant`` (the server's ``--accountant``: e.g. ``rdp-filter`` for answered-only spends)."""
        from ...privacy.accounting import PrivacyLedger

        with PrivacyLedger(self.root / f"d{rank}" / "ledger.sqlite3", total_epsilon=math.inf,
                           total_delta=total_delta, accountant=accountant, read_only=True,
                           record_policy=False) as ledger:
            return ledger.status(client)

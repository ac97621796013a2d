"""``pricure demo --deployment processes``: the demo with every party its own ``pricure`` process.

:class:`ProcessDeployment` provisions a CA, server certificates and tokens in
a temporary directory, starts each server with ``pricure serve`` on its own
loopback address (127.0.0.2, 127.0.0.3, ...) and the dealer with ``pricure
dealer`` (each in its own session), lets the owners upload through the front
door and gives the client a :class:`~pricure_crypten.parties.net.remote.RemoteEnsemble`.
Every process it started is killed on exit.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

START_BOUND = 120.0


def free_port(host: str) -> int:
    """A free TCP port on ``host`` (a loopback address), picked at random and probed."""
    for _ in range(100):
        port = 20000 + secrets.randbelow(20000)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port on {host}")


class ProcessDeployment:
    """N ``pricure serve`` processes and one ``pricure dealer`` on 127.0.0.2, 127.0.0.3, ..."""

    def __init__(self, *, servers: int, owners: Sequence[str], clients: Sequence[str], serve_flags: Sequence[str]):
        from ..parties.net import credentials

        self._tmp = tempfile.TemporaryDirectory(prefix="pricure-deployment-")
        self.root = Path(self._tmp.name)
        self.hosts = [f"127.0.0.{2 + rank}" for rank in range(servers)]
        self.rendezvous = f"tcp://{self.hosts[0]}:{free_port(self.hosts[0])}"
        self.urls = [f"{h}:{free_port(h)}" for h in self.hosts]
        credentials.make_ca(self.root / "ca")
        self.ca = self.root / "ca" / "ca.pem"
        dirs = [self.root / f"d{rank}" for rank in range(servers)]
        for rank, host in enumerate(self.hosts):
            credentials.make_server_cert(self.root / "ca", host, self.root / f"s{rank}")
        self.tokens = {}
        for role, names in (("owner", owners), ("client", clients)):
            for name in names:
                self.tokens[name] = self.root / f"{name}.token"
                credentials.add_credential(role=role, identity=name, token_file=self.tokens[name], data_dirs=dirs)
        self.serve_flags = list(serve_flags)
        self.processes: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes.append(subprocess.Popen([sys.executable, "-m", "pricure_crypten", *args],
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def __enter__(self) -> "ProcessDeployment":
        try:
            n = len(self.hosts)
            for rank in range(n):
                self._start(f"server{rank}", [
                    "serve", "--rank", str(rank), "--servers", str(n), "--rendezvous", self.rendezvous,
                    "--listen", self.urls[rank], "--data-dir", str(self.root / f"d{rank}"),
                    "--cert", str(self.root / f"s{rank}" / "server.pem"),
                    "--key", str(self.root / f"s{rank}" / "server.key"), *self.serve_flags])
            self._start("dealer", ["dealer", "--servers", str(n), "--rendezvous", self.rendezvous])
            self.wait_ready(0)
        except BaseException:
            self.close()
            raise
        return self

    def health(self, rank: int) -> dict | None:
        import httpx

        try:
            token = next(iter(self.tokens.values())).read_text().strip()  # details need a credential
            return httpx.get(f"https://{self.urls[rank]}/v1/health", timeout=2,
                             headers={"Authorization": f"Bearer {token}"},
                             verify=ssl.create_default_context(cafile=str(self.ca))).json()
        except (httpx.HTTPError, ValueError):
            return None

    def wait_ready(self, owners: int) -> list[dict]:
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            states = [self.health(r) for r in range(len(self.hosts))]
            if all(s and s["mpc"] == "ready" and len(s["owners_loaded"]) >= owners for s in states):
                return states
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError("a party of the deployment exited:\n" + self.logs())
            time.sleep(0.2)
        raise RuntimeError(f"the deployment did not come up within {START_BOUND:g} s:\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted(self.root.glob("*.log")))

    def upload(self, owner: Any) -> None:
        from ..parties.net.remote import upload_model

        upload_model(owner, servers=self.urls, credential=self.tokens[owner.name], ca=self.ca)

    def remote(self, client: str, timeout: float = 600.0) -> Any:
        from ..parties.net.remote import RemoteEnsemble

        return RemoteEnsemble(servers=self.urls, credential=self.tokens[client], ca=self.ca, timeout=timeout)

    def budget(self, rank: int, client: str, total_delta: float = 1e-5) -> Any:
        from ..privacy.accounting import PrivacyLedger

        with PrivacyLedger(self.root / f"d{rank}" / "ledger.sqlite3", total_epsilon=math.inf,
                           total_delta=total_delta, read_only=True, record_policy=False) as ledger:
            return ledger.status(client)

    def close(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            process.wait(timeout=10)
        self.processes = []
        self._tmp.cleanup()

    def __exit__(self, *exc: Any) -> None:
        self.close()

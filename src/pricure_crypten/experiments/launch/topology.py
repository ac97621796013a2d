"""Where the launched parties live: loopback addresses, or Linux network namespaces.

A topology is a small frozen config (:class:`Loopback`, :class:`Namespaces`);
``topology.network(servers)`` builds the running network for one deployment:
its addresses, the command prefix and environment of every party, and its
teardown. The launcher (:mod:`.launcher`) does the rest the same way for both.

* :class:`Loopback`: every server on its own address in 127.0.0.0/8 (nothing
  to create or remove; ports are picked free at random).
* :class:`Namespaces`: one network namespace per party (server 0..N-1, the
  dealer, the client side), each joined by a veth pair to a bridge in a
  further "hub" namespace, on a subnet that exists only inside them (nothing
  is added to the root namespace). Parties run as ``ip netns exec NS ...`` with
  gloo bound to the namespace's veth; the client side is a thread pool whose
  threads entered the client namespace (``setns``), so every byte crosses the
  veths and the bridge. ``limit()`` puts ``tc tbf`` on both ends of every
  server's veth. Needs root; :func:`namespaces_unavailable` says why not.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

CLONE_NEWNET = 0x40000000
IFACE = "eth0"  # the veth end inside every party's namespace (names are per namespace)
_TC_VALUE = re.compile(r"^[0-9]+(\.[0-9]+)?[a-zA-Z]*$")


def free_port(host: str) -> int:
    """A free TCP port on ``host`` (a local address), picked at random and probed."""
    for _ in range(100):
        port = 20000 + secrets.randbelow(20000)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port on {host}")


def namespaces_unavailable() -> str | None:
    """None if network namespaces can be used here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth pairs and tc)"
    try:
        out = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`ip netns` is unavailable: {error}"
    if out.returncode != 0:
        return f"`ip netns` is unavailable: {out.stderr.strip()}"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ip ARGS``; raises with ip's own message if it fails and ``check``."""
    out = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def namespace_names() -> set[str]:
    """The network namespaces that exist now (``ip netns list``)."""
    out = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def enter_netns(name: str) -> None:
    """Move the CALLING THREAD into network namespace ``name`` (setns is per thread for CLONE_NEWNET)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class Loopback:
    """Every server on its own loopback address: ``127.0.0.{first}``, ``127.0.0.{first+1}``, ...

    Args:
        first: the last octet of server 0's address (2..250; 127.0.0.1 is left to other uses).
    """

    first: int = 2

    def __post_init__(self) -> None:
        _check_int("Loopback.first", self.first, 2, 250)

    def network(self, servers: int) -> "LoopbackNetwork":
        if self.first + servers - 1 > 254:
            raise ValueError(f"Loopback(first={self.first}) has no room for {servers} servers (127.0.0.254 is the last)")
        return LoopbackNetwork(self, servers)


@dataclass(frozen=True)
class Namespaces:
    """One Linux network namespace per party, joined by veth pairs through a bridge (needs root).

    Args:
        subnet: the first three octets of the private /24 that exists only inside the namespaces
            (server i at .{10+i}, the dealer at .9, the client side at .100).
    """

    subnet: str = "10.231.0"

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(f"{self.subnet}.0/24")
        except ValueError:
            raise ValueError(f"Namespaces.subnet must be three octets like '10.231.0', got {self.subnet!r}") from None
        if not net.is_private or net.is_loopback:
            raise ValueError(f"Namespaces.subnet must be a private, non-loopback range, got {self.subnet!r}")

    def network(self, servers: int) -> "NamespaceNetwork":
        if servers > 80:
            raise ValueError(f"Namespaces supports at most 80 servers, got {servers}")
        reason = namespaces_unavailable()
        if reason:
            raise RuntimeError(f"Namespaces topology: {reason}")
        return NamespaceNetwork(self, servers)


class LoopbackNetwork:
    """The running loopback topology: no setup, no teardown; the client side is this process."""

    def __init__(self, topology: Loopback, servers: int) -> None:
        self.servers = servers
        self.hosts = [f"127.0.0.{topology.first + rank}" for rank in range(servers)]
        self.rendezvous = f"tcp://{self.hosts[0]}:{free_port(self.hosts[0])}"
        self.urls = [f"{h}:{free_port(h)}" for h in self.hosts]

    def up(self) -> None:
        return None

    def down(self) -> None:
        return None

    def command(self, party: str, argv: list[str]) -> list[str]:
        return argv

    def env(self) -> dict[str, str]:
        return {}

    def client_executor(self, workers: int) -> Executor | None:
        return None  # calls run in the caller's thread


class NamespaceNetwork:
    """The running namespace topology. Parties: ``s0``..``s{N-1}``, ``dealer``, ``client`` (and the ``hub``)."""

    RENDEZVOUS_PORT, FRONT_DOOR_PORT = 29500, 8443

    def __init__(self, topology: Namespaces, servers: int) -> None:
        self.servers = servers
        subnet = topology.subnet
        self.tag = f"pricure-{secrets.token_hex(3)}"
        self.ns = {f"s{r}": f"{self.tag}-s{r}" for r in range(servers)}
        self.ns.update(dealer=f"{self.tag}-dealer", client=f"{self.tag}-client", hub=f"{self.tag}-hub")
        self.addr = {f"s{r}": f"{subnet}.{10 + r}" for r in range(servers)}
        self.addr.update(dealer=f"{subnet}.9", client=f"{subnet}.100")
        self.hub_port = {party: f"h-{party}" for party in self.addr}  # the veth end on the bridge
        self.hosts = [self.addr[f"s{r}"] for r in range(servers)]
        self.rendezvous = f"tcp://{self.hosts[0]}:{self.RENDEZVOUS_PORT}"
        self.urls = [f"{h}:{self.FRONT_DOOR_PORT}" for h in self.hosts]
        self.limited: list[tuple[str, str]] = []

    @staticmethod
    def party_of(name: str) -> str:
        """The namespace key of a launched process: ``server3`` -> ``s3``; ``dealer`` -> ``dealer``."""
        return "s" + name.removeprefix("server") if name.startswith("server") else name

    def up(self) -> None:
        hub = self.ns["hub"]
        for name in self.ns.values():
            ip("netns", "add", name)
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "link", "set", "lo", "up")
        for party, address in self.addr.items():
            ns, port = self.ns[party], self.hub_port[party]
            ip("-n", hub, "link", "add", port, "type", "veth", "peer", "name", IFACE, "netns", ns)
            ip("-n", hub, "link", "set", port, "master", "br0")
            ip("-n", hub, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", IFACE)
            ip("-n", ns, "link", "set", IFACE, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", hub, "link", "set", "br0", "up")

    def down(self) -> None:
        """Kill whatever still runs inside this deployment's namespaces, then delete them (veths, bridge)."""
        mine = [name for name in namespace_names() if name.startswith(self.tag + "-")]
        for name in mine:  # only processes started by this deployment can be in them
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for name in mine:
            ip("netns", "del", name, check=False)
        self.limited = []

    def command(self, party: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[self.party_of(party)], *argv]

    def env(self) -> dict[str, str]:
        return {"GLOO_SOCKET_IFNAME": IFACE}

    def client_executor(self, workers: int) -> Executor:
        return ThreadPoolExecutor(workers, thread_name_prefix="netns-client", initializer=enter_netns,
                                  initargs=(self.ns["client"],))

    # -- link control --

    def link(self, party: str, up: bool) -> None:
        """Set the veth of ``party`` (e.g. "s1") inside its namespace up or down (a cut link)."""
        ip("-n", self.ns[party], "link", "set", IFACE, "up" if up else "down")

    def limit(self, rate: str = "100mbit", burst: str = "32kbit", latency: str = "50ms") -> None:
        """``tc tbf`` on both ends of every server's veth: a ``rate`` full-duplex link per server."""
        for name, value in (("rate", rate), ("burst", burst), ("latency", latency)):
            if not isinstance(value, str) or not _TC_VALUE.match(value):
                raise ValueError(f"limit: {name} must be a tc value like '100mbit', got {value!r}")
        for r in range(self.servers):
            for ns, dev in ((self.ns[f"s{r}"], IFACE), (self.ns["hub"], self.hub_port[f"s{r}"])):
                ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                   "burst", burst, "latency", latency)
                self.limited.append((ns, dev))

    def unlimit(self) -> None:
        while self.limited:
            ns, dev = self.limited.pop()
            ip("netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)

    def qdisc_stats(self) -> list[dict]:
        """Bytes, drops and overlimits of every tbf this network added."""
        out = []
        for ns, dev in self.limited:
            for q in json.loads(ip("netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout):
                if q.get("kind") == "tbf":
                    out.append({"ns": ns.removeprefix(self.tag + "-"), "dev": dev, "bytes": q.get("bytes"),
                                "drops": q.get("drops"), "overlimits": q.get("overlimits")})
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """Bytes sent/received by every party on its veth (its own end, inside its namespace)."""
        out = {}
        for party in self.addr:
            stats = json.loads(ip("-n", self.ns[party], "-s", "-j", "link", "show", "dev", IFACE).stdout)[0]
            s = stats["stats64"]
            out[party] = {"tx_bytes": int(s["tx"]["bytes"]), "rx_bytes": int(s["rx"]["bytes"])}
        return out

    def tcp_throughput(self, src: str, dst: str, megabytes: int = 20) -> float:
        """Raw TCP goodput (bit/s) from party ``src`` to party ``dst``: a check that a limit is real."""
        port = 29900
        sink = ("import socket,sys;s=socket.create_server(('%s',%d));c,_=s.accept();n=0\n"
                "while (b:=c.recv(1<<20)):n+=len(b)\nprint(n)" % (self.addr[dst], port))
        server = subprocess.Popen(["ip", "netns", "exec", self.ns[dst], sys.executable, "-c", sink],
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            source = ("import socket,time;c=None\nfor _ in range(100):\n try:c=socket.create_connection(('%s',%d));break\n"
                      " except OSError:time.sleep(0.05)\nt=time.perf_counter();c.sendall(bytes(%d));c.shutdown(1);"
                      "c.recv(1);print(time.perf_counter()-t)" % (self.addr[dst], port, megabytes << 20))
            out = subprocess.run(["ip", "netns", "exec", self.ns[src], sys.executable, "-c", source],
                                 check=True, capture_output=True, text=True, timeout=120)
            seconds = float(out.stdout.strip())
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        return 8.0 * (megabytes << 20) / seconds

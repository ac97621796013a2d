"""The networked deployment in separate network namespaces, unlimited and under ``tc tbf`` at 100 Mbit/s.

One network namespace per party (server 0..N-1, the dealer, and the client
side: owners and clients), each joined by a veth pair to a bridge that lives
in a further "hub" namespace. The subnet (10.231.0.0/24) exists only inside
these namespaces: nothing is added to the root namespace. Every party is
started with its real command, ``ip netns exec NS python -m pricure_crypten
serve|dealer ...``, with gloo bound to the namespace's veth
(``GLOO_SOCKET_IFNAME``) and the rendezvous on server 0's veth address. The
client side runs in this process, in threads that entered the client
namespace (``setns``), so every byte crosses the veths and the bridge.

K owners upload, C concurrent clients send Q queries (epsilon = inf), once
unlimited and once with ``tc qdisc add dev VETH root tbf rate 100mbit burst
32kbit latency 50ms`` on both ends of every server's veth (a 100 Mbit/s
full-duplex link per server). It prints seconds/query, the MPC bytes and
rounds (CrypTen's exact counts, from every server's health), the bytes that
actually crossed each link (interface counters), the measured slowdown and
the network model's prediction (benchmarks/netmodel.py; latency 0: this
kernel has no netem, so only bandwidth is real here)::

    sudo .venv/bin/python -m benchmarks.netns --servers 2 --owners 10 --clients 4 --queries 400 --batch 25

Everything it creates (namespaces, veths, the bridge, processes) is removed
in a ``finally``, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.231.0"
IFACE = "eth0"  # the veth end inside every party's namespace (names are per namespace)
CLONE_NEWNET = 0x40000000
RENDEZVOUS_PORT, FRONT_DOOR_PORT = 29500, 8443
START_BOUND = 120.0


def available() -> str | None:
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
    out = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


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


class NetnsDeployment:
    """N ``pricure serve`` + ``pricure dealer``, each in its own network namespace, joined by a bridge.

    Addresses: server i 10.231.0.(10+i), the dealer 10.231.0.9, the client side 10.231.0.100. The
    client side is a thread pool whose threads entered the client namespace: use :meth:`call`.
    """

    def __init__(self, *, servers: int, owners: Sequence[str], clients: Sequence[str],
                 serve_flags: Sequence[str] = (), wait: float = 60.0, workers: int = 8) -> None:
        from pricure_crypten.parties.net import credentials

        self.n = servers
        self.tag = f"pricure-{secrets.token_hex(3)}"
        self.ns = {f"s{r}": f"{self.tag}-s{r}" for r in range(servers)}
        self.ns.update(dealer=f"{self.tag}-dealer", client=f"{self.tag}-client", hub=f"{self.tag}-hub")
        self.addr = {f"s{r}": f"{SUBNET}.{10 + r}" for r in range(servers)}
        self.addr.update(dealer=f"{SUBNET}.9", client=f"{SUBNET}.100")
        self.hub_port = {party: f"h-{party}" for party in self.addr}  # the veth end on the bridge
        self.rendezvous = f"tcp://{self.addr['s0']}:{RENDEZVOUS_PORT}"
        self.urls = [f"{self.addr[f's{r}']}:{FRONT_DOOR_PORT}" for r in range(servers)]
        self.wait = wait
        self.serve_flags = list(serve_flags)
        self.processes: dict[str, subprocess.Popen] = {}
        self.limited: list[tuple[str, str]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="pricure-netns-")
        self.root = Path(self._tmp.name)
        credentials.make_ca(self.root / "ca")
        self.ca = self.root / "ca" / "ca.pem"
        for r in range(servers):
            credentials.make_server_cert(self.root / "ca", self.addr[f"s{r}"], self.root / f"s{r}")
        dirs = [self.root / f"d{r}" for r in range(servers)]
        self.tokens: dict[str, Path] = {}
        for role, names in (("owner", owners), ("client", clients)):
            for name in names:
                self.tokens[name] = self.root / f"{name}.token"
                credentials.add_credential(role=role, identity=name, token_file=self.tokens[name], data_dirs=dirs)
        self._pool: ThreadPoolExecutor | None = None
        self._workers = workers

    # -- the network --

    def _network(self) -> None:
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

    def link(self, party: str, up: bool) -> None:
        """Set the veth of ``party`` (e.g. "s1") inside its namespace up or down (a cut link)."""
        ip("-n", self.ns[party], "link", "set", IFACE, "up" if up else "down")

    def limit(self, rate: str = "100mbit", burst: str = "32kbit", latency: str = "50ms") -> None:
        """tbf on both ends of every server's veth: a ``rate`` full-duplex link per server."""
        for r in range(self.n):
            for ns, dev in ((self.ns[f"s{r}"], IFACE), (self.ns["hub"], self.hub_port[f"s{r}"])):
                ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                   "burst", burst, "latency", latency)
                self.limited.append((ns, dev))

    def unlimit(self) -> None:
        while self.limited:
            ns, dev = self.limited.pop()
            ip("netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)

    def qdisc_stats(self) -> list[dict]:
        """Bytes, drops and overlimits of every tbf this deployment added."""
        out = []
        for ns, dev in self.limited:
            for q in json.loads(ip("netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout):
                if q.get("kind") == "tbf":
                    out.append({"ns": ns.removeprefix(self.tag + "-"), "dev": dev, "bytes": q.get("bytes"),
                                "drops": q.get("drops"), "overlimits": q.get("overlimits")})
        return out

    def tcp_throughput(self, src: str, dst: str, megabytes: int = 20) -> float:
        """Raw TCP goodput (bit/s) from party ``src`` to party ``dst``: a check that the limit is real."""
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

    def counters(self) -> dict[str, dict[str, int]]:
        """Bytes sent/received by every party on its veth (its own end, inside its namespace)."""
        out = {}
        for party in self.addr:
            stats = json.loads(ip("-n", self.ns[party], "-s", "-j", "link", "show", "dev", IFACE).stdout)[0]
            s = stats["stats64"]
            out[party] = {"tx_bytes": int(s["tx"]["bytes"]), "rx_bytes": int(s["rx"]["bytes"])}
        return out

    # -- the parties --

    def serve_args(self, rank: int) -> list[str]:
        return ["serve", "--rank", str(rank), "--servers", str(self.n), "--rendezvous", self.rendezvous,
                "--listen", self.urls[rank], "--data-dir", str(self.root / f"d{rank}"),
                "--cert", str(self.root / f"s{rank}" / "server.pem"),
                "--key", str(self.root / f"s{rank}" / "server.key"), "--wait", f"{self.wait:g}", *self.serve_flags]

    def dealer_args(self) -> list[str]:
        return ["dealer", "--servers", str(self.n), "--rendezvous", self.rendezvous, "--wait", f"{self.wait:g}"]

    def start(self, name: str, party: str, args: list[str]) -> None:
        """``ip netns exec NS python -m pricure_crypten ARGS`` (its own session), gloo on the namespace's veth."""
        env = dict(os.environ, GLOO_SOCKET_IFNAME=IFACE)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[party], sys.executable, "-m", "pricure_crypten", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the supervisor and its party child
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-2500:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.stem}\n{self.log(p.stem)}" for p in sorted(self.root.glob("*.log")))

    def __enter__(self) -> "NetnsDeployment":
        try:
            self._network()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="netns-client",
                                            initializer=enter_netns, initargs=(self.ns["client"],))
            for rank in range(self.n):
                self.start(f"server{rank}", f"s{rank}", self.serve_args(rank))
            self.start("dealer", "dealer", self.dealer_args())
            self.wait_ready(0)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process, delete every namespace (and with them the veths and the bridge)."""
        for name in list(self.processes):
            self.kill(name)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        mine = [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines()
                if line.startswith(self.tag + "-")]
        for name in mine:  # anything still inside (only processes started here): killed by pid
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for name in mine:
            ip("netns", "del", name, check=False)
        self._tmp.cleanup()

    # -- the client side (threads inside the client namespace) --

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._pool is not None
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._pool is not None
        return self._pool.submit(fn, *args, **kwargs)

    def health(self, rank: int) -> dict | None:
        import httpx

        def get() -> dict | None:
            try:
                token = next(iter(self.tokens.values())).read_text().strip()  # details need a credential
                return httpx.get(f"https://{self.urls[rank]}/v1/health", timeout=2,
                                 headers={"Authorization": f"Bearer {token}"},
                                 verify=ssl.create_default_context(cafile=str(self.ca))).json()
            except (httpx.HTTPError, ValueError):
                return None

        return self.call(get)

    def wait_ready(self, owners: int, bound: float = START_BOUND) -> list[dict]:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            states = [self.health(r) for r in range(self.n)]
            if all(s and s["mpc"] == "ready" and len(s["owners_loaded"]) >= owners for s in states):
                return states
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs()}")
            time.sleep(0.3)
        raise RuntimeError(f"the deployment did not come up within {bound:g} s:\n{self.logs()}")

    def upload(self, owner: Any) -> None:
        from pricure_crypten.parties.net.remote import upload_model

        self.call(upload_model, owner, servers=self.urls, credential=self.tokens[owner.name], ca=self.ca)

    def remote(self, client: str, timeout: float = 300.0) -> Any:
        """A RemoteEnsemble; use it only inside :meth:`call` / :meth:`submit` (its sockets are made there)."""
        from pricure_crypten.parties.net.remote import RemoteEnsemble

        return RemoteEnsemble(servers=self.urls, credential=self.tokens[client], ca=self.ca, timeout=timeout)

    def status(self, rank: int, client: str) -> Any:
        from pricure_crypten.privacy.accounting import PrivacyLedger

        with PrivacyLedger(self.root / f"d{rank}" / "ledger.sqlite3", total_epsilon=math.inf,
                           read_only=True, record_policy=False) as ledger:
            return ledger.status(client)


# ---------------------------------------------------------------- the benchmark


def _phase(d: NetnsDeployment, x: Any, chunks: list[range], clients: int) -> dict:
    import numpy as np

    before_health = [d.health(r) for r in range(d.n)]
    before_wire = d.counters()
    labels = np.full(len(x), -2)
    errors: list[str] = []

    def work(c: int) -> None:
        with d.remote(f"client{c}") as remote:
            for chunk in chunks[c::clients]:
                try:
                    labels[chunk.start:chunk.stop] = remote.predict(x[chunk.start:chunk.stop]).labels
                except Exception as error:  # noqa: BLE001
                    errors.append(str(error))

    t0 = time.perf_counter()
    for future in [d.submit(work, c) for c in range(clients)]:
        future.result()
    seconds = time.perf_counter() - t0
    after_health = [d.health(r) for r in range(d.n)]
    after_wire = d.counters()
    delta = lambda key, r: after_health[r]["totals"][key] - before_health[r]["totals"][key]
    return {
        "seconds": seconds, "seconds_per_query": seconds / len(x), "errors": errors[:3],
        "batches": after_health[0]["batches"] - before_health[0]["batches"],
        "mpc_seconds_server0": delta("mpc_seconds", 0),
        "mpc_bytes_per_server": [delta("bytes", r) for r in range(d.n)],
        "mpc_rounds_server0": delta("rounds", 0),
        "wire_bytes": {p: {k: after_wire[p][k] - before_wire[p][k] for k in after_wire[p]} for p in after_wire},
        "labels": labels,
    }


def main(argv: Sequence[str] | None = None) -> None:
    import numpy as np

    from benchmarks.deployment import owners as make_owners
    from benchmarks.netmodel import Network, estimate_batch_seconds

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--owners", type=int, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--rate", default="100mbit", help="tbf rate on every server link (tc syntax)")
    p.add_argument("--rate-bits", type=float, default=100e6, help="the same rate in bit/s, for the model")
    args = p.parse_args(argv)
    reason = available()
    if reason:
        sys.exit(f"benchmarks.netns: {reason}")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # cleaned up by the finally below, like Ctrl-C
    owners = make_owners(args.owners)
    x = np.random.default_rng(0).normal(size=(args.queries, owners[0].input_shape[0]))
    chunks = [range(s, min(s + args.batch, args.queries)) for s in range(0, args.queries, args.batch)]
    result: dict[str, Any] = {"servers": args.servers, "owners": args.owners, "clients": args.clients,
                              "queries": args.queries, "batch": args.batch, "deployment": "netns",
                              "rate": args.rate}
    before = ip("netns", "list").stdout
    d = NetnsDeployment(servers=args.servers, owners=[o.name for o in owners],
                        clients=[f"client{c}" for c in range(args.clients)],
                        serve_flags=["--epsilon", "inf", "--max-batch", "256"])
    try:
        t0 = time.perf_counter()
        d.__enter__()
        result["start_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for owner in owners:
            d.upload(owner)
        d.wait_ready(len(owners))
        result["upload_seconds"] = time.perf_counter() - t0
        unlimited = _phase(d, x, chunks, args.clients)
        result["tcp_bits_per_second_s1_to_s0_unlimited"] = d.tcp_throughput("s1", "s0", megabytes=200)
        d.limit(args.rate)
        result["tbf"] = f"tc qdisc add dev VETH root tbf rate {args.rate} burst 32kbit latency 50ms " \
                        "(both ends of every server's veth)"
        result["tcp_bits_per_second_s1_to_s0_limited"] = d.tcp_throughput("s1", "s0")
        limited = _phase(d, x, chunks, args.clients)
        result["tbf_stats"] = d.qdisc_stats()
        d.unlimit()
    finally:
        d.close()
    after = ip("netns", "list").stdout
    result["namespaces_removed"] = before == after

    labels_equal = bool(np.array_equal(unlimited.pop("labels"), limited.pop("labels")))
    rate = args.rate_bits
    per_server = limited["mpc_bytes_per_server"]
    # CrypTen counts, per party, the bytes it sends AND receives; summed over the parties they are counted twice
    system_bytes = sum(per_server) / 2
    link = Network("tbf", rtt_seconds=0.0, bandwidth_bits_per_second=rate)
    # benchmarks/netmodel.py as written: every server's count summed, as if over ONE shared link (conservative)
    model_shared = estimate_batch_seconds(unlimited["seconds"], limited["mpc_rounds_server0"], sum(per_server), link)
    # one full-duplex link per server: each link carries what its server sends (half its count), in parallel
    model_per_link = estimate_batch_seconds(unlimited["seconds"], limited["mpc_rounds_server0"],
                                            max(per_server) / 2, link)
    # the same from the bytes that actually crossed the busiest limited direction (TCP/IP, TLS, dealer included)
    wire_busiest = max(max(w["tx_bytes"], w["rx_bytes"]) for p, w in limited["wire_bytes"].items() if p[0] == "s")
    model_wire = unlimited["seconds"] + 8.0 * wire_busiest / rate
    result.update(
        unlimited=unlimited, limited=limited, labels_equal=labels_equal,
        mpc_bytes_system=system_bytes,
        measured_slowdown=limited["seconds"] / unlimited["seconds"],
        model_seconds_per_link=model_per_link, model_slowdown_per_link=model_per_link / unlimited["seconds"],
        model_seconds_shared_link=model_shared, model_slowdown_shared_link=model_shared / unlimited["seconds"],
        wire_bytes_busiest_server_direction=wire_busiest,
        model_seconds_wire=model_wire, model_slowdown_wire=model_wire / unlimited["seconds"],
        rounds_term_at_40ms_rtt=limited["mpc_rounds_server0"] * 0.040,
        same_batching=unlimited["batches"] == limited["batches"],
    )
    print(json.dumps(result), flush=True)
    q = args.queries
    print(f"\n{args.servers} servers + dealer in separate network namespaces; {args.owners} owners, "
          f"{args.clients} concurrent clients, {q} queries in batches of {args.batch}; labels equal: {labels_equal}; "
          f"namespaces removed: {result['namespaces_removed']}", file=sys.stderr)
    print(f"{'link':<26}{'seconds':>9}{'s/query':>10}{'MPC bytes (system)':>20}{'rounds':>8}", file=sys.stderr)
    for name, ph in (("unlimited veth", unlimited), (f"tbf {args.rate} per server", limited)):
        print(f"{name:<26}{ph['seconds']:>9.2f}{ph['seconds_per_query']:>10.4f}"
              f"{sum(ph['mpc_bytes_per_server']) / 2:>20,.0f}{ph['mpc_rounds_server0']:>8}", file=sys.stderr)
    if not result["same_batching"]:
        print(f"note: the runs packed the clients' requests into {unlimited['batches']} and {limited['batches']} "
              "MPC batches: compare seconds only with the same packing (use more --queries)", file=sys.stderr)
    print(f"raw TCP s1 -> s0: {result['tcp_bits_per_second_s1_to_s0_unlimited'] / 1e6:,.0f} Mbit/s unlimited, "
          f"{result['tcp_bits_per_second_s1_to_s0_limited'] / 1e6:,.1f} Mbit/s under tbf", file=sys.stderr)
    print(f"measured slowdown {result['measured_slowdown']:.2f}x; model (exact bytes, rounds x 0 latency): "
          f"per-link {model_per_link:.2f} s ({result['model_slowdown_per_link']:.2f}x), one shared link "
          f"{model_shared:.2f} s ({result['model_slowdown_shared_link']:.2f}x); from the wire bytes of the "
          f"busiest direction {model_wire:.2f} s ({result['model_slowdown_wire']:.2f}x)", file=sys.stderr)


if __name__ == "__main__":
    main()

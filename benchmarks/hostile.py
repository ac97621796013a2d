"""``python -m benchmarks.hostile``: faults and attacks on a running deployment, and what each party saw.

One deployment (``pricure serve`` x2 + ``pricure dealer``, each its own
process on 127.0.0.x, as :class:`~pricure_crypten.experiments.launch.Deployment`
starts them; Laplace votes at epsilon 1, no budget limit, ``--header-timeout 3``,
``--incomplete-after 3``, ``--max-client-requests 8``, ``--max-batch 64``),
three honest owners (MLPs 6-8-3). Throughout, an honest client ("bob") asks
for 2 labels at a time in a loop. Each attack or fault below runs in turn;
for each one the row records:

* what the attacker (or the faulty party's user) saw: HTTP codes, errors;
* what the other clients saw: bob's answers and failures during the attack
  window and his slowest call (against his median before any attack);
* recovery: seconds from the start of the fault until the system is back to
  normal (bob answered by a call that started after the fault; the bad model
  quarantined; every slow connection cut; a withdrawn owner out of the batch);
* the server party's peak memory (VmHWM) growth, for the bombs;
* what was charged to the attacker on the servers' ledgers.

Writes ``docs/results/hostile.csv`` and ``hostile.json``. Numbers, not
assertions (the tests assert the behaviour: ``tests/test_net_attacks.py``,
``tests/test_net_consistency.py``, ``tests/test_net_hardening.py``); seconds
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import ssl
import statistics
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from pricure_crypten import ModelOwner
from pricure_crypten.experiments.attacks.bundles import huge_input_shape, unknown_option, zip_bomb
from pricure_crypten.experiments.launch import Deployment
from pricure_crypten.parties.net.remote import RemoteError, withdraw_model
from pricure_crypten.parties.net.wire import bundle_to_bytes, encode_array

from .env import REPO_ROOT, RunStart
from .report import write_csv, write_json

FEATURES, CLASSES = 6, 3
SHAPE = dict(features=FEATURES, classes=CLASSES)  # of the hostile bundles
HEADER_TIMEOUT, INCOMPLETE, CLIENT_CAP = 3.0, 3.0, 8
COLUMNS = [
    {"column": "attack", "header": "fault or attack"},
    {"column": "attacker_saw", "header": "what the attacker saw"},
    {"column": "others_saw", "header": "what other clients saw (bob, 2 rows per call)"},
    {"column": "recovery_s", "header": "recovery (s)", "format": ".1f"},
    {"column": "peak_growth_mib", "header": "server peak memory growth (MiB)"},
    {"column": "charged", "header": "charged to the attacker"},
]


def _owners() -> list[ModelOwner]:
    owners = []
    for i in range(3):
        torch.manual_seed(7 + i)
        owners.append(ModelOwner(name=f"owner{i}", model=nn.Sequential(nn.Linear(FEATURES, 8), nn.ReLU(),
                                                                      nn.Linear(8, CLASSES)),
                                 input_shape=(FEATURES,), num_classes=CLASSES))
    return owners


class Honest:
    """Bob: 2-row predictions in a loop; every call's (start, end, error or None)."""

    def __init__(self, d: Deployment) -> None:
        self.d, self.calls, self.stop = d, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(1)
        with self.d.remote("bob", timeout=60) as bob:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    bob.predict(rng.normal(size=(2, FEATURES)).astype(np.float32))
                    error = None
                except (RemoteError, OSError, ValueError) as err:
                    error = str(err).splitlines()[0]
                self.calls.append((start, time.monotonic(), error))
                time.sleep(0.2 if error is None else 0.5)

    def window(self, begin: float, end: float) -> list[tuple[float, float, str | None]]:
        return [c for c in self.calls if c[1] >= begin and c[0] <= end]

    def answered_after(self, t: float, bound: float = 180.0) -> float:
        """Seconds from ``t`` to the end of bob's first successful call that started after ``t``."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            ok = [c for c in self.calls if c[0] >= t and c[2] is None]
            if ok:
                return ok[0][1] - t
            time.sleep(0.1)
        return float("nan")

    def summary(self, begin: float, end: float, baseline: float) -> str:
        calls = self.window(begin, end)
        failed = [c for c in calls if c[2] is not None]
        slowest = max((c[1] - c[0] for c in calls), default=float("nan"))
        text = f"{len(calls) - len(failed)} answered, {len(failed)} failed; slowest {slowest:.1f} s " \
               f"(median before: {baseline:.1f} s)"
        if failed:
            text += f"; failures: \"{failed[0][2][:110]}\""
        return text


def _party(d: Deployment, rank: int) -> int:
    import psutil

    children = psutil.Process(d.processes[f"server{rank}"].pid).children()
    return children[0].pid


def _hwm_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _http(d: Deployment, rank: int, who: str) -> Any:
    import httpx

    token = d.tokens[who].read_text().strip()
    return httpx.Client(base_url=f"https://{d.urls[rank]}", timeout=60, headers={"Authorization": f"Bearer {token}"},
                        verify=ssl.create_default_context(cafile=str(d.ca)))


def _charged(d: Deployment, who: str) -> str:
    states = [d.status(rank, who) for rank in range(2)]
    spent = [f"{s.answered_queries} answered, {s.reserved_queries} reserved" for s in states]
    return "nothing" if all(s.answered_queries == 0 and s.reserved_queries == 0 for s in states) else \
        "; ".join(f"server {i}: {t}" for i, t in enumerate(spent))


def _wait(condition: Callable[[], bool], bound: float = 120.0) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def run(d: Deployment, owners: list[ModelOwner], bob: Honest, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    time.sleep(3.0)
    baseline = statistics.median(c[1] - c[0] for c in bob.calls if c[2] is None)

    def row(attack: str, saw: str, begin: float, end: float, recovery: float, charged: str,
            growth: Any = "-") -> None:
        rows.append({"attack": attack, "attacker_saw": saw, "others_saw": bob.summary(begin, end, baseline),
                     "recovery_s": recovery, "peak_growth_mib": growth, "charged": charged})
        print(f"hostile: {attack}: {rows[-1]}", flush=True)

    # 1. bombs, uploaded by a registered owner to server 0
    scale = 64 if quick else 1
    for name, body, in (
            (f"deflate bomb ({385 // scale} MiB inflated)",
             zip_bomb(method=zipfile.ZIP_DEFLATED, inflated=(385 << 20) // scale, features=FEATURES, classes=CLASSES)),
            (f"bzip2 bomb ({256 // scale} MiB inflated)",
             zip_bomb(method=zipfile.ZIP_BZIP2, inflated=(256 << 20) // scale, features=FEATURES, classes=CLASSES)),
            ("declared input shape 1x8192x8192", huge_input_shape(classes=CLASSES))):
        party = _party(d, 0)
        before = _hwm_mib(party)
        begin = time.monotonic()
        with _http(d, 0, "evil") as evil:
            response = evil.put("/v1/model", content=body, headers={"X-Upload-Id": secrets.token_hex(16)})
        end = time.monotonic()
        time.sleep(1.0)
        row(f"{name}: a {len(body):,}-byte upload", f"HTTP {response.status_code} in {end - begin:.2f} s: "
            f"{response.json()['detail'][:100]}", begin, end + 1.0, 0.0, "-",
            f"{_hwm_mib(party) - before:.1f} (VmHWM {before:.0f} MiB before)")

    # 2. the crash-loop bundle: an unknown layer option (once crash-looped every server)
    begin = time.monotonic()
    codes = []
    for rank in range(2):
        with _http(d, rank, "evil") as evil:
            response = evil.put("/v1/model", content=unknown_option(owners[0], rank=rank, **SHAPE),
                                headers={"X-Upload-Id": secrets.token_hex(16)})
            codes.append(f"HTTP {response.status_code}: {response.json()['detail'][:90]}")
    end = time.monotonic()
    time.sleep(2.0)
    row("crash-loop bundle (unknown layer option), uploaded", f"{codes[0]} (both servers)", begin, end + 2.0,
        0.0, "-")
    # the same bundle already on disk (an older version's upload): quarantined, not a crash loop
    upload_id = secrets.token_hex(16)
    begin = time.monotonic()
    for rank in range(2):
        models = d.root / f"d{rank}" / "models"
        (models / "evil.npz").write_bytes(unknown_option(owners[0], rank=rank, **SHAPE))
        (models / "evil.json").write_text(json.dumps({"owner": "evil", "upload_id": upload_id,
                                                      "input_shape": [FEATURES], "num_classes": CLASSES}))
    _wait(lambda: all((d.health(r) or {}).get("owners_quarantined") == ["evil"] for r in range(2)))
    quarantined = time.monotonic() - begin
    with _http(d, 0, "evil") as evil:
        status = evil.get("/v1/model").json()
    row("crash-loop bundle already on disk", f"GET /v1/model: {status.get('status')}: "
        f"{str(status.get('reason'))[:90]}", begin, begin + quarantined, quarantined, "-")
    withdraw_model(servers=d.urls, credential=d.tokens["evil"], ca=d.ca)

    # 3. head-of-line flood: full-size shares to server 0 only (never complete, never charged)
    stop, seen = threading.Event(), {}

    def flood() -> None:
        share = encode_array(np.zeros((64, FEATURES), np.int64))
        with _http(d, 0, "mallory") as mallory:
            while not stop.is_set():
                code = mallory.post("/v1/queries", json={"request_id": secrets.token_hex(16), "share": share})
                seen[code.status_code] = seen.get(code.status_code, 0) + 1
                time.sleep(0.02)

    attacker = threading.Thread(target=flood, daemon=True)
    begin = time.monotonic()
    attacker.start()
    time.sleep(10.0 if not quick else 4.0)
    stop.set()
    attacker.join(timeout=30)
    end = time.monotonic()
    row("head-of-line flood: 64-row shares to server 0 only, for "
        f"{end - begin:.0f} s", ", ".join(f"HTTP {k} x{v}" for k, v in sorted(seen.items())), begin, end, 0.0,
        _charged(d, "mallory"))

    # 4. slow clients: unfinished headers after TLS, and silent TCP connections (no TLS handshake)
    host, port = d.urls[0].split(":")
    tls = ssl.create_default_context(cafile=str(d.ca))
    begin = time.monotonic()
    slow = []
    for _ in range(40):
        sock = tls.wrap_socket(socket.create_connection((host, int(port)), timeout=60), server_hostname=host)
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    silent = [socket.create_connection((host, int(port)), timeout=60) for _ in range(40)]
    closed = []
    for sock in slow + silent:
        try:
            sock.settimeout(max(0.1, begin + 70 - time.monotonic()))
            data = sock.recv(1)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        except OSError:  # timed out: still open
            data = None
        closed.append(time.monotonic() - begin if not data else float("nan"))
    for sock in slow + silent:
        sock.close()
    end = time.monotonic()
    cut_slow = [t for t in closed[:40] if t == t]
    cut_silent = [t for t in closed[40:] if t == t]
    row("slow clients: 40 TLS connections with unfinished headers + 40 TCP connections without a TLS handshake",
        f"{len(cut_slow)}/40 and {len(cut_silent)}/40 cut by the server, after "
        f"{max(cut_slow, default=float('nan')):.1f} s and {max(cut_silent, default=float('nan')):.1f} s "
        f"(--header-timeout {HEADER_TIMEOUT:g})", begin, end, max(closed), "-")

    # 5. a withdrawal while another owner's new upload is on server 0 only
    with _http(d, 0, "owner1") as owner1:
        data = bundle_to_bytes(owners[1].share(num_servers=2)[0], input_shape=(FEATURES,), num_classes=CLASSES)
        owner1.put("/v1/model", content=data, headers={"X-Upload-Id": secrets.token_hex(16)})
    begin = time.monotonic()
    withdraw_model(servers=d.urls, credential=d.tokens["owner2"], ca=d.ca)
    out = _wait(lambda: all("owner2" not in (d.health(r) or {"owners_loaded": ["owner2"]})["owners_loaded"]
                            for r in range(2)))
    gone = time.monotonic() - begin
    loaded = (d.health(0) or {}).get("owners_loaded")
    row("owner2 withdraws while owner1's new upload is on server 0 only",
        f"withdrawn (200); out of the batch on both servers after {gone:.1f} s" if out else "not withdrawn",
        begin, begin + gone, gone, "-")
    print(f"hostile: loaded after the withdrawal: {loaded}", flush=True)

    # 6. timeout cancellation: a client that gives up early
    saw = []
    begin = time.monotonic()
    for timeout in (0.05, 0.3, 1.0, 3.0):
        with d.remote("carol", timeout=timeout) as carol:
            try:
                carol.predict(np.zeros((64, FEATURES), np.float32))
                saw.append(f"{timeout:g} s: answered")
            except RemoteError as error:
                text = str(error)
                kind = ("cancelled, nothing charged" if "was cancelled" in text else
                        "too late: may be charged, never delivered" if "could not be cancelled" in text else
                        text[:80])
                saw.append(f"{timeout:g} s: {kind}")
    end = time.monotonic()
    time.sleep(3.0)
    row("client timeouts of 0.05, 0.3, 1, 3 s (64 rows each)", "; ".join(saw), begin, end, 0.0,
        _charged(d, "carol"))

    # 7. SIGKILL of server 1's party (the OOM killer's signal)
    victim = _party(d, 1)
    begin = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    recovery = bob.answered_after(begin)
    row("SIGKILL of server 1's party (what the OOM killer sends)", "no attacker: a fault; its supervisor logs the "
        "signal and restarts the party", begin, begin + recovery, recovery, "-")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="folder for hostile.csv and hostile.json (default: docs/results)")
    parser.add_argument("--quick", action="store_true", help="bombs 64x smaller, a shorter flood (a smoke test)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    start = RunStart.now()
    owners = _owners()
    flags = ["--epsilon", "1", "--header-timeout", str(HEADER_TIMEOUT), "--incomplete-after", str(INCOMPLETE),
             "--max-client-requests", str(CLIENT_CAP), "--max-batch", "64", "--wait", "60", "--timeout", "30"]
    with Deployment(servers=2, owners=[o.name for o in owners] + ["evil"],
                           clients=["bob", "mallory", "carol"], serve_flags=flags) as d:
        for owner in owners:
            d.upload(owner)
        d.wait_ready(len(owners))
        bob = Honest(d)
        try:
            rows = run(d, owners, bob, args.quick)
        finally:
            bob.stop.set()
            bob.thread.join(timeout=70)
    wall = time.perf_counter() - start.clock
    write_csv(rows, args.out / "hostile.csv")
    write_json({
        "title": "Faults and attacks on a running deployment",
        "command": "python -m benchmarks.hostile" + "".join(f" {a}" for a in argv),
        **start.checkout(),
        **start.stamp(),
        "notes": ("2 servers + dealer as separate pricure processes on 127.0.0.x; 3 owners (6-8-3 MLPs); bob "
                  "asks for 2 labels per call in a loop throughout; each row's window runs from the start of "
                  "the attack to its recovery (or end). Recovery: seconds from the start of the fault until bob "
                  "answered by a call started after it (SIGKILL), the bundle was quarantined on both servers, "
                  "the last slow connection was cut, or the withdrawn owner was out on both servers; 0 where "
                  "nothing needed to recover. Peak memory: growth of server 0's party VmHWM across the upload."),
        "columns": COLUMNS,
    }, args.out / "hostile.json")
    print(f"hostile: {wall:.0f} s; {args.out / 'hostile.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

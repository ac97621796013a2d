"""The README's Deployment walkthrough, run literally from an empty folder on loopback addresses.

The code blocks of README.md marked ``<!-- walkthrough -->`` (bash) or
``<!-- walkthrough: FILE -->`` (a Python file the reader saves) are taken
verbatim and run in order in ONE bash process (``set -e``), as a newcomer
would type them in one shell, in an empty temporary folder. Nothing in them
is rewritten: the only inputs are the environment variables the README
documents for taken ports (``PORT0``, ``PORT1``, ``RDV_PORT``: free ports
here), and ``pricure``/``python`` on ``PATH`` resolving to this interpreter
(two one-line shims, as an installed package would provide).

Asserted: every block succeeds; the first answer is 10 labels in {0, 1}
(CLI) and again from the Python snippet; each server's ledger shows alice's
20 answered queries, none reserved, and a total epsilon in (0, 20] (20
Laplace answers at epsilon 1 each: 20 is their basic composition, an upper
bound under any accountant); after ``pricure admin revoke`` alice's query is
refused with HTTP 401 on a running server; after the stop block no process
of the walkthrough is left. Every process started here is in the script's
session and is killed (the whole process group) in a ``finally``.

``pytest tests/test_walkthrough.py -s`` prints the seconds from the first
command to the first answer and per block.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pricure_crypten.experiments.launch import free_port
from tests.helpers import stub_front_door

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- walkthrough(?::\s*(?P<file>[\w.-]+))? -->\n```(?P<lang>bash|python)\n(?P<code>.*?)```",
                   re.S)
BOUND = 420.0  # seconds for the whole walkthrough on 2 busy cores; a hang fails the test instead of blocking CI


def walkthrough_blocks(text: str) -> list[tuple[str | None, str, str]]:
    """(file name or None, language, code) of each marked block, in README order."""
    blocks = [(m["file"], m["lang"], m["code"]) for m in BLOCK.finditer(text)]
    for name, lang, _ in blocks:
        if (lang == "python") != (name is not None):
            raise AssertionError(f"a walkthrough {lang} block must {'' if lang == 'python' else 'not '}name a file")
    return blocks


def walkthrough_script(blocks: list[tuple[str | None, str, str]]) -> str:
    """One bash script: each bash block verbatim, each Python block saved under its name (a quoted heredoc)."""
    parts = ["set -e"]
    for index, (name, _, code) in enumerate(blocks):
        parts.append(f"echo '@@ block {index}'")
        if name is None:
            parts.append(code)
        else:
            assert "PRICURE_WALKTHROUGH_EOF" not in code
            parts.append(f"cat > {name} <<'PRICURE_WALKTHROUGH_EOF'\n{code}PRICURE_WALKTHROUGH_EOF")
    parts.append("echo '@@ done'")
    return "\n".join(parts) + "\n"


def test_walkthrough_blocks_are_found():
    """The marks cover every step: files, admin, serve, upload, CLI and Python query, ledger, revoke, stop."""
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    code = "\n".join(c for _, _, c in blocks)
    for needed in ("torch.save(model", "np.save(", "pricure admin ca", "pricure admin add", "pricure serve",
                   "pricure dealer", "pricure owner upload", "pricure query", "RemoteEnsemble(",
                   "pricure budget", "pricure admin revoke", "kill "):
        assert needed in code, f"the README walkthrough lost its {needed!r} step"
    assert [n for n, _, _ in blocks if n] == ["make_files.py", "client.py"]


def _shims(folder: Path) -> Path:
    folder.mkdir()
    for name, command in (("pricure", f'"{sys.executable}" -m pricure_crypten'), ("python", f'"{sys.executable}"')):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.mpc
def test_readme_walkthrough(tmp_path):
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    work = tmp_path / "walkthrough"
    work.mkdir()
    assert not any(work.iterdir())
    (tmp_path / "walkthrough.sh").write_text(walkthrough_script(blocks))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_shims(tmp_path / "bin")), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(PORT0=str(free_port("127.0.0.2")), PORT1=str(free_port("127.0.0.3")),
               RDV_PORT=str(free_port("0.0.0.0")), OMP_NUM_THREADS="1")  # the rendezvous binds every interface
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    script = subprocess.Popen(["bash", str(tmp_path / "walkthrough.sh")], cwd=work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def read() -> None:
        for line in script.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        try:
            code = script.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            code = None
        reader.join(timeout=10)
        output = "\n".join(f"{t:6.1f} {line}" for t, line in lines)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(work.glob("*.log")))
        assert code == 0, f"the walkthrough {'hung' if code is None else f'failed ({code})'}:\n{output}\n{logs}"
        first = next(((t, line) for t, line in lines if line.startswith('{"labels":')), None)
        assert first is not None, output
        labels = json.loads(first[1])["labels"]
        assert len(labels) == 10 and set(labels) <= {0, 1}, labels
        python = [line for _, line in lines if line.startswith("labels from Python:")]
        assert len(python) == 1, output
        labels = json.loads(python[0].split(":", 1)[1])
        assert len(labels) == 10 and set(labels) <= {0, 1}, labels
        # the ledgers: alice's 20 answers on each server, nothing left reserved
        answered = [int(m[1]) for _, line in lines if (m := re.match(r"answered\s+(\d+) queries", line))]
        reserved = [int(m[1]) for _, line in lines if (m := re.match(r"reserved\s+(\d+) queries", line))]
        spent = [float(m[1]) for _, line in lines if (m := re.match(r"spent\s+epsilon (\S+),", line))]
        assert answered == [20, 20] and reserved == [0, 0], output
        assert len(spent) == 2 and all(0 < e <= 20 + 1e-9 for e in spent), output
        # the revoked token: refused by a running server, named as such
        assert "alice's query was refused" in output and "HTTP 401" in output, output
        marks = {line: t for t, line in lines if line.startswith("@@ ")}
        print(f"\nwalkthrough: first answer {first[0]:.1f} s after the first command; whole walkthrough "
              f"{marks['@@ done']:.1f} s")
        times = [marks[f"@@ block {i}"] for i in range(len(blocks))] + [marks["@@ done"]]
        print("seconds per block:", ", ".join(f"{i}: {b - a:.1f}" for i, (a, b) in enumerate(zip(times, times[1:]))))
        # stopped: the processes named in the pid files, their parties and anything else of the session are gone
        pids = [int((work / f"{name}.pid").read_text()) for name in ("s0", "s1", "dealer")]
        assert not [pid for pid in pids if _alive(pid)], output
        with pytest.raises(ProcessLookupError):
            os.killpg(script.pid, 0)
    finally:
        try:
            os.killpg(script.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if script.poll() is None:
            script.wait(timeout=10)


def test_the_front_door_bounds_the_tls_handshake(tmp_path):
    """Issue 18: a peer that connects and never sends its TLS ClientHello was held for asyncio's 60 s.

    A front door alone (the real app and server, a stand-in node) with a 2 s
    header timeout, which also bounds the handshake: 6 raw TCP connections
    that send nothing are closed by the server within 2-12 s (the upper end
    leaves room for a loaded machine, far below 60 s), and a real client is
    answered meanwhile. Fails with uvicorn's plain ``Server`` (held 60 s).
    """
    import socket

    import httpx

    front, _, port, tls = stub_front_door(tmp_path, header_timeout=2.0)
    socks = []
    try:
        start = time.monotonic()
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(6)]
        answer = httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=tls, timeout=10)
        assert answer.json() == {"alive": True, "details": False}
        closed = []
        for sock in socks:
            try:
                data = sock.recv(1)  # b"": the server closed it; a reset is a close too
            except ConnectionResetError:
                data = b""
            assert data == b""
            closed.append(time.monotonic() - start)
        print(f"\nhandshake bound 2 s: silent connections closed after {min(closed):.1f}-{max(closed):.1f} s")
        assert 1.5 < min(closed) and max(closed) < 12.0, closed
    finally:
        for sock in socks:
            sock.close()
        front.stop()


def test_admin_revoke_removes_only_that_identity_and_refuses_an_unknown_one(tmp_path):
    """``pricure admin revoke``: the identity's hash goes from every data dir, the others stay, the file is read
    back as a server would (CredentialTable); an identity registered nowhere is an error, nothing written."""
    from pricure_crypten.parties.net.credentials import CredentialTable, add_credential, read_token, revoke_credential

    dirs = [tmp_path / "d0", tmp_path / "d1"]
    for role, name in (("client", "alice"), ("client", "bob"), ("owner", "alice")):
        add_credential(role=role, identity=name, token_file=tmp_path / f"{role}-{name}.token", data_dirs=dirs)
    tokens = {(r, n): read_token(tmp_path / f"{r}-{n}.token") for r, n in
              (("client", "alice"), ("client", "bob"), ("owner", "alice"))}
    assert revoke_credential(identity="alice", role="client", data_dirs=dirs) == 2
    for d in dirs:
        table = CredentialTable(d)
        assert table.lookup(tokens[("client", "alice")]) is None
        assert table.lookup(tokens[("client", "bob")]) == ("client", "bob")
        assert table.lookup(tokens[("owner", "alice")]) == ("owner", "alice")
    before = [(d / "credentials.json").read_bytes() for d in dirs]
    with pytest.raises(ValueError, match="client alice has no credential"):
        revoke_credential(identity="alice", role="client", data_dirs=dirs)
    assert [(d / "credentials.json").read_bytes() for d in dirs] == before

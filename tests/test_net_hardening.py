"""Hostile input to the networked mode, checked without starting a deployment (seconds).

Each test is an attack or a fault from issue 18 and fails on the code before
the fix: an uploaded bundle with an unknown layer option, compressed or
bomb-like archive entries, declared shapes that would allocate gigabytes,
int64-overflowing or deeply nested JSON, a token file reused for another
identity, a missing token/CA file sent as a token, an ``http://`` server, a
supervisor that gives up on a party killed by a signal, per-client caps and
the request log's retention. The same attacks against a live deployment
(server alive, nothing charged, other clients answered) are in
``tests/test_net_attacks.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from pricure_crypten import ModelOwner
from pricure_crypten.mpc import layers as mpc_layers
from pricure_crypten.mpc.layers import LayerSpec, Square, specs_output_shape
from pricure_crypten.parties.net import wire
from pricure_crypten.parties.net.wire import WireError, bundle_from_bytes, bundle_to_bytes, decode_array
from tests.helpers import mlp_owners, stub_front_door, tls_closed

FEATURES, CLASSES = 6, 3


def _owner(model: nn.Module | None = None, shape: tuple = (FEATURES,)) -> ModelOwner:
    if model is None:
        return mlp_owners(1, features=FEATURES, classes=CLASSES, hidden=(8,), names="o")[0]
    return ModelOwner(name="o", model=model, input_shape=shape, num_classes=CLASSES)


def _bundle_bytes(owner: ModelOwner | None = None) -> bytes:
    owner = owner or _owner()
    return bundle_to_bytes(owner.share(num_servers=2)[0], input_shape=owner.input_shape,
                           num_classes=owner.num_classes)


def _entries(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _header(data: bytes) -> dict:
    return json.loads(_entries(data)["header"].tobytes())


def _rebuild(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return out.getvalue()


def _bomb(method: int, payload_bytes: int, *, header: dict | None = None) -> bytes:
    """A zip whose parameter entry inflates to ``payload_bytes`` of zeros (written in 1 MiB chunks)."""
    out = io.BytesIO()
    header = header or _header(_bundle_bytes())
    with zipfile.ZipFile(out, "w", compression=method) as archive:
        raw = io.BytesIO()  # the header stored as np.savez writes it; only the parameter is compressed
        np.lib.format.write_array(raw, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        archive.writestr("header.npy", raw.getvalue(), compress_type=zipfile.ZIP_STORED)
        with archive.open("p0_0.npy", "w", force_zip64=True) as handle:
            count = payload_bytes // 8
            np.lib.format.write_array_header_1_0(handle, {"descr": "<i8", "fortran_order": False,
                                                          "shape": (count,)})
            chunk = bytes(1 << 20)
            for _ in range(payload_bytes // len(chunk)):
                handle.write(chunk)
    return out.getvalue()


def _peak_mib(action) -> tuple[float, Exception | None]:
    """Peak Python/numpy heap (tracemalloc) in MiB while ``action`` runs, and what it raised."""
    tracemalloc.start()
    raised = None
    try:
        action()
    except Exception as error:  # noqa: BLE001 - returned to the test
        raised = error
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2 ** 20, raised


# -- uploads: a closed schema --

def test_an_unknown_layer_option_is_refused_naming_it():
    """Issue 18: an unknown option passed the dry run and crashed every party at load (TypeError)."""
    data = _bundle_bytes()
    header, arrays = _header(data), {k: v for k, v in _entries(data).items() if k != "header"}
    header["layers"][0]["options"] = [["groups", 2]]
    with pytest.raises(WireError, match="unknown option 'groups'"):
        bundle_from_bytes(_rebuild(header, arrays), owner="evil")
    header["layers"][0]["options"] = []
    header["layers"][1]["kind"] = "softmax"
    with pytest.raises(WireError, match="unknown layer kind 'softmax'"):
        bundle_from_bytes(_rebuild(header, arrays), owner="evil")


def test_every_layer_option_is_checked_by_the_schema():
    conv = _owner(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                                nn.Linear(2 * 3 * 3, CLASSES)), shape=(1, 8, 8))
    layers = conv.share(num_servers=2)[0].layers
    assert specs_output_shape(layers, (1, 8, 8)) == (CLASSES,)
    stride = dict(layers[0].options)
    bad = [
        (dict(stride, stride=(0, 1)), "option 'stride' must be a pair of integers in \\[1, 64\\]"),
        (dict(stride, padding=(1, True)), "option 'padding'"),
        ({k: v for k, v in stride.items() if k != "dilation"}, "option 'dilation' is missing"),
    ]
    for options, message in bad:
        broken = LayerSpec("conv2d", tuple(options.items()), layers[0].params)
        with pytest.raises(ValueError, match=message):
            mpc_layers.check_layer(broken)
    with pytest.raises(ValueError, match="needs 2 parameters"):
        mpc_layers.check_layer(LayerSpec("linear", (), layers[-1].params[:1]))


def test_a_model_with_square_activations_can_be_uploaded():
    """Issue 18: the server did not know the kind 'square', so MPC-friendly models could not be uploaded."""
    owner = _owner(nn.Sequential(nn.Linear(FEATURES, 8), Square(), nn.Linear(8, CLASSES)))
    bundle, shape, classes = bundle_from_bytes(_bundle_bytes(owner), owner="o")
    assert [layer.kind for layer in bundle.layers] == ["linear", "square", "linear"]
    assert (shape, classes) == ((FEATURES,), CLASSES)


# -- uploads: bombs --

@pytest.mark.parametrize("method,name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_DEFLATED, "deflate")])
def test_compressed_entries_are_refused_without_inflating_them(method, name):
    """A 64 MiB entry compressed to a few KiB: refused by its compression method, read memory stays small.

    Before the fix np.load inflated every entry first (peak >= 64 MiB here, and
    up to ~1000x the upload for deflate). The bound (8 MiB of traced heap) is
    on a deterministic allocation: the archive itself is a few KiB.
    """
    bomb = _bomb(method, 64 << 20)
    assert len(bomb) < 512 << 10
    peak, raised = _peak_mib(lambda: bundle_from_bytes(bomb, owner="evil"))
    print(f"{name} bomb of {len(bomb)} bytes (64 MiB inflated): peak traced heap {peak:.1f} MiB, {raised}")
    assert peak < 8
    assert isinstance(raised, WireError) and f"compressed ({name})" in str(raised)


def test_declared_shapes_are_capped_before_anything_is_allocated():
    data = _bundle_bytes()
    header, arrays = _header(data), {k: v for k, v in _entries(data).items() if k != "header"}
    huge = dict(header, input_shape=[1, 8192, 8192])  # 256 MiB of float32 in the old dry run
    with pytest.raises(WireError, match="elements per example, more than the limit"):
        bundle_from_bytes(_rebuild(huge, arrays), owner="evil")
    with pytest.raises(WireError, match="input_shape"):
        bundle_from_bytes(_rebuild(dict(header, input_shape=[2 ** 63, 2 ** 63]), arrays), owner="evil")
    # a parameter whose .npy header declares 2**40 elements (no data behind it)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("header.npy", _entries_raw(data)["header.npy"])
        with archive.open("p0_0.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<i8", "fortran_order": False,
                                                          "shape": (2 ** 40,)})
    with pytest.raises(WireError, match="declares 1099511627776 elements"):
        bundle_from_bytes(out.getvalue(), owner="evil")
    # parameters over the server's cap
    with pytest.raises(WireError, match="more than the .* left"):
        bundle_from_bytes(data, owner="o", limits=wire.BundleLimits(max_params=20))
    # a layer whose output per example is over the activation cap (a conv blowing up a small input)
    wide = _owner(nn.Sequential(nn.Conv2d(1, 64, 1, padding=64), nn.Flatten(), nn.Linear(64 * 136 * 136, CLASSES)),
                  shape=(1, 8, 8))
    with pytest.raises(WireError, match="more than the limit 100000"):
        bundle_from_bytes(_bundle_bytes(wide), owner="o", limits=wire.BundleLimits(max_activation=100_000))


def _entries_raw(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_an_archive_with_a_huge_directory_is_refused_before_it_is_read():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(2000):
            archive.writestr(f"x{i}", b"")
    with pytest.raises(WireError, match="declares 2000 entries"):
        bundle_from_bytes(out.getvalue(), owner="evil")


def test_the_dry_run_allocates_nothing_for_large_declared_activations():
    """The shape dry run is on torch's meta device: a (1, 64, 4096, 4096) conv output costs no memory."""
    layers = [LayerSpec("conv2d", (("stride", (1, 1)), ("padding", (1, 1)), ("dilation", (1, 1))),
                        (np.zeros((64, 1, 3, 3), np.int64), np.zeros(64, np.int64))), LayerSpec("flatten")]
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert specs_output_shape(layers, (1, 4096, 4096)) == (64 * 4096 * 4096,)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 256  # a real run would need 4 GiB for the output alone
    with pytest.raises(ValueError, match="more than the limit"):
        specs_output_shape(layers, (1, 4096, 4096), max_activation=1 << 22)


# -- JSON --

def test_int64_overflowing_shapes_and_deep_json_are_clear_errors():
    """Issue 18: both gave HTTP 500 with a traceback."""
    with pytest.raises(WireError, match="more than the limit"):
        decode_array({"dtype": "int64", "shape": [2 ** 40, 2 ** 40], "data": ""}, name="share")
    with pytest.raises(WireError, match="more than the limit"):
        decode_array({"dtype": "int64", "shape": [2 ** 64 + 1], "data": ""}, name="share")
    with pytest.raises(WireError, match="nested too deeply"):
        wire.loads_json(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(WireError, match="not JSON"):
        wire.loads_json(b"\xff\xfe")


# -- credentials and the client --

def test_admin_add_refuses_to_move_a_token_to_another_identity(tmp_path):
    from pricure_crypten.parties.net.credentials import CredentialTable, add_credential

    token = tmp_path / "alice.token"
    assert add_credential(role="client", identity="alice", token_file=token, data_dirs=[tmp_path / "d"])
    before = (tmp_path / "d" / "credentials.json").read_text()
    with pytest.raises(ValueError, match="already belongs to client alice"):
        add_credential(role="client", identity="bob", token_file=token, data_dirs=[tmp_path / "d"])
    with pytest.raises(ValueError, match="already belongs to client alice"):
        add_credential(role="owner", identity="alice", token_file=token, data_dirs=[tmp_path / "d"])
    assert (tmp_path / "d" / "credentials.json").read_text() == before
    assert CredentialTable(tmp_path / "d").lookup(token.read_text().strip()) == ("client", "alice")
    # the same identity on another host's data dir is still fine
    assert not add_credential(role="client", identity="alice", token_file=token, data_dirs=[tmp_path / "e"])


def test_the_client_refuses_http_and_names_missing_files(tmp_path, monkeypatch):
    from pricure_crypten.parties.net import remote
    from pricure_crypten.parties.net.credentials import add_credential, make_ca

    make_ca(tmp_path / "ca")
    token = tmp_path / "alice.token"
    add_credential(role="client", identity="alice", token_file=token, data_dirs=[tmp_path / "d"])
    servers = ["127.0.0.1:1", "127.0.0.1:2"]
    with pytest.raises(ValueError, match="only https://"):
        remote.RemoteEnsemble(servers=["http://127.0.0.1:1", "127.0.0.1:2"], credential=token,
                              ca=tmp_path / "ca" / "ca.pem")
    with pytest.raises(ValueError, match="test-only"):  # the flag alone is not enough
        remote.RemoteEnsemble(servers=["http://127.0.0.1:1", "127.0.0.1:2"], credential=token,
                              ca=tmp_path / "ca" / "ca.pem", allow_insecure_http=True)
    monkeypatch.setenv(remote.INSECURE_HTTP_ENV, "1")
    with pytest.warns(UserWarning, match="TEST ONLY"):
        remote.RemoteEnsemble(servers=["http://127.0.0.1:1", "127.0.0.1:2"], credential=token,
                              ca=tmp_path / "ca" / "ca.pem", allow_insecure_http=True).close()
    missing = tmp_path / "nobody.token"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        remote.RemoteEnsemble(servers=servers, credential=missing, ca=tmp_path / "ca" / "ca.pem")
    with pytest.raises(FileNotFoundError, match=str(missing)):  # a path given as a string, too
        remote.RemoteEnsemble(servers=servers, credential=str(missing), ca=tmp_path / "ca" / "ca.pem")
    with pytest.raises(FileNotFoundError, match="ca.pem in the directory"):
        remote.RemoteEnsemble(servers=servers, credential=token, ca=tmp_path / "ca.pem")
    remote.RemoteEnsemble(servers=servers, credential=token, ca=tmp_path / "ca").close()  # the CA's directory
    remote.RemoteEnsemble(servers=servers, credential=token.read_text().strip(), ca=tmp_path / "ca").close()


def test_the_query_command_names_a_missing_token_file(tmp_path):

    np.save(tmp_path / "x.npy", np.zeros((1, FEATURES)))
    out = subprocess.run([sys.executable, "-m", "pricure_crypten", "query", "--servers", "127.0.0.1:1,127.0.0.1:2",
                          "--token-file", str(tmp_path / "alice.token"), "--ca", str(tmp_path / "ca.pem"),
                          "--input", str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                                          os.environ.get("PYTHONPATH", "")])))
    assert out.returncode == 2 and str(tmp_path / "alice.token") in out.stderr and "does not exist" in out.stderr


# -- the supervisor --

FAKE_PARTY = """
import os, signal, sys, time
count = int(open(sys.argv[1]).read() or 0) + 1 if os.path.exists(sys.argv[1]) else 1
open(sys.argv[1], "w").write(str(count))
open(sys.argv[1] + ".pid", "w").write(str(os.getpid()))
if count == 1:
    os.kill(os.getpid(), signal.SIGKILL)   # what the OOM killer does
if count == 2:
    sys.exit(1)                             # an uncaught exception
time.sleep(600)                             # then a healthy party
"""


def test_the_supervisor_restarts_a_party_killed_by_a_signal_and_stops_only_when_asked(tmp_path):
    """Issue 18: after SIGKILL of the party, 'pricure serve' exited 247 and stayed down."""
    script, counter = tmp_path / "party.py", tmp_path / "count"
    script.write_text(FAKE_PARTY)
    code = textwrap.dedent(f"""
        import sys
        from pricure_crypten.parties.net.supervisor import supervise
        sys.exit(supervise("serve", [{str(script)!r}, {str(counter)!r}], wait=5, command=[sys.executable],
                           backoff=(0.1, 0.2)))
    """)
    supervisor = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
    try:
        deadline = time.monotonic() + 60
        while not (counter.exists() and counter.read_text() == "3"):
            assert supervisor.poll() is None, supervisor.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        party = int((tmp_path / "count.pid").read_text())
        assert supervisor.poll() is None  # still up, running the third party
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    log = supervisor.stderr.read()
    assert "killed by SIGKILL (out of memory?" in log and "exited with code 1" in log, log
    assert log.count("restarting the party in") == 2 and "stopped (SIGTERM)" in log, log
    with pytest.raises(ProcessLookupError):  # the party went with it
        os.kill(party, 0)


# -- per-client caps and the request log --

def _node(tmp_path, *, batching=None, **overrides):
    from pricure_crypten.parties.net.config import FrontDoor, Seat
    from pricure_crypten.parties.net.node import Node

    node = Node(seat=Seat(rank=0, rendezvous="tcp://127.0.0.1:1", data_dir=tmp_path / "d"),
                front_door=FrontDoor(host="127.0.0.1", port=1, **overrides), batching=batching)
    node.models.put("o", "a" * 32, _bundle_bytes())
    return node


def test_a_client_is_capped_in_pending_requests_and_rows_and_packing_is_round_robin(tmp_path):
    from pricure_crypten.parties.net.wire import TooManyRequests

    from pricure_crypten.config import Batching

    node = _node(tmp_path, max_client_requests=3, max_client_rows=300, batching=Batching(max_rows=256))
    rid = iter(f"{i:032x}" for i in range(100))
    node.submit("mallory", next(rid), np.zeros((256, FEATURES), np.int64))
    with pytest.raises(TooManyRequests, match="256 pending rows"):
        node.submit("mallory", next(rid), np.zeros((100, FEATURES), np.int64))
    node.submit("mallory", next(rid), np.zeros((20, FEATURES), np.int64))
    node.submit("mallory", next(rid), np.zeros((20, FEATURES), np.int64))
    with pytest.raises(TooManyRequests, match="3 pending requests"):
        node.submit("mallory", next(rid), np.zeros((1, FEATURES), np.int64))
    node.submit("alice", next(rid), np.zeros((2, FEATURES), np.int64))  # another client is not affected
    node.loading.considered = node.loading.loaded = sorted((o, m["upload_id"]) for o, m in node.models.meta().items())
    proposal = node.loop.proposal()
    assert [c.client for c in proposal.candidates] == ["mallory", "alice", "mallory", "mallory"]


def test_the_request_log_forgets_finished_ids_after_its_retention(tmp_path):
    from pricure_crypten.parties.net.store import RequestLog

    log = RequestLog(tmp_path / "requests.sqlite3")
    for i in range(10):
        assert log.claim(f"{i:032x}", "alice")
        if i < 8:
            log.finish(f"{i:032x}", "done")
    assert log.prune(retention=3600, max_entries=100) == 0 and log.count() == 10
    assert log.prune(retention=3600, max_entries=5) == 5 and log.count() == 5  # the oldest finished go first
    assert log.prune(retention=0, max_entries=100) == 3 and log.count() == 2  # pending ids stay
    assert log.lookup(f"{8:032x}")[1] == "pending"


# -- the front door: connection cap and header deadline --

def test_the_front_door_caps_open_connections_and_cuts_unfinished_headers(tmp_path):
    """Issue 18: no header timeout and no connection limit (40 of 40 slow TLS connections stayed open).

    A front door alone (the real app and protocol, a stand-in node), with a
    cap of 8 connections and a 3 s header deadline: of 12 idle connections 4
    are cut at once, the other 8 at the deadline, and a request is answered
    again afterwards.
    """
    import socket
    import ssl

    import httpx

    front, node, port, tls = stub_front_door(tmp_path, header_timeout=3.0)

    def connect() -> ssl.SSLSocket:
        sock = tls.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                               server_hostname="127.0.0.1")
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # never finished
        return sock

    try:
        socks = [connect() for _ in range(12)]
        time.sleep(0.5)
        assert sum(tls_closed(s) for s in socks) == 4 and node.open_connections() == 8
        deadline = time.monotonic() + 10
        while not all(tls_closed(s) for s in socks):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert node.open_connections() == 0
        answer = httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=tls, timeout=5)
        assert answer.json() == {"alive": True, "details": False}
        for sock in socks:
            sock.close()
    finally:
        front.stop()

"""The networked deployment, with every party started by its real command on its own loopback address.

Two deployments, each started once per module by the library's launcher
(:class:`pricure_crypten.experiments.launch.Deployment`: ``python -m pricure_crypten
serve|dealer``, i.e. ``pricure serve|dealer``, in their own sessions):

* A: 2 servers (127.0.0.2, 127.0.0.3) + dealer, epsilon = inf: the round
  trip equals the in-process ``PrivateEnsemble``; authentication, replay,
  other clients' results, owners' isolation, bad input, incomplete requests;
* B: 3 servers (127.0.0.4-6) + dealer, Laplace epsilon 1, server 2 with a
  smaller budget (250) than the others: a refusal by one server's ledger stops the request for all,
  with no charge; a server killed mid-request gives the client a clear error
  in bounded time, charges nothing, and, restarted with ``pricure serve``,
  reloads its shares from disk and answers without a new upload.

Every process started here is killed (its whole session) at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import time

import numpy as np
import pytest
import torch
from torch import nn

from pricure_crypten import ModelOwner
from pricure_crypten.experiments.launch import Deployment, Loopback, free_port, pricure
from pricure_crypten.parties.net.remote import RemoteError, upload_model
from pricure_crypten.parties.net.wire import bundle_to_bytes, encode_array
from tests.helpers import deployment_owners, gaussian_queries

pytestmark = pytest.mark.mpc

FEATURES, CLASSES = 6, 3
TEST_FLAGS = ["--timeout", "30"]  # the servers' collective timeout: a killed peer is noticed within it


@pytest.fixture(scope="module")
def owners():
    return deployment_owners()


@pytest.fixture(scope="module")
def plain(tmp_path_factory, owners):
    """Deployment A: 2 servers, epsilon = inf, small upload limit, quick drop of incomplete requests; the
    CA, certificates and tokens made with the ``pricure admin`` commands."""
    with Deployment(servers=2, owners=[o.name for o in owners], clients=["alice", "bob", "carol"],
                    serve_flags=[*TEST_FLAGS, "--epsilon", "inf", "--incomplete-after", "2", "--max-upload-mb", "0.05"],
                    root=tmp_path_factory.mktemp("deployA"), admin_cli=True) as d:
        # owner0 with the real command; the others with the Python API
        model_file = d.root / "owner0.pt"
        torch.save(owners[0].model, model_file)
        pricure("owner", "upload", str(model_file), "--input-shape", str(FEATURES), "--classes", str(CLASSES),
                "--servers", ",".join(d.urls), "--token-file", str(d.tokens["owner0"]), "--ca", str(d.ca))
        for owner in owners[1:]:
            d.upload(owner)
        d.wait_ready(owners=3)
        yield d


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, owners):
    """Deployment B: 3 servers, Laplace epsilon 1; server 2 grants each client a total epsilon of 250 only."""
    with Deployment(servers=3, owners=[o.name for o in owners], clients=["alice", "bob", "carol"],
                    serve_flags=[*TEST_FLAGS, "--epsilon", "1", "--mechanism", "laplace"],
                    server_flags=[["--budget-epsilon", "1000"], ["--budget-epsilon", "1000"], ["--budget-epsilon", "250"]],
                    topology=Loopback(first=4), root=tmp_path_factory.mktemp("deployB")) as d:
        d.upload_all(owners)
        yield d


def _settled(deployment: Deployment, ranks, client: str, answered: list[int], bound: float = 20.0) -> None:
    """Every given server's ledger shows ``answered[rank]`` answered and no reservation, within ``bound`` s.

    A peer still inside the failed collective holds its reservation until the failure reaches it.
    """
    deadline = time.monotonic() + bound
    while True:
        got = {r: (deployment.status(r, client).answered_queries, deployment.status(r, client).reserved_queries)
               for r in ranks}
        if all(got[r] == (answered[r], 0) for r in ranks):
            return
        assert time.monotonic() < deadline, f"charged or still reserved: {got}"
        time.sleep(0.2)


def test_round_trip_equals_the_in_process_path(plain, owners):
    from pricure_crypten import PrivateEnsemble
    from pricure_crypten.config import Aggregation
    from pricure_crypten.privacy.noise import calibrate

    x = gaussian_queries(24, FEATURES)
    with plain.remote("alice") as remote:
        networked = remote.predict(x).labels
    with PrivateEnsemble(owners, aggregation=Aggregation(noise=calibrate(epsilon=float("inf")))) as ensemble:
        in_process = ensemble.predict(torch.tensor(x, dtype=torch.float32)).labels
    assert networked.tolist() == in_process.tolist()
    # the CLI client gives the same labels
    np.save(plain.root / "x.npy", x[:5])
    out = pricure("query", "--servers", ",".join(plain.urls), "--token-file", str(plain.tokens["carol"]),
                  "--ca", str(plain.ca), "--input", str(plain.root / "x.npy"))
    assert json.loads(out.stdout)["labels"] == in_process[:5].tolist()
    # tokens never reach a log or a data directory in the clear
    secrets_ = [t.read_text().strip() for t in plain.tokens.values()]
    for path in plain.root.rglob("*"):
        if path.is_file() and not path.name.endswith(".token"):
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets_), path


def test_no_or_wrong_credential_is_refused_before_any_work(plain):
    body = {"request_id": secrets.token_hex(16), "share": encode_array(np.zeros((1, FEATURES), np.int64))}
    with plain.http(0, None) as anonymous:
        assert anonymous.post("/v1/queries", json=body).status_code == 401
        wrong = anonymous.post("/v1/queries", json=body, headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401 and "credential" in wrong.json()["detail"]
    with plain.http(0, "owner1") as owner:  # an owner's token is not a client's
        assert owner.post("/v1/queries", json=body).status_code == 403
    assert plain.status(0, "alice").answered_queries == plain.status(1, "alice").answered_queries


def test_replayed_request_id_and_another_clients_result_are_refused(plain):
    with plain.remote("alice") as alice:
        rid = alice.submit(gaussian_queries(2, FEATURES))
        alice.collect(rid)
        with pytest.raises(RemoteError, match="already used"):
            alice.submit(gaussian_queries(2, FEATURES), request_id=rid)
    with plain.http(0, "bob") as bob:
        assert bob.get(f"/v1/queries/{rid}").status_code == 404  # indistinguishable from an unknown id
    assert plain.status(0, "bob").answered_queries == 0


def test_an_owner_cannot_overwrite_or_withdraw_another_owners_model(plain, owners):
    with plain.http(0, "owner0") as owner0:
        before = owner0.get("/v1/model").json()
    data = bundle_to_bytes(owners[1].share(num_servers=2)[0], input_shape=(FEATURES,), num_classes=CLASSES)
    with plain.http(0, "owner1") as owner1:
        # whatever the request says, the owner is the credential's identity
        response = owner1.put("/v1/model?owner=owner0", content=data,
                              headers={"X-Upload-Id": secrets.token_hex(16), "X-Owner": "owner0"})
        assert response.status_code == 200 and response.json()["owner"] == "owner1"
        assert owner1.delete("/v1/model?owner=owner0").status_code == 200  # withdraws owner1's own
        assert owner1.get("/v1/model").status_code == 404
    with plain.http(0, "owner0") as owner0:
        assert owner0.get("/v1/model").json() == before
    # put owner1 back on both servers (a fresh upload id), as the other tests expect
    upload_model(owners[1], servers=plain.urls, credential=plain.tokens["owner1"], ca=plain.ca)
    plain.wait_ready(owners=3)


def test_bad_input_gets_a_clear_error_and_the_server_keeps_running(plain, owners):
    good = encode_array(np.zeros((2, FEATURES), np.int64))
    with plain.http(0, "carol") as carol:
        def post(body, **kw):
            return carol.post("/v1/queries", content=body if isinstance(body, bytes) else json.dumps(body), **kw)

        assert "not JSON" in post(b"{not json").json()["detail"]
        assert post({"share": good}).status_code == 400
        assert post({"request_id": "x" * 32, "share": good}).status_code == 400
        assert "int64" in post({"request_id": secrets.token_hex(16),
                                "share": dict(good, dtype="float64")}).json()["detail"]
        wrong_shape = post({"request_id": secrets.token_hex(16),
                            "share": encode_array(np.zeros((2, FEATURES + 1), np.int64))})
        assert wrong_shape.status_code == 422 and "shape" in wrong_shape.json()["detail"]
        short = dict(good, data=good["data"][:-12])
        assert post({"request_id": secrets.token_hex(16), "share": short}).status_code == 400
        assert post({"request_id": secrets.token_hex(16), "share": dict(good, shape=[-1, 3])}).status_code == 400
    data = bundle_to_bytes(owners[2].share(num_servers=2)[0], input_shape=(FEATURES,), num_classes=CLASSES)
    with plain.http(0, "owner2") as owner2:
        put = lambda body: owner2.put("/v1/model", content=body, headers={"X-Upload-Id": secrets.token_hex(16)})  # noqa
        truncated = put(data[: len(data) // 2])
        assert truncated.status_code == 400 and "truncated" in truncated.json()["detail"]
        too_big = put(os.urandom(60 * 1024))
        assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
        other_shape = ModelOwner(name="x", model=nn.Sequential(nn.Linear(4, CLASSES)), input_shape=(4,),
                                 num_classes=CLASSES)
        mismatch = put(bundle_to_bytes(other_shape.share(num_servers=2)[0], input_shape=(4,), num_classes=CLASSES))
        assert mismatch.status_code == 400 and "inputs" in mismatch.json()["detail"]
        assert owner2.put("/v1/model", content=data).status_code == 400  # no upload id
    assert plain.health(0)["mpc"] == "ready" and len(plain.health(0)["owners_loaded"]) == 3
    with plain.remote("carol") as carol:  # still answers
        assert carol.predict(gaussian_queries(3, FEATURES)).labels.shape == (3,)


def test_a_request_missing_on_one_server_is_dropped_everywhere(plain):
    rid = secrets.token_hex(16)
    share = encode_array(np.zeros((1, FEATURES), np.int64))
    with plain.http(0, "bob") as server0, plain.http(1, "bob") as server1:
        assert server0.post("/v1/queries", json={"request_id": rid, "share": share}).status_code == 202
        deadline = time.monotonic() + 30
        while (body := server0.get(f"/v1/queries/{rid}").json())["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert body["status"] == "failed" and "did not reach server(s) 1" in body["error"]
        late = server1.post("/v1/queries", json={"request_id": rid, "share": share})
        assert late.status_code == 409  # the dropped id cannot be completed later
    assert plain.status(0, "bob").answered_queries == plain.status(0, "bob").reserved_queries == 0


def test_a_refusal_by_one_servers_ledger_stops_the_request_for_all(noisy):
    with noisy.remote("bob") as bob:
        assert bob.predict(gaussian_queries(150, FEATURES)).labels.shape == (150,)  # 150 of server 2's 250
        with pytest.raises(RemoteError, match="over budget on server 2"):
            bob.predict(gaussian_queries(150, FEATURES))
    # the servers settle the refusal concurrently: the client may read the refuser's answer first
    _settled(noisy, range(3), "bob", [150, 150, 150])


def test_a_killed_server_fails_the_request_cleanly_and_recovers_from_disk(noisy):
    answered = [noisy.status(r, "alice").answered_queries for r in range(3)]
    with noisy.remote("alice", timeout=60) as alice:
        rid = alice.submit(gaussian_queries(200, FEATURES, seed=3))
        noisy.kill("server1")
        started = time.monotonic()
        with pytest.raises(RemoteError) as failure:
            alice.collect(rid)
        detected = time.monotonic() - started
    assert detected < 60 and ("server 1" in str(failure.value) or "MPC" in str(failure.value))
    print(f"kill server 1 mid-request: client error after {detected:.1f} s: {failure.value}")
    _settled(noisy, (0, 2), "alice", answered)  # nothing charged on the survivors (the killed one voids on restart)
    restarted = time.monotonic()
    noisy.start("server1")  # the same command, no new upload
    noisy.wait_ready(owners=3)
    assert noisy.status(1, "alice").reserved_queries == 0
    with noisy.remote("alice") as alice:
        assert alice.predict(gaussian_queries(4, FEATURES)).labels.shape == (4,)
    print(f"server 1 restarted with pricure serve: answering again {time.monotonic() - restarted:.1f} s later")


def test_a_killed_dealer_fails_the_request_cleanly_and_a_restarted_one_serves_again(noisy):
    answered = [noisy.status(r, "carol").answered_queries for r in range(3)]
    with noisy.remote("carol", timeout=60) as carol:
        rid = carol.submit(gaussian_queries(200, FEATURES, seed=4))
        noisy.kill("dealer")
        started = time.monotonic()
        try:
            carol.collect(rid)
            finished_first = True  # the batch beat the kill: answered and charged, as it should be
        except RemoteError as failure:
            finished_first = False
            print(f"kill the dealer mid-request: client error after {time.monotonic() - started:.1f} s: {failure}")
    if not finished_first:
        _settled(noisy, range(3), "carol", answered)
    restarted = time.monotonic()
    noisy.start("dealer")
    noisy.wait_ready(owners=3)
    with noisy.remote("carol") as carol:
        if finished_first:  # idle servers notice a dead dealer only at their next request, which then fails
            with pytest.raises(RemoteError):
                carol.predict(gaussian_queries(3, FEATURES))
            time.sleep(1.0)
            noisy.wait_ready(owners=3)
        assert carol.predict(gaussian_queries(3, FEATURES)).labels.shape == (3,)
    print(f"dealer restarted with pricure dealer: answering again {time.monotonic() - restarted:.1f} s later")


def test_demo_with_every_party_its_own_process_prints_the_usual_json_plus_deployment():
    out = pricure("demo", "--deployment", "processes", "--json", "--owners", "3", "--queries", "10",
                  "--batch-size", "5", "--epsilon", "inf", timeout=1200)
    result = json.loads(out.stdout)
    assert result["deployment"] == "processes" and result["servers"] == 2
    assert result["private_equals_plaintext"] == 1.0 and result["server_decodes"] == 0
    assert result["reveals_per_batch"] == 1 and result["rounds_per_batch"] > 0 and result["bytes_per_query"] > 0


def test_a_party_alone_waits_up_to_its_bound_then_says_why(tmp_path):
    pricure("admin", "ca", "--out", str(tmp_path / "ca"))
    pricure("admin", "cert", "--ca", str(tmp_path / "ca"), "--host", "127.0.0.7", "--out", str(tmp_path / "s"))
    rendezvous = f"tcp://127.0.0.7:{free_port('127.0.0.7')}"
    alone = pricure("serve", "--rank", "1", "--servers", "2", "--rendezvous", rendezvous,
                    "--listen", f"127.0.0.7:{free_port('127.0.0.7')}", "--data-dir", str(tmp_path / "d"),
                    "--cert", str(tmp_path / "s" / "server.pem"), "--key", str(tmp_path / "s" / "server.key"),
                    "--wait", "3", check=False, timeout=60)
    assert alone.returncode == 3 and "waited 3 s at the rendezvous" in alone.stderr
    dealer = pricure("dealer", "--servers", "2", "--rendezvous", rendezvous, "--wait", "2", check=False, timeout=60)
    assert dealer.returncode == 3 and "the dealer waited 2 s" in dealer.stderr
    bad = pricure("serve", "--rank", "0", "--servers", "2", "--rendezvous", "http://x", "--listen", "a:1",
                  "--data-dir", str(tmp_path), "--cert", "x", "--key", "y", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rendezvous" in bad.stderr

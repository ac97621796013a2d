"""The secure protocol end to end: CrypTen servers in separate processes, a dealer, one reveal."""

from __future__ import annotations

import dataclasses

import os
import signal
import time

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from pricure_crypten import (
    Aggregation,
    Client,
    Cluster,
    ExperimentOptions,
    InsecureSeedWarning,
    ModelOwner,
    PrivateEnsemble,
    ServerError,
    UnsupportedLayerError,
    calibrate,
)
from pricure_crypten.config import InsecureProviderWarning
from pricure_crypten.experiments import reference
from pricure_crypten.parties.cluster import ServerProcesses
from pricure_crypten.parties.serving.messages import BatchReply, Info, Predict
from tests.helpers import constant_owners

pytestmark = pytest.mark.mpc


def _unique_winner(counts: np.ndarray, margin: float) -> np.ndarray:
    top2 = np.sort(counts, axis=-1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > margin


@pytest.mark.parametrize(
    "num_owners, num_servers, aggregation",
    [(1, 3, "vote"), (1, 2, "softmax"), (7, 2, "vote"), (7, 3, "softmax")],
)
def test_no_noise_private_equals_plaintext_ensemble(digits, digits_owners, num_owners, num_servers, aggregation):
    owners = digits_owners[:1] if num_owners == 1 else digits_owners  # 7 = two architectures, grouped
    _, _, x_test, _ = digits
    queries = x_test[:64]
    logits = reference.ensemble_logits([o.model for o in owners], queries)
    counts = reference.histogram(logits, aggregation=aggregation)
    expected = reference.noisy_argmax(counts, aggregation=aggregation, mechanism=calibrate(epsilon=float("inf")))
    no_noise = Aggregation(method=aggregation, noise=calibrate(epsilon=float("inf"), aggregation=aggregation))
    with PrivateEnsemble(owners, aggregation=no_noise, cluster=Cluster(num_servers=num_servers)) as ens:
        prediction = ens.predict(queries)
    # Vote counts are integers: any unique winner must match. Softmax sums go
    # through CrypTen's exp/reciprocal approximations: compare where the
    # plaintext margin exceeds their error.
    rows = _unique_winner(counts, 0.5 if aggregation == "vote" else 0.05)
    assert rows.sum() >= 40
    assert np.array_equal(prediction.labels[rows], expected[rows])
    assert prediction.cost.reveals == 1 and prediction.cost.server_decodes == 0


def _reference_labels(counts, mechanism, draws, seed):
    """An independent numpy reference: the calibrated noise (scale ``mechanism.scale``) added to
    every count, then the argmax (no code of the package involved)."""
    rng = np.random.default_rng(seed)
    shape = (draws, counts.size)
    if mechanism.name == "laplace":
        noise = rng.laplace(0.0, mechanism.scale, size=shape)
    else:
        assert mechanism.name == "gaussian"
        noise = rng.normal(0.0, mechanism.scale, size=shape)
    return np.argmax(counts + noise, axis=-1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mechanism_name, num_servers, epsilon", [("laplace", 3, 1.0), ("gaussian", 2, 2.0)]
)
def test_noisy_labels_follow_the_reference_mechanism(mechanism_name, num_servers, epsilon):
    votes = [0, 0, 0, 1, 1]  # histogram [3, 2, 0]
    owners = constant_owners(votes, 3)
    counts = np.bincount(votes, minlength=3).astype(float)
    draws = 2000
    with pytest.warns(InsecureSeedWarning, match="noise_seed"):
        experiment = ExperimentOptions(noise_seed=f"dist-{mechanism_name}")
    aggregation = Aggregation(noise=calibrate(epsilon=epsilon, mechanism=mechanism_name))
    with PrivateEnsemble(owners, aggregation=aggregation, cluster=Cluster(num_servers=num_servers),
                         experiment=experiment) as ens:
        labels = ens.predict(torch.zeros(draws, 2)).labels
    mpc_counts = np.bincount(labels, minlength=3)
    right = calibrate(epsilon=epsilon, mechanism=mechanism_name)
    wrong = calibrate(epsilon=epsilon / 2, mechanism=mechanism_name)  # noise scale 2x
    ref_right = np.bincount(_reference_labels(counts, right, 8000, 1), minlength=3)
    ref_wrong = np.bincount(_reference_labels(counts, wrong, 8000, 2), minlength=3)
    p_right = stats.chi2_contingency(np.stack([mpc_counts, ref_right])[:, mpc_counts + ref_right > 0])[1]
    p_wrong = stats.chi2_contingency(np.stack([mpc_counts, ref_wrong])[:, mpc_counts + ref_wrong > 0])[1]
    assert p_right > 1e-3, (mpc_counts, ref_right)
    assert p_wrong < 1e-4, (mpc_counts, ref_wrong)


def _random_mlps(count: int) -> list[ModelOwner]:
    torch.manual_seed(3)
    return [
        ModelOwner(name=f"m{i}", model=nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
                   input_shape=(6,), num_classes=3)
        for i in range(count)
    ]


def test_rounds_do_not_grow_with_the_number_of_owners():
    owners = _random_mlps(20)
    queries = torch.randn(4, 6)
    rounds = {}
    for k in (1, 20):
        with PrivateEnsemble(owners[:k], aggregation=Aggregation(noise=calibrate(epsilon=1.0)),
                             cluster=Cluster(num_servers=2)) as ens:
            rounds[k] = ens.predict(queries).cost.rounds
    assert rounds[1] == rounds[20] > 0


@pytest.fixture(scope="module")
def running_ensemble():
    owners = _random_mlps(3)
    ens = PrivateEnsemble(owners, aggregation=Aggregation(noise=calibrate(epsilon=1.0)),
                          cluster=Cluster(num_servers=2)).start()
    yield ens
    ens.close()


def test_exactly_one_reveal_per_call_and_only_to_the_client(running_ensemble, monkeypatch):
    import pricure_crypten.parties.client as client_module

    reconstructions = []
    real_reconstruct = client_module.reconstruct
    monkeypatch.setattr(client_module, "reconstruct", lambda s: reconstructions.append(1) or real_reconstruct(s))
    replies = []
    real_request = running_ensemble.servers.request

    def spy(messages):
        out = real_request(messages)
        replies.append((messages[0], out))
        return out

    monkeypatch.setattr(running_ensemble.servers, "request", spy)
    client = Client("alice")
    for call in range(1, 4):
        prediction = running_ensemble.predict(torch.randn(5, 6), client=client)
        assert prediction.cost.reveals == 1
        assert client.reveals == call
        assert len(reconstructions) == call  # reconstruction happens only in Client.reveal
        assert prediction.cost.server_decodes == 0
    for message, out in replies:
        assert isinstance(message, Predict)
        for reply in out:  # what leaves a server: one label share and public cost figures
            assert isinstance(reply, BatchReply) and reply.outcome is None and reply.outcome_reveals == 0
            assert [f.name for f in dataclasses.fields(reply)] == [
                "label_share", "rounds", "bytes", "seconds", "decodes", "dealer_requests", "outcome",
                "outcome_reveals"]
            assert reply.label_share.dtype == np.int64 and reply.label_share.shape == (5, 3)
    assert all(info["decodes"] == 0 for info in running_ensemble.server_info())


def test_secure_configuration_uses_a_separate_dealer(running_ensemble):
    infos = running_ensemble.server_info()
    assert [i["provider"] for i in infos] == ["PrecomputedTTP"] * 2  # CrypTen's TTP, able to stock tuples
    assert [i["cfg_provider"] for i in infos] == ["TTP"] * 2
    dealer = running_ensemble.servers.dealer_pid
    assert dealer is not None and dealer not in [i["pid"] for i in infos]
    os.kill(dealer, 0)  # the dealer process is alive


def test_insecure_provider_is_explicit_and_loud():
    with pytest.warns(InsecureProviderWarning, match="INSECURE"):
        config = Cluster(num_servers=2, provider="insecure-tfp")
    cluster = ServerProcesses(config)
    with cluster:
        infos = cluster.broadcast(Info())
        assert cluster.dealer_pid is None
    assert [i["provider"] for i in infos] == ["TrustedFirstParty"] * 2
    with pytest.raises(ValueError, match="unknown provider"):
        ServerProcesses(Cluster(num_servers=2, provider="tfp"))


def test_server_share_of_weights_is_independent_of_the_weights():
    torch.manual_seed(0)
    small = ModelOwner(name="a", model=nn.Sequential(nn.Linear(200, 100)), input_shape=(200,), num_classes=100)
    big = ModelOwner(name="b", model=nn.Sequential(nn.Linear(200, 100)), input_shape=(200,), num_classes=100)
    with torch.no_grad():
        small.model[0].weight.fill_(0.001)
        big.model[0].weight.normal_(0, 30)
    small, big = (ModelOwner(name=o.name, model=o.model, input_shape=(200,), num_classes=100) for o in (small, big))
    unit = lambda a: a.view(np.uint64).ravel().astype(np.float64) / 2.0**64  # noqa: E731
    share_small = small.share(num_servers=2)[0].layers[0].params[0]
    share_big = big.share(num_servers=2)[0].layers[0].params[0]
    assert stats.ks_2samp(unit(share_small), unit(share_big)).pvalue > 1e-3
    assert stats.kstest(unit(share_big), "uniform").pvalue > 1e-3
    # Control: the same test separates the encoded weights themselves.
    from pricure_crypten.mpc.sharing import encode

    encoded = [encode(o.model[0].weight) for o in (small, big)]
    assert stats.ks_2samp(unit(encoded[0]), unit(encoded[1])).pvalue < 1e-6


def test_server_crash_reveals_nothing():
    ens = PrivateEnsemble(_random_mlps(2), aggregation=Aggregation(noise=calibrate(epsilon=1.0)),
                          cluster=Cluster(num_servers=2)).start()
    client = Client("bob")
    try:
        assert ens.predict(torch.randn(2, 6), client=client).cost.reveals == 1
        os.kill(ens.servers.server_pids[1], signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(ServerError, match="nothing was revealed"):
            ens.predict(torch.randn(2, 6), client=client)
        assert client.reveals == 1
    finally:
        ens.close()


# -- bad input: a clear error before any MPC work --


@pytest.mark.parametrize(
    "settings, error, match",
    [
        (lambda: dict(cluster=Cluster(num_servers=1)), ValueError, "num_servers must be >= 2"),
        (lambda: dict(aggregation=Aggregation(noise=calibrate(epsilon=0.0))), ValueError, "epsilon must be > 0"),
        (lambda: dict(aggregation=Aggregation(noise=calibrate(epsilon=float("nan")))), ValueError,
         "epsilon must be > 0"),
        (lambda: dict(aggregation=Aggregation(noise=calibrate(epsilon=-2.0))), ValueError, "epsilon must be > 0"),
        (lambda: dict(aggregation=Aggregation(noise=calibrate(epsilon=1.0, mechanism="gaussian", delta=1.5))),
         ValueError, r"delta must be in \[0, 1\)"),
        (lambda: dict(aggregation=Aggregation(noise=calibrate(epsilon=1.0, mechanism="gaussian", delta=-1e-5))),
         ValueError, r"delta must be in \[0, 1\)"),
        (lambda: dict(aggregation=Aggregation(method="mean")), ValueError, "unknown aggregation"),
        (lambda: dict(aggregation=Aggregation(noise=calibrate(epsilon=1.0, mechanism="staircase"))), ValueError,
         "unknown mechanism"),
        (lambda: dict(cluster=Cluster(colluding=2)), ValueError, "colluding must be in"),
        (lambda: dict(aggregation=Aggregation(logit_bound=1e6)), ValueError, "logit_bound"),
    ],
    ids=["servers", "epsilon-zero", "epsilon-nan", "epsilon-negative", "delta-above", "delta-negative",
         "aggregation", "mechanism", "colluding", "logit-bound"],
)
def test_bad_configuration_is_refused_before_any_mpc(settings, error, match):
    # The settings objects validate themselves on construction: nothing is started.
    with pytest.raises(error, match=match):
        PrivateEnsemble(_random_mlps(1), **settings())


def test_bad_owner_sets_are_refused():
    with pytest.raises(ValueError, match="at least one model owner"):
        PrivateEnsemble([])
    a = _random_mlps(1)[0]
    other_shape = ModelOwner(name="x", model=nn.Sequential(nn.Linear(5, 3)), input_shape=(5,), num_classes=3)
    with pytest.raises(ValueError, match="disagree on the input shape"):
        PrivateEnsemble([a, other_shape])
    other_classes = ModelOwner(name="y", model=nn.Sequential(nn.Linear(6, 4)), input_shape=(6,), num_classes=4)
    with pytest.raises(ValueError, match="disagree on the number of classes"):
        PrivateEnsemble([a, other_classes])
    with pytest.raises(UnsupportedLayerError, match="GELU"):
        ModelOwner(name="z", model=nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 3)),
                   input_shape=(6,), num_classes=3)


@pytest.mark.parametrize(
    "queries, error, match",
    [
        (torch.randn(4, 5), ValueError, r"shape \(batch, 6\)"),
        (torch.randn(6), ValueError, r"shape \(batch, 6\)"),
        (torch.zeros(0, 6), ValueError, "empty"),
        (torch.ones(2, 6, dtype=torch.int64), TypeError, "floating-point"),
        (torch.tensor([[float("nan")] * 6]), ValueError, "NaN or infinite"),
        (torch.tensor([[float("inf")] * 6]), ValueError, "NaN or infinite"),
        (torch.full((1, 6), 1e9), ValueError, "fixed-point range"),
        ([[0.0] * 6], TypeError, "torch.Tensor or numpy.ndarray"),
    ],
)
def test_bad_queries_are_refused_before_any_mpc(queries, error, match):
    ens = PrivateEnsemble(_random_mlps(1), cluster=Cluster(num_servers=2))
    client = Client("carol")
    with pytest.raises(error, match=match):
        ens.predict(queries, client=client)
    assert not ens.servers.running  # no server was even started
    assert client.reveals == 0

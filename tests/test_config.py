"""Bad input: a clear error that names the problem, before any process starts or any MPC work.

Across the configuration objects, the public API and the CLI. Each case
checks the exception type and that its message names the offending setting;
the ensemble cases also check that no server was ever launched and nothing
was revealed.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pricure_crypten import (
    Aggregation,
    Batching,
    Client,
    Cluster,
    ConfidentGNMax,
    EnsembleClosedError,
    ExperimentOptions,
    GaussianNoise,
    InsecureProviderWarning,
    InsecureSeedWarning,
    LaplaceNoise,
    ModelOwner,
    NoNoise,
    Offline,
    PrivateEnsemble,
    calibrate,
)
from tests.helpers import cli_exit_code, mlp_owners


def _owners(count: int = 1) -> list[ModelOwner]:
    return mlp_owners(count, features=6, classes=3, hidden=(), names="m{}", reseed=False)


GNMAX = dict(threshold=3, sigma_threshold=1, sigma=1)

CONFIG_CASES = [
    (lambda: Cluster(num_servers=1), ValueError, "num_servers must be >= 2"),
    (lambda: Cluster(num_servers=2.0), TypeError, "num_servers must be an int"),
    (lambda: Cluster(colluding=2), ValueError, "colluding must be in"),
    (lambda: Cluster(colluding=-1), ValueError, "colluding must be in"),
    (lambda: Cluster(provider="tfp"), ValueError, "unknown provider"),
    (lambda: Cluster(request_timeout=0), ValueError, "request_timeout must be"),
    (lambda: Cluster(start_timeout=float("inf")), ValueError, "start_timeout must be"),
    (lambda: Cluster(heartbeat_timeout=0.1), ValueError, "heartbeat_timeout must be >= 1"),
    (lambda: Cluster(threads_per_server=0), ValueError, "threads_per_server must be >= 1"),
    (lambda: Aggregation(method="mean"), ValueError, "unknown aggregation 'mean'"),
    (lambda: Aggregation(method=None), TypeError, "aggregation must be a str"),
    (lambda: Aggregation(noise="laplace"), TypeError, "noise must be a NoiseMechanism"),
    (lambda: Aggregation(method="softmax", noise=ConfidentGNMax(**GNMAX)), ValueError, "aggregation='vote'"),
    (lambda: Aggregation(logit_bound=1e6), ValueError, "logit_bound must be in"),
    (lambda: Aggregation(logit_bound=float("nan")), ValueError, "logit_bound must be in"),
    (lambda: calibrate(epsilon=0.0), ValueError, "epsilon must be > 0"),
    (lambda: calibrate(epsilon=float("nan")), ValueError, "epsilon must be > 0"),
    (lambda: calibrate(epsilon="1"), TypeError, "epsilon must be a number"),
    (lambda: calibrate(epsilon=1.0, mechanism="staircase"), ValueError, "unknown mechanism"),
    (lambda: calibrate(epsilon=1.0, mechanism="gaussian", delta=1.5), ValueError, r"delta must be in \[0, 1\)"),
    (lambda: LaplaceNoise(epsilon=-2.0), ValueError, "epsilon must be > 0"),
    (lambda: LaplaceNoise(epsilon=float("inf")), ValueError, "use NoNoise"),
    (lambda: LaplaceNoise(epsilon=1.0, delta=1e-5), ValueError, "delta must be 0"),
    (lambda: GaussianNoise(epsilon=1.0, delta=0.0), ValueError, "needs delta > 0"),
    (lambda: ConfidentGNMax(threshold=-1, sigma_threshold=1, sigma=1), ValueError, "threshold must be"),
    (lambda: Batching(max_rows=0), ValueError, "max_rows must be >= 1"),
    (lambda: Batching(window=-1.0), ValueError, "window must be"),
    (lambda: Batching(enabled="yes"), TypeError, "enabled must be a bool"),
    (lambda: ExperimentOptions(noise_seed=1.5), TypeError, "noise_seed must be"),
    (lambda: PrivateEnsemble(_owners(), epsilon=1.0), TypeError, "moved: use aggregation=Aggregation"),
    (lambda: PrivateEnsemble(_owners(), num_servers=3), TypeError, "moved: use cluster=Cluster"),
    (lambda: PrivateEnsemble(_owners(), cluster=3), TypeError, "cluster must be a pricure_crypten.Cluster"),
    (lambda: PrivateEnsemble(_owners(), ledger=object()), TypeError, "ledger must be a PrivacyLedger"),
    (lambda: PrivateEnsemble([]), ValueError, "at least one model owner"),
    (lambda: PrivateEnsemble([_owners()[0], _owners()[0]]), ValueError, "owner names must be unique"),
    (lambda: Client(""), ValueError, r"name \(its budget key\) must be a non-empty string"),
]


@pytest.mark.parametrize("build, error, match", CONFIG_CASES, ids=[f"config-{i}" for i in range(len(CONFIG_CASES))])
def test_bad_settings_are_refused_on_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


QUERY_CASES = [
    (torch.randn(4, 5), ValueError, r"shape \(batch, 6\)"),
    (torch.randn(6), ValueError, r"shape \(batch, 6\)"),
    (torch.zeros(0, 6), ValueError, "empty"),
    (torch.ones(2, 6, dtype=torch.int64), TypeError, "floating-point"),
    (np.ones((2, 6), dtype=np.int32), TypeError, "floating-point"),
    (torch.tensor([[float("nan")] * 6]), ValueError, "NaN or infinite"),
    (torch.tensor([[float("inf")] * 6]), ValueError, "NaN or infinite"),
    (torch.full((1, 6), 1e9), ValueError, "fixed-point range"),
    (torch.zeros(11, 6), ValueError, "more than Batching.max_queries = 10"),
    ([[0.0] * 6], TypeError, "torch.Tensor or numpy.ndarray"),
]


@pytest.mark.parametrize("queries, error, match", QUERY_CASES, ids=[f"query-{i}" for i in range(len(QUERY_CASES))])
def test_bad_queries_are_refused_before_any_mpc(queries, error, match):
    ens = PrivateEnsemble(_owners(), batching=Batching(max_queries=10))
    client = Client("carol")
    with pytest.raises(error, match=match):
        ens.predict(queries, client=client)
    assert ens.servers.launches == 0 and client.reveals == 0  # no server was ever started
    ens.close()


def test_a_client_that_is_not_a_client_is_refused():
    ens = PrivateEnsemble(_owners())
    with pytest.raises(TypeError, match="client must be a pricure_crypten.Client"):
        ens.predict(torch.zeros(1, 6), client="alice")
    assert ens.servers.launches == 0


def test_a_closed_ensemble_refuses_calls_without_starting_anything():
    ens = PrivateEnsemble(_owners())
    ens.close()
    with pytest.raises(EnsembleClosedError, match="closed"):
        ens.predict(torch.zeros(1, 6))
    with pytest.raises(EnsembleClosedError, match="closed"):
        ens.start()
    assert ens.servers.launches == 0


def test_test_only_seeds_and_the_insecure_provider_warn_loudly():
    with pytest.warns(InsecureSeedWarning, match="INSECURE: noise_seed"):
        ExperimentOptions(noise_seed="fixed")
    with pytest.warns(InsecureSeedWarning, match="INSECURE: share_seed"):
        ExperimentOptions(share_seed=3)
    with pytest.warns(InsecureProviderWarning, match="INSECURE"):
        Cluster(provider="insecure-tfp")


def test_configuration_objects_are_frozen_and_default_to_the_secure_setting():
    cluster, aggregation = Cluster(), Aggregation()
    assert cluster.provider == "ttp" and cluster.needs_dealer and cluster.request_timeout <= 120
    assert isinstance(aggregation.noise, LaplaceNoise) and aggregation.noise.epsilon == 1.0
    assert isinstance(Aggregation(noise=NoNoise()).noise, NoNoise)
    with pytest.raises(AttributeError):
        cluster.num_servers = 3  # type: ignore[misc]


CLI_CASES = [
    (["demo", "--owners", "0"], "--owners must be >= 1"),
    (["demo", "--queries", "-5"], "--queries must be >= 1"),
    (["demo", "--batch-size", "x"], "--batch-size must be an integer"),
    (["demo", "--epsilon", "0"], "--epsilon must be > 0"),
    (["demo", "--servers", "2", "--colluding", "2"], "colluding must be in"),
    (["demo", "--mechanism", "gaussian", "--delta", "0"], "needs delta > 0"),
    (["demo", "--mechanism", "laplace", "--delta", "0.1"], "delta must be 0"),
    (["demo", "--aggregation", "mean"], "invalid choice"),
    *[(["serve", "--rank", "0", "--servers", "2", "--rendezvous", "tcp://127.0.0.1:1", "--listen", "127.0.0.1:1",
        "--data-dir", "d", "--cert", "c", "--key", "k", "--max-upload-mb", size], fragment)
      for size, fragment in (("lots", "--max-upload-mb must be a size in MiB"),
                             ("0", "--max-upload-mb must be a finite size"), ("inf", "must be a finite size"))],
]


@pytest.mark.parametrize("argv, fragment", CLI_CASES, ids=[f"cli-{i}" for i in range(len(CLI_CASES))])
def test_bad_cli_input_gets_one_clear_line_before_any_work(argv, fragment, capsys):
    assert cli_exit_code(argv) == 2  # these on top of test_demo's cases
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err


def _serve_argv(tmp_path, *flags: str) -> list[str]:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("not read: the server is never started here")
    return ["serve", "--rank", "1", "--servers", "3", "--rendezvous", "tcp://127.0.0.1:1", "--listen",
            "127.0.0.1:1", "--data-dir", str(tmp_path / "d"), "--cert", str(tmp_path / "c.pem"), "--key",
            str(tmp_path / "k.pem"), *flags]


def test_pricure_serve_flags_become_the_shared_config_objects(tmp_path, monkeypatch):
    """``pricure serve`` builds the same Aggregation/Cluster/Batching/Offline objects as library mode."""
    import pricure_crypten.parties.net.serve as serve
    from pricure_crypten.parties.net.config import Budget, load_settings, public_settings

    captured = []
    monkeypatch.setattr(serve, "serve", lambda **config: captured.append(SimpleNamespace(**config)) or 0)
    argv = _serve_argv(tmp_path, "--mechanism", "confident-gnmax", "--threshold", "2.5", "--sigma-threshold", "1",
                       "--sigma", "0.5", "--logit-bound", "8", "--colluding", "1", "--max-batch", "32",
                       "--offline-batch", "8", "--offline-batch", "4", "--offline-depth", "2", "--threads", "2",
                       "--timeout", "45")
    assert cli_exit_code(argv) == 0
    (config,) = captured
    noise = config.aggregation.noise  # mechanisms compare by their parameters (repr), not identity
    assert repr(noise) == repr(ConfidentGNMax(threshold=2.5, sigma_threshold=1.0, sigma=0.5, delta=1e-5))
    assert (config.aggregation.method, config.aggregation.logit_bound) == ("vote", 8.0)
    assert config.cluster == Cluster(num_servers=3, colluding=1, threads_per_server=2, request_timeout=45.0)
    assert config.batching == Batching(max_rows=32) and config.offline == Offline(batch_sizes=(4, 8), depth=2)
    settings = load_settings(aggregation=config.aggregation, cluster=config.cluster)
    assert settings.mechanism is noise and settings.logit_bound == 8.0
    # the defaults: epsilon inf (no noise), the secure provider, no stock
    captured.clear()
    assert cli_exit_code(_serve_argv(tmp_path)) == 0
    assert isinstance(captured[0].aggregation.noise, NoNoise) and captured[0].cluster.provider == "ttp"
    default = captured[0]
    assert not default.offline.enabled and public_settings(aggregation=default.aggregation, cluster=default.cluster,
                                                          batching=default.batching,
                                                          offline=default.offline)["servers"] == 3
    assert default.seat.rank == 1 and default.budget == Budget()  # the server's own objects: rank, unlimited budget
    with pytest.warns(InsecureProviderWarning):
        assert cli_exit_code(_serve_argv(tmp_path, "--provider", "insecure-tfp")) == 0
    assert captured[-1].cluster.crypten_provider == "TFP"


@pytest.mark.parametrize("flags, fragment", [
    (["--mechanism", "confident-gnmax", "--threshold", "2"], "needs --threshold, --sigma-threshold and --sigma"),
    (["--offline-batch", "64", "--max-batch", "32"], "no MPC batch that large ever runs"),
    (["--offline-batch", "4", "--provider", "insecure-tfp"], "needs the dealer"),
    (["--logit-bound", "500"], "logit_bound"),
    (["--colluding", "3"], "colluding must be in"),
])
def test_pricure_serve_refuses_bad_parity_flags_with_one_line(tmp_path, monkeypatch, capsys, flags, fragment):
    import warnings

    import pricure_crypten.parties.net.serve as serve

    monkeypatch.setattr(serve, "serve", lambda **config: pytest.fail("started despite bad flags"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureProviderWarning)
        assert cli_exit_code(_serve_argv(tmp_path, *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_a_servers_own_config_objects_refuse_bad_settings_naming_them(tmp_path):
    """FrontDoor, Seat and Budget validate on construction (keyword-only); check_fits checks them together."""
    from pricure_crypten.parties.net.config import Budget, FrontDoor, Seat, check_fits
    from pricure_crypten.parties.net.node import Node

    seat = Seat(rank=2, rendezvous="tcp://127.0.0.1:1", data_dir=tmp_path / "d")
    door = FrontDoor(host="127.0.0.1", port=1)
    with pytest.raises(TypeError):
        FrontDoor("127.0.0.1", 1)  # keyword-only
    for bad, fragment in [(lambda: FrontDoor(host="h", port=70000), "port"),
                          (lambda: FrontDoor(host="h", port=1, certfile=tmp_path / "c.pem"), "keyfile"),
                          (lambda: FrontDoor(host="h", port=1, max_client_rows=0), "max_client_rows"),
                          (lambda: FrontDoor(host="h", port=1, header_timeout=-1.0), "header_timeout"),
                          (lambda: Seat(rank=-1, rendezvous="tcp://h:1", data_dir=tmp_path), "rank"),
                          (lambda: Seat(rank=0, rendezvous="tcp://h:1", data_dir=tmp_path, tick=0), "tick"),
                          (lambda: Budget(epsilon=-1.0), "epsilon"),
                          (lambda: Budget(delta=1.5), "delta"),
                          (lambda: Budget(accountant="moments"), "unknown accountant 'moments'")]:
        with pytest.raises((TypeError, ValueError), match=fragment):
            bad()
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        check_fits(seat=seat, aggregation=Aggregation(), cluster=Cluster(), batching=Batching(), offline=Offline())
    with pytest.raises(ValueError, match="no MPC batch that large"):
        check_fits(seat=Seat(rank=0, rendezvous="tcp://h:1", data_dir=tmp_path), aggregation=Aggregation(),
                   cluster=Cluster(), batching=Batching(max_rows=8), offline=Offline(batch_sizes=(16,)))
    with pytest.raises(TypeError, match="cluster must be a pricure_crypten.config.Cluster"):
        Node(seat=seat, front_door=door, cluster={"num_servers": 3})
    with pytest.raises(TypeError, match="budget must be"):
        Node(seat=Seat(rank=0, rendezvous="tcp://h:1", data_dir=tmp_path / "d"), front_door=door, budget=1.0)
    assert not (tmp_path / "d").exists()  # refused before anything was created
    assert Budget() == Budget(epsilon=float("inf"), delta=0.0, accountant="auto")

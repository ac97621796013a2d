"""The MPC path releases what the plaintext simulation releases: per query (test-only seeded noise) and in rate.

Per-query check: with a TestOnlyNoiseSeed the servers' noise partials are
drawn from per-row seeded streams, the simulation draws the same ones, and the
labels must be EQUAL on every query whose owners' votes are robust to a logit
error of ``margin_bound`` (the fixed-point evaluation of the models). The
check is shown to fail on a mis-seeded simulation (wrong noise) and on a
simulation with another tie-break (highest index).

Statistical check (production CSPRNG noise): the flip rates (private label !=
noiseless label) of the MPC path and of the simulation, by the paired
per-query z-test and Fisher's exact test. Power, for the sample used here
(256 queries, 2 MPC repeats = 512 MPC trials, 50 simulation repeats; printed
by the test and asserted below): the paired test detects a uniform shift of
the per-query flip rates of ``paired_detectable`` (0.061 in a run here; asserted <= 0.07) with 80%
power at alpha = 0.05 (two-sided). The test passes at alpha = 1e-3 (a
correct implementation fails with probability 1e-3) and is shown to reject a
simulation at a quarter of the epsilon (4x the noise scale; at 2x the flip rate
moves by about the detectable difference only).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pricure_crypten import Aggregation, Cluster, ExperimentOptions, NoNoise, PrivateEnsemble, calibrate
from pricure_crypten.experiments import conformance
from pricure_crypten.experiments.conformance import (
    SeededSimulationOps,
    compare_flip_rates,
    compare_mpc_to_simulation,
    flip_rate_test,
    minimum_detectable_difference,
    mpc_labels,
    robust_votes,
)
from pricure_crypten.mpc.randomness import (
    TEST_ONLY_NOISE_ENV,
    TestOnlyNoiseSeed,
    TestOnlySeededNoiseRefused,
)
from pricure_crypten.parties.serving.messages import Load, ServerSettings
from pricure_crypten.privacy.noise import ConfidentGNMax
from tests.helpers import REPO, mlp_owners

pytestmark = pytest.mark.filterwarnings("ignore::pricure_crypten.mpc.randomness.TestOnlyNoiseWarning")


@pytest.fixture
def seeded_env(monkeypatch):
    monkeypatch.setenv(TEST_ONLY_NOISE_ENV, "1")


def random_owners(k: int, *, features: int = 8, classes: int = 3, hidden: int = 6, seed: int = 0) -> list:
    """Small untrained MLPs; the last layer is scaled so that most owners' votes have a clear margin."""
    return mlp_owners(k, features=features, classes=classes, hidden=(hidden,), seed=seed * 1000, names="o{}",
                      scale=(20.0, 5.0))


def queries(n: int, features: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, features))).float()


# -- the test-only switch: refused without the environment variable, unreachable from the CLI and the network --


def test_the_seed_is_refused_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(TEST_ONLY_NOISE_ENV, raising=False)
    with pytest.raises(TestOnlySeededNoiseRefused, match=TEST_ONLY_NOISE_ENV):
        TestOnlyNoiseSeed("s")
    monkeypatch.setenv(TEST_ONLY_NOISE_ENV, "true")  # only exactly "1" enables it
    with pytest.raises(TestOnlySeededNoiseRefused):
        TestOnlyNoiseSeed("s")


def test_experiment_options_check_the_type_and_the_environment(monkeypatch, seeded_env):
    seed = TestOnlyNoiseSeed("s")
    assert ExperimentOptions(test_only_noise_seed=seed).test_only_noise_seed is seed
    with pytest.raises(TypeError, match="TestOnlyNoiseSeed"):
        ExperimentOptions(test_only_noise_seed="s")
    monkeypatch.delenv(TEST_ONLY_NOISE_ENV)
    with pytest.raises(TestOnlySeededNoiseRefused):
        ExperimentOptions(test_only_noise_seed=seed)


def test_a_server_refuses_the_seed_before_anything_else_without_the_environment_variable(monkeypatch, seeded_env):
    from pricure_crypten.parties.server import ServerConfig, ServerState

    seed = TestOnlyNoiseSeed("s")
    monkeypatch.delenv(TEST_ONLY_NOISE_ENV)
    state = ServerState(ServerConfig(0, 2, "file:///nonexistent", "TTP", 1, 1.0, os.getpid()), audit=None)
    with pytest.raises(TestOnlySeededNoiseRefused, match="server 0"):
        state.load(Load(bundles=(), settings=ServerSettings(aggregation="vote", mechanism=NoNoise(), colluding=0,
                                                            logit_bound=16.0, test_only_noise_seed=seed)))
    assert state.test_only_noise is None


def test_seeded_noise_is_unreachable_from_the_cli_and_the_networked_servers():
    from pricure_crypten.config import Offline
    from pricure_crypten.parties.net import config as net_config
    from pricure_crypten.parties.net.loading import Loading

    # the networked server's load message never carries a seed (pricure serve builds it from its own config
    # objects and the shared ones, which hold none: ExperimentOptions is not among them)
    fields = [f for kind in (net_config.FrontDoor, net_config.Seat, net_config.Budget)
              for f in dataclasses.fields(kind)]
    assert len(fields) > 10 and not [f.name for f in fields if "seed" in f.name or "experiment" in f.name]
    payloads = []
    recorder = types.SimpleNamespace(load=payloads.append)
    loading = Loading(seat=net_config.Seat(rank=0, rendezvous="tcp://h:1", data_dir=Path(".")), servers=2,
                      models=types.SimpleNamespace(meta=lambda: {}),
                      settings=net_config.load_settings(aggregation=Aggregation(noise=calibrate(epsilon=1.0)),
                                                        cluster=Cluster()),
                      offline=Offline(), lock=threading.Lock())
    loading._load(recorder, [("owner", "arch")], [object()])
    assert len(payloads) == 1 and isinstance(payloads[0], Load)
    assert payloads[0].settings.test_only_noise_seed is None and payloads[0].settings.noise_seed is None
    # and no front door (CLI, networked node, wire format) names it at all
    sources = [REPO / "src/pricure_crypten/cli.py", *sorted((REPO / "src/pricure_crypten/parties/net").glob("*.py"))]
    for path in sources:
        text = path.read_text()
        for name in ("TestOnlyNoiseSeed", "test_only_noise_seed", "TEST_ONLY_NOISE_ENV", "PRICURE_TEST_ONLY_SEEDED_NOISE"):
            assert name.lower() not in text.lower(), (path, name)


# -- the seeded streams and the simulation (no MPC) --


def test_seeded_partials_depend_on_the_row_not_on_the_batching(seeded_env):
    seed = TestOnlyNoiseSeed("rows")
    noise = calibrate(epsilon=1.0)  # Laplace: Gamma differences (rejection sampling: draw counts vary)
    whole = seed.batch(server=1, first_row=0, rows=10).partial(noise.partial, (10, 3), num_servers=2, colluding=0)
    first = seed.batch(server=1, first_row=0, rows=4).partial(noise.partial, (4, 3), num_servers=2, colluding=0)
    rest = seed.batch(server=1, first_row=4, rows=6).partial(noise.partial, (6, 3), num_servers=2, colluding=0)
    np.testing.assert_array_equal(whole, np.concatenate([first, rest]))
    other_server = seed.batch(server=0, first_row=0, rows=10).partial(noise.partial, (10, 3), num_servers=2,
                                                                     colluding=0)
    assert not np.any(whole == other_server)
    with pytest.raises(ValueError, match="expected 10 rows"):
        seed.batch(server=0, first_row=0, rows=10).partial(noise.partial, (9, 3), num_servers=2, colluding=0)


def test_robust_votes_match_a_brute_force_reference():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=0.05, size=(4, 300, 3))
    logits[0, :20] = 64.0 + rng.normal(scale=0.01, size=(20, 3))  # saturated at the clamp bound
    bound, clamp = 0.02, 64.0
    expected = np.ones(300, dtype=bool)
    for k in range(4):
        for b in range(300):
            x = logits[k, b]
            w = int(np.argmax(np.clip(x, -clamp, clamp)))
            for c in range(3):
                if c == w:
                    continue
                worst = x.copy()
                worst[w] -= bound
                worst[c] += bound
                if int(np.argmax(np.clip(worst, -clamp, clamp))) != w:
                    expected[b] = False
    got = robust_votes(logits, margin_bound=bound, logit_bound=clamp)
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.sum() < 300


@pytest.mark.parametrize("mechanism", [calibrate(epsilon=0.5), NoNoise(),
                                       ConfidentGNMax(threshold=8.0, sigma_threshold=2.0, sigma=2.0)],
                         ids=["laplace", "none", "confident-gnmax"])
def test_decided_releases_are_sound_against_perturbed_logits(seeded_env, mechanism):
    """Reference: the seeded simulation on logits perturbed within the bound (30 random draws, fixed seed);
    wherever a release is called decided, no perturbation changes it. Many owners near a tie (K = 50, small
    logits), so no query has all votes robust, yet most releases are decided."""
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=0.3, size=(50, 300, 10))
    seed, bound = TestOnlyNoiseSeed("intervals"), 0.02
    decided = conformance.decided_releases(logits, mechanism=mechanism, seed=seed, margin_bound=bound,
                                           batch_rows=128)
    assert not robust_votes(logits, margin_bound=bound).any() and 30 <= decided.sum() < 300
    base = conformance.simulate_seeded(conformance.histogram(logits, aggregation="vote"), mechanism=mechanism,
                                       seed=seed, batch_rows=128)
    changed = np.zeros(300, dtype=bool)
    for _ in range(30):
        moved = logits + rng.choice([-bound, 0.0, bound], size=logits.shape)
        changed |= conformance.simulate_seeded(conformance.histogram(moved, aggregation="vote"), mechanism=mechanism,
                                               seed=seed, batch_rows=128) != base
    assert changed.any()  # the perturbations do move labels ...
    assert not (changed & decided).any()  # ... but never a decided one


def test_flip_rate_test_has_its_stated_power():
    """Monte Carlo (fixed seed): at a uniform shift of ``paired_detectable`` the paired test rejects at
    alpha = 0.05 in about 80% of 300 replicates (binomial SE 0.023; accepted range 0.68-0.92), and under
    H0 in about 5% (accepted <= 0.10)."""
    rng = np.random.default_rng(11)
    p = rng.choice([0.0, 0.02, 0.3, 0.5, 0.9], size=400)
    shift = flip_rate_test(rng.random((2, 400)) < p, rng.random((50, 400)) < p)["paired_detectable"]
    rejections_h1 = rejections_h0 = 0
    for _ in range(300):
        sim = rng.random((50, 400)) < p
        rejections_h0 += flip_rate_test(rng.random((2, 400)) < p, sim)["paired_p"] < 0.05
        rejections_h1 += flip_rate_test(rng.random((2, 400)) < np.clip(p + shift, 0, 1), sim)["paired_p"] < 0.05
    assert 0.68 <= rejections_h1 / 300 <= 0.92, rejections_h1
    assert rejections_h0 / 300 <= 0.10, rejections_h0
    # the two-proportion formula against its own Monte Carlo: p = 0.3, n1 = 500, n2 = 5000
    d = minimum_detectable_difference(0.3, 500, 5000)
    hits = sum(flip_rate_test(rng.random((1, 500)) < 0.3 + d, rng.random((10, 500)) < 0.3)["fisher_p"] < 0.05
               for _ in range(200))
    assert 0.68 <= hits / 200 <= 0.92, (d, hits)


# -- on real CrypTen servers --


@pytest.mark.mpc
def test_seeded_mpc_labels_equal_the_simulation_query_by_query_and_a_mis_seeded_simulation_fails(seeded_env):
    owners, batch = random_owners(5), queries(256)
    mechanism, seed = calibrate(epsilon=1.0), TestOnlyNoiseSeed("per-query")  # Laplace, b = 2
    report = compare_mpc_to_simulation(owners, batch, mechanism=mechanism, seed=seed, batch_rows=128)
    print(report.summary())
    assert report.passed and report.disagreements == ()
    assert report.compared >= 200 and report.agreements == report.compared
    assert report.flips >= 20  # the noise changed labels: equality is not trivial
    wrong = compare_mpc_to_simulation(owners, batch, mechanism=mechanism, seed=TestOnlyNoiseSeed("per-query-2"),
                                      labels=np.array(report.mpc_labels))
    assert not wrong.passed and len(wrong.disagreements) >= 20, wrong.summary()


@pytest.mark.mpc
def test_confident_gnmax_with_three_servers_one_colluding_matches_per_query(seeded_env):
    """Two noise additions per release (threshold, argmax), three servers' streams, rows counted across batches."""
    owners, batch = random_owners(5, seed=2), queries(96, seed=5)
    mechanism = ConfidentGNMax(threshold=4.0, sigma_threshold=1.0, sigma=1.0)
    report = compare_mpc_to_simulation(owners, batch, mechanism=mechanism, seed=TestOnlyNoiseSeed("gnmax"),
                                       cluster=Cluster(num_servers=3, colluding=1), batch_rows=48)
    print(report.summary())
    labels = np.array(report.mpc_labels)
    assert report.passed and report.compared >= 70
    assert 5 <= np.sum(labels == -1) <= 91  # both abstentions and answers occurred


class HighestIndexTieBreak(SeededSimulationOps):
    """A broken simulation: exact ties to the HIGHEST class index."""

    def argmax(self, values):
        flipped = values[..., ::-1]
        return np.eye(values.shape[-1])[values.shape[-1] - 1 - np.argmax(flipped, axis=-1)]


@pytest.mark.mpc
def test_without_noise_ties_match_and_a_simulation_with_another_tie_break_fails(seeded_env):
    owners, batch = random_owners(4, classes=2, seed=3), queries(96, seed=7)  # 4 binary votes: 2-2 ties
    seed = TestOnlyNoiseSeed("ties")
    report = compare_mpc_to_simulation(owners, batch, mechanism=NoNoise(), seed=seed, batch_rows=96)
    assert report.passed and report.flips == 0
    broken = compare_mpc_to_simulation(owners, batch, mechanism=NoNoise(), seed=seed, ops_factory=HighestIndexTieBreak,
                                       labels=np.array(report.mpc_labels))
    logits = conformance.ensemble_logits([o.model for o in owners], batch)
    counts = conformance.histogram(logits, aggregation="vote")
    robust = robust_votes(logits, margin_bound=report.margin_bound)
    ties = np.flatnonzero(robust & (counts[:, 0] == counts[:, 1]))
    assert len(ties) >= 5
    assert broken.disagreements == tuple(int(i) for i in ties)


@pytest.mark.mpc
def test_servers_refuse_the_seed_when_their_environment_lacks_the_variable(monkeypatch, seeded_env):
    from pricure_crypten.parties.cluster import ServerError

    options = ExperimentOptions(test_only_noise_seed=TestOnlyNoiseSeed("refused"))
    monkeypatch.delenv(TEST_ONLY_NOISE_ENV)  # the spawned servers inherit the environment without it
    with pytest.raises(ServerError, match=TEST_ONLY_NOISE_ENV):
        with PrivateEnsemble(random_owners(2), experiment=options):
            pass


@pytest.mark.mpc
def test_flip_rates_of_the_mpc_path_match_the_simulation_with_production_noise():
    owners, batch = random_owners(5, seed=4), queries(256, seed=9)
    mechanism = calibrate(epsilon=1.0)
    labels, _ = mpc_labels(owners, batch, mechanism=mechanism, batch_rows=128, repeats=2)  # CSPRNG noise
    report = compare_flip_rates(owners, batch, mechanism=mechanism, labels=labels, simulation_repeats=50)
    print(report.summary())
    assert report.paired_p > 1e-3 and report.fisher_p > 1e-3
    assert 0.1 <= report.mpc_rate <= 0.6  # a flip rate where the test has power
    assert report.paired_detectable <= 0.07
    # the test can fail: the same MPC labels against a simulation with 4x the noise scale (flip rate ~0.6
    # against ~0.48; 2x moves it by about the detectable difference only, ~0.06)
    wrong = compare_flip_rates(owners, batch, mechanism=calibrate(epsilon=0.25), labels=labels, simulation_repeats=50)
    assert wrong.paired_p < 1e-3, wrong.summary()


def test_the_harness_refuses_bad_input_before_any_mpc_work(seeded_env):
    owners = random_owners(2)
    with pytest.raises(TypeError, match="TestOnlyNoiseSeed"):
        compare_mpc_to_simulation(owners, queries(4), mechanism=NoNoise(), seed="s")
    with pytest.raises(ValueError, match="margin_bound"):
        compare_mpc_to_simulation(owners, queries(4), mechanism=NoNoise(), seed=TestOnlyNoiseSeed("s"),
                                  margin_bound=-1)
    with pytest.raises(ValueError, match="non-empty batch"):
        compare_mpc_to_simulation(owners, torch.zeros(0, 8), mechanism=NoNoise(), seed=TestOnlyNoiseSeed("s"))
    with pytest.raises(ValueError, match="truncation error"):
        compare_mpc_to_simulation(owners, queries(4), mechanism=NoNoise(), seed=TestOnlyNoiseSeed("s"),
                                  margin_bound=1e-6)
    parameter = inspect.signature(compare_mpc_to_simulation).parameters["margin_bound"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY

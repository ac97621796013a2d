"""Privacy budget enforcement in the protocol, and Confident-GNMax under MPC."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch
from scipy import stats

from pricure_crypten import (
    Aggregation,
    Client,
    Cluster,
    ExperimentOptions,
    InsecureSeedWarning,
    PrivateEnsemble,
    ServerError,
    calibrate,
)
from pricure_crypten.experiments import reference
from pricure_crypten.privacy.accounting import BudgetExceededError, PrivacyLedger
from pricure_crypten.privacy.noise import ConfidentGNMax
from tests.helpers import constant_owners

pytestmark = pytest.mark.mpc


def test_budget_is_charged_before_release_refused_before_mpc_and_not_charged_on_failure(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3", total_epsilon=5.0, accountant="basic")
    client = Client("alice")
    over = PrivateEnsemble(constant_owners([0, 1], 2), aggregation=Aggregation(noise=calibrate(epsilon=1.0)),
                           cluster=Cluster(num_servers=2), ledger=ledger)
    with pytest.raises(BudgetExceededError):
        over.predict(torch.zeros(6, 2), client=client)  # 6 queries x epsilon 1 > 5
    assert not over.servers.running  # refused before any server was started
    status = ledger.status("alice")
    assert status.spent_epsilon == 0 and status.refused_queries >= 1 and client.reveals == 0

    ensemble = PrivateEnsemble(constant_owners([0, 1], 2), aggregation=Aggregation(noise=calibrate(epsilon=1.0)),
                               cluster=Cluster(num_servers=2), ledger=ledger)
    try:
        prediction = ensemble.predict(torch.zeros(2, 2), client=client)
        assert prediction.cost.reveals == 1
        assert ledger.status("alice").spent_epsilon == pytest.approx(2.0)
        assert ledger.status("alice").answered_queries == 2

        requests = []
        real = ensemble.servers.request
        ensemble.servers.request = lambda messages: requests.append(messages[0].op) or real(messages)
        with pytest.raises(BudgetExceededError, match="alice"):
            ensemble.predict(torch.zeros(4, 2), client=client)  # 2 + 4 > 5
        assert requests == [] and client.reveals == 1
        assert ledger.status("alice").spent_epsilon == pytest.approx(2.0)

        os.kill(ensemble.servers.server_pids[0], signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(ServerError):
            ensemble.predict(torch.zeros(1, 2), client=client)
        # A failure inside the MPC reveals nothing and is NOT charged: the reservation is rolled back.
        assert ledger.status("alice").spent_epsilon == pytest.approx(2.0) and client.reveals == 1
    finally:
        ensemble.close()
        ledger.close()


def test_confident_gnmax_validates():
    with pytest.raises(ValueError, match="threshold must be"):
        ConfidentGNMax(threshold=-1, sigma_threshold=1, sigma=1)
    with pytest.raises(ValueError, match="delta must be > 0"):
        ConfidentGNMax(threshold=1, sigma_threshold=1, sigma=1, delta=0.0)
    with pytest.raises(ValueError, match="aggregation='vote'"):
        PrivateEnsemble(constant_owners([0], 2), aggregation=Aggregation(
            method="softmax", noise=ConfidentGNMax(threshold=1, sigma_threshold=1, sigma=1)))


def test_confident_gnmax_event_composes_both_gaussian_steps():
    import dp_accounting

    m = ConfidentGNMax(threshold=4, sigma_threshold=3.0, sigma=2.0, delta=1e-5)
    both = dp_accounting.rdp.RdpAccountant()
    both.compose(dp_accounting.GaussianDpEvent(3.0))  # threshold: sensitivity 1
    both.compose(dp_accounting.GaussianDpEvent(2.0 / np.sqrt(2)))  # argmax: L2 sensitivity sqrt(2)
    single = dp_accounting.rdp.RdpAccountant()
    single.compose(m.dp_event())
    assert single.get_epsilon(1e-5) == pytest.approx(both.get_epsilon(1e-5), rel=1e-9)


@pytest.mark.slow
def test_confident_gnmax_in_mpc_matches_the_plaintext_reference_in_distribution():
    votes = [0, 0, 0, 0, 1, 1]  # histogram [4, 2, 0]
    counts = np.bincount(votes, minlength=3).astype(float)
    mechanism = ConfidentGNMax(threshold=4.0, sigma_threshold=1.0, sigma=1.0)
    draws = 2000
    with pytest.warns(InsecureSeedWarning, match="noise_seed"):
        experiment = ExperimentOptions(noise_seed="gnmax")
    with PrivateEnsemble(constant_owners(votes, 3), aggregation=Aggregation(noise=mechanism),
                         cluster=Cluster(num_servers=3), experiment=experiment) as ens:
        labels = ens.predict(torch.zeros(draws, 2)).labels
    outcomes = [-1, 0, 1, 2]

    def frequencies(x):
        return np.array([(x == o).sum() for o in outcomes])

    mpc = frequencies(labels)
    right = frequencies(reference.confident_gnmax(np.tile(counts, (8000, 1)), mechanism=mechanism, seed=1))
    wrong_mech = ConfidentGNMax(threshold=4.0, sigma_threshold=2.0, sigma=2.0)  # noise 2x
    wrong = frequencies(reference.confident_gnmax(np.tile(counts, (8000, 1)), mechanism=wrong_mech, seed=2))

    def pvalue(a, b):
        keep = (a + b) > 0
        return stats.chi2_contingency(np.stack([a[keep], b[keep]]))[1]

    assert mpc[0] > 0 and mpc[1] > 0  # both abstentions and answers occur
    assert pvalue(mpc, right) > 1e-3, (mpc, right)
    assert pvalue(mpc, wrong) < 1e-4, (mpc, wrong)

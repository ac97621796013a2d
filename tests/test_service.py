"""Many clients at once: one agreed order, dynamic batching, each client its own rows and its own budget."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pricure_crypten import Aggregation, Batching, Client, NoNoise, PrivateEnsemble, calibrate
from pricure_crypten.privacy.accounting import PrivacyLedger
from tests.helpers import argmax_owners, argmax_queries

pytestmark = pytest.mark.mpc


def _hammer(ensemble: PrivateEnsemble, clients: int, calls: int) -> dict[int, list]:
    """``clients`` threads, each making ``calls`` calls of a client-specific size, all at once."""
    results: dict[int, list] = {c: [] for c in range(clients)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients)

    def run(c: int) -> None:
        client = Client(f"client-{c}")
        try:
            barrier.wait()
            for call in range(calls):
                x, expected = argmax_queries(c, call, rows=3 + c)
                prediction = ensemble.predict(x, client=client)
                results[c].append((prediction, expected))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    return results


@pytest.mark.parametrize("enabled", [True, False], ids=["dynamic-batching", "one-batch-per-call"])
def test_concurrent_clients_each_get_their_own_answers(enabled):
    clients, calls = 8, 4
    batching = Batching(enabled=enabled, window=0.05)
    with PrivateEnsemble(argmax_owners(3), aggregation=Aggregation(noise=NoNoise()), batching=batching) as ens:
        results = _hammer(ens, clients, calls)
        batches = ens._scheduler.batches_run
    for c, outcomes in results.items():
        assert len(outcomes) == calls
        for prediction, expected in outcomes:
            assert np.array_equal(prediction.labels, expected), (c, prediction.labels, expected)
            assert prediction.cost.reveals == 1 and prediction.cost.server_decodes == 0
            assert prediction.cost.queries == len(expected)
    if enabled:
        assert batches < clients * calls  # concurrent calls were packed together
        assert max(p.cost.batch_queries for o in results.values() for p, _ in o) > 3 + clients - 1
    else:
        assert batches == clients * calls
        assert all(p.cost.batch_queries == p.cost.queries for o in results.values() for p, _ in o)


def test_a_call_larger_than_a_batch_is_split_and_reassembled_in_order():
    x, expected = argmax_queries(2, 0, rows=23)
    with PrivateEnsemble(argmax_owners(2), aggregation=Aggregation(noise=NoNoise()),
                         batching=Batching(max_rows=5)) as ens:
        prediction = ens.predict(x)
    assert np.array_equal(prediction.labels, expected)
    assert prediction.cost.batches == 5 and prediction.cost.reveals == 1


def test_the_ledger_charges_each_concurrent_client_for_its_own_rows(tmp_path):
    mechanism = calibrate(epsilon=2.0)
    with PrivacyLedger(tmp_path / "ledger.sqlite3", total_epsilon=1e6, accountant="basic") as ledger, \
            PrivateEnsemble(argmax_owners(2), aggregation=Aggregation(noise=mechanism), ledger=ledger,
                            batching=Batching(window=0.05)) as ens:
        _hammer(ens, clients=4, calls=2)
        for c in range(4):
            status = ledger.status(f"client-{c}")
            rows = 2 * (3 + c)
            assert status.answered_queries == rows
            assert status.spent_epsilon == pytest.approx(rows * 2.0)

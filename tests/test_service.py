"""Many clients at once: one agreed order, dynamic batching, each client its own rows and its own budget."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from pricure_crypten import Aggregation, Batching, Client, ModelOwner, NoNoise, PrivateEnsemble, calibrate
from pricure_crypten.privacy.accounting import PrivacyLedger

pytestmark = pytest.mark.mpc

NUM_CLASSES = 5


def _argmax_owners(count: int) -> list[ModelOwner]:
    """Owners that all compute label = argmax(x) on x in R^5 (an identity layer): the ensemble's
    answer to a query is known in advance, so any row given to the wrong client shows."""
    owners = []
    for i in range(count):
        layer = nn.Linear(NUM_CLASSES, NUM_CLASSES)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(NUM_CLASSES))
            layer.bias.zero_()
        owners.append(ModelOwner(name=f"o{i}", model=nn.Sequential(layer), input_shape=(NUM_CLASSES,),
                                 num_classes=NUM_CLASSES))
    return owners


def _client_queries(client: int, call: int, rows: int) -> tuple[torch.Tensor, np.ndarray]:
    """Client ``client``'s call ``call``: row r has its maximum at (client * 7 + call * 3 + r * (client + 1)) % 5,
    a sequence that differs between any two clients (and calls)."""
    labels = (client * 7 + call * 3 + np.arange(rows) * (client + 1)) % NUM_CLASSES
    x = torch.full((rows, NUM_CLASSES), -1.0)
    x[torch.arange(rows), torch.from_numpy(labels)] = 2.0
    x += 0.01 * client  # a client-specific offset, so even equal labels come from different rows
    return x, labels


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
                x, expected = _client_queries(c, call, rows=3 + c)
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
    with PrivateEnsemble(_argmax_owners(3), aggregation=Aggregation(noise=NoNoise()), batching=batching) as ens:
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
    x, expected = _client_queries(2, 0, rows=23)
    with PrivateEnsemble(_argmax_owners(2), aggregation=Aggregation(noise=NoNoise()),
                         batching=Batching(max_rows=5)) as ens:
        prediction = ens.predict(x)
    assert np.array_equal(prediction.labels, expected)
    assert prediction.cost.batches == 5 and prediction.cost.reveals == 1


def test_the_ledger_charges_each_concurrent_client_for_its_own_rows(tmp_path):
    mechanism = calibrate(epsilon=2.0)
    with PrivacyLedger(tmp_path / "ledger.sqlite3", total_epsilon=1e6, accountant="basic") as ledger, \
            PrivateEnsemble(_argmax_owners(2), aggregation=Aggregation(noise=mechanism), ledger=ledger,
                            batching=Batching(window=0.05)) as ens:
        _hammer(ens, clients=4, calls=2)
        for c in range(4):
            status = ledger.status(f"client-{c}")
            rows = 2 * (3 + c)
            assert status.answered_queries == rows
            assert status.spent_epsilon == pytest.approx(rows * 2.0)

"""One conformance suite for both modes of the serving core: in-process and networked.

The same owners and the same queries go to a :class:`PrivateEnsemble` (library
mode: spawned server processes) and to a networked deployment (every server
its own ``pricure serve`` process on a loopback address, the dealer ``pricure
dealer``, the owners uploading over HTTPS, the client a ``RemoteEnsemble``).
Both must give:

* the same result type (:class:`Prediction`) and the same labels, equal to an
  independent plaintext reference (the owners' torch models, argmax of the
  summed votes; the owners are chosen so that no row has a tie);
* the same costs in rounds and bytes (the same MPC batch), no server decode,
  one reveal;
* the same refusals: a malformed batch is refused with the same message before
  any MPC work (no batch run), and a batch over the client's budget is refused
  with nothing charged (library: its ledger; networked: every server's ledger);
* the parity features through the same core: Offline stock (a stocked batch,
  and a smaller one padded up to it, make no dealer round trip) and
  Confident-GNMax (the same answered labels and abstentions, charged the same).

Two settings, each started once per mode: ``plain`` (epsilon = inf, owners with
``Square`` and ReLU layers, Offline stock for 4-row batches) and ``gnmax``
(Confident-GNMax with noise small enough to be deterministic here: the
threshold step's and the argmax step's sigma are 0.1 against margins of at
least 0.5 and 3 votes, so a wrong outcome has probability below 1e-6 per row;
a budget that fits 4 queries and not 5).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from pricure_crypten import (Aggregation, Batching, Client, ConfidentGNMax, ModelOwner, NoNoise, Offline,
                             PrivateEnsemble)
from pricure_crypten.experiments.launch import Deployment
from pricure_crypten.mpc.layers import Square
from pricure_crypten.parties.net.remote import RemoteError
from pricure_crypten.parties.serving.results import Prediction
from pricure_crypten.privacy.accounting import PrivacyLedger
from pricure_crypten.privacy.accounting.errors import BudgetExceededError

pytestmark = pytest.mark.mpc

FEATURES, CLASSES = 6, 3
STOCKED = 4  # rows of the Offline batch size
GNMAX = dict(threshold=2.5, sigma_threshold=0.1, sigma=0.1)  # answered iff all 3 owners agree
GNMAX_ROWS = 4
BUDGET, BUDGET_DELTA = 830.0, 1e-5  # Confident-GNMax above at delta 1e-5: 4 queries ~747.7, 5 queries ~915.2


def _owners() -> list[ModelOwner]:
    """Owners 0 and 1 identical (Square activations), owner 2 another architecture (ReLU): never a tie."""
    torch.manual_seed(17)
    square = nn.Sequential(nn.Linear(FEATURES, 8), Square(), nn.Linear(8, CLASSES))
    relu = nn.Sequential(nn.Linear(FEATURES, 5), nn.ReLU(), nn.Linear(5, CLASSES))
    models = [square, square, relu]
    return [ModelOwner(name=f"owner{i}", model=m, input_shape=(FEATURES,), num_classes=CLASSES)
            for i, m in enumerate(models)]


def _queries(rows: int, seed: int) -> np.ndarray:
    """Queries on which every owner's top logit leads by > 0.1 (fixed-point errors are ~1e-3: no flipped vote)."""
    pool = np.random.default_rng(seed).normal(scale=2.0, size=(20 * rows, FEATURES)).astype(np.float32)
    with torch.no_grad():
        margins = [torch.topk(o.model(torch.tensor(pool)), 2).values for o in _owners()]
    clear = np.all([(m[:, 0] - m[:, 1]).numpy() > 0.1 for m in margins], axis=0)
    return pool[clear][:rows]


def _votes(owners: list[ModelOwner], x: np.ndarray) -> np.ndarray:
    """The plaintext reference: (rows, classes) vote counts of the owners' torch models."""
    with torch.no_grad():
        picks = [o.model(torch.tensor(x)).argmax(1).numpy() for o in owners]
    return sum(np.eye(CLASSES, dtype=np.int64)[p] for p in picks)


@dataclass
class Mode:
    """One mode behind one interface: predict, the MPC batches run so far, the client's charge per ledger."""

    name: str
    predict: Callable[[np.ndarray], Prediction]
    batches: Callable[[], int]
    spent: Callable[[], list[float]]


def _library(tmp_path, owners: list[ModelOwner], aggregation: Aggregation, budget: float) -> tuple[Mode, Any]:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3", total_epsilon=budget, total_delta=BUDGET_DELTA)
    ensemble = PrivateEnsemble(owners, aggregation=aggregation, batching=Batching(max_rows=8),
                               offline=Offline(batch_sizes=(STOCKED,), depth=2), ledger=ledger).start()
    client = Client("alice")
    mode = Mode("library", lambda x: ensemble.predict(torch.tensor(x), client=client),
                lambda: ensemble.batches, lambda: [ledger.status("alice").spent_epsilon])

    def close() -> None:
        ensemble.close()
        ledger.close()

    return mode, close


def _networked(owners: list[ModelOwner], flags: list[str]) -> tuple[Mode, Any]:
    deployment = Deployment(servers=2, owners=[o.name for o in owners], clients=["alice"],
                                   serve_flags=["--max-batch", "8", "--offline-batch", str(STOCKED),
                                                "--offline-depth", "2", "--budget-delta", str(BUDGET_DELTA),
                                                *flags])
    deployment.__enter__()
    try:
        for owner in owners:
            deployment.upload(owner)
        deployment.wait_ready(3)
        remote = deployment.remote("alice", timeout=300.0)
    except BaseException:
        deployment.close()
        raise

    def batches() -> int:
        return sum(deployment.health(rank)["batches"] for rank in range(2))

    def spent() -> list[float]:
        return [deployment.status(rank, "alice", total_delta=BUDGET_DELTA).spent_epsilon for rank in range(2)]

    def close() -> None:
        remote.close()
        deployment.close()

    return Mode("networked", remote.predict, batches, spent), close


@contextlib.contextmanager
def _both_modes(tmp_path, aggregation: Aggregation, budget: float, flags: list[str]):
    """The library mode and the networked mode with the same settings, both closed afterwards.

    The deployment starts in a thread while the library ensemble starts here (their processes start side by
    side); the tests begin once both are up.
    """
    owners = _owners()  # built here, once: _owners() seeds torch's global generator (not from two threads)
    with ThreadPoolExecutor(max_workers=1) as pool, contextlib.ExitStack() as stack:
        starting = pool.submit(_networked, owners, flags)
        stack.callback(lambda: None if starting.exception() is not None else starting.result()[1]())
        library, close_library = _library(tmp_path, owners, aggregation, budget)
        stack.callback(close_library)
        networked, _ = starting.result()
        yield {"library": library, "networked": networked}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Epsilon = inf, no budget limit, Offline stock for 4-row batches: both modes."""
    with _both_modes(tmp_path_factory.mktemp("plain"), Aggregation(noise=NoNoise()), math.inf,
                     ["--epsilon", "inf"]) as modes:
        yield modes


@pytest.fixture(scope="module")
def gnmax(tmp_path_factory):
    """Confident-GNMax and a budget that fits 4 queries, not 5: both modes."""
    flags = ["--mechanism", "confident-gnmax", "--threshold", str(GNMAX["threshold"]), "--sigma-threshold",
             str(GNMAX["sigma_threshold"]), "--sigma", str(GNMAX["sigma"]), "--budget-epsilon", str(BUDGET)]
    with _both_modes(tmp_path_factory.mktemp("gnmax"), Aggregation(noise=ConfidentGNMax(**GNMAX)), BUDGET,
                     flags) as modes:
        yield modes


def test_same_result_type_labels_and_costs_at_epsilon_inf_from_offline_stock(plain):
    x = _queries(STOCKED, seed=1)
    expected = _votes(_owners(), x).argmax(1)
    results = {name: mode.predict(x) for name, mode in plain.items()}
    for name, result in results.items():
        assert type(result) is Prediction, name
        np.testing.assert_array_equal(result.labels, expected, err_msg=name)
        cost = result.cost
        assert (cost.queries, cost.reveals, cost.server_decodes, cost.batches, cost.batch_queries) == \
            (STOCKED, 1, 0, 1, STOCKED), (name, cost)
        assert cost.dealer_requests == 0, (name, cost)  # ran from the Offline stock: no dealer round trip
        assert cost.rounds > 0 and cost.bytes_sent > 0, (name, cost)
    library, networked = results["library"].cost, results["networked"].cost
    assert (library.rounds, library.bytes_sent) == (networked.rounds, networked.bytes_sent)


def test_a_smaller_batch_is_padded_to_the_stocked_size_in_both_modes(plain):
    x = _queries(STOCKED - 1, seed=2)
    expected = _votes(_owners(), x).argmax(1)
    results = {name: mode.predict(x) for name, mode in plain.items()}
    for name, result in results.items():
        np.testing.assert_array_equal(result.labels, expected, err_msg=name)  # padding rows never reach the client
        assert result.cost.dealer_requests == 0 and result.cost.batch_queries == STOCKED - 1, (name, result.cost)
    assert results["library"].cost.rounds == results["networked"].cost.rounds
    assert results["library"].cost.bytes_sent == pytest.approx(results["networked"].cost.bytes_sent)


@pytest.mark.parametrize("name", ["library", "networked"])
def test_a_malformed_batch_is_refused_the_same_way_before_any_mpc_work(plain, name):
    mode = plain[name]
    before = mode.batches()
    with pytest.raises(ValueError, match=rf"shape \(batch, {FEATURES}\)") as refused:
        mode.predict(np.zeros((2, FEATURES + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        mode.predict(np.full((2, FEATURES), np.nan, dtype=np.float32))
    assert mode.batches() == before  # no MPC batch ran for either
    assert f"{FEATURES + 1}" in str(refused.value)


def test_confident_gnmax_gives_the_same_labels_and_abstentions_and_charges(gnmax, tmp_path):
    x = _queries(GNMAX_ROWS, seed=3)
    votes = _votes(_owners(), x)
    expected = np.where(votes.max(1) == 3, votes.argmax(1), -1)  # answered iff the 3 owners agree
    assert 0 < np.count_nonzero(expected == -1) < len(expected)  # both outcomes are exercised
    results = {name: mode.predict(x) for name, mode in gnmax.items()}
    for name, result in results.items():
        assert type(result) is Prediction, name
        np.testing.assert_array_equal(result.labels, expected, err_msg=name)
        assert result.cost.server_decodes == 0 and result.cost.reveals == 1, name
    assert results["library"].cost.rounds == results["networked"].cost.rounds
    with PrivacyLedger(tmp_path / "reference.sqlite3", total_epsilon=math.inf, total_delta=BUDGET_DELTA) as reference:
        charge = reference.check("alice", ConfidentGNMax(**GNMAX), queries=GNMAX_ROWS)[0]  # conservative: every row
    assert gnmax["library"].spent() == pytest.approx([charge])
    assert gnmax["networked"].spent() == pytest.approx([charge, charge])  # each server's own ledger


def test_a_batch_over_the_budget_is_refused_in_both_modes_and_nothing_is_charged(gnmax):
    for name, mode in gnmax.items():
        before, batches = mode.spent(), mode.batches()
        with pytest.raises((BudgetExceededError, RemoteError), match="budget") as refused:
            mode.predict(_queries(1, seed=4))
        assert "alice" in str(refused.value), name
        assert mode.spent() == before and mode.batches() == batches, name  # nothing charged, nothing computed

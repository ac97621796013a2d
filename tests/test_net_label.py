"""Private labelling of a pool in the networked mode (``RemoteEnsemble.label``) against the library mode.

Two networked deployments (every server its own ``pricure serve`` process, the dealer ``pricure dealer``,
started by :class:`pricure_crypten.experiments.launch.Deployment`), each shared by the module's tests, with
budgets kept apart by client names, and the library mode (:class:`PrivateEnsemble`) with the same settings:

* ``plain``: epsilon = inf (no noise), 3 owners, ``--max-batch 4``;
* ``gnmax``: Confident-GNMax with noise small enough that every outcome is certain in practice (the owners
  and the pool of ``tests/test_label.py``, from ``tests/helpers.py``: threshold 4 between top counts 5 and 3 at sigma_threshold 0.1,
  each 10 sigma away), ``--accountant rdp-filter``, and a per-client budget just above the worst case of
  K_FIT = 5 rows.

Independent references: the plaintext vote (each owner's torch forward, ties to the lowest index), the
mechanism's certain outcomes, and the charges of a FRESH ledger with the same accountant charged by hand
with the design's counts (never a copy of the formula).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pricure_crypten import (ABSTAIN, NOT_SENT, Aggregation, Batching, Client, ConfidentGNMax, NoNoise,
                             PrivateEnsemble)
from pricure_crypten.experiments.launch import Deployment
from pricure_crypten.parties.net.remote import RemoteBudgetError, RemoteError
from pricure_crypten.parties.net.wire import encode_array
from pricure_crypten.privacy.accounting import PrivacyLedger
from tests.helpers import AGREE, FEATURES, cli_exit_code
from tests.helpers import CERTAIN_GNMAX as GNMAX
from tests.helpers import agreement_owners as _agreement_owners
from tests.helpers import agreement_pool as _gnmax_pool
from tests.helpers import label_owners as _random_owners
from tests.helpers import label_pool as _pool
from tests.helpers import plain_votes as _plain_votes

pytestmark = pytest.mark.mpc

MAX_ROWS = 4
DELTA = 1e-3  # each client's total delta (the filter reports epsilon at it)
K_FIT = 5  # worst-case rows the gnmax budget covers
FILTER = dict(total_delta=DELTA, accountant="rdp-filter")


def _budget_for(rows: int, tmp_path) -> float:
    """Just above the worst case of ``rows`` rows, per a fresh filter ledger's own dry run."""
    with PrivacyLedger(tmp_path / "probe.sqlite3", total_epsilon=math.inf, **FILTER) as probe:
        return probe.check("probe", ConfidentGNMax(**GNMAX), queries=rows)[0] * (1 + 1e-9)


def _batches(deployment: Deployment) -> list[int]:
    return [deployment.health(rank)["batches"] for rank in range(deployment.n)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    owners = _random_owners(3)
    with Deployment(servers=2, owners=[o.name for o in owners], clients=["alice", "erin"],
                    serve_flags=["--epsilon", "inf", "--max-batch", str(MAX_ROWS)]) as deployment:
        deployment.upload_all(owners)
        yield deployment, owners


@pytest.fixture(scope="module")
def gnmax(tmp_path_factory):
    """The networked Confident-GNMax deployment and the library ensemble with the same settings and budget."""
    tmp = tmp_path_factory.mktemp("gnmax")
    total = _budget_for(K_FIT, tmp)
    owners = _agreement_owners()
    flags = ["--mechanism", "confident-gnmax", "--threshold", str(GNMAX["threshold"]),
             "--sigma-threshold", str(GNMAX["sigma_threshold"]), "--sigma", str(GNMAX["sigma"]),
             "--delta", str(GNMAX["delta"]), "--budget-epsilon", repr(total), "--budget-delta", str(DELTA),
             "--accountant", "rdp-filter", "--max-batch", str(MAX_ROWS)]
    ledger = PrivacyLedger(tmp / "library.sqlite3", total_epsilon=total, **FILTER)
    library = PrivateEnsemble(owners, aggregation=Aggregation(noise=ConfidentGNMax(**GNMAX)), ledger=ledger,
                              batching=Batching(max_rows=MAX_ROWS, window=0.0))
    try:
        with Deployment(servers=2, owners=[o.name for o in owners], clients=["bob", "carol", "dan"],
                        serve_flags=flags) as deployment:
            deployment.upload_all(owners)
            yield deployment, library, ledger, tmp
    finally:
        library.close()
        ledger.close()


def _server_spent(deployment: Deployment, client: str) -> list[float]:
    """``client``'s spent epsilon in every server's own ledger, composed by the filter (read from the files)."""
    return [deployment.status(rank, client, **FILTER).spent_epsilon for rank in range(deployment.n)]


def test_networked_labels_equal_the_plaintext_vote_and_the_library_mode_in_as_many_chunks(plain):
    deployment, owners = plain
    pool = _pool(10)
    before = _batches(deployment)
    with deployment.remote("alice") as remote:
        networked = deployment.call(remote.label, pool)
    with PrivateEnsemble(owners, aggregation=Aggregation(noise=NoNoise()),
                         batching=Batching(max_rows=MAX_ROWS, window=0.0)) as ensemble:
        library = ensemble.label(pool, client=Client("alice"))
    expected = _plain_votes(owners, pool)
    for name, result in (("networked", networked), ("library", library)):
        np.testing.assert_array_equal(result.labels, expected, err_msg=name)
        assert (result.sent, result.refused, result.stopped) == (10, 0, "complete"), name
        assert result.batches == 3 and result.cost.reveals == 3, name  # ceil(10 / 4) chunks, one reveal each
        assert result.cost.server_decodes == 0 and result.cost.outcome_reveals == 0, name
    assert [after - b for after, b in zip(_batches(deployment), before)] == [3, 3]  # every server ran 3 batches
    assert networked.spent_before == (0.0, 0.0) and networked.spent_after[0] == math.inf  # charged: epsilon inf


def test_the_query_command_labels_a_pool_and_writes_the_same_summary_as_pricure_label(plain, tmp_path):
    deployment, owners = plain
    pool = _pool(6, seed=2)
    np.save(tmp_path / "pool.npy", pool)
    argv = ["query", "--servers", ",".join(deployment.urls), "--token-file", str(deployment.tokens["alice"]),
            "--ca", str(deployment.ca), "--input", str(tmp_path / "pool.npy"), "--label",
            "--out", str(tmp_path / "labels.npy"), "--summary", str(tmp_path / "s.json")]
    assert cli_exit_code(argv) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), _plain_votes(owners, pool))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["sent"], summary["batches"], summary["refused"], summary["reveals"]) == (6, 2, 0, 2)
    assert summary["server_decodes"] == 0 and summary["stopped"] == "complete"
    assert cli_exit_code(argv[:-4]) == 2  # --label needs --out


def test_a_budget_for_k_rows_labels_exactly_k_in_both_modes_and_charges_the_same(gnmax):
    deployment, library, ledger, tmp = gnmax
    pool = _gnmax_pool()
    with deployment.remote("bob") as remote:
        networked = deployment.call(remote.label, pool)
    local = library.label(pool, client=Client("bob"))
    expected = np.where(AGREE, 0, ABSTAIN)
    for name, result in (("networked", networked), ("library", local)):
        assert (result.sent, result.refused, result.stopped) == (K_FIT, len(pool) - K_FIT, "budget"), name
        np.testing.assert_array_equal(result.labels[:K_FIT], expected[:K_FIT], err_msg=name)
        assert np.all(result.labels[K_FIT:] == NOT_SENT), name
        assert result.batches == 2 and result.cost.reveals == 2, name  # 4 rows, then the 1 that still fits
    with PrivacyLedger(tmp / "reference-bob.sqlite3", total_epsilon=math.inf, **FILTER) as reference:
        with reference.spend("bob", ConfidentGNMax(**GNMAX), queries=K_FIT) as spend:
            spend.confirm()
        charge = reference.status("bob").spent_epsilon
    assert ledger.status("bob").spent_epsilon == pytest.approx(charge)
    assert _server_spent(deployment, "bob") == pytest.approx([charge, charge])
    assert networked.spent_after[0] == pytest.approx(charge)
    for rank in range(deployment.n):
        status = deployment.status(rank, "bob", **FILTER)
        assert (status.answered_queries, status.reserved_queries) == (K_FIT, 0)
    # Nothing left for one more row: refused before any MPC work, nothing charged, nothing computed.
    batches = _batches(deployment)
    with deployment.remote("bob") as remote:
        with pytest.raises(RemoteBudgetError, match="budget"):
            deployment.call(remote.label, pool)
    assert _batches(deployment) == batches and _server_spent(deployment, "bob") == pytest.approx([charge, charge])


def test_answered_only_charges_the_threshold_step_for_every_row_and_the_argmax_step_for_answered_ones(gnmax):
    deployment, library, ledger, tmp = gnmax
    pool = _gnmax_pool()
    with deployment.remote("carol") as remote:
        networked = deployment.call(remote.label, pool, accounting="answered-only")
    local = library.label(pool, client=Client("carol"), accounting="answered-only")
    expected = np.where(AGREE, 0, ABSTAIN)
    assert networked.sent == local.sent >= MAX_ROWS and networked.batches == local.batches
    sent = networked.sent
    for name, result in (("networked", networked), ("library", local)):
        np.testing.assert_array_equal(result.labels[:sent], expected[:sent], err_msg=name)
        assert np.all(result.labels[sent:] == NOT_SENT) and result.accounting == "answered-only", name
        assert result.cost.outcome_reveals == result.batches and result.cost.server_decodes == 0, name
    answered = int(AGREE[:sent].sum())
    assert 0 < answered < sent  # both outcomes are charged
    with PrivacyLedger(tmp / "reference-carol.sqlite3", total_epsilon=math.inf, **FILTER) as reference:
        with reference.spend_answered_only("carol", ConfidentGNMax(**GNMAX), queries=sent) as spend:
            spend.confirm(answered=answered)
        charge = reference.status("carol").spent_epsilon
        with reference.spend("carol-conservative", ConfidentGNMax(**GNMAX), queries=sent) as spend:
            spend.confirm()
        assert charge < reference.status("carol-conservative").spent_epsilon  # the abstentions were cheaper
    assert ledger.status("carol").spent_epsilon == pytest.approx(charge)
    assert _server_spent(deployment, "carol") == pytest.approx([charge, charge])
    assert networked.spent_after[0] == pytest.approx(charge)


def test_bad_input_is_refused_before_any_mpc_work_and_nothing_is_charged(plain, gnmax):
    deployment, _ = plain
    batches = _batches(deployment)
    with deployment.remote("erin") as remote:
        with pytest.raises(ValueError, match="the pool is empty"):
            deployment.call(remote.label, np.zeros((0, FEATURES)))
        with pytest.raises(ValueError, match=rf"shape \(batch, {FEATURES}\)"):
            deployment.call(remote.label, np.zeros((3, FEATURES + 1)))
        with pytest.raises(ValueError, match="accounting must be one of"):
            deployment.call(remote.label, _pool(3), accounting="optimistic")
        # answered-only on servers without Confident-GNMax (nor an rdp-filter ledger): every server refuses
        with pytest.raises(ValueError, match=r"server 0 refused.*Confident-GNMax"):
            deployment.call(remote.label, _pool(3), accounting="answered-only")
    with deployment.http(0, "erin") as http:  # the node's own check of a query sent answered-only anyway
        share = encode_array(np.zeros((1, FEATURES), dtype=np.int64))
        refused = http.post("/v1/queries", json={"request_id": "cd" * 16, "share": share,
                                                 "accounting": "answered-only"})
        assert refused.status_code == 422 and "Confident-GNMax" in refused.json()["detail"]
    assert _batches(deployment) == batches
    for rank in range(deployment.n):
        status = deployment.status(rank, "erin")
        assert (status.answered_queries, status.reserved_queries, status.spent_epsilon) == (0, 0, 0.0)
    # a cap that cannot afford one row: refused before anything is shared
    networked, _, _, _ = gnmax
    batches = _batches(networked)
    with networked.remote("dan") as remote:
        with pytest.raises(RemoteBudgetError, match="budget"):
            networked.call(remote.label, _gnmax_pool(), budget=1e-6)
    assert _batches(networked) == batches and _server_spent(networked, "dan") == [0.0, 0.0]
    assert issubclass(RemoteBudgetError, RemoteError)

"""The offline/online split: tuples dealt ahead of time and in bulk, used exactly once, same results.

Two levels:

* inside real CrypTen parties (the harness): every kind of precomputed tuple
  reconstructs to a valid correlation (c = a*b, c = a & b, r2 = r*r, B2A bits,
  wrap counts), each party's own shares look uniform, a tuple is never handed
  out twice, and results computed from stock equal those computed on-line;
* end to end (PrivateEnsemble): a stocked batch makes no dealer round trip,
  gives the plaintext ensemble's labels, and stock and on-line batches can
  alternate in any order (which would desynchronise the parties' and the
  dealer's PRGs if the bulk path drew in a different order than on-line).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from pricure_crypten import Aggregation, Batching, Offline, PrivateEnsemble, calibrate
from pricure_crypten.experiments import reference
from pricure_crypten.experiments.launch import run_parties
from tests.helpers import mlp_owners

pytestmark = pytest.mark.mpc

RING = 2**64


def _stocked_tuples(rank: int) -> dict:
    """Record one multiplication, square, ReLU (binary triples, B2A) and a truncation; stock 2 copies."""
    from pricure_crypten.mpc._crypten import crypten

    provider = crypten.mpc.get_default_provider()
    x = crypten.cryptensor(torch.linspace(-3, 3, 1024).reshape(32, 32), src=0)
    y = crypten.cryptensor(torch.linspace(1, 2, 1024).reshape(32, 32), src=0)

    def work():
        return ((x * y).square() + x.relu()).share.clone()

    with provider.record() as requests:
        online = work()
    provider.precompute(requests, copies=2)
    stock = {}
    for key, queue in provider._stock.items():
        stock[repr(key)] = (key[0], [[p.share.numpy().copy() for p in (t if isinstance(t, tuple) else (t,))]
                                     for t in queue])
    before = provider.stocked
    from_stock = work()
    hits_after_first = provider.hits
    work()
    return {
        "kinds": sorted({m for m, _, _ in requests}),
        "stock": stock,
        "requests": len(requests),
        "stocked_before": before,
        "stocked_after": provider.stocked,
        "hits_first": hits_after_first,
        "misses": provider.misses,
        "online": online.numpy(),
        "from_stock": from_stock.numpy(),
    }


def _sum(shares: list[np.ndarray]) -> np.ndarray:
    with np.errstate(over="ignore"):
        total = np.zeros_like(shares[0])
        for s in shares:
            total = total + s
    return total


def _xor(shares: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(shares[0])
    for s in shares:
        total = total ^ s
    return total


@pytest.fixture(scope="module", params=[2, 3], ids=["2 servers", "3 servers"])
def parties(request):
    return request.param, run_parties(_stocked_tuples, num_parties=request.param)


def test_every_precomputed_tuple_is_a_valid_correlation(parties):
    num, results = parties
    kinds = set(results[0]["kinds"])
    expected_kinds = {"generate_additive_triple", "square", "generate_binary_triple", "B2A_rng"}
    if num > 2:
        expected_kinds.add("wrap_rng")  # truncation by wraps is used with more than 2 parties
    assert expected_kinds <= kinds
    checked = set()
    for name, (method, copies) in results[0]["stock"].items():
        for index in range(len(copies)):
            pieces = [[p for p in r["stock"][name][1][index]] for r in results]  # party -> tuple pieces
            parts = list(zip(*pieces))  # piece -> per-party shares
            if method == "generate_additive_triple":
                a, b, c = (_sum(list(p)) for p in parts)
                if a.shape == b.shape:  # elementwise mul (the only op in this workload besides matmul-free ones)
                    with np.errstate(over="ignore"):
                        assert np.array_equal(c, a * b)
            elif method == "square":
                r, r2 = (_sum(list(p)) for p in parts)
                with np.errstate(over="ignore"):
                    assert np.array_equal(r2, r * r)
            elif method == "generate_binary_triple":
                a, b, c = (_xor(list(p)) for p in parts)
                assert np.array_equal(c, a & b)
            elif method == "B2A_rng":
                r_arith, r_bits = _sum(list(parts[0])), _xor(list(parts[1]))
                assert set(np.unique(r_bits)) <= {0, 1}
                assert np.array_equal(r_arith, r_bits)
            elif method == "wrap_rng":
                r_shares, theta = list(parts[0]), _sum(list(parts[1]))
                as_int = np.array([[int(v) for v in s.ravel()] for s in r_shares], dtype=object)
                wraps = (as_int.sum(axis=0) - np.array([int(v) for v in _sum(r_shares).ravel()], dtype=object)) // RING
                assert np.array_equal(np.array([int(v) for v in theta.ravel()], dtype=object), wraps)
            checked.add(method)
    assert checked == kinds


def test_each_partys_shares_look_uniform(parties):
    """A party's shares of the random masks (``a``, ``b`` of every arithmetic and binary triple,
    ``r`` of every square pair) are uniform on the ring: chi-square on their top byte (256 cells,
    at least 10 expected per cell), alpha = 1e-3. Power: shares drawn as small values, or as
    non-negative ones, put everything in 1 or 128 cells and give p ~ 0."""
    _, results = parties
    for party in results:
        top = []
        for method, copies in party["stock"].values():
            masks = {"generate_additive_triple": 2, "generate_binary_triple": 2, "square": 1}.get(method, 0)
            for pieces in copies:
                top.extend((p.view(np.uint64) >> np.uint64(56)).ravel() for p in pieces[:masks])
        top_bytes = np.concatenate(top)
        assert top_bytes.size >= 256 * 10
        counts = np.bincount(top_bytes.astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-3


def test_stock_is_used_once_and_gives_the_online_result(parties):
    num, results = parties
    for party in results:
        assert party["stocked_before"] == 2 * party["requests"]
        assert party["hits_first"] == party["requests"]  # the first repetition: all from stock
        assert party["stocked_after"] == 0  # the second took the rest; nothing is handed out twice
        assert party["misses"] == 0
    scale = 2.0**16
    online = _sum([r["online"] for r in results]) / scale
    from_stock = _sum([r["from_stock"] for r in results]) / scale
    assert np.allclose(online, from_stock, atol=2e-3 * num)


# -- end to end --


@pytest.fixture(scope="module")
def owners3():
    return mlp_owners(3, features=6, classes=3, hidden=(16,), seed=0, names="o{}")


def _expected(owners, queries):
    logits = reference.ensemble_logits([o.model for o in owners], queries)
    counts = reference.histogram(logits, aggregation="vote")
    labels = reference.noisy_argmax(counts, aggregation="vote", mechanism=calibrate(epsilon=float("inf")))
    return labels


NO_NOISE = Aggregation(noise=calibrate(epsilon=float("inf")))


def test_stocked_and_online_batches_alternate_and_agree_with_plaintext(owners3):
    gen = torch.Generator().manual_seed(5)
    q8, q5 = torch.randn(8, 6, generator=gen), torch.randn(5, 6, generator=gen)
    with PrivateEnsemble(owners3, aggregation=NO_NOISE, batching=Batching(enabled=False)) as ensemble:
        online = ensemble.predict(q8)
        cost = ensemble.precompute(8, batches=2)
        assert cost.batches == 2 and cost.exchanges >= 1 and cost.stock_bytes > 0
        assert cost.requests_per_batch == online.cost.dealer_requests > 0
        sequence = [(q8, True), (q5, False), (q8, True), (q8, False), (q5, False)]
        for queries, stocked in sequence:
            prediction = ensemble.predict(queries)
            assert np.array_equal(prediction.labels, _expected(owners3, queries))
            assert (prediction.cost.dealer_requests == 0) == stocked
            if stocked:
                assert prediction.cost.rounds < online.cost.rounds  # the dealer's round trips are gone
        assert ensemble.server_info()[0]["stock_bytes"] == 0


def test_offline_config_pads_small_batches_and_refills(owners3):
    gen = torch.Generator().manual_seed(6)
    offline = Offline(batch_sizes=(8,), depth=1)
    with PrivateEnsemble(owners3, aggregation=NO_NOISE, batching=Batching(enabled=False),
                         offline=offline) as ensemble:
        assert [c.rows for c in ensemble.offline_costs] == [8]
        for rows in (5, 8, 3):
            queries = torch.randn(rows, 6, generator=gen)
            ensemble.refill()  # waits for (or does) the scheduler's idle top-up
            prediction = ensemble.predict(queries)
            assert prediction.labels.shape == (rows,)  # padding rows never reach the client
            assert np.array_equal(prediction.labels, _expected(owners3, queries))
            assert prediction.cost.dealer_requests == 0
            assert prediction.cost.batch_queries == rows
        big = torch.randn(12, 6, generator=gen)  # larger than any stocked size: on-line
        prediction = ensemble.predict(big)
        assert np.array_equal(prediction.labels, _expected(owners3, big))
        assert prediction.cost.dealer_requests > 0


@pytest.mark.parametrize("settings, error, match", [
    (dict(batch_sizes=(0,)), ValueError, "batch_sizes"),
    (dict(batch_sizes=8), TypeError, "batch_sizes"),
    (dict(batch_sizes=(8,), depth=0), ValueError, "depth"),
    (dict(batch_sizes=(8,), pad="yes"), TypeError, "pad"),
])
def test_bad_offline_settings_are_refused(settings, error, match):
    with pytest.raises(error, match=match):
        Offline(**settings)


def test_offline_settings_that_cannot_work_are_refused_before_any_process(owners3):
    from pricure_crypten import Cluster, InsecureProviderWarning

    with pytest.raises(ValueError, match="max_rows"):
        PrivateEnsemble(owners3, offline=Offline(batch_sizes=(512,)), batching=Batching(max_rows=256))
    with pytest.warns(InsecureProviderWarning), pytest.raises(ValueError, match="dealer"):
        PrivateEnsemble(owners3, offline=Offline(batch_sizes=(8,)), cluster=Cluster(provider="insecure-tfp"))
    ensemble = PrivateEnsemble(owners3)
    with pytest.raises(ValueError, match="rows"):
        ensemble.precompute(0)
    with pytest.raises(ValueError, match="rows"):
        ensemble.precompute(10**6)
    assert ensemble.servers.launches == 0
    ensemble.close()

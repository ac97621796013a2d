"""The encrypted aggregation layer: exact against an independent numpy computation, and cheaper than
CrypTen's own composition (issue 12, item 3).

Tie rules checked here (and documented in :mod:`pricure_crypten.mpc.aggregation`):

* the clamp is ``min(max(x, -L), L)``; values beyond the bound and exactly on it give +-L;
* each owner votes for the argmax of its CLAMPED logits, exact ties to the LOWEST class index
  (so ``[L, 3L]`` is a tie at L and votes 0, although the raw argmax is 1);
* the released label is the argmax of the histogram, exact ties to the lowest index.

Everything runs in two real CrypTen parties with a TTP dealer
(:func:`pricure_crypten.experiments.launch.run_parties`), one harness start for the whole
module (~15 s). C = 2 and 10 take the pairwise argmax, C = 13 the tournament (``PAIRWISE_MAX_CLASSES``); ``top`` (Confident-GNMax) and the softmax histogram are
checked on the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from pricure_crypten.experiments.launch import run_parties

pytestmark = pytest.mark.mpc

BOUND = 4.0  # L: every grid value below is a multiple of 1/4, exact in 16-bit fixed point
GRID = np.array([-3 * BOUND, -BOUND - 0.25, -BOUND, -BOUND + 0.25, -1.5, -0.25, 0.0, 0.25, 1.5,
                 BOUND - 0.25, BOUND, BOUND + 0.25, 3 * BOUND])
OWNERS = 10

# Rounds of CrypTen's communication counter (every Beaver product counts 4, every comparison pass 32)
# of EncryptedAggregation.forward at C = 2 (K = 10, N = 2, TTP), measured:
#   before (clamp by ReLU, CrypTen argmax per owner, CrypTen argmax of the scores): 36 + 144 + 144 = 324
#   after (one comparison pass + one bit product for the votes, one comparison pass for the release): 68
MEASURED_ROUNDS_C2 = 68


def _crafted_logits(num_classes: int, rows: int, seed: int) -> np.ndarray:
    """(K, B, C) logits drawn from GRID (lots of exact raw and clamped ties), plus crafted rows."""
    rng = np.random.default_rng(seed)
    logits = rng.choice(GRID, size=(OWNERS, rows, num_classes))
    # Row 0: a histogram tie (5 owners for class 1, 5 for class 0) -> the release must say 0.
    logits[:, 0, :] = -BOUND
    logits[:5, 0, 1] = 3 * BOUND
    logits[5:, 0, 0] = BOUND
    # Row 1: every owner's logits saturated above L in increasing order -> all clamped to L -> class 0.
    logits[:, 1, :] = BOUND + np.arange(num_classes)
    # Row 2: every owner's logits below -L in increasing order -> all clamped to -L -> class 0.
    logits[:, 2, :] = -3 * BOUND + np.arange(num_classes) / 4
    # Row 3: exact raw ties inside the bound between the two highest classes -> lower of the two.
    logits[:, 3, :] = 0.0
    logits[:, 3, -2:] = 1.5
    return logits


def _numpy_reference(logits: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clamp, vote histogram and released one-hot, written independently of the package."""
    clamped = np.minimum(np.maximum(logits, -bound), bound)
    num_classes = logits.shape[-1]
    votes = np.zeros(logits.shape[:-1], dtype=np.int64)
    for index in np.ndindex(*logits.shape[:-1]):
        row = clamped[index]
        votes[index] = min(c for c in range(num_classes) if row[c] == row.max())  # lowest index of the max
    histogram = np.stack([(votes == c).sum(axis=0) for c in range(num_classes)], axis=-1).astype(np.float64)
    label = [min(c for c in range(num_classes) if h[c] == h.max()) for h in histogram]
    return clamped, histogram, np.eye(num_classes)[label]


def _rounds(fn, *args):
    from pricure_crypten.mpc._crypten import crypten

    comm = crypten.communicator.get()
    comm.reset_communication_stats()
    result = fn(*args)
    return result, int(comm.get_communication_stats()["rounds"])


def _unoptimised(logits, bound):
    """The former composition, with CrypTen's own relu and argmax (log-reduction, random ties)."""
    import numpy as np
    import torch

    from pricure_crypten.mpc._crypten import MPCTensor, crypten
    from pricure_crypten.mpc.aggregation import to_fixed_point
    from pricure_crypten.mpc.sharing import FRACTIONAL_BITS, SCALE

    k = logits.size(0)
    excess = crypten.cat([logits - bound, -logits - bound], dim=0).relu()
    clamped = logits - excess[:k] + excess[k:]
    histogram = to_fixed_point(clamped.argmax(dim=-1, one_hot=True).sum(0))
    num_classes = histogram.size(-1)
    scores = MPCTensor.from_shares(histogram.share * num_classes, precision=FRACTIONAL_BITS)
    scores = scores + torch.from_numpy((num_classes - 1 - np.arange(num_classes)) / SCALE)
    return to_fixed_point(scores.argmax(dim=-1, one_hot=True))


def _aggregate(rank, cases, bound):
    import torch

    from pricure_crypten.mpc._crypten import crypten
    from pricure_crypten.mpc.aggregation import EncryptedAggregation
    from pricure_crypten.privacy.noise import NoNoise

    out = {}
    for name, logits in cases.items():
        shared = crypten.cryptensor(torch.from_numpy(logits), src=0)
        agg = EncryptedAggregation(aggregation="vote", mechanism=NoNoise(), num_servers=2, logit_bound=bound)
        clamped = agg.clamp(shared)
        histogram = agg.histogram(shared)
        one_hot, rounds = _rounds(agg, shared)
        top = agg.ops.top(crypten.cryptensor(torch.from_numpy(logits[0]), src=0))  # Confident-GNMax's max
        softmax = EncryptedAggregation(aggregation="softmax", mechanism=NoNoise(), num_servers=2,
                                       logit_bound=bound).histogram(shared)
        out[name] = {"clamped": clamped.share.numpy().copy(), "histogram": histogram.share.numpy().copy(),
                     "one_hot": one_hot.share.numpy().copy(), "rounds": rounds, "top": top.share.numpy().copy(),
                     "softmax": softmax.share.numpy().copy()}
        if logits.shape[-1] == 2:
            _, out[name]["unoptimised_rounds"] = _rounds(_unoptimised, shared, bound)
    return out


def _decode(shares) -> np.ndarray:
    total = np.sum(np.stack(shares).astype(np.int64), axis=0, dtype=np.int64)  # wraps mod 2**64 like the ring
    return total.astype(np.float64) / 2**16


@pytest.fixture(scope="module")
def mpc_results():
    cases = {f"C={c}": _crafted_logits(c, rows=24, seed=c) for c in (2, 10, 13)}
    parties = run_parties(_aggregate, cases, BOUND)
    return cases, parties


@pytest.mark.parametrize("num_classes", [2, 10, 13])  # 13: above PAIRWISE_MAX_CLASSES, the tournament
def test_clamp_votes_and_release_equal_the_independent_reference(mpc_results, num_classes):
    cases, parties = mpc_results
    name = f"C={num_classes}"
    logits = cases[name]
    clamped, histogram, one_hot = _numpy_reference(logits, BOUND)
    # The crafted cases really occur: saturation beyond and exactly at the bound, and clamped
    # ties that the raw argmax would break differently.
    assert np.any(np.abs(logits) > BOUND) and np.any(np.abs(logits) == BOUND)
    raw_first = logits.argmax(axis=-1)
    clamped_first = np.array([[min(c for c in range(num_classes) if r[c] == r.max()) for r in rows]
                              for rows in clamped])
    assert np.any(raw_first != clamped_first)
    assert np.all(histogram[0] == np.eye(num_classes)[:2].sum(axis=0) * 5) and one_hot[0, 0] == 1

    result = [party[name] for party in parties]
    np.testing.assert_array_equal(_decode([r["clamped"] for r in result]), clamped)
    np.testing.assert_array_equal(_decode([r["histogram"] for r in result]), histogram)
    np.testing.assert_array_equal(_decode([r["one_hot"] for r in result]), one_hot)
    np.testing.assert_array_equal(_decode([r["top"] for r in result]), logits[0].max(axis=-1))
    shifted = np.exp(clamped - clamped.max(axis=-1, keepdims=True))
    softmax = (shifted / shifted.sum(axis=-1, keepdims=True)).sum(axis=0)
    np.testing.assert_allclose(_decode([r["softmax"] for r in result]), softmax, atol=0.05)  # exp/reciprocal approx.


def test_rounds_for_two_classes_beat_cryptens_composition(mpc_results):
    _, parties = mpc_results
    rounds = parties[0]["C=2"]["rounds"]
    unoptimised = parties[0]["C=2"]["unoptimised_rounds"]
    assert rounds <= MEASURED_ROUNDS_C2, (rounds, unoptimised)
    assert rounds < unoptimised, (rounds, unoptimised)
    assert rounds * 4 <= unoptimised, (rounds, unoptimised)  # measured: 68 vs 324

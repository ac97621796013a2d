"""Fixed-point encoding and additive sharing outside the MPC (owners and client)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from pricure_crypten.mpc import randomness
from pricure_crypten.mpc.randomness import SecureRandom
from pricure_crypten.mpc.sharing import (
    SAFE_MAX_ABS, SCALE, decode, encode, reconstruct, reconstruct_encoded, share, share_encoded,
)
from tests.helpers import run_fresh_python

values = hnp.arrays(
    dtype=np.float64,
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    elements=st.floats(-SAFE_MAX_ABS, SAFE_MAX_ABS, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=200, deadline=None)
@given(x=values, n=st.integers(2, 5))
def test_shares_reconstruct_exactly(x, n):
    shares = share(x, num_parties=n)
    assert len(shares) == n
    assert all(s.dtype == np.int64 and s.shape == x.shape for s in shares)
    assert np.array_equal(reconstruct_encoded(shares), encode(x))
    assert np.allclose(reconstruct(shares), x, atol=0.5 / SCALE, rtol=0)


def test_encoding_is_crypten_compatible():
    """Same ring and scale as CrypTen's FixedPointEncoder; we round to nearest
    where CrypTen truncates toward zero, so the two differ by at most one unit."""
    from crypten.encoder import FixedPointEncoder

    x = torch.tensor([0.0, 1.0, -1.0, 3.25, -1234.5, 1e-5, -0.7e-5, 2.0**14 + 0.3])
    ours = torch.from_numpy(encode(x))
    theirs = FixedPointEncoder(precision_bits=16).encode(x.double())
    assert (ours - theirs).abs().max().item() <= 1
    assert torch.allclose(FixedPointEncoder(precision_bits=16).decode(ours).double(),
                          torch.from_numpy(decode(ours.numpy())), atol=1e-6, rtol=0)
    assert (torch.from_numpy(decode(ours.numpy())) - x.double()).abs().max().item() <= 0.5 / SCALE


@pytest.mark.parametrize("bad", [SAFE_MAX_ABS * 2, -SAFE_MAX_ABS * 1.01, 1e30])
def test_out_of_range_values_raise(bad):
    with pytest.raises(ValueError, match="fixed-point range"):
        share(np.array([0.0, bad]), num_parties=2)


@pytest.mark.parametrize(
    "x, n, error, match",
    [
        ([1.0, 2.0], 2, TypeError, "torch.Tensor or numpy.ndarray"),
        (np.array([1.0, np.nan]), 2, ValueError, "NaN or infinite"),
        (np.array([np.inf]), 3, ValueError, "NaN or infinite"),
        (np.array([1.0]), 1, ValueError, r"num_parties\b.*must be >= 2"),
        (np.array([1.0]), 2.0, TypeError, r"num_parties\b.*must be an int"),
        (np.array(["a"]), 2, TypeError, "real-valued"),
        (torch.tensor([True]), 2, TypeError, "real-valued"),
        (np.array([1 + 2j]), 2, TypeError, "real-valued"),
    ],
)
def test_bad_input_names_the_problem(x, n, error, match):
    with pytest.raises(error, match=match):
        share(x, num_parties=n)


def test_reconstruct_rejects_mismatched_shares():
    with pytest.raises(ValueError, match="at least 2 shares"):
        reconstruct([np.zeros(3, dtype=np.int64)])
    with pytest.raises(ValueError, match="shape"):
        reconstruct([np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.int64)])
    with pytest.raises(TypeError, match="int64"):
        reconstruct([np.zeros(3), np.zeros(3)])


def _byte_chi2_pvalue(arrays):
    data = np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays]).view(np.uint8)
    counts = np.bincount(data, minlength=256)
    return stats.chisquare(counts).pvalue


@pytest.mark.parametrize("n", [2, 3, 5])
def test_any_n_minus_1_shares_look_uniform(n):
    rng = SecureRandom(seed=f"uniformity-{n}")
    # A highly structured secret: the same small value everywhere.
    secret = np.full(20_000, 3.0)
    shares = share(secret, num_parties=n, rng=rng)
    for left_out in range(n):
        subset = [s for i, s in enumerate(shares) if i != left_out]
        assert _byte_chi2_pvalue(subset) > 1e-3
        # Each share's top bits too (a leaky scheme shows a skew there first).
        for s in subset:
            top = (s.view(np.uint64) >> np.uint64(56)).astype(np.int64)
            assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 1e-3


def test_uniformity_check_has_power_against_a_leaky_sharing():
    secret = np.full(20_000, 3.0)
    leaky = encode(secret) + np.random.default_rng(0).integers(-(2**20), 2**20, size=secret.shape)
    assert _byte_chi2_pvalue([leaky]) < 1e-6


def test_share_distribution_does_not_depend_on_the_value():
    rng = SecureRandom(seed="independence")
    small = share(np.zeros(20_000), num_parties=2, rng=rng)[0]
    large = share(np.full(20_000, 1000.0), num_parties=2, rng=rng)[1]
    as_unit = lambda a: a.view(np.uint64).astype(np.float64) / 2.0**64  # noqa: E731
    assert stats.ks_2samp(as_unit(small), as_unit(large)).pvalue > 1e-3


def test_default_randomness_is_the_os_csprng(monkeypatch):
    calls = []
    real = os.urandom

    def spy(n):
        calls.append(n)
        return real(n)

    monkeypatch.setattr(randomness.os, "urandom", spy)
    torch.manual_seed(0)
    np.random.seed(0)
    a = share(np.ones(4), num_parties=3)
    torch.manual_seed(0)
    np.random.seed(0)
    b = share(np.ones(4), num_parties=3)
    assert calls == [32, 32, 32, 32]  # two uniform shares per call, 4 x 8 bytes each
    assert not np.array_equal(a[0], b[0])  # not tied to torch's or numpy's global seeds


def test_seeded_stream_is_reproducible_and_distinct():
    a = SecureRandom(seed="s").ring_elements(8)
    b = SecureRandom(seed="s").ring_elements(8)
    c = SecureRandom(seed="t").ring_elements(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_share_encoded_wraps_modulo_2_64():
    big = np.array([2**62, -(2**62)], dtype=np.int64)
    shares = share_encoded(big, num_parties=4, rng=SecureRandom(seed=1))
    assert np.array_equal(reconstruct_encoded(shares), big)


@pytest.mark.mpc
@pytest.mark.parametrize("world_size", [2, 3])
def test_shares_round_trip_through_crypten_run_multiprocess(world_size):
    out = run_fresh_python(
        f"""
        import json
        import numpy as np
        import pricure_crypten
        from pricure_crypten.mpc.sharing import share, encode, reconstruct_encoded, reconstruct
        import crypten, crypten.mpc, torch
        from crypten.mpc import MPCTensor

        x = np.random.default_rng(1).normal(scale=50.0, size=(3, 7))
        shares = share(x, num_parties={world_size})

        @crypten.mpc.run_multiprocess(world_size={world_size})
        def party():
            rank = crypten.communicator.get().get_rank()
            t = MPCTensor.from_shares(torch.from_numpy(shares[rank]), precision=16)
            same = t.share.numpy().copy()
            y = t * 2 + 1  # computed on shares
            return same, y.share.numpy().copy()

        if __name__ == "__main__":
            results = party()
            back = reconstruct_encoded([r[0] for r in results])
            y = reconstruct([r[1] for r in results])
            print(json.dumps({{
                "exact": bool(np.array_equal(back, encode(x))),
                "affine_err": float(np.abs(y - (2 * x + 1)).max()),
            }}))
        """
    )
    assert out["exact"]
    assert out["affine_err"] < 1e-3

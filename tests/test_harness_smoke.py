import numpy as np

from tests.mpc_harness import run_parties


def _square_sum(rank, values):
    import torch

    from pricure_crypten.mpc._crypten import crypten

    x = crypten.cryptensor(torch.tensor(values), src=0)
    return (x.square().sum()).share.numpy().copy()


def test_harness_runs_two_parties_with_a_dealer():
    shares = run_parties(_square_sum, [1.0, 2.0, 3.0])
    total = (np.sum(np.stack(shares), axis=0, dtype=np.int64)) / 2**16
    assert abs(float(total) - 14.0) < 1e-2

"""The per-query MPC check's truncation bound for owners with Square activations (conformance.truncation_error_bound).

Independent reference: the owner's converted layers evaluated in float64 (torch.nn.functional directly, not the
module's helpers) on the 2**-16 grid, with every truncating layer's output (Linear, Conv2d, AvgPool2d, Square)
moved by an error of at most ``num_servers`` units of 2**-16, as the bound assumes the servers' truncations do:
the same sign everywhere (both signs) and 200 random sign patterns per query. The largest logit deviation found
must stay within the bound, and the bound must not be loose by orders of magnitude on inputs where the Square
amplifies (so that an implementation ignoring the amplification, ``error + unit`` at the Square, fails: the
deviation found then exceeds it; checked below). Without queries a Square owner still gets an infinite bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pricure_crypten import ModelOwner
from pricure_crypten.experiments.conformance import truncation_error_bound
from pricure_crypten.mpc.layers import Square

UNIT = 2 / 2**16  # N = 2 servers


def _owner(seed: int) -> ModelOwner:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.AvgPool2d(2), Square(), nn.Flatten(), nn.Linear(12, 6),
                          nn.ReLU(), nn.Linear(6, 4)).eval()
    return ModelOwner(name=f"o{seed}", model=model, input_shape=(1, 10, 10), num_classes=4)


def _grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.double() * 2**16) / 2**16


def _perturbed_logits(model: nn.Sequential, x: torch.Tensor, signs) -> torch.Tensor:
    """float64 evaluation; ``signs(shape)`` gives the error (in units) added after each truncating layer."""
    x = _grid(x)
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, _grid(layer.weight), _grid(layer.bias), stride=layer.stride)
            x = x + UNIT * signs(x.shape)
        elif isinstance(layer, nn.Linear):
            x = F.linear(x, _grid(layer.weight), _grid(layer.bias))
            x = x + UNIT * signs(x.shape)
        elif isinstance(layer, nn.AvgPool2d):
            x = F.avg_pool2d(x, 2)
            x = x + UNIT * signs(x.shape)
        elif isinstance(layer, Square):
            x = x * x + UNIT * signs(x.shape)
        elif isinstance(layer, nn.ReLU):
            x = x.clamp(min=0)
        elif isinstance(layer, nn.Flatten):
            x = x.flatten(1)
    return x


def _worst_deviation(model: nn.Sequential, queries: torch.Tensor) -> float:
    generator = torch.Generator().manual_seed(0)
    exact = _perturbed_logits(model, queries, lambda shape: torch.zeros(shape, dtype=torch.float64))
    worst = 0.0
    patterns = [lambda shape: torch.ones(shape, dtype=torch.float64), lambda shape: -torch.ones(shape, dtype=torch.float64)]
    patterns += [lambda shape: (torch.randint(0, 2, shape, generator=generator) * 2 - 1).double()] * 200
    for signs in patterns:
        worst = max(worst, float((_perturbed_logits(model, queries, signs) - exact).abs().max()))
    return worst


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_square_bound_covers_every_perturbation_found(scale: float) -> None:
    queries = scale * torch.rand(8, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    owners = [_owner(seed) for seed in range(3)]
    bound = truncation_error_bound(owners, num_servers=2, queries=queries)
    worst = max(_worst_deviation(o.model, queries) for o in owners)
    assert math.isfinite(bound) and 0 < worst <= bound, (worst, bound)
    if scale == 30.0:
        # the Square amplifies: ignoring it (error + unit at the Square) would give a bound below what is found
        ignoring = _bound_ignoring_amplification(owners)
        assert ignoring < worst, (ignoring, worst)


def _bound_ignoring_amplification(owners) -> float:
    worst = 0.0
    for owner in owners:
        error = 0.0
        for layer in owner.model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                w = _grid(layer.weight).abs()
                error = float(w.reshape(w.shape[0], -1).sum(dim=1).max()) * error + UNIT
            elif isinstance(layer, (nn.AvgPool2d, Square)):
                error += UNIT
        worst = max(worst, error)
    return worst


def test_square_without_queries_has_no_bound_and_larger_inputs_a_larger_one() -> None:
    owners = [_owner(0)]
    assert truncation_error_bound(owners, num_servers=2) == math.inf
    small = truncation_error_bound(owners, num_servers=2, queries=torch.rand(4, 1, 10, 10))
    large = truncation_error_bound(owners, num_servers=2, queries=50 * torch.rand(4, 1, 10, 10))
    assert small < large

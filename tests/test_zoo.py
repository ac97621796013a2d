"""Tests of the MPC-friendly architectures of the model zoo and of :func:`nonlinear_elements`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pricure_crypten.experiments.data import load_dataset
from pricure_crypten.experiments.models import (
    ARCHITECTURES,
    MPC_FRIENDLY,
    SUPPORTED_LAYERS,
    build_model,
    nonlinear_elements,
    parameter_count,
    small_cnn,
)
from pricure_crypten.experiments.training import accuracy, train_owner
from pricure_crypten.mpc.layers import Square, convert, specs_output_shape
from tests.helpers import plain_forward

SHAPES = [(1, 28, 2), (1, 8, 10), (3, 28, 4), (3, 8, 3)]  # (channels, side, classes)


def _arch(name: str, channels: int, side: int, classes: int) -> dict:
    return {"name": name, "in_channels": channels, "image_size": side, "num_classes": classes}


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so that folding is really tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))


def test_variants_are_registered():
    assert set(MPC_FRIENDLY) <= set(ARCHITECTURES)
    assert len(MPC_FRIENDLY) >= 3


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["small_cnn", *MPC_FRIENDLY])
def test_variant_builds_converts_and_matches_its_specs(name, shape):
    channels, side, classes = shape
    arch = _arch(name, channels, side, classes)
    json.dumps(arch)
    model = build_model(arch, seed=1)
    assert type(model) is nn.Sequential
    assert all(isinstance(layer, SUPPORTED_LAYERS) for layer in model)
    _randomise_batchnorm(model, seed=2)
    model = model.double().eval()
    x = torch.rand(5, channels, side, side, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    specs = convert(model)
    # BatchNorm is folded: no per-channel affine layer is left for the servers.
    assert all(spec.kind != "affine" for spec in specs)
    assert specs_output_shape(specs, (channels, side, side)) == (classes,)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (5, classes)
    torch.testing.assert_close(plain_forward(specs, x), expected, rtol=0, atol=1e-6)


def test_small_cnn_nonlinear_elements_match_a_hand_count():
    assert nonlinear_elements(small_cnn(in_channels=1, image_size=28, num_classes=2), (1, 28, 28)) == {
        "relu": 24 * 24 * 8 + 32, "square": 0, "maxpool_comparisons": 0, "comparisons": 24 * 24 * 8 + 32,
    }
    # 8x8 digits: the convolution pads by 2, so its output is 8x8x8.
    assert nonlinear_elements(small_cnn(in_channels=1, image_size=8, num_classes=10), (1, 8, 8))["relu"] == 8 * 8 * 8 + 32


def test_variant_nonlinear_elements_match_their_docstrings():
    counts = {name: nonlinear_elements(build_model(_arch(name, 1, 28, 2)), (1, 28, 28)) for name in MPC_FRIENDLY}
    assert counts["pool_first_cnn"]["relu"] == 8 * 12 * 12 + 32
    assert counts["strided_cnn"]["relu"] == 8 * 6 * 6 + 32
    assert counts["narrow_cnn"]["relu"] == 4 * 12 * 12 + 16
    assert counts["square_cnn"] == {"relu": 0, "square": 8 * 12 * 12 + 32, "maxpool_comparisons": 0, "comparisons": 0}
    assert counts["strided_narrow_cnn"]["relu"] == 4 * 6 * 6 + 16
    assert counts["coarse_cnn"]["relu"] == 8 * 4 * 4 + 32
    assert counts["hybrid_cnn"] == {"relu": 32, "square": 8 * 6 * 6, "maxpool_comparisons": 0, "comparisons": 32}
    # The cheap variants: at most 160 ReLU-equivalents (a Square counted as 1/10 of a ReLU).
    for name in ("strided_narrow_cnn", "coarse_cnn", "hybrid_cnn"):
        assert counts[name]["comparisons"] + counts[name]["square"] / 10 <= 160
    reference = nonlinear_elements(build_model(_arch("small_cnn", 1, 28, 2)), (1, 28, 28))["relu"]
    assert all(c["comparisons"] <= reference / 3 for c in counts.values())
    # 8x8 digits: the stride-2 convolution pads by 2, so its output is 4x4 (no pooling).
    small = {name: nonlinear_elements(build_model(_arch(name, 1, 8, 10)), (1, 8, 8))
             for name in ("strided_narrow_cnn", "coarse_cnn", "hybrid_cnn")}
    assert small["strided_narrow_cnn"]["relu"] == 4 * 4 * 4 + 16
    assert small["coarse_cnn"]["relu"] == 8 * 4 * 4 + 32
    assert (small["hybrid_cnn"]["relu"], small["hybrid_cnn"]["square"]) == (32, 8 * 4 * 4)
    # pool_first_cnn moves the pooling only: same weights as small_cnn.
    assert parameter_count(build_model(_arch("pool_first_cnn", 1, 28, 2))) == parameter_count(
        build_model(_arch("small_cnn", 1, 28, 2)))


@pytest.mark.parametrize("name", ["small_cnn", "lenet", *MPC_FRIENDLY])
def test_nonlinear_elements_agree_with_forward_hooks(name):
    model = build_model(_arch(name, 3, 28, 5)).eval()
    seen = {"relu": 0, "square": 0}

    def hook(kind):
        return lambda module, inputs, output: seen.__setitem__(kind, seen[kind] + output[0].numel())

    for module in model:
        if isinstance(module, nn.ReLU):
            module.register_forward_hook(hook("relu"))
        elif isinstance(module, Square):
            module.register_forward_hook(hook("square"))
    with torch.no_grad():
        model(torch.zeros(1, 3, 28, 28))
    counts = nonlinear_elements(model, (3, 28, 28))
    assert (counts["relu"], counts["square"]) == (seen["relu"], seen["square"])


def test_maxpool_comparisons_are_counted():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2))
    # conv: 6x6x2; pool: 3x3x2 = 18 windows of 4 -> 3 comparisons each.
    assert nonlinear_elements(model, (1, 8, 8)) == {
        "relu": 18, "square": 0, "maxpool_comparisons": 54, "comparisons": 72,
    }


@pytest.mark.parametrize("name, margin", [("pool_first_cnn", 0.7), ("square_cnn", 0.7), ("hybrid_cnn", 0.7)])
def test_variant_learns_digits_well_above_chance(name, margin):
    """Briefly trained (15 epochs) on the digits training split: test accuracy at least
    chance (10%) + ``margin`` (70 points), with fixed seeds (measured: 94%, 97% and 97%)."""
    dataset = load_dataset("digits", seed=0)
    model = build_model(_arch(name, 1, 8, 10), seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only add contention
    try:
        train_owner(model, dataset.train_x, dataset.train_y, num_classes=10, epochs=15, seed=0, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert accuracy(model, dataset.test_x, dataset.test_y) >= 1 / 10 + margin

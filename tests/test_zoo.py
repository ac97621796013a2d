"""Tests of the MPC-friendly architectures of the model zoo and of :func:`nonlinear_elements`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
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


def _run_specs(specs, x: torch.Tensor) -> torch.Tensor:
    """Plaintext float64 evaluation of converted layer specs (independent of the model code)."""
    x = x.double()
    for spec in specs:
        params = [torch.from_numpy(p) for p in spec.params]
        if spec.kind == "linear":
            x = F.linear(x, *params)
        elif spec.kind == "conv2d":
            x = F.conv2d(x, *params, stride=spec.option("stride"), padding=spec.option("padding"),
                         dilation=spec.option("dilation"))
        elif spec.kind == "avgpool2d":
            x = F.avg_pool2d(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
        elif spec.kind == "maxpool2d":
            x = F.max_pool2d(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
        elif spec.kind == "flatten":
            x = x.flatten(1)
        elif spec.kind == "relu":
            x = x.clamp(min=0)
        elif spec.kind == "square":
            x = x * x
        elif spec.kind == "affine":
            shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
            x = x * params[0].reshape(shape) + params[1].reshape(shape)
        else:
            raise AssertionError(f"unexpected kind {spec.kind}")
    return x


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
    torch.testing.assert_close(_run_specs(specs, x), expected, rtol=0, atol=1e-6)


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
    reference = nonlinear_elements(build_model(_arch("small_cnn", 1, 28, 2)), (1, 28, 28))["relu"]
    assert all(c["comparisons"] <= reference / 3 for c in counts.values())
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


@pytest.mark.parametrize("name, margin", [("pool_first_cnn", 0.7), ("square_cnn", 0.7)])
def test_variant_learns_digits_well_above_chance(name, margin):
    """Briefly trained (15 epochs) on the digits training split: test accuracy at least
    chance (10%) + ``margin`` (70 points), with fixed seeds (measured: 94% and 97%)."""
    dataset = load_dataset("digits", seed=0)
    model = build_model(_arch(name, 1, 8, 10), seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only add contention
    try:
        train_owner(model, dataset.train_x, dataset.train_y, num_classes=10, epochs=15, seed=0, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert accuracy(model, dataset.test_x, dataset.test_y) >= 1 / 10 + margin

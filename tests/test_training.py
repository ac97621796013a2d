"""Tests of the model zoo (pricure_crypten.experiments.models) and owner training (pricure_crypten.experiments.training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pricure_crypten.experiments.data import load_dataset
from pricure_crypten.experiments.models import (
    SUPPORTED_LAYERS,
    build_model,
    default_architecture,
    lenet,
    small_cnn,
)
from pricure_crypten.experiments.partition import partition
from pricure_crypten.experiments.training import (
    accuracy,
    class_weights,
    load_owner,
    save_owner,
    shift_images,
    train_owner,
    train_owners,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def breast_cancer():
    return load_dataset("breast-cancer", seed=0)


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- model zoo ------------------------------------------------------------------

ZOO = [
    {"name": "mlp", "in_features": 30, "num_classes": 2, "hidden": [32]},
    {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [64, 32]},
    *(
        {"name": name, "in_channels": c, "image_size": s, "num_classes": k}
        for name in ("small_cnn", "lenet")
        for c in (1, 3)
        for s, k in ((8, 10), (28, 2))
    ),
]


@pytest.mark.parametrize("arch", ZOO, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_zoo_uses_only_supported_layers_in_one_sequential(arch):
    model = build_model(arch)
    assert type(model) is nn.Sequential
    assert all(isinstance(layer, SUPPORTED_LAYERS) for layer in model)
    assert all(len(list(layer.children())) == 0 for layer in model)  # no nested containers
    json.dumps(arch)
    shape = (
        (arch["in_features"],)
        if arch["name"] == "mlp"
        else (arch["in_channels"], arch["image_size"], arch["image_size"])
    )
    assert model(torch.zeros(4, *shape)).shape == (4, arch["num_classes"])


def test_small_cnn_is_the_reference_architecture():
    model = small_cnn(in_channels=1, image_size=28, num_classes=2)
    assert [type(layer) for layer in model] == [
        nn.Conv2d,
        nn.ReLU,
        nn.AvgPool2d,
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    conv, dense = model[0], model[4]
    assert (conv.out_channels, conv.kernel_size, conv.padding) == (8, (5, 5), (0, 0))
    assert (dense.in_features, dense.out_features) == (8 * 12 * 12, 32)
    assert small_cnn(in_channels=1, image_size=8, num_classes=10)[0].padding == (2, 2)


def test_lenet_has_two_convolutions_and_two_dense_layers():
    model = lenet(in_channels=3, image_size=28, num_classes=7)
    assert sum(isinstance(m, nn.Conv2d) for m in model) == 2
    assert sum(isinstance(m, nn.Linear) for m in model) == 2


def test_default_architecture_is_mlp_for_tables_and_cnn_for_images(digits, breast_cancer):
    assert default_architecture(breast_cancer) == {
        "name": "mlp",
        "in_features": 30,
        "num_classes": 2,
        "hidden": [32],
    }
    assert default_architecture(digits) == {
        "name": "small_cnn",
        "in_channels": 1,
        "image_size": 8,
        "num_classes": 10,
    }


def test_build_model_seed_is_reproducible_and_leaves_global_rng_alone():
    arch = ZOO[0]
    state = torch.get_rng_state()
    a, b, c = build_model(arch, seed=5), build_model(arch, seed=5), build_model(arch, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert _states_equal(a, b) and not _states_equal(a, c)


@pytest.mark.parametrize(
    "arch, match",
    [
        ({"name": "resnet18"}, "unknown architecture 'resnet18'"),
        ({"name": "mlp", "in_features": 30}, "missing.*num_classes"),
        (
            {"name": "lenet", "in_channels": 1, "image_size": 28, "num_classes": 2, "depth": 3},
            "unexpected.*depth",
        ),
        ({"name": "small_cnn", "in_channels": 1, "image_size": 4, "num_classes": 2}, "image_size"),
        ({"name": "mlp", "in_features": 30, "num_classes": 0}, "num_classes"),
    ],
)
def test_build_model_rejects_bad_descriptions(arch, match):
    with pytest.raises(ValueError, match=match):
        build_model(arch)


# --- training -------------------------------------------------------------------


def test_class_weights_are_inverse_frequency_with_absent_classes_zero():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), num_classes=3)
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2, 0.0]))
    y = torch.tensor([2, 2, 0, 2, 2, 2, 0, 1])
    weights = class_weights(y, num_classes=3)
    assert torch.allclose(weights[y].mean(), torch.tensor(1.0))  # mean sample weight is 1
    per_class_mass = torch.bincount(y, minlength=3) * weights
    assert torch.allclose(per_class_mass, per_class_mass[0].expand(3))  # classes weigh equally
    with pytest.raises(ValueError, match="num_classes=2"):
        class_weights(torch.tensor([0, 2]), num_classes=2)


def test_small_cnn_learns_digits(digits):
    arch = default_architecture(digits)
    result = train_owner(
        build_model(arch, seed=0),
        digits.train_x,
        digits.train_y,
        num_classes=10,
        epochs=10,
        seed=0,
        quiet=True,
    )
    assert accuracy(result.model, digits.test_x, digits.test_y) > 0.85
    assert result.best_val_accuracy > 0.85
    assert not result.model.training


def test_training_is_deterministic_and_leaves_global_rng_alone(breast_cancer):
    arch = default_architecture(breast_cancer)
    x, y = breast_cancer.train_x[:60], breast_cancer.train_y[:60]
    state = torch.get_rng_state()
    runs = [
        train_owner(build_model(arch, seed=1), x, y, num_classes=2, epochs=15, seed=s, quiet=True)
        for s in (7, 7, 8)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    assert _states_equal(runs[0].model, runs[1].model)
    assert runs[0].history == runs[1].history
    assert not _states_equal(runs[0].model, runs[2].model)


def test_early_stopping_restores_the_best_epoch(breast_cancer):
    model = build_model(default_architecture(breast_cancer), seed=0)
    result = train_owner(
        model,
        breast_cancer.train_x,
        breast_cancer.train_y,
        num_classes=2,
        epochs=200,
        lr=0.05,
        patience=3,
        seed=0,
        quiet=True,
    )
    assert result.epochs_run < 200 and result.epochs_run == len(result.history)
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.epochs_run == best["epoch"] + 3
    assert result.best_val_accuracy == best["val_accuracy"]


def test_class_weighting_raises_minority_recall():
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(400, generator=gen) < 0.9).long()  # 10% class 0
    x = torch.randn(400, 2, generator=gen) + 0.7 * y[:, None]  # overlapping classes
    recall = {}
    for weighted in (True, False):
        model = build_model({"name": "mlp", "in_features": 2, "num_classes": 2}, seed=0)
        train_owner(
            model, x, y, num_classes=2, epochs=40, class_weighted=weighted, seed=0, quiet=True
        )
        recall[weighted] = accuracy(model, x[y == 0], y[y == 0])
    assert recall[True] > recall[False] + 0.2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"shift": 2}, "shift"),  # breast-cancer rows are not images
        ({"shift": -1}, "shift"),
    ],
)
def test_train_owner_rejects_bad_arguments(breast_cancer, kwargs, match):
    model = build_model(default_architecture(breast_cancer))
    with pytest.raises(ValueError, match=match):
        train_owner(
            model, breast_cancer.train_x, breast_cancer.train_y, num_classes=2, quiet=True, **kwargs
        )


def test_train_owners_trains_each_owner_on_its_shard(breast_cancer, capsys):
    parts = partition(breast_cancer.train_y, num_owners=10, scheme="dirichlet", alpha=1.0, seed=0)
    results = train_owners(breast_cancer, parts, seed=0, epochs=30)
    assert len(results) == 10
    assert "owner 9" in capsys.readouterr().err  # one progress bar per owner
    test_accuracy = [accuracy(r.model, breast_cancer.test_x, breast_cancer.test_y) for r in results]
    assert np.median(test_accuracy) > 0.8
    again = train_owners(breast_cancer, parts[:2], seed=0, epochs=30, quiet=True)
    assert _states_equal(again[1].model, results[1].model)
    assert not _states_equal(results[0].model, results[1].model)
    assert capsys.readouterr().err == ""


def test_save_load_round_trip(tmp_path, digits):
    arch = {"name": "lenet", "in_channels": 1, "image_size": 8, "num_classes": 10}
    model = build_model(arch, seed=3)
    path = tmp_path / "owners" / "owner-0.pt"
    save_owner(path, model, arch, metadata={"owner": 0, "dataset": "digits"})
    loaded, loaded_arch, metadata = load_owner(path)
    assert loaded_arch == arch and metadata == {"owner": 0, "dataset": "digits"}
    model.eval()
    assert torch.equal(loaded(digits.test_x[:50]), model(digits.test_x[:50]))
    assert set(torch.load(path, weights_only=True)) == {"format", "arch", "state_dict", "metadata"}


def test_save_owner_rejects_non_json_metadata_and_load_rejects_foreign_files(tmp_path):
    arch = ZOO[0]
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_owner(tmp_path / "x.pt", build_model(arch), arch, metadata={"w": torch.ones(1)})
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an owner model file"):
        load_owner(tmp_path / "foreign.pt")


def test_a_trailing_minibatch_of_one_does_not_break_batchnorm_models():
    """square_cnn has BatchNorm1d layers; 33 training rows in minibatches of 32 leave one row,
    which BatchNorm cannot normalise in training mode (it raised before the fix)."""
    torch.manual_seed(0)
    x = torch.rand(41, 1, 8, 8)  # 41 rows, val_fraction 0.2 -> 8 validation, 33 fit rows: 32 + 1
    y = torch.arange(41) % 2
    model = build_model({"name": "square_cnn", "in_channels": 1, "image_size": 8, "num_classes": 2}, seed=0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.train()(x[:1])  # the failure the training loop must avoid
    trained = train_owner(model, x, y, num_classes=2, epochs=2, batch_size=32, val_fraction=0.2, seed=0)
    assert trained is not None


def test_shift_images_translates_each_image_by_at_most_shift_pixels_with_zero_fill():
    """One bright pixel per image, far enough from the border: it must land within [-2, 2]^2 of where it was,
    the image's total stays the same (nothing wraps around), and over 400 images every one of the 25 offsets
    occurs (each has probability 1/25: P(some offset missing) <= 25 * (24/25)**400 < 1e-5)."""
    x = torch.zeros(400, 1, 12, 12)
    x[:, 0, 5, 6] = 1.0
    shifted = shift_images(x, 2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(400))
    where = shifted[:, 0].flatten(1).argmax(dim=1)
    offsets = {(int(i) // 12 - 5, int(i) % 12 - 6) for i in where}
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert shift_images(x, 0, generator=torch.Generator()) is x


def test_shift_images_drops_what_leaves_the_frame():
    """A pixel in the corner leaves the frame for about 2/3 of the offsets along each axis that move it out."""
    x = torch.zeros(200, 1, 6, 6)
    x[:, 0, 0, 0] = 1.0
    kept = shift_images(x, 1, generator=torch.Generator().manual_seed(1)).sum(dim=(1, 2, 3))
    assert set(kept.tolist()) == {0.0, 1.0}  # moved up or left: gone (zero fill, no wrap-around)


def test_training_with_shift_is_deterministic_and_differs_from_no_shift(digits):
    x, y = digits.train_x[:120], digits.train_y[:120]
    arch = default_architecture(digits)
    runs = [train_owner(build_model(arch, seed=0), x, y, num_classes=10, epochs=3, seed=0, quiet=True, shift=shift)
            for shift in (1, 1, 0)]
    assert _states_equal(runs[0].model, runs[1].model)
    assert not _states_equal(runs[0].model, runs[2].model)

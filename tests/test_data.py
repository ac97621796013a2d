"""Tests of dataset loading (pricure_crypten.experiments.data) and partitioning (pricure_crypten.experiments.partition)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from pricure_crypten.experiments.data import Dataset, DatasetNotFoundError, available_datasets, load_dataset
from pricure_crypten.experiments.partition import describe_partition, partition

SHARED_MEDMNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"
needs_pneumonia = pytest.mark.skipif(
    not (SHARED_MEDMNIST / "pneumoniamnist.npz").exists(),
    reason=f"shared PneumoniaMNIST not found in {SHARED_MEDMNIST}",
)


@pytest.fixture(autouse=True)
def _no_data_root_env(monkeypatch):
    monkeypatch.delenv("PRICURE_DATA_ROOT", raising=False)


@pytest.fixture(scope="module")
def breast_cancer() -> Dataset:
    return load_dataset("breast-cancer", seed=0)


def _splits(d: Dataset):
    return [(d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)]


def _row_set(x: torch.Tensor) -> set:
    return {tuple(row) for row in np.round(x.reshape(len(x), -1).numpy(), 4).tolist()}


def _samples(images: np.ndarray, targets: np.ndarray) -> list:
    return sorted((tuple(np.round(img).astype(int)), int(t)) for img, t in zip(images, targets))


# --- loading -----------------------------------------------------------------


def test_available_datasets_lists_every_family_but_not_multi_label():
    names = available_datasets()
    expected = ("breast-cancer", "digits", "mnist", "fashion-mnist", "pneumoniamnist", "dermamnist")
    assert set(expected) <= set(names)
    assert "chestmnist" not in names
    assert not any(name.endswith("3d") for name in names)
    assert names == sorted(names)


def test_breast_cancer_shapes_dtypes_and_split_sizes(breast_cancer):
    d = breast_cancer
    assert (d.task, d.num_classes, d.input_shape) == ("binary-class", 2, (30,))
    assert d.label_names == ("malignant", "benign")
    assert [len(y) for _, y in _splits(d)] == [341, 114, 114]
    for x, y in _splits(d):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 30) and y.shape == (len(y),)
        assert set(y.unique().tolist()) == {0, 1}


def test_breast_cancer_splits_are_disjoint(breast_cancer):
    rows = [_row_set(x) for x, _ in _splits(breast_cancer)]
    assert sum(len(r) for r in rows) == 569  # every row is distinct in the source data
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_breast_cancer_is_standardized_with_train_statistics_only(breast_cancer):
    d = breast_cancer
    assert d.train_x.mean(dim=0).abs().max() < 1e-5
    assert torch.allclose(d.train_x.std(dim=0, unbiased=False), torch.ones(30), atol=1e-4)
    # held-out splits are transformed with the train statistics, so they are not exactly centred
    assert d.test_x.mean(dim=0).abs().max() > 0.05
    assert d.val_x.mean(dim=0).abs().max() > 0.05


def test_embedded_splits_are_stratified_and_reproducible(breast_cancer):
    again, other = load_dataset("breast-cancer", seed=0), load_dataset("breast-cancer", seed=1)
    assert torch.equal(again.test_x, breast_cancer.test_x)
    assert not torch.equal(other.test_y, breast_cancer.test_y)
    for _, y in _splits(breast_cancer):
        assert abs(y.float().mean().item() - 357 / 569) < 0.01


def test_digits_is_a_partition_of_the_sklearn_images():
    d = load_dataset("digits")
    assert (d.task, d.num_classes, d.input_shape) == ("multi-class", 10, (1, 8, 8))
    assert [len(y) for _, y in _splits(d)] == [1077, 360, 360]
    assert d.train_x.min() >= 0 and d.train_x.max() == 1.0
    ours = torch.cat([x for x, _ in _splits(d)]).reshape(-1, 64).numpy() * 16
    ours_labels = torch.cat([y for _, y in _splits(d)]).numpy()
    source = load_digits()
    # the same multiset of (image, label): each source sample lands in exactly one split
    assert _samples(ours, ours_labels) == _samples(source.images.reshape(-1, 64), source.target)


@needs_pneumonia
def test_pneumoniamnist_from_shared_folder():
    d = load_dataset("pneumoniamnist", root=SHARED_MEDMNIST)
    assert (d.task, d.num_classes, d.input_shape) == ("binary-class", 2, (1, 28, 28))
    assert d.label_names == ("normal", "pneumonia")
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (3882, 524, 624)
    assert d.test_y.bincount().tolist() == [234, 390]
    assert d.train_x.dtype == torch.float32 and d.train_x.min() >= 0 and d.train_x.max() <= 1
    assert d.train_x.max() > 0.9  # scaled from uint8, not left in [0, 255] nor squashed


@needs_pneumonia
def test_data_root_from_environment_variable(monkeypatch):
    monkeypatch.setenv("PRICURE_DATA_ROOT", str(SHARED_MEDMNIST))
    assert len(load_dataset("pneumoniamnist").val_y) == 524


def test_rgb_medmnist_file_becomes_channels_first(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 7, size=(n, 1), dtype=np.uint8)
    np.savez(tmp_path / "dermamnist.npz", **arrays)
    d = load_dataset("dermamnist", root=tmp_path)
    assert d.input_shape == (3, 28, 28) and d.num_classes == 7
    expected = arrays["test_images"].transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert np.allclose(d.test_x.numpy(), expected)
    assert d.test_y.tolist() == arrays["test_labels"].ravel().tolist()


def test_medmnist_file_without_expected_arrays_is_rejected(tmp_path):
    np.savez(tmp_path / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="test_labels"):
        load_dataset("breastmnist", root=tmp_path)


def test_medmnist_labels_outside_the_classes_are_rejected(tmp_path):
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.zeros((3, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = np.array([[0], [1], [5]], np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    with pytest.raises(ValueError, match=r"outside range\(2\)"):
        load_dataset("breastmnist", root=tmp_path)


@pytest.mark.parametrize(
    "size, filename", [(28, "pneumoniamnist.npz"), (64, "pneumoniamnist_64.npz")]
)
def test_missing_medmnist_file_names_file_directory_and_remedies(tmp_path, size, filename):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("pneumoniamnist", root=tmp_path, size=size)
    message = str(info.value)
    assert filename in message and str(tmp_path) in message
    assert "--data-root" in message and "PRICURE_DATA_ROOT" in message and "download" in message
    assert isinstance(info.value, FileNotFoundError)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format that torchvision's MNIST reader expects."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_files_with_stratified_validation_split(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_labels, test_labels = np.repeat(np.arange(10), 10), np.arange(10).repeat(2)
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (100, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)
    d = load_dataset("mnist", root=tmp_path)
    assert d.input_shape == (1, 28, 28) and d.label_names[3] == "3 - three"
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (90, 10, 20)
    assert d.val_y.bincount(minlength=10).tolist() == [1] * 10  # stratified
    assert _row_set(d.train_x).isdisjoint(_row_set(d.val_x))
    assert 0 <= d.train_x.min() and d.train_x.max() <= 1


def test_missing_torchvision_files_raise_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte") as info:
        load_dataset("fashion-mnist", root=tmp_path)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(info.value)


def test_unknown_name_lists_available_datasets():
    listing = "unknown dataset 'cifar10'.*breast-cancer.*pneumoniamnist"
    with pytest.raises(ValueError, match=listing):
        load_dataset("cifar10")


def test_multi_label_flag_is_refused():
    with pytest.raises(ValueError, match="multi-label"):
        load_dataset("chestmnist")


@pytest.mark.parametrize("name, size", [("pneumoniamnist", 32), ("digits", 64)])
def test_unsupported_size_is_refused(name, size):
    with pytest.raises(ValueError, match=f"size={size}"):
        load_dataset(name, size=size)


# --- partitioning --------------------------------------------------------------


def _mean_tv(labels, parts, num_classes):
    return np.mean([o["tv_distance"] for o in describe_partition(labels, parts, num_classes)])


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 5, size=1000)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_partition_is_disjoint_complete_and_reproducible(labels, scheme):
    parts = partition(labels, num_owners=7, scheme=scheme, alpha=0.5, seed=3, min_size=20)
    joined = np.concatenate(parts)
    assert len(parts) == 7 and len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 20
    again = partition(labels, num_owners=7, scheme=scheme, alpha=0.5, seed=3, min_size=20)
    other = partition(labels, num_owners=7, scheme=scheme, alpha=0.5, seed=4, min_size=20)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_small_alpha_is_more_label_skewed_than_iid(labels):
    iid = partition(labels, num_owners=10, scheme="iid", seed=0)
    skewed = partition(labels, num_owners=10, scheme="dirichlet", alpha=0.1, seed=0)
    assert _mean_tv(labels, iid, 5) < 0.1
    assert _mean_tv(labels, skewed, 5) > 0.4


def test_quantity_skew_gives_unequal_sizes_with_iid_labels(labels):
    parts = partition(labels, num_owners=10, scheme="quantity", alpha=0.5, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 3 * min(sizes)
    assert max(len(p) for p in partition(labels, num_owners=10, seed=0)) == 100
    big = [p for p in parts if len(p) >= 100]
    assert _mean_tv(labels, big, 5) < 0.15


def test_minimum_size_holds_under_extreme_label_skew():
    binary = np.array([0] * 200 + [1] * 141)  # breast-cancer-sized training split
    parts = partition(binary, num_owners=10, scheme="dirichlet", alpha=0.05, seed=0, min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert sum(len(p) for p in parts) == 341


def test_describe_partition_reports_sizes_and_histograms():
    y = np.array([0, 0, 1, 1, 2, 2])
    summary = describe_partition(y, [np.array([0, 1]), np.array([2, 3, 4, 5])], num_classes=3)
    assert summary[0] == {
        "owner": 0,
        "size": 2,
        "label_counts": [2, 0, 0],
        "tv_distance": pytest.approx(2 / 3),
    }
    assert summary[1]["label_counts"] == [0, 2, 2]


def test_too_many_owners_names_both_numbers():
    with pytest.raises(ValueError, match=r"num_owners \(12\).*samples \(11\)"):
        partition(np.zeros(11, dtype=int), num_owners=12)
    with pytest.raises(ValueError, match="min_size=10"):
        partition(np.zeros(50, dtype=int), num_owners=6, min_size=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scheme": "pathological"}, "unknown scheme"),
        ({"alpha": 0.0, "scheme": "dirichlet"}, "alpha"),
        ({"min_size": 0}, "min_size"),
    ],
)
def test_partition_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition(np.zeros(100, dtype=int), num_owners=5, **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 300),
    num_owners=st.integers(1, 10),
    scheme=st.sampled_from(["iid", "dirichlet", "quantity"]),
    alpha=st.floats(0.05, 10.0),
    seed=st.integers(0, 2**31),
)
def test_partition_property(n, num_owners, scheme, alpha, seed):
    y = np.random.default_rng(seed).integers(0, 3, size=n)
    min_size = n // (2 * num_owners)
    parts = partition(
        y, num_owners=num_owners, scheme=scheme, alpha=alpha, seed=seed, min_size=max(min_size, 1)
    )
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert min(len(p) for p in parts) >= max(min_size, 1)


SHARED_MNIST = SHARED_MEDMNIST.parent / "mnist" / "mnist.npz"


def test_mnist_reads_an_npz_offline_when_torchvision_files_are_absent(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    y_train = np.repeat(np.arange(10, dtype=np.uint8), 20)
    x_test = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    y_test = np.tile(np.arange(10, dtype=np.uint8), 3)
    np.savez_compressed(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    d = load_dataset("mnist", root=tmp_path, seed=0)
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (180, 20, 30)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    np.testing.assert_array_equal(d.test_x.numpy()[:, 0], x_test.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(d.test_y.numpy(), y_test)
    # train + val together are exactly the file's training rows, each once
    together = np.concatenate([d.train_x.numpy()[:, 0], d.val_x.numpy()[:, 0]]) * 255.0
    assert sorted(map(bytes, together.astype(np.uint8))) == sorted(map(bytes, x_train))
    assert np.bincount(d.val_y.numpy(), minlength=10).tolist() == [2] * 10  # stratified 10%


def test_a_malformed_mnist_npz_is_refused_with_its_path(tmp_path):
    np.savez(tmp_path / "mnist.npz", images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DatasetNotFoundError, match="mnist.npz"):
        load_dataset("mnist", root=tmp_path)


def test_missing_mnist_names_both_layouts(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="mnist.npz"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"shared MNIST not found at {SHARED_MNIST}")
def test_the_shared_full_mnist_loads_with_its_documented_label_counts():
    d = load_dataset("mnist", root=SHARED_MNIST.parent, seed=0)
    counts = np.bincount(np.concatenate([d.train_y.numpy(), d.val_y.numpy()]), minlength=10)
    # the counts stated in shared/data/README.md (the official training split)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert len(d.test_y) == 10_000

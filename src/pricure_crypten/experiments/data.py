"""Datasets as tensors, with train/val/test splits and metadata.

Three families of datasets are available by name (:func:`available_datasets`):

* embedded in scikit-learn, needing no file and no network:
  ``"breast-cancer"`` (569 x 30 features, binary) and ``"digits"`` (1,797
  8x8 images, 10 classes). Both are split 60/20/20, stratified, from ``seed``.
* the 2D MedMNIST flags (``"pneumoniamnist"``, ``"dermamnist"``, ...) read
  from ``<root>/<flag>.npz`` (``<flag>_<size>.npz`` for sizes 64/128/224),
  with the official splits. The file is read with numpy and never checked
  against the MD5 in ``medmnist.INFO``, so subsets of the official data (such
  as the shared ``pneumoniamnist.npz``) load too.
* ``"mnist"`` and ``"fashion-mnist"`` through :mod:`torchvision.datasets`,
  with a stratified 10% validation split carved from the training set. Offline,
  where torchvision's files are absent, ``<root>/<name>.npz`` in the widely used
  ``mnist.npz`` layout (``x_train``, ``y_train``, ``x_test``, ``y_test``, uint8) is
  read instead (the project's shared ``mnist/mnist.npz`` is such a file).

File-backed datasets look for their data in ``root``, else in the directory
named by the environment variable ``PRICURE_DATA_ROOT``, else in a default
(``~/.medmnist`` for MedMNIST, ``~/.pricure/data`` for torchvision). They are
downloaded only when ``download=True``; a missing file otherwise raises
:class:`DatasetNotFoundError`.

Inputs are float32 (images in [0, 1], channels first), labels int64 of shape
``(N,)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ROOT_ENV = "PRICURE_DATA_ROOT"

_EMBEDDED = ("breast-cancer", "digits")
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_SUPPORTED_MEDMNIST_TASKS = ("binary-class", "multi-class", "ordinal-regression")
_MEDMNIST_SIZES = (28, 64, 128, 224)
_SPLITS = ("train", "val", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's file is not on disk and could not (or may not) be downloaded."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset split into train, validation and test tensors.

    Attributes:
        name: the name it was loaded by (see :func:`available_datasets`).
        task: ``"binary-class"``, ``"multi-class"`` or ``"ordinal-regression"``
            (ordinal labels are treated as classes).
        num_classes: number of classes; labels are in ``range(num_classes)``.
        input_shape: shape of one input, e.g. ``(30,)`` or ``(1, 28, 28)``.
        label_names: one name per class, in label order.
        train_x, val_x, test_x: float32 inputs of shape ``(N, *input_shape)``.
        train_y, val_y, test_y: int64 labels of shape ``(N,)``.
    """

    name: str
    task: str
    num_classes: int
    input_shape: tuple[int, ...]
    label_names: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.label_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.label_names)} label names for {self.num_classes} classes"
            )
        for split in _SPLITS:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise TypeError(
                    f"{self.name} {split}: inputs must be float32 and labels int64, "
                    f"got {x.dtype} and {y.dtype}"
                )
            if tuple(x.shape[1:]) != self.input_shape or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{self.name} {split}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} "
                    f"do not match input shape {self.input_shape}"
                )
            if len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.num_classes:
                raise ValueError(
                    f"{self.name} {split}: labels span {int(y.min())}..{int(y.max())}, "
                    f"outside range({self.num_classes})"
                )


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted([*_EMBEDDED, *_TORCHVISION, *_medmnist_flags()])


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    size: int = 28,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of :func:`available_datasets`.
        root: directory holding the data files of file-backed datasets
            (default: ``$PRICURE_DATA_ROOT``, else the family's default).
            Ignored by the embedded datasets.
        download: fetch a missing file (needs network access).
        size: image side length; 28, or 64/128/224 for MedMNIST only.
        seed: seeds the splits that this function makes (embedded datasets,
            and the validation split of mnist/fashion-mnist). MedMNIST uses
            its official splits.

    Raises:
        ValueError: unknown name, unsupported size, or a multi-label flag.
        DatasetNotFoundError: the data file is missing and could not be
            downloaded (or ``download`` is False).
    """
    if name in _EMBEDDED:
        _require_default_size(name, size)
        return _load_embedded(name, seed=seed)
    if name in _TORCHVISION:
        _require_default_size(name, size)
        return _load_torchvision(name, root=root, download=download, seed=seed)
    if name in _medmnist_info():
        return _load_medmnist(name, root=root, download=download, size=size)
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")


def _require_default_size(name: str, size: int) -> None:
    if size != 28:
        raise ValueError(
            f"size={size} is not available for {name!r}: only MedMNIST datasets "
            f"come in sizes {_MEDMNIST_SIZES}"
        )


def _resolve_root(root: str | Path | None, default: Path) -> Path:
    if root is not None:
        return Path(root).expanduser()
    from_env = os.environ.get(DATA_ROOT_ENV)
    return Path(from_env).expanduser() if from_env else default


def _not_found(expected: str, directory: Path, cause: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{cause}: expected {expected} in {directory}. To provide it, point "
        f"--data-root (root=...) or the environment variable {DATA_ROOT_ENV} at your "
        f"data directory, or allow download (--download / download=True)."
    )


def _stratified_split(
    indices: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, held out), holding out ``fraction`` per class."""
    from sklearn.model_selection import train_test_split

    kept, held = train_test_split(
        indices, test_size=fraction, stratify=labels[indices], random_state=seed
    )
    return np.sort(kept), np.sort(held)


def _from_arrays(name: str, task: str, label_names: tuple[str, ...], splits: dict) -> Dataset:
    """Build a :class:`Dataset` from ``{split: (x float32 array, y int array)}``."""
    tensors = {}
    for split, (x, y) in splits.items():
        tensors[f"{split}_x"] = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        tensors[f"{split}_y"] = torch.as_tensor(np.asarray(y, dtype=np.int64).reshape(-1))
    return Dataset(
        name=name,
        task=task,
        num_classes=len(label_names),
        input_shape=tuple(tensors["train_x"].shape[1:]),
        label_names=label_names,
        **tensors,
    )


def _load_embedded(name: str, *, seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "breast-cancer":
        raw = load_breast_cancer()
        x, task = raw.data, "binary-class"
    else:
        raw = load_digits()
        x, task = raw.images[:, None, :, :] / 16.0, "multi-class"
    y = raw.target
    rest, test = _stratified_split(np.arange(len(y)), y, fraction=0.2, seed=seed)
    train, val = _stratified_split(rest, y, fraction=0.25, seed=seed)
    if name == "breast-cancer":
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
    return _from_arrays(name, task, tuple(str(n) for n in raw.target_names), splits)


def _medmnist_info() -> dict:
    """``medmnist.INFO`` restricted to the 2D flags."""
    import medmnist
    from medmnist.dataset import MedMNIST2D

    return {
        flag: info
        for flag, info in medmnist.INFO.items()
        if issubclass(getattr(medmnist, info["python_class"]), MedMNIST2D)
    }


def _medmnist_flags() -> list[str]:
    return [
        flag for flag, info in _medmnist_info().items() if info["task"] in _SUPPORTED_MEDMNIST_TASKS
    ]


def _load_medmnist(flag: str, *, root: str | Path | None, download: bool, size: int) -> Dataset:
    info = _medmnist_info()[flag]
    if info["task"] not in _SUPPORTED_MEDMNIST_TASKS:
        raise ValueError(
            f"{flag!r} is a {info['task']!r} dataset; only single-label tasks "
            f"({', '.join(_SUPPORTED_MEDMNIST_TASKS)}) are supported"
        )
    if size not in _MEDMNIST_SIZES:
        raise ValueError(f"size={size} is not a MedMNIST size; choose one of {_MEDMNIST_SIZES}")
    suffix = "" if size == 28 else f"_{size}"
    directory = _resolve_root(root, Path.home() / ".medmnist")
    path = directory / f"{flag}{suffix}.npz"
    if not path.exists():
        _fetch_medmnist(path, url=info[f"url{suffix}"], md5=info[f"MD5{suffix}"], download=download)
    with np.load(path) as npz:
        keys = [f"{s}_{kind}" for s in _SPLITS for kind in ("images", "labels")]
        missing = [key for key in keys if key not in npz]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}")
        splits = {s: (_images_chw(npz[f"{s}_images"]), npz[f"{s}_labels"]) for s in _SPLITS}
    label_names = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    return _from_arrays(flag, info["task"], label_names, splits)


def _fetch_medmnist(path: Path, *, url: str, md5: str, download: bool) -> None:
    """Download a missing MedMNIST file (official MD5 checked), or explain why not."""
    if not download:
        raise _not_found(path.name, path.parent, "dataset file not found")
    from torchvision.datasets.utils import download_url

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        download_url(url, root=str(path.parent), filename=path.name, md5=md5)
    except Exception as err:  # network, HTTP, disk and checksum failures alike
        raise _not_found(path.name, path.parent, f"download of {url} failed ({err})") from err


def _images_chw(images: np.ndarray) -> np.ndarray:
    """uint8 images (N,H,W) or (N,H,W,C) -> float32 (N,C,H,W) in [0, 1]."""
    chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return chw.astype(np.float32) / 255.0


def _load_torchvision(name: str, *, root: str | Path | None, download: bool, seed: int) -> Dataset:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    directory = _resolve_root(root, Path.home() / ".pricure" / "data")
    packed = directory / f"{name}.npz"
    try:
        train = cls(str(directory), train=True, download=download)
        test = cls(str(directory), train=False, download=download)
    except (RuntimeError, OSError) as err:  # missing files, network errors
        if packed.is_file():  # the offline fallback: the widely used single-file layout
            arrays = _read_packed(packed)
        else:
            expected = ", ".join(os.path.splitext(file)[0] for file, _ in cls.resources)
            cause = f"{name} download failed ({err})" if download else f"{name} files not found"
            raise _not_found(f"{expected} (or {packed.name})", directory / cls.__name__ / "raw",
                             cause) from err
    else:
        arrays = (train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy())
    x_train, y_train, x_test, y_test = arrays
    x, y = _images_chw(x_train), np.asarray(y_train)
    fit, val = _stratified_split(np.arange(len(y)), y, fraction=0.1, seed=seed)
    splits = {
        "train": (x[fit], y[fit]),
        "val": (x[val], y[val]),
        "test": (_images_chw(x_test), np.asarray(y_test)),
    }
    return _from_arrays(name, "multi-class", tuple(cls.classes), splits)


def _read_packed(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` from an ``mnist.npz``-style file (uint8 images N x 28 x 28)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data.files]
        if missing:
            raise DatasetNotFoundError(f"{path} lacks the arrays {missing} (expected mnist.npz's layout)")
        arrays = tuple(np.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "test")):
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != (len(images),):
            raise DatasetNotFoundError(
                f"{path}: {split} images must be uint8 N x H x W with N labels, got "
                f"{images.dtype} {images.shape} and labels {labels.shape}")
    return arrays

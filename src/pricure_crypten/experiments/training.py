"""Training the owners' models, each on its own shard only, and saving them.

:func:`train_owner` trains one model with Adam on class-weighted
cross-entropy (weights from the owner's own labels, see :func:`class_weights`),
holding out a validation split carved from the same shard for early stopping;
the best weights (lowest validation loss) are restored at the end. Training is
deterministic for a given seed: data order and the validation split come from
a local ``torch.Generator``, and any random layer (Dropout) runs under a
forked, seeded global RNG that is restored afterwards. The thread count
(``torch.set_num_threads``) is left as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset
from .models import build_model, default_architecture

_FORMAT = "pricure-owner/1"


@dataclass
class TrainResult:
    """Outcome of :func:`train_owner`.

    Attributes:
        model: the trained model with its best weights, in eval mode.
        best_val_accuracy: accuracy on the owner's validation split at the
            epoch whose weights were kept.
        epochs_run: epochs actually run (fewer than asked after early stopping).
        history: one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``,
            ``val_accuracy``.
    """

    model: nn.Sequential
    best_val_accuracy: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy weights inversely proportional to class frequency in ``y``.

    A class with count ``n_c`` gets ``len(y) / (k * n_c)``, where ``k`` is the
    number of classes present, so the mean weight over the samples is 1. A
    class absent from ``y`` gets weight 0 (it contributes no loss anyway).
    """
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    if counts.numel() != num_classes:
        raise ValueError(f"labels go up to {counts.numel() - 1}, beyond num_classes={num_classes}")
    present = counts > 0
    weights = torch.zeros(num_classes)
    weights[present] = len(y) / (int(present.sum()) * counts[present])
    return weights


def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (argmax of logits)."""
    return float((predict(model, x, batch_size=batch_size) == y).float().mean())


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes for ``x``, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits.argmax(dim=1)


def train_owner(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 3e-3,
    class_weighted: bool = True,
    val_fraction: float = 0.2,
    patience: int = 10,
    shift: int = 0,
    seed: int = 0,
    desc: str | None = None,
    position: int | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Train ``model`` in place on one owner's shard ``(x, y)``.

    Args:
        model: an untrained model (e.g. from :func:`~pricure_crypten.experiments.models.build_model`).
        x, y: the owner's inputs (float32) and labels (int64, shape ``(N,)``, N >= 2).
        num_classes: number of classes of the task.
        epochs: maximum number of passes over the training part of the shard.
        batch_size: minibatch size.
        lr: Adam learning rate.
        class_weighted: weight the loss (training and validation) by
            :func:`class_weights` of the shard; plain cross-entropy if False.
        val_fraction: share of the shard held out for early stopping
            (at least one sample), in (0, 1).
        patience: stop after this many epochs without a lower validation loss.
        shift: data augmentation for image inputs (``x`` of shape N x C x H x W):
            every training minibatch example is translated by a random
            whole-pixel offset in [-shift, shift] along each axis (zero
            fill); 0 (default) trains on the images as they are. The
            validation split is never augmented.
        seed: seeds the validation split, data order and random layers.
        desc, position: label and line of the tqdm progress bar.
        quiet: disable the progress bar.

    Returns:
        A :class:`TrainResult` whose model holds the best weights, in eval mode.
    """
    _validate_training(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        patience=patience,
    )
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0 or (shift and x.dim() != 4):
        raise ValueError(f"shift must be a non-negative integer (and 0 unless x holds N x C x H x W images), "
                         f"got {shift!r} for x of shape {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    n_val = min(max(1, round(len(y) * val_fraction)), len(y) - 1)
    fit_x, fit_y = x[order[n_val:]], y[order[n_val:]]
    val_x, val_y = x[order[:n_val]], y[order[:n_val]]
    weights = class_weights(y, num_classes) if class_weighted else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": 0}
    bar = tqdm(range(1, epochs + 1), desc=desc, position=position, leave=True, disable=quiet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in bar:
            train_loss = _run_epoch(
                model, optimizer, fit_x, fit_y, weights, batch_size=batch_size, generator=generator, shift=shift
            )
            val_loss, val_accuracy = _evaluate(model, val_x, val_y, weights)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                }
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_accuracy:.3f}")
            if best["epoch"] == 0 or val_loss < best["loss"]:
                best = {
                    "epoch": epoch,
                    "loss": val_loss,
                    "accuracy": val_accuracy,
                    "state": _snapshot(model),
                }
            elif epoch - best["epoch"] >= patience:
                break
    bar.close()
    model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, best["accuracy"], len(history), history)


def train_owners(
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    *,
    arch: dict[str, Any] | None = None,
    seed: int = 0,
    quiet: bool = False,
    **options: Any,
) -> list[TrainResult]:
    """Train one model per owner, owner ``k`` on ``dataset.train_x[parts[k]]`` only.

    Args:
        dataset: the dataset whose training split was partitioned.
        parts: one index array per owner (see :func:`~pricure_crypten.experiments.partition.partition`).
        arch: architecture of every owner's model (default:
            :func:`~pricure_crypten.experiments.models.default_architecture`).
        seed: non-negative; each owner's initial weights and training are
            seeded from ``(seed, owner index)``.
        quiet: no progress bars.
        **options: passed to :func:`train_owner` (``epochs``, ``batch_size``,
            ``lr``, ``class_weighted``, ``val_fraction``, ``patience``, ``shift``).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    arch = default_architecture(dataset) if arch is None else arch
    results = []
    for owner, part in enumerate(parts):
        owner_seed = int(np.random.SeedSequence([seed, owner]).generate_state(1)[0])
        index = torch.as_tensor(np.asarray(part), dtype=torch.int64)
        results.append(
            train_owner(
                build_model(arch, seed=owner_seed),
                dataset.train_x[index],
                dataset.train_y[index],
                num_classes=dataset.num_classes,
                seed=owner_seed,
                desc=f"owner {owner}",
                quiet=quiet,
                **options,
            )
        )
    return results


def save_owner(
    path: str | Path, model: nn.Module, arch: dict[str, Any], metadata: dict[str, Any] | None = None
) -> None:
    """Save ``model``'s weights with its architecture (and JSON-able metadata) in one file."""
    for what, value in (("arch", arch), ("metadata", metadata)):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what} must be JSON-serialisable: {err}") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(
        {"format": _FORMAT, "arch": arch, "state_dict": state, "metadata": metadata or {}}, path
    )


def load_owner(path: str | Path) -> tuple[nn.Sequential, dict[str, Any], dict[str, Any]]:
    """Load a file written by :func:`save_owner`: ``(model in eval mode, arch, metadata)``."""
    saved = torch.load(Path(path), weights_only=True, map_location="cpu")
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an owner model file ({_FORMAT})")
    model = build_model(saved["arch"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved["arch"], saved["metadata"]


def _validate_training(x, y, *, epochs, batch_size, lr, val_fraction, patience) -> None:
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x ({tuple(x.shape)}) and y ({tuple(y.shape)}) must have N rows, y 1-D")
    if len(y) < 2:
        raise ValueError(f"an owner needs at least 2 samples (train + validation), got {len(y)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def shift_images(x: torch.Tensor, shift: int, *, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N x C x H x W) translated by its own random offset in [-shift, shift]^2, zero fill."""
    if shift == 0:
        return x
    height, width = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)])


def _run_epoch(model, optimizer, x, y, weights, *, batch_size, generator, shift: int = 0) -> float:
    """One pass over (x, y) in random minibatches (each shifted, see :func:`shift_images`); the mean loss."""
    model.train()
    total = 0.0
    batches = list(torch.randperm(len(y), generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        batches[-2:] = [torch.cat(batches[-2:])]  # BatchNorm cannot normalise a batch of one example
    for batch in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(shift_images(x[batch], shift, generator=generator)), y[batch], weight=weights)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(y)


def _evaluate(model, x, y, weights) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits, y, weight=weights)
    return float(loss), float((logits.argmax(dim=1) == y).float().mean())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}

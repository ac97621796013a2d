"""The client's student: an ordinary torch model trained on its privately labelled rows.

Who sees what: this runs entirely at the CLIENT, on what the client already
has: its own pool (inputs it owns), the labels the private ensemble released
for some of those rows, and nothing else (no vote, no owner model, no owner
record). The student is therefore post-processing of the released labels: it
is covered by the client's TOTAL epsilon for those labels (whatever that was,
per accountant), and answers any number of later queries at no further cost.

Two recipes, same architecture, same number of optimiser steps:

* ``supervised``: cross-entropy on the labelled rows, with the weak
  augmentation below (random shifts of up to ``shift`` pixels).
* ``semi-supervised``: FixMatch (Sohn, Berthelot, Li, Zhang, Carlini, Cubuk,
  Kurakin, Zhang & Raffel, "FixMatch: Simplifying Semi-Supervised Learning with
  Consistency and Confidence", NeurIPS 2020), in a small CPU form: per step a
  batch of labelled rows (supervised loss on a weak augmentation) and ``mu``
  times as many unlabelled rows; the model's prediction on a WEAK augmentation
  of an unlabelled row is its pseudo-label if its probability is at least
  ``confidence`` (0.95 in the paper), and the loss on a STRONG augmentation of
  the same row is the cross-entropy to that pseudo-label (rows below the
  confidence contribute 0), weighted by ``unlabelled_weight`` (lambda_u = 1 in
  the paper). Departures from the paper, for CPU: the strong augmentation is
  a larger shift plus Cutout (DeVries & Taylor 2017; FixMatch's RandAugment
  also ends in Cutout) plus Gaussian pixel noise, instead of RandAugment's
  colour/geometry operations; Adam instead of SGD with Nesterov momentum and a
  cosine schedule; no weight EMA; ``mu`` = 3 instead of 7. PATE 2018's MNIST
  student used a different semi-supervised method (the improved-GAN method of
  Salimans et al. 2016); this is the substitute, named as such.

For inputs that are not images (rank-1 rows, used by the toy tests), the weak
augmentation adds Gaussian noise of std ``feature_noise`` and the strong one
four times that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_int, check_positive
from .models import build_model

RECIPES = ("supervised", "semi-supervised")


@dataclass(frozen=True)
class StudentConfig:
    """How the student is trained (see the module docstring).

    Attributes:
        arch: the architecture (a :func:`~pricure_crypten.experiments.models.build_model` dict);
            ``None``: ``lenet`` for images (the student is never run under MPC), else an MLP.
        steps: optimiser steps (the same for both recipes).
        batch_size: labelled rows per step (drawn with replacement when fewer exist).
        mu: unlabelled rows per step, as a multiple of ``batch_size`` (semi-supervised).
        lr: Adam's learning rate.
        confidence: FixMatch's pseudo-label threshold tau.
        unlabelled_weight: FixMatch's lambda_u.
        shift: the weak augmentation's largest shift, pixels (images).
        strong_shift: the strong augmentation's largest shift, pixels.
        cutout: side of the Cutout square, as a fraction of the image side.
        pixel_noise: std of the strong augmentation's Gaussian pixel noise (images in [0, 1]).
        feature_noise: the weak augmentation's noise std for non-image rows.
        seed: initial weights, data order and augmentations.
    """

    arch: Optional[dict] = None
    steps: int = 1500
    batch_size: int = 32
    mu: int = 3
    lr: float = 1e-3
    confidence: float = 0.95
    unlabelled_weight: float = 1.0
    shift: int = 2
    strong_shift: int = 3
    cutout: float = 0.4
    pixel_noise: float = 0.1
    feature_noise: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "mu"):
            check_int(getattr(self, name), name=name, minimum=1)
        for name in ("shift", "strong_shift", "seed"):
            check_int(getattr(self, name), name=name, minimum=0)
        for name in ("lr", "unlabelled_weight", "feature_noise", "pixel_noise"):
            check_positive(getattr(self, name), name=name)
        if not (isinstance(self.confidence, (int, float)) and 0.0 < self.confidence < 1.0):
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if not (isinstance(self.cutout, (int, float)) and 0.0 <= self.cutout < 1.0):
            raise ValueError(f"cutout must be in [0, 1), got {self.cutout!r}")
        if self.arch is not None and not isinstance(self.arch, dict):
            raise TypeError(f"arch must be an architecture dict or None, got {type(self.arch).__name__}")


@dataclass
class StudentResult:
    """A trained student and what its training saw.

    Attributes:
        model: the student (eval mode), an ordinary ``nn.Module`` the client keeps.
        recipe: ``"supervised"`` or ``"semi-supervised"``.
        labelled: labelled rows used; unlabelled: unlabelled rows used (0 when supervised).
        mask_rate: semi-supervised: mean share of unlabelled rows above the confidence, over the
            last 10% of the steps (``nan`` when supervised).
    """

    model: nn.Module
    recipe: str
    labelled: int
    unlabelled: int
    mask_rate: float = math.nan
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------------ augmentations

def _shift(x: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Every image shifted by its own random (dy, dx) in [-limit, limit], zero fill."""
    if limit == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (limit, limit, limit, limit))
    dy = torch.randint(0, 2 * limit + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * limit + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def weak_augment(x: torch.Tensor, config: StudentConfig, generator: torch.Generator) -> torch.Tensor:
    """Images: random shift of up to ``config.shift`` pixels; rows: Gaussian noise ``feature_noise``."""
    if x.ndim == 4:
        return _shift(x, config.shift, generator)
    return x + config.feature_noise * torch.randn(x.shape, generator=generator)


def strong_augment(x: torch.Tensor, config: StudentConfig, generator: torch.Generator) -> torch.Tensor:
    """Images: shift of up to ``strong_shift``, Cutout, pixel noise (clipped to [0, 1]); rows: 4x the noise."""
    if x.ndim != 4:
        return x + 4 * config.feature_noise * torch.randn(x.shape, generator=generator)
    out = _shift(x, config.strong_shift, generator)
    n, _, h, w = out.shape
    side = int(round(config.cutout * min(h, w)))
    if side > 0:
        top = torch.randint(-side // 2, h - side // 2, (n,), generator=generator)
        left = torch.randint(-side // 2, w - side // 2, (n,), generator=generator)
        rr = torch.arange(h)[None, :]
        cc = torch.arange(w)[None, :]
        in_rows = (rr >= top[:, None]) & (rr < top[:, None] + side)
        in_cols = (cc >= left[:, None]) & (cc < left[:, None] + side)
        hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        out = out.masked_fill(hole, 0.0)
    out = out + config.pixel_noise * torch.randn(out.shape, generator=generator)
    return out.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------- training

def default_student_arch(input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """``lenet`` for (C, H, W) images, an MLP with 64 hidden units for rows."""
    if len(input_shape) == 3:
        return {"name": "lenet", "in_channels": input_shape[0], "image_size": input_shape[1],
                "num_classes": num_classes}
    return {"name": "mlp", "in_features": int(np.prod(input_shape)), "num_classes": num_classes, "hidden": [64]}


def _check_inputs(x: Any, y: Any, unlabelled: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                               Optional[torch.Tensor]]:
    check_int(num_classes, name="num_classes", minimum=2)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("labelled rows and labels must be torch tensors")
    if x.ndim not in (2, 4) or not x.is_floating_point():
        raise ValueError(f"labelled rows must be float (N, F) or (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or y.is_floating_point():
        raise ValueError(f"labels must be an integer (N,) tensor matching the {len(x)} rows, got {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError("no labelled rows: the student needs at least one privately labelled row")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in range({num_classes}) (abstentions, -1, must be removed first); "
                         f"got {int(y.min())}..{int(y.max())}")
    if unlabelled is not None:
        if not isinstance(unlabelled, torch.Tensor) or not unlabelled.is_floating_point():
            raise TypeError("unlabelled rows must be a float torch tensor")
        if tuple(unlabelled.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"unlabelled rows {tuple(unlabelled.shape)} do not match the labelled rows' shape "
                             f"{tuple(x.shape[1:])}")
        if len(unlabelled) == 0:
            raise ValueError("unlabelled is empty: pass None for the supervised recipe")
    return x.float(), y.long(), None if unlabelled is None else unlabelled.float()


def train_student(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, unlabelled: Optional[torch.Tensor] = None,
                  config: StudentConfig = StudentConfig()) -> StudentResult:
    """Train a student on labelled rows ``(x, y)``; with ``unlabelled`` rows, semi-supervised (FixMatch).

    Args:
        x, y: the privately labelled rows and their released labels (abstentions removed).
        num_classes: the task's classes.
        unlabelled: the rest of the client's pool (no labels), or ``None`` for the supervised recipe.
        config: the recipe's settings.

    Returns:
        the student (eval mode) and training statistics. Deterministic for a given ``config.seed``
        (the thread count aside).
    """
    if not isinstance(config, StudentConfig):
        raise TypeError(f"config must be a StudentConfig, got {type(config).__name__}")
    x, y, u = _check_inputs(x, y, unlabelled, num_classes)
    arch = config.arch or default_student_arch(tuple(x.shape[1:]), num_classes)
    model = build_model(arch, seed=config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    masks: list[float] = []
    model.train()
    for step in range(config.steps):
        batch = torch.randint(0, len(y), (config.batch_size,), generator=generator)
        xb = weak_augment(x[batch], config, generator)
        if u is None:
            loss = F.cross_entropy(model(xb), y[batch])
            unsup, mask_rate = 0.0, math.nan
        else:
            ub = u[torch.randint(0, len(u), (config.mu * config.batch_size,), generator=generator)]
            weak, strong = weak_augment(ub, config, generator), strong_augment(ub, config, generator)
            logits = model(torch.cat([xb, weak, strong]))
            sup_logits = logits[:len(xb)]
            weak_logits, strong_logits = logits[len(xb):].chunk(2)
            with torch.no_grad():
                probs = weak_logits.softmax(dim=1)
                top, pseudo = probs.max(dim=1)
                mask = (top >= config.confidence).float()
            unsup_t = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
            loss = F.cross_entropy(sup_logits, y[batch]) + config.unlabelled_weight * unsup_t
            unsup, mask_rate = unsup_t.item(), float(mask.mean())
            masks.append(mask_rate)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % max(1, config.steps // 20) == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": loss.item(), "unlabelled_loss": unsup, "mask_rate": mask_rate})
    model.eval()
    tail = masks[-max(1, len(masks) // 10):] if masks else []
    return StudentResult(model=model, recipe="supervised" if u is None else "semi-supervised", labelled=len(y),
                         unlabelled=0 if u is None else len(u),
                         mask_rate=float(np.mean(tail)) if tail else math.nan, history=history)


def check_recipe(recipe: str) -> str:
    """``recipe`` if it is one of :data:`RECIPES`."""
    return check_choice(recipe, RECIPES, name="recipe")


def student_predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """The student's labels for ``x`` (the client's own computation, any number of times)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]).numpy()


def student_probabilities(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """Softmax outputs (N, C) of the student (white-box: the client owns it)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).softmax(dim=1)
                          for i in range(0, len(x), batch_size)]).double().numpy()

"""How the owners (and the attacker's shadow owners) train: the usual way, or deliberately overfit.

* ``Recipe(kind="usual")``: :func:`pricure_crypten.experiments.training.train_owner`,
  the project's usual training (class-weighted loss, a validation split of
  the shard for early stopping, best weights restored). The whole shard,
  validation part included, counts as the owner's data (members).
* ``Recipe(kind="overfit")``: plain Adam on the whole shard, no validation,
  no early stopping, no class weights, many epochs: the model memorises its
  shard, the regime where membership inference matters. Implemented here
  with plain torch (``training.py`` has no such switch).

The attacker is assumed to know the recipe (architecture and
hyper-parameters, not the data or the seed), so its shadow owners are
trained with the same :class:`Recipe` on its own pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_choice, check_int, check_positive
from ..models import build_model
from ..training import train_owner

KINDS = ("usual", "overfit")


@dataclass(frozen=True)
class Recipe:
    """A training recipe (validated on construction).

    Args:
        arch: the architecture dict of :func:`~pricure_crypten.experiments.models.build_model`.
        kind: ``"usual"`` or ``"overfit"``.
        epochs: passes over the shard (a maximum for ``"usual"``).
        lr: Adam learning rate.
        batch_size: minibatch size.
    """

    arch: dict[str, Any] = field(hash=False)
    kind: str = "overfit"
    epochs: int = 200
    lr: float = 3e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.arch, dict) or "name" not in self.arch:
            raise ValueError(f"arch must be an architecture dict with a 'name', got {self.arch!r}")
        check_choice(self.kind, KINDS, name="kind")
        check_int(self.epochs, name="epochs", minimum=1)
        check_int(self.batch_size, name="batch_size", minimum=1)
        check_positive(self.lr, name="lr")

    @property
    def num_classes(self) -> int:
        return int(self.arch["num_classes"])

    def train(self, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> nn.Sequential:
        """A model trained on ``(x, y)`` only, in eval mode; deterministic for a seed."""
        seed = check_int(seed, name="seed", minimum=0)
        model = build_model(self.arch, seed=seed)
        if self.kind == "usual":
            return train_owner(model, x, y, num_classes=self.num_classes, epochs=self.epochs, lr=self.lr,
                               batch_size=self.batch_size, seed=seed, quiet=True).model
        return train_overfit(model, x, y, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=seed)

    def train_all(self, x: torch.Tensor, y: torch.Tensor, parts: Sequence[np.ndarray], *, seed: int) -> list[nn.Sequential]:
        """One model per index array of ``parts`` (owner k seeded from ``(seed, k)``)."""
        models = []
        for k, part in enumerate(parts):
            index = torch.as_tensor(np.asarray(part), dtype=torch.int64)
            owner_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0] % 2**31)
            models.append(self.train(x[index], y[index], seed=owner_seed))
        return models


def train_overfit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int, seed: int
) -> nn.Module:
    """Plain cross-entropy with Adam on ALL of ``(x, y)`` for ``epochs`` passes; returns the model in eval mode.

    Deterministic for a seed (local generator for the data order, forked
    global RNG for random layers); the global torch RNG is left as it was.
    """
    check_int(epochs, name="epochs", minimum=1)
    check_int(batch_size, name="batch_size", minimum=1)
    check_positive(lr, name="lr")
    if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same N >= 1 rows, y 1-D")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=generator).split(batch_size):
                optimizer.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
    return model.eval()

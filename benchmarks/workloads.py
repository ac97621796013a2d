"""What the scaling sweeps evaluate: seeded, randomly initialised owners and random queries.

Time, rounds and bytes of the protocol do not depend on the weights' values,
so the owners/servers/batch sweeps use untrained copies of the reference CNN
(:func:`pricure_crypten.experiments.models.small_cnn`: conv 5x5 with 8 channels, ReLU,
avgpool 2, dense 32, ReLU, dense 2) on 1x28x28 inputs, each owner seeded.
"""

from __future__ import annotations

import torch

from pricure_crypten import ModelOwner
from pricure_crypten.experiments.models import build_model

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 2
ARCH = {"name": "small_cnn", "in_channels": 1, "image_size": 28, "num_classes": NUM_CLASSES}


def random_owners(count: int, *, seed: int) -> list[ModelOwner]:
    """``count`` owners with independently seeded, untrained small CNNs."""
    return [
        ModelOwner(
            name=f"owner-{i}",
            model=build_model(ARCH, seed=seed * 100_003 + i).eval(),
            input_shape=INPUT_SHAPE,
            num_classes=NUM_CLASSES,
        )
        for i in range(count)
    ]


def random_queries(batch: int, *, seed: int) -> torch.Tensor:
    """A batch of ``batch`` uniform [0, 1) images of shape 1x28x28 (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *INPUT_SHAPE), generator=generator)

"""The data-augmentation attack (Choquette-Choo et al., "Label-Only Membership Inference Attacks", ICML 2021).

A model that memorised a record tends to label it correctly not just as is,
but also under small perturbations. The attacker queries each record and
``n`` augmented copies of it; the score is the fraction labelled correctly
(``ABSTAIN`` counts as incorrect). The threshold is calibrated on shadow
owners that the attacker trains on its own data (:mod:`.shadow`).

Augmentations (deterministic for a seed):

* ``"shift"`` (images): translations by whole pixels, zero-filled, in
  order of increasing size: (0,±1), (±1,0), (±1,±1), (0,±2), ...
* ``"flip_shift"`` (images): the horizontal flip, then its shifts and the shifts.
* ``"noise"`` (any input): additive Gaussian noise of standard deviation
  ``noise_std`` (for standardised tabular features; images are clipped to [0, 1]).

Who sees what: the attacker sees ``n + 1`` labels per record (``n`` with
``include_original=False``) and nothing else.
"""

from __future__ import annotations

import math

import numpy as np

from ..._validation import check_choice, check_int, check_positive
from .base import LabelOnlyAttack, check_records
from .oracle import LabelOracle

KINDS = ("auto", "shift", "flip_shift", "noise")


def shift_offsets(count: int) -> list[tuple[int, int]]:
    """The first ``count`` non-zero pixel offsets (dy, dx), smallest L-inf then L1 first."""
    offsets = []
    radius = 1
    while len(offsets) < count:
        ring = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                if max(abs(dy), abs(dx)) == radius]
        offsets += sorted(ring, key=lambda o: (abs(o[0]) + abs(o[1]), o))
        radius += 1
    return offsets[:count]


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images (N, C, H, W) translated by (dy, dx) pixels, zero-filled."""
    out = np.zeros_like(images)
    h, w = images.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = images[..., ys, xs]
    return out


class AugmentationAttack(LabelOnlyAttack):
    """Fraction of ``n`` augmentations (plus the original) that the target labels correctly.

    Args:
        n: augmented copies per record (>= 1).
        kind: ``"auto"`` (shifts for images, noise otherwise), ``"shift"``,
            ``"flip_shift"`` or ``"noise"``.
        noise_std: standard deviation of ``"noise"`` (> 0).
        include_original: also query the record itself.
        seed: seeds the noise.
    """

    name = "augmentation"

    def __init__(self, *, n: int = 10, kind: str = "auto", noise_std: float = 0.1,
                 include_original: bool = True, seed: int = 0) -> None:
        self.n = check_int(n, name="n", minimum=1)
        self.kind = check_choice(kind, KINDS, name="kind")
        self.noise_std = check_positive(noise_std, name="noise_std")
        if not isinstance(include_original, bool):
            raise TypeError("include_original must be a bool")
        self.include_original = include_original
        self.seed = check_int(seed, name="seed", minimum=0)
        self.threshold = 0.5

    def _kind_for(self, x: np.ndarray) -> str:
        image = x.ndim == 4
        kind = ("shift" if image else "noise") if self.kind == "auto" else self.kind
        if kind != "noise" and not image:
            raise ValueError(f"augmentation {kind!r} needs images (N, C, H, W), got records of shape {x.shape[1:]}")
        return kind

    def augment(self, x: np.ndarray) -> np.ndarray:
        """The ``n`` variants of every record, shape (n, N, *input_shape)."""
        kind = self._kind_for(x)
        if kind == "noise":
            rng = np.random.default_rng(self.seed)
            variants = x[None] + rng.normal(0.0, self.noise_std, size=(self.n, *x.shape)).astype(np.float32)
            if x.ndim == 4:
                variants = np.clip(variants, 0.0, 1.0)
            return variants.astype(np.float32)
        if kind == "shift":
            return np.stack([shift(x, dy, dx) for dy, dx in shift_offsets(self.n)])
        flipped = x[..., ::-1].copy()
        variants = [flipped]
        for dy, dx in shift_offsets(math.ceil(self.n / 2)):
            variants += [shift(x, dy, dx), shift(flipped, dy, dx)]
        return np.stack(variants[:self.n])

    def scores(self, oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xs, ys = check_records(oracle, x, y)
        variants = self.augment(xs)
        if self.include_original:
            variants = np.concatenate([xs[None], variants])
        labels = oracle(variants.reshape(-1, *xs.shape[1:])).reshape(len(variants), len(xs))
        return (labels == ys[None]).mean(axis=0)

    def queries_per_record(self) -> int:
        return self.n + int(self.include_original)

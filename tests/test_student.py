"""The client's student: it learns, the semi-supervised recipe uses the unlabelled rows, augmentations, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression

from pricure_crypten.experiments.student import (StudentConfig, strong_augment, student_predict,
                                                 student_probabilities, train_student, weak_augment)

torch.set_num_threads(1)


def blobs(n: int, rng: np.random.Generator, *, classes: int = 3, spread: float = 0.5):
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])[:classes]
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, spread, (n, 2))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_supervised_student_learns_a_separable_task():
    """Three Gaussian blobs 8 sd apart (Bayes accuracy > 0.9999), 60 labelled rows, 600 test rows.

    Independent reference: scikit-learn's logistic regression on the same rows. The student must be within
    3 points of it, and above the chance bound: under chance (1/3) the probability of >= 260/600 correct is
    below 1e-7, so a student that learnt nothing fails with probability > 1 - 1e-7.
    """
    rng = np.random.default_rng(0)
    x, y = blobs(60, rng)
    xt, yt = blobs(600, rng)
    result = train_student(x, y, num_classes=3, config=StudentConfig(steps=300, lr=3e-3, seed=0))
    accuracy = float((student_predict(result.model, xt) == yt.numpy()).mean())
    reference = LogisticRegression(max_iter=1000).fit(x.numpy(), y.numpy()).score(xt.numpy(), yt.numpy())
    assert reference > 0.99
    assert accuracy >= reference - 0.03
    assert stats.binom.sf(int(accuracy * 600) - 1, 600, 1 / 3) < 1e-7
    p = student_probabilities(result.model, xt)
    assert p.shape == (600, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert result.recipe == "supervised" and result.unlabelled == 0 and result.labelled == 60


def _boundary(model) -> float:
    """The largest x1 on the segment [0, 2] x {0} that the model labels 0."""
    grid = torch.tensor(np.c_[np.linspace(0, 2, 201), np.zeros(201)], dtype=torch.float32)
    labels = student_predict(model, grid)
    return float(grid[:, 0][labels == 0].max()) if (labels == 0).any() else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_supervised_student_uses_the_unlabelled_rows(seed):
    """One labelled row per class, at x1 = 0 (class 0) and x1 = 2 (class 1): the supervised boundary is
    near the bisector x1 = 1. Unlabelled rows are piled at x1 = 0.7, where the model is confidently class 0:
    FixMatch turns them into pseudo-labels and trains the STRONG augmentations (noise sd 4 x 0.15 = 0.6)
    around them towards class 0, so the boundary must move right, by at least 0.3. A student that ignored
    the unlabelled rows would keep the supervised boundary (seeds 0..5 in development: supervised
    0.89-0.97, semi-supervised 1.46-1.59, a shift of 0.5-0.68 every time)."""
    rng = np.random.default_rng(seed)
    x, y = torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    unlabelled = torch.tensor(np.c_[rng.normal(0.7, 0.05, 300), rng.normal(0, 0.05, 300)], dtype=torch.float32)
    config = StudentConfig(steps=300, batch_size=16, feature_noise=0.15, lr=3e-3, confidence=0.8, seed=seed)
    supervised = train_student(x, y, num_classes=2, config=config)
    semi = train_student(x, y, num_classes=2, unlabelled=unlabelled, config=config)
    assert semi.recipe == "semi-supervised" and semi.unlabelled == 300
    assert 0.0 < semi.mask_rate <= 1.0
    assert 0.75 < _boundary(supervised.model) < 1.25
    assert _boundary(semi.model) > _boundary(supervised.model) + 0.3


def _shift_reference(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moved by (dy, dx), zero fill (numpy, written here)."""
    out = np.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_weak_augmentation_is_a_shift_within_the_limit_and_strong_stays_in_range():
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.uniform(0.1, 1, (20, 1, 8, 8)), dtype=torch.float32)
    config = StudentConfig(shift=2)
    generator = torch.Generator().manual_seed(0)
    shifted = weak_augment(images, config, generator).numpy()
    seen = set()
    for original, out in zip(images.numpy(), shifted):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(_shift_reference(original, dy, dx), out)]
        assert matches, "every weak augmentation is one of the 25 allowed shifts"
        seen.add(matches[0])
    assert len(seen) > 3, "the shifts are random"
    assert torch.equal(weak_augment(images, StudentConfig(shift=0), generator), images)
    strong = strong_augment(images, StudentConfig(strong_shift=3, cutout=0.5), generator)
    assert strong.shape == images.shape and float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0
    assert (strong == 0).float().mean() > 0.1, "Cutout zeroes a square"


def test_bad_input_is_named():
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="abstentions"):
        train_student(x, torch.tensor([0, -1, 0, 1]), num_classes=2)
    with pytest.raises(ValueError, match="no labelled rows"):
        train_student(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="do not match"):
        train_student(x, y, num_classes=2, unlabelled=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="labels must be an integer"):
        train_student(x, y[:3], num_classes=2)
    with pytest.raises(TypeError, match="torch tensors"):
        train_student(x.numpy(), y, num_classes=2)
    with pytest.raises(ValueError, match="confidence"):
        StudentConfig(confidence=1.5)
    with pytest.raises(ValueError, match="steps"):
        StudentConfig(steps=0)
    with pytest.raises(TypeError, match="StudentConfig"):
        train_student(x, y, num_classes=2, config={"steps": 3})

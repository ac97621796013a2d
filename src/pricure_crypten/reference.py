"""The plaintext reference: the same aggregation, with no MPC.

Tests and benchmarks compare the private protocol against this. It applies
the same clamp, the same vote/softmax histogram, the same tie-break offsets
and the same argmax; noise is drawn with diffprivlib's mechanisms (the
mechanism's :meth:`reference_mechanism`), independently per count. With
epsilon = inf it is the plaintext ensemble. It sees everything (all owners'
models and the queries), so it is for evaluation only, never for deployment.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .aggregation import DEFAULT_LOGIT_BOUND, tie_break_offsets
from .noise import ConfidentGNMax, Mechanism
from .noise.calibration import check_aggregation


def ensemble_logits(models: Sequence[nn.Module], queries: torch.Tensor) -> np.ndarray:
    """Every owner's logits on the batch, shape (K, B, C) (plaintext)."""
    outputs = []
    with torch.no_grad():
        for model in models:
            was_training = model.training
            model.eval()
            outputs.append(model(queries.float()).double().numpy())
            model.train(was_training)
    return np.stack(outputs)


def histogram(logits: np.ndarray, *, aggregation: str, logit_bound: float = DEFAULT_LOGIT_BOUND) -> np.ndarray:
    """Vote counts or summed softmax probabilities, shape (B, C)."""
    check_aggregation(aggregation)
    clamped = np.clip(logits, -logit_bound, logit_bound)
    if aggregation == "vote":
        num_classes = clamped.shape[-1]
        return np.eye(num_classes)[clamped.argmax(axis=-1)].sum(axis=0)
    shifted = np.exp(clamped - clamped.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).sum(axis=0)


def noisy_argmax(
    counts: np.ndarray, *, aggregation: str, mechanism: Mechanism, random_state: int | None = None
) -> np.ndarray:
    """Labels (B,) from a histogram: diffprivlib noise per count, tie-break offsets, argmax."""
    reference = mechanism.reference_mechanism(random_state=random_state)
    noisy = counts.astype(np.float64)
    if reference is not None:
        noisy = np.vectorize(reference.randomise, otypes=[np.float64])(noisy)
    noisy = noisy + tie_break_offsets(counts.shape[-1], aggregation)
    return noisy.argmax(axis=-1)


def predict(
    models: Sequence[nn.Module],
    queries: torch.Tensor,
    *,
    aggregation: str,
    mechanism: Mechanism,
    logit_bound: float = DEFAULT_LOGIT_BOUND,
    random_state: int | None = None,
) -> np.ndarray:
    """The plaintext ensemble's labels for a batch (with the mechanism's noise)."""
    counts = histogram(ensemble_logits(models, queries), aggregation=aggregation, logit_bound=logit_bound)
    return noisy_argmax(counts, aggregation=aggregation, mechanism=mechanism, random_state=random_state)


def confident_gnmax(counts: np.ndarray, *, mechanism: ConfidentGNMax, seed: int = 0) -> np.ndarray:
    """Plaintext Confident-GNMax on vote histograms: labels (B,), -1 where it abstains."""
    rng = np.random.default_rng(seed)
    top = counts.max(axis=-1) + rng.normal(0.0, mechanism.sigma_threshold, size=counts.shape[0])
    noisy = counts + rng.normal(0.0, mechanism.sigma, size=counts.shape)
    labels = (noisy + tie_break_offsets(counts.shape[-1], "vote")).argmax(axis=-1)
    labels[top < mechanism.threshold] = -1
    return labels

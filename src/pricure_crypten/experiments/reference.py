"""The plaintext reference: the same ensemble and the same mechanism, simulated without MPC.

Experiments compare the private protocol against this, and attacks that need
thousands of queries run against it. It applies the same clamp and the same
vote/softmax histogram, and releases through the mechanism's own
:meth:`~pricure_crypten.privacy.noise.NoiseMechanism.release` on
:class:`PlaintextReleaseOps`, which mirrors the MPC layer exactly: the noise is
the sum of the N servers' partials, each rounded to the 2**-16 fixed-point
grid as a server encodes it, and the argmax gives exact ties to the lowest
class index. So the simulation has the same calibration and the same
tie-breaking as the MPC path (the tests check the MPC path against an
independent numpy reference instead). With no noise it is the plaintext
ensemble. It sees everything (all owners' models and the queries), so it is
for evaluation only, never for deployment.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import DEFAULT_LOGIT_BOUND, check_aggregation, check_split
from ..mpc.randomness import SecureRandom
from ..mpc.sharing import SCALE
from ..parties.client import ABSTAIN
from ..privacy.noise import NoiseMechanism



class PlaintextReleaseOps:
    """:class:`~pricure_crypten.privacy.noise.ReleaseOps` on numpy arrays, as N servers would do it.

    Args:
        num_servers: N (the noise is the sum of N partials).
        colluding: t (each partial is drawn for N - t servers, as in MPC).
        rng: the generator of every partial (a seeded :class:`SecureRandom` for
            reproducible experiments).
    """

    def __init__(self, *, num_servers: int = 2, colluding: int = 0, rng: SecureRandom | None = None) -> None:
        check_split(num_servers, colluding)
        self.num_servers = num_servers
        self.colluding = colluding
        self.rng = rng if rng is not None else SecureRandom()

    def add_noise(self, values: np.ndarray, partial: Callable[..., np.ndarray]) -> np.ndarray:
        noisy = np.asarray(values, dtype=np.float64).copy()
        for draw in self.server_partials(partial, noisy.shape):
            noisy += np.round(draw * SCALE) / SCALE  # each server encodes its partial in fixed point
        return noisy

    def server_partials(self, partial: Callable[..., np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
        """The N servers' partials of one noise addition, in rank order (all drawn from ``rng`` here;
        :mod:`~pricure_crypten.experiments.conformance` draws them from the test-only seeded streams)."""
        return [partial(shape, num_servers=self.num_servers, colluding=self.colluding, rng=self.rng)
                for _ in range(self.num_servers)]

    def argmax(self, values: np.ndarray) -> np.ndarray:
        return np.eye(values.shape[-1])[np.argmax(values, axis=-1)]  # numpy: first (lowest) index on ties

    def top(self, values: np.ndarray) -> np.ndarray:
        return values.max(axis=-1)

    def at_least(self, values: np.ndarray, threshold: float) -> np.ndarray:
        return (values >= threshold).astype(np.float64)

    def mask(self, one_hot: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return one_hot * keep[..., None]


def labels_from_one_hot(one_hot: np.ndarray) -> np.ndarray:
    """Labels (B,), ``ABSTAIN`` (-1) where the one-hot is all zeros."""
    labels = one_hot.argmax(axis=-1)
    labels[one_hot.sum(axis=-1) == 0] = ABSTAIN
    return labels


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


def release(
    counts: np.ndarray,
    *,
    mechanism: NoiseMechanism,
    num_servers: int = 2,
    colluding: int = 0,
    seed: int | str | None = None,
) -> np.ndarray:
    """Labels (B,) released from histograms (B, C) by ``mechanism``, exactly as the MPC path does it."""
    rng = SecureRandom(seed=seed) if seed is not None else SecureRandom()
    ops = PlaintextReleaseOps(num_servers=num_servers, colluding=colluding, rng=rng)
    return labels_from_one_hot(mechanism.release(np.asarray(counts, dtype=np.float64), ops))


def noisy_argmax(
    counts: np.ndarray, *, aggregation: str, mechanism: NoiseMechanism, random_state: int | None = None
) -> np.ndarray:
    """Labels (B,) from a histogram of kind ``aggregation`` (validated against the mechanism)."""
    mechanism.check_aggregation(check_aggregation(aggregation))
    return release(counts, mechanism=mechanism, seed=random_state)


def predict(
    models: Sequence[nn.Module],
    queries: torch.Tensor,
    *,
    aggregation: str,
    mechanism: NoiseMechanism,
    logit_bound: float = DEFAULT_LOGIT_BOUND,
    random_state: int | None = None,
) -> np.ndarray:
    """The plaintext ensemble's labels for a batch (with the mechanism's noise)."""
    counts = histogram(ensemble_logits(models, queries), aggregation=aggregation, logit_bound=logit_bound)
    return noisy_argmax(counts, aggregation=aggregation, mechanism=mechanism, random_state=random_state)


def confident_gnmax(counts: np.ndarray, *, mechanism: NoiseMechanism, seed: int = 0) -> np.ndarray:
    """Plaintext Confident-GNMax on vote histograms: labels (B,), -1 where it abstains."""
    mechanism.check_aggregation("vote")
    return release(counts, mechanism=mechanism, seed=seed)

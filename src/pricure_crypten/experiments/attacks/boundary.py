"""The decision-boundary distance attack (Choquette-Choo et al. 2021; Li & Zhang 2021), through ART.

A memorised record sits far from the decision boundary. HopSkipJump, a
label-only evasion attack, estimates the L2 distance from the record to the
nearest input with a different label; members should need larger
perturbations. This module wires the Adversarial Robustness Toolbox (ART)
in, and reimplements nothing of it:

* :func:`art_classifier` wraps a :class:`~pricure_crypten.experiments.attacks.oracle.LabelOracle`
  in ART's ``BlackBoxClassifier``: the prediction is the oracle's label,
  one-hot (with one extra "abstain" class when the oracle can abstain);
* :class:`BoundaryAttack` runs ART's ``LabelOnlyDecisionBoundary`` on it:
  ``calibrate_distance_threshold`` on a SHADOW target (the attacker's own
  owners), ``infer(probabilities=True)`` on the target, from which the
  distance is recovered (ART returns ``sigmoid(distance - tau)``; the score
  is ``tau + logit(p)``, i.e. the distance, 0 for misclassified records).

HopSkipJump asks hundreds to thousands of queries per record: run it against
the plaintext simulation of the mechanism
(:class:`~pricure_crypten.experiments.attacks.oracle.EnsembleOracle`), not
the MPC path. Its randomness (numpy's global RNG, and an unseeded
``RandomState`` for the starting points) is seeded from ``seed`` for the
duration of a call and restored after.

Who sees what: ART (the attacker) sees only the oracle's labels.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ..._validation import check_int
from .base import LabelOnlyAttack, check_records
from .oracle import ABSTAIN, LabelOracle


def art_classifier(oracle: LabelOracle, *, clip_values: tuple[float, float] | None = None):
    """ART ``BlackBoxClassifier`` whose predictions are the oracle's labels, one-hot.

    ``nb_classes`` is C, or C + 1 when the oracle can abstain (class C = abstain).
    """
    from art.estimators.classification import BlackBoxClassifier

    if not isinstance(oracle, LabelOracle):
        raise TypeError(f"oracle must be a LabelOracle, not {type(oracle).__name__}")
    classes = oracle.num_classes + int(oracle.can_abstain)

    def predict(x: np.ndarray) -> np.ndarray:
        labels = oracle(np.asarray(x, dtype=np.float32))
        labels = np.where(labels == ABSTAIN, oracle.num_classes, labels)
        return np.eye(classes, dtype=np.float32)[labels]

    return BlackBoxClassifier(predict, oracle.input_shape, classes, clip_values=clip_values)


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed HopSkipJump's randomness for the duration of a call; restore numpy's global state after.

    HopSkipJump draws its gradient-estimation noise from numpy's global RNG
    and its random starting points from ``np.random.RandomState()`` created
    WITHOUT a seed (ART 1.20). Both are made deterministic here: the global
    RNG is seeded, and an unseeded ``RandomState`` (only while the attack
    runs) takes its seed from a generator seeded by ``seed``.
    """
    original = np.random.RandomState
    seeds = np.random.default_rng(seed)

    class _SeededRandomState(original):  # type: ignore[misc, valid-type]
        def __init__(self, seed: Any = None) -> None:
            super().__init__(int(seeds.integers(2**31)) if seed is None else seed)

    state = np.random.get_state()
    np.random.seed(seed)
    np.random.RandomState = _SeededRandomState
    try:
        yield
    finally:
        np.random.RandomState = original
        np.random.set_state(state)


class BoundaryAttack(LabelOnlyAttack):
    """Score = HopSkipJump's L2 distance to the decision boundary (0 if misclassified).

    Args:
        max_iter, max_eval, init_eval, init_size: HopSkipJump's budget
            (iterations; max/initial evaluations for the gradient estimate;
            random trials for the starting point). Queries per record grow
            roughly as ``max_iter * (max_eval + binary-search steps)``.
        clip_values: the input range, e.g. ``(0.0, 1.0)`` for images; ``None``
            lets HopSkipJump use the records' min and max.
        seed: seeds HopSkipJump's random starting points.
    """

    name = "boundary"

    def __init__(self, *, max_iter: int = 10, max_eval: int = 500, init_eval: int = 50, init_size: int = 100,
                 clip_values: tuple[float, float] | None = None, seed: int = 0) -> None:
        self.max_iter = check_int(max_iter, name="max_iter", minimum=1)
        self.max_eval = check_int(max_eval, name="max_eval", minimum=1)
        self.init_eval = check_int(init_eval, name="init_eval", minimum=1, maximum=self.max_eval)
        self.init_size = check_int(init_size, name="init_size", minimum=1)
        if clip_values is not None:
            low, high = (float(v) for v in clip_values)
            if not low < high:
                raise ValueError(f"clip_values must be (low, high) with low < high, got {clip_values!r}")
            clip_values = (low, high)
        self.clip_values = clip_values
        self.seed = check_int(seed, name="seed", minimum=0)
        self.threshold = 0.0
        self.tau: float | None = None
        self.last_queries_per_record: float | None = None

    def _hsj_options(self) -> dict:
        return {"norm": 2, "max_iter": self.max_iter, "max_eval": self.max_eval, "init_eval": self.init_eval,
                "init_size": self.init_size, "verbose": False}

    def _attack(self, oracle: LabelOracle, tau: float | None):
        from art.attacks.inference.membership_inference import LabelOnlyDecisionBoundary

        return LabelOnlyDecisionBoundary(art_classifier(oracle, clip_values=self.clip_values),
                                         distance_threshold_tau=tau)

    def calibrate(self, oracle: LabelOracle, x_in: np.ndarray, y_in: np.ndarray,
                  x_out: np.ndarray, y_out: np.ndarray) -> float:
        """ART's ``calibrate_distance_threshold`` on a SHADOW oracle; sets tau (= :attr:`threshold`)."""
        xi, yi = check_records(oracle, x_in, y_in)
        xo, yo = check_records(oracle, x_out, y_out)
        attack = self._attack(oracle, None)
        with _seeded_numpy(self.seed):
            attack.calibrate_distance_threshold(xi, yi, xo, yo, **self._hsj_options())
        tau = float(attack.distance_threshold_tau)
        self.tau = tau if tau > 0 else None  # ART finds no separating tau when every distance is 0
        self.threshold = tau
        return self.threshold

    def scores(self, oracle: LabelOracle, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The estimated distances (N,); queries through ART's ``LabelOnlyDecisionBoundary.infer``."""
        xs, ys = check_records(oracle, x, y)
        tau = self.tau if self.tau is not None else 1.0  # any positive tau: the score is the distance
        attack = self._attack(oracle, tau)
        before = oracle.queries
        with _seeded_numpy(self.seed):
            p = attack.infer(xs, ys, probabilities=True, **self._hsj_options())[:, 1].astype(np.float64)
        self.last_queries_per_record = (oracle.queries - before) / max(len(xs), 1)
        with np.errstate(divide="ignore"):
            distance = tau + np.log(p) - np.log1p(-p)
        distance = np.where(np.isfinite(distance), distance, np.nan)
        top = np.nanmax(distance) if np.isfinite(distance).any() else tau
        distance = np.nan_to_num(distance, nan=top + 1.0)  # p == 1 in float64: farther than any resolved one
        return np.clip(distance, 0.0, None)

    def queries_per_record(self) -> None:
        """Adaptive: see :attr:`last_queries_per_record` after :meth:`scores`."""
        return None

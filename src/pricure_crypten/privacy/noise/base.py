"""The interface every DP noise mechanism implements, including no-noise and Confident-GNMax.

A mechanism is calibrated once, on construction (keyword-only arguments,
validated there), and then answers:

* :meth:`NoiseMechanism.release`: how the released label is computed from a
  vote (or softmax) histogram, written against :class:`ReleaseOps`. The MPC
  layer runs it on secret shares (:class:`pricure_crypten.mpc.aggregation.MPCReleaseOps`,
  where every server adds its own noise partial to its own share), the
  plaintext simulation on numbers (:mod:`pricure_crypten.experiments.reference`).
  One description of the mechanism, so the aggregation layer needs no
  ``isinstance`` switch and the simulation cannot drift from the MPC path.
* :meth:`NoiseMechanism.partial` (additive mechanisms): the noise ONE server
  adds to its own share. Partials come from an exact infinitely-divisible
  decomposition, so the partials of any ``num_servers - colluding`` servers
  already sum to exactly the calibrated distribution. No server knows the
  total noise unless more than ``colluding`` servers collude.
* :meth:`NoiseMechanism.dp_event`: the privacy cost of one release, as a
  ``dp_accounting`` event, for the accountants.
* :meth:`NoiseMechanism.check_aggregation`: refuses a histogram kind the
  calibration does not cover (before anything starts).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol, TypeVar

import numpy as np

from ..._validation import check_aggregation, check_delta, check_epsilon, check_split
from ...mpc.randomness import SecureRandom, Shape

__all__ = ["AdditiveNoise", "NoiseMechanism", "ReleaseOps", "check_delta", "check_epsilon", "check_split"]

T = TypeVar("T")
Partial = Callable[..., np.ndarray]


class ReleaseOps(Protocol[T]):
    """What a mechanism may do with a histogram it may not be able to see.

    ``T`` is a secret-shared tensor under MPC, a numpy array in the
    simulation. Every operation is batched over the leading dimensions.
    """

    def add_noise(self, values: T, partial: Partial) -> T:
        """``values`` plus noise whose per-server partials ``partial`` draws."""

    def argmax(self, values: T) -> T:
        """One-hot argmax over the last dimension; exact ties go to the LOWEST index."""

    def top(self, values: T) -> T:
        """The maximum over the last dimension."""

    def at_least(self, values: T, threshold: float) -> T:
        """1 where ``values >= threshold``, else 0."""

    def mask(self, one_hot: T, keep: T) -> T:
        """Zero the one-hot rows where ``keep`` is 0 (an abstention: the all-zero one-hot)."""


class NoiseMechanism(ABC):
    """A calibrated way to release one label per query from a histogram."""

    name: str = "abstract"
    epsilon: float
    delta: float

    @property
    @abstractmethod
    def scale(self) -> float:
        """Laplace b or Gaussian sigma of the noise (0 for no noise)."""

    @abstractmethod
    def release(self, histogram: T, ops: ReleaseOps[T]) -> T:
        """The released one-hot label (all zeros for an abstention)."""

    @abstractmethod
    def dp_event(self) -> Any:
        """The ``dp_accounting`` event of one release."""

    def check_aggregation(self, aggregation: str) -> str:
        """Validate the histogram kind this mechanism is asked to protect."""
        return check_aggregation(aggregation)

    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        """One server's noise partial (zero for a mechanism that adds none)."""
        check_split(num_servers, colluding)
        return np.zeros(shape)

    @property
    def deterministic(self) -> bool:
        """True when the release adds no noise (epsilon = inf)."""
        return False


class AdditiveNoise(NoiseMechanism):
    """Noise added to every count, then the argmax (the GNMax / LNMax family).

    Args:
        epsilon: per-release epsilon, > 0.
        delta: per-release delta, in [0, 1).
        sensitivity: sensitivity of the released histogram (L1 for Laplace,
            L2 for Gaussian).
    """

    def __init__(self, *, epsilon: float, delta: float, sensitivity: float) -> None:
        self.epsilon = check_epsilon(epsilon)
        if math.isinf(self.epsilon):
            raise ValueError(f"{type(self).__name__} needs a finite epsilon; use NoNoise() for epsilon = inf")
        self.delta = check_delta(delta)
        if not (isinstance(sensitivity, (int, float)) and not isinstance(sensitivity, bool)
                and math.isfinite(sensitivity) and sensitivity > 0):
            raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity!r}")
        self.sensitivity = float(sensitivity)

    @abstractmethod
    def sample(self, shape: Shape, *, rng: SecureRandom | None = None) -> np.ndarray:
        """The full noise, drawn at once."""

    @abstractmethod
    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        """One server's partial: the partials of any N - colluding servers sum to :meth:`sample`'s law."""

    def release(self, histogram: T, ops: ReleaseOps[T]) -> T:
        return ops.argmax(ops.add_noise(histogram, self.partial))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(epsilon={self.epsilon:g}, delta={self.delta:g}, "
            f"sensitivity={self.sensitivity:g}, scale={self.scale:.6g})"
        )

"""The interface every DP noise mechanism implements.

A mechanism is calibrated once (epsilon, delta, sensitivity -> scale) and then
answers three questions:

* :meth:`NoiseMechanism.partial`: the noise ONE server adds to its own share
  of the vote histogram. Partials come from an exact infinitely-divisible
  decomposition, so the partials of any ``num_servers - colluding`` servers
  already sum to exactly the calibrated distribution. No server knows the
  total noise unless more than ``colluding`` servers collude.
* :meth:`NoiseMechanism.sample`: the full noise in one draw (plaintext
  reference and tests).
* :meth:`NoiseMechanism.dp_event`: the privacy cost of one release, as a
  ``dp_accounting`` event, for the accountants.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..randomness import SecureRandom, Shape


def check_epsilon(epsilon: float, *, name: str = "epsilon", infinite: str = "no noise") -> float:
    """Validate an epsilon (> 0, not NaN; inf means ``infinite``)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, not {type(epsilon).__name__}")
    epsilon = float(epsilon)
    if math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"{name} must be > 0 (or inf for {infinite}), got {epsilon}")
    return epsilon


def check_delta(delta: float, *, name: str = "delta") -> float:
    """Validate a delta in [0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, not {type(delta).__name__}")
    delta = float(delta)
    if math.isnan(delta) or not 0.0 <= delta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {delta}")
    return delta


def check_split(num_servers: int, colluding: int) -> int:
    """Number of servers whose partials alone must give the full noise (N - t)."""
    if isinstance(num_servers, bool) or not isinstance(num_servers, (int, np.integer)):
        raise TypeError(f"num_servers must be an int, not {type(num_servers).__name__}")
    if isinstance(colluding, bool) or not isinstance(colluding, (int, np.integer)):
        raise TypeError(f"colluding must be an int, not {type(colluding).__name__}")
    if num_servers < 2:
        raise ValueError(f"num_servers must be >= 2, got {num_servers}")
    if not 0 <= colluding < num_servers:
        raise ValueError(f"colluding must be in [0, num_servers - 1] = [0, {num_servers - 1}], got {colluding}")
    return int(num_servers - colluding)


class NoiseMechanism(ABC):
    """A calibrated additive noise distribution for a vote histogram."""

    name: str = "abstract"

    def __init__(self, *, epsilon: float, delta: float, sensitivity: float) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta)
        if not (isinstance(sensitivity, (int, float)) and math.isfinite(sensitivity) and sensitivity > 0):
            raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity}")
        self.sensitivity = float(sensitivity)

    @property
    @abstractmethod
    def scale(self) -> float:
        """Laplace b or Gaussian sigma of the full noise."""

    @abstractmethod
    def sample(self, shape: Shape, *, rng: SecureRandom | None = None) -> np.ndarray:
        """The full noise, drawn at once (plaintext reference)."""

    @abstractmethod
    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        """One server's partial: the partials of any N - colluding servers sum to :meth:`sample`'s law."""

    @abstractmethod
    def dp_event(self) -> Any:
        """The ``dp_accounting`` event of one release."""

    @abstractmethod
    def reference_mechanism(self, *, random_state: int | None = None) -> Any:
        """The diffprivlib mechanism with the same calibration (plaintext reference)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(epsilon={self.epsilon:g}, delta={self.delta:g}, "
            f"sensitivity={self.sensitivity:g}, scale={self.scale:.6g})"
        )

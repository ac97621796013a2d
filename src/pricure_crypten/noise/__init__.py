"""Differential-privacy noise: one mechanism per module, one interface (``base``)."""

from .base import NoiseMechanism, check_delta, check_epsilon
from .calibration import AGGREGATIONS, MECHANISMS, Mechanism, calibrate
from .gaussian import GaussianNoise
from .laplace import LaplaceNoise
from .none import NoNoise

__all__ = [
    "AGGREGATIONS",
    "MECHANISMS",
    "GaussianNoise",
    "LaplaceNoise",
    "Mechanism",
    "NoNoise",
    "NoiseMechanism",
    "calibrate",
    "check_delta",
    "check_epsilon",
]

"""Differential-privacy noise: one mechanism per module, one interface (``base``)."""

from .base import NoiseMechanism, check_delta, check_epsilon
from .confident_gnmax import ConfidentGNMax
from .calibration import AGGREGATIONS, MECHANISMS, Mechanism, calibrate
from .gaussian import GaussianNoise
from .laplace import LaplaceNoise
from .none import NoNoise

__all__ = [
    "AGGREGATIONS",
    "ConfidentGNMax",
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

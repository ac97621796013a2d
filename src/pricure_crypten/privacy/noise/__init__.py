"""Differential-privacy noise: one mechanism per module behind one interface (:mod:`.base`)."""

from ..._validation import AGGREGATIONS, check_delta, check_epsilon
from .base import AdditiveNoise, NoiseMechanism, ReleaseOps
from .calibration import MECHANISMS, Mechanism, calibrate
from .confident_gnmax import ConfidentGNMax
from .gaussian import GaussianNoise
from .laplace import LaplaceNoise
from .none import NoNoise

__all__ = [
    "AGGREGATIONS",
    "AdditiveNoise",
    "ConfidentGNMax",
    "GaussianNoise",
    "LaplaceNoise",
    "MECHANISMS",
    "Mechanism",
    "NoNoise",
    "NoiseMechanism",
    "ReleaseOps",
    "calibrate",
    "check_delta",
    "check_epsilon",
]

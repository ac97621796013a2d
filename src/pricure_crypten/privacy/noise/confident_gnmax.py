"""Confident-GNMax (Papernot et al., "Scalable Private Learning with PATE", ICLR 2018).

For a vote histogram n(x): if ``max_j n_j + N(0, sigma_threshold^2) >= threshold``
answer ``argmax_j (n_j + N(0, sigma^2))``, else abstain. Both steps run under
MPC (see :mod:`pricure_crypten.mpc.aggregation`); each server adds its own
partial of each Gaussian (N(0, s^2 / (N - t)) each), and the single reveal is
the label or "abstain".

Privacy, accounted data-independently: the threshold step is a Gaussian
mechanism on the top count (sensitivity 1: one owner's vote changes the
maximum by at most 1), the argmax step a Gaussian mechanism on the histogram
(L2 sensitivity sqrt(2)). Every query is charged for BOTH steps, whether or
not it abstains (the charge is committed before anyone learns the outcome).
Two Gaussian mechanisms with noise multipliers z1, z2 compose exactly (in RDP
and in their privacy-loss distributions) to one with
``z = (z1^-2 + z2^-2)^-1/2``, which is the DP event reported.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np

from ..._validation import check_aggregation, check_positive
from ...mpc.randomness import SecureRandom, Shape
from .base import NoiseMechanism, ReleaseOps, T, check_delta
from .gaussian import gaussian_partial

ARGMAX_SENSITIVITY_L2 = math.sqrt(2.0)
THRESHOLD_SENSITIVITY = 1.0


class ConfidentGNMax(NoiseMechanism):
    """The Confident-GNMax aggregator's noise for vote histograms.

    Args:
        threshold: T, the noisy top count needed to answer.
        sigma_threshold: sigma_1 of the threshold check.
        sigma: sigma_2 of the noisy argmax.
        delta: the delta at which :attr:`epsilon` (per query) is reported.
    """

    name = "confident-gnmax"

    def __init__(self, *, threshold: float, sigma_threshold: float, sigma: float, delta: float = 1e-5) -> None:
        self.threshold = check_positive(threshold, name="threshold")
        self.sigma_threshold = check_positive(sigma_threshold, name="sigma_threshold")
        self.sigma = check_positive(sigma, name="sigma")
        self.delta = check_delta(delta)
        if self.delta == 0.0:
            raise ValueError("Confident-GNMax is Gaussian: delta must be > 0")
        z1 = self.sigma_threshold / THRESHOLD_SENSITIVITY
        z2 = self.sigma / ARGMAX_SENSITIVITY_L2
        self.noise_multiplier = (z1**-2 + z2**-2) ** -0.5
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(self.dp_event())
        self.epsilon = float(accountant.get_epsilon(self.delta))

    @property
    def scale(self) -> float:
        return self.sigma

    def threshold_partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        """One server's partial of N(0, sigma_threshold^2) for the top count."""
        return gaussian_partial(self.sigma_threshold, shape, num_servers=num_servers, colluding=colluding, rng=rng)

    def partial(
        self, shape: Shape, *, num_servers: int, colluding: int = 0, rng: SecureRandom | None = None
    ) -> np.ndarray:
        """One server's partial of N(0, sigma^2) for the histogram."""
        return gaussian_partial(self.sigma, shape, num_servers=num_servers, colluding=colluding, rng=rng)

    def check_aggregation(self, aggregation: str) -> str:
        if check_aggregation(aggregation) != "vote":
            raise ValueError("Confident-GNMax aggregates votes: use aggregation='vote'")
        return aggregation

    def release(self, histogram: T, ops: ReleaseOps[T]) -> T:
        """Answer the noisy argmax where the noisy top count reaches the threshold, else abstain."""
        top = ops.add_noise(ops.top(histogram), self.threshold_partial)
        answered = ops.at_least(top, self.threshold)
        return ops.mask(ops.argmax(ops.add_noise(histogram, self.partial)), answered)

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_accounting.GaussianDpEvent(noise_multiplier=self.noise_multiplier)

    def __repr__(self) -> str:
        return (
            f"ConfidentGNMax(threshold={self.threshold:g}, sigma_threshold={self.sigma_threshold:g}, "
            f"sigma={self.sigma:g}, epsilon={self.epsilon:.4g} at delta={self.delta:g})"
        )

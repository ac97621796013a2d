"""The encrypted aggregation layer: owners' logits -> noisy label, all under MPC.

Runs inside each server process on ``MPCTensor`` shares. For logits of shape
(K, B, C) it computes, without decoding anything:

1. clamp the logits to ``[-logit_bound, logit_bound]`` (fixed-point safety:
   comparisons and the softmax's exp stay far from the ring's wraparound);
2. the histogram (B, C): ``vote`` sums each owner's one-hot argmax,
   ``softmax`` sums each owner's probability vector;
3. DP noise: this server adds its own partial (drawn from its own CSPRNG, see
   :mod:`pricure_crypten.noise`) to its own share of the histogram; no
   server knows the total noise;
4. a public tie-break offset ``-c * tie_step`` for class ``c`` (exact ties go
   to the lowest class index, in MPC and in the plaintext reference alike;
   post-processing, so no privacy cost);
5. the one-hot argmax (B, C), still secret-shared.

With :class:`~pricure_crypten.noise.ConfidentGNMax` (vote histograms only),
step 3-5 become Papernot et al.'s confident aggregator: the top count plus
one Gaussian is compared with the threshold (a secret bit), the histogram
plus another Gaussian is arg-maxed, and the one-hot is multiplied by the bit,
so an abstention is an all-zero one-hot. Still one reveal.

The caller sends the shares of that one-hot to the client and nowhere else:
the single reveal.
"""

from __future__ import annotations

import crypten
import crypten.nn
import numpy as np
import torch
from crypten.mpc import MPCTensor

from .noise import ConfidentGNMax, Mechanism, NoNoise
from .noise.calibration import check_aggregation
from .randomness import SecureRandom
from .sharing import FRACTIONAL_BITS, REPRESENTABLE_MAX_ABS, SCALE, encode

DEFAULT_LOGIT_BOUND = 64.0


def tie_break_offsets(num_classes: int, aggregation: str) -> np.ndarray:
    """Public offsets added to the noisy histogram so exact ties go to the lowest index.

    Vote counts are integers, so a step of 1/(2C) never reorders distinct
    counts; softmax sums are real, so the step is 2**-12 (below the MPC
    softmax's approximation error, above the fixed-point resolution 2**-16).
    """
    step = 1.0 / (2 * num_classes) if aggregation == "vote" else 2.0**-12
    return -step * np.arange(num_classes, dtype=np.float64)


def to_fixed_point(x: MPCTensor) -> MPCTensor:
    """Re-express shares in the 16-bit fixed-point encoding (local: shares times a public integer).

    CrypTen returns one-hot results (argmax) with scale 1; noise, offsets and
    the client's reconstruction all use scale 2**16.
    """
    scale = int(x.encoder.scale)
    if scale == SCALE:
        return x
    return MPCTensor.from_shares(x.share * (SCALE // scale), precision=FRACTIONAL_BITS)


def check_logit_bound(logit_bound: float) -> float:
    bound = float(logit_bound)
    if not 0 < bound <= 128:
        raise ValueError(
            f"logit_bound must be in (0, 128], got {logit_bound}: after subtracting the maximum the "
            "softmax's exp approximation is exact only on [-256, 0]"
        )
    return bound


class EncryptedAggregation(crypten.nn.Module):
    """A CrypTen module: (K, B, C) logit shares -> (B, C) one-hot shares of the noisy argmax.

    Args:
        aggregation: ``"vote"`` or ``"softmax"``.
        mechanism: the calibrated noise (from :func:`pricure_crypten.noise.calibrate`).
        num_servers: N, the number of CrypTen parties.
        colluding: t, the number of colluding servers the noise tolerates.
        logit_bound: clamp bound for the logits.
        rng: this server's CSPRNG for its noise partial (OS CSPRNG by default).
    """

    def __init__(
        self,
        *,
        aggregation: str,
        mechanism: Mechanism,
        num_servers: int,
        colluding: int = 0,
        logit_bound: float = DEFAULT_LOGIT_BOUND,
        rng: SecureRandom | None = None,
    ) -> None:
        super().__init__()
        self.aggregation = check_aggregation(aggregation)
        if isinstance(mechanism, ConfidentGNMax) and self.aggregation != "vote":
            raise ValueError("Confident-GNMax aggregates votes: use aggregation='vote'")
        self.mechanism = mechanism
        self.num_servers = num_servers
        self.colluding = colluding
        self.logit_bound = check_logit_bound(logit_bound)
        self.rng = rng if rng is not None else SecureRandom()
        self.encrypt()  # no parameters; marks the module as taking CrypTensors

    def clamp(self, logits: MPCTensor) -> MPCTensor:
        """x - relu(x - L) + relu(-x - L): one batched ReLU for both sides."""
        k = logits.size(0)
        excess = crypten.cat([logits - self.logit_bound, -logits - self.logit_bound], dim=0).relu()
        return logits - excess[:k] + excess[k:]

    def histogram(self, logits: MPCTensor) -> MPCTensor:
        if self.aggregation == "vote":
            return to_fixed_point(logits.argmax(dim=-1, one_hot=True).sum(0))
        return to_fixed_point(logits.softmax(dim=-1).sum(0))

    def add_partial(self, shared: MPCTensor, draw) -> MPCTensor:
        """Add this server's noise partial (``draw``) to its own share: local, no communication."""
        partial = draw(tuple(shared.size()), num_servers=self.num_servers, colluding=self.colluding, rng=self.rng)
        encoded = torch.from_numpy(encode(partial, max_abs=REPRESENTABLE_MAX_ABS, name="noise partial"))
        shared.share = shared.share + encoded
        return shared

    def noisy_argmax(self, histogram: MPCTensor) -> MPCTensor:
        if not isinstance(self.mechanism, NoNoise):
            histogram = self.add_partial(histogram, self.mechanism.partial)
        offsets = torch.from_numpy(tie_break_offsets(histogram.size(-1), self.aggregation)).float()
        return (histogram + offsets).argmax(dim=-1, one_hot=True)

    def confident_argmax(self, histogram: MPCTensor) -> MPCTensor:
        """Confident-GNMax: the noisy argmax, zeroed where the noisy top count misses the threshold."""
        top, _ = histogram.max(dim=-1)
        top = self.add_partial(top, self.mechanism.threshold_partial)
        answered = top.ge(self.mechanism.threshold)
        return self.noisy_argmax(histogram) * answered.unsqueeze(-1)

    def forward(self, logits: MPCTensor) -> MPCTensor:
        histogram = self.histogram(self.clamp(logits))
        if isinstance(self.mechanism, ConfidentGNMax):
            return to_fixed_point(self.confident_argmax(histogram))
        return to_fixed_point(self.noisy_argmax(histogram))

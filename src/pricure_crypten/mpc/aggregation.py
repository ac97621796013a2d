"""The encrypted aggregation layer: owners' logits -> noisy label, all under MPC.

Runs inside each server process on ``MPCTensor`` shares. For logits of shape
(K, B, C) it computes, without decoding anything:

1. clamp the logits to ``[-logit_bound, logit_bound]`` (fixed-point safety:
   comparisons and the softmax's exp stay far from the ring's wraparound);
2. the histogram (B, C): ``vote`` sums each owner's one-hot argmax,
   ``softmax`` sums each owner's probability vector;
3. the mechanism's release (:meth:`NoiseMechanism.release
   <pricure_crypten.privacy.noise.NoiseMechanism.release>`) on
   :class:`MPCReleaseOps`: each server adds its own noise partial (drawn from
   its own CSPRNG) to its own share, so no server knows the total noise; the
   argmax is exact with ties to the lowest class index (see :meth:`MPCReleaseOps.argmax`);
   Confident-GNMax also compares the noisy top count with its threshold and
   multiplies the one-hot by that secret bit, so an abstention is all zeros.

The result is the (B, C) one-hot label, still secret-shared; the caller sends
this server's share of it to the client and nowhere else: the single reveal.
Who sees what: a server sees only its shares and its own noise partial.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .._validation import DEFAULT_LOGIT_BOUND, check_aggregation, check_logit_bound
from ._crypten import MPCTensor, crypten
from .randomness import SecureRandom
from .sharing import FRACTIONAL_BITS, REPRESENTABLE_MAX_ABS, SCALE, encode



def to_fixed_point(x: MPCTensor) -> MPCTensor:
    """Re-express shares in the 16-bit fixed-point encoding (local: shares times a public integer).

    CrypTen returns one-hot results (argmax, comparisons) with scale 1; noise,
    the tie-break and the client's reconstruction all use scale 2**16.
    """
    scale = int(x.encoder.scale)
    if scale == SCALE:
        return x
    return MPCTensor.from_shares(x.share * (SCALE // scale), precision=FRACTIONAL_BITS)


def lowest_index_tie_break(num_classes: int) -> tuple[int, np.ndarray]:
    """The public integers of the exact tie-break: scores ``C * v + (C - 1 - c)`` in ring units.

    For values ``v`` on the fixed-point grid (integers in units of 2**-16),
    ``C * v_a + (C-1-a) > C * v_b + (C-1-b)`` holds exactly when ``v_a > v_b``,
    or ``v_a == v_b`` and ``a < b``: the order of distinct values is never
    changed (they differ by at least C units, the offsets by less), and equal
    values go to the lower index. Unlike an additive offset of a fraction of a
    vote, this moves no probability between classes except on exact ties of
    the fixed-point values, which occur with probability about
    ``density * 2**-16`` under noise. All scores are distinct, so CrypTen's
    randomised tie handling never comes into play.
    """
    return num_classes, (num_classes - 1 - np.arange(num_classes)).astype(np.int64)


class MPCReleaseOps:
    """:class:`~pricure_crypten.privacy.noise.ReleaseOps` on secret shares (one server's view).

    Args:
        num_servers: N, the number of CrypTen parties.
        colluding: t; each partial is drawn for N - t honest servers.
        rng: this server's CSPRNG for its noise partials.
    """

    def __init__(self, *, num_servers: int, colluding: int, rng: SecureRandom) -> None:
        self.num_servers = num_servers
        self.colluding = colluding
        self.rng = rng

    def add_noise(self, values: MPCTensor, partial: Callable[..., np.ndarray]) -> MPCTensor:
        """Add this server's partial to its own share: local, no communication, nothing decoded."""
        values = to_fixed_point(values)
        draw = partial(tuple(values.size()), num_servers=self.num_servers, colluding=self.colluding, rng=self.rng)
        encoded = torch.from_numpy(encode(draw, max_abs=REPRESENTABLE_MAX_ABS, name="noise partial"))
        return MPCTensor.from_shares(values.share + encoded, precision=FRACTIONAL_BITS)

    def argmax(self, values: MPCTensor) -> MPCTensor:
        """One-hot argmax with exact ties to the lowest index (:func:`lowest_index_tie_break`)."""
        values = to_fixed_point(values)
        multiplier, offsets = lowest_index_tie_break(values.size(-1))
        # Shares times a public integer are shares of the product (local). The
        # offsets are public ring elements: the encoder adds them to one share.
        scaled = MPCTensor.from_shares(values.share * multiplier, precision=FRACTIONAL_BITS)
        scores = scaled + torch.from_numpy(offsets.astype(np.float64) / SCALE)
        return scores.argmax(dim=-1, one_hot=True)  # a bit per class (encoder scale 1)

    def top(self, values: MPCTensor) -> MPCTensor:
        return to_fixed_point(values).max(dim=-1)[0]

    def at_least(self, values: MPCTensor, threshold: float) -> MPCTensor:
        return values.ge(threshold)  # a bit (encoder scale 1)

    def mask(self, one_hot: MPCTensor, keep: MPCTensor) -> MPCTensor:
        """Bits times bits (both at encoder scale 1): one Beaver product, no truncation."""
        return one_hot * keep.unsqueeze(-1)


class EncryptedAggregation(crypten.nn.Module):
    """A CrypTen module: (K, B, C) logit shares -> (B, C) one-hot shares of the released label.

    Args:
        aggregation: ``"vote"`` or ``"softmax"``.
        mechanism: the calibrated mechanism (any :class:`~pricure_crypten.privacy.noise.NoiseMechanism`).
        num_servers: N, the number of CrypTen parties.
        colluding: t, the number of colluding servers the noise tolerates.
        logit_bound: clamp bound for the logits.
        rng: this server's CSPRNG for its noise partials (OS CSPRNG by default).
    """

    def __init__(
        self,
        *,
        aggregation: str,
        mechanism: Any,
        num_servers: int,
        colluding: int = 0,
        logit_bound: float = DEFAULT_LOGIT_BOUND,
        rng: SecureRandom | None = None,
    ) -> None:
        super().__init__()
        self.aggregation = mechanism.check_aggregation(check_aggregation(aggregation))
        self.mechanism = mechanism
        self.logit_bound = check_logit_bound(logit_bound)
        self.ops = MPCReleaseOps(num_servers=num_servers, colluding=colluding,
                                 rng=rng if rng is not None else SecureRandom())
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

    def forward(self, logits: MPCTensor) -> MPCTensor:
        return to_fixed_point(self.mechanism.release(self.histogram(self.clamp(logits)), self.ops))

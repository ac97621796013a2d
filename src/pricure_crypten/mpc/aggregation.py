"""The encrypted aggregation layer: owners' logits -> noisy label, all under MPC.

Runs inside each server process on ``MPCTensor`` shares. For logits of shape
(K, B, C) it computes, without decoding anything:

1. clamp the logits to ``[-logit_bound, logit_bound]`` (fixed-point safety:
   comparisons and the softmax's exp stay far from the ring's wraparound);
2. the histogram (B, C): ``vote`` sums each owner's one-hot argmax of its
   clamped logits, exact ties to the LOWEST class index (as ``numpy.argmax``
   in :func:`pricure_crypten.experiments.reference.histogram`; CrypTen's own
   argmax would break them at random), ``softmax`` sums each owner's
   probability vector;
3. the mechanism's release (:meth:`NoiseMechanism.release
   <pricure_crypten.privacy.noise.NoiseMechanism.release>`) on
   :class:`MPCReleaseOps`: each server adds its own noise partial (drawn from
   its own CSPRNG) to its own share, so no server knows the total noise; the
   argmax is exact with ties to the lowest class index (see :meth:`MPCReleaseOps.argmax`);
   Confident-GNMax also compares the noisy top count with its threshold and
   multiplies the one-hot by that secret bit, so an abstention is all zeros.

Comparisons (the expensive part: each is a full arithmetic-to-binary
conversion) are batched. Up to :data:`PAIRWISE_MAX_CLASSES` classes every
argmax is ALL pairwise comparisons ``x_a - x_b >= 0`` (a < b) in ONE
comparison pass, so ties go to the lowest index, combined into the one-hot by
a product tree of bits (ceil(log2(C-1)) Beaver rounds); for votes the clamp's
bound comparisons ride in the same pass (:meth:`EncryptedAggregation.vote_histogram`).
Above it, a knockout tournament (:func:`tournament_argmax`, same ties) keeps
the bytes linear in C. CrypTen's own argmax (``max_method="log_reduction"``)
needs several sequential comparison passes, multiplexing, an equality test
and a randomised tie-break (another comparison). Measured (N = 2, TTP, K = 10,
CrypTen's round counter), forward with Laplace noise: C = 2: 324 -> 68 rounds,
B = 128: 9.7 -> 2.2 MB; C = 10: 492 -> 100 rounds, 40.9 -> 53.8 MB (the
pairwise comparisons cost bytes); see ``tests/test_aggregation_cost.py``.

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
from .randomness import SecureRandom, TestOnlyNoiseBatch
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


PAIRWISE_MAX_CLASSES = 10
"""Up to this many classes every argmax is all pairwise comparisons in one pass (constant rounds);
above it a knockout tournament (log2 C passes, C - 1 comparisons: pairwise would cost C(C-1)/2).
Both give the same one-hot (ties to the lowest index). See ``tests/test_aggregation_cost.py``."""


def _raw(x: MPCTensor) -> MPCTensor:
    """The same shares seen at encoder scale 1 (ring integers): products of these are never truncated."""
    return MPCTensor.from_shares(x.share, precision=0)


def multiply_exact(pairs: list[tuple[MPCTensor, MPCTensor]]) -> list[MPCTensor]:
    """``[a * b for a, b in pairs]`` in ONE Beaver round, exactly (no truncation).

    In every pair at least one factor must be at encoder scale 1 (a bit); the
    product of the ring encodings is then the encoding of the product at the
    other factor's scale, so nothing needs truncating. All pairs are flattened
    and concatenated into one multiplication (broadcasting is applied first).
    """
    if not pairs:
        return []
    lefts, rights, shapes, scales = [], [], [], []
    for a, b in pairs:
        scale_a, scale_b = int(a.encoder.scale), int(b.encoder.scale)
        if min(scale_a, scale_b) != 1:
            raise ValueError("multiply_exact: one factor of every pair must be at encoder scale 1 (a bit)")
        shape = torch.broadcast_shapes(tuple(a.size()), tuple(b.size()))
        lefts.append(_raw(a).expand(*shape).flatten())
        rights.append(_raw(b).expand(*shape).flatten())
        shapes.append(shape)
        scales.append(scale_a * scale_b)
    product = crypten.cat(lefts, dim=0) * crypten.cat(rights, dim=0)
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    results = []
    for part, shape, scale in zip(product.split(sizes, dim=0), shapes, scales):
        results.append(MPCTensor.from_shares(part.share.reshape(shape), precision=int(scale).bit_length() - 1))
    return results


def class_pairs(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(a, b)`` of all pairs ``a < b`` (row-major), as index tensors."""
    first, second = np.triu_indices(num_classes, 1)
    return torch.from_numpy(first.astype(np.int64)), torch.from_numpy(second.astype(np.int64))


def _factor_index(num_classes: int) -> torch.Tensor:
    """For class c, where its C - 1 'beats o' bits sit in ``cat([beats, 1 - beats])`` (pairs a < b).

    ``beats[p]`` is the bit "a beats b" of pair p = (a, b); class c beats o > c
    by ``beats[p(c, o)]`` and o < c by ``1 - beats[p(o, c)]`` (offset P).
    """
    first, second = np.triu_indices(num_classes, 1)
    position = {(int(a), int(b)): p for p, (a, b) in enumerate(zip(first, second))}
    count = len(position)
    index = [[position[(c, o)] if c < o else count + position[(o, c)] for o in range(num_classes) if o != c]
             for c in range(num_classes)]
    return torch.tensor(index, dtype=torch.int64).reshape(-1)


def one_hot_from_beats(beats: MPCTensor, num_classes: int,
                       extra: list[tuple[MPCTensor, MPCTensor]] | None = None) -> tuple[MPCTensor, list[MPCTensor]]:
    """The one-hot winner (..., C) from the pairwise bits ``beats`` (..., C(C-1)/2), pairs a < b.

    Class c wins when it beats every other class: the product of its C - 1
    bits, as a tree of exact bit products (ceil(log2(C-1)) Beaver rounds, none
    for C = 2). If ``beats`` is a strict total order (as here: "a beats b"
    iff ``x_a >= x_b`` for a < b orders by value, then by lower index), exactly
    one class wins. ``extra`` products (see :func:`multiply_exact`) ride in the
    first round; their results are returned second.
    """
    extra = list(extra or [])
    lead = tuple(beats.size())[:-1]
    both = crypten.cat([beats, 1 - beats], dim=-1)
    factors = both.index_select(-1, _factor_index(num_classes)).view(*lead, num_classes, num_classes - 1)
    extra_results: list[MPCTensor] = []
    while factors.size(-1) > 1 or extra:
        width = factors.size(-1)
        pairs = list(extra)
        if width > 1:
            half = width // 2
            left, right, rest = factors.split([half, half, width % 2], dim=-1)
            pairs.append((left, right))
        results = multiply_exact(pairs)
        if extra:
            extra_results, extra = results[: len(extra)], []
        if width > 1:
            factors = crypten.cat([results[-1], rest], dim=-1) if width % 2 else results[-1]
    return factors.squeeze(-1), extra_results


def pairwise_argmax(values: MPCTensor) -> MPCTensor:
    """One-hot argmax over the last dimension, exact ties to the LOWEST index.

    One comparison pass on all differences ``x_a - x_b`` (a < b): a beats b iff
    ``x_a >= x_b`` (compared exactly on the ring), then :func:`one_hot_from_beats`.
    The order is the same as :func:`lowest_index_tie_break`'s scores. Bits at encoder scale 1.
    """
    num_classes = values.size(-1)
    if num_classes == 1:
        return MPCTensor.from_shares(torch.zeros_like(values.share), precision=0) + 1
    first, second = class_pairs(num_classes)
    beats = (values.index_select(-1, first) - values.index_select(-1, second)).ge(0)
    return one_hot_from_beats(beats, num_classes)[0]


def tournament_argmax(values: MPCTensor) -> tuple[MPCTensor, MPCTensor]:
    """``(one-hot argmax, max)`` over the last dimension by a knockout tournament, ties to the LOWEST index.

    ceil(log2 C) levels, each one comparison pass (C/2, C/4, ... comparisons)
    and one Beaver round that multiplexes the winners' values and one-hots
    (blocks of classes: the left block holds the lower indices and wins ties,
    ``left - right >= 0``). C - 1 comparisons in all, against C(C-1)/2 for
    :func:`pairwise_argmax`: more rounds, far fewer bytes for many classes.
    Classes are padded to a power of two at the end; a block made only of
    padding loses by a public bit. Bits at encoder scale 1; the max at the values' scale.
    """
    num_classes = values.size(-1)
    lead = tuple(values.size())[:-1]
    width = 1 << max(num_classes - 1, 0).bit_length()
    if width > num_classes:  # padding: copies of class 0's values, forced to lose below
        values = crypten.cat([values, values[..., :1].expand(*lead, width - num_classes)], dim=-1)
    candidates, one_hot, block = values, None, 1
    while candidates.size(-1) > 1:
        left, right = candidates[..., 0::2], candidates[..., 1::2]
        left_wins = (left - right).ge(0)
        real_right = torch.arange(1, candidates.size(-1), 2) * block < num_classes  # right block holds a class
        if not bool(real_right.all()):
            keep = real_right.to(torch.float64)
            left_wins = left_wins * keep + (1.0 - keep)  # public multiplexing: local, exact on bits
        pairs = [(left - right, left_wins)]
        if one_hot is not None:
            pairs.append((crypten.cat([one_hot[..., 0::2, :], one_hot[..., 1::2, :]], dim=-1),
                          left_wins.unsqueeze(-1)))
        products = multiply_exact(pairs)
        candidates = right + products[0]
        if one_hot is None:
            one_hot = crypten.stack([left_wins, 1 - left_wins], dim=-1)
        else:
            gated_left, gated_right = products[1].split([block, block], dim=-1)
            one_hot = crypten.cat([gated_left, one_hot[..., 1::2, :] - gated_right], dim=-1)
        block *= 2
    if one_hot is None:  # a single class
        one_hot = MPCTensor.from_shares(torch.zeros_like(values.share), precision=0).unsqueeze(-1) + 1
    return one_hot.squeeze(-2)[..., :num_classes], candidates.squeeze(-1)


def uses_pairwise(num_classes: int) -> bool:
    """Whether an argmax over ``num_classes`` is done by :func:`pairwise_argmax` (else :func:`tournament_argmax`)."""
    return num_classes <= PAIRWISE_MAX_CLASSES


def lowest_index_argmax(values: MPCTensor) -> MPCTensor:
    """One-hot argmax over the last dimension, exact ties to the lowest index (bits at encoder scale 1)."""
    if uses_pairwise(values.size(-1)):
        return pairwise_argmax(values)
    return tournament_argmax(values)[0]


def lowest_index_tie_break(num_classes: int) -> tuple[int, np.ndarray]:
    """The public integers of the exact tie-break: scores ``C * v + (C - 1 - c)`` in ring units.

    For values ``v`` on the fixed-point grid (integers in units of 2**-16),
    ``C * v_a + (C-1-a) > C * v_b + (C-1-b)`` holds exactly when ``v_a > v_b``,
    or ``v_a == v_b`` and ``a < b``: the order of distinct values is never
    changed (they differ by at least C units, the offsets by less), and equal
    values go to the lower index. Unlike an additive offset of a fraction of a
    vote, this moves no probability between classes except on exact ties of
    the fixed-point values, which occur with probability about
    ``density * 2**-16`` under noise. :func:`pairwise_argmax` realises exactly
    this order without forming the scores (a beats b iff ``v_a >= v_b`` for a < b).
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
        self.test_only_batch: TestOnlyNoiseBatch | None = None  # TEST ONLY: set per batch by a seeded server

    def add_noise(self, values: MPCTensor, partial: Callable[..., np.ndarray]) -> MPCTensor:
        """Add this server's partial to its own share: local, no communication, nothing decoded."""
        values = to_fixed_point(values)
        shape = tuple(values.size())
        if self.test_only_batch is not None:  # TEST ONLY (TestOnlyNoiseSeed): per-row seeded streams
            draw = self.test_only_batch.partial(partial, shape, num_servers=self.num_servers, colluding=self.colluding)
        else:
            draw = partial(shape, num_servers=self.num_servers, colluding=self.colluding, rng=self.rng)
        encoded = torch.from_numpy(encode(draw, max_abs=REPRESENTABLE_MAX_ABS, name="noise partial"))
        return MPCTensor.from_shares(values.share + encoded, precision=FRACTIONAL_BITS)

    def argmax(self, values: MPCTensor) -> MPCTensor:
        """One-hot argmax with exact ties to the lowest index (:func:`lowest_index_tie_break`)."""
        return lowest_index_argmax(to_fixed_point(values))  # a bit per class (encoder scale 1)

    def top(self, values: MPCTensor) -> MPCTensor:
        """The maximum (exact): the tournament's winner, or the pairwise one-hot times the values, summed."""
        values = to_fixed_point(values)
        if not uses_pairwise(values.size(-1)):
            return tournament_argmax(values)[1]
        return multiply_exact([(values, pairwise_argmax(values))])[0].sum(-1)

    def at_least(self, values: MPCTensor, threshold: float) -> MPCTensor:
        return values.ge(threshold)  # a bit (encoder scale 1)

    def mask(self, one_hot: MPCTensor, keep: MPCTensor) -> MPCTensor:
        """Bits times bits (both at encoder scale 1): one Beaver product, no truncation."""
        return one_hot * keep.unsqueeze(-1)


def _every_owner_on_the_only_class(logits: MPCTensor) -> MPCTensor:
    """With one class, every owner's vote (or probability) is 1 on it: K (a public constant, shared)."""
    return to_fixed_point(MPCTensor.from_shares(torch.zeros_like(logits.share[0]), precision=0) + logits.size(0))


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
        """x - relu(x - L) + relu(-x - L): one batched comparison, one exact bit product."""
        k = logits.size(0)
        excess = crypten.cat([logits - self.logit_bound, -logits - self.logit_bound], dim=0)
        excess = multiply_exact([(excess, excess.ge(0))])[0]
        return logits - excess[:k] + excess[k:]

    def vote_histogram(self, logits: MPCTensor) -> MPCTensor:
        """The vote histogram (B, C) of the CLAMPED logits (K, B, C), from ONE comparison pass.

        Each owner votes for the argmax of ``y = clamp(x, -L, L)``, exact ties
        to the LOWEST class index (as ``numpy.argmax`` in
        :func:`pricure_crypten.experiments.reference.histogram`). For a < b,
        a beats b iff ``y_a >= y_b``, and since the clamp is monotone::

            y_a >= y_b  <=>  x_a >= x_b  or  x_a >= L  or  x_b <= -L

        (if x_a < x_b, the clamped values can only tie, which needs both at L,
        i.e. x_a >= L, or both at -L, i.e. x_b <= -L). The three bits come from
        one comparison pass on ``[x_a - x_b, x_a - L, -x_b - L]``, the same
        ring comparisons the clamp makes. When the first is 0 the other two
        cannot both be 1 (x_a >= L > -L >= x_b contradicts x_a < x_b), so the
        OR is ``g + (1 - g) * (h_a + l_b)``: one exact bit product. The clamped
        values themselves are never needed. (The raw differences are compared on
        the ring: exact while ``|x| < 2**46`` (``REPRESENTABLE_MAX_ABS``), where
        ``x_a - x_b`` stays in the ring's signed range of ``2**47``; logits are
        nowhere near it.)
        """
        num_classes = logits.size(-1)
        if num_classes == 1:
            return _every_owner_on_the_only_class(logits)
        if not uses_pairwise(num_classes):  # many classes: the clamp, then a tournament on clamped values
            return to_fixed_point(tournament_argmax(self.clamp(logits))[0].sum(0))
        first, second = class_pairs(num_classes)
        count = first.numel()
        bits = crypten.cat([
            logits.index_select(-1, first) - logits.index_select(-1, second),  # x_a - x_b, a < b
            logits[..., :-1] - self.logit_bound,  # x_a - L, for every class that is some a
            -logits[..., 1:] - self.logit_bound,  # -x_b - L, for every class that is some b
        ], dim=-1).ge(0)
        raw_ge, above, below = bits.split([count, num_classes - 1, num_classes - 1], dim=-1)
        saturated = above.index_select(-1, first) + below.index_select(-1, second - 1)
        beats = raw_ge + multiply_exact([(1 - raw_ge, saturated)])[0]
        return to_fixed_point(one_hot_from_beats(beats, num_classes)[0].sum(0))

    def softmax_histogram(self, logits: MPCTensor) -> MPCTensor:
        """The summed softmax (B, C) of the clamped logits: CrypTen's softmax with its max computed exactly here.

        Up to :data:`PAIRWISE_MAX_CLASSES` classes, one comparison pass on
        ``[x - L, -x - L, x_a - x_b]`` gives the clamp's bits and the raw
        argmax r; the clamp's product rides in the first round of r's product tree, and ``max(y) = sum_c r_c y_c`` (the clamp is
        monotone, so the raw argmax is an argmax of y). Then, as
        ``crypten``'s ``softmax``: ``exp(y - max y)`` over its sum.
        """
        num_classes = logits.size(-1)
        if num_classes == 1:
            return _every_owner_on_the_only_class(logits)
        if uses_pairwise(num_classes):
            clamped, maximum = self._clamp_and_max_pairwise(logits)
        else:
            clamped = self.clamp(logits)
            maximum = tournament_argmax(clamped)[1].unsqueeze(-1)
        numerator = (clamped - maximum).exp()
        with crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):
            inv_denominator = numerator.sum(-1, keepdim=True).reciprocal()
        return to_fixed_point((numerator * inv_denominator).sum(0))

    def _clamp_and_max_pairwise(self, logits: MPCTensor) -> tuple[MPCTensor, MPCTensor]:
        """The clamped logits and their max (keepdim), from one comparison pass (see :meth:`softmax_histogram`)."""
        num_classes = logits.size(-1)
        first, second = class_pairs(num_classes)
        count = first.numel()
        excess_and_diffs = crypten.cat([logits - self.logit_bound, -logits - self.logit_bound,
                                        logits.index_select(-1, first) - logits.index_select(-1, second)], dim=-1)
        excess, _ = excess_and_diffs.split([2 * num_classes, count], dim=-1)
        bits = excess_and_diffs.ge(0)
        excess_bits, beats = bits.split([2 * num_classes, count], dim=-1)
        raw_argmax, (relu,) = one_hot_from_beats(beats, num_classes, extra=[(excess, excess_bits)])
        above, below = relu.split([num_classes, num_classes], dim=-1)
        clamped = logits - above + below
        return clamped, multiply_exact([(clamped, raw_argmax)])[0].sum(-1, keepdim=True)

    def histogram(self, logits: MPCTensor) -> MPCTensor:
        """The histogram (B, C) of the raw logits (K, B, C); the clamp is part of it."""
        if self.aggregation == "vote":
            return self.vote_histogram(logits)
        return self.softmax_histogram(logits)

    def release(self, histogram: MPCTensor) -> MPCTensor:
        """The mechanism's release on the histogram: noise partials, exact argmax (the one-hot, scale 2**16)."""
        return to_fixed_point(self.mechanism.release(histogram, self.ops))

    def stages(self) -> list[tuple[str, Callable[[MPCTensor], MPCTensor]]]:
        """The forward as named steps, for profiling (the clamp is fused into the histogram's comparisons)."""
        return [("clamp+histogram", self.histogram), ("release", self.release)]

    def forward(self, logits: MPCTensor) -> MPCTensor:
        return self.release(self.histogram(logits))

"""Private knowledge transfer (PATE-style) to a client's student: the accounting and the exposure audit.

What is computed here, and who could compute it:

* :func:`gnmax_total_epsilon`: the CLIENT's TOTAL epsilon at ``delta`` after a
  Confident-GNMax labelling of ``queries`` rows of which ``answered`` were
  answered, in the ledger's two accounting modes (``"conservative"``: both
  steps charged on every query; ``"answered-only"``: the argmax step only when
  answered), composed by a ledger accountant (default ``"rdp-filter"``, the
  only one that may settle answered-only spends). Data-independent: a function
  of the counts only, which the ledger sees.
* :func:`queries_within`: the per-query mode for comparison: the largest
  number of direct private queries of a mechanism (e.g. the library's Gaussian
  noisy argmax) whose composition stays within a total epsilon at ``delta``
  under the same accountant.
* :func:`membership_exposure`: a membership-inference audit of the student
  with respect to the OWNERS' training records: the attack scores, AUC, TPR at
  low FPR, and the empirical epsilon lower bound with Clopper-Pearson
  intervals (:func:`~pricure_crypten.experiments.attacks.audit.empirical_epsilon`).

The student is post-processing of the released labels (the client's own pool
inputs are the client's, not the owners'), so its membership exposure for any
owner record is bounded by the client's total epsilon for the labelling,
whatever the accounting mode that was enforced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .._validation import check_choice, check_delta, check_int, check_positive
from ..privacy.accounting import ReleaseCost, make_accountant
from ..privacy.accounting.outcome import AnsweredOnlyCosts
from .attacks.audit import empirical_epsilon, max_refutable_epsilon
from .attacks.metrics import auc, tpr_at_fpr

ACCOUNTING_MODES = ("conservative", "answered-only")


def gnmax_total_epsilon(mechanism: Any, *, queries: int, answered: int, delta: float, mode: str,
                        accountant: str = "rdp-filter") -> float:
    """The client's total epsilon at ``delta`` for ``queries`` Confident-GNMax queries, ``answered`` answered.

    ``mechanism``: a Confident-GNMax mechanism (``sigma_threshold``, ``sigma``, ``delta``). ``mode``:
    ``"conservative"`` (every query pays for both steps) or ``"answered-only"`` (abstentions pay for the
    threshold step only; needs the ``"rdp-filter"`` accountant, as in the ledger).
    """
    mode = check_choice(mode, ACCOUNTING_MODES, name="mode")
    queries = check_int(queries, name="queries", minimum=1)
    answered = check_int(answered, name="answered", minimum=0, maximum=queries)
    delta = check_delta(delta)
    costs = AnsweredOnlyCosts.of(mechanism)
    if mode == "answered-only":
        if accountant != "rdp-filter":
            raise ValueError("answered-only accounting composes outcome-dependent charges: only the 'rdp-filter' "
                             f"accountant may do it, got {accountant!r}")
        events = [(costs.answered, answered), (costs.abstained, queries - answered)]
    else:
        events = [(costs.answered, queries)]
    return float(make_accountant(accountant).compose([e for e in events if e[1] > 0]).spent(delta)[0])


def queries_within(mechanism: Any, *, total: float, delta: float, accountant: str = "rdp-filter",
                   limit: int = 10**7) -> int:
    """The largest n such that n releases of ``mechanism`` cost at most ``total`` at ``delta`` (0 if none fits).

    Composed by ``accountant`` as the ledger would (one :class:`ReleaseCost` per query).
    """
    total = check_positive(total, name="total")
    delta = check_delta(delta)
    cost = ReleaseCost.of(mechanism)

    def spent(n: int) -> float:
        return float(make_accountant(accountant).compose([(cost, n)]).spent(delta)[0])

    if spent(1) > total:
        return 0
    low, high = 1, 2
    while spent(high) <= total:
        low, high = high, high * 2
        if high > limit:
            raise ValueError(f"more than {limit} queries fit a total of {total}: is the mechanism noiseless?")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if spent(mid) <= total else (low, mid)
    return low


def gaussian_with_sigma(sigma: float, *, delta: float) -> Any:
    """The library's Gaussian noisy argmax (:class:`~pricure_crypten.privacy.noise.GaussianNoise`, L2
    sensitivity sqrt 2) whose noise std is ``sigma`` (e.g. PATE's sigma2 = 40, without the threshold step):
    its per-query epsilon at ``delta`` found by bisection (relative tolerance 1e-9 on sigma)."""
    from ..privacy.noise import GaussianNoise

    sigma = check_positive(sigma, name="sigma")
    delta = check_delta(delta)
    low, high = 1e-6, 100.0
    if not GaussianNoise(epsilon=high, delta=delta).scale < sigma < GaussianNoise(epsilon=low, delta=delta).scale:
        raise ValueError(f"sigma={sigma} is outside the calibratable range at delta={delta}")
    while high / low > 1 + 1e-12:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if GaussianNoise(epsilon=mid, delta=delta).scale > sigma else (low, mid)
    return GaussianNoise(epsilon=math.sqrt(low * high), delta=delta)


@dataclass(frozen=True)
class Exposure:
    """A membership-inference audit of one attack on the student.

    Attributes:
        attack: the attack's name; members, non_members: records audited.
        auc: ROC AUC; tpr_at_1pct / tpr_at_01pct: TPR at FPR 1% / 0.1% (``nan`` if too few non-members).
        epsilon_lower: the empirical epsilon lower bound (Clopper-Pearson, ``confidence``, at ``delta``,
            threshold chosen on half the records, tested on the other half).
        max_refutable: the largest epsilon ANY attack could refute with this audit's sample.
        tpr_interval, fpr_interval: the Clopper-Pearson intervals at the tested threshold.
    """

    attack: str
    members: int
    non_members: int
    auc: float
    tpr_at_1pct: float
    tpr_at_01pct: float
    epsilon_lower: float
    max_refutable: float
    confidence: float
    delta: float
    tpr_interval: tuple[float, float]
    fpr_interval: tuple[float, float]

    def row(self) -> dict[str, Any]:
        return {"attack": self.attack, "members": self.members, "non_members": self.non_members,
                "auc": self.auc, "tpr_at_fpr_1pct": self.tpr_at_1pct, "tpr_at_fpr_0.1pct": self.tpr_at_01pct,
                "epsilon_lower": self.epsilon_lower, "max_refutable_epsilon": self.max_refutable,
                "confidence": self.confidence, "delta": self.delta,
                "tpr_interval": list(self.tpr_interval), "fpr_interval": list(self.fpr_interval)}


def membership_exposure(attack: str, member_scores: Any, non_member_scores: Any, *, delta: float,
                        confidence: float = 0.95, seed: int = 0) -> Exposure:
    """Audit scores (higher = more member-like) of owners' records (members) against held-out records."""
    m = np.asarray(member_scores, dtype=float).reshape(-1)
    n = np.asarray(non_member_scores, dtype=float).reshape(-1)
    if len(m) < 2 or len(n) < 2:
        raise ValueError(f"the audit needs at least 2 members and 2 non-members, got {len(m)} and {len(n)}")
    y = np.r_[np.ones(len(m), np.int64), np.zeros(len(n), np.int64)]
    s = np.r_[m, n]
    audit = empirical_epsilon(y, s, delta=delta, confidence=confidence, selection="split", seed=seed)

    def low_fpr(fpr: float) -> float:
        return float(tpr_at_fpr(y, s, fpr)) if len(n) * fpr >= 1 else math.nan

    return Exposure(attack=attack, members=len(m), non_members=len(n), auc=float(auc(y, s)),
                    tpr_at_1pct=low_fpr(0.01), tpr_at_01pct=low_fpr(0.001), epsilon_lower=audit.epsilon_lower,
                    max_refutable=max_refutable_epsilon(audit.members, audit.non_members, delta=delta,
                                                        confidence=confidence),
                    confidence=confidence, delta=delta, tpr_interval=tuple(audit.tpr_interval),
                    fpr_interval=tuple(audit.fpr_interval))


def confidence_scores(probabilities: Any, labels: Any) -> np.ndarray:
    """White-box confidence attack score: the student's probability of the TRUE label (Yeom et al. 2018's
    loss attack, monotone in the cross-entropy loss)."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities (N, C) and labels (N,) must match, got {p.shape} and {y.shape}")
    return p[np.arange(len(y)), y]


def answered_labels(released: Any, *, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows the ensemble answered (index array) and their labels, from released labels (-1 = abstain)."""
    r = np.asarray(released).reshape(-1).astype(np.int64)
    check_int(num_classes, name="num_classes", minimum=2)
    if np.any((r < -1) | (r >= num_classes)):
        raise ValueError(f"released labels must be -1 (abstain) or in range({num_classes})")
    rows = np.flatnonzero(r >= 0)
    return rows, r[rows]


def optional_float(value: Optional[float]) -> Optional[float]:
    """``None`` for NaN (JSON-friendly)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

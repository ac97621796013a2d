"""How well a membership-inference attack separates members from non-members, and the DP bound.

Who sees what: these functions run at the evaluator, who knows the ground
truth (``is_member``, 1 = member, 0 = non-member) that no attacker has. The
attacker only produces ``scores`` (higher = "more likely a member") and,
for balanced accuracy, a threshold it chose without the ground truth (e.g.
calibrated on shadow owners).

Metrics (all computed with scikit-learn):

* ROC AUC (``sklearn.metrics.roc_auc_score``);
* balanced attack accuracy at a given threshold (``balanced_accuracy_score``
  of ``scores >= threshold``);
* TPR at a fixed low FPR (Carlini et al., "Membership Inference Attacks From
  First Principles", S&P 2022): the largest TPR over the points of
  ``sklearn.metrics.roc_curve`` whose FPR is at most the target (no
  interpolation: a threshold the attacker can actually use). It is NaN
  (unmeasurable) when there are fewer than ``1 / fpr`` non-members
  (:func:`min_non_members`): with 233 non-members the only FPR at or below
  0.1% is 0, so "TPR at 0.1% FPR" would silently be "TPR at FPR 0";
* a 95% interval for each, by a stratified bootstrap (members and
  non-members resampled separately, so every resample has both).

The DP bound: if everything the attacker (a client) receives is
(epsilon, delta)-DP with respect to each record, epsilon being the client's
TOTAL over ALL its queries (one training record can change owner 0's vote on
every query, so every query costs every record; see
:func:`client_total_epsilon`), any test of "member or not" satisfies ``TPR <= e^eps * FPR + delta``
and, symmetrically, ``1 - FPR <= e^eps * (1 - TPR) + delta`` (Kairouz et al.
2015). Averaged over records drawn from one distribution and assigned to
"member" or "non-member" at random, the same region bounds the measured ROC.
Whether a measured ROC refutes a claimed epsilon, and the largest epsilon a
sample of that size could refute at all, is the job of :mod:`.audit`
(:func:`~.audit.empirical_epsilon`); :func:`check_dp_bound` is deprecated.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from ..._validation import check_int
from .audit import _check_labels_scores as _check_inputs  # one validation of (is_member, scores)
from .audit import clopper_pearson  # noqa: F401  (the exact interval, used below and re-exported)

LOW_FPRS = (0.01, 0.001)




def roc(is_member: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from ``sklearn.metrics.roc_curve`` (all thresholds kept)."""
    y, s = _check_inputs(is_member, scores)
    return roc_curve(y, s, drop_intermediate=False)


def auc(is_member: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (0.5 = chance)."""
    y, s = _check_inputs(is_member, scores)
    return float(roc_auc_score(y, s))


def min_non_members(fpr: float) -> int:
    """Non-members needed for "TPR at FPR <= ``fpr``" to be measurable: ``ceil(1 / fpr)`` (1 for fpr 0).

    With fewer, no false positive at all fits under ``fpr`` and the value
    would be the TPR at FPR 0 under another name. 1% needs 100, 0.1% needs 1000.
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    return 1 if fpr == 0 else int(math.ceil(1 / fpr - 1e-9))


def tpr_at_fpr(is_member: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The largest TPR among ROC points with FPR <= ``fpr`` (0 if none but the origin).

    NaN when there are fewer than :func:`min_non_members` non-members (not
    measurable on this sample). ``fpr = 0`` is always measurable.
    """
    needed = min_non_members(fpr)
    y, s = _check_inputs(is_member, scores)
    if int((y == 0).sum()) < needed:
        return math.nan
    f, t, _ = roc(y, s)
    return float(t[f <= fpr + 1e-12].max())


def balanced_accuracy(is_member: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Balanced accuracy of the decision "member iff score >= threshold"."""
    y, s = _check_inputs(is_member, scores)
    return float(balanced_accuracy_score(y, (s >= threshold).astype(np.int64)))


def best_threshold(is_member: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy on THESE labels (use on shadow data only).

    Balanced accuracy is ``(1 + TPR - FPR) / 2``; the maximiser over the ROC
    thresholds of scikit-learn is returned (the smallest one on ties), and
    always a finite number.
    """
    f, t, thresholds = roc(is_member, scores)
    finite = np.isfinite(thresholds)
    gain = np.where(finite, t - f, -np.inf)
    best = int(np.argmax(gain))  # roc_curve sorts thresholds decreasingly: first max = largest threshold
    ties = np.flatnonzero(gain == gain[best])
    return float(thresholds[ties[-1]])


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap 95% interval (all NaN when not measurable on the sample)."""

    value: float
    low: float
    high: float


def bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    is_member: np.ndarray,
    scores: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """``metric(is_member, scores)`` with a stratified percentile bootstrap interval."""
    y, s = _check_inputs(is_member, scores)
    resamples = check_int(resamples, name="resamples", minimum=1)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point = float(metric(y, s))
    if math.isnan(point):  # not measurable on this sample: neither on its stratified resamples
        return Estimate(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    members, others = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = np.empty(resamples)
    for i in range(resamples):
        pick = np.concatenate([rng.choice(members, len(members)), rng.choice(others, len(others))])
        values[i] = metric(y[pick], s[pick])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Estimate(point, float(low), float(high))


@dataclass(frozen=True)
class AttackReport:
    """Every metric of one attack on one target, each with its bootstrap 95% interval."""

    auc: Estimate
    balanced_accuracy: Estimate
    tpr_at_1pct_fpr: Estimate
    tpr_at_01pct_fpr: Estimate
    threshold: float
    members: int
    non_members: int

    def to_row(self) -> dict[str, float | int]:
        """Flat columns: ``auc``, ``auc_low``, ``auc_high``, ... (for a CSV)."""
        row: dict[str, float | int] = {}
        for name in ("auc", "balanced_accuracy", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
            estimate = asdict(getattr(self, name))
            row[name], row[f"{name}_low"], row[f"{name}_high"] = estimate["value"], estimate["low"], estimate["high"]
        row.update(threshold=self.threshold, members=self.members, non_members=self.non_members)
        return row


def evaluate(
    is_member: np.ndarray, scores: np.ndarray, *, threshold: float, resamples: int = 1000, seed: int = 0
) -> AttackReport:
    """The :class:`AttackReport` of ``scores``; ``threshold`` is the attacker's own (not fit on these labels)."""
    y, s = _check_inputs(is_member, scores)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")

    def run(metric: Callable[[np.ndarray, np.ndarray], float]) -> Estimate:
        return bootstrap(metric, y, s, resamples=resamples, seed=seed)

    return AttackReport(
        auc=run(auc),
        balanced_accuracy=run(lambda a, b: balanced_accuracy(a, b, threshold)),
        tpr_at_1pct_fpr=run(lambda a, b: tpr_at_fpr(a, b, LOW_FPRS[0])),
        tpr_at_01pct_fpr=run(lambda a, b: tpr_at_fpr(a, b, LOW_FPRS[1])),
        threshold=float(threshold),
        members=int(y.sum()),
        non_members=int(len(y) - y.sum()),
    )


# ---------------------------------------------------------------------------- the DP bound

def dp_tpr_bound(fpr: np.ndarray | float, *, epsilon: float, delta: float, symmetric: bool = True) -> np.ndarray:
    """The largest TPR an (epsilon, delta)-DP release allows at false-positive rate ``fpr``.

    ``min(1, e^eps * fpr + delta)``, and with ``symmetric`` also
    ``1 - e^-eps * (1 - delta - fpr)`` (the same inequality for the
    complementary test). ``epsilon = inf`` allows TPR 1 everywhere.
    """
    f = np.asarray(fpr, dtype=np.float64)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if math.isinf(epsilon):
        return np.ones_like(f)
    # e^eps overflows float64 beyond eps ~ 709; any eps > 700 allows TPR 1 at every fpr > 0 anyway
    bound = np.exp(min(epsilon, 700.0)) * f + delta
    if symmetric:
        bound = np.minimum(bound, 1 - np.exp(-epsilon) * (1 - delta - f))
    return np.clip(bound, 0.0, 1.0)


def composed_epsilon(mechanism, queries: int, *, delta: float = 1e-5, accountant: str = "auto") -> tuple[float, float]:
    """(epsilon, delta) of ``queries`` releases of ``mechanism``.

    Pass ALL the client's queries (:func:`client_total_epsilon` does the same
    and names the accountant): the queries "about one record" are not a
    guarantee, since every query may depend on every training record.

    Composed by :func:`pricure_crypten.privacy.accounting.make_accountant`
    (``"auto"``: PLD where finite, else basic composition). ``queries = 0``
    gives ``(0, 0)``; a mechanism without noise gives epsilon ``inf``.
    """
    from ...privacy.accounting import make_accountant

    queries = check_int(queries, name="queries", minimum=0)
    if queries == 0:
        return 0.0, 0.0
    if math.isinf(mechanism.epsilon):
        return math.inf, 0.0
    spent = make_accountant(accountant).step(mechanism, queries).spent(delta)
    return float(spent[0]), float(spent[1])


@dataclass(frozen=True)
class TotalEpsilon:
    """The client's TOTAL privacy loss over all its queries: (epsilon, delta) by a named accountant.

    ``accountant`` is the bound actually used (``"pld"``, ``"basic"``,
    ``"rdp"``, ...; for ``"auto"`` the one it selected).
    """

    epsilon: float
    delta: float
    accountant: str
    queries: int


_TOTALS: dict[tuple, TotalEpsilon] = {}


def client_total_epsilon(mechanism, queries: int, *, delta: float = 1e-5, accountant: str = "auto") -> TotalEpsilon:
    """(epsilon, delta) of ALL ``queries`` a client asked, each released by ``mechanism``.

    This is the guarantee to state: one training record can change owner 0's
    vote on any query, so every query a client asks costs every record, not
    only the queries "about" it. ``queries = 0`` gives (0, 0); a mechanism
    without noise gives epsilon ``inf`` (accountant ``"none"``). Results are
    cached (composing 10^4+ Laplace releases with PLD takes seconds).
    """
    from ...privacy.accounting import make_accountant

    queries = check_int(queries, name="queries", minimum=0)
    if queries == 0:
        return TotalEpsilon(0.0, 0.0, accountant, 0)
    if math.isinf(mechanism.epsilon):
        return TotalEpsilon(math.inf, 0.0, "none", queries)
    key = (repr(mechanism), queries, float(delta), accountant)
    if key not in _TOTALS:
        acc = make_accountant(accountant).step(mechanism, queries)
        eps, spent_delta = acc.spent(delta)
        _TOTALS[key] = TotalEpsilon(float(eps), float(spent_delta), getattr(acc, "selected", None) or accountant,
                                    queries)
    return _TOTALS[key]


@dataclass(frozen=True)
class BoundCheck:
    """DEPRECATED (use :func:`.audit.empirical_epsilon`): the worst ROC point against the DP bound.

    Its ``excess`` is almost always attained at the trivial corner (threshold
    below every score: FPR = TPR = 1), where it is ``TPR_lo - 1``, a function
    of the sample size only; it says nothing about the attack. ``violated``
    remains a valid (Bonferroni) test, but it cannot refute any epsilon above
    :func:`.audit.max_refutable_epsilon` for the sample.

    ``excess`` is the largest ``tpr_low - bound(fpr_high)`` over the checked
    thresholds, where ``tpr_low`` and ``fpr_high`` are Clopper-Pearson limits
    (Bonferroni-corrected over the thresholds). ``excess > 0`` means the
    measured ROC exceeds the bound beyond sampling error: the release is NOT
    (epsilon, delta)-DP for these queries (or the experiment is not the MI game).
    """

    excess: float
    tpr: float
    fpr: float
    bound: float
    thresholds_checked: int

    @property
    def violated(self) -> bool:
        return self.excess > 0


def check_dp_bound(
    is_member: np.ndarray,
    scores: np.ndarray,
    *,
    epsilon: float,
    delta: float,
    confidence: float = 0.95,
    max_thresholds: int = 20,
) -> BoundCheck:
    """DEPRECATED: use :func:`.audit.empirical_epsilon` (``epsilon_lower > epsilon`` means refuted).

    Kept for notebook 03 until it migrates. Checks at most ``max_thresholds`` distinct score thresholds (evenly spread
    over the observed scores' quantiles), each with exact binomial limits at
    family-wise confidence ``confidence`` (Bonferroni).
    """
    warnings.warn("check_dp_bound is deprecated: its 'excess' sits at the trivial corner (FPR = TPR = 1); use "
                  "pricure_crypten.experiments.attacks.empirical_epsilon and max_refutable_epsilon",
                  DeprecationWarning, stacklevel=2)
    y, s = _check_inputs(is_member, scores)
    max_thresholds = check_int(max_thresholds, name="max_thresholds", minimum=1)
    levels = np.unique(s)
    if len(levels) > max_thresholds:
        levels = np.unique(np.quantile(s, np.linspace(0, 1, max_thresholds), method="lower"))
    per_test = 1 - (1 - confidence) / len(levels)
    members, others = s[y == 1], s[y == 0]
    worst = None
    for level in levels:
        tp, fp = int((members >= level).sum()), int((others >= level).sum())
        tpr_low, _ = clopper_pearson(tp, len(members), confidence=2 * per_test - 1)  # one-sided
        _, fpr_high = clopper_pearson(fp, len(others), confidence=2 * per_test - 1)
        bound = float(dp_tpr_bound(fpr_high, epsilon=epsilon, delta=delta))
        candidate = BoundCheck(tpr_low - bound, tp / len(members), fp / len(others), bound, len(levels))
        if worst is None or candidate.excess > worst.excess:
            worst = candidate
    assert worst is not None
    return worst

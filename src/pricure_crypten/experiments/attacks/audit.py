"""An empirical privacy audit: the smallest epsilon a membership attack's results are consistent with.

References: Jagielski, Ullman & Oprea, "Auditing Differentially Private
Machine Learning: How Private is Private SGD?" (NeurIPS 2020); Nasr, Song,
Thakurta, Papernot & Carlini, "Adversary Instantiation: Lower Bounds for
Differentially Private Machine Learning" (S&P 2021).

Who sees what: this runs at the evaluator, who knows the ground truth
``is_member`` (1 = member, 0 = non-member). The attacker only produced the
``scores`` (higher = "more likely a member").

**The inequalities.** If everything the attacker received about a record is
(epsilon, delta)-DP with respect to that record (for PRICURE: the client's
TOTAL epsilon over ALL its queries, composed by an accountant), then for any
decision rule "member iff score >= t", with ``TPR = P[say member | member]``
and ``FPR = P[say member | non-member]``:

* (i)  ``TPR <= e^eps * FPR + delta``         (the rule's "member" region);
* (ii) ``1 - FPR <= e^eps * (1 - TPR) + delta`` (its complement, "non-member").

(The two other inequalities, with member and non-member swapped, bound an
attack that scores the wrong way round; they are not used: the attacker
declared higher = member.) Solving for epsilon:

* (i)  ``eps >= log((TPR - delta) / FPR)``;
* (ii) ``eps >= log((1 - FPR - delta) / (1 - TPR))``.

Both right-hand sides increase with TPR and decrease with FPR, so the
conservative (smallest) value consistent with the data plugs in the LOWER
confidence limit of TPR and the UPPER limit of FPR. Both limits are the ends
of two-sided Clopper-Pearson intervals at level ``confidence`` (tail
``(1 - confidence) / 2`` each side); the two one-sided events used
("TPR >= TPR_lo", "FPR <= FPR_hi") then hold together with probability at
least ``confidence`` (union bound), so for a mechanism that truly is
(eps, delta)-DP, ``P[epsilon_lower > eps] <= 1 - confidence``.

**Choosing the threshold (soundness).** Taking the best of many thresholds on
the same records would be a multiple-comparison error. Three modes:

* ``selection="split"`` (default, preferred): the records are split at random
  (stratified by membership, seeded) into a SELECTION part and an AUDIT part
  (``selection_fraction`` of each class goes to selection). The threshold
  with the largest bound on the selection part (computed at 50% confidence,
  i.e. near the point estimate) is then tested ONCE on the audit part, whose
  counts are reported in ``members``/``non_members``. Costs half the sample.
* ``selection="union"``: every distinct score (or ``max_thresholds`` score
  quantiles, chosen without the labels) is tested on all records, each at
  confidence ``1 - (1 - confidence) / T`` (Bonferroni over T thresholds).
* ``threshold=t`` given: that single threshold, which must have been chosen
  without these labels (e.g. on the attacker's shadow owners), is tested on
  all records.

**The sample-size ceiling.** Even a perfect attack (every member above every
non-member) only refutes epsilons below :func:`max_refutable_epsilon`: with
233 + 233 records at 95% that is about 4.1. A bound "not refuted" at an
epsilon above the ceiling says nothing; report the ceiling with the bound.

**Independence.** Clopper-Pearson treats each record as an independent
Bernoulli trial. That is exact in Jagielski et al.'s setting (one training
run per trial); here the records of one evaluation share one training run, and
the per-record DP guarantee applies to each record's membership with the
others held fixed. Steinke, Nasr & Jagielski ("Privacy Auditing with One (1)
Training Run", NeurIPS 2023) show that counts of correct guesses over records
whose membership was decided at random are dominated by the independent case
for pure DP; for (eps, delta) and our TPR/FPR split this is the standard,
not a proven, assumption. Read the lower bound as evidence, not a theorem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..._validation import check_int

SELECTIONS = ("split", "union")


@dataclass(frozen=True)
class AuditResult:
    """An empirical lower bound on epsilon, at confidence ``confidence`` and the given ``delta``.

    Attributes:
        epsilon_lower: the largest epsilon refuted (0.0 when nothing is refuted).
        threshold: the score threshold that gave it ("member iff score >= threshold");
            ``None`` when nothing is refuted.
        tpr_interval, fpr_interval: Clopper-Pearson intervals at the tested threshold
            (the one reported in ``tested_threshold``), at the per-test confidence.
        confidence: the family-wise confidence of the statement "epsilon >= epsilon_lower".
        delta: the delta the bound is for.
        members, non_members: the records the bound was computed on (the audit part in
            ``"split"`` mode: about half of the input).
        selection: ``"split"``, ``"union"`` or ``"given"`` (a threshold passed in).
        thresholds_tested: how many thresholds the confidence was split among (1 unless ``"union"``).
        tested_threshold: the threshold the intervals are for (even when nothing was refuted).
        max_refutable: :func:`max_refutable_epsilon` for these counts and tests: the ceiling.
    """

    epsilon_lower: float
    threshold: float | None
    tpr_interval: tuple[float, float]
    fpr_interval: tuple[float, float]
    confidence: float
    delta: float
    members: int
    non_members: int
    selection: str = "split"
    thresholds_tested: int = 1
    tested_threshold: float | None = None
    max_refutable: float = math.nan


# ------------------------------------------------------------------------------------------ checks

def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) \
            or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)) or not 0 <= delta < 1:
        raise ValueError(f"delta must be a number in [0, 1), got {delta!r}")
    return float(delta)


def _check_labels_scores(is_member, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_member)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"is_member {y.shape} and scores {s.shape} must be 1-D arrays of the same length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("is_member must hold only 0 (non-member) and 1 (member)")
    if y.min(initial=1) == 1 or y.max(initial=0) == 0:
        raise ValueError("is_member needs at least one member and one non-member")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    return y.astype(np.int64), s


# ------------------------------------------------------------------------------------------ the maths

def clopper_pearson(successes: int, trials: int, *, confidence: float) -> tuple[float, float]:
    """Exact two-sided binomial interval (tail ``(1 - confidence) / 2`` each side) for a proportion."""
    trials = check_int(trials, name="trials", minimum=1)
    successes = check_int(successes, name="successes", minimum=0, maximum=trials)
    alpha = 1 - _check_confidence(confidence)
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def epsilon_from_rates(tpr: float, fpr: float, *, delta: float) -> float:
    """The epsilon that (TPR, FPR) of one decision rule refutes under (eps, delta)-DP (0 if none).

    ``max(0, log((tpr - delta) / fpr), log((1 - fpr - delta) / (1 - tpr)))``,
    each term taken as 0 where its numerator is <= 0 and as ``inf`` where only
    its denominator is 0 (a rule that DP with finite epsilon cannot produce).
    """
    terms = [0.0]
    for num, den in ((tpr - delta, fpr), (1 - fpr - delta, 1 - tpr)):
        if num <= 0:
            continue
        terms.append(math.inf if den <= 0 else math.log(num / den))
    return max(terms)


def _bound(tp: int, members: int, fp: int, non_members: int, *, delta: float, confidence: float):
    tpr_ci = clopper_pearson(tp, members, confidence=confidence)
    fpr_ci = clopper_pearson(fp, non_members, confidence=confidence)
    return epsilon_from_rates(tpr_ci[0], fpr_ci[1], delta=delta), tpr_ci, fpr_ci


def max_refutable_epsilon(members: int, non_members: int, *, delta: float, confidence: float = 0.95,
                          tests: int = 1) -> float:
    """The largest epsilon that ANY attack on a sample of this size could refute (a perfect attack).

    The bound of :func:`empirical_epsilon` grows with the true positives and
    shrinks with the false positives, so its maximum is at TP = members,
    FP = 0. ``tests`` > 1: the confidence split among that many thresholds
    (``selection="union"``). For 233 + 233 records, delta 1e-5, 95%: about 4.1.
    """
    members = check_int(members, name="members", minimum=1)
    non_members = check_int(non_members, name="non_members", minimum=1)
    tests = check_int(tests, name="tests", minimum=1)
    per_test = 1 - (1 - _check_confidence(confidence)) / tests
    return _bound(members, members, 0, non_members, delta=_check_delta(delta), confidence=per_test)[0]


def _counts(members: np.ndarray, others: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Members and non-members with score >= each level."""
    m, o = np.sort(members), np.sort(others)
    return len(m) - np.searchsorted(m, levels, side="left"), len(o) - np.searchsorted(o, levels, side="left")


def _best_level(s: np.ndarray, y: np.ndarray, levels: np.ndarray, *, delta: float, confidence: float):
    """``(epsilon, level index, tpr_ci, fpr_ci)`` of the level with the largest bound (first on ties)."""
    members, others = s[y == 1], s[y == 0]
    m, n = len(members), len(others)
    tps, fps = _counts(members, others, levels)
    alpha = 1 - confidence
    with np.errstate(invalid="ignore"):  # beta(0, .) / beta(., 0): the ends, set below
        tpr_lo = np.where(tps == 0, 0.0, stats.beta.ppf(alpha / 2, np.maximum(tps, 1), m - tps + 1))
        fpr_hi = np.where(fps == n, 1.0, stats.beta.ppf(1 - alpha / 2, fps + 1, np.maximum(n - fps, 1)))
    eps = np.array([epsilon_from_rates(float(a), float(b), delta=delta) for a, b in zip(tpr_lo, fpr_hi)])
    i = int(np.argmax(eps))
    tp, fp = int(tps[i]), int(fps[i])
    tpr_ci = clopper_pearson(tp, m, confidence=confidence)
    fpr_ci = clopper_pearson(fp, n, confidence=confidence)
    return epsilon_from_rates(tpr_ci[0], fpr_ci[1], delta=delta), i, tpr_ci, fpr_ci


def _stratified_halves(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pick, rest = [], []
    for cls in (1, 0):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n = int(round(len(idx) * fraction))
        if n < 1 or len(idx) - n < 1:
            raise ValueError(f"selection='split' needs at least one {'member' if cls else 'non-member'} in both "
                             f"parts; got {len(idx)} with selection_fraction {fraction} (use more records)")
        pick.append(idx[:n])
        rest.append(idx[n:])
    return np.concatenate(pick), np.concatenate(rest)


def empirical_epsilon(
    is_member,
    scores,
    *,
    delta: float,
    confidence: float = 0.95,
    selection: str = "split",
    selection_fraction: float = 0.5,
    threshold: float | None = None,
    max_thresholds: int | None = None,
    seed: int = 0,
) -> AuditResult:
    """A lower bound on the epsilon (at ``delta``) of whatever produced ``scores``, at ``confidence``.

    Args:
        is_member: ground truth, 1-D of 0/1 with both present.
        scores: the attack's scores (finite; higher = member), same length.
        delta: the delta of the (eps, delta) guarantee under audit (the client's total delta).
        confidence: family-wise confidence of "true epsilon >= epsilon_lower".
        selection: ``"split"`` or ``"union"`` (see the module docstring); ignored when
            ``threshold`` is given.
        selection_fraction: share of each class used to choose the threshold (``"split"``).
        threshold: a threshold chosen without these labels; tested alone on all records.
        max_thresholds: ``"union"`` only: test at most this many score quantiles
            (chosen from the scores alone); default all distinct scores.
        seed: seeds the ``"split"`` cut.
    """
    y, s = _check_labels_scores(is_member, scores)
    delta, confidence = _check_delta(delta), _check_confidence(confidence)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
                or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        levels, tests, mode = np.array([float(threshold)]), 1, "given"
        audit_y, audit_s = y, s
    elif selection == "split":
        if isinstance(selection_fraction, bool) or not isinstance(selection_fraction, (int, float)) \
                or not 0 < selection_fraction < 1:
            raise ValueError(f"selection_fraction must be a number in (0, 1), got {selection_fraction!r}")
        pick, rest = _stratified_halves(y, float(selection_fraction), check_int(seed, name="seed", minimum=0))
        candidates = np.unique(s[pick])
        _, i, _, _ = _best_level(s[pick], y[pick], candidates, delta=delta, confidence=0.5)
        levels, tests, mode = candidates[i:i + 1], 1, "split"
        audit_y, audit_s = y[rest], s[rest]
    elif selection == "union":
        levels = np.unique(s)
        if max_thresholds is not None:
            max_thresholds = check_int(max_thresholds, name="max_thresholds", minimum=1)
            if len(levels) > max_thresholds:
                levels = np.unique(np.quantile(s, np.linspace(0, 1, max_thresholds), method="lower"))
        tests, mode = len(levels), "union"
        audit_y, audit_s = y, s
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    per_test = 1 - (1 - confidence) / tests
    eps, i, tpr_ci, fpr_ci = _best_level(audit_s, audit_y, levels, delta=delta, confidence=per_test)
    members = int(audit_y.sum())
    non_members = int(len(audit_y) - members)
    return AuditResult(
        epsilon_lower=float(eps), threshold=float(levels[i]) if eps > 0 else None,
        tpr_interval=tpr_ci, fpr_interval=fpr_ci, confidence=confidence, delta=delta, members=members,
        non_members=non_members, selection=mode, thresholds_tested=tests, tested_threshold=float(levels[i]),
        max_refutable=max_refutable_epsilon(members, non_members, delta=delta, confidence=confidence, tests=tests))

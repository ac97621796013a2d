"""PATE 2018's data-dependent privacy analysis of Confident-GNMax -- for EVALUATION only.

This module SEES THE VOTE HISTOGRAMS (a simulation has them; a deployment
never does). Its numbers are reported for comparison with the published PATE
analysis; the ledger keeps enforcing the data-independent bound
(:mod:`pricure_crypten.privacy.accounting`), and nothing here is a guarantee
of a deployment: a data-dependent epsilon is itself a function of the private
data and may only be published through the smooth-sensitivity release below.

Source: Papernot, Song, Mironov, Raghunathan, Talwar & Erlingsson, "Scalable
Private Learning with PATE", ICLR 2018 (arXiv:1802.08908), written from the
paper's formulas; the reference implementation tensorflow/privacy
``research/pate_2018`` (``core.py``, ``smooth_sensitivity.py``) was read to
check conventions. Conventions (the paper's, matching the ledger's sensitivity
convention): one teacher (here: one owner) changes its vote; the argmax step
(GNMax, ``N(0, sigma^2)`` on every count, L2 sensitivity sqrt 2) has
data-independent RDP ``a / sigma^2``; the threshold step (``N(0,
sigma_threshold^2)`` on the top count, sensitivity 1) ``a / (2 sigma_threshold^2)``.

What is implemented:

* :func:`log_q_gnmax` -- Proposition 7: ``q <= sum_{j != j*} P[N(0, 2 sigma^2) >= n_j* - n_j]``
  (union bound), capped at ``1 - 1/m``.
* :func:`rdp_gnmax` -- Theorem 6 with Proposition 10's ``mu2 = sigma sqrt(log 1/q)``,
  ``mu1 = mu2 + 1``: ``(1/(a-1)) log((1-q) A^(a-1) + q B^(a-1))``,
  ``A = (1-q) / (1 - (q e^eps2)^((mu2-1)/mu2))``, ``B = e^eps1 / q^(1/(mu1-1))``,
  ``eps_i = mu_i / sigma^2``, applied only where its conditions hold
  (``a <= mu1``, ``mu2 > 1``, ``eps2 < log 1/q`` and
  ``q <= e^((mu2-1) eps2) / (mu1/(mu1-1) * mu2/(mu2-1))^mu2``), and never
  above the data-independent ``a / sigma^2``.
* :func:`rdp_threshold` -- the same bound for the binary threshold step, with
  ``q = min(p, 1-p)``, ``p = P[max_j n_j + N(0, sigma_threshold^2) >= T]`` and
  ``sigma' = sqrt 2 * sigma_threshold``.
* :func:`confident_gnmax_rdp` -- Confident-GNMax composition: the threshold
  step is charged on every query, GNMax only on the answered ones.
* Smooth sensitivity (Section B / Appendix C of the paper):
  :func:`local_sensitivity_threshold` and :func:`local_sensitivity_gnmax`
  give, for each distance ``d``, an upper bound on the local sensitivity of
  the per-query data-dependent RDP (at one order) at any dataset at distance
  ``d``; :func:`smooth_sensitivity` is ``max_d e^(-beta d) LS_d`` (the
  per-query bounds are summed per distance first: one owner's change moves
  every query at once); :func:`rdp_gnss` is Theorem 23's RDP of releasing
  ``value + SS * N(0, sigma_s^2)`` and :func:`analyze_confident_gnmax` puts it
  together.

Checked here (tests/test_pate_analysis.py): hand-computed q and RDP values,
the data-independent curves, monotonicity (more consensus never costs more,
never above data-independent), the local sensitivities against brute-force
enumeration of neighbouring histograms on small cases, Theorem 23 by hand,
and, for the paper's MNIST Confident-GNMax setting (T=200, sigma1=150,
sigma2=40, 640 queries, 286 answered, delta=1e-5), the DATA-INDEPENDENT
epsilon of those counts against a closed-form reference. NOT checked: the
paper's published data-dependent MNIST epsilon 1.97 (Table 2) -- it needs
the paper's vote histograms, which are not available here -- nor any other
published data-dependent or smooth-sensitivity figure. Not implemented: the
paper's Algorithm 4/5 shortcut with the plateau ``[q1, q0]`` is replaced by a
direct walk (below), and Conditions C5/C6 (monotonicity of the bound in q,
which the paper verifies symbolically) are checked numerically on a grid by
the tests, not proven here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import optimize, special, stats

from .._validation import check_delta, check_int, check_positive

__all__ = [
    "ConfidentGNMaxAnalysis",
    "analyze_confident_gnmax",
    "confident_gnmax_rdp",
    "epsilon_from_rdp",
    "local_sensitivity_gnmax",
    "local_sensitivity_threshold",
    "log_pr_answered",
    "log_q_gnmax",
    "rdp_data_independent",
    "rdp_gnmax",
    "rdp_gnss",
    "rdp_threshold",
    "smooth_sensitivity",
]


def _orders(orders) -> np.ndarray:
    a = np.atleast_1d(np.asarray(orders, dtype=float))
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 1):
        raise ValueError(f"orders must be finite and > 1, got {orders!r}")
    return a


def _votes(votes) -> np.ndarray:
    v = np.asarray(votes, dtype=float)
    if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"a vote histogram is a 1-D array of >= 2 counts >= 0, got {votes!r}")
    return v


def rdp_data_independent(orders, sigma: float) -> np.ndarray:
    """GNMax's data-independent RDP ``a / sigma^2`` (L2 sensitivity sqrt 2; the paper's Proposition 8)."""
    return _orders(orders) / check_positive(sigma, name="sigma") ** 2


def log_q_gnmax(votes, sigma: float) -> float:
    """Proposition 7: log of an upper bound on ``P[GNMax(votes) != argmax votes]``."""
    v = _votes(votes)
    sigma = check_positive(sigma, name="sigma")
    top = int(np.argmax(v))
    gaps = np.delete(v[top] - v, top)
    # P[n_j + Z_j >= n_top + Z_top] = P[N(0, 2 sigma^2) >= gap]
    log_q = float(special.logsumexp(stats.norm.logsf(gaps, scale=math.sqrt(2.0) * sigma)))
    return min(log_q, math.log1p(-1.0 / v.size))


def _theorem6(log_q: float, sigma: float, orders: np.ndarray) -> np.ndarray:
    """Theorem 6 + Proposition 10 where its conditions hold; ``inf`` where they do not."""
    out = np.full(orders.shape, np.inf)
    if not log_q < 0:
        return out
    var = sigma**2
    mu2 = sigma * math.sqrt(-log_q)
    mu1 = mu2 + 1.0
    eps1, eps2 = mu1 / var, mu2 / var
    if not (mu2 > 1 and -log_q > eps2):
        return out
    if log_q > (mu2 - 1) * eps2 - mu2 * (math.log(mu1 / (mu1 - 1)) + math.log(mu2 / (mu2 - 1))):
        return out
    ok = orders <= mu1
    if not np.any(ok):
        return out
    a = orders[ok]
    log_1q = math.log(-math.expm1(log_q))  # log(1 - q)
    log_A = log_1q - math.log(-math.expm1((log_q + eps2) * (1 - 1 / mu2)))
    log_B = eps1 - log_q / (mu1 - 1)
    out[ok] = np.logaddexp(log_1q + (a - 1) * log_A, log_q + (a - 1) * log_B) / (a - 1)
    return out


def rdp_gnmax(log_q: float, sigma: float, orders) -> np.ndarray:
    """Data-dependent RDP of GNMax given ``log q`` (Theorem 6), never above ``a / sigma^2``."""
    orders = _orders(orders)
    sigma = check_positive(sigma, name="sigma")
    if not (isinstance(log_q, (int, float)) and log_q <= 0) or math.isnan(log_q):
        raise ValueError(f"log_q must be a log-probability <= 0, got {log_q!r}")
    if math.isinf(log_q):  # the output is fixed: 0-RDP
        return np.zeros(orders.shape)
    return np.minimum(orders / sigma**2, _theorem6(float(log_q), sigma, orders))


def log_pr_answered(votes, *, threshold: float, sigma_threshold: float) -> float:
    """``log P[max_j n_j + N(0, sigma_threshold^2) >= threshold]``."""
    v = _votes(votes)
    return float(stats.norm.logsf(threshold - v.max(), scale=check_positive(sigma_threshold, name="sigma_threshold")))


def rdp_threshold(log_p: float, sigma_threshold: float, orders) -> np.ndarray:
    """Data-dependent RDP of the threshold step (answered with probability ``p = e^log_p``).

    The step's output is binary; its likely outcome has probability ``1 - q``,
    ``q = min(p, 1 - p)``. Sensitivity 1 instead of GNMax's sqrt 2, hence
    Theorem 6 with ``sigma' = sqrt 2 sigma_threshold`` (data-independent
    ``a / (2 sigma_threshold^2)``).
    """
    if not log_p <= 0:
        raise ValueError(f"log_p must be a log-probability <= 0, got {log_p!r}")
    log_1p = math.log(-math.expm1(log_p)) if log_p < 0 else -math.inf
    return rdp_gnmax(min(log_p, log_1p), math.sqrt(2.0) * sigma_threshold, orders)


def confident_gnmax_rdp(votes, answered, *, threshold: float, sigma_threshold: float, sigma: float,
                        orders, data_dependent: bool = True) -> np.ndarray:
    """Total RDP of Confident-GNMax over queries: threshold always, GNMax where ``answered``.

    Args:
        votes: (queries, classes) vote histograms.
        answered: (queries,) bools, whether each query was answered.
        data_dependent: False gives the data-independent curve of the same outcomes.
    """
    votes = np.asarray(votes, dtype=float)
    answered = np.asarray(answered)
    if votes.ndim != 2 or answered.shape != (votes.shape[0],) or answered.dtype != bool:
        raise ValueError("votes must be (queries, classes) and answered a (queries,) bool array")
    orders = _orders(orders)
    total = np.zeros(orders.shape)
    for row, ans in zip(votes, answered):
        if data_dependent:
            total += rdp_threshold(log_pr_answered(row, threshold=threshold, sigma_threshold=sigma_threshold),
                                   sigma_threshold, orders)
            if ans:
                total += rdp_gnmax(log_q_gnmax(row, sigma), sigma, orders)
        else:
            total += orders / (2 * sigma_threshold**2) + (orders / sigma**2 if ans else 0.0)
    return total


def epsilon_from_rdp(orders, rdp, delta: float) -> tuple[float, float]:
    """(epsilon, order) by the conversion PATE 2018 uses: ``min_a rdp(a) + log(1/delta)/(a-1)``
    (Mironov 2017, Proposition 3) -- for a FIXED curve (not a filter)."""
    orders = _orders(orders)
    rdp = np.asarray(rdp, dtype=float)
    delta = check_delta(delta)
    if delta == 0 or rdp.shape != orders.shape:
        raise ValueError("need delta > 0 and one RDP value per order")
    eps = rdp + math.log(1 / delta) / (orders - 1)
    i = int(np.argmin(eps))
    return float(eps[i]), float(orders[i])


# ------------------------------------------------------------------ smooth sensitivity
def _rdp_at(log_q: float, sigma: float, order: float) -> float:
    return float(rdp_gnmax(log_q, sigma, [order])[0])


def _bl_bu(q: float, sigma: float, m: int) -> tuple[float, float]:
    """Proposition 13: a neighbour's q lies in [bl(q), bu(q)] (union-bound q of m classes)."""
    x = special.erfcinv(2 * q / (m - 1))
    bl = (m - 1) / 2 * special.erfc(x + 1 / sigma)
    bu = min(1.0, (m - 1) / 2 * special.erfc(x - 1 / sigma))
    return float(bl), float(bu)


@functools.lru_cache(maxsize=256)
def _log_q0(sigma: float, order: float) -> float:
    """log q0: below it the data-dependent bound beats ``order / sigma^2`` (root of their difference)."""
    indep = order / sigma**2

    def gap(log_q: float) -> float:
        return float(_theorem6(log_q, sigma, np.array([order]))[0]) - indep

    hi = min(-(1 + 1 / sigma) ** 2, -((order - 0.99) / sigma) ** 2, -1 / sigma**2)
    while not math.isfinite(gap(hi)):  # Theorem 6's conditions: move to smaller q
        hi *= 1.5
    if gap(hi) < 0:
        return hi
    lo = 2 * hi
    while gap(lo) > 0:
        if lo < -1e5:
            raise RuntimeError(f"no q0 found for sigma={sigma}, order={order}")
        lo *= 1.5
    return float(optimize.brentq(gap, lo, hi, xtol=1e-12))


def _ls_gnmax_at(log_q: float, sigma: float, m: int, order: float) -> float:
    """Proposition 13's bound on the local sensitivity at q; on the plateau [q1, q0] (q1 = bl(q0))
    the paper evaluates it at q1, where it is largest (Appendix C)."""
    log_q0 = _log_q0(sigma, order)
    log_q1 = math.log(_bl_bu(math.exp(log_q0), sigma, m)[0])
    if log_q1 <= log_q <= log_q0:
        log_q = log_q1
    if log_q < -700:  # q underflows in the erfc-based bounds of Proposition 13
        raise ValueError(f"log q = {log_q:g} is below the range where the local-sensitivity bound is computed "
                         "(q underflows); use a larger sigma or a histogram with smaller gaps")
    q = math.exp(log_q)
    beta = _rdp_at(log_q, sigma, order)
    bl, bu = _bl_bu(q, sigma, m)
    up = _rdp_at(math.log(min(bu, 1 - 1 / m)), sigma, order) - beta
    down = beta - (_rdp_at(math.log(bl), sigma, order) if bl > 0 else 0.0)
    return max(up, down, 0.0)


def local_sensitivity_gnmax(votes, *, sigma: float, order: float, max_distance: Optional[int] = None) -> np.ndarray:
    """Upper bounds ``LS_d`` (d = 0 .. max_distance-1) on the local sensitivity of GNMax's
    data-dependent RDP at ``order`` over all histograms at distance ``d`` from ``votes``.

    At one histogram, Proposition 13 bounds a neighbour's q by ``[bl(q), bu(q)]``,
    so with the bound non-decreasing in q (Condition C5) ``LS <= max(beta(bu) - beta,
    beta - beta(bl))``. Across distance ``d``, the histograms' q ranges over an
    interval of q values reachable in ``d`` vote moves; this walk evaluates the
    bound at every q on the most-consensus (move votes from the runner-up to the
    top) and least-consensus (from the top to the runner-up) paths and takes the
    running maximum, so ``LS_d`` is non-decreasing in ``d``. As in the paper's
    Algorithms 4-5 this relies on the bound being unimodal in q (largest on the
    plateau ``[q1, q0]``, which a single vote move cannot jump over, since
    ``q1 = bl(q0)``) and on those two paths reaching the extreme q at each
    distance; it walks both paths where the paper walks only towards the plateau.
    """
    v = np.sort(_votes(votes))[::-1].copy()
    n = int(round(v.sum()))
    d_max = n if max_distance is None else check_int(max_distance, name="max_distance", minimum=1)
    m = v.size
    values = [_ls_gnmax_at(log_q_gnmax(v, sigma), sigma, m, order)]
    left, right = v.copy(), v.copy()
    for _ in range(1, d_max):
        cands = []
        if left[1] >= 1:  # more consensus
            left[0] += 1
            left[1] -= 1
            left = np.sort(left)[::-1]
            cands.append(_ls_gnmax_at(log_q_gnmax(left, sigma), sigma, m, order))
        if right[0] >= 1:  # less consensus
            right[0] -= 1
            right[1] += 1
            right = np.sort(right)[::-1]
            cands.append(_ls_gnmax_at(log_q_gnmax(right, sigma), sigma, m, order))
        values.append(max([values[-1]] + cands))
    return np.maximum.accumulate(np.asarray(values))


def local_sensitivity_threshold(votes, *, threshold: float, sigma_threshold: float, order: float,
                                max_distance: Optional[int] = None) -> np.ndarray:
    """``LS_d``: the threshold step's data-dependent RDP depends only on the top count ``v``, which one
    owner moves by at most 1; at distance ``d``, ``v`` is in ``[v0-d, v0+d] & [0, n]``."""
    v = _votes(votes)
    n = int(round(v.sum()))
    v0 = int(round(v.max()))
    d_max = n if max_distance is None else check_int(max_distance, name="max_distance", minimum=1)
    r = np.array([float(rdp_threshold(float(stats.norm.logsf(threshold - c, scale=sigma_threshold)),
                                      sigma_threshold, [order])[0]) for c in range(n + 1)])
    step = np.abs(np.diff(r))  # step[c] = |r(c+1) - r(c)|
    ls_at = np.array([max(step[c - 1] if c > 0 else 0.0, step[c] if c < n else 0.0) for c in range(n + 1)])
    return np.array([ls_at[max(v0 - d, 0):min(v0 + d, n) + 1].max() for d in range(d_max)])


def smooth_sensitivity(ls_by_distance, beta: float) -> float:
    """``max_d e^(-beta d) LS_d`` (Nissim, Raskhodnikova & Smith 2007; PATE 2018 Section B)."""
    ls = np.asarray(ls_by_distance, dtype=float)
    if ls.ndim != 1 or ls.size == 0 or np.any(ls < 0) or not np.all(np.isfinite(ls)):
        raise ValueError("ls_by_distance must be a non-empty 1-D array of finite values >= 0")
    beta = check_positive(beta, name="beta")
    return float(np.max(ls * np.exp(-beta * np.arange(ls.size))))


def rdp_gnss(*, beta: float, sigma_s: float, order: float) -> float:
    """Theorem 23: RDP at ``order`` of releasing ``f(x) + SS_beta(x) * N(0, sigma_s^2)``:
    ``order e^(2 beta) / sigma_s^2 + (beta order - log(1 - 2 order beta) / 2) / (order - 1)``,
    for ``1 < order < 1 / (2 beta)``."""
    beta = check_positive(beta, name="beta")
    sigma_s = check_positive(sigma_s, name="sigma_s")
    if not 1 < order < 1 / (2 * beta):
        raise ValueError(f"order must be in (1, 1/(2 beta)) = (1, {1 / (2 * beta):g}), got {order!r}")
    return order * math.exp(2 * beta) / sigma_s**2 + (beta * order - 0.5 * math.log1p(-2 * order * beta)) / (order - 1)


@dataclass(frozen=True)
class ConfidentGNMaxAnalysis:
    """What :func:`analyze_confident_gnmax` reports (all at ``delta``, classic conversion).

    ``epsilon_data_independent``: the data-independent bound of these outcomes
    (answered-only charging, i.e. the rdp-filter's curve). ``epsilon_data_dependent``:
    PATE's data-dependent bound (a function of the private votes: not publishable
    as is). ``epsilon_smooth_release``: the data-dependent RDP at ``order`` plus
    the GNSS cost of releasing it, converted at that order. ``smooth_sensitivity``
    and ``release_noise_std`` (``sigma_s * SS``) describe that release.
    """

    queries: int
    answered: int
    delta: float
    epsilon_data_independent: float
    epsilon_data_dependent: float
    order_data_dependent: float
    order: float
    rdp_data_dependent_at_order: float
    smooth_sensitivity: float
    release_noise_std: float
    epsilon_smooth_release: float


def analyze_confident_gnmax(votes, answered, *, threshold: float, sigma_threshold: float, sigma: float,
                            delta: float, orders: Sequence[float], order: float, beta: float,
                            sigma_s: float) -> ConfidentGNMaxAnalysis:
    """PATE 2018's analysis of one Confident-GNMax run (votes and outcomes known: simulation only)."""
    votes = np.asarray(votes, dtype=float)
    answered = np.asarray(answered, dtype=bool)
    rdp_gnss(beta=beta, sigma_s=sigma_s, order=order)  # validates before the (slow) analysis
    kw = dict(threshold=threshold, sigma_threshold=sigma_threshold, sigma=sigma)
    ind = confident_gnmax_rdp(votes, answered, orders=orders, data_dependent=False, **kw)
    dep = confident_gnmax_rdp(votes, answered, orders=orders, **kw)
    eps_ind, _ = epsilon_from_rdp(orders, ind, delta)
    eps_dep, order_dep = epsilon_from_rdp(orders, dep, delta)
    rdp_at = float(confident_gnmax_rdp(votes, answered, orders=[order], **kw)[0])
    ls = np.zeros(int(round(votes[0].sum())) if len(votes) else 1)
    for row, ans in zip(votes, answered):
        ls = ls + local_sensitivity_threshold(row, threshold=threshold, sigma_threshold=sigma_threshold,
                                              order=order, max_distance=ls.size)
        if ans:
            ls = ls + local_sensitivity_gnmax(row, sigma=sigma, order=order, max_distance=ls.size)
    ss = smooth_sensitivity(ls, beta)
    total = rdp_at + rdp_gnss(beta=beta, sigma_s=sigma_s, order=order)
    return ConfidentGNMaxAnalysis(
        queries=len(votes), answered=int(answered.sum()), delta=delta,
        epsilon_data_independent=eps_ind, epsilon_data_dependent=eps_dep, order_data_dependent=order_dep,
        order=float(order), rdp_data_dependent_at_order=rdp_at, smooth_sensitivity=ss,
        release_noise_std=sigma_s * ss, epsilon_smooth_release=total + math.log(1 / delta) / (order - 1),
    )

"""A Rényi privacy filter over a fixed, finite set of orders (adaptive composition).

Why a filter. In the conservative mode every Confident-GNMax query is charged
for both of its steps, so a client's cost is a function of its query count
alone and any accountant may compose it. In the *answered-only* mode
(:mod:`.outcome`) the argmax step is charged only when the threshold step
answered, so the charge depends on the data: the number of answered queries
is itself a function of the owners' votes. Composing such adaptively chosen
mechanisms and then picking the best order after the fact is not covered by
ordinary RDP composition. A privacy filter is: it decides *before* each
mechanism, from public quantities only (the RDP curves of the mechanisms
already run and of the next one), whether to run it, and its guarantee is the
fixed budget it was given.

The conversion. For an order ``a > 1`` and RDP ``r``, an (a, r)-RDP
mechanism is (eps, delta)-DP with ``eps = r + c(a, delta)``, where

* ``"classic"``: ``c = log(1/delta) / (a - 1)`` (Mironov 2017, "Rényi
  Differential Privacy", Proposition 3), the tail bound
  ``P[L > r + log(1/delta)/(a-1)] <= delta`` of the privacy loss L;
* ``"cks"`` (default, tighter): ``c = log(1 - 1/a) - log(delta * a) / (a - 1)``
  (Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential
  Privacy", Proposition 12; also Asoodeh et al. 2020), a bound on the
  hockey-stick divergence ``E_P[(1 - e^(eps - L))_+] <= delta``. It is the
  conversion ``dp_accounting.rdp.compute_epsilon`` uses (for orders > 1.01,
  outside its delta^2 + expm1(-r) > 0 shortcut).

The filter. Fix, IN ADVANCE, a budget (eps, delta) and a finite order set
``L = {a_1, ..., a_K}``. Each order gets the RDP budget
``B(a) = eps - c(a, delta / K)`` (for K = 1 this is exactly the brief's
``eps - log(1/delta)/(a-1)`` under "classic"). With ``S_t(a)`` the summed RDP
of the mechanisms run so far, the filter runs the next mechanism (RDP curve
``r``) only if THERE IS an order with ``S_t(a) + r(a) <= B(a)``; otherwise it
refuses, and refuses forever after for that mechanism.

Soundness (what is proven, and by whom).

1. Single fixed order (K = 1): Feldman & Zrnic 2021, "Individual Privacy
   Accounting via a Rényi Filter" (NeurIPS 2021, arXiv:2008.11193), the
   adaptive composition theorem of their Section 3 (Theorem 3.1 of the arXiv
   version, as we read it; the statement relied on is this one): if each
   mechanism is (a, r_t)-RDP, with r_t a function of the past outputs, and
   ``sum_t r_t <= B`` holds with probability one, then the whole adaptive
   interaction is (a, B)-RDP. The rule above enforces that sum. The order
   ``a`` is fixed before the interaction.
2. Finite order set (K > 1), the variant implemented here: for each order
   ``a`` let the *a-truncation* be the interaction that additionally stops
   before any mechanism that would take ``S(a)`` above ``B(a)``. It is a
   Feldman-Zrnic filter at ``a`` (its stopping depends only on past outputs),
   hence (a, B(a))-RDP, hence by the conversion its hockey-stick divergence at
   ``e^eps`` is at most ``delta / K``. When our filter stops, some order ``a``
   has ``S(a) <= B(a)``, and since every ``S`` only grows, the a-truncation
   never stopped early: on that event the two transcripts coincide. So
   ``(1 - e^(eps - L))_+ <= sum_a (1 - e^(eps - L_a))_+`` pointwise (at least
   one indicator is one), and taking expectations gives hockey-stick
   divergence ``<= K * delta / K = delta``: the interaction is (eps, delta)-DP.
   The argument is written out here and relies only on (1) and the
   conversion; multi-order RDP filters of this union-bound kind are also
   discussed by Lécuyer 2021, "Practical Privacy Filters and Odometers with
   Rényi Differential Privacy" (arXiv:2103.01379), which we cite as related
   work, not as the source of this proof. The price is the ``delta / K``.
   NOT sound: using ``delta`` (not ``delta / K``) per order with the "there
   is an order" rule, or choosing the order set after seeing the outcomes.

So the guarantee is the BUDGET: the client's TOTAL (eps, delta) over every
query the filter admitted, whatever the outcomes. The "spent" epsilon this
module reports (:meth:`RenyiFilter.epsilon_spent`) is the smallest budget
epsilon that the same admissions would have fit; it is a progress gauge, not
a separate guarantee (that would need a privacy odometer).

A refused query reveals nothing and costs nothing: the decision is taken
before it runs, from the public RDP curves of the admitted steps and of the
next query's WORST case (both Confident-GNMax steps); the outcomes that made
the past charges smaller are already public (they are what the answered-only
mode reveals, see :mod:`.outcome`).

Who sees what: the filter runs at the party that admits queries and sees only
RDP curves (mechanism parameters) and, in answered-only mode, whether each
past query was answered or abstained. Never a vote, a histogram or a label.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from ..._validation import check_choice, check_delta, check_epsilon
from .base import Accountant, ReleaseCost

__all__ = [
    "CONVERSIONS",
    "DEFAULT_FILTER_ORDERS",
    "FilterAccountant",
    "RenyiFilter",
    "check_orders",
    "conversion_offset",
    "gaussian_rdp",
    "laplace_rdp",
    "rdp_budget",
    "rdp_to_epsilon",
]

#: Fixed in advance (never chosen from outcomes): 17 orders from 1.5 to 256.
DEFAULT_FILTER_ORDERS: tuple[float, ...] = (
    1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)
CONVERSIONS = ("cks", "classic")


def check_orders(orders: Any) -> tuple[float, ...]:
    """A non-empty sequence of distinct finite orders > 1 (as floats)."""
    if isinstance(orders, (str, bytes)) or not hasattr(orders, "__iter__"):
        raise TypeError(f"orders must be a sequence of numbers > 1, got {orders!r}")
    out = []
    for a in orders:
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)):
            raise TypeError(f"orders must be numbers, got {a!r}")
        a = float(a)
        if not (math.isfinite(a) and a > 1.0):
            raise ValueError(f"every RDP order must be finite and > 1, got {a!r}")
        out.append(a)
    if not out:
        raise ValueError("orders must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"orders must be distinct, got {out!r}")
    return tuple(out)


def gaussian_rdp(orders: Sequence[float], *, sigma: float, sensitivity: float) -> np.ndarray:
    """RDP of the Gaussian mechanism: ``a * sensitivity^2 / (2 sigma^2)`` at each order
    (Mironov 2017, Proposition 7)."""
    orders = np.asarray(check_orders(orders))
    for name, v in (("sigma", sigma), ("sensitivity", sensitivity)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return orders * float(sensitivity) ** 2 / (2.0 * float(sigma) ** 2)


def laplace_rdp(orders: Sequence[float], *, noise_multiplier: float) -> np.ndarray:
    """RDP of the Laplace mechanism with scale/sensitivity ``z`` at each order (Mironov 2017, Proposition 6):
    ``1/(a-1) * log(a/(2a-1) * exp((a-1)/z) + (a-1)/(2a-1) * exp(-a/z))``."""
    a = np.asarray(check_orders(orders))
    z = noise_multiplier
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not (math.isfinite(z) and z > 0):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {z!r}")
    log_terms = np.logaddexp(np.log(a / (2 * a - 1)) + (a - 1) / z, np.log((a - 1) / (2 * a - 1)) - a / z)
    return np.minimum(log_terms / (a - 1), 1.0 / z)


def conversion_offset(orders: Sequence[float], delta: float, conversion: str = "cks") -> np.ndarray:
    """``c(a, delta)`` per order: (a, r)-RDP implies (r + c(a, delta), delta)-DP (see module docstring)."""
    orders = np.asarray(check_orders(orders))
    conversion = check_choice(conversion, CONVERSIONS, name="conversion")
    delta = check_delta(delta)
    if delta == 0.0:
        raise ValueError("RDP gives no finite epsilon at delta = 0: use delta > 0")
    if conversion == "classic":
        return math.log(1.0 / delta) / (orders - 1.0)
    return np.log1p(-1.0 / orders) - np.log(delta * orders) / (orders - 1.0)


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float, conversion: str = "cks") -> float:
    """The (eps, delta)-DP epsilon of a FIXED (data-independent) RDP curve: ``min_a r(a) + c(a, delta)``, >= 0."""
    orders = check_orders(orders)
    rdp = np.asarray(rdp, dtype=float)
    if rdp.shape != (len(orders),) or not np.all(np.isfinite(rdp)) or np.any(rdp < 0):
        raise ValueError(f"rdp must be {len(orders)} finite values >= 0 (one per order), got {rdp!r}")
    return max(0.0, float(np.min(rdp + conversion_offset(orders, delta, conversion))))


def rdp_budget(orders: Sequence[float], *, epsilon: float, delta: float, conversion: str = "cks") -> np.ndarray:
    """The filter's RDP budget per order: ``B(a) = epsilon - c(a, delta / K)``, K = len(orders).

    Negative where an order can never fit (nothing is admitted at that order).
    """
    orders = check_orders(orders)
    epsilon = check_epsilon(epsilon, name="epsilon", infinite="unlimited")
    if math.isinf(epsilon):
        raise ValueError("a filter needs a finite epsilon budget")
    return epsilon - conversion_offset(orders, check_delta(delta) / len(orders), conversion)


class RenyiFilter:
    """The multi-order Rényi filter (soundness statement: module docstring).

    Args:
        epsilon, delta: the client's TOTAL budget (finite epsilon > 0, 0 < delta < 1).
        orders: the order set, fixed here for the filter's whole life.
        conversion: ``"cks"`` (default) or ``"classic"``.

    Use :meth:`admits` before running a step, :meth:`charge` after it ran
    (``charge`` refuses what ``admits`` would refuse, charging nothing).
    """

    def __init__(self, *, epsilon: float, delta: float, orders: Sequence[float] = DEFAULT_FILTER_ORDERS,
                 conversion: str = "cks") -> None:
        self.epsilon = check_epsilon(epsilon, name="epsilon", infinite="unlimited")
        self.delta = check_delta(delta)
        if math.isinf(self.epsilon):
            raise ValueError("a filter needs a finite epsilon budget")
        if self.delta == 0.0:
            raise ValueError("a Rényi filter needs delta > 0")
        self.orders = check_orders(orders)
        self.conversion = check_choice(conversion, CONVERSIONS, name="conversion")
        self.budget = rdp_budget(self.orders, epsilon=self.epsilon, delta=self.delta, conversion=self.conversion)
        if not np.any(self.budget > 0):
            raise ValueError(
                f"no order in {self.orders} has a positive RDP budget for (epsilon={self.epsilon:g}, "
                f"delta={self.delta:g}); add larger orders or raise the budget")
        self.spent = np.zeros(len(self.orders))

    def _curve(self, rdp: Any) -> np.ndarray:
        curve = np.asarray(rdp, dtype=float)
        if curve.shape != (len(self.orders),):
            raise ValueError(f"an RDP curve needs one value per order ({len(self.orders)}), got shape {curve.shape}")
        if not np.all(np.isfinite(curve)) or np.any(curve < 0):
            raise ValueError(f"an RDP curve must be finite and >= 0, got {curve!r}")
        return curve

    def admits(self, rdp: Any) -> bool:
        """Whether a step with RDP curve ``rdp`` fits: some order has ``spent + rdp <= budget``."""
        return bool(np.any(self.spent + self._curve(rdp) <= self.budget))

    def charge(self, rdp: Any) -> None:
        """Add a step that ran. Raises ``ValueError`` (nothing charged) if it does not fit."""
        curve = self._curve(rdp)
        if not np.any(self.spent + curve <= self.budget):
            raise ValueError("the Rényi filter refuses this step: it fits the budget at no order")
        self.spent = self.spent + curve

    def epsilon_spent(self) -> float:
        """The smallest budget epsilon the admitted steps fit (a gauge, not a guarantee; 0 if none)."""
        if not np.any(self.spent):
            return 0.0
        offsets = conversion_offset(self.orders, self.delta / len(self.orders), self.conversion)
        return max(0.0, float(np.min(self.spent + offsets)))

    def __repr__(self) -> str:
        return (f"RenyiFilter(epsilon={self.epsilon:g}, delta={self.delta:g}, orders={len(self.orders)}, "
                f"conversion={self.conversion!r}, spent_epsilon={self.epsilon_spent():.4g})")


class FilterAccountant(Accountant):
    """The Rényi filter as a ledger accountant (``make_accountant("rdp-filter")``).

    Composes the ledger's spends by summing their RDP curves on the fixed order
    set and reports as spent epsilon ``min_a S(a) + c(a, delta / K)``. The
    ledger admits a request iff that projected epsilon is <= its total
    epsilon, i.e. iff some order has ``S(a) + r(a) <= B(a)``: exactly the
    filter rule, so a ledger opened with this accountant IS the filter of the
    module docstring, with the ledger's (total_epsilon, total_delta) as budget.
    Required for answered-only spends (:mod:`.outcome`), whose charges depend
    on the outcomes. Supports Gaussian and Laplace releases.

    Args:
        orders: the fixed order set (default :data:`DEFAULT_FILTER_ORDERS`).
            Changing it between openings of a ledger changes the filter: keep
            it fixed for a client's whole budget.
        conversion: ``"cks"`` or ``"classic"``.
    """

    name = "rdp-filter"
    #: a ledger may settle outcome-dependent (answered-only) spends only with a filter
    adaptive = True

    def __init__(self, *, orders: Optional[Sequence[float]] = None, conversion: str = "cks") -> None:
        super().__init__()
        self.orders = DEFAULT_FILTER_ORDERS if orders is None else check_orders(orders)
        self.conversion = check_choice(conversion, CONVERSIONS, name="conversion")

    def _supports(self, cost: ReleaseCost) -> bool:
        return cost.event in ("gaussian", "laplace", "nonprivate")

    def rdp_curve(self) -> np.ndarray:
        """Summed RDP of everything composed, per order (Gaussian events: ``a / (2 z^2)``; Laplace:
        :func:`laplace_rdp`)."""
        total = np.zeros(len(self.orders))
        for cost, count in self.events:
            if cost.event == "gaussian":
                total += count * gaussian_rdp(self.orders, sigma=cost.noise_multiplier, sensitivity=1.0)
            else:
                total += count * laplace_rdp(self.orders, noise_multiplier=cost.noise_multiplier)
        return total

    def _spent(self, delta: float) -> tuple[float, float]:
        if delta == 0.0:
            return math.inf, delta
        offsets = conversion_offset(self.orders, delta / len(self.orders), self.conversion)
        return max(0.0, float(np.min(self.rdp_curve() + offsets))), delta

"""Rényi differential privacy through ``dp_accounting.rdp.RdpAccountant``.

RDP composes additively per order and converts to (epsilon, delta) at the end;
tighter than basic and advanced composition for many releases, a little looser
than PLD. All arithmetic is dp_accounting's. RDP gives no finite epsilon at
delta = 0.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from .base import Accountant, ReleaseCost, self_composed_events

NEIGHBORING_RELATION = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
"""Our noise multipliers are ``scale / sensitivity``, with the sensitivity already
taken over the neighbouring relation of PRICURE (one training record of one
owner changes). The event is therefore a shift by exactly one noise-multiplier
unit, which is what dp_accounting models for Laplace and Gaussian events under
``ADD_OR_REMOVE_ONE`` (under ``REPLACE_ONE`` it would double the shift)."""


class RDPAccountant(Accountant):
    """Rényi DP accountant (Laplace, Gaussian and non-private releases).

    Args:
        orders: RDP orders (all > 1); default dp_accounting's ``DEFAULT_RDP_ORDERS``.
    """

    name = "rdp"

    def __init__(self, *, orders: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if orders is not None:
            try:
                orders = [float(a) for a in orders]
            except (TypeError, ValueError):
                raise TypeError(f"orders must be a sequence of numbers, got {orders!r}") from None
            if not orders or any(not (a > 1.0) or math.isnan(a) for a in orders):
                raise ValueError(f"orders must be a non-empty sequence of numbers > 1, got {orders!r}")
        self.orders = None if orders is None else tuple(orders)

    def _supports(self, cost: ReleaseCost) -> bool:
        return cost.event in ("laplace", "gaussian", "nonprivate")

    def _spent(self, delta: float) -> tuple[float, float]:
        accountant = RdpAccountant(orders=self.orders, neighboring_relation=NEIGHBORING_RELATION)
        accountant.compose(self_composed_events(self.events))
        return float(accountant.get_epsilon(delta)), delta

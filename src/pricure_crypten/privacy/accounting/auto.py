"""The default accountant: the tightest valid bound for the releases composed.

For Laplace and Gaussian releases that is PLD (dp_accounting), except where
PLD has no finite answer: at delta = 0 (pure epsilon-DP, PRICURE's Laplace
default) dp_accounting's truncated PLD gives epsilon = inf, and basic
composition gives the exact T * epsilon. Releases dp_accounting cannot compose
are accounted by basic composition.
"""

from __future__ import annotations

from .base import Accountant, within
from .basic import BasicAccountant
from .pld import DEFAULT_VALUE_DISCRETIZATION_INTERVAL, PLDAccountant


class AutoAccountant(Accountant):
    """Smallest epsilon among the valid bounds: PLD when it applies, else basic.

    Both bounds are valid (epsilon, delta) guarantees of the same releases, so
    the smaller epsilon at the target delta is one too. After :meth:`spent`,
    :attr:`selected` names the bound that was used (``"pld"`` or ``"basic"``).

    Args:
        value_discretization_interval: passed to :class:`PLDAccountant`.
    """

    name = "auto"

    def __init__(self, *, value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL) -> None:
        super().__init__()
        # validates the option once, on construction
        self._pld_options = {"value_discretization_interval": value_discretization_interval}
        PLDAccountant(**self._pld_options)
        self.selected: str | None = None
        self._selected_at: dict[float, str] = {}

    def _spent(self, delta: float) -> tuple[float, float]:
        events = self.events
        candidates: list[tuple[float, float, str]] = []
        basic = BasicAccountant().compose(events).spent(delta)
        candidates.append((basic[0], basic[1], "basic"))
        pld = PLDAccountant(**self._pld_options)
        if delta > 0.0 and all(pld.supports(cost) for cost, _ in events):
            eps, d = pld.compose(events).spent(delta)
            candidates.append((eps, d, "pld"))
        valid = [c for c in candidates if within(c[1], delta)]
        # prefer PLD on ties (it is the bound the auto accountant is documented to use)
        eps, d, name = min(valid or candidates, key=lambda c: (c[0], c[2] != "pld"))
        self._selected_at[delta] = name
        return eps, d

    def spent(self, delta: float) -> tuple[float, float]:
        result = super().spent(delta)
        if self.num_releases == 0:
            self.selected = None
        elif any(not cost.is_private for cost, _ in self.events):
            self.selected = "basic"
        else:
            self.selected = self._selected_at[float(delta)]
        return result

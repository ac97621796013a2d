"""Answered-only accounting of Confident-GNMax: charge the argmax step only when it answers.

Two modes for a Confident-GNMax query (threshold step: Gaussian on the top
count, sensitivity 1, ``sigma_threshold``; argmax step: Gaussian on the
histogram, L2 sensitivity sqrt(2), ``sigma``; RDP ``a/(2 sigma_threshold^2)``
and ``a/sigma^2``, PATE 2018's convention):

* conservative (today's default, any accountant): every query is charged for
  both steps (``ledger.spend``), answered or not. Nothing but the label (or
  "abstain") is revealed, to the client only.
* answered-only (this module, ``ledger.spend_answered_only``, accountant
  ``"rdp-filter"`` only): every query is charged for the threshold step, and
  for the argmax step only if it answered.

The leak of answered-only mode, precisely: the outcome of the threshold step
(answer or abstain) of each query is revealed to the SERVERS (which confirm
the actual charge to the ledger) and to the client. The servers thereby learn,
per query, whether the owners agreed (whether the noisy top vote count
reached the threshold) -- one bit per query, itself the output of the
threshold step's Gaussian mechanism and therefore covered by its charge --
never the label, the votes or the histogram. The client learns nothing new
(an abstention was already what it received). Because the number of answered
queries depends on the owners' data, the charges are adaptively chosen, and
only a privacy filter composes them soundly: see :mod:`.filter`.

Ledger protocol (a crash over-counts, never under-counts)::

    with ledger.spend_answered_only(client_id, mechanism, queries=B) as spend:
        # entered: B WORST-CASE charges (both steps) are checked by the filter
        # and committed as a reservation
        answered_mask = run_mpc(...)            # raises -> reservation deleted
        spend.confirm(answered=k)               # k of B answered: the B - k
                                                # others become threshold-only
    client.reconstruct(...)

A process killed between the reservation and ``confirm`` leaves the worst
case (both steps for all B queries) counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import dp_accounting

from ..._validation import check_delta, check_int, check_positive
from .base import ReleaseCost
from .errors import LedgerError
from .spend import Spend

__all__ = ["ABSTAINED_SUFFIX", "AnsweredOnlyCosts", "OutcomeSpend"]

ABSTAINED_SUFFIX = ":abstained"
THRESHOLD_SENSITIVITY = 1.0
ARGMAX_SENSITIVITY_L2 = math.sqrt(2.0)


def _per_release_epsilon(noise_multiplier: float, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier=noise_multiplier))
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class AnsweredOnlyCosts:
    """The two possible charges of one Confident-GNMax query.

    Attributes:
        answered: both steps: one Gaussian event with noise multiplier
            ``(sigma_threshold^-2 + (sigma/sqrt 2)^-2)^-1/2`` (two Gaussians
            compose exactly to it in RDP); the same cost as the conservative
            mode's, so conservative and answered spends group together.
        abstained: the threshold step alone: Gaussian, noise multiplier ``sigma_threshold``.
    """

    answered: ReleaseCost
    abstained: ReleaseCost

    @classmethod
    def of(cls, mechanism: Any) -> "AnsweredOnlyCosts":
        """From a Confident-GNMax mechanism (anything with ``sigma_threshold``, ``sigma``, ``delta``, ``name``)."""
        if not all(hasattr(mechanism, a) for a in ("sigma_threshold", "sigma", "delta")):
            raise TypeError(
                "answered-only accounting needs a Confident-GNMax mechanism (with sigma_threshold, sigma and "
                f"delta), got {type(mechanism).__name__}")
        return cls.from_sigmas(sigma_threshold=mechanism.sigma_threshold, sigma=mechanism.sigma,
                               delta=mechanism.delta, name=getattr(mechanism, "name", "confident-gnmax"))

    @classmethod
    def from_sigmas(cls, *, sigma_threshold: float, sigma: float, delta: float = 1e-5,
                    name: str = "confident-gnmax") -> "AnsweredOnlyCosts":
        z1 = check_positive(sigma_threshold, name="sigma_threshold") / THRESHOLD_SENSITIVITY
        z2 = check_positive(sigma, name="sigma") / ARGMAX_SENSITIVITY_L2
        delta = check_delta(delta)
        if delta == 0.0:
            raise ValueError("Confident-GNMax is Gaussian: delta must be > 0")
        z = (z1**-2 + z2**-2) ** -0.5
        answered = ReleaseCost(name, _per_release_epsilon(z, delta), delta, "gaussian", z)
        abstained = ReleaseCost(name + ABSTAINED_SUFFIX, _per_release_epsilon(z1, delta), delta, "gaussian", z1)
        return cls(answered, abstained)

    def __post_init__(self) -> None:
        if not (isinstance(self.answered, ReleaseCost) and isinstance(self.abstained, ReleaseCost)):
            raise TypeError("answered and abstained must be ReleaseCosts")
        if self.answered.event != "gaussian" or self.abstained.event != "gaussian":
            raise ValueError("answered-only accounting is defined for Gaussian (Confident-GNMax) steps only")
        if not self.abstained.mechanism.endswith(ABSTAINED_SUFFIX):
            raise ValueError(f"the abstained cost's mechanism name must end in {ABSTAINED_SUFFIX!r}")
        if not self.abstained.noise_multiplier > self.answered.noise_multiplier:
            raise ValueError("an abstention must cost strictly less than an answer (threshold step only)")


class Settlements(Protocol):
    def reserve(self, client_id: str, cost: ReleaseCost, queries: int) -> int: ...

    def confirm_outcome(self, reservation_id: int, *, costs: AnsweredOnlyCosts, answered: int) -> None: ...

    def rollback(self, reservation_id: int) -> None: ...


class OutcomeSpend(Spend):
    """A :class:`Spend` that reserves the worst case and confirms the actual outcome.

    Created by :meth:`PrivacyLedger.spend_answered_only`. ``confirm(answered=k)``
    charges both steps for ``k`` queries and the threshold step for the others.
    """

    def __init__(self, ledger: Settlements, client_id: str, costs: AnsweredOnlyCosts, queries: int) -> None:
        super().__init__(ledger, client_id, costs.answered, queries)  # type: ignore[arg-type]
        self.costs = costs
        self.answered: int | None = None

    def confirm(self, *, answered: int) -> None:  # type: ignore[override]
        """Charge the outcome: ``answered`` of the ``queries`` answered. Call BEFORE releasing anything."""
        answered = check_int(answered, name="answered", minimum=0, maximum=self.queries)
        if self.state == "answered":
            if answered != self.answered:
                raise LedgerError(f"this spend was already confirmed with answered={self.answered}")
            return
        if self.state != "reserved":
            raise LedgerError(f"cannot confirm a spend that is {self.state}")
        self._ledger.confirm_outcome(self.row_id, costs=self.costs, answered=answered)
        self.answered = answered
        self.state = "answered"

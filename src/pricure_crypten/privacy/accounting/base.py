"""The interface every privacy accountant implements, and the cost of one release.

Who sees what: accountants run wherever queries are admitted (the party that
keeps the :class:`~pricure_crypten.privacy.accounting.ledger.PrivacyLedger`). They see
only *which* calibrated mechanism was released *how many times* -- never a
query, a vote, a histogram or a label. The client sees none of this except
the outcome (answered, or refused with its own spent budget).

One answered query releases one noisy histogram (the revealed argmax is
post-processing), so its cost is one release of the calibrated mechanism:
:class:`ReleaseCost` records it as plain, persistable numbers (name, per-query
epsilon and delta, and the ``dp_accounting`` event kind with its noise
multiplier). An :class:`Accountant` composes ``(mechanism, count)`` pairs and
answers :meth:`Accountant.spent`: the (epsilon, delta) guarantee of everything
composed so far. Identical releases are grouped, so ``T`` queries cost one
``SelfComposedDpEvent(event, T)``, not ``T`` events.

A ledger replays the persisted spends of a client into a *fresh* accountant
(``make_accountant(name)``) and asks for the total; accountants are therefore
cheap to construct and hold no state besides the composed counts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Optional, Protocol, Union, runtime_checkable

import dp_accounting

from ..._validation import check_delta, check_epsilon, check_int

# Relative tolerance when comparing a composed delta with a target delta (float noise only).
_REL_TOL = 1e-12

EVENT_KINDS = ("laplace", "gaussian", "nonprivate", "unsupported")


@runtime_checkable
class MechanismLike(Protocol):
    """What accountants need of a mechanism: its per-release (epsilon, delta) and DP event.

    :class:`~pricure_crypten.privacy.noise.LaplaceNoise`, ``GaussianNoise`` and
    ``NoNoise`` all qualify; so does a :class:`ReleaseCost`.
    """

    epsilon: float
    delta: float

    def dp_event(self) -> Any: ...


@dataclass(frozen=True)
class ReleaseCost:
    """The privacy cost of ONE release of a calibrated mechanism.

    Plain numbers, so a ledger can persist it and rebuild the ``dp_accounting``
    event later. Hashable: equal costs are grouped by the accountants.

    Attributes:
        mechanism: the mechanism's name (``"laplace"``, ``"gaussian"``, ``"none"``, ...).
        epsilon: per-release epsilon (``inf`` for no noise).
        delta: per-release delta in [0, 1).
        event: ``"laplace"``, ``"gaussian"``, ``"nonprivate"`` or ``"unsupported"``
            (a mechanism whose DP event ``dp_accounting`` cannot compose here;
            only the basic/advanced accountants can account for it).
        noise_multiplier: ``scale / sensitivity`` of a Laplace or Gaussian event, else ``None``.
    """

    mechanism: str
    epsilon: float
    delta: float
    event: str
    noise_multiplier: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, str) or not self.mechanism:
            raise ValueError(f"mechanism name must be a non-empty string, got {self.mechanism!r}")
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))
        if self.event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.event!r}; choose one of {', '.join(EVENT_KINDS)}")
        if self.event in ("laplace", "gaussian"):
            nm = self.noise_multiplier
            if isinstance(nm, bool) or not isinstance(nm, (int, float)) or not (math.isfinite(nm) and nm > 0):
                raise ValueError(f"a {self.event} event needs a finite noise_multiplier > 0, got {nm!r}")
            object.__setattr__(self, "noise_multiplier", float(nm))
            if math.isinf(self.epsilon):
                raise ValueError(f"mechanism {self.mechanism!r} has epsilon=inf but a noisy {self.event} event")
            if self.event == "laplace" and not math.isclose(1.0 / self.noise_multiplier, self.epsilon, rel_tol=1e-9):
                raise ValueError(
                    f"mechanism {self.mechanism!r}: epsilon={self.epsilon} disagrees with its Laplace event "
                    f"(noise_multiplier={self.noise_multiplier}, i.e. epsilon={1.0 / self.noise_multiplier})"
                )
        else:
            if self.noise_multiplier is not None:
                raise ValueError(f"a {self.event} event has no noise_multiplier, got {self.noise_multiplier!r}")
            if self.event == "nonprivate" and not math.isinf(self.epsilon):
                raise ValueError(
                    f"mechanism {self.mechanism!r} claims epsilon={self.epsilon} but its DP event is NonPrivate"
                )

    @classmethod
    def of(cls, mechanism: Union["MechanismLike", "ReleaseCost"]) -> "ReleaseCost":
        """The cost of one release of ``mechanism`` (a noise mechanism or a ReleaseCost)."""
        if isinstance(mechanism, ReleaseCost):
            return mechanism
        if not (hasattr(mechanism, "epsilon") and hasattr(mechanism, "delta")):
            raise TypeError(
                f"expected a noise mechanism with .epsilon, .delta and .dp_event() "
                f"(e.g. from pricure_crypten.privacy.noise.calibrate), got {type(mechanism).__name__}"
            )
        name = getattr(mechanism, "name", None) or type(mechanism).__name__
        epsilon = check_epsilon(mechanism.epsilon)
        delta = check_delta(mechanism.delta)
        dp_event = getattr(mechanism, "dp_event", None)
        event = dp_event() if callable(dp_event) else None
        if isinstance(event, dp_accounting.LaplaceDpEvent):
            return cls(str(name), epsilon, delta, "laplace", float(event.noise_multiplier))
        if isinstance(event, dp_accounting.GaussianDpEvent):
            return cls(str(name), epsilon, delta, "gaussian", float(event.noise_multiplier))
        if isinstance(event, dp_accounting.NonPrivateDpEvent):
            return cls(str(name), epsilon, delta, "nonprivate", None)
        if math.isinf(epsilon):
            return cls(str(name), epsilon, delta, "nonprivate", None)
        return cls(str(name), epsilon, delta, "unsupported", None)

    @property
    def is_private(self) -> bool:
        """False for a release without noise (epsilon = inf)."""
        return self.event != "nonprivate"

    def dp_event(self) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of one release."""
        if self.event == "laplace":
            return dp_accounting.LaplaceDpEvent(noise_multiplier=self.noise_multiplier)
        if self.event == "gaussian":
            return dp_accounting.GaussianDpEvent(noise_multiplier=self.noise_multiplier)
        if self.event == "nonprivate":
            return dp_accounting.NonPrivateDpEvent()
        return dp_accounting.UnsupportedDpEvent()

    def describe(self) -> str:
        return f"{self.mechanism} (epsilon={self.epsilon:g}, delta={self.delta:g} per query)"


def _check_count(count: Any) -> int:
    return check_int(count, name="count", minimum=0)


def check_target_delta(delta: Any) -> float:
    """Validate the delta at which an accountant is asked for epsilon ([0, 1))."""
    try:
        return check_delta(delta)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"target {exc}") from None


class Accountant(ABC):
    """Composes releases of calibrated mechanisms; reports the total (epsilon, delta).

    Usage::

        acc = make_accountant("pld")
        acc.compose([(mechanism, 100)])          # 100 answered queries
        epsilon, delta = acc.spent(1e-5)         # the guarantee of all of them

    Subclasses implement :meth:`_spent` (and :meth:`_supports` if they cannot
    compose every release). Composition is exact in the counts: composing
    ``(m, 3)`` then ``(m, 2)`` is the same as composing ``(m, 5)``.
    """

    #: registry name ("basic", "advanced", "rdp", "pld", "auto")
    name: ClassVar[str] = "abstract"

    def __init__(self) -> None:
        self._counts: dict[ReleaseCost, int] = {}
        self._cache: dict[float, tuple[float, float]] = {}

    # -- composition --------------------------------------------------------------
    def compose(self, events: Iterable[tuple[Union[MechanismLike, ReleaseCost], int]]) -> "Accountant":
        """Account for ``count`` releases of each ``(mechanism, count)`` pair.

        All pairs are validated first: on error nothing is composed.
        Returns ``self`` (chainable).
        """
        if isinstance(events, tuple) and len(events) == 2 and isinstance(events[1], int):
            raise TypeError("compose() takes a sequence of (mechanism, count) pairs; use step(mechanism, count)")
        staged: list[tuple[ReleaseCost, int]] = []
        for item in events:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"compose() takes (mechanism, count) pairs, got {item!r}")
            cost = ReleaseCost.of(item[0])
            count = _check_count(item[1])
            if count and not self._supports(cost):
                raise ValueError(
                    f"the {self.name!r} accountant cannot account for {cost.describe()} "
                    f"(DP event kind {cost.event!r}); use 'basic' or 'auto'"
                )
            staged.append((cost, count))
        for cost, count in staged:
            if count:
                self._counts[cost] = self._counts.get(cost, 0) + count
        self._cache.clear()
        return self

    def step(self, mechanism: Union[MechanismLike, ReleaseCost], count: int = 1) -> "Accountant":
        """Account for ``count`` releases of one mechanism. Returns ``self``."""
        return self.compose([(mechanism, count)])

    def supports(self, mechanism: Union[MechanismLike, ReleaseCost]) -> bool:
        """Whether this accountant can compose releases of ``mechanism``."""
        return self._supports(ReleaseCost.of(mechanism))

    def _supports(self, cost: ReleaseCost) -> bool:
        return True

    @property
    def events(self) -> tuple[tuple[ReleaseCost, int], ...]:
        """The composed releases, grouped and in a deterministic order."""
        return tuple(sorted(self._counts.items(), key=release_sort_key))

    @property
    def num_releases(self) -> int:
        return sum(self._counts.values())

    # -- queries --------------------------------------------------------------------
    def spent(self, delta: float) -> tuple[float, float]:
        """The (epsilon, delta) guarantee of everything composed so far.

        ``delta`` is the target: accountants that trade delta for epsilon (RDP,
        PLD, advanced composition) report epsilon at that delta and return it as
        the spent delta; basic composition ignores it and returns the composed
        delta of the releases (which may exceed the target -- compare both).
        Nothing composed: ``(0.0, 0.0)``. A release without noise: epsilon inf.
        """
        delta = check_target_delta(delta)
        if not self._counts:
            return (0.0, 0.0)
        if any(not cost.is_private for cost in self._counts):
            return (math.inf, delta)
        if delta not in self._cache:
            eps, d = self._spent(delta)
            self._cache[delta] = (float(eps), float(d))
        return self._cache[delta]

    def get_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta``; ``inf`` if this accountant cannot guarantee that delta."""
        epsilon, spent_delta = self.spent(delta)
        return epsilon if within(spent_delta, delta) else math.inf

    @abstractmethod
    def _spent(self, delta: float) -> tuple[float, float]:
        """(epsilon, delta) of the non-empty, all-private composition in ``self.events``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(releases={self.num_releases}, groups={len(self._counts)})"


def within(value: float, limit: float) -> bool:
    """``value <= limit`` up to a relative float tolerance of 1e-12."""
    if value <= limit:
        return True
    return math.isfinite(limit) and value <= limit + _REL_TOL * max(abs(limit), 1e-300)


def release_sort_key(item: tuple[ReleaseCost, int]) -> tuple:
    """Deterministic order of (cost, count) groups (composition order is then reproducible)."""
    cost, _ = item
    return (cost.event, cost.mechanism, cost.epsilon, cost.delta, cost.noise_multiplier or 0.0)


def self_composed_events(events: Iterable[tuple[ReleaseCost, int]]) -> dp_accounting.DpEvent:
    """One ``ComposedDpEvent`` of ``SelfComposedDpEvent(event, count)`` per group."""
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(cost.dp_event(), count) for cost, count in events]
    )

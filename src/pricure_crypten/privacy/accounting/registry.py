"""Accountants by name: ``make_accountant("pld")``."""

from __future__ import annotations

from typing import Any

from .advanced import AdvancedAccountant
from .auto import AutoAccountant
from .base import Accountant
from .basic import BasicAccountant
from .filter import FilterAccountant
from .pld import PLDAccountant
from .rdp import RDPAccountant

ACCOUNTANTS: dict[str, type[Accountant]] = {
    "auto": AutoAccountant,
    "basic": BasicAccountant,
    "advanced": AdvancedAccountant,
    "rdp": RDPAccountant,
    "pld": PLDAccountant,
    "rdp-filter": FilterAccountant,
}

DEFAULT_ACCOUNTANT = "auto"


def check_accountant_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"accountant must be a name (str), not {type(name).__name__}")
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return name


def make_accountant(name: str = DEFAULT_ACCOUNTANT, **options: Any) -> Accountant:
    """A fresh, empty accountant.

    Args:
        name: ``"auto"`` (default: PLD where it gives a finite bound, else
            basic), ``"basic"``, ``"advanced"``, ``"rdp"``, ``"pld"`` or
            ``"rdp-filter"`` (the Rényi filter of :mod:`.filter`).
        **options: keyword options of that accountant (``slack`` for
            advanced, ``orders`` for rdp, ``value_discretization_interval`` for
            pld and auto; ``orders`` and ``conversion`` for rdp-filter).
    """
    cls = ACCOUNTANTS[check_accountant_name(name)]
    try:
        return cls(**options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(f"the {name!r} accountant does not take option(s) {sorted(options)}: {exc}") from None
        raise

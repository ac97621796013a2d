"""The number, name and choice checks used across the package, in one place.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError``
(right kind, wrong value) with a message that names the setting and the value
it got. They run on construction of the configuration objects and on every
public call, before any process is started or any MPC work is done.
This module imports nothing of the package and nothing heavier than numpy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

AGGREGATIONS = ("vote", "softmax")
MECHANISM_NAMES = ("laplace", "gaussian")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, *, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within [minimum, maximum]."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_positive(value: Any, *, name: str, allow_inf: bool = False) -> float:
    """A real number > 0 (finite unless ``allow_inf``)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a {'' if allow_inf else 'finite '}number > 0, got {value}")
    return value


def check_non_negative(value: Any, *, name: str) -> float:
    """A finite real number >= 0."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_choice(value: Any, choices: Sequence[str], *, name: str) -> str:
    """One of a fixed set of strings."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(choices)}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_name(value: Any, *, name: str, max_length: int = 1024) -> str:
    """A non-empty, printable identifier (owner or client name)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if len(value) > max_length or "\x00" in value:
        raise ValueError(f"{name} must be at most {max_length} characters without NUL, got {value[:40]!r}...")
    return value


def check_epsilon(epsilon: Any, *, name: str = "epsilon", infinite: str = "no noise") -> float:
    """Validate an epsilon (> 0, not NaN; inf means ``infinite``)."""
    if not _is_number(epsilon):
        raise TypeError(f"{name} must be a number, not {type(epsilon).__name__}")
    epsilon = float(epsilon)
    if math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"{name} must be > 0 (or inf for {infinite}), got {epsilon}")
    return epsilon


def check_delta(delta: Any, *, name: str = "delta") -> float:
    """Validate a delta in [0, 1)."""
    if not _is_number(delta):
        raise TypeError(f"{name} must be a number, not {type(delta).__name__}")
    delta = float(delta)
    if math.isnan(delta) or not 0.0 <= delta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {delta}")
    return delta


def check_split(num_servers: Any, colluding: Any) -> int:
    """Number of servers whose noise partials alone must give the full noise (N - t)."""
    num_servers = check_int(num_servers, name="num_servers")
    colluding = check_int(colluding, name="colluding")
    if num_servers < 2:
        raise ValueError(f"num_servers must be >= 2 (non-colluding servers), got {num_servers}")
    if not 0 <= colluding < num_servers:
        raise ValueError(f"colluding must be in [0, num_servers - 1] = [0, {num_servers - 1}], got {colluding}")
    return num_servers - colluding


def check_aggregation(aggregation: Any) -> str:
    """``"vote"`` (sum of one-hot votes) or ``"softmax"`` (sum of probabilities)."""
    return check_choice(aggregation, AGGREGATIONS, name="aggregation")


DEFAULT_LOGIT_BOUND = 64.0  # owners' logits are clamped to [-64, 64] under MPC by default
MAX_LOGIT_BOUND = 128.0


def check_logit_bound(logit_bound: Any) -> float:
    """The clamp bound of the owners' logits, in (0, 128]."""
    if not _is_number(logit_bound):
        raise TypeError(f"logit_bound must be a number, not {type(logit_bound).__name__}")
    bound = float(logit_bound)
    if not 0 < bound <= MAX_LOGIT_BOUND:
        raise ValueError(
            f"logit_bound must be in (0, {MAX_LOGIT_BOUND:g}], got {logit_bound}: after subtracting the maximum "
            "the softmax's exp approximation is exact only on [-256, 0]"
        )
    return bound

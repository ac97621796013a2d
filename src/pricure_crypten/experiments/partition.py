"""Partitioning a training split among K data owners, reproducibly from a seed.

Schemes (all return disjoint index arrays whose union is every index):

* ``"iid"``: a random permutation cut into K near-equal parts.
* ``"dirichlet"``: label skew. For each class, the owners' shares of that
  class are drawn from Dirichlet(alpha, ..., alpha); small ``alpha`` (0.1)
  gives owners dominated by one or two classes, large ``alpha`` approaches IID.
* ``"quantity"``: quantity skew. Owner sizes are ``min_size`` plus a
  multinomial share of the rest with probabilities from Dirichlet(alpha);
  labels are IID within each owner.

Every owner gets at least ``min_size`` samples. For ``"dirichlet"`` an owner
left short by the draw is topped up with random samples taken from the owner
that is currently largest, which keeps the result reproducible and always
terminates (the usual "redraw until every owner is big enough" loop may not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEMES = ("iid", "dirichlet", "quantity")


def partition(
    labels: Sequence[int] | np.ndarray,
    *,
    num_owners: int,
    scheme: str = "iid",
    alpha: float = 1.0,
    seed: int = 0,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Split the indices of ``labels`` among ``num_owners`` owners.

    Args:
        labels: the training labels, 1-D integer array-like (numpy or torch).
        num_owners: K, the number of owners (>= 1).
        scheme: ``"iid"``, ``"dirichlet"`` (label skew) or ``"quantity"``
            (quantity skew); see the module docstring.
        alpha: Dirichlet concentration (> 0) for the skewed schemes.
        seed: seed of the numpy generator; same seed, same partition.
        min_size: the smallest number of samples any owner may get (>= 1).

    Returns:
        ``num_owners`` sorted int64 index arrays, disjoint, covering all indices.

    Raises:
        ValueError: bad arguments, or too few samples for ``num_owners``
            owners of ``min_size`` samples each.
    """
    y = _validate(labels, num_owners=num_owners, scheme=scheme, alpha=alpha, min_size=min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(len(y)), num_owners)
    elif scheme == "dirichlet":
        parts = _label_skew(y, num_owners, alpha, rng)
        parts = _top_up(parts, min_size, rng)
    else:
        parts = _quantity_skew(len(y), num_owners, alpha, min_size, rng)
    return [np.sort(part).astype(np.int64) for part in parts]


def describe_partition(
    labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> list[dict]:
    """Per-owner summary: size, label histogram and label skew.

    Returns one dict per owner with ``"owner"`` (index), ``"size"``,
    ``"label_counts"`` (list of ``num_classes`` ints) and ``"tv_distance"``,
    the total-variation distance between the owner's label distribution and
    that of all ``labels`` (0 = same mix, 1 = disjoint labels).
    """
    y = np.asarray(labels).reshape(-1)
    overall = np.bincount(y, minlength=num_classes) / len(y)
    summary = []
    for owner, part in enumerate(parts):
        counts = np.bincount(y[part], minlength=num_classes)
        share = counts / max(len(part), 1)
        summary.append(
            {
                "owner": owner,
                "size": int(len(part)),
                "label_counts": counts.tolist(),
                "tv_distance": float(0.5 * np.abs(share - overall).sum()),
            }
        )
    return summary


def _validate(labels, *, num_owners: int, scheme: str, alpha: float, min_size: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")
    if num_owners < 1 or min_size < 1:
        raise ValueError(f"num_owners ({num_owners}) and min_size ({min_size}) must be >= 1")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if num_owners > len(y):
        raise ValueError(f"num_owners ({num_owners}) exceeds the number of samples ({len(y)})")
    if num_owners * min_size > len(y):
        raise ValueError(
            f"{len(y)} samples cannot give {num_owners} owners min_size={min_size} each "
            f"(needs {num_owners * min_size}); lower min_size or num_owners"
        )
    return y


def _label_skew(y: np.ndarray, num_owners: int, alpha: float, rng: np.random.Generator) -> list:
    """Deal each class's samples to the owners in Dirichlet(alpha) proportions."""
    parts: list[list[int]] = [[] for _ in range(num_owners)]
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        shares = rng.dirichlet(np.full(num_owners, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for owner, chunk in enumerate(np.split(members, cuts)):
            parts[owner].extend(chunk.tolist())
    return [np.asarray(part, dtype=np.int64) for part in parts]


def _top_up(parts: list, min_size: int, rng: np.random.Generator) -> list:
    """Move random samples from the largest owner to each owner below ``min_size``."""
    parts = list(parts)
    for owner in range(len(parts)):
        while len(parts[owner]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            need = min(min_size - len(parts[owner]), len(parts[donor]) - min_size)
            moved = rng.choice(len(parts[donor]), size=need, replace=False)
            parts[owner] = np.concatenate([parts[owner], parts[donor][moved]])
            parts[donor] = np.delete(parts[donor], moved)
    return parts


def _quantity_skew(
    n: int, num_owners: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list:
    """Owner sizes min_size + Multinomial(rest, Dirichlet(alpha)); IID labels."""
    shares = rng.dirichlet(np.full(num_owners, alpha))
    sizes = min_size + rng.multinomial(n - num_owners * min_size, shares)
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])

"""Who trained on what: the owners' shards, the attacker's own data, members and non-members.

The training split of a dataset is cut, once and from a seed, into three
disjoint pools:

* ``held_out``: records that NO owner trains on. Non-members come from here,
  so they are drawn from the same distribution as the members (never from the
  test split, whose class balance and sources may differ: an attack would then
  score distribution shift, not membership).
* ``attacker``: the attacker's own data, from the same distribution, on which it
  trains shadow owners to calibrate its thresholds. Disjoint from everything
  the target owners saw and from the evaluation records.
* the rest, partitioned among the K owners by
  :func:`pricure_crypten.experiments.partition.partition`.

Members are training records of ONE attacked owner; non-members are an equal
number of held-out records. By default non-members are drawn to match the
members' label histogram (the attacked owner's shard may be label-skewed), so
the attack cannot win by guessing the owner's label mix.

Who sees what: :class:`MembershipSplit` is the evaluator's ground truth. The
attacker is given only the records to test (``records``/``labels``, in a
shuffled order) and its own pool ``attacker``; never ``is_member``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._validation import check_int
from ..partition import partition


@dataclass(frozen=True)
class MembershipSplit:
    """Index arrays into the training split (all sorted, pairwise disjoint except as noted).

    Attributes:
        parts: one index array per owner (what owner k trains on).
        held_out: the pool no owner trains on (non-members are drawn from it).
        attacker: the attacker's own pool (for shadow owners).
        target_owner: the attacked owner's index.
        records: the evaluation records, members and non-members shuffled together.
        is_member: 1 where ``records[i]`` is a training record of the target owner, else 0.
    """

    parts: tuple[np.ndarray, ...]
    held_out: np.ndarray
    attacker: np.ndarray
    target_owner: int
    records: np.ndarray
    is_member: np.ndarray

    @property
    def members(self) -> np.ndarray:
        return self.records[self.is_member == 1]

    @property
    def non_members(self) -> np.ndarray:
        return self.records[self.is_member == 0]


def _fraction(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def make_split(
    labels: np.ndarray,
    *,
    num_owners: int,
    held_out_fraction: float = 0.2,
    attacker_fraction: float = 0.2,
    scheme: str = "iid",
    alpha: float = 1.0,
    min_size: int = 10,
    target_owner: int = 0,
    max_members: int | None = None,
    match_labels: bool = True,
    seed: int = 0,
) -> MembershipSplit:
    """Cut a training split into owners' shards, a held-out pool and the attacker's pool; draw the evaluation set.

    Args:
        labels: the training split's labels (1-D ints).
        num_owners: K.
        held_out_fraction, attacker_fraction: shares of the training split for
            the two pools (stratified by label), each in (0, 1), summing below 1.
        scheme, alpha, min_size: how the rest is partitioned among the owners.
        target_owner: the attacked owner.
        max_members: cap on the number of members (default: as many as possible).
        match_labels: draw non-members with the members' label histogram
            (members of a class without enough held-out records are dropped).
        seed: seeds every cut and draw.

    Returns:
        A :class:`MembershipSplit` with equal numbers of members and non-members.
    """
    y = np.asarray(labels).reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    num_owners = check_int(num_owners, name="num_owners", minimum=1)
    held_out_fraction = _fraction(held_out_fraction, "held_out_fraction")
    attacker_fraction = _fraction(attacker_fraction, "attacker_fraction")
    if held_out_fraction + attacker_fraction >= 1:
        raise ValueError("held_out_fraction + attacker_fraction must be < 1 (the owners need data)")
    target_owner = check_int(target_owner, name="target_owner", minimum=0, maximum=num_owners - 1)
    if max_members is not None:
        max_members = check_int(max_members, name="max_members", minimum=1)
    rng = np.random.default_rng(seed)

    held, attacker, rest = [], [], []
    for cls in np.unique(y):  # stratified three-way cut
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_held, n_att = int(round(len(idx) * held_out_fraction)), int(round(len(idx) * attacker_fraction))
        held.append(idx[:n_held])
        attacker.append(idx[n_held:n_held + n_att])
        rest.append(idx[n_held + n_att:])
    held_out, attacker_pool, rest_idx = (np.sort(np.concatenate(a)) for a in (held, attacker, rest))
    local = partition(y[rest_idx], num_owners=num_owners, scheme=scheme, alpha=alpha,
                      seed=int(rng.integers(2**31)), min_size=min_size)
    parts = tuple(np.sort(rest_idx[p]) for p in local)

    shard = rng.permutation(parts[target_owner])
    if match_labels:
        members, non_members = [], []
        for cls in np.unique(y[shard]):
            mine = shard[y[shard] == cls]
            pool = rng.permutation(held_out[y[held_out] == cls])
            n = min(len(mine), len(pool))
            members.append(mine[:n])
            non_members.append(pool[:n])
        members_idx, non_idx = np.concatenate(members), np.concatenate(non_members)
        if max_members is not None and len(members_idx) > max_members:  # keep the histograms matched
            keep = rng.permutation(len(members_idx))[:max_members]
            members_idx, non_idx = members_idx[keep], non_idx[keep]
    else:
        n = min(len(shard), len(held_out), max_members or len(shard))
        members_idx, non_idx = shard[:n], rng.permutation(held_out)[:n]
    if len(members_idx) == 0:
        raise ValueError("no members could be matched with held-out non-members; raise held_out_fraction")
    records = np.concatenate([members_idx, non_idx])
    is_member = np.concatenate([np.ones(len(members_idx), np.int64), np.zeros(len(non_idx), np.int64)])
    order = rng.permutation(len(records))
    return MembershipSplit(parts, held_out, attacker_pool, target_owner, records[order], is_member[order])


def shadow_split(
    attacker_labels: np.ndarray, *, train_fraction: float = 0.5, max_members: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's own member/non-member cut of its pool: (shadow training indices, shadow non-member indices).

    Indices are positions in ``attacker_labels``; the two sets are disjoint and
    stratified by label; the non-members are as many as the members (or fewer
    if the pool is short).
    """
    y = np.asarray(attacker_labels).reshape(-1)
    train_fraction = _fraction(train_fraction, "train_fraction")
    rng = np.random.default_rng(seed)
    train, out = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n = int(round(len(idx) * train_fraction))
        train.append(idx[:n])
        out.append(idx[n:])
    train_idx, out_idx = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(out))
    if max_members is not None:
        train_idx = train_idx[:check_int(max_members, name="max_members", minimum=1)]
    return np.sort(train_idx), np.sort(out_idx[:len(train_idx)])


@dataclass(frozen=True)
class ShadowShards:
    """The attacker's shadow owners' shards, each of the TARGET owner's shard size (positions in its pool).

    Attributes:
        parts: one index array per shadow owner; ``parts[0]`` is shadow owner 0's
            shard (the shadow members are drawn from it).
        non_members: pool records no shadow owner trains on (the shadow non-members).
    """

    parts: tuple[np.ndarray, ...]
    non_members: np.ndarray


def shadow_shards(
    attacker_labels: np.ndarray, *, shard_size: int, num_owners: int = 1, seed: int = 0
) -> ShadowShards:
    """Shadow owners trained on shards of the SAME size as the target owner's (an attack calibrated on
    smaller shadows sees less overfit models than the one it attacks).

    From the attacker's pool (positions in ``attacker_labels``), stratified by
    label and seeded: ``shard_size`` shadow non-members; shadow owner 0's
    shard, ``shard_size`` records disjoint from them; and, for an ensemble
    (``num_owners > 1``), each other shadow owner's shard: ``shard_size``
    records drawn without replacement from what is left. The pool is rarely
    large enough for K disjoint shards of the target's size, so the OTHER
    shadow owners may share records among themselves; never with shadow owner 0
    or the non-members (so a shadow member is trained on by one shadow owner
    only, as a target member is by one owner).

    Raises:
        ValueError: the pool has fewer than ``2 * shard_size`` records, or
            (ensembles) fewer than ``3 * shard_size``.
    """
    y = np.asarray(attacker_labels).reshape(-1)
    shard_size = check_int(shard_size, name="shard_size", minimum=1)
    num_owners = check_int(num_owners, name="num_owners", minimum=1)
    need = (2 if num_owners == 1 else 3) * shard_size
    if len(y) < need:
        raise ValueError(f"the attacker's pool has {len(y)} records; {num_owners} shadow owner(s) of the target's "
                         f"shard size {shard_size} need {need} (raise attacker_fraction)")
    rng = np.random.default_rng(seed)
    order = _stratified_order(y, rng)
    non_members, own, rest = order[:shard_size], order[shard_size:2 * shard_size], order[2 * shard_size:]
    parts = [np.sort(own)] + [np.sort(rng.choice(rest, shard_size, replace=False)) for _ in range(num_owners - 1)]
    return ShadowShards(tuple(parts), np.sort(non_members))


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``range(len(y))`` in which every prefix has (about) the pool's label mix."""
    keys = np.empty(len(y))
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)  # evenly spread ranks per class
    return np.argsort(keys, kind="stable")

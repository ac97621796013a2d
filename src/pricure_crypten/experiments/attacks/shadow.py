"""Shadow owners: how the attacker calibrates its threshold without the target's ground truth.

The attacker holds its own data (the ``attacker`` pool of
:class:`~pricure_crypten.experiments.attacks.splits.MembershipSplit`), from the
target's distribution but disjoint from every target owner's shard. It cuts
it into shadow members and shadow non-members
(:func:`~pricure_crypten.experiments.attacks.splits.shadow_split`), trains
shadow owners with the target's recipe (which it is assumed to know),
exposes them through the same kind of oracle as the target (``make_oracle``:
e.g. the same mechanism), and calibrates the attack on them.

Who sees what: the attacker sees its own data and its own shadow models;
nothing of the target but the labels it queries later.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..._validation import check_int
from ..partition import partition
from .base import LabelOnlyAttack
from .oracle import LabelOracle
from .recipes import Recipe
from .splits import shadow_split


def calibrate_on_shadows(
    attack: LabelOnlyAttack,
    *,
    recipe: Recipe,
    x: torch.Tensor,
    y: torch.Tensor,
    make_oracle: Callable[[Sequence[nn.Module]], LabelOracle],
    num_owners: int = 1,
    max_members: int | None = None,
    seed: int = 0,
) -> float:
    """Train shadow owners on the attacker's pool ``(x, y)`` and calibrate ``attack`` on them.

    The shadow members are shadow owner 0's shard (the others, if
    ``num_owners > 1``, stand for the other owners of an ensemble); the
    shadow non-members an equal number of pool records no shadow trained on.

    Returns:
        The threshold the attack set (also in ``attack.threshold``).
    """
    num_owners = check_int(num_owners, name="num_owners", minimum=1)
    labels = y.numpy()
    train_idx, out_idx = shadow_split(labels, seed=seed)
    parts = [train_idx] if num_owners == 1 else [
        train_idx[p] for p in partition(labels[train_idx], num_owners=num_owners, scheme="iid", seed=seed,
                                        min_size=1)]
    models = recipe.train_all(x, y, parts, seed=seed + 1)
    members = parts[0] if max_members is None else parts[0][:check_int(max_members, name="max_members", minimum=1)]
    non_members = np.random.default_rng(seed).permutation(out_idx)[:len(members)]
    members = members[:len(non_members)]
    oracle = make_oracle(models)
    return attack.calibrate(oracle, x[members].numpy(), labels[members], x[non_members].numpy(), labels[non_members])

"""Shadow owners: how the attacker calibrates its threshold without the target's ground truth.

The attacker holds its own data (the ``attacker`` pool of
:class:`~pricure_crypten.experiments.attacks.splits.MembershipSplit`), from the
target's distribution but disjoint from every target owner's shard. It cuts
it into shadow owners' shards OF THE TARGET OWNER'S SHARD SIZE and shadow
non-members (:func:`~pricure_crypten.experiments.attacks.splits.shadow_shards`):
a smaller shadow overfits more or less than the target, and a threshold
calibrated on it does not transfer. It trains the shadow owners with the target's recipe (which it is assumed to know),
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
from .base import LabelOnlyAttack
from .oracle import LabelOracle
from .recipes import Recipe
from .splits import shadow_shards


def calibrate_on_shadows(
    attack: LabelOnlyAttack,
    *,
    recipe: Recipe,
    x: torch.Tensor,
    y: torch.Tensor,
    make_oracle: Callable[[Sequence[nn.Module]], LabelOracle],
    shard_size: int,
    num_owners: int = 1,
    max_members: int | None = None,
    seed: int = 0,
) -> float:
    """Train shadow owners on the attacker's pool ``(x, y)`` and calibrate ``attack`` on them.

    Every shadow owner trains on ``shard_size`` records: the TARGET owner's
    shard size (the attacker is assumed to know it, as it knows the recipe).
    The shadow members are shadow owner 0's shard (the others, if
    ``num_owners > 1``, stand for the other owners of an ensemble); the
    shadow non-members an equal number of pool records no shadow trained on
    (:func:`~pricure_crypten.experiments.attacks.splits.shadow_shards`).

    Returns:
        The threshold the attack set (also in ``attack.threshold``).
    """
    labels = y.numpy()
    shards = shadow_shards(labels, shard_size=shard_size, num_owners=num_owners, seed=seed)
    models = recipe.train_all(x, y, shards.parts, seed=seed + 1)
    members = shards.parts[0]
    if max_members is not None:
        members = np.random.default_rng(seed).permutation(members)[:check_int(max_members, name="max_members",
                                                                                minimum=1)]
    non_members = np.random.default_rng(seed + 1).permutation(shards.non_members)[:len(members)]
    oracle = make_oracle(models)
    return attack.calibrate(oracle, x[members].numpy(), labels[members], x[non_members].numpy(), labels[non_members])

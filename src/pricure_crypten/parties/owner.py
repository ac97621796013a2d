"""Model owners: hand over an ordinary ``torch.nn`` model, send only shares.

Who sees what: a :class:`ModelOwner` lives in the owner's own process with
its plaintext model. :meth:`ModelOwner.share` converts the model
(:func:`pricure_crypten.mpc.layers.convert`), encodes every parameter in fixed
point and splits it into N additive shares with a CSPRNG; bundle ``i`` goes
to server ``i`` only. A bundle holds the public architecture (layer kinds,
hyper-parameters, shapes) and one uniformly random share of each parameter.
Owners never see each other's models, the client's queries or any result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from .._validation import check_name
from ..mpc.layers import LayerSpec, convert, output_shape
from ..mpc.randomness import SecureRandom
from ..mpc.sharing import share


@dataclass(frozen=True)
class OwnerBundle:
    """What one server receives from one owner: the architecture and one share per parameter."""

    owner: str
    architecture: tuple[tuple, ...]  # LayerSpec.signature of every layer (public)
    layers: tuple[LayerSpec, ...]  # kinds and options; params replaced by this server's shares (int64)


class ModelOwner:
    """A model owner (e.g. a hospital) with a trained ``nn.Sequential`` classifier.

    Args:
        name: the owner's public identifier.
        model: the owner's model; it must map inputs of ``input_shape`` to
            ``num_classes`` logits and use only supported layers.
        input_shape: shape of one example, e.g. ``(30,)`` or ``(1, 28, 28)``.
        num_classes: number of output classes.
    """

    def __init__(self, *, name: str, model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
        check_name(name, name="an owner's name")
        if not isinstance(model, nn.Module):
            raise TypeError(f"owner {name}: model must be a torch.nn.Module, not {type(model).__name__}")
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s < 1 for s in input_shape):
            raise ValueError(f"owner {name}: input_shape must be non-empty and positive, got {input_shape}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"owner {name}: num_classes must be an int >= 2, got {num_classes!r}")
        self.name = name
        self.model = model
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.layers = convert(model)  # raises UnsupportedLayerError naming the layer
        produced = output_shape(model, input_shape)
        if produced != (num_classes,):
            raise ValueError(
                f"owner {name}: the model maps inputs of shape {input_shape} to outputs of shape "
                f"{produced}, expected ({num_classes},) logits"
            )

    @property
    def architecture(self) -> tuple[tuple, ...]:
        """The public architecture signature (owners with equal signatures are stacked)."""
        return tuple(layer.signature for layer in self.layers)

    def share(self, *, num_servers: int, rng: SecureRandom | None = None) -> list[OwnerBundle]:
        """Secret-share every parameter; returns one bundle per server."""
        rng = rng if rng is not None else SecureRandom()
        per_server: list[list[LayerSpec]] = [[] for _ in range(num_servers)]
        for index, layer in enumerate(self.layers):
            shares_per_param = [
                share(p, num_parties=num_servers, rng=rng, name=f"owner {self.name}, layer {index} ({layer.kind})")
                for p in layer.params
            ]
            for server in range(num_servers):
                params = tuple(shares[server] for shares in shares_per_param)
                per_server[server].append(LayerSpec(layer.kind, layer.options, params))
        return [OwnerBundle(self.name, self.architecture, tuple(layers)) for layers in per_server]

    def __repr__(self) -> str:
        return f"ModelOwner(name={self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes})"


def check_owners(owners: list[ModelOwner]) -> tuple[tuple[int, ...], int]:
    """Validate that the owners agree on input shape and classes; returns both."""
    if not isinstance(owners, (list, tuple)) or len(owners) == 0:
        raise ValueError("at least one model owner is required (K >= 1), got none")
    for owner in owners:
        if not isinstance(owner, ModelOwner):
            raise TypeError(f"owners must be ModelOwner instances, got {type(owner).__name__}")
    names = [o.name for o in owners]
    if len(set(names)) != len(names):
        raise ValueError(f"owner names must be unique, got {names}")
    first = owners[0]
    for owner in owners[1:]:
        if owner.input_shape != first.input_shape:
            raise ValueError(
                f"owners disagree on the input shape: {first.name} expects {first.input_shape}, "
                f"{owner.name} expects {owner.input_shape}"
            )
        if owner.num_classes != first.num_classes:
            raise ValueError(
                f"owners disagree on the number of classes: {first.name} has {first.num_classes}, "
                f"{owner.name} has {owner.num_classes}"
            )
    return first.input_shape, first.num_classes


def group_by_architecture(bundles: list[OwnerBundle]) -> list[list[OwnerBundle]]:
    """Group one server's bundles by architecture, keeping the owners' order within a group."""
    groups: dict[tuple, list[OwnerBundle]] = {}
    for bundle in bundles:
        groups.setdefault(bundle.architecture, []).append(bundle)
    return list(groups.values())


def stack_shares(group: list[OwnerBundle]) -> list[LayerSpec]:
    """Stack one server's shares of K same-architecture owners, parameter by parameter.

    A stack of shares is a share of the stack, so this is purely local.
    """
    stacked = []
    for index, layer in enumerate(group[0].layers):
        params = tuple(np.stack([b.layers[index].params[p] for b in group]) for p in range(len(layer.params)))
        stacked.append(LayerSpec(layer.kind, layer.options, params))
    return stacked

"""Patch 4 of :mod:`pricure_crypten._compat`: crypten's loaders on ``torch.load(weights_only=True)``,
with CrypTen's own classes allow-listed while they run (never arbitrary unpickling)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

_TORCH_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")


def crypten_safe_globals(*, extra: tuple = ()) -> list[Any]:
    """The classes crypten's loaders accept from a file (see patch 4 in the module docstring).

    CrypTen's own objects (MPCTensor, the arithmetic and binary shares, the
    fixed-point encoder, ptype, the autograd context, every ``crypten.nn``
    module class), torch's module containers, ``frozenset``, the classes of CrypTen's own
    restricted unpickler (its built-in torch layers and whatever was passed to
    ``crypten.common.serial.register_safe_class``), and ``extra``.
    """
    import crypten
    import crypten.common.serial as serial
    import crypten.encoder
    import crypten.gradients
    import crypten.mpc.primitives as primitives
    import crypten.nn.module as nn_module
    import torch

    found: list[Any] = [
        crypten.mpc.MPCTensor,
        primitives.ArithmeticSharedTensor,
        primitives.BinarySharedTensor,
        crypten.encoder.FixedPointEncoder,
        crypten.mpc.ptype,
        crypten.gradients.AutogradContext,
        *(cls for _, cls in inspect.getmembers(nn_module, inspect.isclass)
          if issubclass(cls, nn_module.Module) and cls.__module__ == nn_module.__name__),
        *(getattr(torch.nn, name) for name in _TORCH_CONTAINERS),
        frozenset,  # keys of the tuple provider's cache
    ]
    restricted = getattr(serial.RestrictedUnpickler, "_RestrictedUnpickler__SAFE_CLASSES", {})
    found += [cls for name, cls in restricted.items()
              if isinstance(cls, type) and f"{cls.__module__}.{cls.__qualname__}" == name]
    found += [cls for cls in extra if isinstance(cls, type)]
    return list(dict.fromkeys(found))


def _weights_only_by_default(torch_module: Any) -> bool:
    return hasattr(getattr(torch_module, "serialization", None), "safe_globals")


@contextlib.contextmanager
def _crypten_classes_allowed(extra: tuple = ()) -> Iterator[None]:
    import torch

    with torch.serialization.safe_globals(crypten_safe_globals(extra=extra)):
        yield


def _allowing(load: Any, *, extra_from: str | None = None) -> Any:
    @functools.wraps(load)
    def wrapped(*args, **kwargs):
        extra = (kwargs[extra_from],) if extra_from and kwargs.get(extra_from) is not None else ()
        with _crypten_classes_allowed(extra):
            return load(*args, **kwargs)

    wrapped._pricure_patched = True  # type: ignore[attr-defined]
    return wrapped


def patch_loaders(crypten_module: Any) -> bool:
    """Wrap ``crypten.load``, ``crypten.load_from_party`` and the tuple provider's
    cache loaders (patch 4). Returns True if patched."""
    import torch

    if getattr(crypten_module.load, "_pricure_patched", False) or not _weights_only_by_default(torch):
        return False
    from crypten.mpc.provider.provider import TupleProvider

    crypten_module.load = _allowing(crypten_module.load)
    crypten_module.load_from_party = _allowing(crypten_module.load_from_party, extra_from="model_class")
    for name in ("_load_requests", "_load_tuples"):
        setattr(TupleProvider, name, _allowing(getattr(TupleProvider, name)))
    return True



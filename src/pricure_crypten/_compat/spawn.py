"""Patch 5 of :mod:`pricure_crypten._compat`: children started by ``spawn`` or ``forkserver`` get the layer
before they unpickle a target that imports crypten (a marker in the inherited process config)."""

from __future__ import annotations

import multiprocessing

SPAWN_KEY = "pricure_crypten_compat"


class _ChildLayer:
    """Marker in ``multiprocessing.current_process()._config``: a child unpickles it
    (before its target) by importing :mod:`pricure_crypten`, which installs the hook."""

    def __reduce__(self) -> tuple:
        return (_child_layer, ())


def _child_layer() -> _ChildLayer:
    from . import install_import_hook

    install_import_hook()  # importing this module ran pricure_crypten/__init__ already; idempotent
    return _ChildLayer()


def put_marker() -> None:
    """Put the marker in this process's config (idempotent); its children inherit it."""
    config = multiprocessing.current_process()._config
    if not isinstance(config.get(SPAWN_KEY), _ChildLayer):
        config[SPAWN_KEY] = _ChildLayer()


def remove_marker() -> None:
    multiprocessing.current_process()._config.pop(SPAWN_KEY, None)

"""Make CrypTen 0.4.1 import and work on current PyTorch (2.9 and newer).

``import pricure_crypten`` installs an import hook (:func:`install_import_hook`)
that applies the patches when crypten is first imported, by anyone; the
package's own CrypTen modules import it through
:mod:`pricure_crypten.mpc._crypten`, which calls :func:`apply`. Importing the
package alone loads neither torch's ONNX internals nor crypten. Every patch is
scoped and idempotent, and does nothing on a torch that does not need it:

1. ``onnx-registration-alias``: crypten's ONNX converter imports
   ``torch.onnx._internal.registration``, which torch 2.9 moved to
   ``torch.onnx._internal.torchscript_exporter.registration``. We register the
   new module under the old name in ``sys.modules`` (only when the old name
   does not import and the new one does). Nothing of torch is changed.
2. ``from-pytorch-torchscript-exporter``: ``crypten.nn.from_pytorch`` calls
   ``torch.onnx.export``, which since torch 2.9 defaults to the dynamo
   exporter (that needs ``onnxscript`` and emits graphs crypten cannot read).
   We replace crypten's private helper ``_export_pytorch_model`` by one that
   passes ``dynamo=False``. ``torch.onnx.export`` itself is untouched, so a
   user's own exports keep torch's defaults.
3. ``from-onnx-identity``: the TorchScript exporter de-duplicates equal
   parameters and buffers (two fresh BatchNorms: ``running_var`` equals
   ``weight``) into ``Identity`` nodes, which crypten's converter rejects. We
   wrap crypten's private ``_to_crypten`` so that it first rewrites a copy of
   the ONNX graph: an ``Identity`` of an initializer becomes its own
   initializer (a copy of the value under the exporter's name, so every
   PyTorch parameter stays a separate CrypTen parameter), any other
   ``Identity`` is bypassed. Applies to ``from_pytorch`` and ``from_onnx``.
4. ``load-allowlist``: ``torch.load`` defaults to ``weights_only=True`` since
   torch 2.6 and rejects CrypTen's pickled objects, which breaks
   ``crypten.load``, ``crypten.load_from_party`` and the tuple provider's
   ``load_cache``. We wrap these three loaders so that, while they run, torch's
   restricted unpickler also accepts CrypTen's own tensor, encoder and
   ``crypten.nn`` module classes, torch's module containers, and the classes
   CrypTen's own allow-list accepts (:func:`crypten.common.serial.register_safe_class`,
   plus ``model_class`` of ``load_from_party``). ``weights_only`` stays on:
   a file is never unpickled with arbitrary globals, and ``torch.load``
   outside these loaders is unchanged. The allow-list is torch's
   process-wide one, scoped by time: another thread's ``torch.load`` that runs
   while a CrypTen loader runs also accepts these classes. Security: a loaded
   file still decides the values of the shares, parameters and attributes of
   the objects it builds, so load only files you trust; a caller who passes
   ``load_closure=pickle.load`` or ``torch.load(..., weights_only=False)``
   opts into arbitrary code execution on that file, as before.
5. ``spawned-children-get-layer`` (applied on ``import pricure_crypten``, not
   on ``import crypten``): a child started with the ``spawn`` or
   ``forkserver`` method unpickles its target before it runs any of our code,
   and a target that lives in crypten (``crypten.mpc.run_multiprocess``'s
   launcher, CrypTen's test harness) imports crypten first. We put a small
   marker in ``multiprocessing.current_process()._config`` (CPython's
   per-process settings that every child inherits; private, so
   ``tests/test_compat.py`` checks that it still arrives before the target),
   which a child unpickles after it has restored the parent's ``sys.path``;
   unpickling it imports :mod:`pricure_crypten`, which installs the import
   hook. Only children of a process that imported :mod:`pricure_crypten`
   get it. Forked children inherit the layer anyway.

:func:`applied_patches` tells which patches are in force in this process.
Files: ``onnx.py`` (patches 1 to 3), ``loading.py`` (4), ``spawn.py`` (5); this
module applies them and holds the import hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

from .loading import crypten_safe_globals, patch_loaders  # noqa: F401  (public helpers of patch 4)
from .onnx import (  # noqa: F401  (public helpers of patches 1 to 3)
    export_needs_torchscript_flag,
    patch_from_pytorch_exporter,
    patch_identity_nodes,
    patch_onnx_registration,
    remove_identity_nodes,
)
from .spawn import put_marker, remove_marker

_applied: list[str] = []


def _apply_spawn_marker() -> None:
    put_marker()
    if "spawned-children-get-layer" not in _applied:
        _applied.append("spawned-children-get-layer")


_ONNX_CONVERTER = "crypten.nn.onnx_converter"


def _apply_registration_alias() -> None:
    if "onnx-registration-alias" not in _applied and patch_onnx_registration():
        _applied.append("onnx-registration-alias")


def _apply_exporter_patch(onnx_converter: Any) -> None:
    import torch

    if patch_from_pytorch_exporter(onnx_converter, torch):
        _applied.append("from-pytorch-torchscript-exporter")
    if patch_identity_nodes(onnx_converter):
        _applied.append("from-onnx-identity")


def _apply_load_patch(crypten_module: Any) -> None:
    if patch_loaders(crypten_module):
        _applied.append("load-allowlist")


def apply() -> list[str]:
    """Apply every needed patch, then import crypten. Returns the patches in force."""
    _apply_registration_alias()
    import crypten  # (import only after the alias is in place)
    import crypten.nn.onnx_converter as onnx_converter

    _apply_exporter_patch(onnx_converter)
    _apply_load_patch(crypten)
    _apply_spawn_marker()
    return applied_patches()



class _CryptenImportHook(importlib.abc.MetaPathFinder):
    """Applies the patches when anything imports ``crypten``, so that ``import
    pricure_crypten`` itself stays light (``pricure budget`` never loads CrypTen)
    while ``import pricure_crypten; import crypten`` still works.

    It imports nothing of crypten itself: before ``crypten`` is executed it puts
    the registration alias in place, and it wraps the loaders of ``crypten``
    and ``crypten.nn.onnx_converter`` so that the loader and converter patches
    follow right after each module is executed.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == "crypten":
            _apply_registration_alias()
            then = _apply_load_patch
        elif fullname == _ONNX_CONVERTER:
            then = _apply_exporter_patch
        else:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            then(module)

        spec.loader.exec_module = exec_module  # this module's own loader instance
        return spec


_hook = _CryptenImportHook()


def install_import_hook() -> None:
    """Apply the patches on the first ``import crypten`` (idempotent; nothing to do if already imported)."""
    _apply_spawn_marker()
    if "crypten" in sys.modules:
        apply()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def uninstall_import_hook() -> None:
    """Remove the hook and the marker for new children (patches already applied stay)."""
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    remove_marker()
    if "spawned-children-get-layer" in _applied:
        _applied.remove("spawned-children-get-layer")


def applied_patches() -> list[str]:
    """Names of the patches applied in this process (empty on an older torch)."""
    return list(_applied)

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

:func:`applied_patches` tells which patches are in force in this process.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
from typing import Any

_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"

_applied: list[str] = []


def _module_importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def patch_onnx_registration() -> bool:
    """Alias the moved ONNX registration module. Returns True if it patched."""
    if _module_importable(_OLD_REGISTRATION):
        return False
    if not _module_importable(_NEW_REGISTRATION):
        return False
    sys.modules[_OLD_REGISTRATION] = importlib.import_module(_NEW_REGISTRATION)
    return True


def export_needs_torchscript_flag(export_fn: Any) -> bool:
    """True if ``export_fn`` (torch.onnx.export) defaults to the dynamo exporter."""
    try:
        parameter = inspect.signature(export_fn).parameters.get("dynamo")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is True


def patch_from_pytorch_exporter(onnx_converter: Any, torch_module: Any) -> bool:
    """Make crypten's converter use the TorchScript ONNX exporter.

    ``onnx_converter`` is ``crypten.nn.onnx_converter``. Returns True if patched.
    """
    if getattr(onnx_converter._export_pytorch_model, "_pricure_patched", False):
        return False
    if not export_needs_torchscript_flag(torch_module.onnx.export):
        return False

    def _export_pytorch_model(f, pytorch_model, dummy_input):
        torch_module.onnx.export(
            pytorch_model,
            dummy_input,
            f,
            do_constant_folding=False,
            export_params=True,
            input_names=["input"],
            operator_export_type=torch_module.onnx.OperatorExportTypes.ONNX,
            output_names=["output"],
            opset_version=onnx_converter._OPSET_VERSION,
            dynamo=False,
        )
        return f

    _export_pytorch_model._pricure_patched = True  # type: ignore[attr-defined]
    _export_pytorch_model.__doc__ = onnx_converter._export_pytorch_model.__doc__
    onnx_converter._export_pytorch_model = _export_pytorch_model
    return True


_ONNX_CONVERTER = "crypten.nn.onnx_converter"


def _apply_registration_alias() -> None:
    if "onnx-registration-alias" not in _applied and patch_onnx_registration():
        _applied.append("onnx-registration-alias")


def _apply_exporter_patch(onnx_converter: Any) -> None:
    import torch

    if patch_from_pytorch_exporter(onnx_converter, torch):
        _applied.append("from-pytorch-torchscript-exporter")


def apply() -> list[str]:
    """Apply every needed patch, then import crypten. Returns the patches in force."""
    _apply_registration_alias()
    import crypten  # noqa: F401  (import only after the alias is in place)
    import crypten.nn.onnx_converter as onnx_converter

    _apply_exporter_patch(onnx_converter)
    return applied_patches()


class _CryptenImportHook(importlib.abc.MetaPathFinder):
    """Applies the patches when anything imports ``crypten``, so that ``import
    pricure_crypten`` itself stays light (``pricure budget`` never loads CrypTen)
    while ``import pricure_crypten; import crypten`` still works.

    It imports nothing of crypten itself: before ``crypten`` is executed it puts
    the registration alias in place, and it wraps the loader of
    ``crypten.nn.onnx_converter`` so that the exporter patch follows right after
    that module is executed.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == "crypten":
            _apply_registration_alias()
            return None  # the ordinary finders load crypten
        if fullname != _ONNX_CONVERTER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            _apply_exporter_patch(module)

        spec.loader.exec_module = exec_module  # this module's own loader instance
        return spec


_hook = _CryptenImportHook()


def install_import_hook() -> None:
    """Apply the patches on the first ``import crypten`` (idempotent; nothing to do if already imported)."""
    if "crypten" in sys.modules:
        apply()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def uninstall_import_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def applied_patches() -> list[str]:
    """Names of the patches applied in this process (empty on an older torch)."""
    return list(_applied)

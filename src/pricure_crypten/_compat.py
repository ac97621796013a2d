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
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import multiprocessing
import sys
from typing import Any, Iterator

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


# --- 3. Identity nodes from the exporter ------------------------------------------------


def remove_identity_nodes(onnx_model: Any) -> Any:
    """A copy of ``onnx_model`` (an ``onnx.ModelProto``) without ``Identity`` nodes.

    ``Identity(initializer a) -> b`` becomes an initializer ``b`` holding a copy
    of ``a``; any other ``Identity(a) -> b`` is bypassed (readers of ``b``,
    including the graph output, read ``a``). The model is returned as is when
    it has no ``Identity`` node.
    """
    if not any(node.op_type == "Identity" for node in onnx_model.graph.node):
        return onnx_model
    model = type(onnx_model)()
    model.CopyFrom(onnx_model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type != "Identity":
            kept.append(node)
            continue
        if len(node.input) != 1 or len(node.output) != 1:
            raise ValueError(f"ONNX Identity node {node.name!r} must have one input and one output")
        source, target = renamed.get(node.input[0], node.input[0]), node.output[0]
        if source in initializers:
            copy = graph.initializer.add()
            copy.CopyFrom(initializers[source])
            copy.name = target
            initializers[target] = copy
        else:
            renamed[target] = source
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    for output in graph.output:
        output.name = renamed.get(output.name, output.name)
    del graph.node[:]
    graph.node.extend(kept)
    return model


def patch_identity_nodes(onnx_converter: Any) -> bool:
    """Make crypten's ONNX converter accept ``Identity`` nodes. Returns True if patched."""
    convert = onnx_converter._to_crypten
    if getattr(convert, "_pricure_patched", False):
        return False
    if getattr(getattr(onnx_converter, "module", None), "Identity", None) is not None:
        return False  # a crypten that converts Identity itself

    @functools.wraps(convert)
    def _to_crypten(onnx_model):
        return convert(remove_identity_nodes(onnx_model))

    _to_crypten._pricure_patched = True  # type: ignore[attr-defined]
    onnx_converter._to_crypten = _to_crypten
    return True


# --- 4. crypten's loaders on torch.load(weights_only=True) --------------------------------

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


# --- 5. spawned and forkserver children ------------------------------------------------

_SPAWN_KEY = "pricure_crypten_compat"


class _ChildLayer:
    """Marker in ``multiprocessing.current_process()._config``: a child unpickles it
    (before its target) by importing :mod:`pricure_crypten`, which installs the hook."""

    def __reduce__(self) -> tuple:
        return (_child_layer, ())


def _child_layer() -> _ChildLayer:
    install_import_hook()  # importing this module ran pricure_crypten/__init__ already; idempotent
    return _ChildLayer()


def _apply_spawn_marker() -> None:
    config = multiprocessing.current_process()._config
    if not isinstance(config.get(_SPAWN_KEY), _ChildLayer):
        config[_SPAWN_KEY] = _ChildLayer()
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
    multiprocessing.current_process()._config.pop(_SPAWN_KEY, None)
    if "spawned-children-get-layer" in _applied:
        _applied.remove("spawned-children-get-layer")


def applied_patches() -> list[str]:
    """Names of the patches applied in this process (empty on an older torch)."""
    return list(_applied)

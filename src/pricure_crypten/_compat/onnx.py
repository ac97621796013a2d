"""Patches 1 to 3 of :mod:`pricure_crypten._compat`: crypten's ONNX converter on current torch
(the moved registration module, the TorchScript exporter, the exporter's ``Identity`` nodes)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from typing import Any

_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"


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



"""What crosses the network, and how it is checked: base64 int64 share arrays and npz owner bundles.

No pickle crosses a host: arrays travel as raw little-endian int64 bytes
with an explicit shape, bundles as an ``.npz`` archive read with
``allow_pickle=False`` plus a JSON header (public architecture only). Every
reader checks sizes, dtypes and shapes and raises :class:`WireError` (a
``ValueError``) with one clear line.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from typing import Any

import numpy as np

MAX_QUERY_ROWS = 4096
MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # default upload limit per owner and server
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
LAYER_KINDS = {"linear", "conv2d", "relu", "avgpool2d", "maxpool2d", "flatten", "affine"}


class WireError(ValueError):
    """A malformed message or file; the sender gets this text, the server keeps running."""


class ShapeError(WireError):
    """A well-formed share of the wrong shape or size for this deployment (HTTP 422)."""


def encode_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array, dtype="<i8")
    return {"dtype": "int64", "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(message: Any, *, name: str, max_elements: int = 1 << 24) -> np.ndarray:
    """An int64 array from :func:`encode_array`'s dict; checked, never trusted."""
    if not isinstance(message, dict) or set(message) != {"dtype", "shape", "data"}:
        raise WireError(f"{name} must be an object with keys dtype, shape, data")
    if message["dtype"] != "int64":
        raise WireError(f"{name} must have dtype int64 (a share in CrypTen's ring), got {message['dtype']!r}")
    shape = message["shape"]
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 5
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise WireError(f"{name}: shape must be a list of 1 to 5 positive integers, got {shape!r}")
    count = int(np.prod(shape))
    if count > max_elements:
        raise WireError(f"{name} has {count} elements, more than the limit {max_elements}")
    if not isinstance(message["data"], str):
        raise WireError(f"{name}: data must be a base64 string")
    try:
        raw = base64.b64decode(message["data"], validate=True)
    except ValueError:
        raise WireError(f"{name}: data is not valid base64") from None
    if len(raw) != 8 * count:
        raise WireError(f"{name}: {len(raw)} bytes of data do not match shape {shape} of int64")
    return np.frombuffer(raw, dtype="<i8").reshape(shape).astype(np.int64)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def bundle_to_bytes(bundle: Any, *, input_shape: tuple[int, ...], num_classes: int) -> bytes:
    """An :class:`~pricure_crypten.parties.owner.OwnerBundle` as npz bytes (public header + int64 shares)."""
    header = {"format": "pricure-bundle/1", "input_shape": list(input_shape), "num_classes": int(num_classes),
              "layers": [{"kind": l.kind, "options": [[k, v] for k, v in l.options], "params": len(l.params)}
                         for l in bundle.layers]}
    arrays = {f"p{i}_{j}": np.asarray(p, dtype=np.int64) for i, l in enumerate(bundle.layers)
              for j, p in enumerate(l.params)}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def bundle_from_bytes(data: bytes, *, owner: str, max_bytes: int = MAX_BUNDLE_BYTES) -> tuple[Any, tuple, int]:
    """Parse and check an uploaded bundle -> (bundle, input shape, classes).

    The owner is the authenticated one, never the file's word.
    """
    from ...mpc.layers import LayerSpec, specs_output_shape
    from ..owner import OwnerBundle

    if len(data) > max_bytes:
        raise WireError(f"the bundle has {len(data)} bytes, more than the limit {max_bytes}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise WireError(f"the bundle is not a readable share file (truncated or corrupt?): {error}") from None
    if "header" not in files or files["header"].dtype != np.uint8:
        raise WireError("the bundle has no header")
    try:
        header = json.loads(files.pop("header").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("the bundle's header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != "pricure-bundle/1" \
            or not isinstance(header.get("layers"), list) or not header["layers"]:
        raise WireError("the bundle's header is not a pricure-bundle/1 header with layers")
    shape, classes = header.get("input_shape"), header.get("num_classes")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
            or not isinstance(classes, int) or isinstance(classes, bool) or classes < 2):
        raise WireError("the bundle's header needs input_shape (positive integers) and num_classes >= 2")
    layers = []
    for i, layer in enumerate(header["layers"]):
        if not isinstance(layer, dict) or layer.get("kind") not in LAYER_KINDS \
                or not isinstance(layer.get("params"), int) or not 0 <= layer["params"] <= 2 \
                or not isinstance(layer.get("options"), list):
            raise WireError(f"layer {i} of the bundle is malformed")
        try:
            options = tuple((str(k), _tuples(v)) for k, v in layer["options"])
        except (TypeError, ValueError):
            raise WireError(f"layer {i}: options must be [name, value] pairs") from None
        params = []
        for j in range(layer["params"]):
            array = files.pop(f"p{i}_{j}", None)
            if array is None:
                raise WireError(f"layer {i}: parameter {j} is missing")
            if array.dtype != np.int64:
                raise WireError(f"layer {i}: parameter {j} must be int64 shares, got {array.dtype}")
            params.append(array)
        layers.append(LayerSpec(layer["kind"], options, tuple(params)))
    if files:
        raise WireError(f"the bundle has unexpected entries: {sorted(files)[:5]}")
    try:  # a dry run on the parameters' shapes: a model that cannot run is refused here, not mid-MPC
        produced = specs_output_shape(layers, tuple(shape))
    except ValueError as error:
        raise WireError(f"the model's layers do not fit together: {error}") from None
    if produced != (classes,):
        raise WireError(f"the model maps inputs of shape {tuple(shape)} to outputs of shape {produced}, "
                        f"not ({classes},) logits")
    return OwnerBundle(owner, tuple(l.signature for l in layers), tuple(layers)), tuple(shape), classes

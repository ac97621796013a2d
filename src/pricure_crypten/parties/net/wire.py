"""What crosses the network, and how it is checked: base64 int64 share arrays and npz owner bundles.

No pickle crosses a host: arrays travel as raw little-endian int64 bytes
with an explicit shape, bundles as an ``.npz`` archive (``np.savez``, entries
stored uncompressed) plus a JSON header (public architecture only). Every
reader checks sizes, dtypes and shapes BEFORE it allocates anything derived
from them, and raises :class:`WireError` (a ``ValueError``) with one clear
line. An uploaded bundle is read entry by entry from the upload itself:
compressed entries (deflate, bzip2, lzma) are refused, so nothing is ever
decompressed and the memory a bundle costs is bounded by its size; declared
shapes, parameter counts and the shape dry run are capped by
:class:`BundleLimits`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_QUERY_ROWS = 4096
MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # default upload limit per owner and server
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_CLASSES = 100_000
_COMPRESSION = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


@dataclass(frozen=True)
class BundleLimits:
    """What a server accepts in one owner's bundle (``pricure serve`` flags set the first ones).

    Attributes:
        max_bytes: the upload's size.
        max_params: int64 share elements over all parameters.
        max_input_elements: elements of one example (the declared input shape).
        max_activation: elements of any layer's output for one example (bounds the MPC's memory per row).
        max_layers: layers in the model.
        max_dim: any single dimension of a declared shape.
        max_header_bytes: the JSON header.
    """

    max_bytes: int = MAX_BUNDLE_BYTES
    max_params: int = 1 << 23
    max_input_elements: int = 1 << 20
    max_activation: int = 1 << 20
    max_layers: int = 64
    max_dim: int = 1 << 16
    max_header_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BundleLimits.{name} must be a positive int, got {value!r}")


class WireError(ValueError):
    """A malformed message or file; the sender gets this text, the server keeps running."""


class ShapeError(WireError):
    """A well-formed share of the wrong shape or size for this deployment (HTTP 422)."""


class TooManyRequests(RuntimeError):
    """A client is over its cap of pending requests or rows on this server (HTTP 429); nothing was charged."""


def loads_json(body: bytes, *, what: str = "the body") -> Any:
    """JSON from untrusted bytes: :class:`WireError` for anything that is not (too deep included)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise WireError(f"{what} is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise WireError(f"{what} is not JSON") from None


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
        raise WireError(f"{name}: shape must be a list of 1 to 5 positive integers, got {str(shape)[:100]}")
    count = math.prod(shape)  # exact (Python ints): a shape overflowing int64 is just too large
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


def _zip_entries(data: bytes, limit: int) -> None:
    """Refuse an archive declaring more than ``limit`` entries before zipfile builds one object per entry."""
    eocd = b"PK\x05\x06"
    at = len(data) - 22 if data[-22:-18] == eocd else data.rfind(eocd, max(0, len(data) - 22 - 65535))
    if at < 0:
        raise WireError("the bundle is not a readable share file (truncated or corrupt?): no zip directory")
    _, _, _, entries, total, size, _, _ = struct.unpack("<4s4H2LH", data[at:at + 22])
    if max(entries, total) > limit or size > 1024 * limit:
        raise WireError(f"the bundle declares {max(entries, total)} entries, more than the {limit} its layers "
                        "can have")


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, dtype: str, budget: int, what: str) -> np.ndarray:
    """One ``.npy`` entry of ``dtype`` with at most ``budget`` elements, read from the upload itself."""
    if info.flag_bits & 0x1:
        raise WireError(f"{what} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        method = _COMPRESSION.get(info.compress_type, f"method {info.compress_type}")
        raise WireError(f"{what} is compressed ({method}); only uncompressed entries (as np.savez writes "
                        "them) are accepted")
    if info.file_size != info.compress_size:
        raise WireError(f"{what}: its stored and declared sizes differ")
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, found = reader(handle, max_header_size=1024)
            if found != np.dtype(dtype) or fortran or not isinstance(shape, tuple):
                raise WireError(f"{what} must be a C-ordered {np.dtype(dtype)} array, got {found}")
            if len(shape) > 5 or not all(isinstance(d, int) and d >= 1 for d in shape):
                raise WireError(f"{what} has the shape {str(shape)[:100]}; expected 1 to 5 positive dimensions")
            count = math.prod(shape)
            if count > budget:
                raise WireError(f"{what} declares {count} elements, more than the {budget} left within the "
                                "server's limit on parameters")
            nbytes = count * np.dtype(dtype).itemsize
            raw = handle.read(nbytes)
            if len(raw) != nbytes or handle.read(1):
                raise WireError(f"{what}: its data does not match its shape {shape}")
    except WireError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, SyntaxError) as error:
        raise WireError(f"{what} is not a readable array (truncated or corrupt?): {error}") from None
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _positive_ints(value: Any, *, length: tuple[int, int], high: int) -> bool:
    return (isinstance(value, list) and length[0] <= len(value) <= length[1]
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high for v in value))


def bundle_from_bytes(data: bytes, *, owner: str, limits: BundleLimits = BundleLimits()) -> tuple[Any, tuple, int]:
    """Parse and check an uploaded bundle completely -> (bundle, input shape, classes).

    Nothing derived from the upload is allocated before it is checked against
    ``limits``; the model is refused unless every layer fits
    :data:`~pricure_crypten.mpc.layers.LAYER_SCHEMA` and the shape dry run
    (on torch's meta device) maps the input shape to ``(classes,)`` logits.
    The owner is the authenticated one, never the file's word.
    """
    from ...mpc.layers import LAYER_SCHEMA, LayerSpec, check_layer, specs_output_shape
    from ..owner import OwnerBundle

    if len(data) > limits.max_bytes:
        raise WireError(f"the bundle has {len(data)} bytes, more than the limit {limits.max_bytes}")
    _zip_entries(data, 1 + 2 * limits.max_layers)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, struct.error) as error:
        raise WireError(f"the bundle is not a readable share file (truncated or corrupt?): {error}") from None
    if "header.npy" not in infos:
        raise WireError("the bundle has no header")
    raw = _read_npy(archive, infos.pop("header.npy"), dtype="|u1", budget=limits.max_header_bytes,
                    what="the bundle's header")
    header = loads_json(raw.tobytes(), what="the bundle's header")
    if not isinstance(header, dict) or header.get("format") != "pricure-bundle/1" \
            or not isinstance(header.get("layers"), list) or not header["layers"]:
        raise WireError("the bundle's header is not a pricure-bundle/1 header with layers")
    extra = sorted(set(header) - {"format", "input_shape", "num_classes", "layers"})
    if extra:
        raise WireError(f"the bundle's header has unknown keys: {extra[:5]}")
    if len(header["layers"]) > limits.max_layers:
        raise WireError(f"the model has {len(header['layers'])} layers, more than the limit {limits.max_layers}")
    shape, classes = header.get("input_shape"), header.get("num_classes")
    if (not _positive_ints(shape, length=(1, 4), high=limits.max_dim)
            or not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= MAX_CLASSES):
        raise WireError(f"the bundle's header needs input_shape (1 to 4 integers in [1, {limits.max_dim}]) and "
                        f"num_classes in [2, {MAX_CLASSES}]")
    if math.prod(shape) > limits.max_input_elements:
        raise WireError(f"the input shape {shape} has {math.prod(shape)} elements per example, more than the "
                        f"limit {limits.max_input_elements}")
    kinds = []
    for i, layer in enumerate(header["layers"]):
        if not isinstance(layer, dict) or set(layer) != {"kind", "options", "params"}:
            raise WireError(f"layer {i} of the bundle is malformed (needs exactly kind, options, params)")
        if layer["kind"] not in LAYER_SCHEMA:
            raise WireError(f"layer {i}: unknown layer kind {str(layer['kind'])[:40]!r} "
                            f"(known: {', '.join(LAYER_SCHEMA)})")
        expected = len(LAYER_SCHEMA[layer["kind"]]["params"])
        if layer["params"] != expected or isinstance(layer["params"], bool):
            raise WireError(f"layer {i} ({layer['kind']}): must have {expected} parameters, got "
                            f"{str(layer['params'])[:20]}")
        if not isinstance(layer["options"], list) or not all(
                isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) for o in layer["options"]):
            raise WireError(f"layer {i}: options must be [name, value] pairs")
        # a pair becomes a tuple; anything else stays as it is and check_layer refuses it by name
        kinds.append((layer["kind"], tuple((k, tuple(v) if isinstance(v, list) else v)
                                           for k, v in layer["options"]), expected))
    wanted = {f"p{i}_{j}.npy" for i, (_, _, n) in enumerate(kinds) for j in range(n)}
    unexpected = sorted(set(infos) - wanted)
    if unexpected:
        raise WireError(f"the bundle has unexpected entries: {unexpected[:5]}")
    layers, budget = [], limits.max_params
    for i, (kind, options, count) in enumerate(kinds):
        params = []
        for j in range(count):
            info = infos.get(f"p{i}_{j}.npy")
            if info is None:
                raise WireError(f"layer {i}: parameter {j} is missing")
            array = _read_npy(archive, info, dtype="<i8", budget=budget, what=f"layer {i}: parameter {j}")
            budget -= array.size
            params.append(array.astype(np.int64))
        layers.append(LayerSpec(kind, options, tuple(params)))
    try:  # schema and shapes: a model that cannot run is refused here, not mid-MPC
        for i, layer in enumerate(layers):
            check_layer(layer, f"layer {i}")
    except ValueError as error:
        raise WireError(str(error)) from None
    try:
        produced = specs_output_shape(layers, tuple(shape), max_activation=limits.max_activation)
    except ValueError as error:
        raise WireError(f"the model's layers do not fit together: {error}") from None
    if produced != (classes,):
        raise WireError(f"the model maps inputs of shape {tuple(shape)} to outputs of shape {produced}, "
                        f"not ({classes},) logits")
    return OwnerBundle(owner, tuple(l.signature for l in layers), tuple(layers)), tuple(shape), classes

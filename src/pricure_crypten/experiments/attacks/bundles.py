"""Hostile model bundles, as a malicious owner would upload them (for the hardening tests and ``benchmarks.hostile``).

Each is the raw bytes of a ``PUT /v1/model`` body in the bundle format of
:mod:`pricure_crypten.parties.net.wire`, built or edited by hand (not only by
the library's own writer) so that it can break the rules the server must
enforce. The server sees only these bytes; nothing here runs on a server.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from ...parties.net.wire import bundle_to_bytes

FORMAT = "pricure-bundle/1"


def _header_bytes(header: dict) -> bytes:
    raw = io.BytesIO()
    np.lib.format.write_array(raw, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    return raw.getvalue()


def zip_bomb(*, method: int, inflated: int, features: int, classes: int) -> bytes:
    """A bundle whose one parameter entry inflates to ``inflated`` bytes of zeros.

    ``method`` is ``zipfile.ZIP_DEFLATED`` or ``zipfile.ZIP_BZIP2`` (the latter
    is not what clients write; numpy would accept it). The upload is about
    ``inflated / 1000`` (deflate) or far less (bzip2).
    """
    if method not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        raise ValueError(f"method must be zipfile.ZIP_DEFLATED or zipfile.ZIP_BZIP2, got {method!r}")
    if inflated < 1 << 20:
        raise ValueError(f"inflated must be at least 1 MiB, got {inflated}")
    header = {"format": FORMAT, "input_shape": [features], "num_classes": classes,
              "layers": [{"kind": "linear", "options": [], "params": 2}]}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as archive:
        archive.writestr("header.npy", _header_bytes(header), compress_type=zipfile.ZIP_STORED)
        with archive.open("p0_0.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<i8", "fortran_order": False,
                                                          "shape": (inflated // 8,)})
            chunk = bytes(1 << 20)
            for _ in range(inflated // len(chunk)):
                handle.write(chunk)
    return out.getvalue()


def huge_input_shape(*, classes: int, side: int = 8192, weight_columns: int = 1024) -> bytes:
    """A small bundle declaring an input of shape (1, side, side).

    A dry run that allocates such an input costs side**2 * 4 bytes (256 MiB at the default side).
    """
    header = {"format": FORMAT, "input_shape": [1, side, side], "num_classes": classes,
              "layers": [{"kind": "flatten", "options": [], "params": 0},
                         {"kind": "linear", "options": [], "params": 2}]}
    out = io.BytesIO()
    np.savez(out, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
             p1_0=np.zeros((classes, weight_columns), np.int64), p1_1=np.zeros(classes, np.int64))
    return out.getvalue()


def unknown_option(owner: Any, *, rank: int, servers: int = 2, features: int, classes: int) -> bytes:
    """``owner``'s real bundle for server ``rank`` with an option its first layer does not have (``groups``).

    Before the closed layer schema, every server accepted it and every MPC
    party then died at load, restarting forever (a crash loop for everyone).
    """
    data = bundle_to_bytes(owner.share(num_servers=servers)[rank], input_shape=(features,), num_classes=classes)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(arrays.pop("header").tobytes())
    header["layers"][0]["options"] = [["groups", 2]]
    out = io.BytesIO()
    np.savez(out, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return out.getvalue()

"""Hostile model bundles, as a malicious owner would upload them (for the hardening tests and ``benchmarks.hostile``).

Each is the raw bytes of a ``PUT /v1/model`` body in the bundle format of
:mod:`pricure_crypten.parties.net.wire`, built by hand (not by the library's
own writer) so that it can break the rules the server must enforce. The
server sees only these bytes; nothing here runs on a server.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np

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
    """A small bundle declaring an input of shape (1, side, side) (a dry run that allocates it costs side**2 * 4 bytes)."""
    header = {"format": FORMAT, "input_shape": [1, side, side], "num_classes": classes,
              "layers": [{"kind": "flatten", "options": [], "params": 0},
                         {"kind": "linear", "options": [], "params": 2}]}
    out = io.BytesIO()
    np.savez(out, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
             p1_0=np.zeros((classes, weight_columns), np.int64), p1_1=np.zeros(classes, np.int64))
    return out.getvalue()

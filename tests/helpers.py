"""Shared test helpers (not a test module)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "medmnist"


def run_fresh_python(code: str, timeout: float = 600) -> dict:
    """Run ``code`` in a fresh interpreter (no torch thread pool, safe to fork) and
    return the JSON object it prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def constant_owners(votes: list[int], num_classes: int) -> list:
    """Owners whose logits do not depend on the query: owner i always votes ``votes[i]``
    (fixed owner outputs, for distribution tests of the noisy aggregation)."""
    import torch
    from torch import nn

    from pricure_crypten import ModelOwner

    owners = []
    for i, label in enumerate(votes):
        layer = nn.Linear(2, num_classes)
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), num_classes).float() * 4.0)
        owners.append(ModelOwner(name=f"o{i}", model=nn.Sequential(layer), input_shape=(2,), num_classes=num_classes))
    return owners


def cli_exit_code(argv: list[str]) -> int:
    """Run ``pricure ARGV`` in this process; its exit status (argparse refusals exit via SystemExit)."""
    from pricure_crypten.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def plain_forward(specs, x):
    """Plaintext float64 evaluation of converted layer specs (torch.nn.functional; independent of the model code)."""
    import torch
    import torch.nn.functional as F

    x = x.double()
    for spec in specs:
        params = [torch.from_numpy(p) for p in spec.params]
        if spec.kind == "linear":
            x = F.linear(x, *params)
        elif spec.kind == "conv2d":
            x = F.conv2d(x, *params, stride=spec.option("stride"), padding=spec.option("padding"),
                         dilation=spec.option("dilation"))
        elif spec.kind == "avgpool2d":
            x = F.avg_pool2d(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
        elif spec.kind == "maxpool2d":
            x = F.max_pool2d(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
        elif spec.kind == "flatten":
            x = x.flatten(1)
        elif spec.kind == "relu":
            x = x.clamp(min=0)
        elif spec.kind == "square":
            x = x * x
        elif spec.kind == "affine":
            shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
            x = x * params[0].reshape(shape) + params[1].reshape(shape)
        else:
            raise AssertionError(f"unexpected kind {spec.kind}")
    return x


def tls_closed(sock) -> bool:
    """Whether the server has closed this TLS client socket (a non-blocking peek: EOF or a reset)."""
    import socket
    import ssl

    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except OSError:
        return True

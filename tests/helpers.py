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

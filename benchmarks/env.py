"""The environment a benchmark ran in, for ``environment.json``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def environment(argv: Sequence[str]) -> dict[str, Any]:
    """Versions, CPU count, platform, git commit and the command line of this run."""
    import crypten
    import numpy
    import torch

    import pricure_crypten

    status = _git("status", "--porcelain")
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "crypten": getattr(crypten, "__version__", "unknown"),
        "numpy": numpy.__version__,
        "pricure_crypten": pricure_crypten.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads_parent": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *argv]),
    }

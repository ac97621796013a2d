"""The environment a benchmark ran in, for ``environment.json``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@dataclass(frozen=True)
class RunStart:
    """What a result file records about its run, taken when the run starts: the checkout that ran
    (commit, uncommitted changes to tracked files) and the machine's load; :meth:`machine` adds the
    load now and the wall time since."""

    commit: Optional[str]
    dirty: Optional[bool]
    load: float
    clock: float

    @classmethod
    def now(cls) -> "RunStart":
        status = _git("status", "--porcelain", "--untracked-files=no")
        return cls(commit=_git("rev-parse", "HEAD"), dirty=None if status is None else bool(status),
                   load=os.getloadavg()[0], clock=time.perf_counter())

    def checkout(self) -> dict[str, Any]:
        return {"git_commit": self.commit, "git_dirty": self.dirty}

    def stamp(self, *, finished: bool = True) -> dict[str, str]:
        """``date`` (UTC) and ``machine``: cores, the load before and after (or now), the wall seconds."""
        when, wall = ("after", "s wall") if finished else ("now", "s wall so far")
        return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
                            f"{self.load:.1f} before, {os.getloadavg()[0]:.1f} {when}), one host, loopback; "
                            f"{time.perf_counter() - self.clock:.0f} {wall}")}


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

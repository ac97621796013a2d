"""Peak resident set sizes (RSS), in MiB.

Server and dealer peaks are read from ``/proc/<pid>/status`` (``VmHWM``, the
process's own high-water mark) while the ensemble still runs, so they are
per point (Linux only; None elsewhere). Two cumulative figures are recorded
with every point as well: ``RUSAGE_SELF`` (the parent, which holds the
owners' plaintext models and the queries) and ``RUSAGE_CHILDREN`` (the
largest server or dealer process reaped so far in this run).
"""

from __future__ import annotations

import resource
import sys
from typing import Iterable

_KIB_PER_UNIT = 1 / 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux


def parent_peak_mib() -> float:
    """Peak RSS of this (the calling) process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB_PER_UNIT / 1024


def children_peak_mib() -> float:
    """Peak RSS of the largest terminated child process so far."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _KIB_PER_UNIT / 1024


def process_peak_mib(pid: int) -> float | None:
    """``VmHWM`` of a live process, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def largest_peak_mib(pids: Iterable[int | None]) -> float | None:
    """The largest ``VmHWM`` among ``pids`` (None entries are skipped; None if none readable)."""
    peaks = [peak for pid in pids if pid is not None and (peak := process_peak_mib(pid)) is not None]
    return max(peaks) if peaks else None


def cumulative_peaks() -> dict[str, float]:
    """The two cumulative figures recorded with every point (see the module docstring)."""
    return {"parent_peak_mib": parent_peak_mib(), "children_peak_mib": children_peak_mib()}

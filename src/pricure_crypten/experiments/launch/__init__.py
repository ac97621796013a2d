"""The one launcher: parties as real processes on a pluggable topology (loopback or network namespaces).

* :class:`Deployment` (``launcher.py``): N ``pricure serve`` + ``pricure dealer`` processes,
  credentials, readiness, teardown; used by ``pricure demo --deployment processes``, the
  benchmarks (``benchmarks.networked``, ``benchmarks.netns``) and the deployment tests.
* :class:`Loopback`, :class:`Namespaces` (``topology.py``): where the parties live.
* :func:`run_parties` (``functions.py``): a function run inside N CrypTen parties (layer tests).
"""

from .functions import run_parties
from .launcher import READY_BOUND, WAIT, Deployment, pricure
from .topology import Loopback, Namespaces, free_port, namespace_names, namespaces_unavailable

__all__ = ["Deployment", "Loopback", "Namespaces", "READY_BOUND", "WAIT", "free_port", "namespace_names",
           "namespaces_unavailable", "pricure", "run_parties"]


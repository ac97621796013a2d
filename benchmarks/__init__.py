"""Benchmarks of pricure-crypten: ``python -m benchmarks.run`` (see :mod:`benchmarks.run`).

Modules, one concern each: :mod:`~benchmarks.workloads` (owners and queries),
:mod:`~benchmarks.measure` (timing one private or plaintext configuration),
:mod:`~benchmarks.memory` (peak RSS), :mod:`~benchmarks.netmodel` (the
network MODEL), :mod:`~benchmarks.suites` (the owners/servers/batch sweeps),
:mod:`~benchmarks.privacy` (accuracy vs epsilon), :mod:`~benchmarks.report`
and :mod:`~benchmarks.plots` (CSV, summary.md, PNG) and :mod:`~benchmarks.env`
(environment.json). Nothing here starts work at import time: the library
spawns its server processes, so all work runs under ``__main__``.
"""

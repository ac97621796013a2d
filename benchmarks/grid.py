"""The sweep grids: every suite's points, for the full run and for ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Grid:
    """The points of every suite, and how often each point is measured."""

    owners: tuple[int, ...]
    servers: tuple[int, ...]
    batches: tuple[int, ...]
    datasets: tuple[str, ...]
    aggregations: tuple[str, ...]
    mechanisms: tuple[str, ...]
    epsilons: tuple[float, ...]
    repeats: int
    naive_max_owners: int
    owners_batch: int = 8  # batch size of the owners and servers sweeps
    fixed_owners: int = 10  # K of the servers and batch sweeps
    fixed_servers: int = 2  # N of the owners and batch sweeps


INF = float("inf")
FULL = Grid(
    owners=(1, 2, 5, 10, 20, 50, 100), servers=(2, 3, 4), batches=(1, 8, 32, 128),
    datasets=("breast-cancer", "pneumoniamnist"), aggregations=("vote", "softmax"),
    mechanisms=("laplace", "gaussian"), epsilons=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, INF),
    repeats=3, naive_max_owners=50,
)
# the CI smoke test's grid (tests/test_benchmarks.py): every suite and check, the fewest and smallest ensembles
# (K = 8 still shows the batched rounds flat while the naive ones grow from K = 1 to 3; the servers sweep runs
# N = 3 only: every other suite runs N = 2)
QUICK = Grid(
    owners=(1, 3, 8), servers=(3,), batches=(1, 8), datasets=("breast-cancer",),
    aggregations=("vote",), mechanisms=("laplace",), epsilons=(0.5, INF),
    repeats=1, naive_max_owners=3, fixed_owners=4,
)


def select(*, quick: bool, repeats: int | None = None, naive_max_owners: int | None = None) -> Grid:
    """The full or quick grid, with the command line's overrides."""
    grid = QUICK if quick else FULL
    overrides = {"repeats": repeats, "naive_max_owners": naive_max_owners}
    return replace(grid, **{key: value for key, value in overrides.items() if value is not None})

"""The settings of one demo run: the library's own configuration objects plus which data and how much.

Light on purpose (no torch): ``pricure demo --help`` and the CLI's flag
defaults read these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._validation import check_int
from ..config import Aggregation, Cluster


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (what ``pricure demo`` builds from its flags).

    The privacy and topology settings are the library's own objects
    (:class:`~pricure_crypten.config.Aggregation`, :class:`~pricure_crypten.config.Cluster`);
    the rest says which data, how many owners, and how many queries.
    """

    dataset: str = "breast-cancer"
    data_root: str | None = None
    download: bool = False
    owners: int = 10
    partition: str = "dirichlet"
    alpha: float = 1.0
    queries: int = 100
    batch_size: int = 25
    seed: int = 0
    quiet: bool = False
    aggregation: Aggregation = field(default_factory=Aggregation)
    cluster: Cluster = field(default_factory=Cluster)
    deployment: str = "library"  # or "processes": every party its own pricure serve/dealer process

    def __post_init__(self) -> None:
        """Cheap checks before anything is loaded or trained."""
        for name in ("owners", "queries", "batch_size"):
            check_int(getattr(self, name), name=f"--{name.replace('_', '-')}", minimum=1)
        if not isinstance(self.aggregation, Aggregation):
            raise TypeError(f"aggregation must be an Aggregation, not {type(self.aggregation).__name__}")
        if not isinstance(self.cluster, Cluster):
            raise TypeError(f"cluster must be a Cluster, not {type(self.cluster).__name__}")
        if self.deployment not in ("library", "processes"):
            raise ValueError(f"--deployment must be 'library' or 'processes', got {self.deployment!r}")

"""What a caller gets back, in both modes: :class:`Prediction` and its :class:`Cost`, :class:`OfflineCost`.

The cost figures are totalled in one place: :class:`ServerCost` is one
server's share of the MPC batches that carried a request (summed over the
batches, :func:`~.packing.split_batch`), and :meth:`Cost.of` combines the
servers' (rounds and seconds: the slowest server; bytes and decodes: summed).
The library mode and the networked client both build their :class:`Cost` so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ServerCost:
    """One server's public figures for one request: its part of the batches that carried the request.

    ``bytes`` is pro-rated to the request's rows (a packed batch carries other
    requests' rows too); ``batch_rows`` is the largest batch's row count.
    """

    rounds: int = 0
    bytes: float = 0.0
    seconds: float = 0.0
    decodes: int = 0
    dealer_requests: int = 0
    batches: int = 0
    batch_rows: int = 0
    outcome_reveals: int = 0

    def __add__(self, other: "ServerCost") -> "ServerCost":
        return ServerCost(rounds=self.rounds + other.rounds, bytes=self.bytes + other.bytes,
                          seconds=self.seconds + other.seconds, decodes=self.decodes + other.decodes,
                          dealer_requests=self.dealer_requests + other.dealer_requests,
                          batches=self.batches + other.batches, batch_rows=max(self.batch_rows, other.batch_rows),
                          outcome_reveals=self.outcome_reveals + other.outcome_reveals)

    def public(self) -> dict:
        return {"rounds": self.rounds, "bytes": self.bytes, "seconds": self.seconds, "decodes": self.decodes,
                "dealer_requests": self.dealer_requests, "batches": self.batches, "batch_rows": self.batch_rows,
                "outcome_reveals": self.outcome_reveals}

    @classmethod
    def from_public(cls, data: dict) -> "ServerCost":
        """From :meth:`public` (as a server sends it); every figure must be a number."""
        return cls(rounds=int(data["rounds"]), bytes=float(data["bytes"]), seconds=float(data["seconds"]),
                   decodes=int(data["decodes"]), dealer_requests=int(data["dealer_requests"]),
                   batches=int(data["batches"]), batch_rows=int(data["batch_rows"]),
                   outcome_reveals=int(data.get("outcome_reveals", 0)))


@dataclass(frozen=True)
class Cost:
    """What one prediction call cost.

    ``rounds`` and ``mpc_seconds`` are those of the MPC batch(es) that carried
    the call (per server; the slowest server's), ``batches`` how many there
    were and ``batch_queries`` the rows of the largest (other clients' rows
    included, under dynamic batching); ``bytes_sent`` is summed over the
    servers and pro-rated to this call's rows; ``reveals`` counts client
    reconstructions and ``server_decodes`` plaintext decodes on servers (0 by
    design). ``dealer_requests`` counts round trips to the dealer during the
    call (0 when the batch ran from precomputed tuples: a pure online phase).
    ``outcome_reveals`` counts the joint reveals, among the servers, of the
    threshold step's answered bits (answered-only labelling only, one per MPC
    batch; 0 for ``predict``); they are not in ``server_decodes``.
    """

    queries: int
    seconds: float
    mpc_seconds: float
    rounds: int
    bytes_sent: float
    reveals: int
    server_decodes: int
    batches: int = 1
    batch_queries: int = 0
    dealer_requests: int = 0
    outcome_reveals: int = 0

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / self.queries

    @property
    def bytes_per_query(self) -> float:
        return self.bytes_sent / self.queries

    @classmethod
    def of(cls, servers: Sequence[ServerCost], *, queries: int, seconds: float, reveals: int) -> "Cost":
        """Combine the servers' figures for one call (one :class:`ServerCost` per server)."""
        return cls(queries=queries, seconds=seconds, mpc_seconds=max(s.seconds for s in servers),
                   rounds=max(s.rounds for s in servers), bytes_sent=sum(s.bytes for s in servers),
                   reveals=reveals, server_decodes=sum(s.decodes for s in servers),
                   batches=max(s.batches for s in servers), batch_queries=max(s.batch_rows for s in servers),
                   dealer_requests=max(s.dealer_requests for s in servers),
                   outcome_reveals=max(s.outcome_reveals for s in servers))

    @classmethod
    def total(cls, costs: Sequence["Cost"], seconds: float) -> "Cost":
        """Several calls' costs summed (``seconds``: their wall time)."""
        return cls(
            queries=sum(c.queries for c in costs), seconds=seconds, mpc_seconds=sum(c.mpc_seconds for c in costs),
            rounds=sum(c.rounds for c in costs), bytes_sent=sum(c.bytes_sent for c in costs),
            reveals=sum(c.reveals for c in costs), server_decodes=sum(c.server_decodes for c in costs),
            batches=sum(c.batches for c in costs), batch_queries=max((c.batch_queries for c in costs), default=0),
            dealer_requests=sum(c.dealer_requests for c in costs),
            outcome_reveals=sum(c.outcome_reveals for c in costs),
        )


@dataclass(frozen=True)
class Prediction:
    """The client's view of one prediction call: labels (-1 = abstain) and its cost (both modes)."""

    labels: np.ndarray
    cost: Cost


@dataclass(frozen=True)
class OfflineCost:
    """What one precomputation (the offline phase) cost; public figures, the slowest server's.

    ``seconds`` includes ``rehearsal_seconds``, the one-off run on shares of
    zeros that records which tuples a batch of this size needs; ``rounds``
    and ``bytes_sent`` (summed over the servers) are those of the rehearsal
    and of the bulk exchanges with the dealer; ``stock_bytes`` is the largest
    server's stock afterwards (its memory cost), ``tuples`` the tuples dealt.
    """

    rows: int
    batches: int
    seconds: float
    rehearsal_seconds: float
    rounds: int
    bytes_sent: int
    exchanges: int
    tuples: int
    requests_per_batch: int
    stock_bytes: int

    @property
    def stock_bytes_per_query(self) -> float:
        """Offline storage per query on one server, from the stock held for ``batches`` batches."""
        return self.stock_bytes / (self.rows * self.batches) if self.batches else float("nan")

    @classmethod
    def of(cls, replies: Sequence) -> "OfflineCost":
        """From the servers' :class:`~.messages.OfflineReply` (one per server)."""
        return cls(
            rows=int(replies[0].rows), batches=int(replies[0].batches),
            seconds=max(float(r.seconds) for r in replies),
            rehearsal_seconds=max(float(r.rehearsal_seconds) for r in replies),
            rounds=max(int(r.rounds) for r in replies), bytes_sent=sum(int(r.bytes) for r in replies),
            exchanges=max(int(r.exchanges) for r in replies), tuples=max(int(r.tuples) for r in replies),
            requests_per_batch=int(replies[0].requests_per_batch),
            stock_bytes=max(int(r.stock_bytes) for r in replies),
        )

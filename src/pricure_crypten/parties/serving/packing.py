"""Packing requests' rows into MPC batches, and cutting the replies back: pure functions, both modes.

Concatenating shares row-wise is local and a row's result depends only on
that row, so packing changes nothing but the speed. :func:`pack` chooses
which rows of the waiting requests go into the next batch, :func:`gather`
concatenates them, :func:`pad_with_zeros` appends zero rows up to a stocked
batch size, and :func:`split_batch` hands each request exactly its own rows
of the label shares and its part of the public costs (:class:`~.results.ServerCost`).

Who sees what: these functions see shares and public row counts only.
"""

from __future__ import annotations

from typing import Callable, Collection, Sequence

import numpy as np

from .results import ServerCost


def pack(remaining: Sequence[int], capacity: int, *, split: bool = True, merge: bool = True,
         alone: Collection[int] = ()) -> list[tuple[int, int]]:
    """The next batch: ``[(request index, rows taken)]``, in the requests' order.

    Args:
        remaining: rows each waiting request still has, in the agreed order.
        capacity: rows per MPC batch.
        split: a request larger than the room left is split (its first rows
            now, the rest in later batches); otherwise it is skipped and the
            requests after it may still fill the batch (never head-of-line blocking).
        merge: pack several requests into one batch (dynamic batching); False
            takes the first request only.
        alone: indices of requests that must run in a batch of their own
            (their outcome bits are revealed to the servers).
    """
    out: list[tuple[int, int]] = []
    for index, rows in enumerate(remaining):
        if out and (index in alone or out[0][0] in alone):
            break
        if rows > capacity and not split:
            continue
        take = min(rows, capacity)
        out.append((index, take))
        capacity -= take
        if not merge or capacity == 0:
            break
    return out


def gather(parts: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Concatenate one server's share slices of the packed requests (row-wise; local)."""
    return np.concatenate(list(parts), axis=0)


def pad_with_zeros(shares: list[np.ndarray], target: int,
                   zero_shares: Callable[[np.ndarray], Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Append shares of zero rows up to ``target`` rows (their labels are dropped); ``zero_shares(zeros)`` shares them."""
    rows = shares[0].shape[0]
    if target <= rows:
        return shares
    padding = zero_shares(np.zeros((target - rows,) + shares[0].shape[1:], dtype=np.int64))
    return [np.concatenate([s, p]) for s, p in zip(shares, padding)]


def split_batch(rows: Sequence[int], replies: Sequence) -> list[tuple[list[np.ndarray], list[ServerCost]]]:
    """Per packed request (``rows[i]`` of them, in batch order): its label shares and costs, one per server.

    ``replies`` are the servers' :class:`~.messages.BatchReply` for the batch
    (one in the networked mode: this server's). Padding rows, after the
    requests' rows, are dropped. Bytes are pro-rated to the request's rows;
    rounds, seconds and decodes are the batch's.
    """
    total = sum(rows)
    out = []
    offset = 0
    for count in rows:
        shares = [reply.label_share[offset:offset + count] for reply in replies]
        costs = [ServerCost(rounds=int(r.rounds), bytes=int(r.bytes) * count / total, seconds=float(r.seconds),
                            decodes=int(r.decodes), dealer_requests=int(r.dealer_requests), batches=1,
                            batch_rows=total, outcome_reveals=int(r.outcome_reveals)) for r in replies]
        out.append((shares, costs))
        offset += count
    return out


def add_costs(before: Sequence[ServerCost] | None, more: Sequence[ServerCost]) -> list[ServerCost]:
    """Per server, a request's costs so far plus one more batch's."""
    return list(more) if before is None else [a + b for a, b in zip(before, more)]

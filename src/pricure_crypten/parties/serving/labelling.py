"""Private labelling of a pool, in both modes: the result type and the one chunk loop.

``PrivateEnsemble.label`` (library mode) and ``RemoteEnsemble.label``
(networked) cut a client's pool into chunks, ask before each chunk how many
of its rows still fit the client's budget (:mod:`.budget`), run those rows
as one request and stop cleanly at the first row that does not fit:
:func:`label_in_chunks` is that loop, written once; :class:`Labelling` is
what both return.

Who sees what: the loop runs on the client's side and handles the client's
own revealed labels and public figures only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .budget import ACCOUNTING_MODES
from .results import Cost

NOT_SENT = -2
"""The label of a pool row that was never sent (refused for budget, or after a failure): no share of it
left the client, nothing was charged for it, nothing about it was revealed."""

RESERVE_RETRIES = 3  # a chunk that fitted the dry run but not the reservation (a concurrent spend) is re-sized


@dataclass(frozen=True)
class Labelling:
    """The result of ``label()`` (:meth:`PrivateEnsemble.label`, :meth:`RemoteEnsemble.label`): the client's view.

    Attributes:
        labels: (len(pool),) int64: the released label, ``ABSTAIN`` (-1) where
            the mechanism abstained (Confident-GNMax), ``NOT_SENT`` (-2) for a
            row that was never sent.
        answered: (len(pool),) bool: a label was released for the row.
        sent: rows sent through the MPC (always the first ``sent`` rows of the pool).
        refused: rows refused because the next one would not fit the budget
            (never shared, never charged, nothing revealed about them).
        accounting: ``"conservative"`` or ``"answered-only"`` (see :meth:`PrivateEnsemble.label`).
        spent_before / spent_after: the client's TOTAL (epsilon, delta) spent,
            per the ledger's accountant (at the ledger's total delta), before
            and after this call (``None`` without a ledger: nothing is charged).
            Networked: the largest over the servers' own ledgers (each server
            charges its own). Under the ``"rdp-filter"`` accountant this is the
            filter's progress gauge; the guarantee is the ledger's budget.
        batches: MPC batches this call ran (one per chunk of at most ``Batching.max_rows`` rows).
        cost: the summed :class:`Cost` of the chunks (``reveals`` = client reveals, one per chunk;
            ``outcome_reveals`` = the servers' reveals of the answered bits, answered-only only).
        stopped: ``"complete"``, ``"budget"`` (the ledger's budget, or ``budget``, would be exceeded by
            the next row) or ``"error: ..."`` (an MPC failure after some chunks were released; the
            failed chunk was neither revealed nor charged).
    """

    labels: np.ndarray
    answered: np.ndarray
    sent: int
    refused: int
    accounting: str
    spent_before: tuple[float, float] | None
    spent_after: tuple[float, float] | None
    batches: int
    cost: Cost
    stopped: str = "complete"

    @property
    def abstained(self) -> int:
        """Rows sent for which no label was released (Confident-GNMax abstentions)."""
        return int(self.sent - np.count_nonzero(self.answered))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no labels; a non-finite epsilon is written as the string "inf")."""
        def spent(pair: tuple[float, float] | None) -> list | None:
            return None if pair is None else [x if math.isfinite(x) else str(x) for x in pair]

        return {
            "rows": int(self.labels.shape[0]), "sent": self.sent, "answered": int(np.count_nonzero(self.answered)),
            "abstained": self.abstained, "refused": self.refused, "accounting": self.accounting,
            "spent_before": spent(self.spent_before), "spent_after": spent(self.spent_after),
            "batches": self.batches, "reveals": self.cost.reveals, "outcome_reveals": self.cost.outcome_reveals,
            "server_decodes": self.cost.server_decodes, "rounds": self.cost.rounds,
            "bytes_sent": self.cost.bytes_sent, "seconds": self.cost.seconds, "stopped": self.stopped,
        }


def label_in_chunks(
    total: int,
    chunk: int,
    *,
    first: int,
    rows_that_fit: Callable[[int], int],
    run: Callable[[int, int], tuple[np.ndarray, Cost]],
    over_budget: tuple[type[BaseException], ...],
    failure: tuple[type[BaseException], ...],
) -> tuple[np.ndarray, int, str, list[Cost]]:
    """The chunk loop of ``label()``: ``(labels, sent, stopped, chunk costs)``.

    Args:
        total: rows in the pool.
        chunk: rows per chunk at most.
        first: rows of the first chunk (already asked, > 0: the caller refuses a pool whose first row
            does not fit, before any MPC work).
        rows_that_fit: ``rows_that_fit(limit)``: how many of the next ``limit`` rows fit the budget (worst case).
        run: ``run(start, stop)`` shares, computes, charges and reveals rows ``start:stop``: their labels and cost.
        over_budget: errors of ``run`` meaning "refused for budget before any MPC work" (a concurrent
            spend after the dry run): the chunk is re-sized (a few times), then labelling stops ("budget").
        failure: errors of ``run`` meaning the chunk failed (nothing revealed): raised for the first chunk,
            else labelling stops with ``stopped = "error: ..."``.
    """
    labels = np.full(total, NOT_SENT, dtype=np.int64)
    costs: list[Cost] = []
    sent, stopped, retries = 0, "complete", 0
    allowed: Optional[int] = first
    while sent < total:
        allowed = allowed if allowed is not None else rows_that_fit(min(chunk, total - sent))
        if allowed == 0:
            stopped = "budget"
            break
        try:
            chunk_labels, cost = run(sent, sent + allowed)
        except over_budget:  # another process spent meanwhile: ask again (a few times)
            retries += 1
            if retries > RESERVE_RETRIES:
                stopped = "budget"
                break
            allowed = None
            continue
        except failure as error:
            if not costs:
                raise
            stopped = f"error: {error}"
            break
        labels[sent:sent + allowed] = chunk_labels
        costs.append(cost)
        sent += allowed
        allowed = None
    return labels, sent, stopped, costs


__all__ = ["ACCOUNTING_MODES", "NOT_SENT", "Labelling", "label_in_chunks"]

"""The run step of the serving pipeline, written once: gather -> pad -> run -> split.

Both modes serve a request the same way: admitted (its budget reserved,
:mod:`.admission`) before any MPC work, packed with other requests' rows
(:func:`~.packing.pack`), run as one MPC batch, and only after the spend is
confirmed delivered to the client. :func:`run_packed` is the part between
packing and confirming: the library mode's scheduler
(:class:`~pricure_crypten.parties.batching.RequestScheduler`, all servers'
shares at once) and the networked node (this server's share only) both call it.

Who sees what: shares and public figures only; nothing is reconstructed.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .messages import BatchReply
from .packing import gather, pad_with_zeros, split_batch
from .results import ServerCost


def run_packed(
    parts: Sequence[Sequence[np.ndarray]],
    run: Callable[[list[np.ndarray]], list[BatchReply]],
    *,
    padded_rows: Optional[Callable[[int], int]] = None,
    zero_shares: Optional[Callable[[np.ndarray], Sequence[np.ndarray]]] = None,
) -> tuple[list[BatchReply], list[tuple[list[np.ndarray], list[ServerCost]]]]:
    """One MPC batch of packed requests: the servers' replies, and per request its label shares and costs.

    Args:
        parts: per packed request (in batch order), its share slice for each
            server this caller holds (every server in library mode, its own in
            the networked mode).
        run: runs the batch (one share per server held) and returns one reply per server.
        padded_rows: the row count the batch runs as (an Offline stocked size), or None.
        zero_shares: shares of zero rows for the padding (one per server held).
    """
    servers = len(parts[0])
    shares = [gather([part[server] for part in parts]) for server in range(servers)]
    if padded_rows is not None:
        shares = pad_with_zeros(shares, padded_rows(shares[0].shape[0]), zero_shares)
    replies = run(shares)
    return replies, split_batch([part[0].shape[0] for part in parts], replies)

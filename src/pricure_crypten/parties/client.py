"""The client: shares its queries, and is the only party that ever sees a result.

Who sees what: the client holds its plaintext query batch, splits it into N
additive shares (one per server, CSPRNG) and, at the end, receives one share
of the one-hot label from every server. :meth:`Client.reveal` is the one and
only place where a result is reconstructed; it counts how often it runs.
The client learns the (noisy) labels and nothing else: not the owners'
models, their logits, or the vote histogram.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .._validation import check_name
from ..mpc.randomness import SecureRandom
from ..mpc.sharing import SAFE_MAX_ABS, reconstruct, share

ABSTAIN = -1


class Client:
    """A semi-honest client asking the owners' ensemble for predictions.

    Args:
        name: the client's identity (the key of its privacy budget).
        rng: CSPRNG for the query shares (OS CSPRNG by default).
    """

    def __init__(self, name: str = "client", *, rng: SecureRandom | None = None) -> None:
        self.name = check_name(name, name="a client's name (its budget key)")
        self.rng = rng if rng is not None else SecureRandom()
        self.reveals = 0

    @staticmethod
    def check_queries(queries: torch.Tensor | np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        """Validate a query batch (before any MPC work); returns it as float64."""
        if isinstance(queries, torch.Tensor):
            if not torch.is_floating_point(queries):
                raise TypeError(f"queries must be a floating-point tensor, got dtype {queries.dtype}")
            array = queries.detach().cpu().double().numpy()
        elif isinstance(queries, np.ndarray):
            if not np.issubdtype(queries.dtype, np.floating):
                raise TypeError(f"queries must be a floating-point array, got dtype {queries.dtype}")
            array = queries.astype(np.float64)
        else:
            raise TypeError(f"queries must be a torch.Tensor or numpy.ndarray, not {type(queries).__name__}")
        if array.ndim != len(input_shape) + 1 or tuple(array.shape[1:]) != tuple(input_shape):
            raise ValueError(
                f"queries must have shape (batch, {', '.join(map(str, input_shape))}), got {tuple(array.shape)}"
            )
        if array.shape[0] == 0:
            raise ValueError("the query batch is empty")
        if not np.all(np.isfinite(array)):
            raise ValueError("queries contain NaN or infinite values")
        if np.max(np.abs(array)) > SAFE_MAX_ABS:
            raise ValueError(f"queries have entries beyond the fixed-point range |x| <= {SAFE_MAX_ABS:g}")
        return array

    def share_queries(self, queries: np.ndarray, *, num_servers: int) -> list[np.ndarray]:
        """One share of the batch per server."""
        return share(queries, num_parties=num_servers, rng=self.rng, name="queries")

    def reveal(self, label_shares: Sequence[np.ndarray]) -> np.ndarray:
        """THE reveal: reconstruct the one-hot labels from all N servers' shares.

        Returns the labels, shape (B,), with ``ABSTAIN`` (-1) where the one-hot
        is all zeros (an aggregation that may abstain).
        """
        self.reveals += 1
        one_hot = np.rint(reconstruct(label_shares)).astype(np.int64)
        if not np.all((one_hot == 0) | (one_hot == 1)) or np.any(one_hot.sum(axis=-1) > 1):
            raise RuntimeError("the reconstructed result is not a one-hot label: the computation was corrupted")
        labels = one_hot.argmax(axis=-1)
        labels[one_hot.sum(axis=-1) == 0] = ABSTAIN
        return labels

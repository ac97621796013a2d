"""Label oracles: what a label-only membership-inference attacker can query.

An oracle is ``f(x) -> labels``: a batch of inputs in, one integer label per
input out (``ABSTAIN`` = -1 where the target may refuse, as Confident-GNMax
does, or where a budget refuses). That is ALL the attacker sees: no logits,
no votes, no histogram, no noise. The oracle objects themselves are built by
the evaluator, who holds the models (plaintext), so they live in
:mod:`pricure_crypten.experiments` and are never deployed.

Targets:

* :class:`SingleOwnerOracle`: one owner's model exposed alone as a label API
  (what a hospital would deploy without collaboration); deterministic.
* :class:`EnsembleOracle`: the K owners' ensemble released through a noise
  mechanism, simulated in plaintext by :mod:`pricure_crypten.experiments.reference`
  (same clamp, histogram, calibration and tie-breaking as the MPC path).
  ``NoNoise()`` gives the plaintext vote (or softmax) ensemble. Every call
  draws fresh noise (a deterministic stream from ``seed`` and the call index).
* :class:`MPCOracle`: the real private path, a running
  :class:`~pricure_crypten.PrivateEnsemble` queried by one
  :class:`~pricure_crypten.Client`; slow, for attacks with few queries.
* :class:`BudgetedOracle`: any simulated oracle behind a per-client
  :class:`~pricure_crypten.privacy.accounting.PrivacyLedger`; a call that does
  not fit the budget is refused as a whole (all ``ABSTAIN``, nothing charged).

Every oracle counts the queries it answered (:attr:`LabelOracle.queries`), so
the DP bound can be composed over what the attacker actually asked.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..._validation import check_aggregation, check_int, check_name
from ...parties.client import ABSTAIN
from ...privacy.noise import ConfidentGNMax, NoiseMechanism, NoNoise
from .. import reference

__all__ = ["ABSTAIN", "BudgetedOracle", "EnsembleOracle", "LabelOracle", "MPCOracle", "SingleOwnerOracle"]


_CACHE_SIZE = 256
_HISTOGRAMS: dict[tuple, tuple[list, np.ndarray]] = {}


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape!r}")
    return shape


class LabelOracle(ABC):
    """A label-only target. Subclasses implement :meth:`_labels`.

    Attributes:
        num_classes: C; labels are in ``range(C)`` (or ``ABSTAIN``).
        input_shape: the shape of one input.
        mechanism: the noise of ONE answer (``NoNoise()`` for deterministic
            targets): what each query costs in (epsilon, delta).
        queries: how many inputs this oracle has answered so far.
        calls: how many batches it has answered.
    """

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], mechanism: NoiseMechanism) -> None:
        self.num_classes = check_int(num_classes, name="num_classes", minimum=2)
        self.input_shape = _check_shape(input_shape)
        if not isinstance(mechanism, NoiseMechanism):
            raise TypeError(f"mechanism must be a NoiseMechanism, not {type(mechanism).__name__}")
        self.mechanism = mechanism
        self.queries = 0
        self.calls = 0

    @property
    def can_abstain(self) -> bool:
        """Whether an answer may be ``ABSTAIN`` (-1)."""
        return isinstance(self.mechanism, ConfidentGNMax)

    @property
    def deterministic(self) -> bool:
        """Whether asking the same input again always gives the same answer."""
        return self.mechanism.deterministic

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Labels (B,) int64 for the batch ``x`` of shape ``(B, *input_shape)``."""
        batch = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"queries of shape {tuple(batch.shape)} do not match input shape {self.input_shape}")
        if len(batch) == 0:
            return np.zeros(0, dtype=np.int64)
        labels = np.asarray(self._labels(batch), dtype=np.int64).reshape(-1)
        if labels.shape != (len(batch),):
            raise RuntimeError(f"{type(self).__name__} returned {labels.shape} labels for {len(batch)} queries")
        self.calls += 1
        self.queries += len(batch)
        return labels

    @abstractmethod
    def _labels(self, batch: torch.Tensor) -> np.ndarray:
        """Labels of a non-empty, shape-checked float32 batch."""


class SingleOwnerOracle(LabelOracle):
    """One owner's model as a label API: ``argmax model(x)`` (no noise, no budget).

    Who sees what: the attacker sees labels only; this object holds the plaintext model.
    """

    def __init__(self, *, model: nn.Module, num_classes: int, input_shape: Sequence[int]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        super().__init__(num_classes=num_classes, input_shape=input_shape, mechanism=NoNoise())
        self.model = model

    def _labels(self, batch: torch.Tensor) -> np.ndarray:
        logits = reference.ensemble_logits([self.model], batch)[0]
        return logits.argmax(axis=-1)


class EnsembleOracle(LabelOracle):
    """The K owners' ensemble, released by ``mechanism``, simulated in plaintext.

    Args:
        models: the K owners' models.
        num_classes, input_shape: of the task.
        aggregation: ``"vote"`` or ``"softmax"``.
        mechanism: the calibrated noise (``NoNoise()`` = the plaintext ensemble).
        num_servers, colluding: N and t of the simulated cluster (the noise is
            the sum of the servers' fixed-point partials, as in MPC).
        logit_bound: the clamp applied to the logits, as under MPC.
        seed: seeds the noise stream (call ``i`` uses ``f"{seed}/{i}"``); ``None``
            draws from the OS CSPRNG.

    Who sees what: the attacker sees labels only; this object holds every owner's model.
    """

    def __init__(
        self,
        *,
        models: Sequence[nn.Module],
        num_classes: int,
        input_shape: Sequence[int],
        aggregation: str = "vote",
        mechanism: NoiseMechanism,
        num_servers: int = 2,
        colluding: int = 0,
        logit_bound: float = reference.DEFAULT_LOGIT_BOUND,
        seed: int | str | None = 0,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, mechanism=mechanism)
        self.models = list(models)
        if not self.models or not all(isinstance(m, nn.Module) for m in self.models):
            raise ValueError("models must be a non-empty sequence of torch.nn.Module")
        self.aggregation = mechanism.check_aggregation(check_aggregation(aggregation))
        self.num_servers = check_int(num_servers, name="num_servers", minimum=1)
        self.colluding = check_int(colluding, name="colluding", minimum=0, maximum=self.num_servers - 1)
        if not (isinstance(logit_bound, (int, float)) and 0 < logit_bound < math.inf):
            raise ValueError(f"logit_bound must be a finite number > 0, got {logit_bound!r}")
        self.logit_bound = float(logit_bound)
        if seed is not None and not isinstance(seed, (int, str)):
            raise TypeError(f"seed must be an int, a str or None, not {type(seed).__name__}")
        self.seed = seed

    def histogram(self, batch: torch.Tensor) -> np.ndarray:
        """The noiseless histogram (B, C) (evaluation only: the attacker never sees it).

        Memoised per (models, aggregation, bound, batch content): sweeps ask the
        same batches of many mechanisms over the same owners, and the histogram
        does not depend on the mechanism (the noise is drawn afresh per call).
        """
        array = np.ascontiguousarray(batch.numpy())
        key = (tuple(id(m) for m in self.models), self.aggregation, self.logit_bound, array.shape,
               hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest())
        hit = _HISTOGRAMS.get(key)
        if hit is not None:
            return hit[1].copy()
        logits = reference.ensemble_logits(self.models, batch)
        counts = reference.histogram(logits, aggregation=self.aggregation, logit_bound=self.logit_bound)
        if len(_HISTOGRAMS) >= _CACHE_SIZE:
            _HISTOGRAMS.pop(next(iter(_HISTOGRAMS)))
        _HISTOGRAMS[key] = (self.models, counts.copy())  # holds the models: their ids cannot be reused
        return counts

    def _labels(self, batch: torch.Tensor) -> np.ndarray:
        seed = None if self.seed is None else f"{self.seed}/{self.calls}"
        return reference.release(self.histogram(batch), mechanism=self.mechanism, num_servers=self.num_servers,
                                 colluding=self.colluding, seed=seed)


class MPCOracle(LabelOracle):
    """The real private path: a started :class:`~pricure_crypten.PrivateEnsemble`, asked by one client.

    Args:
        ensemble: a started ensemble (the caller owns its lifecycle: ``with``).
        client: the attacker's :class:`~pricure_crypten.Client`; with a ledger on
            the ensemble, its budget is charged and refusals raise
            ``BudgetExceededError`` (not caught here).

    Who sees what: the servers see shares, the client (attacker) sees the labels.
    """

    def __init__(self, *, ensemble: Any, client: Any) -> None:
        from ...ensemble import PrivateEnsemble
        from ...parties.client import Client

        if not isinstance(ensemble, PrivateEnsemble):
            raise TypeError(f"ensemble must be a PrivateEnsemble, not {type(ensemble).__name__}")
        if not isinstance(client, Client):
            raise TypeError(f"client must be a pricure_crypten.Client, not {type(client).__name__}")
        super().__init__(num_classes=ensemble.num_classes, input_shape=ensemble.input_shape,
                         mechanism=ensemble.mechanism)
        self.ensemble = ensemble
        self.client = client

    def _labels(self, batch: torch.Tensor) -> np.ndarray:
        step = self.ensemble.batching.max_queries
        return np.concatenate([self.ensemble.predict(batch[i:i + step], client=self.client).labels
                               for i in range(0, len(batch), step)])


class BudgetedOracle(LabelOracle):
    """A simulated oracle behind a per-client privacy budget.

    Every call is charged to ``client_id`` through ``ledger.spend`` BEFORE the
    inner oracle answers (as :class:`~pricure_crypten.PrivateEnsemble` does);
    a call that does not fit is refused as a whole: all ``ABSTAIN``, nothing
    charged, :attr:`refused` grows. :attr:`queries` counts answered queries only.

    Args:
        oracle: the simulated target (its mechanism is what each query costs).
        ledger: a :class:`~pricure_crypten.privacy.accounting.PrivacyLedger`.
        client_id: the attacker's identity at the ledger.
    """

    def __init__(self, *, oracle: LabelOracle, ledger: Any, client_id: str) -> None:
        if not isinstance(oracle, LabelOracle) or isinstance(oracle, (MPCOracle, BudgetedOracle)):
            raise TypeError("oracle must be a simulated LabelOracle (the MPC path has its own ledger)")
        if not callable(getattr(ledger, "spend", None)):
            raise TypeError(f"ledger must be a PrivacyLedger, not {type(ledger).__name__}")
        super().__init__(num_classes=oracle.num_classes, input_shape=oracle.input_shape, mechanism=oracle.mechanism)
        self.oracle = oracle
        self.ledger = ledger
        self.client_id = check_name(client_id, name="client_id")
        self.refused = 0

    @property
    def can_abstain(self) -> bool:
        return True

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        from ...privacy.accounting import BudgetExceededError

        batch = np.asarray(x, dtype=np.float32)
        try:
            with self.ledger.spend(self.client_id, self.mechanism, queries=len(batch)) as spend:
                labels = self.oracle(batch)
                spend.confirm()
        except BudgetExceededError:
            self.refused += len(batch)
            return np.full(len(batch), ABSTAIN, dtype=np.int64)
        self.calls += 1
        self.queries += len(batch)
        return labels

    def _labels(self, batch: torch.Tensor) -> np.ndarray:  # pragma: no cover - __call__ is overridden
        raise NotImplementedError

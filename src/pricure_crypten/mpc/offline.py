"""The offline/online split: the dealer's correlated randomness, dealt ahead of time and in bulk.

CrypTen's trusted-third-party provider (TTP) asks the dealer for every Beaver
triple, binary triple, wrap and B2A helper at the moment the protocol needs
it: one round trip server 0 -> dealer -> server 0 per multiplication or
comparison layer, on the critical path of every query. The MPC is data
oblivious, so the requests of a batch depend only on public facts (the
models' architectures, the batch shape, the aggregation), never on values.
This module uses that:

1. **record** the requests one batch makes (a rehearsal on shares of zeros,
   or any real batch): their kinds and shapes only;
2. **offline**: :meth:`PrecomputedTTP.precompute` produces the tuples for
   ``copies`` such batches in a few bulk exchanges with the dealer
   (:meth:`BulkDealer.bulk`: one message with the list of requests, one reply
   with all of server 0's correction shares), while no query waits;
3. **online**: each request is served from the stock, first in first out,
   and every tuple is used exactly once (it is removed when taken). A request
   that is not in stock falls back to CrypTen's on-line dealer round trip, so
   a batch shape nobody precomputed for still works, only slower.

Security is that of CrypTen's TTP, unchanged: every party draws its own
shares of ``a``, ``b`` (and of ``c`` for parties 1..N-1) from the PRG it
shares with the dealer, in the same order as on-line; the dealer sends server
0 only its correction share ``c - sum of the others``. No server learns a
triple; the dealer still sees nothing of models, queries or results. All
servers run the same operations in the same order, so their stocks hold the
same requests and they agree, request by request, on taking from stock or
asking the dealer: that keeps every party's PRG in step with the dealer's.

Who sees what: a server's stock holds only its own shares of the tuples.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any, Iterator

import torch

from ._crypten import crypten

_comm = crypten.communicator

# CrypTen's provider method -> the dealer's function that computes server 0's share of it.
DEALER_FUNCTIONS = {
    "generate_additive_triple": "additive",
    "square": "square",
    "generate_binary_triple": "binary",
    "wrap_rng": "wraps",
    "B2A_rng": "B2A",
}
#: Elements per bulk exchange with the dealer (int64: 512 MiB), bounding the dealer's and server 0's memory.
BULK_ELEMENTS = 64 * 2**20

Request = tuple[str, tuple, tuple]  # (provider method, positional args, sorted keyword items), public


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple, torch.Size)):
        return tuple(_hashable(v) for v in value)
    return value


def request_key(method: str, args: tuple, kwargs: dict) -> Request:
    """The public description of one request: method, sizes and operation options (device dropped)."""
    kwargs = {k: _hashable(v) for k, v in kwargs.items() if k != "device"}
    return (method, tuple(_hashable(a) for a in args), tuple(sorted(kwargs.items())))


def _result_size(op: str, size0: tuple, size1: tuple, args: tuple, kwargs: dict) -> torch.Size:
    """Shape of ``op(a, b)`` without computing it (meta tensors)."""
    a = torch.empty(size0, device="meta")
    b = torch.empty(size1, device="meta")
    return getattr(torch, op)(a, b, *args, **kwargs).size()


def _tuple_bytes(value: Any) -> int:
    if isinstance(value, (tuple, list)):
        return sum(_tuple_bytes(v) for v in value)
    return int(value.share.nelement()) * 8


class PrecomputedTTP(crypten.mpc.provider.TrustedThirdParty):
    """CrypTen's TTP provider with a stock of precomputed tuples (one instance per server process).

    Installed by :func:`install` in place of CrypTen's TTP provider instance.
    Counters (public): ``hits`` (tuples taken from stock), ``misses``
    (requests that went to the dealer on-line), ``stock_bytes``.
    """

    NAME = "TTP"

    def __init__(self) -> None:
        super().__init__()
        self._stock: dict[Request, collections.deque] = {}
        self._recording: list[tuple[str, tuple, dict]] | None = None
        self.hits = 0
        self.misses = 0
        self.dealer_seconds = 0.0  # spent waiting for on-line dealer requests (misses)
        self.stock_bytes = 0

    # -- recording the requests of a batch --

    @contextlib.contextmanager
    def record(self) -> Iterator[list[tuple[str, tuple, dict]]]:
        """Record (and serve normally) every request made inside the block."""
        self._recording = []
        try:
            yield self._recording
        finally:
            self._recording = None

    # -- the provider interface: stock first, then the dealer on-line --

    def _serve(self, method: str, args: tuple, kwargs: dict) -> Any:
        if self._recording is not None:
            self._recording.append((method, args, dict(kwargs)))
        else:
            queue = self._stock.get(request_key(method, args, kwargs))
            if queue:
                value = queue.popleft()  # used exactly once
                self.hits += 1
                self.stock_bytes -= _tuple_bytes(value)
                return value
            self.misses += 1
            start = time.perf_counter()
            value = getattr(super(), method)(*args, **kwargs)
            self.dealer_seconds += time.perf_counter() - start
            return value
        return getattr(super(), method)(*args, **kwargs)

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):  # noqa: D102
        return self._serve("generate_additive_triple", (size0, size1, op, *args), dict(kwargs, device=device))

    def square(self, size, device=None):  # noqa: D102
        return self._serve("square", (size,), {"device": device})

    def generate_binary_triple(self, size0, size1, device=None):  # noqa: D102
        return self._serve("generate_binary_triple", (size0, size1), {"device": device})

    def wrap_rng(self, size, device=None):  # noqa: D102
        return self._serve("wrap_rng", (size,), {"device": device})

    def B2A_rng(self, size, device=None):  # noqa: D102, N802 - CrypTen's name
        return self._serve("B2A_rng", (size,), {"device": device})

    # -- offline --

    @property
    def stocked(self) -> int:
        """Tuples in stock."""
        return sum(len(q) for q in self._stock.values())

    def copies_in_stock(self, requests: list[tuple[str, tuple, dict]]) -> int:
        """Complete repetitions of ``requests`` (one batch's list) in stock: the scarcest request decides."""
        needed = collections.Counter(request_key(m, a, k) for m, a, k in requests)
        return min((len(self._stock.get(key, ())) // count for key, count in needed.items()), default=0)

    def clear(self) -> None:
        """Drop the stock (its tuples are never used)."""
        self._stock.clear()
        self.stock_bytes = 0

    def precompute(self, requests: list[tuple[str, tuple, dict]], copies: int = 1) -> dict:
        """Stock the tuples of ``copies`` repetitions of ``requests``, in bulk exchanges with the dealer.

        Every server must call this with the same requests at the same point
        of its request sequence (the cluster's sequence numbers guarantee it).
        Returns public figures: seconds, dealer exchanges, tuples, bytes stocked.
        """
        from crypten.common.rng import generate_kbit_random_tensor, generate_random_ring_element
        from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor
        from crypten.mpc.provider.ttp_provider import TTPClient

        start = time.perf_counter()
        rank = _comm.get().get_rank()
        generator = TTPClient.get().get_generator()

        def ring(size: Any) -> torch.Tensor:
            return generate_random_ring_element(size, generator=generator)

        def bits(size: Any, bitlength: int | None = None) -> torch.Tensor:
            return generate_kbit_random_tensor(size, bitlength=bitlength, generator=generator)

        # Per request: this party's own pieces now (PRG order as CrypTen's TTPClient), and, on
        # server 0, the size of the correction share the dealer must send.
        pending: list[tuple[Request, str, list, torch.Size | None]] = []
        dealer_requests: list[tuple[str, tuple, dict]] = []
        exchanges = 0
        tuples = 0

        def flush() -> None:
            nonlocal exchanges, dealer_requests
            flat = None
            if rank == 0 and dealer_requests:
                flat = TTPClient.get().ttp_request("bulk", None, dealer_requests)
                exchanges += 1
            offset = 0
            for key, method, pieces, dealt in pending:
                if dealt is not None:
                    count = int(torch.Size(dealt).numel())
                    pieces[-1] = flat[offset:offset + count].reshape(dealt)
                    offset += count
                value = _wrap(method, pieces, ArithmeticSharedTensor, BinarySharedTensor)
                self._stock.setdefault(key, collections.deque()).append(value)
                self.stock_bytes += _tuple_bytes(value)
            pending.clear()
            dealer_requests = []

        elements = 0
        for _ in range(copies):
            for method, args, kwargs in requests:
                key = request_key(method, args, kwargs)
                kwargs = {k: v for k, v in kwargs.items() if k != "device"}
                if method == "generate_additive_triple":
                    size0, size1, op, *extra = args
                    pieces = [ring(size0), ring(size1)]
                    last = _result_size(op, size0, size1, tuple(extra), kwargs)
                    dealer_args: tuple = (size0, size1, op, *extra)
                elif method == "generate_binary_triple":
                    size0, size1 = args
                    pieces = [bits(size0), bits(size1)]
                    last = torch.broadcast_shapes(size0, size1)
                    dealer_args = (size0, size1)
                elif method in ("square", "wrap_rng"):
                    pieces = [ring(args[0])]
                    last = torch.Size(args[0])
                    dealer_args = (args[0],)
                elif method == "B2A_rng":
                    pieces = [bits(args[0], bitlength=1)]
                    last = torch.Size(args[0])
                    dealer_args = (args[0],)
                else:  # pragma: no cover - the provider interface has exactly these five
                    raise ValueError(f"unknown tuple request {method!r}")
                if rank == 0:
                    pieces.append(None)  # filled from the dealer's bulk reply
                    dealer_requests.append((DEALER_FUNCTIONS[method], dealer_args, kwargs))
                    pending.append((key, method, pieces, last))
                else:
                    pieces.append(bits(last) if method == "generate_binary_triple" else ring(last))
                    pending.append((key, method, pieces, None))
                tuples += 1
                elements += int(last.numel())
                if elements >= BULK_ELEMENTS:
                    flush()
                    elements = 0
        flush()
        return {"seconds": time.perf_counter() - start, "exchanges": exchanges, "tuples": tuples,
                "stock_bytes": self.stock_bytes}


def _wrap(method: str, pieces: list, arithmetic: Any, binary: Any) -> Any:
    """The tuple as CrypTen's TTP provider returns it (shares with precision 0)."""
    if method == "generate_binary_triple":
        return tuple(binary.from_shares(p) for p in pieces)
    if method != "B2A_rng":  # additive triples, square pairs, wrap pairs
        return tuple(arithmetic.from_shares(p, precision=0) for p in pieces)
    r_bits, r_arith = pieces  # B2A_rng returns (rA, rB)
    return arithmetic.from_shares(r_arith, precision=0), binary.from_shares(r_bits)


def install() -> PrecomputedTTP:
    """Make :class:`PrecomputedTTP` this process's TTP provider (a server, before ``crypten.init()``)."""
    providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
    if not isinstance(providers["TTP"], PrecomputedTTP):
        providers["TTP"] = PrecomputedTTP()
    return providers["TTP"]


class BulkDealer(crypten.mpc.provider.TTPServer):
    """CrypTen's dealer (``TTPServer``) that also answers a bulk request: many tuples in one reply.

    ``bulk(requests)`` computes, in order, server 0's correction share of every
    request (exactly what the single on-line requests would return) and sends
    them back flattened and concatenated. It draws from each party's PRG in
    the same order as the on-line requests would, so parties and dealer stay in step.
    """

    def bulk(self, requests: list[tuple[str, tuple, dict]]) -> torch.Tensor:
        parts = [getattr(self, function)(*args, **kwargs).reshape(-1) for function, args, kwargs in requests]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

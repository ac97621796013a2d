"""The remote parties: a client (:class:`RemoteEnsemble`) and an owner (:func:`upload_model`).

Both share locally and send share ``i`` to server ``i`` only, over HTTPS
verified against the deployment's CA, authenticated by a bearer token.
Only the client ever holds all N label shares; :meth:`Client.reveal` is the
one reconstruction, as in library mode.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..client import Client
from ..serving.budget import check_accounting, check_budget
from ..serving.labelling import Labelling, label_in_chunks
from ..serving.results import Cost, Prediction, ServerCost
from .wire import MAX_QUERY_ROWS, bundle_to_bytes, decode_array, encode_array


class RemoteError(RuntimeError):
    """A request failed, was refused or given up on; the text says where, why, and what is known of its charge.

    No label was reconstructed: the client reveals only when it holds every
    server's share. Whether the request was computed and charged on the
    servers is stated in the text (a request cancelled in time is not).
    """


class RemoteBudgetError(RemoteError):
    """Refused for the client's budget (some server's own ledger) before any MPC work: nothing was charged."""


TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,200}$")  # what 'pricure admin add' writes (secrets.token_urlsafe)
INSECURE_HTTP_ENV = "PRICURE_TEST_ONLY_ALLOW_HTTP"


def _token(credential: Union[str, Path]) -> str:
    """The bearer token: the credential itself, or read from its token file.

    A :class:`~pathlib.Path`, or a string that does not look like a token,
    is a token file and must exist: a missing file is an error naming it,
    never sent to a server as if it were the token.
    """
    text = str(credential).strip()
    if not isinstance(credential, Path) and TOKEN.match(text) and not Path(text).is_file():
        return text
    path = Path(credential).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"the token file {path} does not exist (create it with 'pricure admin add "
                                "--token-file ...')")
    token = path.read_text().strip()
    if not TOKEN.match(token):
        raise ValueError(f"the token file {path} does not hold a token (expected one line written by "
                         "'pricure admin add')")
    return token


def _ca_file(ca: Union[str, Path]) -> str:
    """The CA certificate: a ``ca.pem``, or the directory 'pricure admin ca --out' made (its ca.pem)."""
    path = Path(ca).expanduser()
    if path.is_dir() and (path / "ca.pem").is_file():
        path = path / "ca.pem"
    if not path.is_file():
        raise FileNotFoundError(f"the CA certificate {path} does not exist (it is ca.pem in the directory "
                                "made by 'pricure admin ca --out DIR')")
    return str(path)


def _url(server: str, *, allow_insecure_http: bool) -> str:
    server = server.strip().rstrip("/")
    if "://" not in server:
        return f"https://{server}"
    scheme = server.split("://", 1)[0].lower()
    if scheme == "https":
        return server
    if scheme == "http" and allow_insecure_http:
        message = (f"TEST ONLY: sending a bearer token and query shares to {server} over plain http (no TLS); "
                   "never do this outside a test")
        warnings.warn(message, stacklevel=3)
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
        return server
    raise ValueError(f"refusing the server address {server!r}: only https:// (or HOST:PORT) is accepted; the "
                     "bearer token and the shares must not travel in cleartext")


def _detail(response: Any) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:300]


class _Servers:
    def __init__(self, servers: Sequence[str], credential: Union[str, Path], ca: Union[str, Path, None],
                 connect_timeout: float, allow_insecure_http: bool = False) -> None:
        import httpx

        if len(servers) < 2:
            raise ValueError(f"need the addresses of N >= 2 servers, got {list(servers)}")
        insecure = allow_insecure_http and os.environ.get(INSECURE_HTTP_ENV) == "1"
        if allow_insecure_http and not insecure:
            raise ValueError(f"allow_insecure_http=True is test-only: it also needs the environment variable "
                             f"{INSECURE_HTTP_ENV}=1")
        self.urls = [_url(s, allow_insecure_http=insecure) for s in servers]
        token = _token(credential)
        import ssl

        verify: Any = ssl.create_default_context(cafile=_ca_file(ca)) if ca is not None else True
        self.http = [httpx.Client(base_url=u, verify=verify, headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx.Timeout(connect_timeout, connect=connect_timeout))
                     for u in self.urls]

    def call(self, index: int, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            return self.http[index].request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise RemoteError(f"server {index} ({self.urls[index]}) is unreachable: {type(error).__name__}: "
                              f"{error}") from None

    def close(self) -> None:
        for client in self.http:
            client.close()


class RemoteEnsemble:
    """A client of a deployed ensemble: ``RemoteEnsemble(servers=[...], credential=..., ca=...).predict(x)``.

    :meth:`predict` labels one batch (one request, charged by every server's
    own ledger); :meth:`label` labels a whole pool under the client's budget,
    chunk by chunk, as ``PrivateEnsemble.label`` does in library mode (same
    :class:`~pricure_crypten.parties.serving.labelling.Labelling` result),
    asking every server (:meth:`budget`) how many rows still fit before each
    chunk. The client's identity (its budget key) is the credential's.

    Args:
        servers: the front doors of the N servers, in rank order (``host:port`` or ``https://host:port``).
        credential: the client's bearer token, or the path of its token file.
        ca: the deployment CA certificate (``ca.pem``) the servers are verified against.
        timeout: bound in seconds on one prediction, from submission to the last label share.
        allow_insecure_http: TEST ONLY: accept ``http://`` addresses (token and shares in cleartext); it
            also needs the environment variable ``PRICURE_TEST_ONLY_ALLOW_HTTP=1`` and warns loudly.

    Raises ``ValueError`` for an ``http://`` address, ``FileNotFoundError``
    naming a missing token file or CA certificate.
    """

    def __init__(self, *, servers: Sequence[str], credential: Union[str, Path], ca: Union[str, Path, None],
                 timeout: float = 60.0, poll: float = 0.05, allow_insecure_http: bool = False) -> None:
        self._servers = _Servers(servers, credential, ca, connect_timeout=min(10.0, timeout),
                                 allow_insecure_http=allow_insecure_http)
        self.num_servers = len(self._servers.urls)
        self.timeout, self.poll = timeout, poll
        self.client = Client("remote")
        self.last_request_id: Optional[str] = None

    def close(self) -> None:
        self._servers.close()

    def __enter__(self) -> "RemoteEnsemble":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def health(self) -> list[dict]:
        out = []
        for i in range(self.num_servers):
            response = self._servers.call(i, "GET", "/v1/health")
            if response.status_code != 200:
                raise RemoteError(f"server {i}: {_detail(response)}")
            out.append(response.json())
        return out

    def _details(self) -> dict:
        """Server 0's detailed health (this client's credential); it must hold an owner model."""
        response = self._servers.call(0, "GET", "/v1/health")
        if response.status_code != 200:
            raise RemoteError(f"server 0 refused this client (HTTP {response.status_code}): {_detail(response)}")
        health = response.json()
        if not health.get("input_shape"):
            raise RemoteError("server 0 holds no owner model yet")
        return health

    def submit(self, queries: Any, request_id: Optional[str] = None, *, accounting: str = "conservative") -> str:
        """Share the batch and send share i to server i; returns the request id.

        ``accounting="answered-only"`` asks the servers to charge the argmax
        step only for answered rows (see :meth:`label`); a server that cannot
        (not Confident-GNMax, or no ``rdp-filter`` ledger) refuses it.
        """
        check_accounting(accounting)
        batch = Client.check_queries(queries, tuple(self._details()["input_shape"]))
        return self._send(batch, request_id, accounting)

    def _send(self, batch: np.ndarray, request_id: Optional[str], accounting: str) -> str:
        shares = self.client.share_queries(batch, num_servers=self.num_servers)
        request_id = request_id or secrets.token_hex(16)
        self.last_request_id = request_id
        extra = {"accounting": accounting} if accounting != "conservative" else {}
        for i, share in enumerate(shares):
            response = self._servers.call(i, "POST", "/v1/queries",
                                          json={"request_id": request_id, "share": encode_array(share), **extra})
            if response.status_code != 202:
                cancelled = ""
                if i > 0:  # the servers that took their share: cancelled there (no budget reserved yet)
                    answers = self.cancel(request_id, servers=range(i))
                    cancelled = ("; cancelled on the servers that had accepted it" if
                                 all(a.get("status") == "cancelled" for a in answers)
                                 else "; never computed: the servers that took their share drop it when it does not "
                                      "reach every server")
                raise RemoteError(f"server {i} refused request {request_id} (HTTP {response.status_code}): "
                                  f"{_detail(response)}{cancelled}")
        return request_id

    def collect(self, request_id: str) -> list[np.ndarray]:
        """Wait for the N label shares of ``request_id`` (bounded by ``timeout``)."""
        return self._collect(request_id)[0]

    def _collect(self, request_id: str) -> tuple[list[np.ndarray], list[ServerCost], list[Optional[np.ndarray]]]:
        """The N label shares of ``request_id``, the N servers' public cost figures for it, and each server's
        revealed answered bits (answered-only requests; else None)."""
        deadline = time.monotonic() + self.timeout
        shares: dict[int, np.ndarray] = {}
        costs: dict[int, ServerCost] = {}
        outcomes: dict[int, Optional[np.ndarray]] = {}
        unreachable_since: dict[int, float] = {}
        while len(shares) < self.num_servers:
            for i in range(self.num_servers):
                if i in shares:
                    continue
                try:
                    response = self._servers.call(i, "GET", f"/v1/queries/{request_id}")
                except RemoteError as error:  # a restarting server: tolerated briefly, then reported
                    first = unreachable_since.setdefault(i, time.monotonic())
                    if time.monotonic() - first > min(10.0, self.timeout):
                        raise RemoteError(f"{error}; {self._give_up(request_id, unreachable=i)}") from None
                    continue
                unreachable_since.pop(i, None)
                if response.status_code != 200:
                    raise RemoteError(f"server {i}: {_detail(response)}; {self._give_up(request_id)}")
                body = response.json()
                if body["status"] == "done":
                    shares[i] = decode_array(body["label_share"], name=f"server {i}'s label share")
                    try:
                        costs[i] = ServerCost.from_public(body["cost"])
                        outcome = body.get("outcome")
                        outcomes[i] = None if outcome is None else np.asarray(outcome, dtype=np.int64).reshape(-1)
                    except (KeyError, TypeError, ValueError):
                        raise RemoteError(f"server {i} sent no valid cost figures or outcome bits for request "
                                          f"{request_id}") from None
                elif body["status"] != "pending":
                    error = str(body.get("error"))
                    kind = RemoteBudgetError if body.get("refused") == "budget" else RemoteError
                    raise kind(f"server {i}: request {request_id} {body['status']}: {error}")
            if len(shares) < self.num_servers:
                if time.monotonic() > deadline:
                    raise RemoteError(f"no answer from every server within {self.timeout:g} s; "
                                      f"{self._give_up(request_id)}")
                time.sleep(self.poll)
        order = range(self.num_servers)
        return [shares[i] for i in order], [costs[i] for i in order], [outcomes[i] for i in order]

    def cancel(self, request_id: str, servers: Optional[Sequence[int]] = None) -> list[dict]:
        """Cancel this client's request on every server; each server's answer (``status`` ``unreachable`` if none).

        A server that answers ``cancelled`` had reserved no budget for the
        request and refuses it at its next vote, so no server computes or
        charges it. ``too late``: that server had reserved its budget (the
        request may have been computed and charged); it never serves the
        label share.
        """
        answers = []
        for i in range(self.num_servers) if servers is None else servers:
            try:
                response = self._servers.call(i, "DELETE", f"/v1/queries/{request_id}")
            except RemoteError as error:
                answers.append({"status": "unreachable", "detail": str(error)})
                continue
            if response.status_code == 200:
                answers.append(response.json())
            else:
                answers.append({"status": "unknown", "detail": f"HTTP {response.status_code}: {_detail(response)}"})
        return answers

    def _give_up(self, request_id: str, unreachable: Optional[int] = None) -> str:
        """Cancel the request on every server (but one found ``unreachable``) and say truthfully what that achieved."""
        others = [i for i in range(self.num_servers) if i != unreachable]
        answers = {i: a for i, a in zip(others, self.cancel(request_id, servers=others))}
        if unreachable is not None:
            answers[unreachable] = {"status": "unreachable", "detail": "see above"}
        answers = [answers[i] for i in range(self.num_servers)]
        confirmed = [i for i, a in enumerate(answers) if a.get("status") == "cancelled"]
        if confirmed:
            return (f"request {request_id} was cancelled (server {confirmed[0]} confirmed it before reserving any "
                    "budget, so no server computes or charges it); nothing was revealed")
        late = [i for i, a in enumerate(answers) if a.get("status") == "too late"]
        ended = [i for i, a in enumerate(answers) if a.get("status") in ("failed", "expired")]
        if ended and not late:
            return (f"request {request_id} had already ended on the servers: "
                    + "; ".join(f"server {i}: {answers[i].get('detail')}" for i in ended))
        others = "; ".join(f"server {i}: {a['status']} ({a.get('detail')})" for i, a in enumerate(answers)
                           if i not in late)
        where = f"server(s) {', '.join(map(str, late))} had already reserved its budget" if late else \
            "no server confirmed the cancellation"
        return (f"request {request_id} could not be cancelled in time ({where}{'; ' + others if others else ''}): "
                "the request may have been computed and charged; its result will not be delivered")

    def predict(self, queries: Any) -> Prediction:
        """Private labels of the batch (-1 = abstain), reconstructed here and only here, and the call's cost.

        The same :class:`~pricure_crypten.parties.serving.results.Prediction`
        as ``PrivateEnsemble.predict``: ``labels`` and a ``Cost`` combined from
        the servers' public figures exactly as in library mode.
        """
        start = time.perf_counter()
        request_id = self.submit(queries)
        shares, costs, _ = self._collect(request_id)
        reveals = self.client.reveals
        labels = self.client.reveal(shares)
        return Prediction(labels=labels, cost=Cost.of(costs, queries=labels.shape[0],
                                                      seconds=time.perf_counter() - start,
                                                      reveals=self.client.reveals - reveals))

    # -- private labelling of a pool --

    def budget(self, rows: int, *, accounting: str = "conservative", budget: Optional[float] = None) -> list[dict]:
        """Every server's answer to ``GET /v1/budget``: this client's status in its own ledger, and
        ``rows_that_fit`` of ``rows`` more rows (the worst case of each), in rank order. Writes nothing.

        Raises ValueError naming the server for a question it refuses (HTTP 422: e.g. answered-only
        accounting on a server without Confident-GNMax and an ``rdp-filter`` ledger).
        """
        params: dict[str, Any] = {"rows": str(int(rows)), "accounting": check_accounting(accounting)}
        if check_budget(budget) is not None:
            params["budget"] = repr(float(budget))
        out = []
        for i in range(self.num_servers):
            response = self._servers.call(i, "GET", "/v1/budget", params=params)
            if response.status_code == 422:
                raise ValueError(f"server {i} refused the question: {_detail(response)}")
            if response.status_code != 200:
                raise RemoteError(f"server {i}: /v1/budget answered HTTP {response.status_code}: {_detail(response)}")
            out.append(response.json())
        return out

    def _spent(self) -> tuple[float, float]:
        """The client's largest TOTAL (epsilon, delta) spent over the servers' own ledgers."""
        answers = self.budget(0)
        return (max(float(a["spent_epsilon"]) for a in answers), max(float(a["spent_delta"]) for a in answers))

    def _rows_that_fit(self, limit: int, accounting: str, budget: Optional[float]) -> int:
        """The rows of the next ``limit`` whose worst case fits EVERY server's ledger (the minimum)."""
        return min(int(a["rows_that_fit"]) for a in self.budget(limit, accounting=accounting, budget=budget))

    def _label_chunk(self, batch: np.ndarray, accounting: str) -> tuple[np.ndarray, Cost]:
        """One chunk of :meth:`label`: the normal submit/collect path, then the one reveal, here."""
        start = time.perf_counter()
        request_id = self._send(batch, None, accounting)
        shares, costs, outcomes = self._collect(request_id)
        reveals = self.client.reveals
        labels = self.client.reveal(shares)
        if accounting == "answered-only":  # the charge was set by the servers' bits: they must match the labels
            bits = outcomes[0]
            if any(o is None or o.shape != (batch.shape[0],) or not np.array_equal(o, bits) for o in outcomes):
                raise RuntimeError(f"the servers sent missing or different outcome bits for request {request_id}: "
                                   "the computation was corrupted")
            if not np.array_equal(labels >= 0, bits == 1):
                raise RuntimeError("the client's labels disagree with the servers' revealed outcomes: "
                                   "the computation was corrupted")
        return labels, Cost.of(costs, queries=batch.shape[0], seconds=time.perf_counter() - start,
                               reveals=self.client.reveals - reveals)

    def label(self, pool: Any, *, budget: Optional[float] = None, accounting: str = "conservative") -> Labelling:
        """Label this client's pool privately under its budget on every server: the networked ``label()``.

        The same protocol and result as :meth:`PrivateEnsemble.label` (library
        mode): the pool is cut into chunks of at most the servers' ``max_rows``
        (``pricure serve --max-batch``). Before each chunk every server is asked
        (``GET /v1/budget``) how many of its rows fit this client's budget in
        ITS OWN ledger, for the worst case of each row; the smallest answer is
        sent, through the normal submit/collect path, computed, charged by
        every server and revealed here (one reveal per chunk). When no row
        fits, labelling stops cleanly: that row and every later one are never
        shared, never charged, nothing is revealed about them
        (:attr:`Labelling.refused`).

        Args:
            pool: (rows, *input_shape) float queries.
            budget: optional cap on this client's TOTAL spent epsilon after this call, per each
                server's accountant (it can only stop labelling earlier).
            accounting: ``"conservative"`` (default: every sent row charged its full cost) or
                ``"answered-only"`` (Confident-GNMax servers with ``rdp-filter`` ledgers: every sent
                row is charged the threshold step, and the argmax step only if answered, from the
                servers' revealed outcome bits; the client checks that those bits, equal on every
                server, agree with its labels, and raises RuntimeError if not).

        Who learns what: as in library mode (see :meth:`PrivateEnsemble.label`); in answered-only
        mode each server learns each sent row's answered bit, and this client receives those bits.

        Raises (before any MPC work, nothing shared, nothing charged): ValueError for a malformed or
        empty pool, a bad ``budget`` or ``accounting``, or an accounting mode some server cannot
        charge (it names the server); :class:`RemoteBudgetError` when not even one row fits. A
        failure of the first chunk raises :class:`RemoteError`; a failure of a later chunk returns
        what was labelled so far, with ``stopped`` saying so (the failed chunk reveals nothing to
        the client; it is charged as a server's own ledger says: not at all if refused before the
        MPC; in answered-only mode its worst case once its batch started).
        """
        begin = time.perf_counter()
        check_accounting(accounting)
        budget = check_budget(budget)
        if len(getattr(pool, "shape", ())) >= 1 and pool.shape[0] == 0:
            raise ValueError("the pool is empty: nothing to label")
        health = self._details()
        rows = Client.check_queries(pool, tuple(health["input_shape"]))
        chunk = min(int(health["settings"]["max_rows"]), MAX_QUERY_ROWS)
        total = rows.shape[0]
        first = self._rows_that_fit(min(chunk, total), accounting, budget)  # also refuses an unsupported mode
        if first == 0:
            answers = self.budget(1, accounting=accounting, budget=budget)
            where = ", ".join(f"server {a['rank']} (spent epsilon {a['spent_epsilon']} of {a['total_epsilon']}, "
                              f"accountant {a['accountant']})" for a in answers if not a["rows_that_fit"])
            cap = f" or the cap budget={budget!r}" if budget is not None else ""
            raise RemoteBudgetError(f"privacy budget exceeded: not one row of the pool fits this client's budget "
                                    f"on {where}{cap}; nothing was shared or charged")
        before = self._spent()
        labels, sent, stopped, costs = label_in_chunks(
            total, chunk, first=first,
            rows_that_fit=lambda limit: self._rows_that_fit(limit, accounting, budget),
            run=lambda start, stop: self._label_chunk(rows[start:stop], accounting),
            over_budget=(RemoteBudgetError,), failure=(RemoteError,))
        return Labelling(
            labels=labels, answered=labels >= 0, sent=sent, refused=total - sent if stopped == "budget" else 0,
            accounting=accounting, spent_before=before, spent_after=self._spent(),
            batches=sum(c.batches for c in costs), cost=Cost.total(costs, time.perf_counter() - begin),
            stopped=stopped)


def upload_model(owner: Any, *, servers: Sequence[str], credential: Union[str, Path], ca: Union[str, Path, None],
                 timeout: float = 60.0, wait: float = 0.0) -> str:
    """Share an owner's model and upload bundle i to server i (replacing its previous upload); the upload id.

    With ``wait`` > 0 (seconds), first wait for every front door to answer
    (servers still starting), and afterwards until every server serves this
    upload (status ``loaded``): a quarantined upload (with the server's
    reason) or a deadline passed is a :class:`RemoteError`.
    """
    connection = _Servers(servers, credential, ca, connect_timeout=timeout)
    try:
        deadline = time.monotonic() + wait
        if wait > 0:
            _wait_reachable(connection, deadline, wait)
        upload_id = secrets.token_hex(16)
        bundles = owner.share(num_servers=len(connection.urls))
        for i, bundle in enumerate(bundles):
            data = bundle_to_bytes(bundle, input_shape=owner.input_shape, num_classes=owner.num_classes)
            response = connection.call(i, "PUT", "/v1/model", content=data,
                                       headers={"X-Upload-Id": upload_id, "Content-Type": "application/octet-stream"})
            if response.status_code != 200:
                raise RemoteError(f"server {i} refused the upload (HTTP {response.status_code}): {_detail(response)}")
        if wait > 0:
            _wait_loaded(connection, upload_id, deadline, wait)
        return upload_id
    finally:
        connection.close()


def _wait_reachable(connection: _Servers, deadline: float, wait: float) -> None:
    for i in range(len(connection.urls)):
        while True:
            try:
                connection.call(i, "GET", "/v1/health")
                break
            except RemoteError as error:
                if time.monotonic() > deadline:
                    raise RemoteError(f"{error} (waited {wait:g} s for it to start)") from None
                time.sleep(0.5)


def _wait_loaded(connection: _Servers, upload_id: str, deadline: float, wait: float) -> None:
    while True:
        states = []
        for i in range(len(connection.urls)):
            response = connection.call(i, "GET", "/v1/model")
            body = response.json() if response.status_code == 200 else {"status": f"HTTP {response.status_code}"}
            if body.get("status") == "quarantined" and body.get("upload_id") == upload_id:
                raise RemoteError(f"server {i} quarantined upload {upload_id} (it is not served): "
                                  f"{body.get('reason')}")
            states.append(body.get("status") if body.get("upload_id", upload_id) == upload_id else "replaced")
        if all(state == "loaded" for state in states):
            return
        if time.monotonic() > deadline:
            raise RemoteError(f"upload {upload_id} is stored but not served by every server within {wait:g} s: "
                              + ", ".join(f"server {i}: {state}" for i, state in enumerate(states)))
        time.sleep(0.2)


def withdraw_model(*, servers: Sequence[str], credential: Union[str, Path], ca: Union[str, Path, None]) -> None:
    connection = _Servers(servers, credential, ca, connect_timeout=30.0)
    try:
        for i in range(len(connection.urls)):
            response = connection.call(i, "DELETE", "/v1/model")
            if response.status_code not in (200, 404):
                raise RemoteError(f"server {i}: {_detail(response)}")
    finally:
        connection.close()

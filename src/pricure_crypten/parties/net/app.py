"""The front door of one server: FastAPI over HTTPS (uvicorn), bearer-token authentication.

Endpoints (JSON unless noted; every error is ``{"detail": "one clear line"}``):

* ``GET /v1/health``: liveness (rank, MPC state) for anyone without a token
  (an invalid or revoked token: 401); with a valid credential also the
  owners loaded or quarantined, the input shape, settings and traffic.
* ``PUT /v1/model`` (owner): body = the owner's share bundle (``.npz``,
  ``application/octet-stream``), header ``X-Upload-Id``. The owner is the
  credential's identity, so nobody can write another owner's model. The
  bundle is checked completely (in a worker thread, at most
  :data:`MAX_PARSING` at a time) before it is stored.
  The version being served stays on disk as the previous one until the new
  upload is served: the servers serve, per owner, the upload that every
  server holds. ``DELETE /v1/model`` withdraws every version (out of the
  next batch), ``GET /v1/model`` shows its metadata and status (``loaded``,
  ``stored``, ``stored (not on every server yet)`` with the upload still
  served, or ``quarantined`` with the reason).
* ``POST /v1/queries`` (client): ``{"request_id": 32 hex, "share": {dtype, shape, data}}``.
  Optional key ``"accounting"``: ``"conservative"`` (default) or
  ``"answered-only"`` (Confident-GNMax and an ``rdp-filter`` ledger on this
  server, else 422): the servers then reveal among themselves each row's
  answered bit and charge the argmax step only for answered rows.
* ``GET /v1/queries/{request_id}`` (client): status and, when done, this
  server's share of the one-hot labels (answered-only: also ``outcome``, the
  servers' answered bit per row); another client's id reads as unknown.
* ``GET /v1/budget?rows=N&accounting=...&budget=E`` (client): the CALLING
  client's status in this server's own ledger (spent and total epsilon and
  delta, the accountant) and how many of N more rows fit it, for the worst
  case of each row (``budget``: an optional cap on the total spent epsilon).
  Nothing is written; no other client's figures are ever shown.
* ``DELETE /v1/queries/{request_id}`` (client): cancel the client's own
  request. ``status`` says what this server can promise: ``cancelled`` (it
  had reserved no budget for it and refuses it at the next vote, so no server
  computes or charges it), ``too late`` (its budget was reserved: it may be
  computed and charged; its label share is never served), or how it ended
  (``failed``/``expired``); another client's id reads as unknown (404).

Tokens are never logged (uvicorn's access log is off; only hashes are stored).

Slow or greedy connections: a connection must finish its TLS handshake
within ``header_timeout`` seconds (asyncio's default is 60 s), then send a
request's headers within ``header_timeout`` (again after each response),
its body within ``body_timeout``; idle kept-alive connections close after
``keep_alive``; beyond ``max_connections`` open
connections new ones are closed at once (uvicorn answers 503 beyond as many
requests in flight). A client has at most ``max_client_requests`` pending
requests and ``max_client_rows`` pending rows per server (HTTP 429 beyond).
"""



import math
import threading
import time
from typing import Any

from ..serving.budget import ACCOUNTING_MODES, answered_only_costs
from .wire import REQUEST_ID, ShapeError, TooManyRequests, WireError, decode_array, loads_json

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_PARSING = 3  # uploads read and checked at the same time (each holds up to --max-upload-mb), one per owner
MAX_QUERY_BODIES = 8  # query bodies read and decoded at the same time (each up to MAX_JSON_BYTES); others wait
MAX_BUDGET_ROWS = 1_000_000  # rows one /v1/budget question may ask about


def _number(x: float) -> Any:
    """A float for JSON: finite as is, else the string "inf" (JSON has no infinity)."""
    return x if math.isfinite(x) else str(x)


def budget_status(node: Any, client: str, *, rows: str, accounting: str, budget: Any = None) -> dict:
    """``GET /v1/budget``: the calling client's status in THIS server's ledger, and how many of ``rows``
    more rows fit it for the worst case of each row (as ``label()`` asks before each chunk).

    Uses only ``node.ledger`` and ``node.mechanism``. Raises ValueError/TypeError (HTTP 422) for a bad
    ``rows``, ``budget`` or ``accounting``, or an accounting mode this server cannot charge. Writes nothing.
    """
    from ..serving.budget import check_accounting, check_budget, rows_that_fit, worst_case

    if not (isinstance(rows, str) and rows.isdigit() and 0 <= int(rows) <= MAX_BUDGET_ROWS):
        raise ValueError(f"rows must be an integer in [0, {MAX_BUDGET_ROWS}], got {rows!r}")
    check_accounting(accounting)
    if budget is not None:
        try:
            budget = float(budget)
        except ValueError:
            raise ValueError(f"budget must be an epsilon > 0, got {budget!r}") from None
    budget = check_budget(budget)
    worst, _ = worst_case(node.ledger, client, node.mechanism, accounting)
    status = node.ledger.status(client)
    return {"client": client, "rank": node.seat.rank, "accounting": accounting,
            "accountant": node.ledger.accountant, "bound": status.bound,
            "total_epsilon": _number(status.total_epsilon), "total_delta": status.total_delta,
            "spent_epsilon": _number(status.spent_epsilon), "spent_delta": status.spent_delta,
            "remaining_epsilon": _number(status.remaining_epsilon),
            "answered_queries": status.answered_queries, "reserved_queries": status.reserved_queries,
            "rows": int(rows), "budget": budget,
            "rows_that_fit": rows_that_fit(node.ledger, client, worst, int(rows), budget=budget)}


def _read_limited(request: Any, limit: int, timeout: float) -> Any:
    import anyio

    async def read() -> bytes:
        try:
            with anyio.fail_after(timeout):
                return await read_all()
        except TimeoutError:
            raise _http(408, f"the body did not arrive within {timeout:g} s") from None

    async def read_all() -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _http(413, f"the body has {declared} bytes, more than the limit {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _http(413, f"the body is larger than the limit {limit} bytes")
        return bytes(body)

    return read()


class _Unavailable(ValueError):
    """A well-formed request this server cannot serve as asked (HTTP 422)."""


def _http(status: int, detail: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


def build_app(node: Any) -> Any:
    import asyncio

    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="pricure server", docs_url=None, redoc_url=None, openapi_url=None)
    parsing = threading.BoundedSemaphore(MAX_PARSING)
    uploading: set[str] = set()  # owners with an upload in progress (one each)
    query_bodies = asyncio.Semaphore(MAX_QUERY_BODIES)  # bound at first use to uvicorn's loop
    body_timeout = getattr(node.front_door, "body_timeout", 120.0)

    def credential(request: Request) -> Any:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        return node.credentials.lookup(token)

    def who(request: Request, role: str) -> str:
        found = credential(request)
        if found is None:
            raise _http(401, "missing or unknown credential (use the bearer token from 'pricure admin add')")
        if found[0] != role:
            raise _http(403, f"this credential belongs to a {found[0]}, not a {role}")
        return found[1]

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # the server keeps running; no details leak
        return JSONResponse(status_code=500, content={"detail": f"internal error ({type(error).__name__})"})

    @app.get("/v1/health")
    def health(request: Request) -> dict:
        found = credential(request)
        if found is None and request.headers.get("authorization"):  # a token was sent: it must be valid
            raise _http(401, "unknown or revoked credential (use the bearer token from 'pricure admin add'); "
                             "without a token /v1/health shows liveness only")
        return node.public_info(details=found is not None)

    @app.put("/v1/model")
    async def put_model(request: Request) -> dict:
        owner = who(request, "owner")
        upload_id = request.headers.get("x-upload-id", "")
        if not REQUEST_ID.match(upload_id):
            raise _http(400, "header X-Upload-Id must be 32 lowercase hex digits (the same on every server)")
        if owner in uploading:
            raise _http(429, f"owner {owner} already has an upload in progress on this server")
        if not parsing.acquire(blocking=False):
            raise _http(503, f"{MAX_PARSING} uploads are being checked on this server; retry in a moment")
        uploading.add(owner)
        try:
            data = await _read_limited(request, node.models.max_bytes, body_timeout)
            # checked off the event loop: the front door keeps answering meanwhile
            return await anyio.to_thread.run_sync(node.store_model, owner, upload_id, data)
        except WireError as error:
            raise _http(400, str(error)) from None
        finally:
            uploading.discard(owner)
            parsing.release()

    @app.get("/v1/model")
    def get_model(request: Request) -> dict:
        owner = who(request, "owner")
        meta = node.model_status(owner)
        if meta is None:
            raise _http(404, f"owner {owner} has no model on this server")
        return meta

    @app.delete("/v1/model")
    def delete_model(request: Request) -> dict:
        owner = who(request, "owner")
        if not node.models.remove(owner):
            raise _http(404, f"owner {owner} has no model on this server")
        return {"owner": owner, "withdrawn": True}

    @app.post("/v1/queries", status_code=202)
    async def post_query(request: Request) -> dict:
        client = who(request, "client")

        def parse_and_submit() -> str:
            message = loads_json(body)
            if not isinstance(message, dict) or not {"request_id", "share"} <= set(message) or \
                    not set(message) <= {"request_id", "share", "accounting"}:
                raise WireError("the body must be an object with keys request_id and share (and optionally "
                                "accounting)")
            if not isinstance(message["request_id"], str):
                raise WireError("request_id must be a string")
            accounting = message.get("accounting", "conservative")
            if accounting not in ACCOUNTING_MODES:
                raise WireError(f"accounting must be one of {', '.join(ACCOUNTING_MODES)}, got {accounting!r}")
            share = decode_array(message["share"], name="share")
            if accounting == "answered-only":
                try:  # can this server charge it so (Confident-GNMax, an 'rdp-filter' ledger)? Nothing reserved
                    answered_only_costs(node.ledger, client, node.mechanism)
                except (TypeError, ValueError) as error:
                    raise _Unavailable(f"answered-only accounting is not available on server "
                                       f"{node.seat.rank}: {error}") from None
                node.submit(client, message["request_id"], share, outcome=True)
            else:
                node.submit(client, message["request_id"], share)
            return message["request_id"]

        try:
            async with query_bodies:  # bounds the memory of bodies in flight; off the event loop to parse
                body = await _read_limited(request, MAX_JSON_BYTES, body_timeout)
                request_id = await anyio.to_thread.run_sync(parse_and_submit)
        except _Unavailable as error:  # well-formed, but this server cannot serve what was asked
            raise _http(422, str(error)) from None
        except WireError as error:
            raise _http(422 if isinstance(error, ShapeError) else 400, str(error)) from None
        except (ValueError, TypeError) as error:  # the node cannot serve what was asked
            raise _http(422, str(error)) from None
        except LookupError as error:
            raise _http(503, str(error)) from None
        except FileExistsError as error:
            raise _http(409, str(error)) from None
        except TooManyRequests as error:
            raise _http(429, str(error)) from None
        return {"request_id": request_id, "status": "pending"}

    @app.get("/v1/budget")
    def get_budget(request: Request) -> dict:
        client = who(request, "client")  # the calling client's own figures only: never another client's
        try:
            return budget_status(node, client, rows=request.query_params.get("rows", "0"),
                                 accounting=request.query_params.get("accounting", "conservative"),
                                 budget=request.query_params.get("budget"))
        except (ValueError, TypeError) as error:
            raise _http(422, str(error)) from None

    @app.get("/v1/queries/{request_id}")
    def get_query(request_id: str, request: Request) -> dict:
        client = who(request, "client")
        result = node.result(client, request_id) if REQUEST_ID.match(request_id) else None
        if result is None:
            raise _http(404, f"no request {request_id} of client {client} on this server")
        return result

    @app.delete("/v1/queries/{request_id}")
    def cancel_query(request_id: str, request: Request) -> dict:
        client = who(request, "client")
        answer = node.cancel(client, request_id) if REQUEST_ID.match(request_id) else None
        if answer is None:  # another client's id reads as unknown: nobody cancels someone else's request
            raise _http(404, f"no request {request_id} of client {client} on this server")
        return answer

    return app


class RunningFrontDoor:
    """The listening front door (its settings: :class:`~.config.FrontDoor`); ``stop()`` closes it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def guarded_protocol(*, header_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers and a cap on open connections.

    uvicorn has neither: a connection that never finishes its headers stays
    open forever. Here the deadline is armed when the connection is made
    (after the TLS handshake, bounded by :func:`handshake_bounded_server`)
    and after every response; a connection that has not started a new request by then is
    closed. Connections beyond ``max_connections`` are closed at once.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.abort()  # not close(): a TLS close waits up to 30 s for the peer's close_notify
                return
            self._arm()

        def _arm(self) -> None:
            armed = self.cycle

            def expire() -> None:
                idle = armed is None or armed.response_complete  # not inside a (pipelined) request
                if self.cycle is armed and idle and not self.transport.is_closing():
                    self.transport.abort()  # no (new) request's headers within the deadline

            self.loop.call_later(header_timeout, expire)

        def timeout_keep_alive_handler(self) -> None:
            if not self.transport.is_closing():
                self.transport.abort()  # an idle kept-alive connection: gone at once, not after a TLS close

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return GuardedH11Protocol


def handshake_bounded_server(handshake_timeout: float) -> type:
    """``uvicorn.Server`` whose TLS listener bounds each handshake at ``handshake_timeout`` seconds.

    uvicorn leaves asyncio's default (60 s): a peer that connects and never
    finishes the handshake holds a socket that long, and it is not counted
    against ``max_connections`` (the protocol sees a connection only after
    its handshake). ``loop.create_server`` is wrapped only while this server
    starts, on its own (asyncio) loop.
    """
    import asyncio

    import uvicorn

    class HandshakeBoundedServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            loop = asyncio.get_running_loop()
            create_server = loop.create_server

            async def bounded(*args: Any, **kwargs: Any) -> Any:
                if kwargs.get("ssl") is not None:
                    kwargs["ssl_handshake_timeout"] = handshake_timeout
                return await create_server(*args, **kwargs)

            loop.create_server = bounded  # type: ignore[method-assign]
            try:
                await super().startup(sockets=sockets)
            finally:
                del loop.create_server

    return HandshakeBoundedServer


def start_front_door(node: Any) -> RunningFrontDoor:
    """uvicorn in a daemon thread; returns once it listens (raises if it cannot bind).

    The TLS handshake is bounded by ``front_door.handshake_timeout`` if the
    front door's settings have one, else by ``header_timeout`` (``--header-timeout``, 10 s):
    a connection gets that long for its handshake, then that long again for
    its first request's headers.
    """
    import uvicorn

    c = node.front_door
    handshake_timeout = float(getattr(c, "handshake_timeout", c.header_timeout))
    tls = {"ssl_certfile": str(c.certfile), "ssl_keyfile": str(c.keyfile)} if c.certfile else {}
    config = uvicorn.Config(build_app(node), host=c.host, port=c.port, log_level="warning", access_log=False,
                            loop="asyncio",  # not uvloop: its loop cannot take the handshake bound above
                            timeout_graceful_shutdown=1, timeout_keep_alive=c.keep_alive,
                            limit_concurrency=c.max_connections + 1,  # our cap closes connections beyond it first
                            http=guarded_protocol(header_timeout=c.header_timeout,
                                                  max_connections=c.max_connections), **tls)
    server = handshake_bounded_server(handshake_timeout)(config)
    node.open_connections = lambda: len(server.server_state.connections)  # for health details
    thread = threading.Thread(target=server.run, name="pricure-front-door", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the front door could not listen on {c.host}:{c.port}")
        time.sleep(0.02)
    return RunningFrontDoor(server, thread)

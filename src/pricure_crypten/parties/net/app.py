"""The front door of one server: FastAPI over HTTPS (uvicorn), bearer-token authentication.

Endpoints (JSON unless noted; every error is ``{"detail": "one clear line"}``):

* ``GET /v1/health``: public facts (rank, MPC state, owners loaded, input shape); no credential.
* ``PUT /v1/model`` (owner): body = the owner's share bundle (``.npz``,
  ``application/octet-stream``), header ``X-Upload-Id``. The owner is the
  credential's identity, so nobody can write another owner's model.
  ``DELETE /v1/model`` withdraws it, ``GET /v1/model`` shows its metadata.
* ``POST /v1/queries`` (client): ``{"request_id": 32 hex, "share": {dtype, shape, data}}``.
* ``GET /v1/queries/{request_id}`` (client): status and, when done, this
  server's share of the one-hot labels; another client's id reads as unknown.

Tokens are never logged (uvicorn's access log is off; only hashes are stored).
"""



import json
import threading
import time
from typing import Any

from .wire import REQUEST_ID, ShapeError, WireError, decode_array

MAX_JSON_BYTES = 16 * 1024 * 1024


def _read_limited(request: Any, limit: int) -> Any:
    async def read() -> bytes:
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


def _http(status: int, detail: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


def build_app(node: Any) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="pricure server", docs_url=None, redoc_url=None, openapi_url=None)

    def who(request: Request, role: str) -> str:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        found = node.credentials.lookup(token)
        if found is None:
            raise _http(401, "missing or unknown credential (use the bearer token from 'pricure admin add')")
        if found[0] != role:
            raise _http(403, f"this credential belongs to a {found[0]}, not a {role}")
        return found[1]

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # the server keeps running; no details leak
        return JSONResponse(status_code=500, content={"detail": f"internal error ({type(error).__name__})"})

    @app.get("/v1/health")
    def health() -> dict:
        return node.public_info()

    @app.put("/v1/model")
    async def put_model(request: Request) -> dict:
        owner = who(request, "owner")
        upload_id = request.headers.get("x-upload-id", "")
        if not REQUEST_ID.match(upload_id):
            raise _http(400, "header X-Upload-Id must be 32 lowercase hex digits (the same on every server)")
        data = await _read_limited(request, node.models.max_bytes)
        try:
            return node.models.put(owner, upload_id, data)
        except WireError as error:
            raise _http(400, str(error)) from None

    @app.get("/v1/model")
    def get_model(request: Request) -> dict:
        owner = who(request, "owner")
        meta = node.models.meta().get(owner)
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
        body = await _read_limited(request, MAX_JSON_BYTES)
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _http(400, "the body is not JSON") from None
        if not isinstance(message, dict) or set(message) != {"request_id", "share"}:
            raise _http(400, "the body must be an object with keys request_id and share")
        if not isinstance(message["request_id"], str):
            raise _http(400, "request_id must be a string")
        try:
            share = decode_array(message["share"], name="share")
            node.submit(client, message["request_id"], share)
        except WireError as error:
            raise _http(422 if isinstance(error, ShapeError) else 400, str(error)) from None
        except LookupError as error:
            raise _http(503, str(error)) from None
        except FileExistsError as error:
            raise _http(409, str(error)) from None
        return {"request_id": message["request_id"], "status": "pending"}

    @app.get("/v1/queries/{request_id}")
    def get_query(request_id: str, request: Request) -> dict:
        client = who(request, "client")
        result = node.result(client, request_id) if REQUEST_ID.match(request_id) else None
        if result is None:
            raise _http(404, f"no request {request_id} of client {client} on this server")
        return result

    return app


class FrontDoor:
    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def start_front_door(node: Any) -> FrontDoor:
    """uvicorn in a daemon thread; returns once it listens (raises if it cannot bind)."""
    import uvicorn

    c = node.config
    tls = {"ssl_certfile": str(c.certfile), "ssl_keyfile": str(c.keyfile)} if c.certfile else {}
    config = uvicorn.Config(build_app(node), host=c.host, port=c.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=1, **tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="pricure-front-door", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the front door could not listen on {c.host}:{c.port}")
        time.sleep(0.02)
    return FrontDoor(server, thread)

"""The HTTP API over trained runs (FastAPI): one process, one or more mounted models.

    POST /v1/<path>     what the mounted predictors declare they serve (serve/routes.py builds the
                        routes from their declarations, nanonlp/predict/service.py); the built-in ones:
        /v1/generate    language models: a prompt's continuation, or a stream of server-sent events
        /v1/classify    classifiers: per text the label (or the abstention) and the probabilities
        /v1/translate   translators: per text the translation, or the n best with their scores
        /v1/tag         taggers: per text the entities with character offsets and confidences
        /v1/chat        assistants: one turn of a conversation
    GET  /v1/models     what is mounted: task, labels or languages, limits, and each model's endpoints
    GET  /health        liveness
    GET  /metrics       Prometheus metrics (serve/metrics.py)
    GET  /              the web page (serve/static: plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
    GET  /docs          the OpenAPI page FastAPI gives

A request names its model in `model`, which may be left out when one mounted model serves the
endpoint. The server knows no task: an endpoint declared "batch" (classify, tag) has its requests to
one model batched together (serve/batching.py) on a worker thread, outside the event loop; one
declared "schedule" (generate) shares a scheduler per model that steps all its sequences together,
one token each per forward pass (continuous batching, serve/generation.py); one declared "thread"
(translate, chat) runs on the thread pool, under a cancel flag.

Every request is bounded: the body (413), the texts per request, a generation's tokens per request
(prompts x max_new_tokens), the stop strings (count and length), each text's length (a predictor
reads what it can and the result says `truncated: true`), the time (504; the work behind it is
cancelled between decoding steps), and the queue per model, streams included (503).

Errors are JSON `{"detail": ..., "request_id": ...}` with a status: 400 (a request the model cannot
serve, or a Host header the server does not answer), 401 (no or wrong API key), 404 (unknown model),
408 (the body came too slowly), 413 (body over the limit), 415 (a body that is not
application/json), 422 (schema, naming the field; a generation budget over the server's cap), 503
with Retry-After (the model's queue is full), 504 (over the per-request time limit), 500 (a bug:
logged with the request id, never the traceback to the client). Each request is logged as one JSON
line on the `nanonlp.serve.access` logger.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time,
# and they name classes imported inside create_app (FastAPI is an optional dependency).
import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanonlp.errors import NanoNLPError

log = logging.getLogger("nanonlp.serve")
access_log = logging.getLogger("nanonlp.serve.access")


@dataclass
class ServeSettings:
    max_body_bytes: int = 10 * 1024 * 1024  # larger request bodies get 413
    max_batch: int = 64  # items (texts) run together at most
    max_wait_ms: float = 5.0  # how long a batch waits for more requests once one is there
    max_queue: int = 64  # requests waiting per model before 503
    timeout_s: float = 30.0  # per request; then 504
    max_new_tokens: int = 1024  # generation budget cap per prompt
    max_sequences: int = 32  # sequences a language model generates together at most (more wait their turn)
    max_request_tokens: int = 16384  # generation budget cap per request: prompts x max_new_tokens
    max_texts: int = 256  # texts per request
    max_connections: int = 256  # open connections at most (uvicorn answers 503 past it)
    read_timeout_s: float = 30.0  # a request body that pauses longer than this between chunks gets 408
    graceful_timeout_s: float = 20.0  # on SIGTERM, in-flight requests get this long to finish
    api_key: str | None = None  # bearer token required on /v1/* when set
    allowed_hosts: tuple[str, ...] = ()  # Host headers answered (others get 400, against DNS rebinding); () any


def create_app(models: dict[str, Any], settings: ServeSettings | None = None, analysis=None,
               load_seconds: dict[str, float] | None = None):
    """The FastAPI app serving `models` (name -> predictor from `nanonlp.load`), and POST /v1/analyze
    when `analysis` (serve/analyze.py's AnalysisService) is given; `load_seconds`, how long each model
    took to load, for /metrics."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from nanonlp.predict.lm import MAX_STOP_LENGTH, MAX_STOP_STRINGS
    from nanonlp.serve import routes
    from nanonlp.serve.metrics import Metrics
    from nanonlp.serve.routes import Models

    settings = settings or ServeSettings()
    metrics = Metrics()
    served = Models(models, settings, metrics)  # what each predictor declares it serves (nanonlp/predict/service.py)
    for name, seconds in (load_seconds or {}).items():
        metrics.load_seconds.labels(name).set(seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if served.stopped:
            served.start()  # the app started again after a shutdown
        yield
        await served.close()

    app = FastAPI(title="nanonlp", version="1", description="Trained nanonlp runs over HTTP.", lifespan=lifespan)
    app.state.mounted, app.state.settings = served.mounted, settings

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise HTTPException(401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'.",
                                headers={"WWW-Authenticate": "Bearer"})

    def error(status: int, detail, rid: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail, "request_id": rid}, status_code=status, headers=headers)

    def rid_of(request: Request) -> str:
        return getattr(request.state, "request_id", "")

    @app.exception_handler(NanoNLPError)
    async def bad_request(request: Request, err: NanoNLPError):
        return error(400, str(err), rid_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return error(err.status_code, err.detail, rid_of(request), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception):
        # Starlette's outermost middleware answers with this, then raises the error on (RequestContext ends it)
        rid = rid_of(request)
        log.error("request %s %s %s failed", rid, request.method, request.url.path, exc_info=err)
        return error(500, "internal error; the server log has it under this request id.", rid)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in err.errors()]
        return error(422, detail, rid_of(request))

    static = Path(__file__).parent / "static"
    pages = {"style.css": "text/css", "app.js": "text/javascript"}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in pages:
            raise HTTPException(404, "no such file.")
        return FileResponse(static / name, media_type=pages[name])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": len(served.mounted)}

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(check_key)])
    async def prometheus() -> Response:
        body, media_type = metrics.render()
        return Response(body, media_type=media_type)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict:
        return {"models": [m.describe() for m in served.mounted.values()],
                "limits": {"max_body_bytes": settings.max_body_bytes, "max_texts": settings.max_texts,
                           "max_new_tokens": settings.max_new_tokens, "max_request_tokens": settings.max_request_tokens,
                           "max_stop_strings": MAX_STOP_STRINGS, "max_stop_length": MAX_STOP_LENGTH, "timeout_s": settings.timeout_s}}

    app.include_router(routes.router(served, check_key))

    if analysis is not None:  # opinion and risk monitoring (serve/analyze.py)
        from nanonlp.serve.analyze import router as analyze_router

        app.include_router(analyze_router(analysis, check_key, settings.max_texts))
    app.include_router(routes.fallback(served, check_key))  # last: a path no mounted model serves

    return BodyLimit(RequestContext(app, settings.allowed_hosts, metrics), settings.max_body_bytes, settings.read_timeout_s)


def _request_id(scope) -> str:
    """The X-Request-ID the request carries, when it is a short plain token (a load balancer's, or Ray
    Serve's proxy's: then one id names the request in every log), else a new one."""
    given = dict(scope.get("headers", [])).get(b"x-request-id", b"")
    return given.decode() if re.fullmatch(rb"[A-Za-z0-9._-]{1,64}", given) else uuid.uuid4().hex[:12]


def _json_response(status: int, detail: str, rid: str) -> tuple[dict, dict]:
    body = json.dumps({"detail": detail, "request_id": rid}).encode()
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"x-request-id", rid.encode())]},
            {"type": "http.response.body", "body": body})


class RequestContext:
    """ASGI middleware around the app: gives each request its id (`request.state.request_id`, the
    X-Request-ID header, every error body), answers only the allowed Host names (against DNS
    rebinding), takes POST bodies as JSON only (415: a page elsewhere cannot make a browser send a
    no-preflight text/plain or form POST that is then read as JSON), turns a bug into a 500 that
    names the id, and writes one JSON access-log line and the metrics per request.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would end a streaming response
    early and hold whole responses in memory."""

    def __init__(self, app, allowed_hosts: tuple[str, ...], metrics):
        self.app, self.hosts, self.metrics = app, {h.lower() for h in allowed_hosts}, metrics
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1").lower()
        host = host[: host.find("]") + 1] if host.startswith("[") else host.split(":")[0]  # the port dropped; [::1] kept whole
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        status = 500
        started = False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        async def refuse(code: int, detail: str):
            nonlocal status, started
            start_message, body = _json_response(code, detail, rid)
            status, started = code, True
            await send(start_message)
            await send(body)

        try:
            if self.hosts and host not in self.hosts:
                await refuse(400, "this server does not answer that Host header.")
            elif scope["method"] == "POST" and media_type != "application/json":
                await refuse(415, "send the body as JSON with the header 'Content-Type: application/json'.")
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:  # a bug: the client gets the id, the log gets the traceback (once: the app's handler logged it)
            if not started:
                log.exception("request %s %s %s failed", rid, scope["method"], scope["path"])
                await refuse(500, "internal error; the server log has it under this request id.")
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "other"  # unknown paths share one label
            seconds = time.perf_counter() - start
            self.metrics.observe(endpoint, status, seconds)
            client = scope.get("client")
            access_log.info(json.dumps({"request_id": rid, "method": scope["method"], "path": scope["path"], "status": status,
                                        "ms": round(seconds * 1000, 2), "client": client[0] if client else None}))


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, whether or not it says its length;
    a body that pauses more than `read_timeout` seconds between chunks gets 408.

    A client that writes its whole body before reading the answer (urllib, requests) would see its
    connection reset if the server answered and closed mid-body, so an oversized body is read and
    dropped up to a bound (DRAIN_FACTOR times the limit, for at most DRAIN_SECONDS) before the 413,
    which then closes the connection."""

    DRAIN_FACTOR = 4
    DRAIN_SECONDS = 10.0

    def __init__(self, app, limit: int, read_timeout: float = 30.0):
        self.app, self.limit, self.read_timeout = app, limit, read_timeout
        self.state = app.state  # the FastAPI app's state (mounted models, settings) stays reachable

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        length = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.limit:
                await self._drain(receive, 0)
                return await self._refuse(scope, send, 413, f"the request body is over this server's limit of {self.limit:,} bytes.")
            # the body, declared or chunked, is read whole before the app (stopping past the limit), each
            # chunk within the read timeout; bytearray: a body dripped in small chunks costs linear time
            body, more = bytearray(), True
            while more:
                message = await asyncio.wait_for(receive(), self.read_timeout)
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.limit:
                    if more:
                        await self._drain(receive, len(body))
                    return await self._refuse(scope, send, 413, f"the request body is over this server's limit of {self.limit:,} bytes.")
        except asyncio.TimeoutError:
            return await self._refuse(scope, send, 408, f"the request body paused for over {self.read_timeout:g} s; send it whole.")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive, read: int) -> None:
        """Read and drop the rest of the body, up to the bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.DRAIN_SECONDS
        bound = self.DRAIN_FACTOR * self.limit
        while read <= bound:
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, scope, send, status: int, detail: str) -> None:
        start, body = _json_response(status, detail, _request_id(scope))
        start["headers"].append((b"connection", b"close"))
        await send(start)
        await send(body)

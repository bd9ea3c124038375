"""The HTTP API over trained runs (FastAPI): one process, one or more mounted models.

    POST /v1/generate   language models: a prompt's continuation, or a stream of server-sent events
    POST /v1/classify   classifiers: per text the label (or the abstention) and the probabilities
    POST /v1/translate  translators: per text the translation, or the n best with their scores
    POST /v1/tag        taggers: per text the entities with character offsets and confidences
    POST /v1/chat       assistants: one turn of a conversation (serve/chat.py)
    GET  /v1/models     what is mounted: task, labels or languages, limits
    GET  /health        liveness
    GET  /metrics       Prometheus metrics (serve/metrics.py)
    GET  /              the web page (serve/static: plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
    GET  /docs          the OpenAPI page FastAPI gives

A request names its model in `model`, which may be left out when one mounted model serves the
endpoint. Every endpoint takes a batch. Classify, translate and tag requests to one model are
batched together (serve/batching.py, translations one beam search per beam size) and run on a
worker thread, outside the event loop; generation runs on the thread pool, one stream per request.

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
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanonlp.decode import Cancelled
from nanonlp.errors import NanoNLPError
from nanonlp.serve import chat
from nanonlp.serve.batching import Batcher, QueueFull

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
    max_request_tokens: int = 16384  # generation budget cap per request: prompts x max_new_tokens
    max_texts: int = 256  # texts per request
    max_connections: int = 256  # open connections at most (uvicorn answers 503 past it)
    read_timeout_s: float = 30.0  # a request body that pauses longer than this between chunks gets 408
    graceful_timeout_s: float = 20.0  # on SIGTERM, in-flight requests get this long to finish
    api_key: str | None = None  # bearer token required on /v1/* when set
    allowed_hosts: tuple[str, ...] = ()  # Host headers answered (others get 400, against DNS rebinding); () any


@dataclass
class Mounted:
    name: str
    task: str
    predictor: Any
    batcher: Batcher | None = None


def _truncated(mounted: Mounted, text: str) -> bool:
    """Whether the model reads only part of `text` (the start; a language model, the end)."""
    p = mounted.predictor
    if mounted.task == "lm":
        return p.truncated(text)
    if mounted.task == "classify":
        tokenizer = getattr(p.encoder.tokenizer, "inner", p.encoder.tokenizer)
        count = len(tokenizer.split(text)) if getattr(tokenizer, "kind", None) == "word" else len(tokenizer.encode(text))
        return count > p.max_input_length
    if mounted.task == "translate":
        limit = p.max_input_length
        return limit is not None and len(p.vocab.source.encode(text.strip())) + 1 > limit  # + the end token
    return False


def _describe(m: Mounted) -> dict:
    p = m.predictor
    info = {"name": m.name, "task": m.task, "max_input_length": getattr(p, "max_input_length", None)}
    if m.task in ("classify", "tag"):
        info["labels"] = list(p.labels)
    if m.task == "classify" and hasattr(p, "label_names"):
        info["label_names"] = {language: p.label_names(language) for language in ("en", "zh")}  # labels by name, as answered
    if m.task == "translate":
        info["languages"] = list(p.languages)
    if m.task == "lm":
        info["vocab_size"] = p.vocab_size
    if m.task == chat.ASSISTANT:
        info.update(chat.describe(p))
    return info


def create_app(models: dict[str, Any], settings: ServeSettings | None = None, analysis=None,
               load_seconds: dict[str, float] | None = None):
    """The FastAPI app serving `models` (name -> predictor from `nanonlp.load`), and POST /v1/analyze
    when `analysis` (serve/analyze.py's AnalysisService) is given; `load_seconds`, how long each model
    took to load, for /metrics."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, model_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from nanonlp.predict.lm import MAX_STOP_LENGTH, MAX_STOP_STRINGS, SampleConfig, check_stop
    from nanonlp.serve.metrics import Metrics

    settings = settings or ServeSettings()
    metrics = Metrics()
    mounted: dict[str, Mounted] = {}
    for name, predictor in models.items():
        task = getattr(predictor, "task", None) or ("lm" if hasattr(predictor, "stream") else None) \
            or (chat.ASSISTANT if chat.is_assistant(predictor) else None)
        mounted[name] = Mounted(name, task, predictor)
    busy: dict[str, int] = {name: 0 for name in mounted}  # translate / generate jobs and streams running or waiting, per model
    running: set[threading.Event] = set()  # the cancel flags of decoding in flight, all set when the app shuts down
    for name, seconds in (load_seconds or {}).items():
        metrics.load_seconds.labels(name).set(seconds)

    def start_batchers() -> None:
        for m in mounted.values():
            run = {"classify": getattr(m.predictor, "predict", None), "tag": getattr(m.predictor, "tag", None),
                   "translate": getattr(m.predictor, "translate_requests", None)}.get(m.task)
            if run is not None:  # a translation batch is a beam search that stops between steps when cancelled
                m.batcher = Batcher(run, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue, m.name,
                                    on_batch=metrics.batch_observer(m.name), cancellable=m.task == "translate")

    start_batchers()
    for m in mounted.values():
        metrics.watch_queue(m.name, (lambda m=m: m.batcher.depth) if m.batcher is not None else (lambda m=m: busy[m.name]))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if any(m.batcher is not None and m.batcher.closed for m in mounted.values()):
            start_batchers()  # the app started again after a shutdown
        yield
        for cancel in list(running):  # past the graceful period: decoding still running stops at its next step
            cancel.set()
        for m in mounted.values():  # the batchers' worker threads end with the server
            if m.batcher is not None:
                await asyncio.to_thread(m.batcher.close)

    app = FastAPI(title="nanonlp", version="1", description="Trained nanonlp runs over HTTP.", lifespan=lifespan)
    app.state.mounted, app.state.settings = mounted, settings

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    Texts = Field(..., min_length=1, max_length=settings.max_texts, description="the texts, a batch")

    class ClassifyRequest(Strict):
        model: str | None = None
        texts: list[str] = Texts

    class TagRequest(Strict):
        model: str | None = None
        texts: list[str] = Texts

    class TranslateRequest(Strict):
        model: str | None = None
        texts: list[str] = Texts
        beam: int | None = Field(None, ge=1, le=32)
        nbest: int = Field(1, ge=1, le=32)

    class GenerateRequest(Strict):
        model: str | None = None
        prompt: str | list[str] = "\n"
        max_new_tokens: int = Field(200, ge=1)
        temperature: float = Field(0.8, ge=0.0, description="0 is greedy")
        top_k: int = Field(0, ge=0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        seed: int | None = Field(None, ge=0, lt=2**63)
        stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS,
                                description=f"at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} characters")
        stream: bool = False

        @model_validator(mode="after")
        def sampling(self):
            # the one validation of sampling options, shared with the CLI and the predictors
            try:
                SampleConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                             top_p=self.top_p).validate()
                check_stop(self.stop)
            except NanoNLPError as err:
                raise ValueError(str(err).replace("sample.", "")) from None
            return self

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise HTTPException(401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'.",
                                headers={"WWW-Authenticate": "Bearer"})

    def pick(name: str | None, task: str) -> Mounted:
        serving = [m for m in mounted.values() if m.task == task]
        if name is None:
            if len(serving) == 1:
                return serving[0]
            if not serving:
                raise HTTPException(404, f"no mounted model serves this endpoint (it needs a {task} run).")
            raise HTTPException(400, f"several models serve this endpoint: name one in 'model' ({', '.join(m.name for m in serving)}).")
        if name not in mounted:
            raise HTTPException(404, f"no model named '{name}' is mounted; GET /v1/models lists them.")
        if mounted[name].task != task:
            raise HTTPException(400, f"model '{name}' is a {mounted[name].task} run; this endpoint needs a {task} run.")
        return mounted[name]

    def timed_out(what: str = "its work was stopped") -> HTTPException:
        return HTTPException(504, f"the request took longer than the server's limit of {settings.timeout_s:g} s; {what}.")

    def full(m: Mounted) -> HTTPException:
        return HTTPException(503, f"model '{m.name}' has a full queue; retry shortly.", headers={"Retry-After": "1"})

    async def batched(m: Mounted, texts: list[str]) -> list:
        try:
            future = m.batcher.submit(texts)
        except QueueFull:
            raise full(m) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except asyncio.TimeoutError:
            # a request still waiting leaves the queue; a batch stops only when all its requests gave up
            outcome = m.batcher.give_up(future)
            raise timed_out({"dequeued": "it was taken off the model's queue", "stopped": "its work was stopped",
                             "shared": "its texts finish with the other requests of their batch, unread",
                             "finished": "its work had just finished"}[outcome]) from None

    async def in_thread(m: Mounted, fn):
        """fn(cancel) on the thread pool, where `cancel` is a threading.Event set when the time limit
        passes (decoding stops at its next step); at most max_queue jobs per model (503 past that)."""
        if busy[m.name] >= settings.max_queue:
            raise full(m)
        busy[m.name] += 1
        cancel = threading.Event()
        running.add(cancel)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, cancel), settings.timeout_s)
        except asyncio.TimeoutError:
            cancel.set()
            raise timed_out() from None
        except asyncio.CancelledError:  # the server is stopping: the thread's work stops too
            cancel.set()
            raise
        finally:
            running.discard(cancel)
            busy[m.name] -= 1

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
        return {"status": "ok", "models": len(mounted)}

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(check_key)])
    async def prometheus() -> Response:
        body, media_type = metrics.render()
        return Response(body, media_type=media_type)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict:
        return {"models": [_describe(m) for m in mounted.values()],
                "limits": {"max_body_bytes": settings.max_body_bytes, "max_texts": settings.max_texts,
                           "max_new_tokens": settings.max_new_tokens, "max_request_tokens": settings.max_request_tokens,
                           "max_stop_strings": MAX_STOP_STRINGS, "max_stop_length": MAX_STOP_LENGTH, "timeout_s": settings.timeout_s}}

    @app.post("/v1/classify", dependencies=[Depends(check_key)])
    async def classify(body: ClassifyRequest) -> dict:
        m = pick(body.model, "classify")
        results = await batched(m, body.texts)
        flags = await asyncio.to_thread(lambda: [_truncated(m, t) for t in body.texts])  # tokenizing is CPU work: off the loop
        return {"model": m.name, "results": [{**r, "truncated": f} for r, f in zip(results, flags)]}

    @app.post("/v1/tag", dependencies=[Depends(check_key)])
    async def tag(body: TagRequest) -> dict:
        m = pick(body.model, "tag")
        return {"model": m.name, "results": await batched(m, body.texts)}

    @app.post("/v1/translate", dependencies=[Depends(check_key)])
    async def translate(body: TranslateRequest) -> dict:
        m = pick(body.model, "translate")
        beam = m.predictor.check_beam(body.beam, body.nbest)  # a bad nbest is this request's 400, not its batch's error
        # texts of concurrent requests share one batched search per beam size (Translator.translate_requests)
        nbest = await batched(m, [(text, beam, body.nbest) for text in body.texts])
        flags = await asyncio.to_thread(lambda: [_truncated(m, t) for t in body.texts])  # tokenizing is CPU work: off the loop
        return {"model": m.name, "results": [
            {"translation": hyps[0][0] if hyps else "", "nbest": [{"text": t, "score": s} for t, s in hyps], "truncated": flag}
            for flag, hyps in zip(flags, nbest)]}

    @app.post("/v1/generate", dependencies=[Depends(check_key)])
    async def generate(body: GenerateRequest):
        m = pick(body.model, "lm")
        if body.max_new_tokens > settings.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens {body.max_new_tokens} is over this server's limit of {settings.max_new_tokens}.")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > settings.max_texts:
            raise HTTPException(422, f"give 1 to {settings.max_texts} prompts.")
        if len(prompts) * body.max_new_tokens > settings.max_request_tokens:
            raise HTTPException(422, f"{len(prompts)} prompts x max_new_tokens {body.max_new_tokens} is over this server's limit of "
                                     f"{settings.max_request_tokens:,} generated tokens per request; send fewer prompts or tokens.")
        options = dict(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                       seed=body.seed, stop=body.stop, on_token=metrics.token_counter(m.name))
        if body.stream:
            if not isinstance(body.prompt, str):
                raise HTTPException(422, "stream takes one prompt (a string), not a list.")
            if busy[m.name] >= settings.max_queue:  # a stream holds a slot of the model's queue while it runs
                raise full(m)
            cancel = threading.Event()
            # encoding the prompt is CPU work: off the loop; bad arguments raise here, before any byte is sent
            pieces = await asyncio.to_thread(m.predictor.stream, body.prompt, cancel=cancel, **options)
            busy[m.name] += 1
            running.add(cancel)

            def release() -> None:
                busy[m.name] -= 1
                running.discard(cancel)

            return StreamingResponse(_sse(pieces, m.name, cancel, settings.timeout_s, release),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, flags = await in_thread(m, lambda cancel: (m.predictor.generate(prompts, cancel=cancel, **options),
                                                          [m.predictor.truncated(p) for p in prompts]))
        return {"model": m.name, "results": [{"text": t, "completion": t[len(p):], "truncated": f}
                                             for p, t, f in zip(prompts, texts, flags)]}

    app.include_router(chat.router(pick, in_thread, check_key))

    if analysis is not None:  # opinion and risk monitoring (serve/analyze.py)
        from nanonlp.serve.analyze import router as analyze_router

        app.include_router(analyze_router(analysis, check_key, settings.max_texts))

    return BodyLimit(RequestContext(app, settings.allowed_hosts, metrics), settings.max_body_bytes, settings.read_timeout_s)


async def _sse(pieces, name: str, cancel: threading.Event, timeout_s: float, release):
    """Server-sent events of a generation: `data: {"text": piece}` per piece, then `data: [DONE]`.

    The pieces are generated on a thread of their own, which hands them to the event loop as they
    come; pieces that arrive together go out in one write. (Iterating the generator one `next` per
    thread-pool call would cost a thread hop per token.) If the client goes away, or the stream runs
    past the server's time limit (an `event: error` says so), generation stops at its next token.
    `release` frees the stream's slot of the model's queue when it ends, whichever way."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def produce() -> None:
        try:
            for piece in pieces:
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        except Cancelled:
            pass  # the consumer stopped waiting and has said why
        except Exception:  # a bug in generation: logged here, an error event to the client
            log.exception("stream of model %s failed", name)
            loop.call_soon_threadsafe(queue.put_nowait, ("error", "internal error"))
        finally:
            loop.call_soon_threadsafe(release)

    threading.Thread(target=produce, name="nanonlp-stream", daemon=True).start()
    deadline = loop.time() + timeout_s
    try:
        while True:
            try:
                events = [await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))]
            except asyncio.TimeoutError:
                events = [("error", f"the stream took longer than the server's limit of {timeout_s:g} s; it was stopped.")]
            while not queue.empty() and events[-1][0] == "piece":
                events.append(queue.get_nowait())
            out = []
            for kind, piece in events:
                if kind == "piece":
                    out.append(f"data: {json.dumps({'text': piece}, ensure_ascii=False)}\n\n")
                elif kind == "done":
                    out.append("data: [DONE]\n\n")
                else:
                    out.append(f"event: error\ndata: {json.dumps({'detail': piece})}\n\n")
            yield "".join(out)
            if events[-1][0] != "piece":
                return
    finally:
        cancel.set()  # a client that left, or the time limit: the producer stops before its next token


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
        rid = uuid.uuid4().hex[:12]
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
                return await self._refuse(send, 413, f"the request body is over this server's limit of {self.limit:,} bytes.")
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
                    return await self._refuse(send, 413, f"the request body is over this server's limit of {self.limit:,} bytes.")
        except asyncio.TimeoutError:
            return await self._refuse(send, 408, f"the request body paused for over {self.read_timeout:g} s; send it whole.")
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

    async def _refuse(self, send, status: int, detail: str) -> None:
        start, body = _json_response(status, detail, uuid.uuid4().hex[:12])
        start["headers"].append((b"connection", b"close"))
        await send(start)
        await send(body)

"""The HTTP API over trained runs (FastAPI): one process, one or more mounted models.

    POST /v1/generate   language models: a prompt's continuation, or a stream of server-sent events
    POST /v1/classify   classifiers: per text the label (or the abstention) and the probabilities
    POST /v1/translate  translators: per text the translation, or the n best with their scores
    POST /v1/tag        taggers: per text the entities with character offsets and confidences
    POST /v1/chat       assistants: one turn of a conversation (serve/chat.py)
    GET  /v1/models     what is mounted: task, labels or languages, limits
    GET  /health        liveness
    GET  /              the web page (serve/static: plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
    GET  /docs          the OpenAPI page FastAPI gives

A request names its model in `model`, which may be left out when one mounted model serves the
endpoint. Every endpoint takes a batch. Classify, translate and tag requests to one model are
batched together (serve/batching.py) and run on a worker thread, outside the event loop;
generation runs on the thread pool, one stream per request.

Errors are JSON `{"detail": ...}` with a status: 401 (no or wrong API key), 404 (unknown model),
400 (a request the model cannot serve), 413 (body over the limit), 422 (schema, naming the field;
a generation budget over the server's cap), 503 with Retry-After (the model's queue is full), 504
(over the per-request time limit), 500 (a bug: logged with the request id, never the traceback to
the client). Texts longer than a model reads are truncated, and the result says `truncated: true`.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time,
# and they name classes imported inside create_app (FastAPI is an optional dependency).
import asyncio
import contextlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanonlp.errors import NanoNLPError
from nanonlp.serve import chat
from nanonlp.serve.batching import Batcher, QueueFull

log = logging.getLogger("nanonlp.serve")


@dataclass
class ServeSettings:
    max_body_bytes: int = 10 * 1024 * 1024  # larger request bodies get 413
    max_batch: int = 64  # items (texts) run together at most
    max_wait_ms: float = 5.0  # how long a batch waits for more requests once one is there
    max_queue: int = 64  # requests waiting per model before 503
    timeout_s: float = 30.0  # per request; then 504
    max_new_tokens: int = 1024  # generation budget cap per request
    max_texts: int = 256  # texts per request
    api_key: str | None = None  # bearer token required on /v1/* when set
    allowed_hosts: tuple[str, ...] = ()  # Host headers answered (others get 400, against DNS rebinding); () any


@dataclass
class Mounted:
    name: str
    task: str
    predictor: Any
    batcher: Batcher | None = None


def _truncated(mounted: Mounted, text: str) -> bool:
    """Whether the model reads only the start of `text`."""
    p = mounted.predictor
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
    if m.task == "translate":
        info["languages"] = list(p.languages)
    if m.task == "lm":
        info["vocab_size"] = p.vocab_size
    if m.task == chat.ASSISTANT:
        info.update(chat.describe(p))
    return info


def create_app(models: dict[str, Any], settings: ServeSettings | None = None):
    """The FastAPI app serving `models` (name -> predictor from `nanonlp.load`)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field

    settings = settings or ServeSettings()
    mounted: dict[str, Mounted] = {}
    for name, predictor in models.items():
        task = getattr(predictor, "task", None) or ("lm" if hasattr(predictor, "stream") else None) \
            or (chat.ASSISTANT if chat.is_assistant(predictor) else None)
        mounted[name] = Mounted(name, task, predictor)
    busy: dict[str, int] = {name: 0 for name in mounted}  # translate / generate jobs running or waiting, per model

    def start_batchers() -> None:
        for m in mounted.values():
            run = {"classify": getattr(m.predictor, "predict", None), "tag": getattr(m.predictor, "tag", None)}.get(m.task)
            if run is not None:
                m.batcher = Batcher(run, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue, m.name)

    start_batchers()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if any(m.batcher is not None and m.batcher.closed for m in mounted.values()):
            start_batchers()  # the app started again after a shutdown
        yield
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
        temperature: float = Field(0.8, gt=0.0)
        top_k: int = Field(0, ge=0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        seed: int | None = Field(None, ge=0, lt=2**63)
        stop: list[str] = Field(default_factory=list)
        stream: bool = False

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

    async def batched(m: Mounted, texts: list[str]) -> list:
        try:
            future = m.batcher.submit(texts)
        except QueueFull:
            raise HTTPException(503, f"model '{m.name}' has a full queue; retry shortly.", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise HTTPException(504, f"the request took longer than the server's limit of {settings.timeout_s:g} s.") from None

    async def in_thread(m: Mounted, fn, *args):
        """fn on the thread pool; at most max_queue jobs per model run or wait (503 past that)."""
        if busy[m.name] >= settings.max_queue:
            raise HTTPException(503, f"model '{m.name}' has a full queue; retry shortly.", headers={"Retry-After": "1"})
        busy[m.name] += 1
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the request took longer than the server's limit of {settings.timeout_s:g} s.") from None
        finally:
            busy[m.name] -= 1

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = uuid.uuid4().hex[:12]
        request.state.request_id = rid
        try:
            response = await call_next(request)
        except Exception:  # a bug: the client gets the id, the log gets the traceback
            log.exception("request %s %s %s failed", rid, request.method, request.url.path)
            response = JSONResponse({"detail": "internal error; the server log has it under this request id.",
                                     "request_id": rid}, status_code=500)
        response.headers["X-Request-ID"] = rid
        return response

    @app.exception_handler(NanoNLPError)
    async def bad_request(request: Request, err: NanoNLPError):
        return JSONResponse({"detail": str(err)}, status_code=400)

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

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict:
        return {"models": [_describe(m) for m in mounted.values()],
                "limits": {"max_body_bytes": settings.max_body_bytes, "max_texts": settings.max_texts,
                           "max_new_tokens": settings.max_new_tokens, "timeout_s": settings.timeout_s}}

    @app.post("/v1/classify", dependencies=[Depends(check_key)])
    async def classify(body: ClassifyRequest) -> dict:
        m = pick(body.model, "classify")
        results = await batched(m, body.texts)
        return {"model": m.name, "results": [{**r, "truncated": _truncated(m, t)} for r, t in zip(results, body.texts)]}

    @app.post("/v1/tag", dependencies=[Depends(check_key)])
    async def tag(body: TagRequest) -> dict:
        m = pick(body.model, "tag")
        return {"model": m.name, "results": await batched(m, body.texts)}

    @app.post("/v1/translate", dependencies=[Depends(check_key)])
    async def translate(body: TranslateRequest) -> dict:
        m = pick(body.model, "translate")
        nbest = await in_thread(m, m.predictor.translate_nbest, body.texts, body.beam, body.nbest)
        return {"model": m.name, "results": [
            {"translation": hyps[0][0] if hyps else "", "nbest": [{"text": t, "score": s} for t, s in hyps],
             "truncated": _truncated(m, text)} for text, hyps in zip(body.texts, nbest)]}

    @app.post("/v1/generate", dependencies=[Depends(check_key)])
    async def generate(body: GenerateRequest):
        m = pick(body.model, "lm")
        if body.max_new_tokens > settings.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens {body.max_new_tokens} is over this server's limit of {settings.max_new_tokens}.")
        options = dict(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                       seed=body.seed, stop=body.stop)
        if body.stream:
            if not isinstance(body.prompt, str):
                raise HTTPException(422, "stream takes one prompt (a string), not a list.")
            pieces = m.predictor.stream(body.prompt, **options)  # bad arguments raise here, before any byte is sent
            return StreamingResponse(_sse(pieces, m.name), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > settings.max_texts:
            raise HTTPException(422, f"give 1 to {settings.max_texts} prompts.")
        texts = await in_thread(m, lambda: m.predictor.generate(prompts, **options))
        return {"model": m.name, "results": [{"text": t, "completion": t[len(p):]} for p, t in zip(prompts, texts)]}

    app.include_router(chat.router(pick, in_thread, check_key))

    if settings.allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    return BodyLimit(app, settings.max_body_bytes)


async def _sse(pieces, name: str):
    """Server-sent events of a generation: `data: {"text": piece}` per piece, then `data: [DONE]`.

    The pieces are generated on a thread of their own, which hands them to the event loop as they
    come; pieces that arrive together go out in one write. (Iterating the generator one `next` per
    thread-pool call would cost a thread hop per token.) If the client goes away, generation stops."""
    import json
    import threading

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for piece in pieces:
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        except Exception:  # a bug in generation: logged here, an error event to the client
            log.exception("stream of model %s failed", name)
            loop.call_soon_threadsafe(queue.put_nowait, ("error", None))

    threading.Thread(target=produce, name="nanonlp-stream", daemon=True).start()
    try:
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            out = []
            for kind, piece in events:
                if kind == "piece":
                    out.append(f"data: {json.dumps({'text': piece}, ensure_ascii=False)}\n\n")
                elif kind == "done":
                    out.append("data: [DONE]\n\n")
                else:
                    out.append(f"event: error\ndata: {json.dumps({'detail': 'internal error'})}\n\n")
            yield "".join(out)
            if events[-1][0] != "piece":
                return
    finally:
        stop.set()


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, whether or not it says its length."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.state = app.state  # the FastAPI app's state (mounted models, settings) stays reachable

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        if length is not None:  # the server reads no more than the length it was told
            return await self.app(scope, receive, send)
        body, more = b"", True  # no length given (chunked): read it all first, stopping past the limit
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        import json

        body = json.dumps({"detail": f"the request body is over this server's limit of {self.limit:,} bytes."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", uuid.uuid4().hex[:12].encode())]})
        await send({"type": "http.response.body", "body": body})

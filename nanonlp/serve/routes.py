"""The routes of the mounted models, built from what each predictor declares (nanonlp/predict/service.py):
one `POST /v1/<path>` per declared endpoint, with a strict request model generated from its fields.
Nothing here names a task.

    Models    the mounted predictors, and what their requests share: picking a model by name, the
              queue bound per model (503), the time limit (504, the work cancelled), the batchers
    Runner    how a declared endpoint's requests run on one model, by the name its declaration gives
              (RUNNERS): "batch" (dynamic batching across requests, serve/batching.py) or "thread" (the
              thread pool, with a cancel flag); a stream runs through `_sse`. A new way to run (a
              generation scheduler) is one more Runner subclass in RUNNERS, named by the endpoints
              that want it.
    router    the declared routes; `fallback` answers a path no mounted model serves, saying which
              task's run would.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.
import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, get_origin

from nanonlp.decode import Cancelled
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.predict.service import REQUIRED, Call, Endpoint, items_of
from nanonlp.serve.batching import Batcher, QueueFull

log = logging.getLogger("nanonlp.serve")


@dataclass
class Mounted:
    name: str
    predictor: Any
    task: str | None
    endpoints: dict[str, Endpoint]  # path -> what the predictor declares for it
    runners: dict[str, "Runner"] = field(default_factory=dict)  # path -> how its requests run (made when the app starts)

    def describe(self) -> dict:
        """What GET /v1/models says of the model: name, task, input limit, the predictor's own description,
        and its endpoints with their fields (the page builds its panels from them)."""
        p = self.predictor
        info = {"name": self.name, "task": self.task, "max_input_length": getattr(p, "max_input_length", None)}
        if callable(getattr(p, "describe", None)):
            info.update(p.describe())
        info["endpoints"] = [e.description() for e in self.endpoints.values()]
        return info


def mount(name: str, predictor) -> Mounted:
    """A predictor as the server holds it. One without `endpoints()` is listed in /v1/models and serves nothing."""
    declared = predictor.endpoints() if callable(getattr(predictor, "endpoints", None)) else []
    endpoints = {}
    for endpoint in declared:
        if endpoint.runner not in RUNNERS:
            raise ConfigError(f"model '{name}' declares /v1/{endpoint.path} with runner '{endpoint.runner}'; "
                              f"the server runs {', '.join(RUNNERS)}.")
        if endpoint.path in endpoints:
            raise ConfigError(f"model '{name}' declares /v1/{endpoint.path} twice.")
        endpoints[endpoint.path] = endpoint
    return Mounted(name, predictor, getattr(predictor, "task", None), endpoints)


def _plural(noun: str) -> str:
    return noun if noun.endswith("s") else noun + "s"


class Models:
    """The mounted models and the bounds their requests share."""

    def __init__(self, predictors: dict[str, Any], settings, metrics):
        self.settings, self.metrics = settings, metrics
        self.mounted = {name: mount(name, p) for name, p in predictors.items()}
        self.paths: dict[str, Endpoint] = {}  # path -> the first declaration: the request model all its models share
        for m in self.mounted.values():
            for path, endpoint in m.endpoints.items():
                first = self.paths.setdefault(path, endpoint)
                if first.signature() != endpoint.signature():
                    owner = next(n for n, o in self.mounted.items() if o.endpoints.get(path) is first)
                    raise ConfigError(f"models '{owner}' and '{m.name}' both serve /v1/{path} with different request fields; "
                                      "serve them from two servers.")
        self.busy = {name: 0 for name in self.mounted}  # thread jobs and streams running or waiting, per model
        self.running: set[threading.Event] = set()  # the cancel flags of work in flight, all set when the app shuts down
        self._needed: dict[str, str] = {}  # path -> the tasks whose runs serve it (the registry's word), cached
        self.start()
        for m in self.mounted.values():
            metrics.watch_queue(m.name, lambda m=m: sum(r.depth for r in m.runners.values()) + self.busy[m.name])

    # -- life ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """A runner per declared endpoint of each model (a batcher's worker thread, say); again after a shutdown closed them."""
        for m in self.mounted.values():
            for path, endpoint in m.endpoints.items():
                if path not in m.runners or m.runners[path].closed:
                    m.runners[path] = RUNNERS[endpoint.runner](self, m, endpoint)

    @property
    def stopped(self) -> bool:
        return any(r.closed for m in self.mounted.values() for r in m.runners.values())

    async def close(self) -> None:
        for cancel in list(self.running):  # past the graceful period: decoding still running stops at its next step
            cancel.set()
        for m in self.mounted.values():  # the runners' worker threads end with the server
            for runner in m.runners.values():
                await asyncio.to_thread(runner.close)

    # -- picking a model -----------------------------------------------------------------------------

    def needed(self, path: str) -> str:
        """The task(s) whose runs serve /v1/<path>: the mounted ones', else the task registry's (which then
        imports every task module: call it off the event loop)."""
        tasks_here = sorted({m.task or "?" for m in self.mounted.values() if path in m.endpoints})
        if tasks_here:
            return " or ".join(tasks_here)
        if path not in self._needed:
            from nanonlp import tasks

            self._needed[path] = " or ".join(t.name for t in tasks.all_tasks() if path in t.serves)
        return self._needed[path]

    def pick(self, name: str | None, path: str, needed: str | None = None) -> Mounted:
        from fastapi import HTTPException

        def wanted() -> str:  # only for an error: the registry may have to be read
            tasks = self.needed(path) if needed is None else needed
            return f"a {tasks} run" if tasks else "a model that declares it"

        serving = [m for m in self.mounted.values() if path in m.endpoints]
        if name is None:
            if len(serving) == 1:
                return serving[0]
            if not serving:
                raise HTTPException(404, f"no mounted model serves this endpoint (it needs {wanted()}).")
            raise HTTPException(400, f"several models serve this endpoint: name one in 'model' ({', '.join(m.name for m in serving)}).")
        if name not in self.mounted:
            raise HTTPException(404, f"no model named '{name}' is mounted; GET /v1/models lists them.")
        m = self.mounted[name]
        if path not in m.endpoints:
            raise HTTPException(400, f"model '{name}' is a {m.task} run; this endpoint needs {wanted()}.")
        return m

    # -- bounds --------------------------------------------------------------------------------------

    def check_limits(self, endpoint: Endpoint, request: dict) -> None:
        """The server's limits on a request beyond its schema: items per request, tokens per item and per request."""
        from fastapi import HTTPException

        s = self.settings
        if endpoint.budget is not None and request[endpoint.budget] > s.max_new_tokens:
            raise HTTPException(422, f"{endpoint.budget} {request[endpoint.budget]} is over this server's limit of {s.max_new_tokens}.")
        if endpoint.items is None:
            return
        items, noun = items_of(request[endpoint.items]), _plural(endpoint.items)
        if not items or len(items) > s.max_texts:
            raise HTTPException(422, f"give 1 to {s.max_texts} {noun}.")
        if endpoint.budget is not None and len(items) * request[endpoint.budget] > s.max_request_tokens:
            raise HTTPException(422, f"{len(items)} {noun} x {endpoint.budget} {request[endpoint.budget]} is over this server's limit of "
                                     f"{s.max_request_tokens:,} generated tokens per request; send fewer {noun} or tokens.")

    def full(self, m: Mounted):
        from fastapi import HTTPException

        return HTTPException(503, f"model '{m.name}' has a full queue; retry shortly.", headers={"Retry-After": "1"})

    def timed_out(self, what: str = "its work was stopped"):
        from fastapi import HTTPException

        return HTTPException(504, f"the request took longer than the server's limit of {self.settings.timeout_s:g} s; {what}.")

    def call(self, m: Mounted) -> Call:
        return Call(threading.Event(), on_token=self.metrics.token_counter(m.name))

    async def in_thread(self, m: Mounted, fn):
        """fn(call) on the thread pool, where `call.cancel` is set when the time limit passes (decoding stops
        at its next step); at most max_queue jobs per model (503 past that)."""
        if self.busy[m.name] >= self.settings.max_queue:
            raise self.full(m)
        self.busy[m.name] += 1
        call = self.call(m)
        self.running.add(call.cancel)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, call), self.settings.timeout_s)
        except asyncio.TimeoutError:
            call.cancel.set()
            raise self.timed_out() from None
        except asyncio.CancelledError:  # the server is stopping: the thread's work stops too
            call.cancel.set()
            raise
        finally:
            self.running.discard(call.cancel)
            self.busy[m.name] -= 1

    async def streamed(self, m: Mounted, endpoint: Endpoint, request: dict):
        """Server-sent events of `endpoint.stream`; the stream holds a slot of the model's queue while it runs."""
        self.check_stream(m, endpoint, request)
        call = self.call(m)
        # making the iterator (encoding a prompt) is CPU work: off the loop; bad arguments raise here, before any byte is sent
        pieces = await asyncio.to_thread(endpoint.stream, request, call)
        outbox = self.hold(m, call)
        threading.Thread(target=_produce, args=(pieces, m.name, outbox.put), name="nanonlp-stream", daemon=True).start()
        return sse_response(outbox, call.cancel, self.settings.timeout_s)

    def check_stream(self, m: Mounted, endpoint: Endpoint, request: dict) -> None:
        """A stream reads one item, and takes a slot of the model's queue (503 when it is full)."""
        from fastapi import HTTPException

        if endpoint.items is not None and not isinstance(request[endpoint.items], str):
            raise HTTPException(422, f"stream takes one {endpoint.items} (a string), not a list.")
        if self.busy[m.name] >= self.settings.max_queue:
            raise self.full(m)

    def hold(self, m: Mounted, call: Call) -> "Outbox":
        """A stream's (or a scheduled generation's) events, counted in the model's queue until the last one."""
        self.busy[m.name] += 1
        self.running.add(call.cancel)

        def release() -> None:
            self.busy[m.name] -= 1
            self.running.discard(call.cancel)

        return Outbox(asyncio.get_running_loop(), release)


class Outbox:
    """The events of one generation on their way from its thread to the event loop: ("piece", text) as
    text comes, then one of ("done", None), ("cancelled", None), ("error", detail or exception). The
    request holds a slot of its model's queue until the last event, or until `release()`.

    Events that come while the loop has not yet taken the last ones wait with them: the loop is woken
    once for all of them, not once per token (sixteen streams of a small model make thousands a second)."""

    def __init__(self, loop, on_release):
        self.loop, self.queue, self.on_release, self.released = loop, asyncio.Queue(), on_release, False
        self.lock, self.pending, self.flushing = threading.Lock(), [], False

    def put(self, kind: str, value) -> None:
        """Called on generation's thread."""
        with self.lock:
            self.pending.append((kind, value))
            if self.flushing:
                return
            self.flushing = True
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self.lock:
            events, self.pending, self.flushing = self.pending, [], False
        for event in events:
            self.queue.put_nowait(event)
        if events and events[-1][0] != "piece":
            self.release()

    def release(self) -> None:
        """Once, whichever way the request ends; on the event loop."""
        if not self.released:
            self.released = True
            self.on_release()


# -- runners: how a declared endpoint's requests run on one model -------------------------------------


class Runner:
    """How one model's requests to one declared endpoint run: made when the app starts (Models.start),
    closed when it stops. `run(request)` answers a validated request (the response without `model`);
    `stream(request)` answers one that asked for `"stream": true`. This is the seam for other ways of
    running a model (a scheduler that steps all generations together): a subclass, named in RUNNERS,
    that an endpoint's declaration names."""

    closed = False

    def __init__(self, models: Models, m: Mounted, endpoint: Endpoint):
        self.models, self.mounted, self.endpoint = models, m, endpoint

    @property
    def depth(self) -> int:
        """Requests waiting in this runner's own queue (the metrics' queue depth)."""
        return 0

    def close(self) -> None:
        self.closed = True

    async def run(self, request: dict) -> dict:
        raise NotImplementedError

    async def stream(self, request: dict):
        return await self.models.streamed(self.mounted, self.endpoint, request)


class Batched(Runner):
    """Requests to one model that arrive together run as one batch on its worker thread (serve/batching.py):
    `handle(items) -> results`; `truncated` flags are tokenizing, CPU work: off the loop."""

    def __init__(self, models: Models, m: Mounted, endpoint: Endpoint):
        super().__init__(models, m, endpoint)
        s = models.settings
        self.batcher = Batcher(endpoint.handle, s.max_batch, s.max_wait_ms / 1000, s.max_queue, m.name,
                               on_batch=models.metrics.batch_observer(m.name), cancellable=endpoint.cancellable)

    @property
    def closed(self) -> bool:
        return self.batcher.closed

    @property
    def depth(self) -> int:
        return self.batcher.depth

    def close(self) -> None:
        self.batcher.close()

    async def run(self, request: dict) -> dict:
        endpoint = self.endpoint
        if endpoint.admit is not None:
            endpoint.admit(request)  # what the model refuses is this request's 400, not its batch's error
        items = items_of(request[endpoint.items])
        carried = [(item, *(request[name] for name in endpoint.carry)) for item in items] if endpoint.carry else items
        try:
            future = self.batcher.submit(carried)
        except QueueFull:
            raise self.models.full(self.mounted) from None
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), self.models.settings.timeout_s)
        except asyncio.TimeoutError:
            # a request still waiting leaves the queue; a batch stops only when all its requests gave up
            outcome = self.batcher.give_up(future)
            raise self.models.timed_out(GIVEN_UP[outcome]) from None
        if endpoint.truncated is not None:
            flags = await asyncio.to_thread(endpoint.truncated, items)
            results = [{**r, "truncated": f} for r, f in zip(results, flags)]
        return {"results": results}


GIVEN_UP = {"dequeued": "it was taken off the model's queue", "stopped": "its work was stopped",
            "shared": "its texts finish with the other requests of their batch, unread", "finished": "its work had just finished"}


class Threaded(Runner):
    """`handle(request, call)` on the thread pool, under the model's queue bound and the time limit."""

    async def run(self, request: dict) -> dict:
        return await self.models.in_thread(self.mounted, lambda call: self.endpoint.handle(request, call))


class Scheduled(Runner):
    """Generation: the requests to one language model, streamed or not, share a GenerationScheduler
    (serve/generation.py) that steps all their sequences together, one token each per forward pass
    (continuous batching). The endpoint's `items` field holds the prompts; its other fields are the
    sampling options. A model the scheduler cannot step (no slot methods) runs as "thread" does, and
    its streams on a thread of their own."""

    def __init__(self, models: Models, m: Mounted, endpoint: Endpoint):
        from nanonlp.serve.generation import GenerationScheduler

        super().__init__(models, m, endpoint)
        self.scheduler = None
        if GenerationScheduler.supports(m.predictor):
            self.scheduler = GenerationScheduler(m.predictor, models.settings.max_sequences, m.name,
                                                 on_step=models.metrics.step_observer(m.name))

    @property
    def closed(self) -> bool:
        return self.scheduler.closed if self.scheduler is not None else self._closed

    _closed = False

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self._closed = True

    def _split(self, request: dict) -> tuple[list[str], dict]:
        options = {k: v for k, v in request.items() if k != self.endpoint.items}
        return items_of(request[self.endpoint.items]), options

    async def run(self, request: dict) -> dict:
        if self.scheduler is None:
            return await self.models.in_thread(self.mounted, lambda call: self.endpoint.handle(request, call))
        models, m = self.models, self.mounted
        if models.busy[m.name] >= models.settings.max_queue:  # the sequences hold a slot of the model's queue while they run
            raise models.full(m)
        prompts, options = self._split(request)
        call = models.call(m)
        outbox = models.hold(m, call)
        try:
            # encoding the prompts is CPU work: off the loop; bad arguments raise here
            sequences = await asyncio.to_thread(self.scheduler.submit, prompts, cancel=call.cancel, on_token=call.on_token, **options)
            completions = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(s.future) for s in sequences)),
                                                 models.settings.timeout_s)
        except asyncio.TimeoutError:
            raise models.timed_out() from None
        finally:
            call.cancel.set()  # whichever way it ended (done, the time limit, the server stopping), nothing of it runs on
            outbox.release()
        return {"results": [{"text": s.prompt + c, "completion": c, "truncated": s.truncated} for s, c in zip(sequences, completions)]}

    async def stream(self, request: dict):
        if self.scheduler is None:
            return await super().stream(request)
        models, m = self.models, self.mounted
        models.check_stream(m, self.endpoint, request)
        prompts, options = self._split(request)
        call = models.call(m)
        outbox = models.hold(m, call)
        try:
            # encoding the prompt is CPU work: off the loop; bad arguments raise here, before any byte is sent
            await asyncio.to_thread(self.scheduler.submit, prompts, cancel=call.cancel, on_token=call.on_token, listener=outbox.put, **options)
        except BaseException:
            call.cancel.set()
            outbox.release()
            raise
        return sse_response(outbox, call.cancel, models.settings.timeout_s)


RUNNERS: dict[str, type[Runner]] = {"batch": Batched, "thread": Threaded, "schedule": Scheduled}


# -- the request models and the routes ------------------------------------------------------------------


def _field_check(check):
    def validate(cls, value):
        check(value)
        return value

    return validate


def _request_check(check, names):
    def validate(self):
        try:
            check({name: getattr(self, name) for name in names})
        except NanoNLPError as err:
            raise ValueError(str(err)) from None
        return self

    return validate


def request_model(endpoint: Endpoint, max_texts: int):
    """The strict pydantic model of an endpoint's requests: `model`, the declared fields, and `stream`
    where the endpoint streams. A list of items holds 1 to max_texts of them."""
    from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

    fields: dict[str, tuple] = {
        "model": (str | None, Field(None, description="the mounted model's name; may be left out when one model serves this endpoint"))}
    validators = {}
    for name, param in endpoint.params.items():
        bounds = param.bounds()
        if name == endpoint.items and get_origin(param.type) is list:
            bounds["min_length"] = max(bounds.get("min_length", 1), 1)
            bounds["max_length"] = min(bounds.get("max_length", max_texts), max_texts)
        default = ... if param.default is REQUIRED else param.default
        fields[name] = (param.type, Field(default, description=param.description, strict=param.strict or None, **bounds))
        if param.check is not None:
            validators[f"check_{name}"] = field_validator(name)(_field_check(param.check))
    if endpoint.stream is not None:
        fields["stream"] = (bool, Field(False, description="answer with server-sent events, piece by piece, then [DONE]"))
    if endpoint.check is not None:
        validators["check_request"] = model_validator(mode="after")(_request_check(endpoint.check, list(endpoint.params)))
    title = "".join(part.capitalize() for part in endpoint.path.replace("-", "_").split("_")) + "Request"
    return create_model(title, __config__=ConfigDict(extra="forbid"), __validators__=validators, **fields)


def router(models: Models, check_key):
    """One POST /v1/<path> per endpoint the mounted models declare."""
    from fastapi import APIRouter, Depends

    api = APIRouter()
    for path, endpoint in models.paths.items():
        api.add_api_route(f"/v1/{path}", _route(models, path, request_model(endpoint, models.settings.max_texts)),
                          methods=["POST"], dependencies=[Depends(check_key)], name=path,
                          summary=endpoint.title or path, description=endpoint.handle.__doc__ or "")
    return api


def _route(models: Models, path: str, Request):
    async def serve(body: Request):
        m = models.pick(body.model, path)
        endpoint = m.endpoints[path]  # the picked model's own declaration (its fields agree with the request model's)
        request = {name: getattr(body, name) for name in endpoint.params}
        models.check_limits(endpoint, request)
        runner = m.runners[path]
        if endpoint.stream is not None and body.stream:
            return await runner.stream(request)
        return json_response({"model": m.name, **await runner.run(request)})

    return serve


def json_response(content: dict):
    """The answer as JSON, written with json.dumps: FastAPI's own encoder walks every value of a returned dict
    through jsonable_encoder, which cost the bag-of-n-grams server a fifth of its throughput under load.
    Predictors answer in JSON's types; anything else goes the encoder's way."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import Response

    try:
        body = json.dumps(content, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        body = json.dumps(jsonable_encoder(content), ensure_ascii=False)
    return Response(body.encode("utf-8"), media_type="application/json")


def fallback(models: Models, check_key):
    """POST /v1/<path> that no mounted model serves: a 404 that names the task whose run would, or a 400
    for a named model that serves other endpoints. Included after every other router."""
    from fastapi import APIRouter, Depends, Request

    api = APIRouter()

    @api.post("/v1/{path}", dependencies=[Depends(check_key)], include_in_schema=False)
    async def unserved(path: str, request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        needed = await asyncio.to_thread(models.needed, path)  # the task registry imports modules: off the loop
        models.pick(name, path, needed)  # raises: no mounted model serves this path

    return api


def _produce(pieces, name: str, put) -> None:
    """Run a stream's own iterator on this thread, telling `put` as the generation scheduler does:
    ("piece", text) each, then ("done" | "cancelled" | "error", ...)."""
    try:
        for piece in pieces:
            put("piece", piece)
        put("done", None)
    except Cancelled:
        put("cancelled", None)  # the consumer stopped waiting and has said why
    except Exception as err:  # a bug in generation: logged here, an error event to the client
        log.exception("stream of model %s failed", name)
        put("error", err)


def sse_response(outbox: Outbox, cancel: threading.Event, timeout_s: float):
    from fastapi.responses import StreamingResponse

    return StreamingResponse(_sse(outbox.queue, cancel, timeout_s), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _sse(events: asyncio.Queue, cancel: threading.Event, timeout_s: float):
    """Server-sent events of a stream of text pieces: `data: {"text": piece}` per piece, then `data: [DONE]`.

    The pieces arrive on `events` from generation's thread (the model's scheduler, or a thread of the
    stream's own) as they come; pieces that arrive together go out in one write. (Iterating the
    generator one `next` per thread-pool call would cost a thread hop per token.) If the client goes
    away, or the stream runs past the server's time limit (an `event: error` says so), `cancel` is set
    and generation stops at its next token, freeing its slot."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            try:
                batch = [await asyncio.wait_for(events.get(), max(deadline - loop.time(), 0))]
            except asyncio.TimeoutError:
                batch = [("error", f"the stream took longer than the server's limit of {timeout_s:g} s; it was stopped.")]
            while not events.empty() and batch[-1][0] == "piece":
                batch.append(events.get_nowait())
            out = []
            for kind, value in batch:
                if kind == "piece":
                    out.append(f"data: {json.dumps({'text': value}, ensure_ascii=False)}\n\n")
                elif kind == "done":
                    out.append("data: [DONE]\n\n")
                else:
                    detail = value if isinstance(value, str) else "internal error" if kind == "error" else "generation was stopped."
                    out.append(f"event: error\ndata: {json.dumps({'detail': detail})}\n\n")
            yield "".join(out)
            if batch[-1][0] != "piece":
                return
    finally:
        cancel.set()  # a client that left, or the time limit: generation stops before its next token

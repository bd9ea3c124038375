"""What a predictor serves over HTTP, declared here without FastAPI: the server (nanonlp/serve) mounts
any predictor from these declarations and knows no task by name.

A predictor's `endpoints()` returns one `Endpoint` per `POST /v1/<path>` it answers, and its
`describe()` (optional) what GET /v1/models says of it beyond its name, `task` and `max_input_length`:

    Endpoint("classify", {"texts": Param(list[str], description="the texts, a batch")}, items="texts",
             runner="batch", handle=classifier.predict, truncated=classifier.truncated,
             title="Classify", placeholder="One text a line", view={"kind": "labels"})

- `params`: the request's fields (besides `model`, which every endpoint takes), each a `Param`: its
  Python type, default, bounds and description. The server builds a strict pydantic model from them
  (an unknown field or a bound crossed is a 422 naming the field); the page builds its form from the
  same description (fields with a `label` are shown).
- `items`: the field holding the batch (texts, prompts): the server bounds its length (max_texts).
- `runner`: how the server runs a request (serve/routes.py, RUNNERS):
    "batch"   requests to one model that arrive together run as one batch: `handle(items) -> results`,
              one per item, on the model's batching thread; `truncated(items) -> [bool]` adds each
              result's `truncated` flag, computed off the event loop. With `carry`, each item goes
              into the batch as a tuple (item, *the request's values of those fields), so requests with
              different options share a batch (translation: (text, beam, nbest)). With `cancellable`,
              `handle(items, cancel)`: `cancel` is set when every request of the batch has given up.
    "schedule" generation: one scheduler per model steps all its requests' sequences together
              (serve/generation.py); `items` holds the prompts, the other fields are sampling options.
    "thread"  `handle(request, call) -> response dict` on the thread pool, under the queue bound and
              the time limit; `call.cancel` is set when the time is up (decoding stops at its next step).
  `stream(request, call) -> iterator of text pieces`, when given, answers a request with `"stream": true`
  as server-sent events (the iterator is made on a worker thread: bad arguments raise before any byte).
- `budget`: the field of new tokens per item, for generation: the server caps it and items x it.
- `check(request)`: request-wide validation (raise ValueError or NanoNLPError): a 422.
- `admit(request)`: what the model itself refuses (raise NanoNLPError): a 400, before the request joins a batch.
- `view`: how the page shows the results (the kinds app.js knows: text, labels, spans, chat).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

REQUIRED = ...  # a Param without a default must be given


@dataclass(frozen=True)
class Param:
    """One field of a request: a Python type pydantic reads (str, int, float, bool, list[str], str | list[str],
    int | None), its default, its bounds, what it means, and the page's label for it (None: not in the form)."""

    type: Any
    default: Any = REQUIRED
    description: str = ""
    label: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    strict: bool = False  # True: no coercion (42 is not the text "42")
    check: Callable[[Any], Any] | None = None  # raises ValueError (a 422 naming this field); returns the value

    BOUNDS = ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern")

    def bounds(self) -> dict:
        return {name: getattr(self, name) for name in self.BOUNDS if getattr(self, name) is not None}

    def describe(self) -> dict:
        """JSON for the page: the type in JSON-schema words, the default, the bounds, the label."""
        out = {"type": _json_type(self.type), "description": self.description, **self.bounds()}
        if self.default is not REQUIRED:
            out["default"] = self.default
        else:
            out["required"] = True
        if self.label is not None:
            out["label"] = self.label
        return out


def _json_type(annotation) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if annotation in names:
        return names[annotation]
    args = getattr(annotation, "__args__", ())
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        return f"array of {_json_type(args[0])}" if args else "array"
    if args:  # a union: str | list[str]
        return " or ".join(_json_type(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


@dataclass
class Call:
    """What the server hands a handler beside the request."""

    cancel: threading.Event = field(default_factory=threading.Event)  # set when the request's time is up or its client left
    on_token: Callable[[], None] | None = None  # called per generated token (the server's metrics)


@dataclass
class Endpoint:
    path: str  # POST /v1/<path>
    params: dict[str, Param]
    handle: Callable[..., Any]
    runner: str = "thread"  # "batch", "schedule" or "thread" (see the module's docstring)
    items: str | None = None
    truncated: Callable[[list], list[bool]] | None = None  # "batch" runner: per item, whether the model read only part of it
    carry: tuple[str, ...] = ()  # "batch" runner: the request's fields each item takes into the batch
    cancellable: bool = False  # "batch" runner: handle(items, cancel)
    admit: Callable[[dict], None] | None = None
    stream: Callable[[dict, Call], Iterator[str]] | None = None
    budget: str | None = None
    check: Callable[[dict], None] | None = None
    title: str = ""  # the page's button
    placeholder: str = ""  # the page's input
    view: dict = field(default_factory=lambda: {"kind": "text"})

    def description(self) -> dict:
        """The endpoint as /v1/models shows it, for the page to build its panel from."""
        return {"path": f"/v1/{self.path}", "items": self.items, "stream": self.stream is not None, "title": self.title,
                "placeholder": self.placeholder, "view": self.view,
                "fields": {name: p.describe() for name, p in self.params.items()}}

    def signature(self) -> list:
        """What two models serving one path must agree on: the request's fields, types, defaults and bounds."""
        return [(name, repr(p.type), repr(p.default), p.bounds(), p.strict) for name, p in self.params.items()]


def items_of(value) -> list:
    """The batch a request's items field holds: one string is one item."""
    return [value] if isinstance(value, str) else list(value)

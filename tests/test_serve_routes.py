"""The server knows no task: a predictor that declares a new endpoint (nanonlp/predict/service.py) is
served with no change to nanonlp/serve: its route, its strict request model, batching or the thread pool,
/v1/models and the OpenAPI page; and what the server refuses to mount."""

import pytest

pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from nanonlp.errors import ConfigError  # noqa: E402
from nanonlp.predict.service import REQUIRED, Call, Endpoint, Param  # noqa: E402
from nanonlp.serve.app import ServeSettings, create_app  # noqa: E402


def _even(times: int) -> None:
    if times % 2:
        raise ValueError("times must be even")


class WordCounter:
    """A predictor of a task the project does not have: words per text (batched across requests), and a
    text repeated (on the thread pool), reading at most `limit` words of a text."""

    task = "count"
    max_input_length = 3

    def __init__(self):
        self.batches: list[int] = []

    def count(self, texts: list[str]) -> list[dict]:
        self.batches.append(len(texts))
        return [{"words": min(len(t.split()), self.max_input_length)} for t in texts]

    def describe(self) -> dict:
        return {"unit": "words"}

    def endpoints(self) -> list[Endpoint]:
        def repeat(request: dict, call: Call) -> dict:
            assert not call.cancel.is_set()
            return {"text": " ".join([request["text"]] * request["times"])}

        def not_both(request: dict) -> None:
            if request["text"] == "stop" and request["times"] > 2:
                raise ValueError("'stop' is said at most twice")

        return [
            Endpoint("count", {"texts": Param(list[str], description="the texts, a batch")}, self.count, runner="batch", items="texts",
                     truncated=lambda texts: [len(t.split()) > self.max_input_length for t in texts], title="Count",
                     view={"kind": "text", "key": "words"}),
            Endpoint("repeat", {"text": Param(str, REQUIRED, "what to say", label="text", min_length=1, strict=True),
                                "times": Param(int, 2, "how often", label="times", ge=1, le=8, check=_even)},
                     repeat, check=not_both, title="Repeat"),
        ]


@pytest.fixture
def client():
    with TestClient(create_app({"counter": WordCounter()}, ServeSettings(max_texts=4))) as c:
        yield c


def test_a_new_task_is_served_from_its_declaration(client):
    body = client.post("/v1/count", json={"texts": ["one two", "a b c d e"]}).json()
    assert body == {"model": "counter", "results": [{"words": 2, "truncated": False}, {"words": 3, "truncated": True}]}
    assert client.post("/v1/repeat", json={"text": "hi", "times": 4}).json() == {"model": "counter", "text": "hi hi hi hi"}
    assert client.post("/v1/repeat", json={"text": "hi"}).json()["text"] == "hi hi"  # the declared default
    assert {"/v1/count", "/v1/repeat"} <= set(client.get("/openapi.json").json()["paths"])


def test_models_lists_the_declaration_for_the_page(client):
    (model,) = client.get("/v1/models").json()["models"]
    assert (model["name"], model["task"], model["max_input_length"], model["unit"]) == ("counter", "count", 3, "words")
    count, repeat = model["endpoints"]
    assert count["path"] == "/v1/count" and count["items"] == "texts" and count["view"] == {"kind": "text", "key": "words"}
    assert count["fields"]["texts"] == {"type": "array of string", "description": "the texts, a batch", "required": True}
    assert repeat["fields"]["times"] == {"type": "integer", "description": "how often", "ge": 1, "le": 8, "default": 2, "label": "times"}
    assert repeat["stream"] is False and repeat["title"] == "Repeat"


@pytest.mark.parametrize("path, body, field, says", [
    ("/v1/count", {"texts": []}, "texts", "at least 1 item"),
    ("/v1/count", {"texts": ["a"] * 5}, "texts", "at most 4 items"),  # the server's max_texts bounds the declared batch
    ("/v1/count", {"texts": "a b"}, "texts", "valid list"),
    ("/v1/count", {"texts": ["a"], "colour": "red"}, "colour", "Extra inputs"),
    ("/v1/repeat", {"text": 5}, "text", "string"),  # strict: 5 is not the text "5"
    ("/v1/repeat", {"text": "hi", "times": 9}, "times", "less than or equal to 8"),
    ("/v1/repeat", {"text": "hi", "times": 3}, "times", "times must be even"),  # the field's own check
    ("/v1/repeat", {"times": 2}, "text", "Field required"),
])
def test_schema_errors_of_a_declared_endpoint_are_422s_naming_the_field(client, path, body, field, says):
    response = client.post(path, json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", field] and says in detail[0]["msg"], detail


def test_the_request_check_is_a_422_and_unserved_paths_name_who_serves_them(client):
    response = client.post("/v1/repeat", json={"text": "stop", "times": 4})
    assert response.status_code == 422 and "'stop' is said at most twice" in response.text
    response = client.post("/v1/classify", json={"texts": ["x"]})  # no classifier mounted: the task registry names one
    assert response.status_code == 404 and "it needs a classify run" in response.json()["detail"]
    response = client.post("/v1/generate", json={"prompt": "x", "model": "counter"})
    assert response.status_code == 400 and "model 'counter' is a count run; this endpoint needs a lm run" in response.json()["detail"]
    assert client.post("/v1/nothing", json={}).json()["detail"] == "no mounted model serves this endpoint (it needs a model that declares it)."


def test_requests_of_a_declared_batch_endpoint_run_together():
    from concurrent.futures import ThreadPoolExecutor

    counter = WordCounter()
    with TestClient(create_app({"counter": counter}, ServeSettings(max_wait_ms=50))) as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: c.post("/v1/count", json={"texts": ["w " * (i % 3 + 1)]}).json(), range(8)))
    assert [a["results"][0]["words"] for a in answers] == [i % 3 + 1 for i in range(8)]
    assert sum(counter.batches) == 8 and len(counter.batches) < 8  # fewer model calls than requests


def test_what_the_server_refuses_to_mount():
    class Odd(WordCounter):
        def endpoints(self):
            return [Endpoint("count", {"texts": Param(list[str]), "lower": Param(bool, False)}, self.count, runner="batch", items="texts")]

    with pytest.raises(ConfigError, match="'a' and 'b' both serve /v1/count with different request fields"):
        create_app({"a": WordCounter(), "b": Odd()})

    class Scheduled(WordCounter):
        def endpoints(self):
            return [Endpoint("count", {"texts": Param(list[str])}, self.count, runner="scheduler")]

    with pytest.raises(ConfigError, match="runner 'scheduler'; the server runs batch, thread"):
        create_app({"s": Scheduled()})
    # two models declaring the same fields share the path, and a request names one
    with TestClient(create_app({"a": WordCounter(), "b": WordCounter()})) as c:
        assert c.post("/v1/count", json={"texts": ["x"]}).status_code == 400  # which one?
        assert c.post("/v1/count", json={"texts": ["x y"], "model": "b"}).json()["results"][0]["words"] == 2

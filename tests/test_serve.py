"""The HTTP API: endpoints, errors, limits, streaming, and dynamic batching."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

import nanonlp  # noqa: E402
from nanonlp.config import load_config  # noqa: E402
from nanonlp.predict.classify import TextClassifier  # noqa: E402
from nanonlp.serve import mount_names  # noqa: E402
from nanonlp.serve.app import ServeSettings, create_app  # noqa: E402
from nanonlp.serve.batching import Batcher, QueueFull  # noqa: E402
from nanonlp.train import fit  # noqa: E402

from conftest import VERSE, tiny_overrides  # noqa: E402

POSITIVE = ["a good film", "good and warm", "so good", "good fun", "a good story", "truly good"]
NEGATIVE = ["a bad film", "bad and cold", "so bad", "bad fun", "a bad story", "truly bad"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny classifier and a tiny character GPT, trained once for the module."""
    tmp = tmp_path_factory.mktemp("serve")
    train = tmp / "train.txt"
    train.write_text("".join(f"pos {t}\n" for t in POSITIVE) + "".join(f"neg {t}\n" for t in NEGATIVE))
    fit(load_config(None, ["--task=classify", f"--data.path={train}", f"--data.dev_path={train}", "--model.type=bag_of_ngrams",
                           f"--train.out_dir={tmp / 'sentiment'}", "--train.max_steps=60", "--train.batch_size=8",
                           "--train.eval_interval=30", "--train.learning_rate=1e-2", "--train.dtype=float32", "--train.peak_tflops=1",
                           "--classify.calibration_min_dev=2", "--data.max_length=4"]), quiet=True)
    corpus = tmp / "verse.txt"
    corpus.write_text(VERSE * 20, encoding="utf-8")
    fit(load_config(None, tiny_overrides(corpus, tmp / "verse", train__max_steps=10)), quiet=True)
    return {"sentiment": nanonlp.load(tmp / "sentiment"), "verse": nanonlp.load(tmp / "verse")}


@pytest.fixture(scope="module")
def tagger_and_translator(tmp_path_factory):
    """A tiny Chinese entity tagger and a tiny Transformer translator."""
    from test_tag import chinese_file, tag_config
    from test_translate import tiny_translate, toy_pairs, write_tsv

    tmp = tmp_path_factory.mktemp("serve_more")
    data = chinese_file(tmp / "zh.txt")
    fit(tag_config(tmp, data, out="ner", data__separator="\t"), quiet=True)
    tsv = write_tsv(tmp / "pairs.tsv", toy_pairs())
    fit(load_config(None, tiny_translate(tsv, tmp / "mt", **{"data.dev_path": str(tsv), "data.test_path": str(tsv)})), quiet=True)
    return {"ner": nanonlp.load(tmp / "ner"), "mt": nanonlp.load(tmp / "mt")}


@pytest.fixture
def client(runs):
    with TestClient(create_app(runs, ServeSettings(max_new_tokens=50, max_body_bytes=2000))) as c:
        yield c


def test_health_models_and_the_openapi_page(client):
    assert client.get("/health").json()["status"] == "ok"
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["sentiment"]["task"] == "classify" and models["sentiment"]["labels"] == ["neg", "pos"]
    assert models["verse"]["task"] == "lm" and models["verse"]["max_input_length"] == 16
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]


def test_classify_a_batch_equals_the_predictor_and_flags_truncation(client, runs):
    texts = ["so good", "so bad", "good good good good good bad"]
    body = client.post("/v1/classify", json={"texts": texts}).json()  # the one classifier: model may be left out
    expected = runs["sentiment"].predict(texts)
    assert [r["label"] for r in body["results"]] == [e["label"] for e in expected] and body["model"] == "sentiment"
    for got, want in zip(body["results"], expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"])
    assert [r["truncated"] for r in body["results"]] == [False, False, True]  # max_length 4 words


def test_generate_with_a_seed_equals_the_predictor_and_the_stream_spells_it(client, runs):
    request = {"prompt": "To be", "max_new_tokens": 20, "seed": 3, "top_k": 5}
    body = client.post("/v1/generate", json={**request, "model": "verse"}).json()
    expected = runs["verse"].generate("To be", max_new_tokens=20, seed=3, top_k=5)
    assert body["results"][0]["text"] == expected and body["results"][0]["completion"] == expected[len("To be"):]
    with client.stream("POST", "/v1/generate", json={**request, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "To be" + "".join(json.loads(e)["text"] for e in events[:-1]) == expected


@pytest.mark.parametrize("request_body, status, fragment", [
    ({"texts": []}, 422, "texts"),
    ({"texts": "not a list"}, 422, "texts"),
    ({"texts": ["x"], "colour": "red"}, 422, "colour"),
    ({"texts": ["x"], "model": "nope"}, 404, "no model named 'nope'"),
    ({"texts": ["x"], "model": "verse"}, 400, "is a lm run"),
])
def test_classify_errors_name_the_problem(client, request_body, status, fragment):
    response = client.post("/v1/classify", json=request_body)
    assert response.status_code == status and fragment in json.dumps(response.json())
    assert "Traceback" not in response.text and response.headers["x-request-id"]


def test_limits_body_size_generation_budget_and_missing_task(client):
    response = client.post("/v1/classify", json={"texts": ["x" * 3000]})
    assert response.status_code == 413 and "limit of 2,000 bytes" in response.json()["detail"]
    response = client.post("/v1/generate", json={"prompt": "To", "max_new_tokens": 51})
    assert response.status_code == 422 and "over this server's limit of 50" in response.json()["detail"]
    assert client.post("/v1/translate", json={"texts": ["x"]}).status_code == 404
    assert client.post("/v1/generate", json={"prompt": "", "max_new_tokens": 5}).status_code == 400  # empty prompt


def test_an_api_key_is_required_and_compared_exactly(runs):
    with TestClient(create_app(runs, ServeSettings(api_key="s3cret"))) as c:
        assert c.post("/v1/classify", json={"texts": ["so good"]}).status_code == 401
        assert c.post("/v1/classify", json={"texts": ["so good"]}, headers={"Authorization": "Bearer s3cre"}).status_code == 401
        ok = c.post("/v1/classify", json={"texts": ["so good"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # liveness stays open


def test_a_bug_gives_500_with_a_request_id_and_no_traceback(runs, caplog):
    class Broken:
        task = "classify"
        labels = ["a"]
        max_input_length = 4
        endpoints = TextClassifier.endpoints  # serves what a classifier serves

        def predict_read(self, texts):
            raise RuntimeError("secret internals")

    with TestClient(create_app({"broken": Broken()}), raise_server_exceptions=False) as c:
        response = c.post("/v1/classify", json={"texts": ["x"]})
    assert response.status_code == 500 and "secret internals" not in response.text
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert any(response.json()["request_id"] in r.getMessage() for r in caplog.records)


def test_concurrent_requests_are_batched_together():
    calls = []

    def run(items):
        calls.append(len(items))
        time.sleep(0.05)
        return [item.upper() for item in items]

    batcher = Batcher(run, max_batch=64, max_wait=0.02, max_queue=64)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: batcher.submit([f"t{i}", f"u{i}"]).result(timeout=5), range(16)))
    batcher.close()
    assert results == [[f"T{i}", f"U{i}"] for i in range(16)]  # each request gets its own slice, in order
    assert len(calls) < 16 and max(calls) > 2  # fewer model calls than requests: they were batched


def test_a_full_queue_refuses_at_once_and_errors_reach_every_request():
    release = threading.Event()

    def slow(items):
        release.wait(5)
        if "boom" in items:
            raise ValueError("boom")
        return items

    batcher = Batcher(slow, max_batch=1, max_wait=0.0, max_queue=2)
    first = batcher.submit(["a"])
    time.sleep(0.05)  # the worker holds "a"; two more wait; a third is refused
    waiting = [batcher.submit(["b"]), batcher.submit(["boom"])]
    with pytest.raises(QueueFull):
        batcher.submit(["c"])
    release.set()
    assert first.result(timeout=5) == ["a"] and waiting[0].result(timeout=5) == ["b"]
    with pytest.raises(ValueError, match="boom"):
        waiting[1].result(timeout=5)
    batcher.close()


def test_the_server_answers_503_with_retry_after_when_a_queue_is_full(runs):
    release = threading.Event()

    class Slow:
        task = "classify"
        labels = ["a"]
        max_input_length = 100
        encoder = runs["sentiment"].encoder
        endpoints = TextClassifier.endpoints

        def predict_read(self, texts):
            release.wait(5)
            return [{"label": "a", "probability": 1.0, "probabilities": {"a": 1.0}, "truncated": False} for _ in texts]

    app = create_app({"slow": Slow()}, ServeSettings(max_queue=1, max_batch=1, max_wait_ms=0))
    with TestClient(app) as c, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(c.post, "/v1/classify", json={"texts": ["x"]}) for _ in range(4)]
        time.sleep(0.5)
        release.set()
        statuses = sorted(f.result().status_code for f in futures)
        refused = [f.result() for f in futures if f.result().status_code == 503]
    assert statuses.count(200) >= 2 and 503 in statuses
    assert refused[0].headers["retry-after"] == "1"


def test_mount_names():
    assert list(mount_names(["runs/a", "b=runs/c"])) == ["a", "b"]
    assert str(mount_names(["x=runs/lr=0.1"])["x"]) == "runs/lr=0.1"  # only the first "=" names
    with pytest.raises(Exception, match="two runs are mounted as 'a'"):
        mount_names(["runs/a", "other/a"])


def test_a_real_uvicorn_on_loopback_serves_and_streams(runs):
    import socket

    import httpx
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runs), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        labels = [r["label"] for r in httpx.post(f"{base}/v1/classify", json={"texts": ["so good", "so bad"]}).json()["results"]]
        assert labels == [p["label"] for p in runs["sentiment"].predict(["so good", "so bad"])]
        with httpx.stream("POST", f"{base}/v1/generate", json={"prompt": "To be", "max_new_tokens": 8, "seed": 1, "stream": True}) as r:
            pieces = [json.loads(line[6:])["text"] for line in r.iter_lines() if line.startswith("data: {")]
        assert "To be" + "".join(pieces) == runs["verse"].generate("To be", max_new_tokens=8, seed=1)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_tag_and_translate_endpoints_equal_their_predictors(tagger_and_translator):
    from test_translate import toy_pairs

    ner, mt = tagger_and_translator["ner"], tagger_and_translator["mt"]
    with TestClient(create_app(tagger_and_translator)) as c:
        texts = ["李四在上海工作。", "张三在北京工作。"]
        body = c.post("/v1/tag", json={"texts": texts}).json()
        assert body["results"] == ner.tag(texts)
        assert any(e["text"] == "上海" and e["type"] == "LOC" for e in body["results"][0]["entities"])
        sources = [p.source for p in toy_pairs()[:3]]
        body = c.post("/v1/translate", json={"texts": sources, "beam": 2, "nbest": 2}).json()
        expected = mt.translate_nbest(sources, 2, 2)
        for got, want in zip(body["results"], expected):
            assert got["translation"] == want[0][0] and [h["text"] for h in got["nbest"]] == [t for t, _ in want]
            assert got["truncated"] is False
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["ner"]["labels"] == ["LOC", "PER"] and models["mt"]["languages"] == ["en", "de"]


def test_a_body_without_its_length_is_still_limited_and_seeds_and_restarts_are_handled(runs):
    app = create_app(runs, ServeSettings(max_body_bytes=2000))

    def chunks():
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"x" * 500
        yield b'"]}'

    with TestClient(app) as c:
        response = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and "limit of 2,000 bytes" in response.json()["detail"]
        response = c.post("/v1/generate", json={"prompt": "To", "max_new_tokens": 3, "seed": 2**64})
        assert response.status_code == 422 and "seed" in response.text
    with TestClient(app) as c:  # the same app started a second time still batches
        assert c.post("/v1/classify", json={"texts": ["so good"]}).status_code == 200


def test_a_loopback_server_answers_only_loopback_host_names(runs):
    with TestClient(create_app(runs, ServeSettings(allowed_hosts=("127.0.0.1", "localhost"))), base_url="http://127.0.0.1") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "rebound.example.com"}).status_code == 400

"""Every request bounded, every error JSON with a request id, cancellation, metrics, shutdown."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from nanonlp.decode import Cancelled  # noqa: E402
from nanonlp.errors import ConfigError  # noqa: E402
from nanonlp.predict.lm import MAX_STOP_LENGTH, RNN_PROMPT_TOKENS, LanguageModel, SampleConfig, until_stop  # noqa: E402
from nanonlp.serve import check_exposure  # noqa: E402
from nanonlp.serve.app import ServeSettings, create_app  # noqa: E402

from test_serve import runs  # noqa: E402,F401  (the module's tiny classifier and GPT)


@pytest.fixture
def client(runs):  # noqa: F811
    with TestClient(create_app(runs, ServeSettings(max_new_tokens=50, max_request_tokens=60, max_body_bytes=2000))) as c:
        yield c


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# sampling options: one validation, greedy at 0


def test_temperature_zero_is_greedy_over_http_and_overflowing_values_are_422(client, runs):  # noqa: F811
    body = client.post("/v1/generate", json={"prompt": "To be", "max_new_tokens": 10, "temperature": 0}).json()
    assert body["results"][0]["text"] == runs["verse"].generate("To be", max_new_tokens=10, temperature=0)
    # greedy needs no seed: two calls agree
    again = client.post("/v1/generate", json={"prompt": "To be", "max_new_tokens": 10, "temperature": 0}).json()
    assert again["results"][0]["text"] == body["results"][0]["text"]
    for bad in (1e-300, -1.0, 1e6):
        response = client.post("/v1/generate", json={"prompt": "To", "max_new_tokens": 3, "temperature": bad})
        assert response.status_code == 422, bad
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "greedy" in client.post("/v1/generate", json={"prompt": "To", "temperature": 1e-300}).text
    with pytest.raises(ConfigError, match="greedy"):  # the CLI and the predictors say the same
        SampleConfig(temperature=1e-300).validate()
    with pytest.raises(ConfigError, match="greedy"):
        runs["verse"].generate("To", max_new_tokens=2, temperature=1e-300)


def test_the_token_budget_is_per_request_not_per_prompt(client):
    ok = client.post("/v1/generate", json={"prompt": ["To", "be"], "max_new_tokens": 30, "seed": 1})
    assert ok.status_code == 200
    response = client.post("/v1/generate", json={"prompt": ["To", "be", "or"], "max_new_tokens": 30})
    assert response.status_code == 422 and "3 prompts x max_new_tokens 30" in response.json()["detail"]


def test_stop_strings_are_bounded_and_matched_in_linear_time(client, runs):  # noqa: F811
    huge = client.post("/v1/generate", json={"prompt": "To", "stop": ["x" * 1000]})
    assert huge.status_code == 422 and f"at most {MAX_STOP_LENGTH} characters" in huge.text
    many = client.post("/v1/generate", json={"prompt": "To", "stop": ["a"] * 17})
    assert many.status_code == 422
    # the matcher against a brute-force reference: same output for every split of the text into pieces
    text = "abaabababcabababxabcab" * 3
    for stops in (["ababc"], ["abx", "bab"], ["zzz"], ["cab", "aab"], ["a"]):
        first = min((text.find(s) for s in stops if s in text), default=len(text))
        for size in (1, 2, 3, 7):
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            assert "".join(until_stop(iter(pieces), stops)) == text[:first], (stops, size)
    # a long stop string that never matches costs time linear in the text: a megabyte in well under a second
    pattern = "ab" * MAX_STOP_LENGTH
    start = time.perf_counter()
    out = "".join(until_stop(iter(["ab"] * 2000 + ["x"] + ["ab"] * 2000), [pattern[:-1] + "c"]))
    assert out == "ab" * 2000 + "x" + "ab" * 2000
    assert time.perf_counter() - start < 2.0


def test_a_recurrent_model_reads_a_huge_prompt_through_its_end():
    import torch

    from nanonlp.data.tokenizers import CharTokenizer
    from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
    from nanonlp.predict.lm import LanguageModel

    torch.manual_seed(0)
    tokenizer = CharTokenizer.train("abcdefgh")
    model = CharRNN(CharRNNConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=8, hidden_size=8))
    lm = LanguageModel(model, tokenizer, None, torch.device("cpu"))
    tail = "abcdefgh" * (RNN_PROMPT_TOKENS // 8)
    assert lm.max_input_length == RNN_PROMPT_TOKENS and not lm.truncated(tail) and lm.truncated("h" + tail)
    huge = "h" * 1_000_000 + tail  # read whole, this would be a million RNN steps
    start = time.perf_counter()
    got = lm.generate(huge, max_new_tokens=5, temperature=0)
    assert got == huge + lm.generate(tail, max_new_tokens=5, temperature=0)[len(tail):]
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------------------------------------------
# errors: JSON with a request id


def test_every_error_is_json_with_its_request_id(runs):  # noqa: F811
    app = create_app(runs, ServeSettings(api_key="k", allowed_hosts=("127.0.0.1",), max_body_bytes=2000))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        auth = {"authorization": "Bearer k"}
        cases = [
            c.get("/health", headers={"host": "rebound.example.com"}),  # 400: Host
            c.post("/v1/classify", json={"texts": ["x"]}),  # 401
            c.post("/v1/classify", json={"texts": ["x"], "model": "nope"}, headers=auth),  # 404
            c.post("/v1/classify", content=b'{"texts": ["x"]}', headers={**auth, "content-type": "text/plain"}),  # 415
            c.post("/v1/classify", json={"texts": []}, headers=auth),  # 422
            c.post("/v1/classify", content=b"x" * 5000, headers={**auth, "content-type": "application/json"}),  # 413
        ]
        assert [r.status_code for r in cases] == [400, 401, 404, 415, 422, 413]
        for r in cases:
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["request_id"] == r.headers["x-request-id"] and len(r.json()["request_id"]) == 12
        assert "Content-Type: application/json" in cases[3].json()["detail"]


def test_a_form_post_is_not_read_as_json(client):
    # what a page elsewhere can make a browser send without a preflight
    response = client.post("/v1/classify", content=b'{"texts": ["so good"]}', headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert client.post("/v1/classify", content=b'{"texts": ["so good"]}').status_code == 415  # no type at all
    ok = client.post("/v1/classify", content=b'{"texts": ["so good"]}', headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


# ---------------------------------------------------------------------------------------------------
# time limits and cancellation


class SlowModel:
    """A language model stand-in whose every token takes 20 ms, and that records when it stopped."""

    task = "lm"
    max_input_length = 100
    vocab_size = 10
    endpoints = LanguageModel.endpoints  # serves what a language model serves

    def __init__(self):
        self.tokens = 0
        self.stopped = threading.Event()

    def truncated(self, prompt):
        return False

    def _pieces(self, max_new_tokens, cancel, on_token):
        try:
            for _ in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                time.sleep(0.02)
                self.tokens += 1
                on_token()
                yield "a"
        finally:
            self.stopped.set()

    def stream(self, prompt, max_new_tokens=10, cancel=None, on_token=None, **options):
        return self._pieces(max_new_tokens, cancel, on_token)

    def generate(self, prompts, max_new_tokens=10, cancel=None, on_token=None, **options):
        return [p + "".join(self._pieces(max_new_tokens, cancel, on_token)) for p in prompts]


def test_past_the_time_limit_the_work_stops_and_the_504_says_so():
    slow = SlowModel()
    with TestClient(create_app({"slow": slow}, ServeSettings(timeout_s=0.3))) as c:
        response = c.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 1000})
        assert response.status_code == 504 and "its work was stopped" in response.json()["detail"]
        assert slow.stopped.wait(2)
        tokens = slow.tokens
        assert tokens < 100  # 1000 tokens would take 20 s
        time.sleep(0.2)
        assert slow.tokens == tokens  # nothing runs on behind the 504


def test_a_stream_is_under_the_time_limit_and_counts_in_the_queue():
    slow = SlowModel()
    app = create_app({"slow": slow}, ServeSettings(timeout_s=0.3, max_queue=1))
    with TestClient(app) as c:
        text = c.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 1000, "stream": True}).text
        assert "event: error" in text and "it was stopped" in text and "[DONE]" not in text
        assert slow.stopped.wait(2) and slow.tokens < 100
    # one stream holds the only slot: a second request gets 503 until it ends
    slow2 = SlowModel()
    app = create_app({"slow": slow2}, ServeSettings(timeout_s=5, max_queue=1))
    port = free_port()
    server, thread = start_uvicorn(app, port)
    try:
        import httpx

        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/generate", json={"prompt": "x", "max_new_tokens": 50, "stream": True}) as r:
            lines = r.iter_lines()  # held: a dropped iterator would close the response
            next(lines)
            busy = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"prompt": "x", "max_new_tokens": 2})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        # the client left mid-stream: its slot frees and generation stops
        assert slow2.stopped.wait(3) and slow2.tokens < 50
        for _ in range(50):
            ok = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"prompt": "x", "max_new_tokens": 2})
            if ok.status_code == 200:
                break
            time.sleep(0.05)
        assert ok.status_code == 200 and ok.json()["results"][0]["completion"] == "aa"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_uvicorn(app, port, **options):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread


# ---------------------------------------------------------------------------------------------------
# bodies


def test_an_oversized_body_sent_whole_before_reading_gets_its_413_with_urllib(runs):  # noqa: F811
    port = free_port()
    server, thread = start_uvicorn(create_app(runs, ServeSettings(max_body_bytes=100_000)), port)
    try:
        body = json.dumps({"texts": ["x" * 400_000]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", data=body,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=20)
        assert caught.value.code == 413
        answer = json.loads(caught.value.read())
        assert "limit of 100,000 bytes" in answer["detail"] and answer["request_id"]
        # the server is still there for the next client
        ok = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/classify", data=b'{"texts": ["so good"]}', headers={"Content-Type": "application/json"}), timeout=20)
        assert ok.status == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_body_that_stalls_gets_408(runs):  # noqa: F811
    port = free_port()
    server, thread = start_uvicorn(create_app(runs, ServeSettings(read_timeout_s=0.3)), port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"texts\": ")
            answer = b""
            while chunk := s.recv(4096):  # the server closes the connection after its answer
                answer += chunk
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and "paused" in answer
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------------
# operations


def test_metrics_count_requests_batches_and_tokens(client):
    client.post("/v1/classify", json={"texts": ["so good", "so bad"]})
    client.post("/v1/classify", json={"texts": []})
    client.post("/v1/generate", json={"prompt": "To", "max_new_tokens": 7, "seed": 1})
    text = client.get("/metrics").text
    assert 'nanonlp_requests_total{endpoint="/v1/classify",status="200"} 1.0' in text
    assert 'nanonlp_requests_total{endpoint="/v1/classify",status="422"} 1.0' in text
    assert 'nanonlp_batch_items_sum{model="sentiment"} 2.0' in text
    assert 'nanonlp_batch_seconds_count{model="sentiment"} 1.0' in text  # where a request's time goes: the model
    assert 'nanonlp_queue_wait_seconds_count{model="sentiment"} 1.0' in text  # and its wait for the batch
    assert 'nanonlp_generated_tokens_total{model="verse"} 7.0' in text
    assert 'nanonlp_request_seconds_count{endpoint="/v1/generate"} 1.0' in text
    assert 'nanonlp_queue_depth{model="sentiment"} 0.0' in text


def test_access_log_lines_are_json_with_the_request_id(client, caplog):
    with caplog.at_level("INFO", logger="nanonlp.serve.access"):
        response = client.post("/v1/classify", json={"texts": ["so good"]})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "nanonlp.serve.access"]
    assert lines[-1]["request_id"] == response.headers["x-request-id"]
    assert lines[-1]["status"] == 200 and lines[-1]["path"] == "/v1/classify" and lines[-1]["ms"] >= 0


def test_a_public_bind_without_a_key_is_refused_unless_allowed():
    assert check_exposure("127.0.0.1", None, False) is None
    assert check_exposure("0.0.0.0", "key", False) is None
    with pytest.raises(ConfigError, match="--allow-no-key"):
        check_exposure("0.0.0.0", None, False)
    assert "without an API key" in check_exposure("0.0.0.0", None, True)


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(runs, tmp_path):  # noqa: F811
    run_dir = runs["verse"].run_dir
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-m", "nanonlp", "serve", str(run_dir), "--port", str(port), "--graceful-timeout", "60", "--timeout", "120"],
                               stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        result, in_flight = {}, threading.Event()

        def long_request():  # a stream: its first event proves the request is in flight
            import http.client

            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
            body = json.dumps({"prompt": "To", "max_new_tokens": 300, "seed": 1, "stream": True})
            connection.request("POST", "/v1/generate", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            result["status"] = response.status
            first = response.readline()
            in_flight.set()
            result["events"] = [first] + response.read().split(b"\n\n")

        client = threading.Thread(target=long_request)
        client.start()
        assert in_flight.wait(60)
        process.send_signal(signal.SIGTERM)
        client.join(timeout=90)
        assert process.wait(timeout=90) == 0
        assert result["status"] == 200 and any(e.strip() == b"data: [DONE]" for e in result["events"])  # finished, not cut
        # after SIGTERM nothing new is accepted
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    log = process.stderr.read()
    assert any(json.loads(line).get("path") == "/v1/generate" for line in log.splitlines() if line.startswith("{"))

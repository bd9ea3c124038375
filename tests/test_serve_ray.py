"""`nanonlp serve --ray`: the same app on Ray Serve. Two replicas of a tiny classifier on a local Ray
(2 CPUs) started here, each answering as the single-process server does; the Ray flags refused with
one sentence each, without Ray."""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

import nanonlp  # noqa: E402
from nanonlp import serve  # noqa: E402
from nanonlp.config import load_config  # noqa: E402
from nanonlp.errors import ConfigError  # noqa: E402
from nanonlp.serve.app import ServeSettings, create_app  # noqa: E402
from nanonlp.serve.ray_serve import check_arguments  # noqa: E402
from nanonlp.train import fit  # noqa: E402

KEY = "test-key"


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv, says", [
    (["RUN", "--replicas", "2"], "--replicas deploy on Ray Serve: add --ray"),
    (["RUN", "--ray-address", "auto", "--replica-cpus", "2"], "--ray-address, --replica-cpus deploy on Ray Serve: add --ray"),
    (["RUN", "--ray", "--replicas", "2", "--autoscale", "1,4"], "not both"),
    (["RUN", "--ray", "--replicas", "0"], "--replicas must be at least 1, got 0"),
    (["RUN", "--ray", "--autoscale", "4"], "two whole numbers such as 1,4; got '4'"),
    (["RUN", "--ray", "--autoscale", "3,1"], "0 <= MIN <= MAX and MAX >= 1; got 3,1"),
    (["RUN", "--ray", "--autoscale", "0,0"], "0 <= MIN <= MAX and MAX >= 1; got 0,0"),
    (["RUN", "--ray", "--replica-cpus", "0"], "--replica-cpus must be positive"),
    (["RUN", "--ray", "--device", "cuda"], "add --replica-gpus 1"),
    (["RUN", "--ray", "--autoscale", "1,3", "--analyze-config", "a.yaml"], "one DuckDB file"),
])
def test_ray_flags_are_refused_with_one_sentence_before_ray_starts(argv, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(".", r"\.")):
        serve.serve(serve_args(*argv))


def test_ray_flags_become_the_deployments_options():
    fixed = check_arguments(serve_args("RUN", "--ray", "--replicas", "3", "--replica-cpus", "2"))
    assert fixed == {"num_replicas": 3, "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.0}}
    scaled = check_arguments(serve_args("RUN", "--ray", "--autoscale", "0,4", "--device", "cuda", "--replica-gpus", "0.5"))
    assert scaled["autoscaling_config"]["min_replicas"] == 0 and scaled["autoscaling_config"]["max_replicas"] == 4
    assert scaled["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5} and "num_replicas" not in scaled
    assert check_arguments(serve_args("RUN")) == {}  # no Ray flags, no Ray


def test_ray_without_ray_serve_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(ConfigError, match=r"--ray needs Ray Serve: pip install 'nanonlp\[ray\]'"):
        serve.serve(serve_args("RUN", "--ray"))


def test_a_request_keeps_the_plain_request_id_it_brings():
    # Ray's proxy (or a load balancer) names each request; the app answers and logs under that id
    with TestClient(create_app({})) as client:
        for given, kept in (("trace-7", True), ("0f3c.a_b", True), ("x" * 65, False), ("a b", False), ("a/b", False)):
            response = client.post("/v1/classify", json={"texts": ["a"]}, headers={"X-Request-ID": given})
            assert response.status_code == 404  # no classifier mounted: an error, which names the id
            rid = response.json()["request_id"]
            assert (rid == given) is kept and response.headers["x-request-id"] == rid and rid


# ---------------------------------------------------------------------------------------------------
# two replicas on a local Ray


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    """A tiny classifier (as tests/test_serve.py trains it)."""
    tmp = tmp_path_factory.mktemp("serve_ray")
    train = tmp / "train.txt"
    train.write_text("".join(f"pos {t}\n" for t in ["a good film", "good and warm", "so good", "good fun", "a good story", "truly good"])
                     + "".join(f"neg {t}\n" for t in ["a bad film", "bad and cold", "so bad", "bad fun", "a bad story", "truly bad"]))
    fit(load_config(None, ["--task=classify", f"--data.path={train}", f"--data.dev_path={train}", "--model.type=bag_of_ngrams",
                           f"--train.out_dir={tmp / 'sentiment'}", "--train.max_steps=60", "--train.batch_size=8",
                           "--train.eval_interval=30", "--train.learning_rate=1e-2", "--train.dtype=float32", "--train.peak_tflops=1",
                           "--classify.calibration_min_dev=2", "--data.max_length=4"]), quiet=True)
    return tmp / "sentiment"


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs, no dashboard and a small object store; its address, which the server joins."""
    ray = pytest.importorskip("ray", reason="nanonlp serve --ray needs Ray Serve: pip install 'nanonlp[ray]'")
    pytest.importorskip("ray.serve", reason="nanonlp serve --ray needs Ray Serve: pip install 'nanonlp[ray]'")
    from packaging.version import Version

    from nanonlp.serve.ray_serve import MIN_RAY

    if Version(ray.__version__) < Version(MIN_RAY):
        pytest.skip(f"nanonlp serve --ray needs Ray {MIN_RAY} or later; this is Ray {ray.__version__}")
    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray, ray.get_runtime_context().gcs_address
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(port: int, method: str, path: str, body=None, key: str | None = KEY, headers: dict | None = None):
    """(status, headers, body bytes) of one request to the server."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", None if body is None else json.dumps(body).encode(),
                                     {**({"Content-Type": "application/json"} if body is not None else {}),
                                      **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def without_id(body: bytes) -> dict:
    answer = json.loads(body)
    answer.pop("request_id", None)
    return answer


def test_two_replicas_each_answer_as_the_single_process_server(local_ray, sentiment_run, tmp_path):
    ray, address = local_ray
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-m", "nanonlp", "serve", f"sentiment={sentiment_run}", "--ray", "--ray-address", address,
                                "--replicas", "2", "--port", str(port), "--api-key", KEY], stderr=log, env=env)
    single = TestClient(create_app({"sentiment": nanonlp.load(sentiment_run)}, ServeSettings(api_key=KEY)))
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.25)

        classify = {"texts": ["so good", "so bad", "good good good good good bad"]}
        want = single.post("/v1/classify", json=classify, headers={"Authorization": f"Bearer {KEY}"}).json()
        replicas: dict[str, dict] = {}
        with ThreadPoolExecutor(8) as pool:  # requests at once: Ray's router spreads them over both replicas
            for _ in range(20):
                for status, headers, body in pool.map(lambda _: call(port, "POST", "/v1/classify", classify), range(8)):
                    assert status == 200
                    replicas.setdefault(headers["X-Replica"], json.loads(body))
                if len(replicas) == 2:
                    break
        assert len(replicas) == 2, f"only replica {list(replicas)} answered"
        for answer in replicas.values():
            assert answer["model"] == want["model"] == "sentiment"
            assert [(r["label"], r["truncated"]) for r in answer["results"]] == [(r["label"], r["truncated"]) for r in want["results"]]
            for got, expected in zip(answer["results"], want["results"]):
                assert got["probabilities"] == pytest.approx(expected["probabilities"])

        status, headers, body = call(port, "GET", "/v1/models")
        assert status == 200 and json.loads(body) == single.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert call(port, "GET", "/")[2] == single.get("/").content  # the page
        assert call(port, "GET", "/health")[2] == single.get("/health").content
        status, headers, body = call(port, "GET", "/metrics")
        assert status == 200 and b"nanonlp_requests_total" in body and headers["X-Replica"] in replicas
        # errors go through the same way: a 422 and a 401, JSON with one request id (Ray's, in the header too)
        for request, kwargs in (({"texts": []}, {}), (classify, {"key": None})):
            status, headers, body = call(port, "POST", "/v1/classify", request, **kwargs)
            expected = single.post("/v1/classify", json=request, headers={"Authorization": f"Bearer {KEY}"} if kwargs == {} else {})
            assert (status, without_id(body)) == (expected.status_code, without_id(expected.content))
            assert headers.get_all("X-Request-ID") == [json.loads(body)["request_id"]]
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        status, headers, body = call(port, "POST", "/v1/classify", {"texts": []}, headers={"X-Request-ID": "trace-7"})
        assert status == 422 and json.loads(body)["request_id"] == "trace-7" and headers.get_all("X-Request-ID") == ["trace-7"]

        # a second server on the same cluster is refused, and leaves the first one serving
        second = subprocess.run([sys.executable, "-m", "nanonlp", "serve", str(sentiment_run), "--ray", "--ray-address", address,
                                 "--port", str(free_port())], capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2 and "already serves an application named 'nanonlp'" in second.stderr, second.stderr
        assert _healthy(port)

        # SIGTERM: the application and Serve come down, and the server exits 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()
        assert not _listening(port)
        assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE" in a["name"]]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


def _healthy(port: int) -> bool:
    try:
        return call(port, "GET", "/health")[0] == 200
    except OSError:  # not listening yet
        return False


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0

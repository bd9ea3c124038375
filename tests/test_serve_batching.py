"""serve/batching.py: batching windows that adapt to the load, and cancelling a batch shared by requests;
translation requests batched across requests, each answered as if alone."""

import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

from nanonlp.decode import Cancelled
from nanonlp.serve.batching import Batcher, window_left


def test_the_window_is_zero_for_rare_requests_and_never_past_the_cap():
    cap = 0.005
    assert window_left(10.0, 10.0, 10.0, None, cap) == 0.0  # no history yet: a lone request runs at once
    assert window_left(10.0, 10.0, 10.0, 0.005, cap) == 0.0  # requests rarer than the cap: waiting gathers nothing
    assert window_left(10.0, 10.0, 10.0, 0.001, cap) == pytest.approx(0.002)  # two average gaps after the latest request
    assert window_left(10.0015, 10.0, 10.001, 0.001, cap) == pytest.approx(0.0015)  # a new arrival extends the wait
    assert window_left(10.004, 10.0, 10.0039, 0.004, cap) == pytest.approx(0.001)  # capped at started + max_wait
    assert window_left(10.006, 10.0, 10.0059, 0.001, cap) == 0.0  # past the cap, whatever arrives
    assert window_left(10.0, 10.0, 10.0, 0.0, 0.0) == 0.0  # --max-wait-ms 0 never waits


def test_the_arrival_average_follows_the_load_on_an_injected_clock():
    now = [100.0]
    # max_batch 1: a batch is full at once, so the worker never waits on the frozen clock
    batcher = Batcher(lambda items: items, max_batch=1, max_wait=0.005, clock=lambda: now[0])
    try:
        for _ in range(5):  # a request every millisecond
            batcher.submit(["x"]).result(timeout=5)
            now[0] += 0.001
        assert batcher.gap == pytest.approx(0.001)
        now[0] += 60.0  # a quiet minute counts as twice the cap: the next lone request does not wait
        batcher.submit(["x"]).result(timeout=5)
        assert batcher.gap >= 0.005 and window_left(now[0], now[0], now[0], batcher.gap, 0.005) == 0.0
        for _ in range(6):  # a burst brings it back under the cap within a few requests
            now[0] += 0.0001
            batcher.submit(["x"]).result(timeout=5)
        assert batcher.gap < 0.005 / 2
    finally:
        batcher.close()


def test_time_the_model_spends_busy_is_not_a_gap_between_requests():
    now = [0.0]

    def run(items):  # each batch takes 50 ms on the injected clock
        now[0] += 0.05
        return items

    batcher = Batcher(run, max_batch=1, max_wait=0.005, clock=lambda: now[0])
    try:
        for _ in range(4):  # a client that sends again 0.5 ms after each answer: a busy model, not rare requests
            batcher.submit(["x"]).result(timeout=5)
            now[0] += 0.0005
        assert batcher.gap == pytest.approx(0.0005)
    finally:
        batcher.close()


def test_a_lone_request_does_not_pay_the_window_and_a_stream_of_them_is_batched():
    calls = []

    def run(items):
        calls.append(len(items))
        time.sleep(0.01)
        return items

    batcher = Batcher(run, max_batch=64, max_wait=1.0)  # a window of up to a second
    try:
        start = time.perf_counter()
        assert batcher.submit(["a"]).result(timeout=5) == ["a"]
        assert time.perf_counter() - start < 0.5  # the old fixed window made it wait the whole second
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: batcher.submit([i]).result(timeout=5), range(40)))
        assert results == [[i] for i in range(40)] and len(calls) < 41
    finally:
        batcher.close()


def test_a_shared_batch_runs_on_for_the_others_and_stops_when_every_request_gave_up():
    hold, steps = threading.Event(), []

    def run(items, cancel):
        if "hold" in items:
            hold.wait(5)
            return items
        for step in range(2000):  # a search that checks its cancel flag between steps
            if cancel.is_set():
                raise Cancelled("cancelled")
            steps.append(step)
            time.sleep(0.001)
            if step == 50 and "short" in items:
                return items
        return items

    batcher = Batcher(run, max_batch=2, max_wait=0.0, cancellable=True)  # "a" and the second request fill a batch
    try:
        for ending, expected in [("short", "shared"), ("long", "stopped")]:
            holder = batcher.submit(["hold"])
            time.sleep(0.05)  # the worker holds "hold": the next two wait, then run as one batch
            first, second = batcher.submit(["a"]), batcher.submit([ending])
            waiting = batcher.submit(["c"]) if ending == "long" else None
            hold.set()
            holder.result(timeout=5)
            while not steps:
                time.sleep(0.001)
            assert batcher.give_up(first) == "shared"  # the other request still waits: the batch runs on
            if ending == "short":
                assert second.result(timeout=5) == ["short"]  # its own slice, unharmed
            else:
                assert batcher.give_up(waiting) == "dequeued"  # not started: off the queue
                assert batcher.give_up(second) == expected  # the last one gone: the search stops at its next step
                with pytest.raises(Cancelled):
                    second.result(timeout=5)
                assert len(steps) < 2000
                with pytest.raises(CancelledError):
                    waiting.result(timeout=1)
            hold.clear()
            steps.clear()
    finally:
        batcher.close()


# ---------------------------------------------------------------------------------------------------
# translation requests batched across requests


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """A tiny Transformer translator, briefly trained (its translations need not be good, only the same)."""
    import nanonlp
    from nanonlp.config import load_config
    from nanonlp.train import fit
    from test_translate import tiny_translate, toy_pairs, write_tsv

    tmp = tmp_path_factory.mktemp("mt")
    tsv = write_tsv(tmp / "pairs.tsv", toy_pairs())
    fit(load_config(None, tiny_translate(tsv, tmp / "mt", **{"train.max_steps": 40, "train.eval_interval": 40,
                                                              "data.dev_path": str(tsv), "data.test_path": str(tsv)})), quiet=True)
    return nanonlp.load(tmp / "mt", device="cpu")


def requests_of():
    from test_translate import toy_pairs

    sources = [p.source for p in toy_pairs()]
    # beams 1 (greedy), 2 and 3 and several n-best sizes, mixed in arrival order; a blank line; the default beam
    return [{"texts": sources[i : i + 3] + ([" "] if i == 6 else []), "beam": [2, 3, 1, 2, None][i % 5], "nbest": [2, 1, 1, 1, 1][i % 5]}
            for i in range(0, 24, 3)]


def same_nbest(together, alone):
    """The same n-best texts in the same order, and the same scores up to float32 rounding: a batch of
    other widths and sizes sums the same numbers in another order (as two batch sizes always did)."""
    assert [[t for t, _ in hyps] for hyps in together] == [[t for t, _ in hyps] for hyps in alone]
    assert [[s for _, s in hyps] for hyps in together] == [pytest.approx([s for _, s in hyps], rel=1e-5, abs=1e-6) for hyps in alone]


def test_items_of_several_requests_translate_as_each_request_alone(translator):
    requests = requests_of()
    items = [(text, r["beam"], r["nbest"]) for r in requests for text in r["texts"]]
    together = translator.translate_requests(items)
    alone = [hyps for r in requests for hyps in translator.translate_nbest(r["texts"], r["beam"], r["nbest"])]
    same_nbest(together, alone)
    assert together[3 * 2 + 3] == [("", 0.0)]  # the blank line of the third request
    assert [len(h) for h in together] == [r["nbest"] for r in requests for _ in r["texts"]]


def test_concurrent_translation_requests_share_batches_and_get_what_each_gets_alone(translator):
    from fastapi.testclient import TestClient

    from nanonlp.serve.app import ServeSettings, create_app

    requests = requests_of()
    app = create_app({"mt": translator}, ServeSettings(max_wait_ms=20))
    with TestClient(app) as c:
        alone = [c.post("/v1/translate", json=r).json()["results"] for r in requests]  # one at a time
        batcher = app.state.mounted["mt"].runners["translate"].batcher
        before = batcher.batches
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(lambda r: c.post("/v1/translate", json=r).json()["results"], requests))
        assert batcher.batches - before < len(requests)  # fewer searches than requests: they shared batches
        for got, want in zip(together, alone):
            assert [r["translation"] for r in got] == [r["translation"] for r in want]
            assert [r["truncated"] for r in got] == [r["truncated"] for r in want]
            same_nbest([[(h["text"], h["score"]) for h in r["nbest"]] for r in got], [[(h["text"], h["score"]) for h in r["nbest"]] for r in want])
        response = c.post("/v1/translate", json={"texts": ["x"], "beam": 2, "nbest": 3})
        assert response.status_code == 400 and "larger than the beam (2)" in response.json()["detail"]


def test_each_batch_reports_its_items_its_run_time_and_each_requests_wait():
    now, reports, started, gate = [50.0], [], threading.Event(), threading.Event()

    def run(items):  # the batch takes 30 ms on the injected clock, once both requests are queued
        started.set()
        gate.wait(5)
        now[0] += 0.030
        return items

    batcher = Batcher(run, max_batch=8, max_wait=0.0, clock=lambda: now[0], on_batch=lambda *report: reports.append(report))
    try:
        first = batcher.submit(["a"])  # runs at once (no window), and holds the model
        assert started.wait(5)
        now[0] += 0.010
        second = batcher.submit(["b", "c"])  # arrives 10 ms later; waits until the first batch ends at 50.030
        gate.set()
        assert first.result(timeout=5) == ["a"] and second.result(timeout=5) == ["b", "c"]
    finally:
        batcher.close()
    # the first batch ran from 50.000 to 50.040 (the 10 ms the test waited while it ran, then its own 30)
    assert [(count, round(seconds, 6)) for count, seconds, _ in reports] == [(1, 0.04), (2, 0.03)]
    assert [round(w, 6) for w in reports[0][2]] == [0.0]
    assert [round(w, 6) for w in reports[1][2]] == [0.03]  # queued at 50.010, its batch began at 50.040


def test_a_translation_past_the_time_limit_is_a_504_and_its_search_stops(translator):
    """Through the app: the only request of a batch gives up at the time limit, so the batch's search is
    told to stop (its cancel flag), and the 504 says so."""
    from fastapi.testclient import TestClient

    from nanonlp.serve.app import ServeSettings, create_app

    seen = {}

    class Slow:  # the real translator's declaration and checks; a search that runs until it is cancelled
        task, languages, config = "translate", translator.languages, translator.config
        check_beam, truncated, endpoints = translator.check_beam, translator.truncated, type(translator).endpoints

        def translate_requests(self, items, cancel=None):
            seen["cancel"] = cancel
            if not cancel.wait(10):
                raise AssertionError("the search was never cancelled")
            raise Cancelled("decoding was cancelled")

    with TestClient(create_app({"mt": Slow()}, ServeSettings(timeout_s=0.2, max_wait_ms=0))) as c:
        response = c.post("/v1/translate", json={"texts": ["a man walks"], "beam": 2})
    assert response.status_code == 504 and "its work was stopped" in response.json()["detail"]
    assert seen["cancel"].is_set()

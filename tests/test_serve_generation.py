"""Continuous batching of generation (serve/generation.py): the scheduler gives each sequence the text
it would get alone, lets sequences join and leave between steps, and frees slots when requests end."""

import json
import threading
import time

import pytest
import torch

from nanonlp.data.tokenizers import CharTokenizer
from nanonlp.decode import Cancelled
from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
from nanonlp.models.gpt import GPT, GPTConfig
from nanonlp.predict.lm import LanguageModel
from nanonlp.serve.generation import GenerationScheduler

from conftest import VERSE

TOKENIZER = CharTokenizer.train(VERSE)


def tiny_lm(kind: str = "gpt", **config) -> LanguageModel:
    """A random (untrained) tiny model with large weights: its samples are noisy and depend on every
    key and position, which makes any row mixed up visible."""
    torch.manual_seed(0)
    if kind in ("lstm", "gru"):
        model = CharRNN(CharRNNConfig(cell=kind, n_layer=2, n_embd=16, hidden_size=32, dropout=0.0, vocab_size=TOKENIZER.vocab_size))
    else:
        options = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, vocab_size=TOKENIZER.vocab_size)
        if kind == "rotary":
            options.update(position="rotary", qk_norm=True)
        model = GPT(GPTConfig(**{**options, **config}))
        for p in model.parameters():  # GPT-2's small initial weights leave attention and positions nearly silent
            torch.nn.init.normal_(p, std=0.5)
    return LanguageModel(model, TOKENIZER, None, torch.device("cpu"))


@pytest.fixture
def scheduler_of():
    made = []

    def make(lm, max_sequences=8):
        steps = []
        scheduler = GenerationScheduler(lm, max_sequences, on_step=steps.append)
        scheduler.steps = steps  # sequences per step, as the metrics see them
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


OTHERS = [  # other requests in the same batch, with settings of their own
    ("Whether", dict(max_new_tokens=25, temperature=0)),
    ("that is the question", dict(max_new_tokens=35, temperature=1.3, top_k=4, seed=9)),
    ("T", dict(max_new_tokens=12, temperature=0.7, top_p=0.8)),
]


@pytest.mark.parametrize("kind", ["gpt", "rotary", "lstm", "gru"])
@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=0.9, top_k=6, seed=3), dict(temperature=1.0, top_p=0.9, seed=11)])
def test_a_sequence_gets_the_same_text_alone_and_inside_a_batch(kind, options, scheduler_of):
    lm = tiny_lm(kind)
    scheduler = scheduler_of(lm)
    # 40 tokens after a 5-token prompt: a GPT of block_size 16 re-windows, the row alone
    expected = lm.generate("To be", max_new_tokens=40, **options)
    assert scheduler.generate("To be", max_new_tokens=40, **options) == expected
    assert max(scheduler.steps) == 1
    scheduler.steps.clear()
    with scheduler.wake:  # the worker takes all four at once (the lock is re-entrant for submit)
        target = scheduler.submit(["To be"], max_new_tokens=40, **options)[0]
        others = [scheduler.submit([p], **o)[0] for p, o in OTHERS]
    assert "To be" + target.future.result(timeout=30) == expected
    for (prompt, o), sequence in zip(OTHERS, others):
        if "seed" in o or o["temperature"] == 0:
            assert prompt + sequence.future.result(timeout=30) == lm.generate(prompt, **o)
    assert max(scheduler.steps) == 4  # they really ran together


def test_a_list_of_prompts_runs_as_one_sequence_each_and_equals_the_predictor(scheduler_of):
    lm = tiny_lm()
    scheduler = scheduler_of(lm)
    prompts = ["To be", "or not", "Whether 'tis nobler"]
    assert scheduler.generate(prompts, max_new_tokens=20, seed=5, top_k=3) == lm.generate(prompts, max_new_tokens=20, seed=5, top_k=3)
    assert max(scheduler.steps) == 3


@pytest.mark.parametrize("kind", ["rotary", "lstm"])
def test_sequences_join_and_leave_between_steps(kind, scheduler_of):
    lm = tiny_lm(kind, block_size=64)
    scheduler = scheduler_of(lm)
    joined = []

    def listener(kind, value):  # on the worker thread, after the long sequence's 10th piece: a newcomer joins mid-generation
        if kind == "piece" and len(long.parts) == 10 and not joined:
            joined.extend(scheduler.submit(["Whether"], max_new_tokens=15, temperature=0.8, seed=2))

    # the short one, in the first slot, leaves after 5 tokens: the long one moves into its slot
    with scheduler.wake:  # both start at the same step
        (short,) = scheduler.submit(["or"], max_new_tokens=5, temperature=0)
        (long,) = scheduler.submit(["To be"], max_new_tokens=50, temperature=0, listener=listener)
    assert "To be" + long.future.result(timeout=30) == lm.generate("To be", max_new_tokens=50, temperature=0)
    assert "or" + short.future.result(timeout=30) == lm.generate("or", max_new_tokens=5, temperature=0)
    assert "Whether" + joined[0].future.result(timeout=30) == lm.generate("Whether", max_new_tokens=15, temperature=0.8, seed=2)
    # two together, then one, then two again (the newcomer), then one: joins and leaves between steps
    sizes = [k for i, k in enumerate(scheduler.steps) if i == 0 or scheduler.steps[i - 1] != k]
    assert sizes == [2, 1, 2, 1]
    assert scheduler.active == []


def test_stop_strings_and_budgets_are_per_sequence(scheduler_of):
    lm = tiny_lm()
    scheduler = scheduler_of(lm)
    full = {p: lm.generate(p, max_new_tokens=30, temperature=0)[len(p):] for p in ("To be", "Whether")}
    stops = {"To be": [full["To be"][8:10]], "Whether": [full["Whether"][12:13], "never seen"]}
    counted = {p: 0 for p in stops}

    def counter(p):
        def count():
            counted[p] += 1
        return count

    sequences = {p: scheduler.submit([p], max_new_tokens=30, temperature=0, stop=s, on_token=counter(p))[0] for p, s in stops.items()}
    (budget,) = scheduler.submit(["or"], max_new_tokens=7, temperature=0)
    for p, sequence in sequences.items():
        assert p + sequence.future.result(timeout=30) == lm.generate(p, max_new_tokens=30, temperature=0, stop=stops[p])
        assert stops[p][0] not in sequence.future.result()
        assert counted[p] < 30  # the stop string ended it: its slot was freed early
    assert budget.future.result(timeout=30) == lm.generate("or", max_new_tokens=7, temperature=0)[2:] and budget.generated == 7


def test_sequences_past_block_size_equal_the_unbatched_path(scheduler_of):
    lm = tiny_lm("gpt", block_size=8)
    scheduler = scheduler_of(lm)
    # prompts of 12, 3 and 7 characters (the first read through its last 8): all pass block_size, at different steps
    prompts = ["To be, or not", "Whe", "To be, "]
    options = dict(max_new_tokens=30, temperature=0.9, seed=21)
    sequences = scheduler.submit(prompts, **options)
    for p, s in zip(prompts, sequences):
        assert p + s.future.result(timeout=30) == lm.generate(p, **options)
        assert len(s.history) > 30 > lm.block_size
    assert sequences[0].truncated and not sequences[1].truncated
    assert max(scheduler.steps) == 3


def test_cancelling_frees_the_slot_for_the_next_waiting_sequence(scheduler_of):
    lm = tiny_lm("gpt", block_size=64)
    scheduler = scheduler_of(lm, max_sequences=1)
    cancel = threading.Event()

    def listener(kind, value):
        if kind == "piece" and len(first.parts) == 3:
            cancel.set()  # stops before its next token

    with scheduler.wake:
        (first,) = scheduler.submit(["To be"], max_new_tokens=60, temperature=0, cancel=cancel, listener=listener)
        (waiting,) = scheduler.submit(["or"], max_new_tokens=10, seed=4)  # no slot until the first ends
    with pytest.raises(Cancelled):
        first.future.result(timeout=30)
    assert first.generated <= 4
    assert "or" + waiting.future.result(timeout=30) == lm.generate("or", max_new_tokens=10, seed=4)
    assert max(scheduler.steps) == 1
    # a stream whose consumer stops reading frees its slot too
    pieces = scheduler.stream("To be", max_new_tokens=60, temperature=0)
    next(pieces)
    pieces.close()
    assert scheduler.generate("or", max_new_tokens=5, temperature=0) == lm.generate("or", max_new_tokens=5, temperature=0)


def test_closing_the_scheduler_cancels_what_runs_and_waits():
    lm = tiny_lm("gpt", block_size=512, n_layer=4, n_embd=128)
    scheduler = GenerationScheduler(lm, 1)
    started = threading.Event()
    (running,) = scheduler.submit(["To be"], max_new_tokens=1000, listener=lambda kind, value: started.set())
    (waiting,) = scheduler.submit(["or"], max_new_tokens=5)
    assert started.wait(10)
    scheduler.close()
    for sequence in (running, waiting):
        with pytest.raises(Cancelled):
            sequence.future.result(timeout=10)
    assert running.generated < 1000 and waiting.generated == 0
    with pytest.raises(Cancelled):
        scheduler.submit(["To be"])


def test_under_bf16_autocast_the_slot_cache_keeps_its_dtype(scheduler_of):
    for kind in ("gpt", "lstm"):
        lm = tiny_lm(kind)
        lm.dtype = torch.bfloat16  # what a GPU samples in; the CPU has bf16 autocast too
        texts = scheduler_of(lm).generate(["To be", "or"], max_new_tokens=20, temperature=0)
        assert [len(TOKENIZER.encode(t)) for t in texts] == [25, 22]


def test_the_slot_step_equals_the_cached_forward_row_by_row():
    for kind in ("gpt", "rotary"):
        model = tiny_lm(kind, block_size=32).model
        prompts = [torch.tensor([[3, 4, 5]]), torch.tensor([[7] * 9]), torch.tensor([[1]])]
        slots = model.init_slots(4)
        caches = []
        for slot, ids in zip((2, 0, 3), prompts):
            cache = model.init_state(1)
            model.next_logits(ids, cache, ids)
            model.fill_slot(slots, slot, cache)
            caches.append(cache)
        with torch.no_grad():
            batched = model.step_slots(torch.tensor([9, 8, 6]), torch.tensor([2, 0, 3]), slots)
            for row, (cache, token) in enumerate(zip(caches, (9, 8, 6))):
                alone, _ = model.next_logits(torch.tensor([[token]]), cache, None)
                torch.testing.assert_close(batched[row], alone[0])
        assert slots.lengths.tolist() == [10, 0, 4, 2]


# ---------------------------------------------------------------------------------------------------
# through the HTTP app


def test_the_app_batches_requests_and_counts_steps():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nanonlp.serve.app import ServeSettings, create_app

    lm = tiny_lm()
    with TestClient(create_app({"tiny": lm}, ServeSettings(max_sequences=4))) as c:
        prompts = ["To be", "or not", "Whether"]
        body = c.post("/v1/generate", json={"prompt": prompts, "max_new_tokens": 20, "seed": 1, "top_k": 5}).json()
        assert [r["text"] for r in body["results"]] == lm.generate(prompts, max_new_tokens=20, seed=1, top_k=5)
        with c.stream("POST", "/v1/generate", json={"prompt": "To be", "max_new_tokens": 20, "temperature": 0, "stop": ["e"],
                                                    "stream": True}) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "To be" + "".join(json.loads(e)["text"] for e in events[:-1]) == \
            lm.generate("To be", max_new_tokens=20, temperature=0, stop=["e"])
        metrics = c.get("/metrics").text
    count = float(metrics.split('nanonlp_generation_step_sequences_count{model="tiny"} ')[1].split()[0])
    total = float(metrics.split('nanonlp_generation_step_sequences_sum{model="tiny"} ')[1].split()[0])
    assert count >= 19 and total > count  # the list's prompts were stepped together


def test_a_timed_out_request_and_a_stream_whose_client_leaves_free_their_slots():
    pytest.importorskip("fastapi")
    import httpx
    from fastapi.testclient import TestClient

    from nanonlp.serve.app import ServeSettings, create_app
    from test_serve_limits import free_port, start_uvicorn

    lm = tiny_lm("gpt", block_size=512, n_layer=4, n_embd=128)  # about a millisecond a token or more: 1,000 take a while
    with TestClient(create_app({"tiny": lm}, ServeSettings(timeout_s=0.05, max_sequences=1))) as c:
        response = c.post("/v1/generate", json={"prompt": "To be", "max_new_tokens": 1000})
        assert response.status_code == 504 and "its work was stopped" in response.json()["detail"]
        scheduler = c.app.state.mounted["tiny"].runners["generate"].scheduler
        for _ in range(100):
            if not scheduler.active:
                break
            time.sleep(0.02)
        assert scheduler.active == []
    app = create_app({"tiny": lm}, ServeSettings(max_sequences=1, timeout_s=30))
    scheduler = app.state.mounted["tiny"].runners["generate"].scheduler
    port = free_port()
    server, thread = start_uvicorn(app, port)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.stream("POST", f"{base}/v1/generate", json={"prompt": "To be", "max_new_tokens": 1000, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
            (sequence,) = scheduler.active
        # the client left: the sequence ends at its next step and its only slot serves the next request
        for _ in range(200):
            if sequence.ended:
                break
            time.sleep(0.01)
        assert sequence.ended and sequence.generated < 1000
        ok = httpx.post(f"{base}/v1/generate", json={"prompt": "or", "max_new_tokens": 5, "temperature": 0}, timeout=10)
        assert ok.json()["results"][0]["text"] == lm.generate("or", max_new_tokens=5, temperature=0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_max_sequences_is_a_setting_checked_at_start():
    import argparse

    from nanonlp.errors import ConfigError
    from nanonlp.serve import add_arguments, serve

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["run"]).max_sequences == 32
    with pytest.raises(ConfigError, match="--max-sequences must be at least 1"):
        serve(parser.parse_args(["run", "--max-sequences", "0"]))
    with pytest.raises(ConfigError, match="max_sequences must be at least 1"):
        GenerationScheduler(tiny_lm(), 0)

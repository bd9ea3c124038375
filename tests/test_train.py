import json
import math
from pathlib import Path

import pytest
import torch

from nanonlp import checkpoint, io
from conftest import tiny_overrides
from nanonlp.config import TrainConfig, load_config
from nanonlp.errors import NanoNLPError
from nanonlp.train import fit
from nanonlp.train import TrainingJob, forward_backward, learning_rate, train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_gpt_overfits_a_one_batch_corpus(tmp_path, corpus):
    corpus.write_text("abcdefghij" * 6, encoding="utf-8")  # 60 characters: a batch covers the corpus
    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "run", **{
        "model.block_size": 8, "train.max_steps": 150, "train.batch_size": 16, "train.eval_interval": 150,
        "data.val_fraction": 0.2, "train.learning_rate": 1e-2, "train.weight_decay": 0.0}))
    fit(cfg, quiet=True)
    final = [r for r in read_metrics(tmp_path / "run") if "loss" in r][-1]
    assert final["step"] == 150
    assert final["loss"] < 0.1


def test_resume_continues_the_same_loss_curve(tiny_config):
    # Dropout on, so restoring the RNG state matters as much as the optimizer and data sampler.
    # lr_decay_steps is fixed so the 10-step first half follows the 20-step run's schedule, as a run
    # killed at step 10 would.
    straight = tiny_config("straight", model__dropout=0.1, train__lr_decay_steps=20)
    fit(straight, quiet=True)

    first_half = tiny_config("resumed", model__dropout=0.1, train__lr_decay_steps=20, train__max_steps=10)
    fit(first_half, quiet=True)
    second_half = tiny_config("resumed", model__dropout=0.1, train__lr_decay_steps=20)
    result = fit(second_half, resume=True, quiet=True)
    assert result.step == 20

    a = [r for r in read_metrics(Path(straight.train.out_dir)) if "loss" in r]
    b = [r for r in read_metrics(Path(second_half.train.out_dir)) if "loss" in r]
    assert [r["step"] for r in b] == list(range(1, 21))  # no duplicate or missing log lines
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-6, (ra, rb)


def test_resume_matches_exactly_in_weights(tiny_config):
    from safetensors.torch import load_file

    fit(tiny_config("a", train__lr_decay_steps=20), quiet=True)
    fit(tiny_config("b", train__lr_decay_steps=20, train__max_steps=10), quiet=True)
    fit(tiny_config("b", train__lr_decay_steps=20), resume=True, quiet=True)
    wa = load_file(str(Path(tiny_config("a").train.out_dir) / "checkpoints/step_00000020/model.safetensors"))
    wb = load_file(str(Path(tiny_config("b").train.out_dir) / "checkpoints/step_00000020/model.safetensors"))
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6), name


def test_accumulated_micro_batches_equal_one_large_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(3, (8,))
    job = TrainingJob(model=model, train_batch=None, loss=lambda m, b, step: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                      evaluate=None, batch_tokens=None, data_state=None, load_data_state=None)
    cpu = torch.device("cpu")

    forward_backward(job, model, [(x, y)], cpu, torch.float32)
    one_batch = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = forward_backward(job, model, [(x[:4], y[:4]), (x[4:], y[4:])], cpu, torch.float32)["loss"]
    for g, p in zip(one_batch, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(x), y), atol=1e-6)


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(0.1)  # (0 + 1) / 10
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(10, cfg) == pytest.approx(1.0)  # the peak, then cosine
    assert learning_rate(60, cfg) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert learning_rate(110, cfg) == pytest.approx(0.1)
    assert learning_rate(500, cfg) == pytest.approx(0.1)


def _linear_job(nan_after=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    calls = {"n": 0}
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def loss(m, batch, step):
        calls["n"] += 1
        value = torch.nn.functional.mse_loss(m(batch[0]), batch[1])
        return value * float("nan") if nan_after is not None and calls["n"] > nan_after else value

    return TrainingJob(model=model, train_batch=lambda: (x, y), loss=loss,
                       evaluate=lambda m: {"val_loss": torch.nn.functional.mse_loss(m(x), y).item()},
                       batch_tokens=lambda b: b[0].shape[0], data_state=lambda: {}, load_data_state=lambda s: None)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(max_steps=50, eval_interval=5, log_interval=1, dtype="float32", warmup_steps=0)
    with pytest.raises(NanoNLPError, match=r"became nan at step 8.*step 5.*untouched"):
        train(_linear_job(nan_after=7), cfg, tmp_path, torch.device("cpu"), quiet=True)
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000005"
    state = checkpoint.load_train_state(latest)
    assert state["step"] == 5
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(latest / "model.safetensors")).values())
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / "model.safetensors")).values())


def test_max_seconds_stops_cleanly_with_a_checkpoint(tmp_path):
    cfg = TrainConfig(max_steps=10**9, max_seconds=0.5, eval_interval=10**6, log_interval=100, dtype="float32")
    result = train(_linear_job(), cfg, tmp_path, torch.device("cpu"), quiet=True)
    assert result.stopped_by == "max_seconds"
    assert 0 < result.step < 10**9
    assert checkpoint.load_train_state(checkpoint.latest_checkpoint(tmp_path))["step"] == result.step
    assert (tmp_path / "model.safetensors").is_file()


def test_checkpoint_killed_mid_save_leaves_previous_intact(tmp_path, monkeypatch):
    cfg = TrainConfig(max_steps=4, eval_interval=2, log_interval=1, dtype="float32")
    train(_linear_job(), cfg, tmp_path, torch.device("cpu"), quiet=True)
    before = (tmp_path / "checkpoints" / "step_00000004" / "model.safetensors").read_bytes()

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # a kill arriving in the middle of writing train_state.pt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        train(_linear_job(), TrainConfig(max_steps=6, eval_interval=2, log_interval=1, dtype="float32"),
              tmp_path, torch.device("cpu"), resume=True, quiet=True)
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000004"
    assert (latest / "model.safetensors").read_bytes() == before
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_keep_checkpoints_prunes_old_steps(tmp_path):
    cfg = TrainConfig(max_steps=10, eval_interval=2, keep_checkpoints=2, dtype="float32")
    train(_linear_job(), cfg, tmp_path, torch.device("cpu"), quiet=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000008", "step_00000010"]


def test_metrics_and_loss_curve_written(tiny_config):
    cfg = tiny_config()
    fit(cfg, quiet=True)
    run = Path(cfg.train.out_dir)
    records = read_metrics(run)
    train_lines = [r for r in records if "loss" in r]
    assert len(train_lines) == 20 and all({"lr", "tokens_per_s", "elapsed_s"} <= r.keys() for r in train_lines)
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(math.isfinite(r["loss"]) for r in train_lines)
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "best.json", "data/train.bin", "data/prepared.json"):
        assert (run / name).is_file(), name


def test_existing_run_without_resume_is_refused(tiny_config):
    fit(tiny_config(train__max_steps=2, train__eval_interval=2), quiet=True)
    with pytest.raises(NanoNLPError, match="already holds a run"):
        fit(tiny_config(train__max_steps=2), quiet=True)


def test_resume_with_a_different_model_is_refused(tiny_config):
    fit(tiny_config(train__max_steps=2, train__eval_interval=2), quiet=True)
    with pytest.raises(NanoNLPError, match="model.n_layer=2"):
        fit(tiny_config(model__n_layer=3), resume=True, quiet=True)


def test_resume_survives_a_half_written_log_line(tiny_config):
    fit(tiny_config(train__max_steps=10, train__lr_decay_steps=20), quiet=True)
    metrics = Path(tiny_config().train.out_dir) / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 11, "lo')  # killed in the middle of a write
    fit(tiny_config(train__lr_decay_steps=20), resume=True, quiet=True)
    steps = [r["step"] for r in read_metrics(metrics.parent) if "loss" in r]
    assert steps == list(range(1, 21))


def test_resume_before_the_first_checkpoint_starts_a_clean_log(tiny_config):
    import shutil

    fit(tiny_config(train__max_steps=5), quiet=True)
    run = Path(tiny_config().train.out_dir)
    shutil.rmtree(run / "checkpoints")  # as if killed before its first checkpoint
    fit(tiny_config(train__max_steps=5), resume=True, quiet=True)
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]


def test_saving_the_same_step_twice_keeps_a_valid_latest(tmp_path):
    cfg = TrainConfig(max_steps=4, eval_interval=2, log_interval=1, dtype="float32")
    train(_linear_job(), cfg, tmp_path, torch.device("cpu"), quiet=True)
    checkpoint.write_step_checkpoint(tmp_path, 4, torch.nn.Linear(4, 1), {"step": 4}, keep=2)
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000004"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def _flat_like_cudnn(module: torch.nn.Module) -> torch.Tensor:
    """Make every parameter a view of one flat buffer, as cuDNN does with an RNN's weights on CUDA."""
    params = list(module.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def test_weights_that_are_views_of_one_flat_buffer_save_and_load_in_place(tmp_path):
    torch.manual_seed(0)
    source = torch.nn.LSTM(4, 3, bidirectional=True)
    _flat_like_cudnn(source)
    io.save_weights(source, tmp_path / "w.safetensors")  # safetensors' save_model refuses such views
    target = torch.nn.LSTM(4, 3, bidirectional=True)
    flat = _flat_like_cudnn(target)
    io.load_weights(target, tmp_path / "w.safetensors")
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in source.parameters()]))  # loaded into the buffer
    x = torch.randn(5, 2, 4)
    assert torch.equal(source(x)[0], target(x)[0])


def test_tied_weights_are_saved_once_and_loaded_through_both_names(tmp_path):
    from nanonlp.models.gpt import GPT, GPTConfig
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    io.save_weights(model, tmp_path / "w.safetensors")
    saved = load_file(str(tmp_path / "w.safetensors"))
    assert "lm_head.weight" not in saved and "transformer.wte.weight" in saved
    again = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    io.load_weights(again, tmp_path / "w.safetensors")
    assert again.lm_head.weight is again.transformer.wte.weight
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    wrong = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(NanoNLPError, match="do not fit the model"):
        io.load_weights(wrong, tmp_path / "w.safetensors")
    # A file written by safetensors' save_model (this project before 2026-11-26) keeps the tied weight
    # under lm_head.weight: it still loads.
    from safetensors.torch import save_model

    save_model(model, str(tmp_path / "old.safetensors"))
    assert "lm_head.weight" in load_file(str(tmp_path / "old.safetensors"))
    old = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    io.load_weights(old, tmp_path / "old.safetensors")
    assert old.lm_head.weight is old.transformer.wte.weight and torch.equal(old.lm_head.weight, model.lm_head.weight)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(NanoNLPError, match="not a readable safetensors file"):
        io.load_weights(again, tmp_path / "bad.safetensors")


def test_a_module_registered_twice_saves_its_buffers_once(tmp_path):
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.BatchNorm1d(3)
            self.b = self.a  # the same module (and its running-statistics buffers) under a second name

    torch.manual_seed(0)
    model = Twice()
    model.a(torch.randn(8, 3))  # training mode: moves the running statistics
    io.save_weights(model, tmp_path / "w.safetensors")
    again = Twice()
    io.load_weights(again, tmp_path / "w.safetensors")
    assert torch.equal(again.a.running_mean, model.a.running_mean) and again.b is again.a

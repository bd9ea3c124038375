"""bf16 autocast and torch.compile leave the numbers where fp32 eager puts them, within stated tolerances."""

import json

import pytest
import torch

from conftest import tiny_overrides
from nanonlp.config import load_config
from nanonlp.models import GPT, GPTConfig
from nanonlp.train import fit
from nanonlp.train import compiler_available


def logged_losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_bf16_and_fp32_training_curves_agree(tmp_path, corpus):
    # bf16 keeps 8 bits of mantissa in the matmuls (weights and the loss stay fp32), so per-step
    # losses differ by rounding: we allow 0.05 nats at any of the 50 steps and 0.02 at the end.
    curves = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(None, tiny_overrides(corpus, tmp_path / dtype, train__dtype=dtype, train__max_steps=50,
                                               train__eval_interval=50))
        fit(cfg, quiet=True)
        curves[dtype] = logged_losses(tmp_path / dtype)
    fp32, bf16 = curves["float32"], curves["bfloat16"]
    assert len(fp32) == len(bf16) == 50
    assert fp32[-1] < fp32[0] - 0.5  # it did learn
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05
    assert abs(fp32[-1] - bf16[-1]) < 0.02


def test_compiled_model_equals_eager():
    ok, why = compiler_available(torch.device("cpu"))
    if not ok:
        pytest.skip(f"torch.compile unavailable here: {why}")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, vocab_size=20))
    compiled = torch.compile(model)
    x, y = torch.randint(20, (4, 16)), torch.randint(20, (4, 16))
    logits, loss = model(x, y)
    loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    c_logits, c_loss = compiled(x, y)
    c_loss.backward()
    assert torch.allclose(logits, c_logits, atol=1e-4)
    assert torch.allclose(loss, c_loss, atol=1e-5)
    for g, p in zip(eager_grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-4)

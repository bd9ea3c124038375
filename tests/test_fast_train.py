"""The speed switches leave the numbers where the plain step puts them: bf16 weights with fp32 masters
against autocast, a compiled step against the eager one, the chunked loss against the plain one, and
Muon's variants (q, k, v apart; Newton-Schulz in bf16)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import tiny_overrides
from nanonlp.config import TrainConfig, load_config
from nanonlp.errors import ConfigError
from nanonlp.models import GPT, GPTConfig
from nanonlp.models.gpt import chunked_cross_entropy
from nanonlp.optim import MuonAdamW, muon_update, orthogonalize
from nanonlp.train import compiler_available, fit, make_optimizer


def logged_losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_bf16_weights_train_as_autocast_does_over_50_steps(tmp_path, corpus):
    # Both compute the matmuls in bf16; bf16 weights also keep the residual stream and the norms in
    # bf16, so the per-step losses differ by rounding: 0.05 nats at any of the 50 steps, 0.03 at the end.
    curves = {}
    for name, flag in (("autocast", "false"), ("bf16_weights", "true")):
        cfg = load_config(None, tiny_overrides(corpus, tmp_path / name, train__dtype="bfloat16", train__bf16_weights=flag,
                                               train__max_steps=50, train__eval_interval=50))
        fit(cfg, quiet=True)
        curves[name] = logged_losses(tmp_path / name)
    autocast, low = curves["autocast"], curves["bf16_weights"]
    assert len(autocast) == len(low) == 50
    assert autocast[-1] < autocast[0] - 0.5  # it did learn
    assert max(abs(a - b) for a, b in zip(autocast, low)) < 0.05
    assert abs(autocast[-1] - low[-1]) < 0.03
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16_weights" / "model.safetensors"), "pt") as f:  # the fp32 masters are what is saved
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())


def test_bf16_weights_need_bf16(tmp_path, corpus):
    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "run", train__dtype="float32", train__bf16_weights="true"))
    with pytest.raises(ConfigError, match="train.bf16_weights keeps a bf16 copy .* set train.dtype bfloat16"):
        fit(cfg, quiet=True)


def test_a_compiled_step_equals_the_eager_step(tmp_path, corpus, monkeypatch):
    ok, why = compiler_available(torch.device("cpu"))
    if not ok:
        pytest.skip(f"torch.compile unavailable here: {why}")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    curves = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        cfg = load_config(None, tiny_overrides(corpus, tmp_path / name, train__compile=flag, train__max_steps=4,
                                               train__eval_interval=4, train__optimizer="muon"))
        fit(cfg, quiet=True)
        curves[name] = logged_losses(tmp_path / name)
    assert len(curves["eager"]) == 4
    assert curves["compiled"] == pytest.approx(curves["eager"], abs=2e-4)
    # the compiled kernels are kept in nanonlp's cache, for the next run of the same shape
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(os.environ["NANONLP_CACHE"])
    assert any((tmp_path / "cache" / "torchinductor").rglob("*"))


def test_the_chunked_loss_equals_the_plain_loss_and_its_gradient():
    config = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, vocab_size=50, logit_softcap=15.0, tie_embeddings=True)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**config))
    chunked = GPT(GPTConfig(**config, loss_chunk=7))  # 7 divides none of the 3 x 16 tokens' counts: a short last chunk
    chunked.load_state_dict(plain.state_dict())
    x, y = torch.randint(50, (3, 16)), torch.randint(50, (3, 16))
    y[0, :5] = -1  # ignored targets count in neither the sum nor the mean
    logits, loss = plain(x, y)
    none, chunk_loss = chunked(x, y)
    assert none is None and logits.shape == (3, 16, 50)
    assert chunk_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    loss.backward()
    chunk_loss.backward()
    for (name, p), q in zip(plain.named_parameters(), chunked.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    # by hand: the mean over the kept targets of -log softmax
    h = torch.randn(10, 4)
    w = torch.randn(6, 4)
    t = torch.tensor([0, 1, 2, 3, 4, 5, -1, 0, 1, 2])
    by_hand = -torch.stack([torch.log_softmax(h[i] @ w.T, 0)[t[i]] for i in range(10) if t[i] >= 0]).mean()
    assert chunked_cross_entropy(h, t, lambda z: z @ w.T, 3).item() == pytest.approx(by_hand.item(), abs=1e-5)
    with pytest.raises(ConfigError, match="model.loss_chunk"):
        GPTConfig(loss_chunk=-1).validate()


def test_muon_orthogonalises_q_k_and_v_apart_when_asked():
    torch.manual_seed(0)
    c = 16
    update = torch.randn(3 * c, c)
    update[:c] *= 50.0  # q's block dominates the whole matrix's spectrum
    apart = muon_update(update, 5, split=3)
    whole = muon_update(update, 5, split=1)
    for i in range(3):
        block = apart[i * c : (i + 1) * c]
        assert torch.equal(block, orthogonalize(update[i * c : (i + 1) * c]))  # each block alone, scale 1 (square)
        s = torch.linalg.svdvals(block)
        assert s.min() > 0.5 and s.max() < 1.3
    # whole, q's large block takes most directions and k's block is starved in some: not orthogonal on its own
    assert torch.linalg.svdvals(whole[c : 2 * c]).min() < 0.2
    # the optimizer takes c_attn into a group of its own with split 3 where train.muon_split_qkv is on
    model = GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16, vocab_size=11, dropout=0.0))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", muon_split_qkv=True), torch.device("cpu"))
    split = [g for g in optimizer.param_groups if g.get("split") == 3]
    assert len(split) == 1 and {id(p) for p in split[0]["params"]} == {id(b.attn.c_attn.weight) for b in model.transformer.h}
    off = make_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert all(g.get("split", 1) == 1 for g in off.param_groups)
    assert len(off.param_groups) == len(optimizer.param_groups) - 1


def test_muon_newton_schulz_in_bf16_stays_in_the_band_and_near_fp32():
    torch.manual_seed(0)
    g = torch.randn(64, 48) @ torch.diag(torch.logspace(0, 1, 48))  # singular values spread over a decade
    fp32 = orthogonalize(g)
    bf16 = orthogonalize(g, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32  # handed back in the gradient's dtype
    s = torch.linalg.svdvals(bf16)
    assert s.min() > 0.5 and s.max() < 1.3
    assert (bf16 - fp32).norm() / fp32.norm() < 0.03
    model = GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16, vocab_size=11, dropout=0.0))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", muon_precision="bfloat16"), torch.device("cpu"))
    assert isinstance(optimizer, MuonAdamW) and optimizer.ns_dtype == torch.bfloat16


def test_attention_dropout_on_cpu_is_the_math_path_with_the_fast_mask():
    from nanonlp.models.gpt import CausalSelfAttention

    torch.manual_seed(0)
    config = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, vocab_size=11, dropout=0.5, bias=False)
    attention = CausalSelfAttention(config)
    q, k, v = (torch.randn(3, 2, 8, 8, requires_grad=True) for _ in range(3))
    torch.manual_seed(7)
    y = attention._attend_with_dropout(q, k, v)
    # by hand: softmax of the causally masked scores, times the mask layers.Dropout draws with the same seed, over 1 - p
    torch.manual_seed(7)
    keep = torch.rand(3, 2, 8, 8) >= 0.5
    scores = (q @ k.transpose(-2, -1)) / 8 ** 0.5
    weights = scores.masked_fill(torch.ones(8, 8).tril() == 0, float("-inf")).softmax(-1)
    assert torch.allclose(y, (weights * keep * 2.0) @ v, atol=1e-6)
    y.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # without dropout (evaluation) the same weights give scaled_dot_product_attention's answer
    attention.eval()
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(attention._attend_with_dropout(q, k, v), plain, atol=1e-5)
    # the model takes this path only when training with dropout on a CPU: the dropout-free step is unchanged
    model = GPT(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, vocab_size=11, dropout=0.0))
    x = torch.randint(11, (2, 8))
    assert torch.allclose(model(x)[0], model.eval()(x)[0])


def test_compiled_kernels_are_cached_in_nanonlps_cache_unless_the_user_chose_a_folder(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from nanonlp.train import use_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo leaves there
    use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")

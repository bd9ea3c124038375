import pytest
import torch

from nanonlp.decode import generate_ids
from nanonlp.errors import NanoNLPError
from nanonlp.models import GPT, GPTConfig


def tiny_gpt(block_size=16, vocab_size=11, **kw) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(block_size=block_size, n_layer=2, n_head=2, n_embd=16, dropout=0.0, vocab_size=vocab_size, **kw)
    return GPT(config).eval()


def test_future_token_does_not_change_earlier_logits():
    model = tiny_gpt()
    idx = torch.randint(11, (2, 12))
    changed = idx.clone()
    t = 5
    changed[:, t + 1] = (changed[:, t + 1] + 1) % 11
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_loss_is_cross_entropy_of_logits():
    model = tiny_gpt()
    idx, targets = torch.randint(11, (2, 8)), torch.randint(11, (2, 8))
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 11), targets.view(-1))
    assert torch.allclose(loss, expected)


def _full_recompute_logits(model, history):
    logits, _ = model(history[:, -model.config.block_size :])
    return logits[:, -1, :]


@pytest.mark.parametrize("prompt_len,new_tokens", [(5, 8), (3, 30)])  # 3 + 30 passes block_size 16
def test_kv_cache_matches_full_recompute(prompt_len, new_tokens):
    model = tiny_gpt()
    prompt = torch.randint(11, (2, prompt_len))
    state, history, step_input = model.init_state(2), prompt, prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            cached, state = model.next_logits(step_input, state, history)
            full = _full_recompute_logits(model, history)
            assert torch.allclose(cached, full, atol=1e-5), (cached - full).abs().max()
            step_input = cached.argmax(-1, keepdim=True)
            history = torch.cat([history, step_input], dim=1)
    # and the greedy tokens themselves equal those of a generator without any cache
    tokens = torch.cat(list(generate_ids(model, prompt, new_tokens, temperature=0)), dim=1)
    expected = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            expected = torch.cat([expected, _full_recompute_logits(model, expected).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, expected[:, prompt_len:])


def test_kv_cache_chunked_prefill_matches():
    # Feeding a prompt in two chunks through the cache exercises the explicit attention mask.
    model = tiny_gpt()
    idx = torch.randint(11, (1, 10))
    state = model.init_state(1)
    with torch.no_grad():
        model(idx[:, :4], cache=state)
        chunk_logits, _ = model(idx[:, 4:], cache=state)
        full, _ = model(idx)
    assert torch.allclose(chunk_logits, full[:, 4:], atol=1e-5)


def test_too_long_input_is_an_error():
    model = tiny_gpt(block_size=8)
    with pytest.raises(NanoNLPError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_weight_tying_and_decay_groups():
    from nanonlp.config import TrainConfig
    from nanonlp.train import make_optimizer

    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decayed["params"]) + len(plain["params"]) == n_unique


# -- Hugging Face GPT-2 parity ----------------------------------------------------------------------


def _hf_gpt2(tmp_path, safe=True):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(config).eval()
    # Random biases and norm weights, so a mix-up between them would show.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    if not safe:  # the older PyTorch pickle format, which recent transformers no longer writes
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    return hf


@pytest.mark.parametrize("safe", [True, False])
def test_huggingface_gpt2_parity(tmp_path, safe):
    hf = _hf_gpt2(tmp_path, safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    ours = GPT.from_huggingface(tmp_path).eval()
    idx = torch.randint(50, (2, 20))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    assert torch.allclose(logits, expected, atol=1e-4), (logits - expected).abs().max()


def test_huggingface_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_positions": 8, "n_layer": 1, "n_head": 1, "n_embd": 4, "vocab_size": 5}')
    with pytest.raises(NanoNLPError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_huggingface(tmp_path)


def test_huggingface_other_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(NanoNLPError, match="only GPT-2"):
        GPT.from_huggingface(tmp_path)

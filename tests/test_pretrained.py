"""Sampling from and fine-tuning Hugging Face GPT-2 files (a tiny random GPT-2 written by the test)."""

import pytest
import torch

import nanonlp
from conftest import VERSE, tiny_overrides
from nanonlp.config import load_config
from nanonlp.data.tokenizers import BPETokenizer
from nanonlp.train import fit


@pytest.fixture
def gpt2_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "gpt2"
    tokenizer = BPETokenizer.train(VERSE * 10, vocab_size=280)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    tokenizer.save(folder)  # tokenizer.json in Hugging Face format
    return folder, hf, tokenizer


def test_sample_directly_from_a_huggingface_folder(gpt2_folder):
    folder, hf, tokenizer = gpt2_folder
    model = nanonlp.load(folder, device="cpu")
    prompt_ids = tokenizer.encode("To be")
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False,
                               pad_token_id=0)[0, len(prompt_ids):].tolist()
    assert model.generate("To be", max_new_tokens=12, temperature=0) == "To be" + tokenizer.decode(expected)


def test_fine_tune_from_huggingface_weights(gpt2_folder, tmp_path, corpus):
    folder, hf, tokenizer = gpt2_folder
    # A vanishing learning rate: after training, the weights are still GPT-2's, so parity must hold.
    overrides = tiny_overrides(corpus, tmp_path / "ft", train__init_from=folder, train__max_steps=2,
                               train__eval_interval=2, train__learning_rate=1e-12, train__min_lr=0.0,
                               train__weight_decay=0.0, model__block_size=32)
    overrides = [o for o in overrides if not o.startswith(("--model.n_", "--model.type"))] + ["--model.type=gpt"]
    cfg = load_config(None, overrides)
    fit(cfg, quiet=True)
    model = nanonlp.load(tmp_path / "ft", device="cpu")
    assert model.model.config.n_layer == 2 and model.model.config.block_size == 32  # positions cropped to 32
    idx = torch.tensor([tokenizer.encode(VERSE)[:32]])
    with torch.no_grad():
        assert torch.allclose(model.model(idx)[0], hf(idx).logits, atol=1e-4)
    assert model.tokenizer.encode("To be") == tokenizer.encode("To be")


def test_resume_a_fine_tuned_gpt2_run(gpt2_folder, tmp_path, corpus):
    folder, _, _ = gpt2_folder
    overrides = tiny_overrides(corpus, tmp_path / "ft", train__init_from=folder, train__max_steps=2, train__eval_interval=2,
                               model__block_size=32)
    fit(load_config(None, overrides), quiet=True)
    # the user's config still has the default shape; the run's shape came from the GPT-2 folder
    defaults = [o for o in overrides if not o.startswith("--model.n_")]  # n_layer 6, n_embd 384, ... as in a user's YAML
    result = fit(load_config(None, defaults + ["--train.max_steps=4"]), resume=True, quiet=True)
    assert result.step == 4

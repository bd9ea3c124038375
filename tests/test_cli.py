"""End to end through the `nanonlp` command, on a tiny model and corpus."""

import json
import math
from pathlib import Path

import pytest
import torch

import nanonlp
from conftest import VERSE, tiny_overrides
from nanonlp.cli import main


@pytest.fixture
def trained_run(tmp_path, corpus):
    config = tmp_path / "tiny.yaml"
    config.write_text("task: lm\nmodel:\n  type: gpt\nsample:\n  prompt: 'To be'\n")
    out = tmp_path / "run"
    main(["train", str(config), "--quiet", *tiny_overrides(corpus, out, train__max_steps=30)])
    return out


def test_train_then_sample_is_reproducible_and_matches_the_python_api(trained_run, capsys):
    argv = ["sample", str(trained_run), "--prompt", "To be", "--max-new-tokens", "40", "--seed", "3", "--top-k", "5", "--device", "cpu"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    second = capsys.readouterr().out
    assert first == second and first.startswith("To be") and len(first) == len("To be") + 40 + 1
    model = nanonlp.load(trained_run, device="cpu")
    assert model.generate("To be", max_new_tokens=40, top_k=5, seed=3) + "\n" == first


def test_sample_prompt_with_unknown_characters(trained_run, capsys):
    # an unseen character reads as the unknown id, with one warning line naming it, and sampling goes on
    main(["sample", str(trained_run), "--prompt", "Ω to be", "--max-new-tokens", "5", "--seed", "1"])
    captured = capsys.readouterr()
    assert "warning: 1 character(s) ('Ω' (U+03A9)) this character-level model never saw in training read as unknown." in captured.err
    assert captured.out.startswith("Ω to be") and len(captured.out) == len("Ω to be") + 5 + 1


def test_eval_prints_loss_perplexity_and_bits_per_character(trained_run, tmp_path, capsys):
    text = tmp_path / "held_out.txt"
    text.write_text(VERSE * 3)
    main(["eval", str(trained_run), "--data", str(text), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # char tokenizer: one token per character, so bits per character is the loss in bits
    assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2))
    assert result["tokens"] == len(VERSE * 3) - 1


def test_resume_from_the_command_line(trained_run, tmp_path, corpus, capsys):
    config = tmp_path / "tiny.yaml"
    main(["train", str(config), "--resume", "--quiet", *tiny_overrides(corpus, trained_run, train__max_steps=40)])
    steps = [json.loads(line)["step"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 40 and steps.count(30) == 2  # the loss line and the eval line of step 30


def test_evaluate_scores_every_token_once_with_context(trained_run):
    model = nanonlp.load(trained_run, device="cpu")
    text = VERSE * 2  # longer than block_size (16), so several overlapping windows
    result = model.evaluate(text)
    assert result["tokens"] == len(text) - 1
    # Reference: score each token with exactly the context the strided windows give it.
    ids = model.tokenizer.encode(text)
    T, stride = 16, 8
    nll, begin, scored_to = 0.0, 0, 0
    while True:
        end = min(begin + T, len(ids) - 1)
        with torch.no_grad():
            logits, _ = model.model(torch.tensor([ids[begin:end]]))
        logp = torch.log_softmax(logits[0], -1)
        for target in range(max(scored_to, begin) + 1, end + 1):
            nll -= logp[target - begin - 1, ids[target]].item()
        scored_to = end
        if end == len(ids) - 1:
            break
        begin += stride
    assert result["loss"] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)


def test_run_directory_is_self_sufficient(trained_run, tmp_path):
    before = nanonlp.load(trained_run, device="cpu").generate("To", max_new_tokens=20, temperature=0)
    moved = tmp_path / "elsewhere"
    trained_run.rename(moved)  # nothing refers back to the original path or the corpus
    (tmp_path / "corpus.txt").unlink()
    assert nanonlp.load(moved, device="cpu").generate("To", max_new_tokens=20, temperature=0) == before


def test_char_rnn_config_trains_and_samples(tmp_path, corpus, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "shakespeare_char_rnn.yaml"
    out = tmp_path / "rnn"
    main(["train", str(config), "--quiet", f"--data.path={corpus}", f"--train.out_dir={out}", "--train.max_steps=10",
          "--train.eval_interval=10", "--train.eval_batches=1", "--train.batch_size=4", "--train.device=cpu",
          "--model.hidden_size=32", "--model.n_embd=16", "--model.block_size=16"])
    main(["sample", str(out), "--prompt", "To", "--max-new-tokens", "10", "--seed", "1"])
    text = capsys.readouterr().out
    assert text.startswith("To") and len(text) == len("To") + 10 + 1  # ten characters, then the newline
    assert set(text[2:-1]) <= set(VERSE)  # only characters of the training corpus
    assert nanonlp.load(out, device="cpu").generate("To", max_new_tokens=10, seed=1) + "\n" == text
    assert type(nanonlp.load(out, device="cpu").model).__name__ == "CharRNN"


def test_bpe_tokenizer_run(tmp_path, corpus, capsys):
    from nanonlp.config import load_config
    from nanonlp.train import fit

    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "bpe", data__tokenizer="bpe", data__vocab_size=300,
                                           train__max_steps=4, train__eval_interval=4, model__block_size=8))
    fit(cfg, quiet=True)
    model = nanonlp.load(tmp_path / "bpe", device="cpu")
    assert model.tokenizer.vocab_size <= 300
    # byte-level BPE takes characters it never saw
    assert model.generate("Ωmega 😀", max_new_tokens=3, seed=0).startswith("Ωmega 😀")
    # `nanonlp eval` scores the cached validation ids as they are: the same figures as scoring the
    # validation text itself (the last tenth of the corpus), tokens and characters counted alike
    from nanonlp.cli import main

    main(["eval", str(tmp_path / "bpe"), "--json", "--device", "cpu"])
    cached = json.loads(capsys.readouterr().out)
    text = corpus.read_text(encoding="utf-8")
    direct = model.evaluate(text[int(len(text) * 0.9):])
    assert cached["data"] == "validation split"
    for key in ("loss", "bits_per_char", "tokens", "characters"):
        assert cached[key] == pytest.approx(direct[key], rel=1e-6), key

"""Shared fixtures: tiny corpora and configs the tests write themselves (no ../shared needed)."""

from __future__ import annotations

import pytest
import torch

from nanonlp.config import load_config

# A short periodic text: a small model can learn it exactly from a few characters of context.
VERSE = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer.\n"


@pytest.fixture(autouse=True)
def _seed_and_threads(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.delenv("NANONLP_DATA", raising=False)
    monkeypatch.setenv("NANONLP_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(VERSE * 20, encoding="utf-8")
    return path


def tiny_overrides(corpus, out_dir, **extra) -> list[str]:
    values = {
        "data.path": str(corpus),
        "model.type": "gpt",
        "model.block_size": 16,
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.n_embd": 32,
        "model.dropout": 0.0,
        "train.out_dir": str(out_dir),
        "train.max_steps": 20,
        "train.batch_size": 8,
        "train.eval_interval": 10,
        "train.eval_batches": 2,
        "train.log_interval": 1,
        "train.warmup_steps": 2,
        "train.learning_rate": 3e-3,
        "train.dtype": "float32",
        "train.device": "cpu",
        "train.peak_tflops": 1.0,  # skip measuring the matmul peak in every test
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_config(corpus, tmp_path):
    def make(out="run", **extra):
        return load_config(None, tiny_overrides(corpus, tmp_path / out, **extra))

    return make

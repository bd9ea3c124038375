"""The budget-aware recipe (model.size auto) keeps what the user sets, and measures what it trains."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from nanonlp import recipe as recipes
from nanonlp.config import CONFIGS_DIR, TrainConfig, load_config
from nanonlp.errors import ConfigError
from nanonlp.models import GPT, GPTConfig
from nanonlp.optim import MuonAdamW

SPEED = (0.02, 1e-11)  # seconds per step = a + b * FLOPs, as a probe might fit it
VOCAB, TRAIN_TOKENS = 65, 1_000_000
BUDGET = "budget_char_gpt"

# Each setting the recipe would otherwise choose, given as the user might give it.
SETTINGS = {
    "shape": {"model.n_layer": 3, "model.n_embd": 96},
    "dropout": {"model.dropout": 0.15},
    "batch": {"train.batch_size": 7},
    "learning rate": {"train.learning_rate": 0.0021, "train.muon_learning_rate": 0.011},
}


def _config(tmp_path, values: dict, source: str):
    """The shipped budget config with `values` given on the command line, in the user's own file, or not at all."""
    overrides = ["--train.max_seconds=600", f"--train.out_dir={tmp_path / 'run'}"]
    if source == "command line":
        return load_config(BUDGET, overrides + [f"--{k}={v}" for k, v in values.items()])
    if source == "file":
        raw = yaml.safe_load((CONFIGS_DIR / f"{BUDGET}.yaml").read_text(encoding="utf-8"))
        for key, value in values.items():
            section, name = key.split(".")
            raw[section][name] = value
        path = tmp_path / "mine.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return load_config(path, overrides)
    return load_config(BUDGET, overrides)


def _choose(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "measure_speed", lambda *a, **k: (SPEED, 0.0))
    (tmp_path / "run").mkdir(exist_ok=True)
    return recipes.choose_for_run(cfg, tmp_path / "run", VOCAB, TRAIN_TOKENS, torch.device("cpu"), quiet=True)


def _value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("source", ["command line", "file", "none"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_given_setting_wins_and_the_recipe_chooses_the_rest(setting, source, tmp_path, monkeypatch):
    values = SETTINGS[setting]
    cfg = _config(tmp_path, values, source)
    _choose(cfg, tmp_path, monkeypatch)
    free = recipes.choose(600, VOCAB, SPEED, 0.0, TRAIN_TOKENS)  # what the recipe picks with nothing given
    if source == "none":
        assert cfg.model.n_embd == free.n_embd and cfg.model.n_layer == free.n_layer and cfg.model.dropout == free.dropout
        assert cfg.train.batch_size == free.batch_size and cfg.train.learning_rate == pytest.approx(free.learning_rate)
        assert cfg.train.muon_learning_rate == recipes.MUON_LR
        assert all(_value(cfg, key) != value for key, value in values.items())  # the example values are not the recipe's
        return
    for key, value in values.items():
        assert _value(cfg, key) == pytest.approx(value), key
    saved = json.loads((tmp_path / "run" / recipes.RECIPE).read_text())
    assert "kept as given" in saved["reason"]
    # the rest is chosen around what was given
    if setting == "shape":
        assert (cfg.model.n_head, cfg.model.block_size) == (3, 64)  # heads of 32 channels, the context of a 96-wide rung
        assert cfg.train.batch_size == recipes.BATCH_TOKENS // 64
        assert cfg.train.learning_rate == pytest.approx(recipes.ADAM_LR * 128 / 96)
        assert cfg.model.n_embd != free.n_embd
    elif setting == "batch":  # the rung is picked for that batch: the recipe's own choice at batch 7, whatever it is
        assert cfg.model.n_embd == recipes.choose(600, VOCAB, SPEED, 0.0, TRAIN_TOKENS, recipes.Given(batch_size=7)).n_embd
        assert cfg.train.learning_rate == pytest.approx(recipes.ADAM_LR * 128 / cfg.model.n_embd)
    else:
        assert cfg.model.n_embd == free.n_embd
    if setting == "learning rate":
        assert cfg.train.min_lr == pytest.approx(0.00021)  # a tenth of the given peak
        assert cfg.model.n_embd == free.n_embd and cfg.train.batch_size == free.batch_size
    if setting == "dropout":
        assert free.dropout != 0.15 and cfg.train.batch_size == free.batch_size


def test_the_issue_command_trains_the_shape_and_batch_it_names(tmp_path, corpus, monkeypatch, capsys):
    """`nanonlp train budget_char_gpt --model.n_layer=.. --model.n_embd=.. --train.batch_size=..` trains exactly that."""
    from nanonlp.cli import main

    monkeypatch.setattr(recipes, "measure_speed", lambda *a, **k: (SPEED, 0.0))
    run = tmp_path / "run"
    main(["train", BUDGET, f"--data.path={corpus}", f"--train.out_dir={run}", "--train.max_seconds=2", "--train.dtype=float32",
          "--train.eval_batches=1", "--model.n_layer=3", "--model.n_embd=64", "--train.batch_size=5", "--quiet"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["model"]["n_layer"], saved["model"]["n_embd"], saved["train"]["batch_size"]) == (3, 64, 5)
    assert saved["model"]["n_head"] == 2 and saved["model"]["block_size"] == 64  # chosen around them
    # A resume that gives another shape is refused in one sentence, never silently trained as the old one.
    with pytest.raises(SystemExit) as exit_:
        main(["train", BUDGET, f"--data.path={corpus}", f"--train.out_dir={run}", "--train.max_seconds=4", "--resume",
              "--model.n_layer=4", "--model.n_embd=64", "--quiet"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "cannot resume" in err and "model.n_layer=3 but the config now says 4" in err


def test_settings_the_recipe_cannot_keep_are_refused_in_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="model.n_head=7 gives no even head width"):
        _choose(_config(tmp_path, {"model.n_head": 7}, "command line"), tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="train.lr_schedule time"):
        _choose(_config(tmp_path, {"train.lr_schedule": "steps"}, "command line"), tmp_path, monkeypatch)
    cfg = _config(tmp_path, {"train.min_lr": 0.0009, "train.eval_interval": 7}, "file")  # kept, the peak chosen around them
    _choose(cfg, tmp_path, monkeypatch)
    assert cfg.train.min_lr == 0.0009 and cfg.train.eval_interval == 7 and cfg.train.learning_rate > 0.0009
    # heads given alone: the recipe picks among the widths they divide into even head widths
    cfg = _config(tmp_path, {"model.n_head": 5}, "command line")
    _choose(cfg, tmp_path, monkeypatch)
    assert cfg.model.n_head == 5 and cfg.model.n_embd % 10 == 0 and cfg.model.n_embd in recipes.LADDER


def test_shape_parameters_count_a_tied_head_once_and_match_the_model():
    shape = recipes.Shape(2, 2, 64, 32)
    for tied in (False, True):
        model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64, vocab_size=100, bias=False, position="rotary",
                              qk_norm=True, activation="relu2", tie_embeddings=tied))
        norms = (2 * 2 + 1) * 64  # LayerNorm gains: two a block and the final one
        assert sum(p.numel() for p in model.parameters()) == shape.parameters(100, tied) + norms
    assert shape.parameters(100, tied=False) - shape.parameters(100, tied=True) == 100 * 64
    assert shape.body_parameters() == 2 * 12 * 64 * 64


def test_a_large_vocabulary_does_not_push_the_choice_to_the_smallest_rung():
    # Step time independent of FLOPs: tokens per parameter then depends on the blocks alone, whatever the vocabulary.
    flat = (0.05, 0.0)
    assert recipes.choose(600, 50257, flat).n_embd == recipes.choose(600, 65, flat).n_embd > recipes.LADDER[0]
    # With a real speed the head's FLOPs slow a 50k vocabulary down, but it still picks above the smallest rung.
    assert recipes.choose(900, 50257, (0.01, 1e-11)).n_embd > recipes.LADDER[0]


def test_the_probe_builds_the_configured_model_and_optimizer(monkeypatch):
    import nanonlp.train as train_module

    built = []
    real = train_module.make_optimizer

    def spy(model, cfg, device):
        optimizer = real(model, cfg, device)
        built.append((model.config, type(optimizer)))
        return optimizer

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    monkeypatch.setattr(recipes, "LADDER", (32, 64, 96))
    model = GPTConfig(size="auto", vocab_size=23, position="learned", tie_embeddings=True, activation="gelu", bias=True)
    speed, seconds = recipes.measure_speed(model, TrainConfig(optimizer="adamw"), torch.device("cpu"), torch.float32, steps=1)
    assert seconds > 0 and len(built) == 3
    for config, kind in built:
        assert (config.vocab_size, config.position, config.tie_embeddings, config.activation, config.bias) == (23, "learned", True, "gelu", True)
        assert config.dropout == 0.0 and kind is torch.optim.AdamW
    assert [c.n_embd for c, _ in built] == [32, 64, 96]
    built.clear()
    recipes.measure_speed(model, TrainConfig(optimizer="muon"), torch.device("cpu"), torch.float32, steps=1)
    assert built and all(kind is MuonAdamW for _, kind in built)  # another optimizer: another probe, not the cached one
    # given parts of the shape are probed as given
    built.clear()
    recipes.measure_speed(model, TrainConfig(optimizer="adamw"), torch.device("cpu"), torch.float32,
                          recipes.Given(n_layer=3, batch_size=2, rotary=False), steps=1)
    assert [c.n_layer for c, _ in built] == [3, 3, 3]


def test_the_probe_cache_tells_vocabularies_and_model_switches_apart(monkeypatch):
    monkeypatch.setattr(recipes, "LADDER", (32, 64))
    model = GPTConfig(size="auto", vocab_size=11, position="rotary", tie_embeddings=False, bias=False)
    train, cpu = TrainConfig(optimizer="adamw"), torch.device("cpu")

    def seconds(config):
        return recipes.measure_speed(config, train, cpu, torch.float32, steps=1)[1]

    assert seconds(model) > 0 and seconds(model) == 0.0  # measured once, then cached
    assert seconds(GPTConfig(**{**model.__dict__, "vocab_size": 500})) > 0  # another vocabulary
    assert seconds(GPTConfig(**{**model.__dict__, "tie_embeddings": True})) > 0  # another model switch
    assert seconds(GPTConfig(**{**model.__dict__, "n_layer": 9, "dropout": 0.3})) == 0.0  # shape and dropout are the recipe's

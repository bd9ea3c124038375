from pathlib import Path

import pytest
import yaml

from nanonlp.cli import main
from nanonlp.config import dump_yaml, from_dict, load_config, read_yaml
from nanonlp.errors import ConfigError
from nanonlp.models import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_dotted_overrides_set_typed_values(tmp_path):
    cfg = load_config(write(tmp_path, "model: {type: gpt}\n"), ["--train.max_steps=200", "--model.n_layer=2", "--train.learning_rate=3e-4",
                                                                  "--train.compile=true", "--sample.prompt=ROMEO:"])
    assert cfg.train.max_steps == 200 and isinstance(cfg.train.max_steps, int)
    assert cfg.model.n_layer == 2 and isinstance(cfg.model, GPTConfig)
    assert cfg.train.learning_rate == 3e-4
    assert cfg.train.compile is True
    assert cfg.sample.prompt == "ROMEO:"


@pytest.mark.parametrize("overrides,message", [
    (["--train.max_stepz=10"], "unknown config key 'train.max_stepz'"),
    (["--trian.max_steps=10"], "unknown config section 'trian'"),
    (["--train.max_steps=abc"], "train.max_steps must be an integer, got 'abc'"),
    (["--train.max_steps=1.5"], "train.max_steps must be an integer"),
    (["--train.compile=maybe"], "train.compile must be true or false"),
    (["--model.n_embd=100", "--model.n_head=3"], r"model.n_embd \(100\) must be divisible by model.n_head \(3\)"),
    (["--model.block_size=0"], "model.block_size must be at least 1"),
    (["--train.dtype=float8"], "train.dtype must be one of auto, float32, bfloat16, float16"),
    (["--data.val_fraction=1.5"], "data.val_fraction must be between 0 and 1"),
    (["--model.vocab_size=100"], "model.vocab_size is set from the data"),
    (["--model.type=lstm"], "model.type must be one of gpt, char_rnn"),
    (["--train.max_steps"], "must look like --section.key=value"),
])
def test_bad_config_gives_a_sentence_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "model: {type: gpt}\n"), overrides)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_config(write(tmp_path, "model:\n  type: gpt\n   n_layer: 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("argv,code,message", [
    (["train", "CONFIG", "--train.bogus=1"], 2, "unknown config key 'train.bogus'"),
    (["train", "CONFIG", "--train.max_steps=ten"], 2, "train.max_steps must be an integer"),
    (["train", "CONFIG", "--model.n_head=5"], 2, "must be divisible by model.n_head"),
    (["train", "CONFIG", "--data.path=/no/such/file.txt"], 1, "neither an existing file nor a catalog name"),
])
def test_cli_errors_are_one_line_with_exit_code(tmp_path, capsys, argv, code, message):
    config = write(tmp_path, f"model: {{type: gpt}}\ntrain: {{out_dir: {tmp_path / 'run'}}}\n")
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("nanonlp: error: ") and err.count("\n") == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "model: {type: char_rnn, cell: gru}\n"), ["--train.max_steps=7"])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)), allow_derived=True)
    assert again == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_are_documented(path):
    cfg = load_config(path)
    # Every key the file sets reaches the resolved config with the file's value (none is ignored),
    # and the resolved config round-trips through YAML.
    raw = read_yaml(path)
    resolved = yaml.safe_load(dump_yaml(cfg))
    assert resolved["task"] == raw.get("task", "lm")
    for section, values in raw.items():
        if section == "task":
            continue
        for key, value in values.items():
            assert resolved[section][key] == pytest.approx(value) if isinstance(value, float) else resolved[section][key] == value, \
                f"{section}.{key}"
    assert from_dict(resolved, allow_derived=True) == cfg
    lines = path.read_text().splitlines()
    assert lines[0] == f"# nanonlp train configs/{path.name}", "a config starts with the command that runs it"
    for line in lines:
        if ":" in line.split("#")[0] and not line.lstrip().startswith("#"):
            key = line.split(":")[0].strip()
            if line.split("#")[0].rstrip().endswith(":"):
                continue  # a section header
            assert "#" in line, f"config key '{key}' in {path.name} has no comment"


def test_every_config_key_exists_in_shipped_configs():
    # The keys the issue promises, with these names.
    raw = read_yaml(ROOT / "configs" / "shakespeare_char_gpt.yaml")
    assert {"path"} <= raw["data"].keys()
    assert {"out_dir", "max_steps", "max_seconds"} <= raw["train"].keys()


def test_changing_model_type_over_another_types_keys_says_so():
    configs = Path(__file__).resolve().parents[1] / "configs"
    with pytest.raises(ConfigError, match=r"model.type bert has no model.embed_dim.*those are model.type bilstm_crf's settings"):
        load_config(configs / "wikiann_en_bilstm_crf.yaml", ["--model.type=bert"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.embed_dimm'"):  # a typo is still a typo
        load_config(configs / "wikiann_en_bilstm_crf.yaml", ["--model.embed_dimm=3"])

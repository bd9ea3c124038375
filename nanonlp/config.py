"""Typed experiment configs: a YAML file in, dotted `--section.key=value` overrides, strict validation.

One config file describes one experiment. Every default lives in a dataclass: the loop's `train`
section here, a task's sections in its task module, a model family's in its model file; code never
writes `cfg.get("x", 100)`. This module knows no task and no model family by name: the task registry
(nanonlp.tasks) says which sections and families a `task:` has. Anything wrong (an unknown key, a
wrong type, an impossible value) raises `ConfigError` with one sentence naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nanonlp.errors import ConfigError


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"  # the run directory: config, tokenizer, weights, metrics
    max_steps: int = 5000  # optimizer steps
    max_seconds: float = 0.0  # wall-clock budget in seconds; 0 means no limit
    batch_size: int = 32  # sequences per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_steps: int = 100  # linear warmup from 0 to learning_rate
    lr_decay_steps: int = 0  # cosine decay length; 0 means max_steps
    weight_decay: float = 0.1  # AdamW decay, applied to matrices only (not biases, norms)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the global gradient norm; 0 disables
    eval_interval: int = 250  # validate and checkpoint every this many steps
    eval_batches: int = 20  # batches averaged per validation
    log_interval: int = 10  # one metrics.jsonl line every this many steps
    keep_checkpoints: int = 2  # how many of the latest step checkpoints to keep
    early_stopping: int = 0  # stop after this many evaluations without a better validation metric; 0 never
    head_learning_rate: float = 0.0  # models with a pretrained body: peak rate of the new head; 0 = learning_rate
    layer_decay: float = 1.0  # pretrained encoders: each layer below the top learns at this factor of the one above; 1 = off
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16", "float16")})
    compile: bool = False  # torch.compile the model (falls back to eager if the compiler is missing)
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    init_from: str = ""  # start from pretrained weights: a Hugging Face GPT-2 folder; "" trains from scratch
    peak_tflops: float = 0.0  # the device's matmul peak for MFU; 0 measures it once per machine and caches it
    lr_schedule: str = field(default="steps", metadata={"choices": ("steps", "time")})  # time: warmup and decay follow the clock to max_seconds
    warmup_share: float = 0.02  # lr_schedule time: the share of max_seconds spent warming up
    optimizer: str = field(default="adamw", metadata={"choices": ("adamw", "muon")})  # muon: Muon for hidden matrices, AdamW for the rest
    muon_learning_rate: float = 0.02  # optimizer muon: the hidden matrices' peak rate (the schedule scales it with learning_rate)
    muon_momentum: float = 0.95  # optimizer muon: Nesterov momentum of the hidden matrices
    muon_split_qkv: bool = False  # optimizer muon: orthogonalise a fused q, k, v matrix as three (the speedrun's way), not whole
    muon_precision: str = field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16")})  # Newton-Schulz's dtype; auto: float32 on CPU, bf16 on GPUs
    bf16_weights: bool = False  # dtype bfloat16: forward and backward on a bf16 copy of the weights (no autocast casts), fp32 master weights for the optimizer

    def validate(self) -> None:
        positive = ["max_steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_batches", "log_interval", "keep_checkpoints"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ["max_seconds", "warmup_steps", "lr_decay_steps", "weight_decay", "grad_clip", "min_lr", "peak_tflops",
                     "early_stopping", "head_learning_rate"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}.")
        if self.lr_schedule == "time" and self.max_seconds <= 0:
            raise ConfigError("train.lr_schedule time decays to the end of train.max_seconds: set train.max_seconds.")
        if not 0.0 <= self.warmup_share < 1.0:
            raise ConfigError(f"train.warmup_share must be in [0, 1), got {self.warmup_share}.")
        if self.muon_learning_rate <= 0 or not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"train.muon_learning_rate must be positive and train.muon_momentum in [0, 1), got "
                              f"{self.muon_learning_rate} and {self.muon_momentum}.")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"train.layer_decay must be in (0, 1], got {self.layer_decay}.")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {self.learning_rate}.")
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.learning_rate ({self.learning_rate}).")
        for name in ["beta1", "beta2"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}.")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got '{self.device}'.")


# A config without a `task:` key is a language model's: configs were written so before tasks existed.
DEFAULT_TASK = "lm"


@dataclass
class Config:
    """One experiment: the task, its data and model sections, the loop's train section, and the
    task's own sections (lm: sample; classify: classify; ...), read as attributes (cfg.sample)."""

    task: str
    data: Any  # the task's data section
    model: Any  # a model family's Config dataclass, chosen by `model.type`
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict = field(default_factory=dict)  # the task's own sections by name
    # "section.key" of every value the user gave (config file or command line), so a recipe that
    # chooses settings can tell a given value, which it must keep, from a dataclass default; None
    # where unknown (a config read back from a run directory, which spells out every key).
    given: frozenset | None = field(default=None, compare=False)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"the config of task {self.__dict__.get('task')} has no section '{name}'")


def task_schema(name: str):
    """The registered task called `name`: its sections and model families. The registry lives in
    nanonlp.tasks; importing it there (not here at the top) keeps this module below every task."""
    from nanonlp import tasks

    return tasks.get(name)


# ---------------------------------------------------------------------------------------------------
# dict -> dataclass, with type checks


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


class CommandLineValue(str):
    """A value from `--section.key=value`: taken as the text itself for string keys, else parsed as YAML."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if isinstance(value, CommandLineValue):
        if tp is str:
            return str(value)
        try:
            value = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            value = str(value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e4 in YAML is a float
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}.")


def build(cls: type, raw: dict | None, section: str, allow_derived: bool = False) -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and wrong types."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{section}' must be a mapping of keys to values.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            valid = ", ".join(sorted(k for k, f in fields.items() if not f.metadata.get("derived")))
            raise ConfigError(f"unknown config key '{section}.{key}'; valid keys in '{section}' are: {valid}.")
        f = fields[key]
        if f.metadata.get("derived") and not allow_derived:
            raise ConfigError(f"{section}.{key} is set from the data ({f.metadata['derived']}); remove it from the config.")
        value = _coerce(value, hints[key], f"{section}.{key}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}, got '{value}'.")
        kwargs[key] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def build_model_config(raw: dict | None, allow_derived: bool = False, task: str = DEFAULT_TASK) -> Any:
    raw = dict(raw or {})
    family = raw.pop("type", None)
    families = task_schema(task).models  # model.type -> (Config dataclass, module); the same name may differ between tasks
    if family is None:
        raise ConfigError(f"model.type is missing; set it to one of: {', '.join(families)}.")
    if family not in families:
        raise ConfigError(f"model.type must be one of {', '.join(families)} for task {task}, got '{family}'.")
    own = {f.name for f in dataclasses.fields(families[family][0])}
    foreign = [key for key in raw if key not in own]
    owners = [name for name, (cls, _) in families.items() if name != family and foreign
              and all(key in {f.name for f in dataclasses.fields(cls)} for key in foreign)]
    if owners:  # e.g. --model.type=bert over a config written for bilstm_crf
        raise ConfigError(f"model.type {family} has no {', '.join('model.' + k for k in foreign[:4])}"
                          f"{' ...' if len(foreign) > 4 else ''}: those are model.type {owners[0]}'s settings. Changing model.type "
                          f"needs the model section of the new type: start from a config written for {family}, or remove those keys.")
    return build(families[family][0], raw, "model", allow_derived)


def from_dict(raw: dict, allow_derived: bool = False) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("a config file must be a YAML mapping with the sections task, data, model, train.")
    raw = dict(raw)
    task = _coerce(raw.get("task", DEFAULT_TASK), str, "task")
    schema = task_schema(task)
    known = {"task", "model", "train", *schema.sections}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config section '{key}' for task {task}; valid sections are: {', '.join(sorted(known))}.")
    sections = {name: build(cls, raw.get(name), name, allow_derived) for name, cls in schema.sections.items()}
    train = build(TrainConfig, raw.get("train"), "train", allow_derived)
    data = sections.pop("data")
    # A config with derived values is one read back from a run directory: every key is spelled out there.
    given = None if allow_derived else frozenset(f"{section}.{key}" for section, values in raw.items() if isinstance(values, dict)
                                                 for key in values)
    return Config(task=task, data=data, model=build_model_config(raw.get("model"), allow_derived, task), train=train, sections=sections,
                  given=given)


def to_dict(cfg: Config) -> dict:
    out = {"task": cfg.task, "data": dataclasses.asdict(cfg.data),
           "model": {"type": task_schema(cfg.task).model_type(cfg.model), **dataclasses.asdict(cfg.model)},
           "train": dataclasses.asdict(cfg.train)}
    for name, section in cfg.sections.items():
        out[name] = dataclasses.asdict(section)
    return out


# ---------------------------------------------------------------------------------------------------
# files and overrides


def parse_overrides(args: list[str]) -> list[tuple[list[str], Any]]:
    """`--train.max_steps=200` -> (['train', 'max_steps'], '200'); the value is typed when the section is built."""
    out = []
    for arg in args:
        text = arg[2:] if arg.startswith("--") else arg
        if "=" not in text:
            raise ConfigError(f"override '{arg}' must look like --section.key=value.")
        key, value = text.split("=", 1)
        parts = key.split(".")
        if parts == ["task"]:
            out.append((parts, value))
            continue
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override '{arg}' must name a section and a key, like --train.max_steps=200.")
        out.append((parts, CommandLineValue(value)))
    return out


CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the shipped configs, installed with the package


def packaged_configs() -> dict[str, Path]:
    """The configs that ship inside the package, by name (file name without .yaml)."""
    return {path.stem: path for path in sorted(CONFIGS_DIR.glob("*.yaml"))}


def config_summary(path: Path) -> str:
    """The first line of a config's description (the comment block under its command line)."""
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text:
            return text
    return ""


def resolve_config(path: str | Path) -> Path:
    """A config file as given; else, for `NAME`, `NAME.yaml` or `configs/NAME.yaml` where no such file
    exists, the shipped config of that name (so the command at the top of each config works after a
    pip install too)."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if str(path.parent) in (".", "configs") and name in packaged_configs():
        return packaged_configs()[name]
    raise ConfigError(f"config file '{path}' does not exist; pass the path of a YAML file, or the name of a shipped "
                      "config (`nanonlp configs` lists them, e.g. shakespeare_char_gpt).")


def read_yaml(path: str | Path) -> dict:
    path = resolve_config(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}; fix the syntax and try again.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text.") from None
    return raw or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None, allow_derived: bool = False) -> Config:
    raw = read_yaml(path) if path is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a YAML mapping with sections data, model, train, sample.")
    for parts, value in parse_overrides(overrides or []):
        if parts == ["task"]:
            raw["task"] = value
            continue
        section, key = parts
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return from_dict(raw, allow_derived)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)

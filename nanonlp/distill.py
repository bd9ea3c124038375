"""Knowledge distillation for classifiers: a trained teacher labels the training texts and altered
copies of them (Tang et al. 2019), and the student learns the teacher's softened probabilities mixed
with the gold labels (Hinton et al. 2015)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from nanonlp.checkpoint import run_task
from nanonlp.config import read_yaml
from nanonlp.data.readers import Example, split_lines
from nanonlp.device import autocast, resolve_dtype
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_text



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


def check_teacher(cfg, multi_label: bool, labels: list[str]) -> Path:
    """The teacher's run directory, after checking that it can teach this run."""
    teacher_dir = Path(cfg.teacher)
    if not teacher_dir.exists():
        raise ConfigError(f"classify.teacher '{teacher_dir}' does not exist; train the teacher first (its train.out_dir), "
                          "or point classify.teacher at a finished classification run.")
    if run_task(teacher_dir) != "classify":
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


def write_distillation_set(cfg, teacher_dir: Path, examples: list[Example], seed: int, run_dir: Path, device,
                           progress: bool = False) -> int:
    """Labels the training texts and their altered copies with the teacher's logits, in
    run_dir/distill.jsonl: a header line (the training data's size and fingerprint), then one line
    per text, the training texts first and in order. Returns the number of copies."""
    from nanonlp.predict.classify import load, predict_logits

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
    with torch.inference_mode(), autocast(teacher.device, resolve_dtype(dtype, teacher.device)):
        logits = predict_logits(teacher.model, teacher.encoder, teacher.encoder.ids_of(texts), teacher.device, progress=progress)
    header = {"training_texts": len(examples), "fingerprint": _fingerprint(examples), "teacher": str(teacher_dir)}
    lines = [json.dumps(header)] + [json.dumps({"text": t, "logits": [round(v, 5) for v in row]}) for t, row in zip(texts, logits.tolist())]
    atomic_write_text(run_dir / "distill.jsonl", "\n".join(lines) + "\n")  # ASCII JSON: one text per line
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



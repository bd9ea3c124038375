"""Knowledge distillation: altered copies, the loss, and a student that follows its teacher."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

import nanonlp
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.tasks.classify import (altered_copies, distillation_loss, distillation_targets, predict_logits,
                                    train_classifier)
from test_classify import NEGATIVE, POSITIVE, toy, toy_config  # noqa: F401 (toy is a fixture)


def test_altered_copies_keep_word_order_and_respect_the_rates():
    text = "the quick brown fox jumps over the lazy dog today"
    words = text.split()
    copies = altered_copies(text, 400, drop=0.2, span=0.5, rng=random.Random(0))
    assert copies == altered_copies(text, 400, drop=0.2, span=0.5, rng=random.Random(0))  # seeded
    for copy in copies:
        it = iter(words)
        assert all(w in it for w in copy.split()), copy  # an ordered subsequence of the original
    spans = [c for c in copies if len(c.split()) <= 5]
    assert 0.4 < len(spans) / len(copies) < 0.7  # about half are cut to spans (a long copy has > 5 words)
    assert altered_copies(text, 3, drop=0.0, span=0.0, rng=random.Random(1)) == [text] * 3
    assert all(len(c.split()) >= 1 for c in altered_copies("one two", 50, drop=0.99, span=0.0, rng=random.Random(2)))
    assert altered_copies("   ", 3, 0.1, 0.25, random.Random(0)) == []


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    logits, teacher = torch.randn(5, 3), torch.randn(5, 3)
    gold = torch.tensor([0, 2, 1])  # the last two texts are altered copies
    targets = distillation_targets(teacher, gold, temperature=2.0, multi_label=False)
    p = torch.softmax(teacher / 2.0, 1)
    kl = (p * (p.log() - torch.log_softmax(logits / 2.0, 1))).sum(1).mean()
    ce = F.cross_entropy(logits[:3], gold)
    assert distillation_loss(logits, targets, 1.0, 2.0, None, False).item() == pytest.approx(4 * kl.item(), rel=1e-5)
    assert distillation_loss(logits, targets, 0.0, 2.0, None, False).item() == pytest.approx(ce.item(), rel=1e-5)
    mixed = distillation_loss(logits, targets, 0.3, 2.0, None, False).item()
    assert mixed == pytest.approx(0.3 * 4 * kl.item() + 0.7 * ce.item(), rel=1e-5)
    # Multi-label: sigmoid targets, binary cross-entropy.
    gold_ml = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    targets = distillation_targets(teacher[:4], gold_ml, 1.0, multi_label=True)
    expected = F.binary_cross_entropy_with_logits(logits[:4], torch.sigmoid(teacher[:4]))
    assert distillation_loss(logits[:4], targets, 1.0, 1.0, None, True).item() == pytest.approx(expected.item(), rel=1e-5)


def _flipped_teacher(tmp_path, toy):
    """A teacher trained on the toy set with every label swapped."""
    flipped = tmp_path / "flipped.txt"
    flipped.write_text("".join(f"neg {t}\n" for t in POSITIVE) + "".join(f"pos {t}\n" for t in NEGATIVE))
    train_classifier(toy_config(tmp_path, (flipped, toy[1]), out="teacher", train__max_steps=80), quiet=True)
    return tmp_path / "teacher"


def test_student_follows_its_teacher_and_the_gold_weight(tmp_path, toy):
    teacher = _flipped_teacher(tmp_path, toy)
    texts = POSITIVE + NEGATIVE
    assert [p["label"] for p in nanonlp.load(teacher, "cpu").predict(texts)] == ["neg"] * 8 + ["pos"] * 8
    # All weight on the teacher: the student learns the teacher's (swapped) answers, not the gold labels.
    train_classifier(toy_config(tmp_path, toy, "text_cnn", out="student", train__max_steps=80, classify__teacher=teacher,
                                classify__augment_copies=3), quiet=True)
    assert [p["label"] for p in nanonlp.load(tmp_path / "student", "cpu").predict(texts)] == ["neg"] * 8 + ["pos"] * 8
    # All weight on the gold labels: the teacher is ignored.
    train_classifier(toy_config(tmp_path, toy, "text_cnn", out="gold", train__max_steps=80, classify__teacher=teacher,
                                classify__distill_weight=0.0), quiet=True)
    assert [p["label"] for p in nanonlp.load(tmp_path / "gold", "cpu").predict(texts)] == ["pos"] * 8 + ["neg"] * 8


def test_distillation_file_holds_the_teachers_logits_for_texts_and_copies(tmp_path, toy):
    teacher_dir = _flipped_teacher(tmp_path, toy)
    train_classifier(toy_config(tmp_path, toy, out="student", train__max_steps=5, train__eval_interval=5,
                                classify__teacher=teacher_dir, classify__augment_copies=4), quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "student" / "distill.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    assert texts[:16] == POSITIVE + NEGATIVE and len(texts) == len(set(texts)) > 16
    teacher = nanonlp.load(teacher_dir, "cpu")
    expected = predict_logits(teacher.model, teacher.encoder, [teacher.encoder.ids(t) for t in texts], "cpu")
    assert torch.allclose(torch.tensor([r["logits"] for r in rows]), expected, atol=1e-4)


def test_distilled_run_resumes_on_the_same_curve(tmp_path, toy):
    teacher = _flipped_teacher(tmp_path, toy)

    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    extra = dict(train__max_steps=20, train__eval_interval=10, train__lr_decay_steps=20, train__log_interval=1,
                 classify__teacher=teacher, classify__augment_copies=2, classify__distill_weight=0.5)
    train_classifier(toy_config(tmp_path, toy, out="straight", **extra), quiet=True)
    train_classifier(toy_config(tmp_path, toy, out="resumed", **{**extra, "train__max_steps": 10}), quiet=True)
    train_classifier(toy_config(tmp_path, toy, out="resumed", **extra), resume=True, quiet=True)
    assert len(losses("straight")) == 20
    assert losses("straight") == pytest.approx(losses("resumed"), abs=1e-6)


def test_distillation_errors(tmp_path, toy):
    with pytest.raises(ConfigError, match="augment_copies needs classify.teacher"):
        toy_config(tmp_path, toy, classify__augment_copies=2)
    with pytest.raises(ConfigError, match="distill_weight"):
        toy_config(tmp_path, toy, classify__teacher="x", classify__distill_weight=1.5)
    with pytest.raises(ConfigError, match="not a trained classification run"):
        train_classifier(toy_config(tmp_path, toy, classify__teacher=tmp_path / "nowhere"), quiet=True)
    assert not (tmp_path / "run" / "config.yaml").exists()  # the run was not marked as prepared
    other = tmp_path / "other.txt"
    other.write_text("yes good\nno bad\nmaybe so so\n" * 3)
    train_classifier(toy_config(tmp_path, (other, other), out="three_labels", train__max_steps=5, train__eval_interval=5), quiet=True)
    with pytest.raises(ConfigError, match="same labels"):
        train_classifier(toy_config(tmp_path, toy, out="mismatch", classify__teacher=tmp_path / "three_labels"), quiet=True)
    # The training data changed after the teacher labelled it: resuming refuses.
    teacher = _flipped_teacher(tmp_path, toy)
    train_classifier(toy_config(tmp_path, toy, out="student", train__max_steps=5, train__eval_interval=5, classify__teacher=teacher), quiet=True)
    toy[0].write_text(toy[0].read_text().replace("a good film", "a great film"))
    with pytest.raises(NanoNLPError, match="changed since its teacher labelled it"):
        train_classifier(toy_config(tmp_path, toy, out="student", train__max_steps=10, classify__teacher=teacher), resume=True, quiet=True)


def test_a_teacher_cannot_be_added_on_resume(tmp_path, toy):
    teacher = _flipped_teacher(tmp_path, toy)
    train_classifier(toy_config(tmp_path, toy, out="plain", train__max_steps=5, train__eval_interval=5), quiet=True)
    with pytest.raises(NanoNLPError, match="prepared without classify.teacher"):
        train_classifier(toy_config(tmp_path, toy, out="plain", train__max_steps=10, classify__teacher=teacher), resume=True, quiet=True)

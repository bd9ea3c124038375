"""Knowledge distillation: altered copies, the loss, and a student that follows its teacher."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

import nanonlp
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.distill import altered_copies, distillation_loss, distillation_targets
from nanonlp.predict.classify import predict_logits
from nanonlp.tasks.classify import take
from nanonlp.train import fit
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
    ce = -torch.log_softmax(logits[:3], 1)[torch.arange(3), gold]  # per gold text
    assert distillation_loss(logits, targets, 1.0, 2.0, None, False).item() == pytest.approx(4 * kl.item(), rel=1e-5)
    # The gold term is a mean over the whole batch: a gold text weighs as much as a copy.
    assert distillation_loss(logits, targets, 0.0, 2.0, None, False).item() == pytest.approx(ce.sum().item() / 5, rel=1e-5)
    mixed = distillation_loss(logits, targets, 0.3, 2.0, None, False).item()
    assert mixed == pytest.approx(0.3 * 4 * kl.item() + 0.7 * ce.sum().item() / 5, rel=1e-5)
    weights = torch.tensor([1.0, 2.0, 3.0])  # class weights scale each gold text's loss
    weighted = distillation_loss(logits, targets, 0.0, 2.0, weights, False).item()
    assert weighted == pytest.approx((weights[gold] * ce).sum().item() / 5, rel=1e-5)
    # Without copies and without a teacher share it is the ordinary cross-entropy.
    plain = distillation_targets(teacher[:3], gold, 1.0, False)
    assert distillation_loss(logits[:3], plain, 0.0, 1.0, None, False).item() == pytest.approx(F.cross_entropy(logits[:3], gold).item(), rel=1e-5)


def test_multi_label_distillation_loss_by_hand():
    torch.manual_seed(1)
    logits, teacher = torch.randn(4, 3), torch.randn(4, 3)
    gold = torch.tensor([[1.0, 0, 1], [0, 1, 0]])  # rows 2 and 3 are copies
    soft, filled, has_gold = distillation_targets(teacher, gold, 2.0, multi_label=True)
    assert torch.equal(filled[:2], gold) and has_gold.tolist() == [1, 1, 0, 0]
    expected_soft = F.binary_cross_entropy_with_logits(logits / 2.0, torch.sigmoid(teacher / 2.0))
    expected_gold = F.binary_cross_entropy_with_logits(logits[:2], gold, reduction="none").mean(1).sum() / 4
    loss = distillation_loss(logits, (soft, filled, has_gold), 0.25, 2.0, None, True)
    assert loss.item() == pytest.approx(0.25 * 4 * expected_soft.item() + 0.75 * expected_gold.item(), rel=1e-5)


def test_take_picks_rows_of_every_target_tensor():
    soft, gold, has = torch.arange(12.0).view(6, 2), torch.arange(6), torch.tensor([1.0, 1, 1, 0, 0, 0])
    picked = take((soft, gold, has), [4, 0])
    assert torch.equal(picked[0], soft[[4, 0]]) and picked[1].tolist() == [4, 0] and picked[2].tolist() == [0, 1]
    assert take(gold, [5, 1]).tolist() == [5, 1]


def _flipped_teacher(tmp_path, toy):
    """A teacher trained on the toy set with every label swapped."""
    flipped = tmp_path / "flipped.txt"
    flipped.write_text("".join(f"neg {t}\n" for t in POSITIVE) + "".join(f"pos {t}\n" for t in NEGATIVE))
    fit(toy_config(tmp_path, (flipped, toy[1]), out="teacher", train__max_steps=80), quiet=True)
    return tmp_path / "teacher"


def test_student_follows_its_teacher_and_the_gold_weight(tmp_path, toy):
    teacher = _flipped_teacher(tmp_path, toy)
    texts = POSITIVE + NEGATIVE
    assert [p["label"] for p in nanonlp.load(teacher, "cpu").predict(texts)] == ["neg"] * 8 + ["pos"] * 8
    # All weight on the teacher: the student learns the teacher's (swapped) answers, not the gold labels.
    fit(toy_config(tmp_path, toy, "text_cnn", out="student", train__max_steps=80, classify__teacher=teacher,
                                classify__augment_copies=3), quiet=True)
    assert [p["label"] for p in nanonlp.load(tmp_path / "student", "cpu").predict(texts)] == ["neg"] * 8 + ["pos"] * 8
    # All weight on the gold labels: the teacher is ignored.
    fit(toy_config(tmp_path, toy, "text_cnn", out="gold", train__max_steps=80, classify__teacher=teacher,
                                classify__distill_weight=0.0), quiet=True)
    assert [p["label"] for p in nanonlp.load(tmp_path / "gold", "cpu").predict(texts)] == ["pos"] * 8 + ["neg"] * 8


def test_distillation_file_holds_the_teachers_logits_for_texts_and_copies(tmp_path, toy):
    teacher_dir = _flipped_teacher(tmp_path, toy)
    fit(toy_config(tmp_path, toy, out="student", train__max_steps=5, train__eval_interval=5,
                                classify__teacher=teacher_dir, classify__augment_copies=4), quiet=True)
    header, *rows = [json.loads(line) for line in (tmp_path / "student" / "distill.jsonl").read_text().split("\n")[:-1]]
    assert header["training_texts"] == 16
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
    fit(toy_config(tmp_path, toy, out="straight", **extra), quiet=True)
    fit(toy_config(tmp_path, toy, out="resumed", **{**extra, "train__max_steps": 10}), quiet=True)
    fit(toy_config(tmp_path, toy, out="resumed", **extra), resume=True, quiet=True)
    assert len(losses("straight")) == 20
    assert losses("straight") == pytest.approx(losses("resumed"), abs=1e-6)


def test_distillation_errors(tmp_path, toy):
    with pytest.raises(ConfigError, match="augment_copies needs classify.teacher"):
        toy_config(tmp_path, toy, classify__augment_copies=2)
    with pytest.raises(ConfigError, match="distill_weight"):
        toy_config(tmp_path, toy, classify__teacher="x", classify__distill_weight=1.5)
    with pytest.raises(ConfigError, match="augment_copies with distill_weight 0"):
        toy_config(tmp_path, toy, classify__teacher="x", classify__augment_copies=2, classify__distill_weight=0.0)
    with pytest.raises(ConfigError, match="class_weights"):
        toy_config(tmp_path, toy, classify__teacher="x", classify__class_weights="balanced")
    with pytest.raises(ConfigError, match="does not exist; train the teacher first"):
        fit(toy_config(tmp_path, toy, classify__teacher=tmp_path / "nowhere"), quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a trained classification run"):
        fit(toy_config(tmp_path, toy, classify__teacher=tmp_path / "empty"), quiet=True)
    assert not (tmp_path / "run" / "config.yaml").exists()  # the run was not marked as prepared
    assert not (tmp_path / "run" / "tokenizer.json").exists()  # the teacher is checked before any work
    fit(toy_config(tmp_path, toy, train__max_steps=5, train__eval_interval=5), quiet=True)  # the folder is reusable
    with pytest.raises(ConfigError, match="own directory"):
        fit(toy_config(tmp_path, toy, classify__teacher=tmp_path / "run"), overwrite=True, quiet=True)
    assert (tmp_path / "run" / "model.safetensors").is_file()  # --overwrite did not delete the would-be teacher
    other = tmp_path / "other.txt"
    other.write_text("yes good\nno bad\nmaybe so so\n" * 3)
    fit(toy_config(tmp_path, (other, other), out="three_labels", train__max_steps=5, train__eval_interval=5), quiet=True)
    with pytest.raises(ConfigError, match="it lacks neg, pos; it adds maybe, no, yes"):
        fit(toy_config(tmp_path, toy, out="mismatch", classify__teacher=tmp_path / "three_labels"), quiet=True)
    for damaged in ('["maybe", "no"', "42", None):  # cut short, not a list, missing
        labels_file = tmp_path / "three_labels" / "labels.json"
        labels_file.unlink() if damaged is None else labels_file.write_text(damaged)
        with pytest.raises(ConfigError, match="has no readable labels.json"):
            fit(toy_config(tmp_path, toy, out="mismatch", classify__teacher=tmp_path / "three_labels"), quiet=True)
    # The training data changed after the teacher labelled it (a text edited, a label flipped, the last
    # lines cut): resuming refuses.
    teacher = _flipped_teacher(tmp_path, toy)
    original = toy[0].read_text()
    fit(toy_config(tmp_path, toy, out="student", train__max_steps=5, train__eval_interval=5, classify__teacher=teacher), quiet=True)
    lines = original.splitlines(keepends=True)
    for changed in (original.replace("a good film", "a great film"), original.replace("pos good fun", "neg good fun"),
                    "".join(lines[:-1])):
        toy[0].write_text(changed)
        with pytest.raises(NanoNLPError, match="changed since the run was prepared"):
            fit(toy_config(tmp_path, toy, out="student", train__max_steps=10, classify__teacher=teacher), resume=True, quiet=True)
    # A multi-label teacher cannot teach a single-label run.
    multi = tmp_path / "multi.jsonl"
    multi.write_text("".join(json.dumps({"text": t, "label": [t.split()[-1] == "good" and "pos" or "neg"]}) + "\n" for t in ["so good", "so bad"] * 4))
    fit(toy_config(tmp_path, (multi, multi), out="multi", data__multi_label="true", train__max_steps=5, train__eval_interval=5), quiet=True)
    toy[0].write_text(original)
    with pytest.raises(ConfigError, match="multi_label true; this run has false"):
        fit(toy_config(tmp_path, toy, out="from_multi", classify__teacher=tmp_path / "multi"), quiet=True)


def test_resume_keeps_the_runs_distillation(tmp_path, toy):
    teacher = _flipped_teacher(tmp_path, toy)
    fit(toy_config(tmp_path, toy, out="plain", train__max_steps=5, train__eval_interval=5), quiet=True)
    with pytest.raises(ConfigError, match="cannot resume: .* was trained with classify.teacher=.. but the config now says"):
        fit(toy_config(tmp_path, toy, out="plain", train__max_steps=10, classify__teacher=teacher), resume=True, quiet=True)
    extra = dict(train__eval_interval=5, classify__teacher=teacher, classify__augment_copies=2)
    fit(toy_config(tmp_path, toy, out="student", train__max_steps=5, **extra), quiet=True)
    with pytest.raises(ConfigError, match="classify.teacher"):  # dropping the teacher is a change too
        fit(toy_config(tmp_path, toy, out="student", train__max_steps=10), resume=True, quiet=True)
    with pytest.raises(ConfigError, match="classify.distill_temperature"):
        fit(toy_config(tmp_path, toy, out="student", train__max_steps=10, classify__distill_temperature=3.0, **extra),
                         resume=True, quiet=True)
    # The teacher's labels live in the run: a resumed run no longer needs the teacher.
    import shutil
    shutil.rmtree(teacher)
    result = fit(toy_config(tmp_path, toy, out="student", train__max_steps=10, **extra), resume=True, quiet=True)
    assert result.step == 10
    (tmp_path / "student" / "distill.jsonl").write_text('{"training_texts": 16}\n{"text": "cut off', encoding="utf-8")
    with pytest.raises(NanoNLPError, match="distill.jsonl' is damaged"):
        fit(toy_config(tmp_path, toy, out="student", train__max_steps=15, **extra), resume=True, quiet=True)


def test_texts_with_unicode_line_separators_survive_the_distillation_file(tmp_path, toy):
    teacher = _flipped_teacher(tmp_path, toy)
    odd = tmp_path / "odd.txt"
    odd.write_text(toy[0].read_text() + "pos good\u2028and good\npos good\x85good\n", encoding="utf-8")
    fit(toy_config(tmp_path, (odd, toy[1]), out="student", train__max_steps=5, train__eval_interval=5, classify__teacher=teacher),
                     quiet=True)
    result = fit(toy_config(tmp_path, (odd, toy[1]), out="student", train__max_steps=10, train__eval_interval=5,
                                         classify__teacher=teacher), resume=True, quiet=True)
    assert result.step == 10

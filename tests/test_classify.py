"""Text classification: readers, loss, metrics, calibration, and the task end to end on toy data."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import nanonlp
from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.data.readers import OUT_OF_SCOPE, join_ptb_tokens, read_clinc, read_examples
from nanonlp.data.tokenizers import WordPieceTokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.predict.classify import predict_logits
from nanonlp.metrics import classification_report, expected_calibration_error, fit_temperature
from nanonlp.predict.classify import abstaining_predictions, scope_metrics
from nanonlp.tasks.classify import (class_weights, classification_loss,
                                    text_encoder, tune_abstain_threshold)
from nanonlp.train import fit

POSITIVE = ["a good film", "truly good and warm", "good acting , good story", "what a good surprise", "good fun",
            "the cast is good", "simply good", "good , very good"]
NEGATIVE = ["a bad film", "truly bad and cold", "bad acting , bad story", "what a bad surprise", "bad fun",
            "the cast is bad", "simply bad", "bad , very bad"]


@pytest.fixture
def toy(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"pos {t}\n" for t in POSITIVE) + "".join(f"neg {t}\n" for t in NEGATIVE))
    dev = tmp_path / "dev.txt"
    dev.write_text("pos good stuff\nneg bad stuff\npos so good\nneg so bad\n")
    return train, dev


def toy_config(tmp_path, toy, family="bag_of_ngrams", out="run", **extra):
    train, dev = toy
    values = {"data.path": train, "data.dev_path": dev, "model.type": family, "train.out_dir": tmp_path / out,
              "train.max_steps": 60, "train.batch_size": 8, "train.eval_interval": 30, "train.learning_rate": 1e-2,
              "train.warmup_steps": 0, "train.dtype": "float32", "train.device": "cpu", "train.peak_tflops": 1.0,
              "train.weight_decay": 0.0, "classify.calibration_min_dev": 2}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_config(None, ["--task=classify"] + [f"--{k}={v}" for k, v in values.items()])


# -- Penn Treebank tokens back to plain text (data.detokenize) -------------------------------------


@pytest.mark.parametrize("ptb, plain", [
    ("they wo n't sit still", "they won't sit still"),
    ("it 's a -lrb- sic -rrb- film", "it's a ( sic ) film"),
    ("-LRB- a -RRB- -lsb- b -rsb- -lcb- c -rcb-", "( a ) [ b ] { c }"),
    ("a comedy\\/drama , `` great '' !", 'a comedy/drama , " great " !'),
    ("i 'm sure we 'll see , they 're back , he 'd go , i 've been", "i'm sure we'll see , they're back , he'd go , i've been"),
    ("DO N'T", "DON'T"),
    ("a \\*s\\* rating", "a *s* rating"),
    ("it 's\tfine ,\n\ni do n't\tknow  -lrb- why -rrb-", "it's\tfine ,\n\ni don't\tknow  ( why )"),  # whitespace kept
    ("it\n's", "it\n's"),  # a clitic is joined across a space or tab, not a line break
    ("Don't stop: it's fine.", "Don't stop: it's fine."),  # plain text is left alone
    ("the 's-curve", "the 's-curve"),  # a word that starts with a quote is not a clitic
    ("n't", "n't"),
])
def test_join_ptb_tokens(ptb, plain):
    assert join_ptb_tokens(ptb) == plain


def test_detokenize_gives_the_tokenizer_plain_text(tmp_path, toy):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "do", "don", "n", "'", "t", "it", "s", "(", ")", "good"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    wordpiece = WordPieceTokenizer.from_folder(tmp_path)
    ptb, plain = "it 's good -lrb- do n't -rrb-", "it's good ( don't )"
    joined = text_encoder(toy_config(tmp_path, toy, data__detokenize="true", data__max_length=32).data, wordpiece)
    assert joined.ids(ptb) == joined.ids(plain) == wordpiece.encode(plain)
    as_is = text_encoder(toy_config(tmp_path, toy, data__max_length=32).data, wordpiece)
    assert as_is.ids(ptb) != as_is.ids(plain)
    short = text_encoder(toy_config(tmp_path, toy, data__detokenize="true", data__max_length=5).data, wordpiece)
    assert short.ids(ptb) == wordpiece.encode(plain)[:4] + [wordpiece.sep_id]  # truncated, still ending on [SEP]
    # A trained word vocabulary is built from the joined texts, and a saved run answers PTB and plain text alike.
    train = tmp_path / "ptb.txt"
    train.write_text("pos i do n't hate it\nneg i do n't like it\npos it 's -lrb- truly -rrb- fine\nneg it 's dull\n" * 4)
    cfg = toy_config(tmp_path, (train, train), out="ptb_run", data__detokenize="true", train__max_steps=10, train__eval_interval=10)
    fit(cfg, quiet=True)
    classifier = nanonlp.load(tmp_path / "ptb_run")
    words = classifier.encoder.tokenizer.inner.words
    assert "don't" in words and "it's" in words and "n't" not in words and "-lrb-" not in words
    texts = ["i do n't hate it", "it 's -lrb- truly -rrb- fine"]
    assert torch.equal(classifier.probabilities(texts), classifier.probabilities([join_ptb_tokens(t) for t in texts]))


# -- readers: bad rows are reported with their line numbers ----------------------------------------


def test_label_text_reader_reports_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1 fine\n\n0\n")
    with pytest.raises(NanoNLPError, match=r"bad.txt line 3: expected 'LABEL TEXT'"):
        read_examples(path, "label_text")


def test_csv_reader_columns_and_short_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('review,stars\n"great, really",5\n')
    examples = read_examples(path, "auto", text_column="review", label_column="stars")
    assert examples[0].text == "great, really" and examples[0].label == "5"
    with pytest.raises(NanoNLPError, match="has no column 'text'; its columns are: review, stars"):
        read_examples(path, "csv")
    path.write_text("text,label\nonly text\n")
    with pytest.raises(NanoNLPError, match="line 2: the row has fewer fields"):
        read_examples(path, "csv")


def test_jsonl_reader_bad_json_and_label_lists(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": "x|z"}\n')
    examples = read_examples(path, "auto", multi_label=True)
    assert examples[0].labels == ("x", "y") and examples[1].labels == ("x", "z")
    path.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(NanoNLPError, match="data.jsonl line 2: not valid JSON"):
        read_examples(path, "jsonl")


def test_sms_and_clinc_layouts(tmp_path):
    sms = tmp_path / "SMSSpamCollection"
    sms.write_text("ham\tsee you\r\nspam\tWIN now\r\n")
    assert [e.label for e in read_examples(sms)] == ["ham", "spam"]
    sms.write_text("ham\tok\nmaybe spam\n")
    with pytest.raises(NanoNLPError, match="line 2: expected 'ham<TAB>text'"):
        read_examples(sms)
    clinc = tmp_path / "data_full.json"
    clinc.write_text(json.dumps({"train": [["book a flight", "book_flight"]], "oos_train": [["sing", "oos"]],
                                 "val": [], "oos_val": [], "test": [["x", "y"]], "oos_test": []}))
    assert [(e.text, e.label) for e in read_clinc(clinc, "train")] == [("book a flight", "book_flight"), ("sing", OUT_OF_SCOPE)]
    with pytest.raises(NanoNLPError, match="holds no examples"):
        read_clinc(clinc, "dev")


# -- loss and metrics against their formulas -------------------------------------------------------


def test_class_weights_follow_the_weighted_cross_entropy_formula():
    logits = torch.tensor([[2.0, 0.5], [0.1, 1.0], [1.5, 1.5], [0.0, 3.0]])
    targets = torch.tensor([0, 1, 1, 1])
    weights = torch.tensor([3.0, 1.0])
    log_p = torch.log_softmax(logits, 1)
    expected = -sum(weights[t] * log_p[i, t] for i, t in enumerate(targets.tolist())) / sum(weights[t] for t in targets.tolist())
    assert classification_loss(logits, targets, weights, False).item() == pytest.approx(expected.item())
    assert classification_loss(logits, targets, None, False).item() == pytest.approx(-log_p[range(4), targets].mean().item())
    # balanced: n / (classes * count) = 4 / (2 * 1) and 4 / (2 * 3)
    assert class_weights("balanced", targets, 2).tolist() == pytest.approx([2.0, 2 / 3])
    assert class_weights("1,5", targets, 2).tolist() == [1.0, 5.0]


def test_classification_report_by_hand():
    # gold 0 0 1 1 2 / predicted 0 1 1 1 0: class 0 P 1/2 R 1/2; class 1 P 2/3 R 1; class 2 P 0 R 0
    report = classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_expected_calibration_error_by_hand():
    probs = torch.tensor([[0.9, 0.1]] * 10)
    assert expected_calibration_error(probs, torch.zeros(10, dtype=torch.long)) == pytest.approx(0.1)
    gold = torch.tensor([0] * 6 + [1] * 4)  # 60% right at confidence 0.9
    assert expected_calibration_error(probs, gold) == pytest.approx(0.3)


def test_temperature_scaling_lowers_overconfident_nll():
    torch.manual_seed(0)
    true_logits = torch.randn(400, 3)
    gold = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = true_logits * 4
    temperature = fit_temperature(overconfident, gold)
    assert temperature > 2.0
    assert F.cross_entropy(overconfident / temperature, gold) < F.cross_entropy(overconfident, gold) - 0.1


def test_abstain_threshold_and_scope_metrics():
    labels = ["book_flight", "weather"]
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.2, 0.8], [0.5, 0.5]])
    assert abstaining_predictions(probs, labels, 0.6) == ["book_flight", OUT_OF_SCOPE, "weather", OUT_OF_SCOPE]
    gold = ["book_flight", OUT_OF_SCOPE, "weather", OUT_OF_SCOPE]
    assert scope_metrics(gold, ["book_flight", OUT_OF_SCOPE, "book_flight", "weather"]) == {
        "in_scope_accuracy": 0.5, "out_of_scope_recall": 0.5}
    threshold = tune_abstain_threshold(probs, gold, labels)
    assert 0.55 < threshold <= 0.8  # any threshold there separates them perfectly


# -- the task end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bag_of_ngrams", "text_cnn", "bilstm", "transformer"])
def test_each_family_learns_the_toy_set_and_reloads_identically(tmp_path, toy, family):
    cfg = toy_config(tmp_path, toy, family, train__max_steps=80, train__learning_rate=3e-3 if family == "transformer" else 1e-2)
    fit(cfg, quiet=True)
    classifier = nanonlp.load(tmp_path / "run", device="cpu")
    predictions = classifier.predict(POSITIVE + NEGATIVE)
    assert [p["label"] for p in predictions] == ["pos"] * 8 + ["neg"] * 8
    (tmp_path / "run").rename(tmp_path / "moved")  # a run directory needs nothing else
    again = nanonlp.load(tmp_path / "moved", device="cpu").predict(POSITIVE + NEGATIVE)
    for a, b in zip(predictions, again):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_calibration_and_evaluation_files(tmp_path, toy, capsys):
    fit(toy_config(tmp_path, toy), quiet=True)
    calibration = json.loads((tmp_path / "run" / "calibration.json").read_text())
    # The temperature is the one that minimises the dev NLL of the saved best weights' logits.
    raw = nanonlp.load(tmp_path / "run", device="cpu")
    dev = read_examples(toy[1])
    logits = predict_logits(raw.model, raw.encoder, [raw.encoder.ids(e.text) for e in dev], raw.device)
    gold = torch.tensor([raw.labels.index(e.label) for e in dev])
    assert calibration["temperature"] == pytest.approx(fit_temperature(logits, gold), rel=1e-6)
    assert calibration["dev_nll_before"] == pytest.approx(torch.nn.functional.cross_entropy(logits, gold).item(), rel=1e-5)
    assert calibration["dev_nll_after"] <= calibration["dev_nll_before"] + 1e-9
    main(["eval", str(tmp_path / "run"), "--data", str(toy[1]), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == 1.0 and report["per_class"]["pos"]["support"] == 2
    assert report["labels"] == ["neg", "pos"]  # no out_of_scope row: nothing is, or is answered, out of scope
    classifier = nanonlp.load(tmp_path / "run")
    classifier.calibration["abstain_threshold"] = 1.01  # every answer becomes out_of_scope
    abstained = classifier.evaluate(read_examples(toy[1]))
    assert abstained["labels"] == ["neg", "pos", OUT_OF_SCOPE] and abstained["accuracy"] == 0.0
    assert abstained["per_class"][OUT_OF_SCOPE]["support"] == 0
    assert (tmp_path / "run" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_classify_command_with_csv_in_and_out(tmp_path, toy, capsys):
    fit(toy_config(tmp_path, toy), quiet=True)
    main(["classify", str(tmp_path / "run"), "so good", "so bad"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pos\t") and lines[1].startswith("neg\t")
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("id,review\n1,good good\n2,\"bad, bad\"\n")
    out = tmp_path / "predictions.csv"
    main(["classify", str(tmp_path / "run"), "--input", str(reviews), "--text-column", "review", "--output", str(out)])
    rows = out.read_text().splitlines()
    assert rows[0] == "id,review,predicted_label,probability"
    assert rows[1].startswith("1,good good,pos,") and rows[2].startswith('2,"bad, bad",neg,')
    # no texts and no --input: one text a line on stdin, as translate and tag read it
    import io

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO("so good\n\nso bad\n"))
        main(["classify", str(tmp_path / "run")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"] and lines[1].endswith("\tso bad")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO("\n"))
        with pytest.raises(SystemExit) as exit_info:
            main(["classify", str(tmp_path / "run")])
    assert exit_info.value.code != 0 and "nothing to classify" in capsys.readouterr().err


def test_multi_label_thresholds(tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [("red apple", ["red"]), ("blue sky", ["blue"]), ("red and blue flag", ["red", "blue"]), ("green leaf", ["green"])] * 6
    data.write_text("".join(json.dumps({"text": t, "label": labels}) + "\n" for t, labels in rows))
    cfg = load_config(None, ["--task=classify", f"--data.path={data}", f"--data.dev_path={data}", "--data.multi_label=true",
                             "--model.type=bag_of_ngrams", f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=150",
                             "--train.eval_interval=50", "--train.learning_rate=3e-2", "--train.warmup_steps=0",
                             "--train.dtype=float32", "--train.device=cpu", "--train.peak_tflops=1.0"])
    fit(cfg, quiet=True)
    classifier = nanonlp.load(tmp_path / "run", device="cpu")
    predicted = classifier.predict(["red and blue flag", "green leaf"])
    assert sorted(predicted[0]["labels"]) == ["blue", "red"] and predicted[1]["labels"] == ["green"]
    classifier.calibration["threshold"] = 0.999999  # a stricter threshold keeps fewer labels
    assert len(classifier.predict(["red and blue flag"])[0]["labels"]) < 2


def test_unknown_dev_label_and_one_label_errors(tmp_path, toy):
    train, _ = toy
    one = tmp_path / "one.txt"
    one.write_text("pos fine\npos good\n")
    with pytest.raises(NanoNLPError, match="has 1 label"):
        fit(toy_config(tmp_path, (one, one)), quiet=True)


def test_pretrained_needs_init_from_and_its_tokenizer(tmp_path, toy):
    with pytest.raises(NanoNLPError, match="set data.tokenizer: pretrained"):
        fit(toy_config(tmp_path, toy, "bert"), quiet=True)
    with pytest.raises(NanoNLPError, match="set classify.init_from"):
        fit(toy_config(tmp_path, toy, "bert", data__tokenizer="pretrained", out="b"), quiet=True)


def test_fine_tune_a_bert_format_folder_and_freeze(tmp_path, toy):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for t in POSITIVE + NEGATIVE for w in t.split()} | {"stuff", "so"})
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = toy_config(tmp_path, toy, "bert", data__tokenizer="pretrained", classify__init_from=folder, data__max_length=64,
                     train__learning_rate=1e-3, train__max_steps=60)
    fit(cfg, quiet=True)
    assert [p["label"] for p in nanonlp.load(tmp_path / "run", device="cpu").predict(["so good", "so bad"])] == ["pos", "neg"]

    frozen = toy_config(tmp_path, toy, "bert", out="frozen", data__tokenizer="pretrained", classify__init_from=folder, data__max_length=64,
                        classify__freeze_encoder="true", train__max_steps=10, train__eval_interval=10)
    fit(frozen, quiet=True)
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "frozen" / "model.safetensors"))
    original = load_file(str(folder / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(trained["bert." + name], original[name])  # the encoder did not move


def test_gpt_pretraining_then_classification(tmp_path, toy, corpus):
    from conftest import tiny_overrides
    from nanonlp.train import fit

    corpus.write_text(" ".join(POSITIVE + NEGATIVE + ["so", "stuff"]) * 20)
    fit(load_config(None, tiny_overrides(corpus, tmp_path / "lm", train__max_steps=10, train__eval_interval=10,
                                              model__block_size=32)), quiet=True)
    cfg = toy_config(tmp_path, toy, "gpt_classifier", data__tokenizer="pretrained", data__max_length=32,
                     classify__init_from=tmp_path / "lm", train__learning_rate=3e-3, train__max_steps=80)
    fit(cfg, quiet=True)
    saved = load_config(tmp_path / "run" / "config.yaml", allow_derived=True)
    assert saved.model.gpt["n_layer"] == 2 and saved.model.gpt["block_size"] == 32
    predictions = nanonlp.load(tmp_path / "run", device="cpu").predict(POSITIVE + NEGATIVE)
    assert [p["label"] for p in predictions] == ["pos"] * 8 + ["neg"] * 8


def test_pretrained_heads_ignore_padding():
    from nanonlp.models import BertClassifier, BertClassifierConfig, GPTClassifier, GPTClassifierConfig
    from nanonlp.models.bert import BertConfig

    torch.manual_seed(0)
    encoder = {f.name: getattr(BertConfig(), f.name) for f in __import__("dataclasses").fields(BertConfig)}
    encoder.update(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    gpt = dict(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, vocab_size=30)
    models = [BertClassifier(BertClassifierConfig(num_classes=3, encoder=encoder, dropout=0.0)),
              GPTClassifier(GPTClassifierConfig(num_classes=3, gpt=gpt, dropout=0.0, pooling="last")),
              GPTClassifier(GPTClassifierConfig(num_classes=3, gpt=gpt, dropout=0.0, pooling="mean"))]
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    for model in models:
        model.eval()
        with torch.no_grad():
            a, _ = model(ids, mask)
            b, _ = model(padded_ids, padded_mask)
            alone, _ = model(ids[1:, :2], mask[1:, :2])
        assert torch.allclose(a, b, atol=1e-5), type(model).__name__
        assert torch.allclose(a[1:], alone, atol=1e-5), type(model).__name__


def test_classifier_resume_continues_the_same_curve(tmp_path, toy):
    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    extra = dict(train__max_steps=20, train__eval_interval=10, train__lr_decay_steps=20, train__log_interval=1,
                 train__learning_rate=3e-3)
    fit(toy_config(tmp_path, toy, "text_cnn", out="straight", **extra), quiet=True)
    fit(toy_config(tmp_path, toy, "text_cnn", out="resumed", **{**extra, "train__max_steps": 10}), quiet=True)
    fit(toy_config(tmp_path, toy, "text_cnn", out="resumed", **extra), resume=True, quiet=True)
    assert len(losses("straight")) == len(losses("resumed")) == 20
    for a, b in zip(losses("straight"), losses("resumed")):
        assert abs(a - b) < 1e-6


def test_a_tiny_dev_set_fits_no_temperature(tmp_path, toy, capsys):
    fit(toy_config(tmp_path, toy, classify__calibration_min_dev=50), quiet=True)  # the toy dev set has 4 examples
    calibration = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert calibration["temperature"] == 1.0 and "dev_nll_after" not in calibration
    assert "4 labelled dev examples, fewer than classify.calibration_min_dev (50)" in calibration["skipped"]
    assert "no softmax temperature fitted" in capsys.readouterr().err


def test_a_pretrained_classifier_longer_than_its_model_is_refused_when_prepared(tmp_path, toy, corpus):
    from conftest import tiny_overrides

    corpus.write_text(" ".join(POSITIVE + NEGATIVE) * 20)
    fit(load_config(None, tiny_overrides(corpus, tmp_path / "lm", train__max_steps=2, model__block_size=32)), quiet=True)
    cfg = toy_config(tmp_path, toy, "gpt_classifier", data__tokenizer="pretrained", data__max_length=64, classify__init_from=tmp_path / "lm")
    with pytest.raises(NanoNLPError, match="data.max_length 64 is longer than the pretrained model reads .32 positions"):
        fit(cfg, quiet=True)


def test_average_refits_the_calibration_to_the_averaged_weights(tmp_path, toy, capsys):
    fit(toy_config(tmp_path, toy, train__max_steps=60, train__eval_interval=10, train__keep_checkpoints=3), quiet=True)
    main(["average", str(tmp_path / "run"), "--last", "3", "--out", str(tmp_path / "avg"), "--device", "cpu"])
    assert "calibration refitted to the averaged weights" in capsys.readouterr().err
    averaged = nanonlp.load(tmp_path / "avg", device="cpu")
    dev = read_examples(toy[1])
    logits = predict_logits(averaged.model, averaged.encoder, [averaged.encoder.ids(e.text) for e in dev], averaged.device)
    gold = torch.tensor([averaged.labels.index(e.label) for e in dev])
    refitted = json.loads((tmp_path / "avg" / "calibration.json").read_text())
    original = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert refitted["temperature"] == pytest.approx(fit_temperature(logits, gold), rel=1e-6)
    assert refitted["temperature"] != pytest.approx(original["temperature"], rel=1e-3)  # fitted to other weights
    assert [p["label"] for p in averaged.predict(POSITIVE + NEGATIVE)] == ["pos"] * 8 + ["neg"] * 8


def test_classifier_from_eight_threads_answers_as_in_sequence(tmp_path, toy):
    fit(toy_config(tmp_path, toy, "bilstm", train__max_steps=40), quiet=True)
    classifier = nanonlp.load(tmp_path / "run", device="cpu")
    texts = [[t] for t in POSITIVE + NEGATIVE][:8]
    sequential = [classifier.predict(batch) for batch in texts]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(classifier.predict, texts))
    assert threaded == sequential
    assert classifier.predict(POSITIVE[0]) == sequential[0][0]  # one text in, one answer out
    assert classifier.max_input_length == 128 and classifier.labels == ["neg", "pos"]


def test_eval_reads_the_prepared_splits_and_resume_keeps_the_tokenizer(tmp_path, toy, capsys):
    fit(toy_config(tmp_path, toy, train__max_steps=30), quiet=True)
    data = tmp_path / "run" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["dev.json", "dev.npz", "prepared.json", "train.json", "train.npz"]
    main(["eval", str(tmp_path / "run"), "--json"])
    first = json.loads(capsys.readouterr().out)
    toy[1].rename(tmp_path / "elsewhere.txt")  # the raw dev file gone: eval reads the run's own copy
    main(["eval", str(tmp_path / "run"), "--json"])
    assert json.loads(capsys.readouterr().out) == first and first["data"] == "dev split"
    with pytest.raises(ConfigError, match="was trained with data.vocab_size=30000 but the config now says 500"):
        fit(toy_config(tmp_path, toy, train__max_steps=40, data__vocab_size=500), resume=True, quiet=True)
    with pytest.raises(ConfigError, match="was trained with model.type='bag_of_ngrams' but the config now says 'bilstm'"):
        fit(toy_config(tmp_path, toy, "bilstm", train__max_steps=40), resume=True, quiet=True)


def test_a_run_prepared_before_the_cache_resumes_and_gets_one(tmp_path, toy, capsys):
    import shutil

    fit(toy_config(tmp_path, toy, train__max_steps=30), quiet=True)
    main(["eval", str(tmp_path / "run"), "--json"])
    before = json.loads(capsys.readouterr().out)
    shutil.rmtree(tmp_path / "run" / "data")  # as a run directory written before the prepared-data cache
    main(["eval", str(tmp_path / "run"), "--json"])  # read and tokenized anew, in memory
    assert json.loads(capsys.readouterr().out) == before
    assert not (tmp_path / "run" / "data").exists()
    assert fit(toy_config(tmp_path, toy, train__max_steps=40), resume=True, quiet=True).step == 40
    assert (tmp_path / "run" / "data" / "prepared.json").is_file()

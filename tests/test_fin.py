"""Monitoring models: regression in the classification task (loss, metrics, every model family, the
commands), label names in English and Chinese, and the readers of the financial data sets, all on
fixtures written here."""

import json
import math

import pytest
import torch

import nanonlp
from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.data import catalog
from nanonlp.data.readers import read_examples, read_fin_records
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.metrics import regression_report
from nanonlp.tasks.classify import regression_loss
from nanonlp.train import fit

# Headlines with a score each: positive words high, negative words low.
HEADLINES = [
    ("profit jumps on record sales", 0.8), ("shares surge after upgrade", 0.7), ("dividend raised again", 0.5),
    ("strong growth in orders", 0.6), ("profit warning sends shares lower", -0.8), ("lawsuit hits shares", -0.6),
    ("sales fall sharply", -0.7), ("chief executive quits amid fraud probe", -0.9), ("results in line", 0.0),
    ("annual meeting held", 0.1),
]


def write_headlines(path, rows=HEADLINES, repeat=1):
    items = [{"id": i, "company": "Acme", "title": t, "sentiment": s} for i, (t, s) in enumerate(rows * repeat)]
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def regression_config(tmp_path, family="bag_of_ngrams", out="run", **extra):
    data = write_headlines(tmp_path / "headlines.json", repeat=2)
    values = {"data.path": data, "data.dev_path": data, "data.format": "semeval_headlines", "data.target": "regression",
              "data.ngram_buckets": 1000,
              "model.type": family, "train.out_dir": tmp_path / out, "train.max_steps": 150, "train.batch_size": 10,
              "train.eval_interval": 50, "train.learning_rate": 1e-2, "train.warmup_steps": 0, "train.dtype": "float32",
              "train.device": "cpu", "train.peak_tflops": 1.0, "train.weight_decay": 0.0}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_config(None, ["--task=classify"] + [f"--{k}={v}" for k, v in values.items()])


# -- loss and metrics against hand computation ---------------------------------------------------


def test_regression_loss_is_the_squared_error_of_tanh_by_hand():
    logits = torch.tensor([[0.0], [1.0], [-2.0]])
    gold = torch.tensor([0.5, 0.5, -1.0])
    expected = ((0.0 - 0.5) ** 2 + (math.tanh(1.0) - 0.5) ** 2 + (math.tanh(-2.0) + 1.0) ** 2) / 3
    assert regression_loss(logits, gold).item() == pytest.approx(expected, rel=1e-6)
    # the gradient reaches the logit through tanh: d/dx (tanh x - y)^2 / n = 2 (tanh x - y)(1 - tanh^2 x) / n
    x = torch.tensor([[0.3]], requires_grad=True)
    regression_loss(x, torch.tensor([0.9])).backward()
    t = math.tanh(0.3)
    assert x.grad.item() == pytest.approx(2 * (t - 0.9) * (1 - t * t), rel=1e-5)


def test_cosine_pearson_mse_by_hand():
    gold = torch.tensor([1.0, -1.0, 0.5, 0.0])
    predicted = torch.tensor([0.5, -0.5, 0.5, 0.5])
    report = regression_report(gold, predicted)
    dot = 0.5 + 0.5 + 0.25 + 0.0
    assert report["cosine"] == pytest.approx(dot / (math.sqrt(1 + 1 + 0.25) * math.sqrt(4 * 0.25)))
    # Pearson: centred vectors. gold mean 0.125, predicted mean 0.25.
    g = [0.875, -1.125, 0.375, -0.125]
    p = [0.25, -0.75, 0.25, 0.25]
    pearson = sum(a * b for a, b in zip(g, p)) / math.sqrt(sum(a * a for a in g) * sum(b * b for b in p))
    assert report["pearson"] == pytest.approx(pearson)
    assert report["mse"] == pytest.approx((0.25 + 0.25 + 0 + 0.25) / 4)
    assert report["mae"] == pytest.approx((0.5 + 0.5 + 0 + 0.5) / 4)
    # cosine is uncentred: a constant shift changes it, Pearson not
    shifted = regression_report(gold, predicted + 0.3)
    assert shifted["pearson"] == pytest.approx(report["pearson"]) and shifted["cosine"] != pytest.approx(report["cosine"])
    flat = regression_report(gold, torch.zeros(4))  # all zeros: 0, not NaN
    assert flat["cosine"] == 0.0 and flat["pearson"] == 0.0


# -- training: every family fits a small batch of scores ----------------------------------------


@pytest.mark.parametrize("family", ["bag_of_ngrams", "text_cnn", "bilstm", "transformer"])
def test_each_family_overfits_a_regression_batch(tmp_path, family):
    cfg = regression_config(tmp_path, family, train__learning_rate={"bag_of_ngrams": 1e-2}.get(family, 3e-3),
                            **({"model.dropout": 0.0} if family != "bag_of_ngrams" else {}))
    fit(cfg, quiet=True)
    scorer = nanonlp.load(tmp_path / "run", device="cpu")
    answers = scorer.predict([t for t, _ in HEADLINES])
    assert all(set(a) == {"score"} and -1.0 <= a["score"] <= 1.0 for a in answers)
    report = regression_report(torch.tensor([s for _, s in HEADLINES]), torch.tensor([a["score"] for a in answers]))
    assert report["mse"] < 0.02 and report["pearson"] > 0.97, report
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["score"]
    best = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_cosine" in line]
    assert best and all({"val_loss", "val_cosine", "val_pearson"} <= set(row) for row in best)


def test_a_pretrained_bert_learns_scores(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for t, _ in HEADLINES for w in t.split()})
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = regression_config(tmp_path, "bert", data__tokenizer="pretrained", data__max_length=32, classify__init_from=folder,
                            train__learning_rate=2e-3, train__max_steps=150, model__dropout=0.0)
    fit(cfg, quiet=True)
    answers = nanonlp.load(tmp_path / "run", device="cpu").predict([t for t, _ in HEADLINES])
    report = regression_report(torch.tensor([s for _, s in HEADLINES]), torch.tensor([a["score"] for a in answers]))
    assert report["mse"] < 0.03 and report["pearson"] > 0.95, report


def test_the_monitor_is_the_chosen_metric(tmp_path):
    for metric in ("pearson", "cosine"):
        out = tmp_path / metric
        fit(regression_config(tmp_path, out=metric, classify__regression_metric=metric, train__max_steps=60, train__eval_interval=5,
                              train__learning_rate=3e-3), quiet=True)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_pearson" in line]
        best = json.loads((out / "best.json").read_text())
        assert len(rows) == 12 and best["step"] == max(rows, key=lambda row: row[f"val_{metric}"])["step"]


def test_classify_prints_scores_and_eval_prints_the_metrics(tmp_path, capsys):
    fit(regression_config(tmp_path), quiet=True)
    main(["classify", str(tmp_path / "run"), "profit jumps on record sales", "sales fall sharply"])
    lines = capsys.readouterr().out.splitlines()
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores[0] > 0.5 and scores[1] < -0.5 and lines[1].endswith("\tsales fall sharply")
    assert all(len(line.split("\t")) == 2 for line in lines)  # a score and the text: no probability column
    test = write_headlines(tmp_path / "test.json", HEADLINES[:6])
    main(["eval", str(tmp_path / "run"), "--data", str(test), "--format", "semeval_headlines"])
    out = capsys.readouterr().out
    for key in ("cosine:", "pearson:", "mse:", "mae:"):
        assert key in out
    main(["eval", str(tmp_path / "run"), "--data", str(test), "--format", "semeval_headlines", "--json"])
    report = json.loads(capsys.readouterr().out)
    expected = regression_report(torch.tensor([s for _, s in HEADLINES[:6]]),
                                 torch.tensor([a["score"] for a in nanonlp.load(tmp_path / "run").predict([t for t, _ in HEADLINES[:6]])]))
    assert report["cosine"] == pytest.approx(expected["cosine"], abs=1e-6) and report["count"] == 6
    out_file = tmp_path / "scores.csv"
    texts = tmp_path / "texts.csv"
    texts.write_text("id,text\n1,dividend raised again\n")
    main(["classify", str(tmp_path / "run"), "--input", str(texts), "--output", str(out_file)])
    rows = out_file.read_text().splitlines()
    assert rows[0] == "id,text,predicted_score" and float(rows[1].split(",")[-1]) > 0


def test_regression_refuses_what_does_not_apply(tmp_path):
    with pytest.raises(ConfigError, match="cannot be multi_label"):
        regression_config(tmp_path, data__multi_label="true")
    with pytest.raises(ConfigError, match="classify.class_weights applies to classes"):
        fit(regression_config(tmp_path, classify__class_weights="balanced"), quiet=True)
    with pytest.raises(ConfigError, match="set data.target: regression"):
        load_config(None, ["--task=classify", "--model.type=bag_of_ngrams", "--data.path=semeval2017_headlines"])
    with pytest.raises(ConfigError, match="holds classes, not scores"):
        load_config(None, ["--task=classify", "--model.type=bag_of_ngrams", "--data.path=chnsenticorp", "--data.target=regression"])
    out_of_range = tmp_path / "big.json"
    write_headlines(out_of_range, [("up", 3.5), ("down", -0.5)])
    cfg = regression_config(tmp_path, data__path=out_of_range, data__dev_path=out_of_range, out="big")
    with pytest.raises(NanoNLPError, match=r"example 1: the label '3.5' is not a score in \[-1, 1\]"):
        fit(cfg, quiet=True)
    assert not (tmp_path / "big" / "model.safetensors").exists()


# -- label names ---------------------------------------------------------------------------------

REVIEWS = [("房间很干净，服务也好", 1), ("早餐丰富，位置方便", 1), ("服务热情，下次还来", 1), ("环境安静，床很舒服", 1),
           ("房间很脏，服务很差", 0), ("隔音太差，一夜没睡", 0), ("前台态度恶劣，不会再来", 0), ("设施陈旧，价格太贵", 0)]


@pytest.fixture
def chnsenticorp(tmp_path, monkeypatch):
    """A tiny ChnSentiCorp at $NANONLP_DATA/zh/chnsenticorp_htl_all.csv, as the catalog reads it."""
    folder = tmp_path / "data" / "zh"
    folder.mkdir(parents=True)
    rows = REVIEWS * 5
    (folder / "chnsenticorp_htl_all.csv").write_text("label,review\n" + "".join(f"{label},{text}\n" for text, label in rows), encoding="utf-8")
    monkeypatch.setenv("NANONLP_DATA", str(tmp_path / "data"))
    return load_config(None, ["--task=classify", "--data.path=chnsenticorp", "--data.test_fraction=0.1", "--data.ngrams=2", "--data.ngram_buckets=1000",
                              "--model.type=bag_of_ngrams", f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=120",
                              "--train.batch_size=8", "--train.eval_interval=60", "--train.learning_rate=3e-2", "--train.warmup_steps=0",
                              "--train.dtype=float32", "--train.device=cpu", "--train.peak_tflops=1.0", "--classify.calibration_min_dev=2"])


def test_catalog_labels_print_by_name_in_english_and_chinese(tmp_path, chnsenticorp, capsys):
    fit(chnsenticorp, quiet=True)
    main(["classify", str(tmp_path / "run"), "房间很干净，服务也好", "房间很脏，服务很差"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["positive", "negative"]
    main(["classify", str(tmp_path / "run"), "--language", "zh", "房间很干净，服务也好"])
    assert capsys.readouterr().out.startswith("正面\t")
    classifier = nanonlp.load(tmp_path / "run", device="cpu")
    answer = classifier.predict("房间很脏，服务很差")
    assert answer["label"] == "negative" and set(answer["probabilities"]) == {"negative", "positive"}
    assert classifier.predict("房间很脏，服务很差", language="zh")["label"] == "负面"
    assert classifier.labels == ["0", "1"]  # the model's outputs keep the file's labels
    # eval reads the raw file's 0/1 and reports by name
    main(["eval", str(tmp_path / "run"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report["per_class"]) == {"negative", "positive"}
    with pytest.raises(NanoNLPError, match="label names come in en and zh"):
        classifier.predict("好", language="fr")


def test_a_run_without_label_names_json_still_names_its_catalog_labels(tmp_path, chnsenticorp):
    fit(chnsenticorp, quiet=True)
    assert json.loads((tmp_path / "run" / "label_names.json").read_text(encoding="utf-8"))["1"] == {"en": "positive", "zh": "正面"}
    (tmp_path / "run" / "label_names.json").unlink()  # as a run trained before names were saved
    assert nanonlp.load(tmp_path / "run").predict("房间很干净，服务也好")["label"] == "positive"


def test_label_names_from_the_config_and_none_for_a_plain_file(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{label} {text}\n" for text, label in [("good film", 1), ("great fun", 1), ("bad film", 0), ("dull mess", 0)] * 4))
    base = ["--task=classify", f"--data.path={train}", f"--data.dev_path={train}", "--model.type=bag_of_ngrams",
            "--train.max_steps=60", "--train.batch_size=8", "--train.eval_interval=30", "--train.learning_rate=3e-2",
            "--train.warmup_steps=0", "--train.dtype=float32", "--train.device=cpu", "--train.peak_tflops=1.0",
            "--classify.calibration_min_dev=2"]
    fit(load_config(None, base + [f"--train.out_dir={tmp_path / 'plain'}"]), quiet=True)
    assert nanonlp.load(tmp_path / "plain").predict("good film")["label"] == "1"
    named = base + [f"--train.out_dir={tmp_path / 'named'}", "--data.label_names=0=bad/差评,1=good/好评"]
    fit(load_config(None, named), quiet=True)
    classifier = nanonlp.load(tmp_path / "named")
    assert classifier.predict("good film")["label"] == "good" and classifier.predict("bad film", language="zh")["label"] == "差评"
    assert classifier.label_names("zh") == ["差评", "好评"]
    with pytest.raises(ConfigError, match="is not LABEL=NAME"):
        load_config(None, base + ["--data.label_names=0negative"])


def test_the_api_answers_and_describes_by_name(tmp_path, chnsenticorp):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nanonlp.serve.app import create_app

    fit(chnsenticorp, quiet=True)
    with TestClient(create_app({"hotel": nanonlp.load(tmp_path / "run")})) as client:
        results = client.post("/v1/classify", json={"texts": ["房间很干净，服务也好"]}).json()["results"]
        assert results[0]["label"] == "positive"
        models = client.get("/v1/models").json()
    described = models["models"][0] if isinstance(models, dict) and "models" in models else models[0]
    assert described["label_names"] == {"en": ["negative", "positive"], "zh": ["负面", "正面"]}


# -- readers of the financial data sets, on fixtures ---------------------------------------------


def test_semeval_and_fiqa_readers(tmp_path):
    headlines = write_headlines(tmp_path / "h.json", HEADLINES[:2])
    records = read_fin_records(headlines, "semeval_headlines")
    assert records[0] == {"id": "0", "text": "profit jumps on record sales", "entity": "Acme", "label": "0.8"}
    (tmp_path / "bad.json").write_text(json.dumps([{"title": "x", "sentiment": "high"}]))
    with pytest.raises(NanoNLPError, match="item 0: the sentiment score 'high' is not a number"):
        read_fin_records(tmp_path / "bad.json", "semeval_headlines")
    (tmp_path / "bad.json").write_text(json.dumps([{"headline": "x"}]))
    with pytest.raises(NanoNLPError, match="item 0 is not an object with 'title' and 'sentiment'"):
        read_fin_records(tmp_path / "bad.json", "semeval_headlines")
    fiqa = tmp_path / "fiqa.json"
    fiqa.write_text(json.dumps({"7": {"sentence": "$AAPL to the moon", "info": [{"sentiment_score": "0.62", "target": "AAPL",
                                                                                  "snippets": "[]", "aspects": "[]"}]}}))
    examples = read_examples(fiqa, "fiqa")
    assert examples[0].text == "$AAPL to the moon" and examples[0].labels == ("0.62",)
    assert read_fin_records(fiqa, "fiqa")[0]["entity"] == "AAPL"
    fiqa.write_text(json.dumps({"7": {"sentence": "x", "info": []}}))
    with pytest.raises(NanoNLPError, match="post '7' lacks 'sentence' or a non-empty 'info' list"):
        read_examples(fiqa, "fiqa")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(NanoNLPError, match="is not valid JSON"):
        read_examples(tmp_path / "broken.json", "semeval_headlines")


def test_phrasebank_reader_latin1_and_bad_lines(tmp_path):
    fpb = tmp_path / "Sentences_50Agree.txt"
    fpb.write_bytes("Nokia's caf\xe9 sales rose by 5 % @ EUR 3m .@positive\nProfit fell .@negative\n".encode("latin-1"))
    examples = read_examples(fpb, "fpb", encoding="latin-1")
    assert [(e.text, e.label) for e in examples] == [("Nokia's café sales rose by 5 % @ EUR 3m .", "positive"), ("Profit fell .", "negative")]
    with pytest.raises(NanoNLPError, match="not valid utf-8"):
        read_examples(fpb, "fpb", encoding="utf-8")
    fpb.write_text("Fine .@neutral\nNo label here\n", encoding="utf-8")
    with pytest.raises(NanoNLPError, match="line 2: expected 'SENTENCE@negative|neutral|positive'"):
        read_examples(fpb, "fpb")
    # the catalog reads the 50Agree file as latin-1 by itself, with data.encoding ""
    cfg = load_config(None, ["--task=classify", "--model.type=bag_of_ngrams", "--data.path=fpb_50agree"])
    assert cfg.data.encoding == "" and cfg.data.text_encoding() == "latin-1"
    assert load_config(None, ["--task=classify", "--model.type=bag_of_ngrams", "--data.path=fpb_allagree"]).data.text_encoding() == "utf-8"


def test_sentifm_reader_splits_and_bad_labels(tmp_path):
    path = tmp_path / "experiment_data.json"
    data = {"holdin_instances": ["Profit rose .", "The weather was fine .", "Dividend and buyback ."],
            "holdin_labels": [["Profit"], -1, ["Dividend", "ShareRepurchase"]],
            "holdout_instances": ["Sales fell ."], "holdout_labels": [["SalesVolume"]]}
    path.write_text(json.dumps(data))
    train = read_examples(path, "sentifm", "train")
    assert [e.labels for e in train] == [("Profit",), (), ("Dividend", "ShareRepurchase")]
    assert read_examples(path, "sentifm", "test")[0].labels == ("SalesVolume",)
    with pytest.raises(NanoNLPError, match="not 'dev'; hold dev out of train"):
        read_examples(path, "sentifm", "dev")
    data["holdin_labels"][1] = "Profit"
    path.write_text(json.dumps(data))
    with pytest.raises(NanoNLPError, match="holdin label 1 is 'Profit'; expected -1"):
        read_examples(path, "sentifm")
    data["holdin_labels"] = data["holdin_labels"][:2]
    path.write_text(json.dumps(data))
    with pytest.raises(NanoNLPError, match="3 holdin instances but 2 holdin labels"):
        read_examples(path, "sentifm")
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(NanoNLPError, match="has no 'holdin_instances'"):
        read_examples(path, "sentifm")


def test_chinese_fincuge_readers(tmp_path):
    finfe = tmp_path / "finfe.json"
    finfe.write_text(json.dumps([["钼已成粥", 1], ["补仓补的心力憔悴", 0], ["明天涨停", 2]], ensure_ascii=False), encoding="utf-8")
    assert [(e.text, e.label) for e in read_examples(finfe, "finfe")] == [("钼已成粥", "1"), ("补仓补的心力憔悴", "0"), ("明天涨停", "2")]
    finfe.write_text(json.dumps([["好", 3]]))
    with pytest.raises(NanoNLPError, match="item 0 has label 3; FinFE labels are 0, 1 and 2"):
        read_examples(finfe, "finfe")
    finfe.write_text(json.dumps([["好"]]))
    with pytest.raises(NanoNLPError, match=r"item 0 is not a list of 2 fields \(\[text, label\]\)"):
        read_examples(finfe, "finfe")

    finese = tmp_path / "finese.json"
    finese.write_text(json.dumps([["1", " 某公司财务造假被查 ", "财务造假", "某公司"], ["2", "房贷利率下降", "其他", "NaN"]], ensure_ascii=False),
                      encoding="utf-8")
    records = read_fin_records(finese, "finese")
    assert records[0] == {"id": "1", "text": "某公司财务造假被查", "label": "财务造假", "entity": "某公司"} and records[1]["entity"] == ""
    finese.write_text(json.dumps([["1", "文本", "", "某公司"]], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(NanoNLPError, match="item 0 has an empty event type"):
        read_examples(finese, "finese")

    finnsp = tmp_path / "finnsp.json"
    rows = [["a1", "小资钱包涉嫌诈骗", "小资钱包涉嫌诈骗，警方立案", "小资钱包;恒丰银行", "1", "小资钱包"],
            ["\ufeffid", "title", "text", "entity", "negative", "key_entity"],  # a header repeated mid-file, as in the real train file
            ["b2", "", "某银行发布年报", "某银行", "0", ""]]
    finnsp.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    records = read_fin_records(finnsp, "finnsp")
    assert len(records) == 2
    assert records[0]["text"] == "小资钱包涉嫌诈骗，警方立案" and records[0]["entities"] == ["小资钱包", "恒丰银行"]
    assert records[0]["negative_entities"] == ["小资钱包"] and records[1]["label"] == "0" and records[1]["negative_entities"] == []
    rows[2][4] = "yes"
    finnsp.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(NanoNLPError, match="item 2 has is_negative 'yes'; expected 0 or 1"):
        read_examples(finnsp, "finnsp")


def test_stocknet_reader(tmp_path):
    path = tmp_path / "tweets.jsonl"
    path.write_text('{"id": "1", "time": "2014-01-02T10:00:00Z", "ticker": "AAPL", "text": "$AAPL up"}\n\n'
                    '{"id": "2", "time": "2014-01-02T11:00:00Z", "ticker": "GOOG", "text": "$GOOG down"}\n')
    records = read_fin_records(path, "stocknet")
    assert [(r["entity"], r["time"]) for r in records] == [("AAPL", "2014-01-02T10:00:00Z"), ("GOOG", "2014-01-02T11:00:00Z")]
    assert read_examples(path, "stocknet")[1].labels == ()
    path.write_text('{"id": "1", "text": "no ticker"}\n')
    with pytest.raises(NanoNLPError, match="line 1: expected an object with keys id, time, ticker and text"):
        read_fin_records(path, "stocknet")


def test_catalog_entries_name_their_files_splits_and_labels():
    for name, folder, data_format in [("semeval2017_headlines", "fin/SemEval2017Task5Headlines.json", "semeval_headlines"),
                                      ("fpb_allagree", "fin/fpb/Sentences_AllAgree.txt", "fpb"),
                                      ("sentifm", "fin/sentifm_events.json", "sentifm"),
                                      ("finese", "fin/zh/finese_train.json", "finese")]:
        entry = catalog.CATALOG[name]
        assert entry.relative_path == folder and entry.format == data_format
    assert catalog.CATALOG["finnsp"].split("test") == "finnsp_eval" and catalog.CATALOG["finfe"].split("dev") is None
    assert catalog.CATALOG["fpb_50agree"].encoding == "latin-1" and "non-commercial" in catalog.CATALOG["fpb_50agree"].licence
    assert catalog.CATALOG["finese"].names()["财务造假"] == {"en": "financial fraud", "zh": "财务造假"}
    assert catalog.CATALOG["finfe"].names()["0"]["zh"] == "负面"
    assert catalog.CATALOG["semeval2017_headlines"].target == "regression"


def test_sentifm_trains_multi_label_with_named_events(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "fin"
    folder.mkdir(parents=True)
    rows = [("Profit rose sharply .", ["Profit"]), ("The dividend was raised .", ["Dividend"]), ("Nothing happened today .", -1),
            ("Profit and dividend both up .", ["Dividend", "Profit"])] * 6
    data = {"holdin_instances": [t for t, _ in rows], "holdin_labels": [l for _, l in rows],
            "holdout_instances": ["Profit rose .", "The dividend was raised ."], "holdout_labels": [["Profit"], ["Dividend"]]}
    (folder / "sentifm_events.json").write_text(json.dumps(data))
    monkeypatch.setenv("NANONLP_DATA", str(tmp_path / "data"))
    cfg = load_config(None, ["--task=classify", "--data.path=sentifm", "--data.multi_label=true", "--data.dev_fraction=0.2",
                             "--model.type=bag_of_ngrams", f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=150",
                             "--train.eval_interval=50", "--train.learning_rate=3e-2", "--train.warmup_steps=0",
                             "--train.dtype=float32", "--train.device=cpu", "--train.peak_tflops=1.0"])
    fit(cfg, quiet=True)
    classifier = nanonlp.load(tmp_path / "run")
    assert sorted(classifier.predict("Profit and dividend both up .")["labels"]) == ["dividend", "profit"]
    assert classifier.predict("Nothing happened today .", language="zh")["labels"] == []
    assert classifier.predict("The dividend was raised .", language="zh")["labels"] == ["股息"]
    report = classifier.evaluate(read_examples(folder / "sentifm_events.json", "sentifm", "test"))
    assert report["micro_f1"] == 1.0 and "profit" in report["per_class"]

"""`nanonlp export`: runs trained here load in `transformers` with outputs equal to nanonlp's, ONNX Runtime
agrees with PyTorch within 1e-4 (a GPT's KV cache included), what has no counterpart is refused by name,
and a failed export leaves nothing behind."""

import json

import pytest
import torch

import nanonlp
from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.errors import NanoNLPError
from nanonlp.export import export
from nanonlp.predict import load_model
from nanonlp.checkpoint import open_run
from nanonlp.train import fit
from conftest import tiny_overrides
from test_classify import NEGATIVE, POSITIVE, toy_config
from test_pretrained_tagger import bert_folder, pretrained_config
from test_tag import english_file

transformers = pytest.importorskip("transformers")
MIXED = ["Carol works for Acme in New York .", "北京 is far , 😀 ok", "", "a good film\nwith a bad end"]


def _model(run_dir):
    return load_model(open_run(run_dir), torch.device("cpu"))


def write_toy(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"pos {t}\n" for t in POSITIVE) + "".join(f"neg {t}\n" for t in NEGATIVE))
    dev = tmp_path / "dev.txt"
    dev.write_text("pos good stuff\nneg bad stuff\npos so good\nneg so bad\n")
    return train, dev


@pytest.fixture
def toy(tmp_path):
    return write_toy(tmp_path)


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory):
    """A classifier fine-tuned on a tiny random BERT, mean-pooled: trained once for the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("bert_classifier")
    torch.manual_seed(0)
    return bert_classifier_run(tmp_path, write_toy(tmp_path))


def bert_classifier_run(tmp_path, toy, pooling="mean", steps=20):
    folder = tmp_path / "bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for t in POSITIVE + NEGATIVE for w in t.split()} | {"stuff", "so"})
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    fit(toy_config(tmp_path, toy, "bert", out=f"run_{pooling}", data__tokenizer="pretrained", classify__init_from=folder,
                   data__max_length=64, train__learning_rate=1e-3, train__max_steps=steps, train__eval_interval=steps,
                   model__pooling=pooling), quiet=True)
    return tmp_path / f"run_{pooling}"


def gpt_run(tmp_path, corpus, out, **extra):
    fit(load_config(None, tiny_overrides(corpus, tmp_path / out, train__max_steps=10, **extra)), quiet=True)
    return tmp_path / out


# -- Hugging Face ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer, bias", [("char", True), ("bpe", False)])
def test_a_gpt2_layout_gpt_loads_as_gpt2_with_its_tokenizer(tmp_path, corpus, tokenizer, bias):
    run = gpt_run(tmp_path, corpus, "lm", data__tokenizer=tokenizer, data__vocab_size=300, model__bias=bias)
    out = export(run, "hf", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    lm = nanonlp.load(run, device="cpu")
    text = "To be, or not\n to be 北京 😀"  # a newline, a double space and characters the corpus never had
    ids = lm.tokenizer.encode(text) if tokenizer == "bpe" else [lm.tokenizer.index.get(c, lm.tokenizer.unk_id) for c in text]
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == lm.tokenizer.decode(ids)
    batch = torch.tensor([ids[:16], ids[-16:]])
    with torch.no_grad():
        ours = _model(run)(batch)[0]
        theirs = hf(batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_speedrun_gpt_is_refused_naming_what_gpt2_lacks(tmp_path, corpus):
    run = gpt_run(tmp_path, corpus, "speedrun", model__position="rotary", model__qk_norm=True)
    with pytest.raises(NanoNLPError, match=r"GPT2LMHeadModel has no rotary positions \(model.position: rotary\), no QK-norm"):
        export(run, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")] == []


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_bert_classifier_loads_as_sequence_classification_with_its_labels(tmp_path, toy, mean_run, pooling):
    run = mean_run if pooling == "mean" else bert_classifier_run(tmp_path, toy, pooling, steps=4)
    out = export(run, "hf", tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert isinstance(hf, transformers.BertForSequenceClassification)
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["a good film", "truly bad and cold , so bad", "北京 😀 stuff"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    classifier = nanonlp.load(run, device="cpu")
    ours_ids, ours_mask = classifier.encoder.batch(classifier.encoder.ids_of(texts), "cpu")
    assert torch.equal(encoded["input_ids"], ours_ids) and torch.equal(encoded["attention_mask"], ours_mask)
    with torch.no_grad():
        theirs = hf(**encoded).logits
        ours = _model(run)(ours_ids, ours_mask)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the pipeline users deploy with gives nanonlp's label and probability
    pipe = transformers.pipeline("text-classification", model=str(out), trust_remote_code=True)
    probs = torch.softmax(ours, dim=-1)
    for row, result in zip(probs, pipe(texts)):
        assert result["label"] == ["neg", "pos"][int(row.argmax())] and result["score"] == pytest.approx(float(row.max()), abs=1e-5)
    assert hf(**encoded, labels=torch.tensor([1, 0, 0])).loss > 0


def test_a_bert_tagger_loads_as_token_classification_and_a_crf_is_refused(tmp_path):
    data = english_file(tmp_path / "toy.txt", n=40)
    folder = bert_folder(tmp_path / "bert")
    fit(pretrained_config(tmp_path, data, "bert", folder, model__crf=False, train__max_steps=10, train__eval_interval=10), quiet=True)
    out = export(tmp_path / "run", "hf", tmp_path / "hf")
    hf = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "BertForTokenClassification"
    tagger, model = nanonlp.load(tmp_path / "run", device="cpu"), _model(tmp_path / "run")
    assert [hf.config.id2label[i] for i in range(len(model.config.tags))] == model.config.tags
    (ids, mask, index, word_mask, shapes), _ = tagger.reader.batch(
        [u for text in ["Carol works for Globex in 北京 .", "Bob works"] for u, _, _ in tagger.reader.units(text, [(s, e) for _, s, e in
                                                                                                          nanonlp.predict.tag.tokenize(text)])], "cpu")
    with torch.no_grad():
        ours = model(ids, mask, index, word_mask, shapes)[0]
        theirs = hf(input_ids=ids, attention_mask=mask).logits.gather(1, index.unsqueeze(-1).expand(-1, -1, ours.size(-1)))
    assert torch.allclose(ours[word_mask], theirs[word_mask], atol=1e-5)
    assert transformers.AutoTokenizer.from_pretrained(out)("Carol works for Globex")["input_ids"] == tagger.reader.tokenizer.encode(
        "Carol works for Globex")

    fit(pretrained_config(tmp_path, data, "bert", folder, out="crf", model__case_embed_dim=4, train__max_steps=2), quiet=True)
    with pytest.raises(NanoNLPError, match=r"BertForTokenClassification has no CRF .*, no letter-case embedding"):
        export(tmp_path / "crf", "hf", tmp_path / "hf_crf")
    assert not (tmp_path / "hf_crf").exists()


def test_models_without_a_counterpart_are_refused_and_nothing_is_overwritten(tmp_path, toy, capsys):
    fit(toy_config(tmp_path, toy, "bag_of_ngrams", out="ngrams"), quiet=True)
    with pytest.raises(NanoNLPError, match="a BagOfNgrams .* has no transformers counterpart.*--format onnx exports it"):
        export(tmp_path / "ngrams", "hf", tmp_path / "hf")
    (tmp_path / "taken").mkdir()
    with pytest.raises(NanoNLPError, match="already exists"):
        export(tmp_path / "ngrams", "onnx", tmp_path / "taken")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "ngrams"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert exit_info.value.code == 1 and "has no transformers counterpart" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "ngrams"), "--format", "tflite", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if "hf" in p.name or p.name.startswith(".")) == []


# -- ONNX -----------------------------------------------------------------------------------------

ort = pytest.importorskip("onnxruntime")


def _session(folder):
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def test_a_classifier_in_onnx_runtime_equals_pytorch(tmp_path, mean_run, capsys):
    run = mean_run
    main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    assert "exported" in capsys.readouterr().err
    meta = json.loads((tmp_path / "onnx" / "nanonlp.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["inputs"] == ["input_ids", "attention_mask"]
    classifier = nanonlp.load(run, device="cpu")
    for texts in (["a good film"], ["a good film", "truly bad and cold , so bad , very bad", "so good"] * 3):  # batch and length vary
        ids, mask = classifier.encoder.batch(classifier.encoder.ids_of(texts), "cpu")
        with torch.no_grad():
            ours = _model(run)(ids, mask)[0].numpy()
        theirs = _session(tmp_path / "onnx").run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert abs(ours - theirs).max() < 1e-4
    # the tokenizer travels too, with the same ids
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(tmp_path / "onnx" / "tokenizer.json")).encode("a good film").ids == classifier.encoder.ids("a good film")


def test_a_word_level_classifier_exports_to_onnx(tmp_path, toy):
    fit(toy_config(tmp_path, toy, "text_cnn", out="cnn", train__max_steps=4, train__eval_interval=4), quiet=True)
    export(tmp_path / "cnn", "onnx", tmp_path / "onnx")
    classifier = nanonlp.load(tmp_path / "cnn", device="cpu")
    ids, mask = classifier.encoder.batch(classifier.encoder.ids_of(["a good film", "bad , very bad , so bad"]), "cpu")
    with torch.no_grad():
        ours = _model(tmp_path / "cnn")(ids, mask)[0].numpy()
    theirs = _session(tmp_path / "onnx").run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert abs(ours - theirs).max() < 1e-4
    assert (tmp_path / "onnx" / "nanonlp_tokenizer.json").is_file()


def test_a_crf_tagger_in_onnx_gives_pytorchs_emissions_and_its_transitions(tmp_path):
    data = english_file(tmp_path / "toy.txt", n=40)
    folder = bert_folder(tmp_path / "bert")
    fit(pretrained_config(tmp_path, data, "bert", folder, model__case_embed_dim=4, train__max_steps=10, train__eval_interval=10), quiet=True)
    export(tmp_path / "run", "onnx", tmp_path / "onnx")
    tagger, model = nanonlp.load(tmp_path / "run", device="cpu"), _model(tmp_path / "run")
    texts = ["Carol works for Globex in 北京 .", "Bob works", "Alice and Dave went home to London ."]
    units = [u for text in texts for u, _, _ in tagger.reader.units(text, [(s, e) for _, s, e in nanonlp.predict.tag.tokenize(text)])]
    inputs, word_mask = tagger.reader.batch(units, "cpu")
    with torch.no_grad():
        ours = model(*inputs)[0]
    names = ["input_ids", "attention_mask", "word_index", "word_mask", "shapes"]
    meta = json.loads((tmp_path / "onnx" / "nanonlp.json").read_text())
    assert meta["inputs"] == ["input_ids", "attention_mask", "word_index", "shapes"]  # word_mask is read by a BiLSTM only
    theirs = _session(tmp_path / "onnx").run(["emissions"], {n: t.numpy() for n, t in zip(names, inputs) if n in meta["inputs"]})[0]
    assert abs(ours.numpy() - theirs)[word_mask.numpy()].max() < 1e-4
    assert meta["tags"] == model.config.tags and meta["crf"]
    # Viterbi over the exported emissions and transitions gives nanonlp's tags
    assert model.decode(torch.from_numpy(theirs), word_mask) == model.decode(ours, word_mask)
    assert torch.equal(torch.tensor(meta["transitions"]), model.crf.transitions.detach())


@pytest.mark.parametrize("extra", [{}, {"model__position": "rotary", "model__qk_norm": True, "model__activation": "relu2",
                                        "model__tie_embeddings": False, "model__logit_softcap": 30.0}])
def test_a_gpt_in_onnx_carries_its_kv_cache(tmp_path, corpus, extra):
    run = gpt_run(tmp_path, corpus, "lm", **extra)
    export(run, "onnx", tmp_path / "onnx")
    model, session = _model(run), _session(tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "nanonlp.json").read_text())
    L, H, D = meta["n_layer"], meta["n_head"], meta["head_dim"]
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(idx)[0].numpy()  # no cache: the whole sequence at once
    past = {f"past_{k}_{i}": torch.zeros(2, H, 0, D).numpy() for i in range(L) for k in ("key", "value")}
    outputs = [o.name for o in session.get_outputs()]
    # prompt of 7 tokens, then 2 tokens, then one token at a time: each step reads the cache the last one wrote
    start = 0
    for step in (7, 2, 1, 1, 1):
        result = dict(zip(outputs, session.run(outputs, {"input_ids": idx[:, start : start + step].numpy(), **past})))
        assert abs(result["logits"] - full[:, start : start + step]).max() < 1e-4
        assert result["present_key_0"].shape == (2, H, start + step, D)
        past = {f"past_{k}_{i}": result[f"present_{k}_{i}"] for i in range(L) for k in ("key", "value")}
        start += step


def test_a_failed_export_leaves_nothing(tmp_path, corpus, monkeypatch):
    run = gpt_run(tmp_path, corpus, "lm")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export(run, "onnx", tmp_path / "exported" / "onnx")
    assert list((tmp_path / "exported").iterdir()) == []

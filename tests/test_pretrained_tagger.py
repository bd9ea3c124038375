"""Taggers on a pretrained Transformer: words read at their first (BERT) or last (GPT) piece on
tricky strings, long sentences cut into runs that fit, padding that changes nothing, the pretrained
weights really loaded, and both families learning a toy set end to end."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save_file

import nanonlp
from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.data.tagging import allowed_transitions, tag_set
from nanonlp.data.tokenizers import BPETokenizer, CharTokenizer, WordPieceTokenizer
from nanonlp.errors import NanoNLPError
from nanonlp.models.bert import BertConfig, BertEncoder
from nanonlp.models.gpt import GPT, GPTConfig
from nanonlp.models.pretrained_tagger import SHAPES, BertTagger, BertTaggerConfig, GPTTagger, GPTTaggerConfig, word_shape
from nanonlp.predict.tag import PieceReader, join_tokens, tokenize
from nanonlp.train import fit
from test_tag import TRICKY, english_file

# "carol" and "globex" only in pieces, so that first and last piece differ
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "alice", "bob", "car", "##ol", "dave", "erin", "paris", "london", "new",
         "york", "rome", "acme", "glob", "##ex", "##car", "corp", "works", "for", "in", "北", "京", "went", "home"]
TAGS = tag_set(["LOC", "ORG", "PER"], "bioes")


def bert_folder(path, max_positions=64):
    """A tiny random BERT in Hugging Face format: config.json, model.safetensors, vocab.txt."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=max_positions)
    encoder = BertEncoder(config)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({**config.__dict__, "model_type": "bert"}))
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def tagger_config(**extra):
    start, transitions, end = allowed_transitions(TAGS, "bioes")
    return dict(tags=TAGS, allowed=[start, transitions, end], **extra)


def test_word_shapes():
    shapes = [SHAPES[word_shape(w)] for w in ["apple", "Apple", "IBM", "iPhone", "2024", "北京", ".", "Ünal"]]
    assert shapes == ["lower", "title", "upper", "mixed", "digits", "other", "other", "title"]


def test_words_are_read_at_their_first_or_last_piece_on_tricky_strings(tmp_path):
    tokenizer = WordPieceTokenizer(VOCAB)
    text = "Carol  works\tfor Globex 😀 in 北京\u200b."
    spans = [(s, e) for _, s, e in tokenize(text)]
    assert [text[s:e] for s, e in spans] == ["Carol", "works", "for", "Globex", "😀", "in", "北", "京", "\u200b", "."]
    for first, expected in [(True, ["car", "works", "for", "glob", "[UNK]", "in", "北", "京", "京", "."]),
                            (False, ["##ol", "works", "for", "##ex", "[UNK]", "in", "北", "京", "京", "."])]:
        reader = PieceReader(tokenizer, BertTaggerConfig(**tagger_config()), first_piece=first, max_pieces=64)
        [((ids, positions, shapes), a, b)] = reader.units(text, spans)
        assert (a, b) == (0, len(spans)) and ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
        # the zero-width space has no piece of its own (BERT's cleaning drops it): it reads the one before
        assert [tokenizer.id_to_token(ids[p]) for p in positions] == expected
        assert shapes[:2] == [SHAPES.index("title"), SHAPES.index("lower")]
    # byte-level BPE (a GPT's): each word is read at the last piece overlapping it ("北京" is one piece, read by both characters)
    bpe = BPETokenizer.train("Carol works for Globex in Paris. 北京 is far.\n" * 50, vocab_size=300)
    reader = PieceReader(bpe, GPTTaggerConfig(**tagger_config()), first_piece=False, max_pieces=64)
    text = "Carolina  works\tfor Globexy 😀 in 北京."
    spans = [(s, e) for _, s, e in tokenize(text)]
    [((ids, positions, _), _, _)] = reader.units(text, spans)
    offsets = bpe.tokenizer.encode(text, add_special_tokens=False).offsets
    for p, (s, e) in zip(positions, spans):
        assert offsets[p][0] < e and offsets[p][1] > s and (p + 1 == len(offsets) or offsets[p + 1][0] >= e)
    assert [text[slice(*offsets[p])] for p in positions[:2]] == ["a", " works"]


def test_a_long_sentence_is_cut_into_runs_of_words_that_fit():
    tokenizer = WordPieceTokenizer(VOCAB)
    reader = PieceReader(tokenizer, BertTaggerConfig(**tagger_config()), first_piece=True, max_pieces=8)  # 6 pieces a run
    words = "Carol works for Globex in Paris and Dave went home to London .".split() + ["carol" * 5]
    text, spans = join_tokens(words, character_tokens=False)
    units = reader.units(text, spans)
    # pieces: car ##ol works for glob ##ex | in paris [UNK] dave went home | [UNK] london . | car ##ol ##car ##ol ...
    assert [(a, b) for _, a, b in units] == [(0, 4), (4, 10), (10, 13), (13, 14)]  # contiguous, every word once
    for (ids, positions, _), a, b in units:
        assert len(ids) <= 8 and ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id and len(positions) == b - a
    (ids, positions, _), _, _ = units[0]
    assert [tokenizer.id_to_token(ids[p]) for p in positions] == ["car", "works", "for", "glob"]
    (ids, positions, _), _, _ = units[-1]  # one word longer than a run: its first pieces
    assert len(ids) == 8 and tokenizer.id_to_token(ids[positions[0]]) == "car"


def test_a_long_text_is_tokenized_in_linear_time():
    tokenizer = WordPieceTokenizer(VOCAB)
    reader = PieceReader(tokenizer, BertTaggerConfig(**tagger_config()), first_piece=True, max_pieces=24)  # 22 pieces a run
    original, tokenized = reader.pieces, []
    reader.pieces = lambda text: (tokenized.append(len(text)), original(text))[1]  # count the characters tokenized
    for repeats in (100, 400):
        text = "Alice works for Globex Corp in Paris . " * repeats
        spans = [(s, e) for _, s, e in tokenize(text)]
        tokenized.clear()
        units = reader.units(text, spans)
        assert [a for _, a, _ in units] == [0] + [b for _, _, b in units[:-1]] and units[-1][2] == len(spans)  # every word once
        assert all(len(ids) <= 24 for (ids, _, _), _, _ in units)
        # each run tokenizes a slice about its own size: a few times the text in all, at any length (tokenizing
        # the whole rest of the text for each run, as before, was 21x the text at 100 repeats and 83x at 400)
        assert sum(tokenized) <= 6 * len(text)


def test_an_entity_across_a_cut_trains_as_two_whole_entities():
    from nanonlp.data.tagging import TaggedSentence, to_spans
    from nanonlp.tasks.tag import units_of

    reader = PieceReader(WordPieceTokenizer(VOCAB), BertTaggerConfig(**tagger_config()), first_piece=True, max_pieces=8)
    words = "Carol works for Globex Corp in New York".split()  # pieces: car ##ol works for glob ##ex | corp ...
    tags = ["S-PER", "O", "O", "B-ORG", "E-ORG", "O", "B-LOC", "E-LOC"]
    units = units_of(reader, [TaggedSentence(words, tags)], "bioes")
    assert [len(t) for _, t in units] == [4, 4]
    assert [t for _, t in units] == [["S-PER", "O", "O", "S-ORG"], ["S-ORG", "O", "B-LOC", "E-LOC"]]  # Globex | Corp
    start, transitions, end = allowed_transitions(TAGS, "bioes")
    index = {t: i for i, t in enumerate(TAGS)}
    for _, unit_tags in units:  # every gold sequence is one the constrained CRF can score
        ids = [index[t] for t in unit_tags]
        assert start[ids[0]] and end[ids[-1]] and all(transitions[a][b] for a, b in zip(ids, ids[1:]))
    assert len(to_spans(units[0][1], "bioes")) == 2


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_padding_does_not_change_real_positions(family):
    torch.manual_seed(0)
    if family == "bert":
        body = BertEncoder(BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32), pooler=False)
        model = BertTagger(BertTaggerConfig(**tagger_config(case_embed_dim=4, rnn_hidden=8)), body).eval()
        reader = PieceReader(WordPieceTokenizer(VOCAB), model.config, model.first_piece, model.max_pieces)
    else:  # a character GPT: no [CLS] or [SEP], causal attention, padding after the text
        tokenizer = CharTokenizer(sorted(set("Carol works for Globex Corp in New York Dave .")))
        body = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16))
        model = GPTTagger(GPTTaggerConfig(**tagger_config(case_embed_dim=4, rnn_hidden=8)), body).eval()
        reader = PieceReader(tokenizer, model.config, model.first_piece, model.max_pieces)
    short = reader.units(*join_tokens(["Carol", "works"], False))[0][0]
    long = reader.units(*join_tokens("Dave works for Globex Corp in New York .".split(), False))[0][0]
    with torch.no_grad():
        alone = model(*reader.batch([short], "cpu")[0])[0]
        together = model(*reader.batch([long, short], "cpu")[0])[0]
    assert torch.allclose(alone[0], together[1, :2], atol=1e-5)


def pretrained_config(tmp_path, data, family, init_from, out="run", **extra):
    values = {"data.path": data, "model.type": family, "tag.init_from": init_from, "model.dropout": 0.0, "train.out_dir": tmp_path / out,
              "train.max_steps": 80, "train.eval_interval": 40, "train.batch_size": 16, "train.learning_rate": 3e-3,
              "train.head_learning_rate": 1e-2, "train.warmup_steps": 0, "train.grad_clip": 1.0, "train.dtype": "float32",
              "train.device": "cpu", "train.peak_tflops": 1.0}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_config(None, ["--task=tag"] + [f"--{k}={v}" for k, v in values.items()])


def test_a_bert_tagger_learns_a_toy_set_and_tags_long_raw_text(tmp_path, capsys):
    data = english_file(tmp_path / "toy.txt")
    folder = bert_folder(tmp_path / "bert", max_positions=24)
    fit(pretrained_config(tmp_path, data, "bert", folder, model__case_embed_dim=4), quiet=True)
    saved = load_config(tmp_path / "run" / "config.yaml", allow_derived=True)
    assert saved.model.encoder["hidden_size"] == 32 and saved.model.tags == TAGS
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    texts = [TRICKY[0], "Bob works for\tGlobex Corp in Rome ."]  # a double space, a tab
    found = [[(e["text"], e["type"]) for e in r["entities"]] for r in tagger.tag(texts)]
    assert found[0] == [("Carol", "PER"), ("Acme", "ORG"), ("New York", "LOC")]
    assert found[1] == [("Bob", "PER"), ("Globex Corp", "ORG"), ("Rome", "LOC")]
    # four sentences in one text: 22 positions cannot hold them, so it is tagged in runs of words that
    # fit, each as if alone, the offsets into the whole text
    text = " ".join(texts * 2)
    spans = [(s, e) for _, s, e in tokenize(text)]
    runs = [(spans[a][0], spans[b - 1][1]) for _, a, b in tagger.reader.units(text, spans)]
    assert len(runs) >= 2 and all(len(unit[0]) <= 24 for unit, _, _ in tagger.reader.units(text, spans))
    alone = [{**e, "start": e["start"] + start, "end": e["end"] + start}
             for start, end in runs for e in tagger.tag(text[start:end])["entities"]]
    entities = tagger.tag(text)["entities"]
    assert entities == alone and len(entities) >= 10
    assert all(text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in entities)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(tagger.tag, TRICKY * 2)) == [tagger.tag(t) for t in TRICKY * 2]
    main(["eval", str(tmp_path / "run"), "--json"])
    assert json.loads(capsys.readouterr().out)["micro_f1"] == 1.0


def test_the_pretrained_body_is_what_training_starts_from_and_init_from_is_frozen(tmp_path):
    from safetensors.torch import load_file

    data = english_file(tmp_path / "toy.txt", n=40)
    folder = bert_folder(tmp_path / "bert")
    # the body barely learns (learning rate 1e-9), the new layers do: the run's body is the folder's
    fit(pretrained_config(tmp_path, data, "bert", folder, train__learning_rate=1e-9, train__min_lr=0.0, train__max_steps=10,
                          train__eval_interval=10), quiet=True)
    trained, original = load_file(str(tmp_path / "run" / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    for name in ("encoder.layer.1.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        assert torch.allclose(trained["bert." + name], original[name], atol=1e-6)
    other = bert_folder(tmp_path / "other")
    with pytest.raises(NanoNLPError, match="tag.init_from"):
        fit(pretrained_config(tmp_path, data, "bert", other, train__max_steps=20), resume=True, quiet=True)
    with pytest.raises(NanoNLPError, match="set tag.init_from"):
        fit(pretrained_config(tmp_path, data, "bert", "", out="none"), quiet=True)
    with pytest.raises(NanoNLPError, match="leave it empty"):
        fit(load_config(None, ["--task=tag", "--model.type=bilstm_crf", f"--data.path={data}", f"--tag.init_from={folder}", f"--train.out_dir={tmp_path / 'lstm'}"]),
            quiet=True)
    assert not (tmp_path / "none").exists() and not (tmp_path / "lstm").exists()  # refused before the run directory is made


def test_a_gpt_pretrained_on_raw_text_then_fine_tuned_to_tag(tmp_path, corpus):
    from conftest import tiny_overrides

    data = english_file(tmp_path / "toy.txt")
    sentences = [" ".join(line.split()[0] for line in block.splitlines()) for block in data.read_text().split("\n\n") if block.strip()]
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    fit(load_config(None, tiny_overrides(corpus, tmp_path / "lm", train__max_steps=30, model__block_size=64)), quiet=True)
    fit(pretrained_config(tmp_path, data, "gpt", tmp_path / "lm", model__rnn_hidden=16, train__max_steps=120), quiet=True)
    saved = load_config(tmp_path / "run" / "config.yaml", allow_derived=True)
    assert saved.model.gpt["block_size"] == 64
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    found = [(e["text"], e["type"]) for e in tagger.tag("Erin works for Globex Corp in Paris .")["entities"]]
    assert found == [("Erin", "PER"), ("Globex Corp", "ORG"), ("Paris", "LOC")]
    # a character the language model never saw is read as one it did, not refused
    assert tagger.tag("Ω works for Acme in Rome .")["entities"][-1]["text"] == "Rome"

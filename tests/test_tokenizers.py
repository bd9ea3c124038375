import pytest

from nanonlp.data.tokenizers import BPETokenizer, CharTokenizer, StreamDecoder, UnknownCharactersWarning, load_tokenizer
from nanonlp.errors import NanoNLPError

EDGE_CASES = [
    "",
    "   \t\n  ",
    "hello world",
    "emoji 😀🎉 and a flag 🇫🇷",
    "中文字符，还有标点。",
    "combining accents: e\u0301 a\u0300 n\u0303 (and precomposed é)",
    "mixed\r\nline\rends\n",
]

TRAIN_TEXT = "The quick brown fox jumps over the lazy dog.\n" * 50 + "Le cœur a ses raisons.\n" * 20


def test_char_round_trip_edge_cases():
    tokenizer = CharTokenizer.train("".join(EDGE_CASES))
    for text in EDGE_CASES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_char_ids_pinned():
    # sorted distinct characters of "hello world": ' ' d e h l o r w, then U+FFFD for unseen ones
    tokenizer = CharTokenizer.train("hello world")
    assert tokenizer.chars == [" ", "d", "e", "h", "l", "o", "r", "w", "\ufffd"]
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]
    assert tokenizer.encode("world") == [7, 5, 6, 4, 1]
    assert tokenizer.unk_id == 8


def test_char_unknown_character_without_an_unknown_id_is_a_clear_error():
    tokenizer = CharTokenizer(["a", "b", "c"])  # a vocabulary saved before U+FFFD was reserved
    with pytest.raises(NanoNLPError, match=r"'é' \(U\+00E9\)"):
        tokenizer.encode("abé")


def test_char_unknown_characters_beyond_five_are_counted():
    tokenizer = CharTokenizer.train("hello world")
    with pytest.warns(UnknownCharactersWarning, match=r"6 character\(s\) \(.*'ε' \(U\+03B5\) and 1 more\) this"):
        tokenizer.encode("hello αβγδεζ")
    with pytest.raises(NanoNLPError, match=r"6 character\(s\) \(.*'ε' \(U\+03B5\) and 1 more\) this .*; use only"):
        CharTokenizer(tokenizer.chars[:-1]).encode("hello αβγδεζ")


def test_bpe_round_trip_edge_cases_including_unseen_scripts():
    tokenizer = BPETokenizer.train(TRAIN_TEXT, vocab_size=300)
    for text in EDGE_CASES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_bpe_save_load_gives_identical_ids(tmp_path):
    tokenizer = BPETokenizer.train(TRAIN_TEXT, vocab_size=300)
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    for text in EDGE_CASES + [TRAIN_TEXT[:200]]:
        assert loaded.encode(text) == tokenizer.encode(text)


def test_bpe_merges_pinned_on_the_textbook_example():
    # Byte-pair encoding of "aaabdaaabac" (Gage 1994, the usual Wikipedia example): three merges
    # build "aaab", whichever order ties are broken in. 256 byte tokens come first, so the third
    # merge gets id 258.
    tokenizer = BPETokenizer.train("aaabdaaabac", vocab_size=259)
    ids = tokenizer.encode("aaabdaaabac")
    assert [tokenizer.id_to_token(i) for i in ids] == ["aaab", "d", "aaab", "a", "c"]
    assert ids[0] == ids[2] == 258
    assert tokenizer.vocab_size == 259


def test_bpe_multiline_encoding_is_lossless():
    tokenizer = BPETokenizer.train(TRAIN_TEXT, vocab_size=300)
    text = "first line\n\n  second   line  \nthird"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_stream_decoder_holds_back_partial_utf8():
    tokenizer = BPETokenizer.train(TRAIN_TEXT, vocab_size=300)
    text = "fox 😀 中文 done"
    ids = tokenizer.encode(text)
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_load_tokenizer_missing_file(tmp_path):
    with pytest.raises(NanoNLPError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)

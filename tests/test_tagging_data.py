import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from nanonlp.data.tagging import (TaggedSentence, allowed_transitions, convert, from_spans, read_conll, read_jsonl,
                                  read_tagged, repair, split_sentences, tag_set, tag_types, to_spans)
from nanonlp.errors import NanoNLPError

TYPES = ["LOC", "PER", "MISC-X"]  # a dash inside a type must survive


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _random_tags(rng, scheme, length):
    prefixes = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}[scheme]
    return [rng.choice(["O"] + [f"{p}-{t}" for p in prefixes for t in TYPES[:2]]) for _ in range(length)]


def _random_spans(rng, length):
    spans, position = [], 0
    while position < length:
        position += rng.randint(0, 2)  # entities may touch, including ones of the same type
        end = min(length, position + rng.randint(1, 3))
        if position < length:
            spans.append((position, end, rng.choice(TYPES)))
        position = end
    return spans


def _is_allowed(tags, scheme):
    names = tag_set(TYPES, scheme)
    start, transitions, end = allowed_transitions(names, scheme)
    ids = [names.index(t) for t in tags]
    return not ids or (start[ids[0]] and end[ids[-1]] and all(transitions[a][b] for a, b in zip(ids, ids[1:])))


# ---------------------------------------------------------------------------------------------------
# readers


def test_conll_sentences_docstart_and_middle_columns(tmp_path):
    path = _write(tmp_path, "train.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
                                         "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    sentences = read_conll(path)
    assert sentences == [TaggedSentence(["EU", "rejects"], ["B-ORG", "O"]),
                         TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert read_conll(path, tag_column=1)[0].tags == ["NNP", "VBZ"]  # a middle column, e.g. part of speech
    assert read_conll(path, tag_column=-2)[1].tags == ["B-NP", "I-NP"]


def test_conll_wikiann_prefix_is_stripped(tmp_path):
    path = _write(tmp_path, "wikiann.txt", "en:Sioux\tB-ORG\nen:Falls\tI-ORG\nplain\tO\n\nen:en:x\tO\n")
    sentences = read_conll(path, separator="\t", token_prefix="en:")
    assert [s.tokens for s in sentences] == [["Sioux", "Falls", "plain"], ["en:x"]]  # stripped once; others kept


def test_conll_chinese_characters_and_space_tokens_with_tab_separator(tmp_path):
    path = _write(tmp_path, "msra.txt", "中\tB-LOC\n国\tI-LOC\n\u3000\tO\n \tO\n人\tO\n\r\n北\tB-LOC\n")
    sentences = read_conll(path, separator="\t")
    assert sentences[0].tokens == ["中", "国", "\u3000", " ", "人"]
    assert sentences[0].tags == ["B-LOC", "I-LOC", "O", "O", "O"]
    assert sentences[1] == TaggedSentence(["北"], ["B-LOC"])
    # Splitting at any whitespace would lose the full-width space token: the error says which line and what to set.
    with pytest.raises(NanoNLPError, match=r"msra.txt, line 3: expected at least 2 whitespace-separated columns.*separator"):
        read_conll(path)


def test_conll_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path, "bad.txt", "EU B-ORG\nrejects\n")
    with pytest.raises(NanoNLPError, match=r"bad.txt, line 2: expected at least 2 whitespace-separated columns"):
        read_conll(path)
    path = _write(tmp_path, "short.tsv", "EU\tNNP\tB-ORG\n\nrejects\tO\n")
    with pytest.raises(NanoNLPError, match=r"short.tsv, line 3: expected at least 3 tab-separated columns"):
        read_conll(path, separator="\t", tag_column=2)
    with pytest.raises(NanoNLPError, match="token column"):
        read_conll(path, tag_column=0)


def test_empty_files_are_errors(tmp_path):
    with pytest.raises(NanoNLPError, match="is empty"):
        read_conll(_write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(NanoNLPError, match="docs.txt holds no tagged sentences"):
        read_conll(_write(tmp_path, "docs.txt", "-DOCSTART- O\n\n-DOCSTART- O\n"))
    with pytest.raises(NanoNLPError, match="is empty"):
        read_jsonl(_write(tmp_path, "empty.jsonl", ""))
    with pytest.raises(NanoNLPError, match=r"no_tokens.jsonl, line 1: the sentence has no tokens"):
        read_jsonl(_write(tmp_path, "no_tokens.jsonl", '{"tokens": [], "tags": []}\n'))


def test_jsonl_reader_and_errors(tmp_path):
    path = _write(tmp_path, "data.jsonl", '{"tokens": ["Paris", "!"], "tags": ["B-LOC", "O"]}\n\n'
                                          '{"tokens": ["Ann"], "tags": ["B-PER"], "id": 3}\n')
    assert read_jsonl(path) == [TaggedSentence(["Paris", "!"], ["B-LOC", "O"]), TaggedSentence(["Ann"], ["B-PER"])]
    mismatch = _write(tmp_path, "mismatch.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n')
    with pytest.raises(NanoNLPError, match=r"mismatch.jsonl, line 2: 2 tokens but 1 tags"):
        read_jsonl(mismatch)
    with pytest.raises(NanoNLPError, match=r"broken.jsonl, line 1: not valid JSON"):
        read_jsonl(_write(tmp_path, "broken.jsonl", '{"tokens": [\n'))
    with pytest.raises(NanoNLPError, match=r"keys.jsonl, line 1: expected an object with lists 'tokens' and 'tags'"):
        read_jsonl(_write(tmp_path, "keys.jsonl", '{"words": ["a"], "tags": ["O"]}\n'))


def test_read_tagged_dispatches_on_extension(tmp_path):
    jsonl = _write(tmp_path, "a.ndjson", '{"tokens": ["x"], "tags": ["O"]}\n')
    conll = _write(tmp_path, "a.txt", "en:x\tS-PER\n")
    assert read_tagged(jsonl) == [TaggedSentence(["x"], ["O"])]
    assert read_tagged(conll, separator="\t", token_prefix="en:") == [TaggedSentence(["x"], ["S-PER"])]
    with pytest.raises(NanoNLPError, match="a.txt, line 1: not valid JSON"):
        read_tagged(conll, format="jsonl")
    with pytest.raises(NanoNLPError, match="unknown tagged data format 'xml'"):
        read_tagged(conll, format="xml")


# ---------------------------------------------------------------------------------------------------
# schemes


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bioes"])
def test_to_spans_matches_seqeval_on_random_sequences(scheme):
    rng = random.Random(0)
    for _ in range(2000):
        tags = _random_tags(rng, scheme, rng.randint(0, 12))
        expected = [(start, end + 1, type_) for type_, start, end in get_entities(tags)]  # seqeval's ends are inclusive
        assert to_spans(tags, scheme) == sorted(expected), tags


def test_to_spans_reads_invalid_iob2_like_seqeval():
    tags = ["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC", "O", "I-LOC"]
    assert to_spans(tags, "iob2") == [(1, 3, "PER"), (3, 4, "LOC"), (4, 6, "LOC"), (7, 8, "LOC")]


def test_unknown_tag_shapes_and_schemes_are_errors():
    for tag in ["PER", "B-", "X-PER", "-PER", "b-PER"]:
        with pytest.raises(NanoNLPError, match=f"unknown tag '{tag}' for the iob2 scheme"):
            to_spans(["O", tag], "iob2")
    with pytest.raises(NanoNLPError, match="unknown tag 'E-PER' for the iob2 scheme"):
        to_spans(["B-PER", "E-PER"], "iob2")
    with pytest.raises(NanoNLPError, match="unknown tagging scheme 'bilou'"):
        to_spans(["O"], "bilou")
    with pytest.raises(NanoNLPError, match="unknown tag 'PER'"):
        tag_types([TaggedSentence(["a"], ["PER"])])


def test_convert_round_trips_on_hand_written_examples():
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-LOC", "B-ORG", "O", "B-MISC-X"]
    bioes = ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "I-LOC", "E-LOC", "S-ORG", "O", "S-MISC-X"]
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-LOC", "I-ORG", "O", "I-MISC-X"]
    assert convert(iob2, "iob2", "bioes") == bioes
    assert convert(bioes, "bioes", "iob2") == iob2
    assert convert(iob1, "iob1", "iob2") == iob2
    assert convert(iob2, "iob2", "iob1") == iob1
    # CoNLL-2003's own IOB1: B- only where two entities of one type touch.
    assert convert(["I-ORG", "O", "I-PER", "B-PER", "I-LOC"], "iob1", "iob2") == ["B-ORG", "O", "B-PER", "B-PER", "B-LOC"]


def test_repair_counts_changed_tags():
    assert repair(["O", "I-PER", "I-PER"], "iob2") == (["O", "B-PER", "I-PER"], 1)
    assert repair(["B-PER", "I-LOC", "I-LOC", "O", "I-ORG"], "iob2") == (["B-PER", "B-LOC", "I-LOC", "O", "B-ORG"], 2)
    assert repair(["B-PER", "I-PER", "O", "B-LOC"], "bioes") == (["B-PER", "E-PER", "O", "S-LOC"], 2)
    assert repair(["I-PER", "E-LOC", "S-LOC"], "bioes") == (["S-PER", "S-LOC", "S-LOC"], 2)
    assert repair(["B-PER", "I-PER", "O", "B-LOC"], "iob1") == (["I-PER", "I-PER", "O", "I-LOC"], 2)
    assert repair(["B-PER", "I-PER", "O"], "iob2") == (["B-PER", "I-PER", "O"], 0)
    assert repair([], "bioes") == ([], 0)


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bioes"])
def test_from_spans_to_spans_round_trip_and_repair_is_idempotent(scheme):
    rng = random.Random(1)
    for _ in range(500):
        length = rng.randint(0, 15)
        spans = _random_spans(rng, length)
        tags = from_spans(spans, length, scheme)
        assert len(tags) == length
        assert to_spans(tags, scheme) == spans
        assert repair(tags, scheme) == (tags, 0)
        messy = _random_tags(rng, scheme, length)
        fixed, count = repair(messy, scheme)
        assert to_spans(fixed, scheme) == to_spans(messy, scheme)
        assert count == sum(a != b for a, b in zip(messy, fixed))
        assert repair(fixed, scheme) == (fixed, 0)


def test_from_spans_rejects_overlaps_and_out_of_range():
    with pytest.raises(NanoNLPError, match="must not overlap"):
        from_spans([(0, 2, "PER"), (1, 3, "LOC")], 4)
    with pytest.raises(NanoNLPError, match="within the sentence"):
        from_spans([(2, 5, "PER")], 4)
    with pytest.raises(NanoNLPError):
        from_spans([(1, 1, "PER")], 4)


def test_tag_types_and_tag_set():
    sentences = [TaggedSentence(["a", "b"], ["B-PER", "O"]), TaggedSentence(["c"], ["S-LOC"])]
    assert tag_types(sentences) == ["LOC", "PER"]
    assert tag_set(["PER", "LOC", "PER"], "iob2") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert tag_set(["LOC"], "bioes") == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


# ---------------------------------------------------------------------------------------------------
# allowed transitions


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bioes"])
def test_valid_sequences_are_exactly_the_allowed_ones(scheme):
    rng = random.Random(2)
    for _ in range(500):
        length = rng.randint(0, 12)
        assert _is_allowed(from_spans(_random_spans(rng, length), length, scheme), scheme)
        messy = _random_tags(rng, scheme, length)
        assert _is_allowed(messy, scheme) == (repair(messy, scheme)[1] == 0), messy


@pytest.mark.parametrize("scheme, before, after", [
    ("iob2", "O", "I-PER"), ("iob2", "B-LOC", "I-PER"), ("iob2", "I-LOC", "I-PER"),
    ("bioes", "B-PER", "O"), ("bioes", "I-PER", "B-PER"), ("bioes", "B-PER", "E-LOC"), ("bioes", "E-PER", "I-PER"),
    ("bioes", "O", "E-PER"), ("bioes", "S-PER", "I-PER"), ("bioes", "I-PER", "S-PER"),
    ("iob1", "O", "B-PER"), ("iob1", "I-LOC", "B-PER"),
])
def test_specific_invalid_transitions_are_disallowed(scheme, before, after):
    names = tag_set(TYPES, scheme)
    _, transitions, _ = allowed_transitions(names, scheme)
    assert not transitions[names.index(before)][names.index(after)]


def test_start_and_end_tags():
    names = tag_set(["PER"], "bioes")  # O B I E S
    start, transitions, end = allowed_transitions(names, "bioes")
    assert start == [True, True, False, False, True]
    assert end == [True, False, False, True, True]
    assert transitions[1] == [False, False, True, True, False]  # after B-PER: I-PER or E-PER only
    start, _, end = allowed_transitions(tag_set(["PER"], "iob2"), "iob2")
    assert start == [True, True, False] and end == [True, True, True]
    start, _, end = allowed_transitions(tag_set(["PER"], "iob1"), "iob1")
    assert start == [True, False, True] and end == [True, True, True]


# ---------------------------------------------------------------------------------------------------
# splitting


def test_split_is_seeded_and_a_partition():
    sentences = [TaggedSentence([str(i)], ["O"]) for i in range(101)]
    train, dev, test = split_sentences(sentences, seed=3)
    assert (len(train), len(dev), len(test)) == (91, 5, 5)
    assert sorted(int(s.tokens[0]) for s in train + dev + test) == list(range(101))
    assert split_sentences(sentences, seed=3) == (train, dev, test)
    assert split_sentences(sentences, seed=4) != (train, dev, test)
    assert [len(p) for p in split_sentences(sentences[:10], (0.8, 0.2, 0.0))] == [8, 2, 0]
    assert [len(p) for p in split_sentences(sentences[:3], (0.5, 0.25, 0.25))] == [2, 0, 1]
    with pytest.raises(NanoNLPError, match="add up to 1"):
        split_sentences(sentences, (0.9, 0.2, 0.1))

"""Named-entity tagging data: CoNLL and JSONL readers, the IOB1 / IOB2 / BIOES schemes (spans,
conversion, repair), tag sets with the transitions a valid sequence may make (for a CRF), and a
seeded train/dev/test split. Plain Python only: no torch, no models.

A span is (start, end_exclusive, type): tokens[start:end] form one entity. Invalid tag sequences are
read the way seqeval's default (non-strict) mode reads them, so the spans here are the ones its F1 scores.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

from nanonlp.data.readers import read_cais, read_snips, read_text, split_lines
from nanonlp.errors import NanoNLPError

SCHEMES = ("iob1", "iob2", "bioes")
# The prefixes each scheme writes, in the order tag_set lists them; "O" (outside) belongs to all.
_PREFIXES = {"iob1": ("B", "I"), "iob2": ("B", "I"), "bioes": ("B", "I", "E", "S")}
_ANY_PREFIX = ("B", "I", "E", "S")

Span = tuple[int, int, str]
T = TypeVar("T")


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[str]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise NanoNLPError(f"a tagged sentence needs one tag per token, got {len(self.tokens)} tokens and {len(self.tags)} tags.")


# ---------------------------------------------------------------------------------------------------
# readers


def read_conll(path: str | Path, encoding: str = "utf-8", tag_column: int = -1, separator: str | None = None,
               token_prefix: str = "") -> list[TaggedSentence]:
    """CoNLL-style columns, one token per line: the token first, any middle columns, the tag in
    `tag_column` (default the last). Blank lines separate sentences; `-DOCSTART-` lines are skipped.

    `separator` None splits at any run of whitespace; any other string splits at exactly that string,
    which is what character-per-line Chinese files need: with "\\t", a token that is a space or a
    full-width space (U+3000) survives, where whitespace splitting would lose it. `token_prefix` is
    removed from the tokens that start with it (WikiANN writes `en:Paris\\tB-LOC`)."""
    path = Path(path)
    if tag_column == 0:
        raise NanoNLPError("tag_column 0 is the token column; the tag must be in another column (-1, the last, by default).")
    needed = tag_column + 1 if tag_column > 0 else 1 - tag_column  # the token column must stay apart from the tag's
    where = "the last column" if tag_column == -1 else f"column {tag_column + 1}" if tag_column > 0 else f"column {-tag_column} from the end"
    kind = "whitespace" if separator is None else "tab" if separator == "\t" else f"'{separator}'"
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(split_lines(read_text(path, encoding)), start=1):
        # A document marker also ends a sentence, so a file that omits the blank line after one still reads.
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append(TaggedSentence(tokens, tags))
                tokens, tags = [], []
            continue
        columns = line.split() if separator is None else line.split(separator)
        if len(columns) < needed:
            raise NanoNLPError(f"{path}, line {number}: expected at least {needed} {kind}-separated columns (the token first, "
                               f"the tag in {where}), found {len(columns)} in '{line[:40]}'; fix the line or set separator "
                               "(\"\\t\" for files whose tokens may be spaces) or tag_column.")
        token, tag = columns[0], columns[tag_column].strip()
        if token_prefix and token.startswith(token_prefix):
            token = token[len(token_prefix):] or token  # a token that is only the prefix is kept, never emptied
        if not token or not tag:
            raise NanoNLPError(f"{path}, line {number}: the {'token' if not token else 'tag'} is empty in '{line[:40]}'.")
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append(TaggedSentence(tokens, tags))
    return _non_empty(sentences, path)


def read_jsonl(path: str | Path, encoding: str = "utf-8") -> list[TaggedSentence]:
    """One JSON object per line, `{"tokens": [...], "tags": [...]}`, with one tag per token. Blank lines are skipped."""
    path = Path(path)
    sentences = []
    for number, line in enumerate(split_lines(read_text(path, encoding)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NanoNLPError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
        if not (isinstance(record, dict) and isinstance(record.get("tokens"), list) and isinstance(record.get("tags"), list)):
            raise NanoNLPError(f"{path}, line {number}: expected an object with lists 'tokens' and 'tags'.")
        tokens, tags = [str(t) for t in record["tokens"]], [str(t) for t in record["tags"]]
        if len(tokens) != len(tags):
            raise NanoNLPError(f"{path}, line {number}: {len(tokens)} tokens but {len(tags)} tags; each token needs exactly one tag.")
        if not tokens:
            raise NanoNLPError(f"{path}, line {number}: the sentence has no tokens; remove the line.")
        sentences.append(TaggedSentence(tokens, tags))
    return _non_empty(sentences, path)


def read_tagged(path: str | Path, format: str = "auto", encoding: str = "utf-8", tag_column: int = -1,
                separator: str | None = None, token_prefix: str = "") -> list[TaggedSentence]:
    """Tagged sentences from any layout; `format` auto picks jsonl for .jsonl/.ndjson, else conll.
    snips and cais are slot-filling data with intents (see nanonlp.data.readers); their slot tags are read."""
    if format in ("snips", "cais"):
        utterances = read_snips(path, encoding) if format == "snips" else read_cais(path, encoding)
        return [TaggedSentence(list(u.tokens), list(u.tags)) for u in utterances]
    if format == "auto":
        format = "jsonl" if str(path).lower().endswith((".jsonl", ".ndjson")) else "conll"
    if format == "jsonl":
        return read_jsonl(path, encoding)
    if format == "conll":
        return read_conll(path, encoding, tag_column, separator, token_prefix)
    raise NanoNLPError(f"unknown tagged data format '{format}'; use auto, conll, jsonl, snips or cais.")


def _non_empty(sentences: list[TaggedSentence], path: Path) -> list[TaggedSentence]:
    if not sentences:
        raise NanoNLPError(f"{path} holds no tagged sentences; a tagger needs at least one.")
    return sentences


# ---------------------------------------------------------------------------------------------------
# tagging schemes


def _prefixes(scheme: str) -> tuple[str, ...]:
    if scheme not in _PREFIXES:
        raise NanoNLPError(f"unknown tagging scheme '{scheme}'; use one of {', '.join(SCHEMES)}.")
    return _PREFIXES[scheme]


def _parse(tag: str, prefixes: tuple[str, ...], scheme: str) -> tuple[str, str | None]:
    """(prefix, type) of a tag; ("O", None) for outside."""
    if tag == "O":
        return "O", None
    prefix, dash, type_ = tag.partition("-")  # types may hold dashes themselves: B-MISC-X is type MISC-X
    if not dash or not type_ or prefix not in prefixes:
        shapes = ", ".join(f"{p}-TYPE" for p in prefixes)
        raise NanoNLPError(f"unknown tag '{tag}' for the {scheme} scheme; expected O or one of {shapes}.")
    return prefix, type_


def to_spans(tags: Sequence[str], scheme: str = "iob2") -> list[Span]:
    """The entities in a tag sequence, as (start, end_exclusive, type), in order.

    Invalid sequences are read as seqeval's default mode reads them: an I- (or E-) tag continues an
    open entity of its own type and otherwise starts a new one; B- and S- always start one; E- and S-
    end theirs. IOB1 and IOB2 therefore read alike (IOB1's B-X only ever splits two X entities)."""
    prefixes = _prefixes(scheme)
    spans: list[Span] = []
    start, open_type = 0, None  # the entity being read, if any
    for i, tag in enumerate(tags):
        prefix, type_ = _parse(tag, prefixes, scheme)
        continues = prefix in ("I", "E") and type_ == open_type
        if open_type is not None and not continues:
            spans.append((start, i, open_type))
            open_type = None
        if prefix != "O" and not continues:
            start, open_type = i, type_
        if prefix in ("E", "S"):
            spans.append((start, i + 1, type_))
            open_type = None
    if open_type is not None:
        spans.append((start, len(tags), open_type))
    return spans


def from_spans(spans: Sequence[Span], length: int, scheme: str = "iob2") -> list[str]:
    """The one valid tag sequence of `length` tokens holding exactly `spans` (which must not overlap)."""
    _prefixes(scheme)
    tags = ["O"] * length
    previous_end, previous_type = -1, None
    for start, end, type_ in sorted(spans):
        if not (0 <= start < end <= length) or start < previous_end or not type_:
            raise NanoNLPError(f"span {(start, end, type_)} is not a typed entity inside 0..{length} that is clear of the "
                               "previous span; spans must be non-empty, within the sentence and must not overlap.")
        if scheme == "bioes":
            tags[start:end] = [f"S-{type_}"] if end - start == 1 else [f"B-{type_}"] + [f"I-{type_}"] * (end - start - 2) + [f"E-{type_}"]
        else:
            tags[start:end] = [f"I-{type_}"] * (end - start)
            # IOB1 writes B- only where an I- would merge this entity into the one just before it.
            if scheme == "iob2" or (start == previous_end and type_ == previous_type):
                tags[start] = f"B-{type_}"
        previous_end, previous_type = end, type_
    return tags


def convert(tags: Sequence[str], source_scheme: str, target_scheme: str) -> list[str]:
    """The same entities written in another scheme (an invalid source is repaired on the way)."""
    return from_spans(to_spans(tags, source_scheme), len(tags), target_scheme)


def repair(tags: Sequence[str], scheme: str = "iob2") -> tuple[list[str], int]:
    """(valid tags of the same scheme with the entities seqeval would read, number of tags changed).

    A valid sequence comes back unchanged with 0 repairs; e.g. IOB2 O I-PER becomes O B-PER (1 repair)."""
    fixed = convert(tags, scheme, scheme)
    return fixed, sum(old != new for old, new in zip(tags, fixed))


# ---------------------------------------------------------------------------------------------------
# tag sets and the transitions a valid sequence makes


def tag_types(sentences: Sequence[TaggedSentence]) -> list[str]:
    """The entity types the sentences' tags use (PER, LOC, ...), sorted; any scheme's prefixes are accepted."""
    types = {_parse(tag, _ANY_PREFIX, "any")[1] for sentence in sentences for tag in sentence.tags}
    return sorted(t for t in types if t is not None)


def tag_set(types: Sequence[str], scheme: str = "iob2") -> list[str]:
    """Every tag of the scheme: O first, then per sorted type its prefixes in order (B, I or B, I, E, S)."""
    prefixes = _prefixes(scheme)
    return ["O"] + [f"{prefix}-{type_}" for type_ in sorted(set(types)) for prefix in prefixes]


def allowed_transitions(tags: Sequence[str], scheme: str = "iob2") -> tuple[list[bool], list[list[bool]], list[bool]]:
    """(start, transitions, end): which tag may begin a sentence, transitions[i][j] whether tags[j] may
    follow tags[i], and which tag may end a sentence, in a valid sequence of the scheme.

    A sentence reads as if padded with O on both sides, so start and end are transitions from and to O.
    IOB2: I-X only after B-X or I-X. BIOES: after B-X or I-X only I-X or E-X; after O, E- or S- only
    O, B- or S-. IOB1: B-X only right after B-X or I-X, since anywhere else it means what I-X means.
    So for every scheme, a sequence is allowed exactly when repair() leaves it unchanged."""
    prefixes = _prefixes(scheme)
    parsed = [_parse(tag, prefixes, scheme) for tag in tags]
    outside = ("O", None)

    def may_follow(previous: tuple[str, str | None], current: tuple[str, str | None]) -> bool:
        (previous_prefix, previous_type), (prefix, type_) = previous, current
        same_entity = previous_prefix != "O" and previous_type == type_
        if scheme == "bioes":
            if previous_prefix in ("B", "I"):  # a multi-token entity is open and must go on or end
                return prefix in ("I", "E") and same_entity
            return prefix in ("O", "B", "S")
        if scheme == "iob2":
            return prefix != "I" or same_entity
        return prefix != "B" or same_entity  # iob1

    start = [may_follow(outside, tag) for tag in parsed]
    transitions = [[may_follow(previous, tag) for tag in parsed] for previous in parsed]
    end = [may_follow(tag, outside) for tag in parsed]
    return start, transitions, end


# ---------------------------------------------------------------------------------------------------
# splitting a single file into train / dev / test


def split_sentences(sentences: Sequence[T], fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                    seed: int = 0) -> tuple[list[T], list[T], list[T]]:
    """A seeded shuffle cut into (train, dev, test); the same seed gives the same split.

    Sizes are rounded at the cumulative cut points (half up), so they always add up to len(sentences)
    and a zero fraction gets no sentence."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise NanoNLPError(f"split fractions {tuple(fractions)} must be three non-negative numbers (train, dev, test) that add up to 1.")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    total = len(order)
    first = min(total, math.floor(fractions[0] * total + 0.5))
    second = total if fractions[2] == 0 else min(total, math.floor((fractions[0] + fractions[1]) * total + 0.5))
    train, dev, test = ([sentences[i] for i in part] for part in (order[:first], order[first:second], order[second:]))
    return train, dev, test

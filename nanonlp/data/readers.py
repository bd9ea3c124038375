"""Readers: one function per file format, each returning plain Python data and never touching models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nanonlp.errors import NanoNLPError


def read_text(path: str | Path, encoding: str = "utf-8", key: str = "data.path") -> str:
    """The whole file as text. Undecodable bytes are an error naming the file and the byte offset.
    A pipe reads too (`--src <(zcat test.en.gz)`); `key` is the setting or option that named the
    path, for the errors."""
    path = Path(path)
    if not path.exists():
        raise NanoNLPError(f"data file '{path}' does not exist; check {key}.")
    if path.is_dir():
        raise NanoNLPError(f"data path '{path}' is a folder; point {key} at a text file.")
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise NanoNLPError(f"unknown text encoding '{encoding}'; set data.encoding to one Python knows, such as utf-8 or latin-1.") from None
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.end].hex(" ")
        raise NanoNLPError(
            f"'{path}' is not valid {encoding}: undecodable byte(s) {bad} at byte offset {err.start}; "
            f"re-encode the file as {encoding} or set data.encoding (e.g. latin-1)."
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not part of the corpus
    if not text.strip():
        raise NanoNLPError(f"'{path}' is empty (or only whitespace); point {key} at a file with text in it.")
    return text


# ---------------------------------------------------------------------------------------------------
# Penn Treebank tokens back to plain text

# Brackets and quotes as the Penn Treebank writes them (SST, PTB-style corpora), lowercased or not.
_PTB_SYMBOLS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}", "``": '"', "''": '"'}
# A clitic split off its word by a space or tab: "do n't", "it 's", "we 're", "i 've", "i 'm", "we 'll", "he 'd".
_CLITIC = re.compile(r"(?<=\S)[ \t](n't|'s|'re|'ve|'m|'ll|'d)(?=\s|$)", re.IGNORECASE)


def join_ptb_tokens(text: str) -> str:
    """Undo the parts of Penn Treebank tokenization that a pretrained encoder never saw in plain text:
    split clitics ("wo n't" -> "won't", "it 's" -> "it's"), bracket and quote symbols ("-lrb- sic -rrb-"
    -> "( sic )", "``" and "''" -> '"') and the escapes "\\/" and "\\*". Spaces around punctuation
    stay (a WordPiece tokenizer splits there anyway), and so does every run of whitespace."""
    parts = re.split(r"(\s+)", text)  # words at even positions, the whitespace between them at odd ones
    parts[::2] = [_PTB_SYMBOLS.get(word.lower(), word).replace("\\/", "/").replace("\\*", "*") for word in parts[::2]]
    return _CLITIC.sub(r"\1", "".join(parts))


# ---------------------------------------------------------------------------------------------------
# labelled texts for classification

OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Example:
    text: str
    labels: tuple[str, ...]  # one label, or several for multi-label data

    @property
    def label(self) -> str:
        return self.labels[0]


def split_lines(text: str) -> list[str]:
    """Lines ended by \n (or \r\n) only. str.splitlines would also break at form feeds, \x1c-\x1e,
    U+0085 and U+2028/9, which occur inside real sentences and would shift line-aligned files."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _lines(path: Path, encoding: str) -> list[str]:
    return split_lines(read_text(path, encoding))


def read_label_text(path: str | Path, encoding: str = "utf-8", multi_label: bool = False, separator: str = "|") -> list[Example]:
    """`LABEL TEXT` per line, as in SST-2 (`1 a charming film`)."""
    path = Path(path)
    examples = []
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            raise NanoNLPError(f"{path} line {number}: expected 'LABEL TEXT', found only '{line.strip()[:40]}'.")
        examples.append(Example(parts[1], _labels(parts[0], multi_label, separator)))
    return _non_empty(examples, path)


def read_delimited(path: str | Path, delimiter: str, text_column: str, label_column: str | None, encoding: str = "utf-8",
                   multi_label: bool = False, separator: str = "|") -> list[Example]:
    """CSV or TSV with a header row; `label_column` None reads texts only (labels left empty)."""
    import csv

    path = Path(path)
    text = read_text(path, encoding)
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    header = reader.fieldnames or []
    for column in [text_column] + ([label_column] if label_column else []):
        if column not in header:
            raise NanoNLPError(f"{path} has no column '{column}'; its columns are: {', '.join(header)}.")
    examples = []
    for number, row in enumerate(reader, start=2):
        if row.get(text_column) is None or (label_column and row.get(label_column) is None):
            raise NanoNLPError(f"{path} line {number}: the row has fewer fields than the header.")
        labels = _labels(row[label_column], multi_label, separator) if label_column else ()
        if label_column and not labels:
            raise NanoNLPError(f"{path} line {number}: the label is empty.")
        examples.append(Example(row[text_column], labels))
    return _non_empty(examples, path)


def read_jsonl(path: str | Path, text_column: str, label_column: str | None, encoding: str = "utf-8",
               multi_label: bool = False, separator: str = "|") -> list[Example]:
    """One JSON object per line; a multi-label field may be a list or a separated string."""
    import json

    path = Path(path)
    examples = []
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NanoNLPError(f"{path} line {number}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict) or text_column not in record or (label_column and label_column not in record):
            raise NanoNLPError(f"{path} line {number}: expected an object with keys '{text_column}' and '{label_column}'.")
        raw = record[label_column] if label_column else None
        if isinstance(raw, list):
            labels = tuple(str(x) for x in raw)
        else:
            labels = _labels(str(raw), multi_label, separator) if label_column else ()
        examples.append(Example(str(record[text_column]), labels))
    return _non_empty(examples, path)


def read_sms(path: str | Path, encoding: str = "utf-8") -> list[Example]:
    """The UCI SMS Spam Collection: `ham<TAB>text` or `spam<TAB>text` per line."""
    path = Path(path)
    examples = []
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or label not in ("ham", "spam"):
            raise NanoNLPError(f"{path} line {number}: expected 'ham<TAB>text' or 'spam<TAB>text'.")
        examples.append(Example(text, (label,)))
    return _non_empty(examples, path)


CLINC_SPLITS = {"train": ("train", "oos_train"), "dev": ("val", "oos_val"), "test": ("test", "oos_test")}


def read_clinc(path: str | Path, split: str = "train", encoding: str = "utf-8") -> list[Example]:
    """CLINC150 (`data_full.json`): in-scope `[text, intent]` pairs plus out-of-scope ones, labelled out_of_scope."""
    import json

    path = Path(path)
    try:
        data = json.loads(read_text(path, encoding))
    except json.JSONDecodeError as err:
        raise NanoNLPError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}).") from None
    examples = []
    for key in CLINC_SPLITS[split]:
        if key not in data:
            raise NanoNLPError(f"{path} has no '{key}' list; is it CLINC150's data_full.json?")
        for number, pair in enumerate(data[key]):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise NanoNLPError(f"{path}: item {number} of '{key}' is not a [text, intent] pair.")
            label = OUT_OF_SCOPE if key.startswith("oos") or pair[1] == "oos" else str(pair[1])
            examples.append(Example(str(pair[0]), (label,)))
    return _non_empty(examples, path)


def detect_format(path: str | Path) -> str:
    name = Path(path).name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "clinc"
    if name.startswith("smsspamcollection"):
        return "sms"
    return "label_text"


def read_examples(path: str | Path, format: str = "auto", split: str = "train", text_column: str = "text",
                  label_column: str | None = "label", encoding: str = "utf-8", multi_label: bool = False,
                  separator: str = "|") -> list[Example]:
    """Labelled texts from any supported layout; `format` auto picks one from the file name."""
    format = detect_format(path) if format == "auto" else format
    if format == "label_text":
        return read_label_text(path, encoding, multi_label, separator)
    if format in ("csv", "tsv"):
        return read_delimited(path, "," if format == "csv" else "\t", text_column, label_column, encoding, multi_label, separator)
    if format == "jsonl":
        return read_jsonl(path, text_column, label_column, encoding, multi_label, separator)
    if format == "sms":
        return read_sms(path, encoding)
    if format == "clinc":
        return read_clinc(path, split, encoding)
    raise NanoNLPError(f"unknown data format '{format}'; use label_text, csv, tsv, jsonl, clinc or sms.")


def _labels(field: str, multi_label: bool, separator: str) -> tuple[str, ...]:
    field = field.strip()
    if not multi_label:
        return (field,) if field else ()
    return tuple(label.strip() for label in field.split(separator) if label.strip())


def _non_empty(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise NanoNLPError(f"{path} holds no examples.")
    return examples


# ---------------------------------------------------------------------------------------------------
# sentence pairs for translation


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


def read_tsv_pairs(path: str | Path, source_column: int = 0, target_column: int = 1, encoding: str = "utf-8") -> list[Pair]:
    """One pair per line, tab-separated (`Go.<TAB>Va !`); columns beyond the two chosen are ignored.

    Blank lines are skipped; a line with too few columns is an error naming its line number."""
    path = Path(path)
    needed = max(source_column, target_column) + 1
    pairs = []
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < needed:
            raise NanoNLPError(f"{path}, line {number}: expected at least {needed} tab-separated columns "
                               f"(source in column {source_column + 1}, target in column {target_column + 1}), found {len(columns)}; "
                               "fix the line or set data.source_column / data.target_column.")
        pairs.append(Pair(columns[source_column].strip(), columns[target_column].strip()))
    return pairs


def read_aligned_pairs(source_path: str | Path, target_path: str | Path, encoding: str = "utf-8") -> list[Pair]:
    """Two files with one sentence per line, line i of one translating line i of the other."""
    source_lines = split_lines(read_text(source_path, encoding))
    target_lines = split_lines(read_text(target_path, encoding))
    if len(source_lines) != len(target_lines):
        raise NanoNLPError(f"'{source_path}' has {len(source_lines):,} lines but '{target_path}' has {len(target_lines):,}; "
                           "line-aligned files must have one translation per line, in the same order.")
    return [Pair(s.strip(), t.strip()) for s, t in zip(source_lines, target_lines)]


def read_texts_to_label(path: str | Path, text_column: str = "text", encoding: str = "utf-8") -> tuple[list[str], list[dict] | None]:
    """Texts to label from a .csv/.tsv file (the text_column of each row), a .jsonl file (its
    text_column key) or any other file (one text per non-blank line). Returns the texts and, for
    .csv/.tsv, the rows themselves, so the predictions can be written beside every column."""
    import csv

    name = str(path).lower()
    if name.endswith((".csv", ".tsv")):
        delimiter = "," if name.endswith(".csv") else "\t"
        texts = [e.text for e in read_delimited(path, delimiter, text_column, None, encoding)]
        with open(path, encoding=encoding, newline="") as f:
            return texts, list(csv.DictReader(f, delimiter=delimiter))
    if name.endswith((".jsonl", ".ndjson")):
        return [e.text for e in read_jsonl(path, text_column, None, encoding)], None
    return [t for t in read_text(path, encoding).splitlines() if t.strip()], None

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
    if format in ("snips", "cais"):  # the utterances' intents
        utterances = read_snips(path, encoding) if format == "snips" else read_cais(path, encoding)
        return [Example(utterance_text(u.tokens, format == "cais"), (u.intent,)) for u in utterances]
    if format in DIALOGUE_FORMATS:
        reader, speaker, context, next_turn = DIALOGUE_FORMATS[format]
        dialogues = read_sgd_turns(path, encoding) if reader == "sgd" else read_crosswoz(path, encoding)
        return _non_empty(turn_examples(dialogues, speaker, context, next_turn, join_labels=next_turn), Path(path))
    if format in FIN_FORMATS:
        return fin_examples(path, format, split, encoding)
    raise NanoNLPError(f"unknown data format '{format}'; use one of {', '.join(CLASSIFY_FORMATS[1:] + FIN_FORMATS)}.")



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


# ---------------------------------------------------------------------------------------------------
# financial sentiment and event data (the monitoring application): each file's own layout, read into
# records (text, label or score, and the entity/time fields the data has), then into Examples.

FIN_FORMATS = ("semeval_headlines", "fiqa", "fpb", "sentifm", "finfe", "finese", "finnsp", "stocknet")


def _load_json(path: Path, encoding: str):
    import json

    try:
        return json.loads(read_text(path, encoding))
    except json.JSONDecodeError as err:
        raise NanoNLPError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}).") from None


def _score(value, where: str) -> str:
    """A sentiment score as the label string of a regression example: a number, written back as read."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NanoNLPError(f"{where}: the sentiment score {value!r} is not a number.") from None
    if number != number:  # NaN
        raise NanoNLPError(f"{where}: the sentiment score is NaN.")
    return repr(number)


def read_semeval_headlines(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """SemEval-2017 Task 5 subtask 2: a JSON list of `{id, company, title, sentiment}`, sentiment in [-1, 1]."""
    path = Path(path)
    data = _load_json(path, encoding)
    if not isinstance(data, list):
        raise NanoNLPError(f"{path}: expected a JSON list of headlines ({{id, company, title, sentiment}}), found a {type(data).__name__}.")
    records = []
    for number, item in enumerate(data):
        if not isinstance(item, dict) or "title" not in item or "sentiment" not in item:
            raise NanoNLPError(f"{path}: item {number} is not an object with 'title' and 'sentiment' (SemEval-2017 Task 5 headlines).")
        records.append({"id": str(item.get("id", number)), "text": str(item["title"]), "entity": str(item.get("company", "")),
                        "label": _score(item["sentiment"], f"{path} item {number}")})
    return records


def read_fiqa_posts(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """FiQA 2018 task 1 posts: a JSON object `id -> {sentence, info: [{sentiment_score, target, ...}]}`; one
    record per (post, target), the score given as a string."""
    path = Path(path)
    data = _load_json(path, encoding)
    if not isinstance(data, dict):
        raise NanoNLPError(f"{path}: expected a JSON object of FiQA posts (id -> {{sentence, info}}), found a {type(data).__name__}.")
    records = []
    for key, item in data.items():
        if not isinstance(item, dict) or "sentence" not in item or not isinstance(item.get("info"), list) or not item["info"]:
            raise NanoNLPError(f"{path}: post '{key}' lacks 'sentence' or a non-empty 'info' list (FiQA task 1 layout).")
        for target in item["info"]:
            if not isinstance(target, dict) or "sentiment_score" not in target:
                raise NanoNLPError(f"{path}: post '{key}' has an 'info' entry without 'sentiment_score'.")
            records.append({"id": str(key), "text": str(item["sentence"]), "entity": str(target.get("target", "")),
                            "label": _score(target["sentiment_score"], f"{path} post '{key}'")})
    return records


FPB_LABELS = ("negative", "neutral", "positive")


def read_phrasebank(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """Financial PhraseBank: `SENTENCE@label` per line, label negative, neutral or positive (the last '@'
    splits: a sentence may hold one). The 50Agree file is latin-1, AllAgree UTF-8."""
    path = Path(path)
    records = []
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        text, at, label = line.rpartition("@")
        label = label.strip()
        if not at or label not in FPB_LABELS or not text.strip():
            raise NanoNLPError(f"{path} line {number}: expected 'SENTENCE@negative|neutral|positive', found '{line.strip()[:60]}'.")
        records.append({"id": str(number), "text": text.strip(), "label": label})
    return records


SENTIFM_SPLITS = {"train": "holdin", "test": "holdout"}


def read_sentifm(path: str | Path, split: str = "train", encoding: str = "utf-8") -> list[dict]:
    """SentiFM economic events (Jacobs et al. 2018): `holdin_instances`/`holdin_labels` (train) and
    `holdout_*` (test); a label is -1 (no event) or a list of event types. Records carry `labels`."""
    path = Path(path)
    if split not in SENTIFM_SPLITS:
        raise NanoNLPError(f"SentiFM has a train (holdin) and a test (holdout) split, not '{split}'; hold dev out of train.")
    data = _load_json(path, encoding)
    part = SENTIFM_SPLITS[split]
    if not isinstance(data, dict) or f"{part}_instances" not in data or f"{part}_labels" not in data:
        raise NanoNLPError(f"{path} has no '{part}_instances' and '{part}_labels'; is it SentiFM's experiment_data.json?")
    texts, labels = data[f"{part}_instances"], data[f"{part}_labels"]
    if len(texts) != len(labels):
        raise NanoNLPError(f"{path}: {len(texts)} {part} instances but {len(labels)} {part} labels; they must pair one to one.")
    records = []
    for number, (text, label) in enumerate(zip(texts, labels)):
        if label == -1:
            events = ()
        elif isinstance(label, list) and all(isinstance(x, str) for x in label):
            events = tuple(label)
        else:
            raise NanoNLPError(f"{path}: {part} label {number} is {label!r}; expected -1 (no event) or a list of event types.")
        records.append({"id": f"{part}-{number}", "text": str(text), "labels": events})
    return records


def _json_rows(path: Path, encoding: str, width: int, layout: str) -> list[tuple[int, list]]:
    """(item number, row) for a JSON list of rows of `width` fields. A row that repeats the header (as
    FinNSP's train file does once, mid-file, where two CSVs were joined) is skipped: its first field
    is 'id' (after a byte-order mark)."""
    data = _load_json(path, encoding)
    if not isinstance(data, list):
        raise NanoNLPError(f"{path}: expected a JSON list of {layout} rows, found a {type(data).__name__}.")
    rows = []
    for number, row in enumerate(data):
        if not isinstance(row, list) or len(row) != width:
            raise NanoNLPError(f"{path}: item {number} is not a list of {width} fields ({layout}).")
        if isinstance(row[0], str) and row[0].lstrip("\ufeff") == "id" and width > 2:
            continue
        rows.append((number, row))
    return rows


FINFE_LABELS = ("0", "1", "2")  # negative, neutral, positive


def read_finfe(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """FinFE (BBT-FinCUGE): a JSON list of `[text, label]`, 0 negative, 1 neutral, 2 positive."""
    path = Path(path)
    records = []
    for number, (text, label) in _json_rows(path, encoding, 2, "[text, label]"):
        if str(label) not in FINFE_LABELS:
            raise NanoNLPError(f"{path}: item {number} has label {label!r}; FinFE labels are 0, 1 and 2.")
        records.append({"id": str(number), "text": str(text), "label": str(label)})
    return records


def read_finese(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """FinESE (CCKS 2019 via BBT-FinCUGE): a JSON list of `[id, text, event_type, subject]`; the subject
    company is the record's entity ('NaN' where there is none)."""
    path = Path(path)
    records = []
    for number, (key, text, event, subject) in _json_rows(path, encoding, 4, "[id, text, event_type, subject]"):
        if not str(event).strip():
            raise NanoNLPError(f"{path}: item {number} has an empty event type.")
        subject = "" if subject in (None, "NaN") else str(subject)
        records.append({"id": str(key), "text": str(text).strip(), "label": str(event).strip(), "entity": subject})
    return records


def read_finnsp(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """FinNSP (BBT-FinCUGE): a JSON list of `[id, title, text, entities, is_negative, negative_entities]`,
    entities `;`-separated. The text is the title and the body (the title alone where they are the same)."""
    path = Path(path)
    records = []
    for number, (key, title, body, entities, negative, negative_entities) in _json_rows(
            path, encoding, 6, "[id, title, text, entities, is_negative, negative_entities]"):
        if str(negative) not in ("0", "1"):
            raise NanoNLPError(f"{path}: item {number} has is_negative {negative!r}; expected 0 or 1.")
        title, body = str(title or "").strip(), str(body or "").strip()
        text = body if not title or title == body or body.startswith(title) else f"{title}\n{body}"
        if not text:
            raise NanoNLPError(f"{path}: item {number} has neither a title nor a text.")
        split = lambda field: [e.strip() for e in str(field or "").split(";") if e.strip()]  # noqa: E731
        records.append({"id": str(key), "text": text, "label": str(negative), "entities": split(entities),
                        "negative_entities": split(negative_entities)})
    return records


def read_stocknet(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """stocknet tweets: JSON lines `{"id", "time", "ticker", "text"}` (no labels); the ticker is the entity."""
    import json

    path = Path(path)
    records = []
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NanoNLPError(f"{path} line {number}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict) or not all(k in record for k in ("id", "time", "ticker", "text")):
            raise NanoNLPError(f"{path} line {number}: expected an object with keys id, time, ticker and text (stocknet tweets).")
        records.append({"id": str(record["id"]), "time": str(record["time"]), "entity": str(record["ticker"]), "text": str(record["text"])})
    return records


def read_fin_records(path: str | Path, format: str, split: str = "train", encoding: str = "utf-8") -> list[dict]:
    """The records of a financial data set in one of FIN_FORMATS: dicts with `text`, `label` (a class,
    or a score for regression data) or `labels` (multi-label), and `entity`/`entities`/`time` where
    the data has them."""
    readers = {"semeval_headlines": read_semeval_headlines, "fiqa": read_fiqa_posts, "fpb": read_phrasebank,
               "finfe": read_finfe, "finese": read_finese, "finnsp": read_finnsp, "stocknet": read_stocknet}
    if format == "sentifm":
        records = read_sentifm(path, split, encoding)
    elif format in readers:
        records = readers[format](path, encoding)
    else:
        raise NanoNLPError(f"unknown financial data format '{format}'; use one of {', '.join(FIN_FORMATS)}.")
    if not records:
        raise NanoNLPError(f"{path} holds no examples.")
    return records


def fin_examples(path: str | Path, format: str, split: str = "train", encoding: str = "utf-8") -> list[Example]:
    records = read_fin_records(path, format, split, encoding)
    if format == "stocknet":
        return [Example(r["text"], ()) for r in records]
    return [Example(r["text"], tuple(r["labels"]) if "labels" in r else (r["label"],)) for r in records]

# spoken-language understanding and dialogue data (the assistant's benchmarks)


@dataclass(frozen=True)
class SlotUtterance:
    """One utterance with a slot tag per token and its intent (SNIPS, CAIS)."""
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    intent: str


def _token_and_tag(line: str, path: Path, number: int) -> tuple[str, str]:
    """`TOKEN TAG` split at the last space, so that a token which is itself a space (CAIS writes
    `' ' O` for the space inside "Taylor Swift") survives."""
    token, space, tag = line.rpartition(" ")
    if not space:
        token, space, tag = line.rpartition("\t")
    if not space or not token or not tag.strip():
        raise NanoNLPError(f"{path}, line {number}: expected 'TOKEN TAG', found '{line[:40]}'.")
    return token, tag.strip()


def read_snips(path: str | Path, encoding: str = "utf-8") -> list[SlotUtterance]:
    """SNIPS as StackPropagation-SLU writes it: one `TOKEN TAG` (BIO) per line, then the intent alone
    on a line, then a blank line."""
    path = Path(path)
    utterances, tokens, tags = [], [], []
    lines = split_lines(read_text(path, encoding))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if tokens:
                raise NanoNLPError(f"{path}, line {number}: the utterance before this blank line has no intent line; "
                                   "each utterance ends with its intent alone on a line.")
            continue
        if " " not in line.strip() and "\t" not in line.strip():  # the intent line ends the utterance
            if not tokens:
                raise NanoNLPError(f"{path}, line {number}: intent '{line.strip()[:40]}' follows no tokens; expected 'TOKEN TAG' lines first.")
            utterances.append(SlotUtterance(tuple(tokens), tuple(tags), line.strip()))
            tokens, tags = [], []
            continue
        token, tag = _token_and_tag(line.strip(), path, number)
        tokens.append(token)
        tags.append(tag)
    if tokens:
        raise NanoNLPError(f"{path}, line {len(lines)}: the last utterance has no intent line; end it with its intent alone on a line.")
    if not utterances:
        raise NanoNLPError(f"{path} holds no utterances.")
    return utterances


def read_cais(path: str | Path, encoding: str = "utf-8", intent_path: str | Path | None = None) -> list[SlotUtterance]:
    """CAIS as CM-Net ships it: one `CHARACTER TAG` (BIOES) per line, a blank line between utterances,
    and the intents in `<path>.intent`, one a line in the same order."""
    path = Path(path)
    intent_path = Path(intent_path) if intent_path is not None else path.with_name(path.name + ".intent")
    if not intent_path.is_file():
        raise NanoNLPError(f"CAIS data '{path}' needs its intents in '{intent_path}' (one intent a line, in the utterances' order).")
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(split_lines(read_text(path, encoding)), start=1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        token, tag = _token_and_tag(line, path, number)
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    intents = [line.strip() for line in split_lines(read_text(intent_path, encoding, "the CAIS .intent file"))]
    while intents and not intents[-1]:
        intents.pop()
    for number, intent in enumerate(intents, start=1):
        if not intent or " " in intent:
            raise NanoNLPError(f"{intent_path}, line {number}: expected one intent name, found '{intent[:40]}'.")
    if len(intents) != len(sentences):
        raise NanoNLPError(f"'{path}' holds {len(sentences):,} utterances but '{intent_path}' has {len(intents):,} intents; "
                           "the .intent file needs one line per utterance, in the same order.")
    return [SlotUtterance(tuple(t), tuple(g), intent) for (t, g), intent in zip(sentences, intents)]


def utterance_text(tokens, character_tokens: bool) -> str:
    """The text of a token list: Chinese characters joined as they are, words with spaces."""
    return "".join(tokens) if character_tokens else " ".join(tokens)


@dataclass(frozen=True)
class QuestionPair:
    first: str
    second: str
    same: bool  # the two questions ask the same thing


def read_question_pairs(path: str | Path, encoding: str = "utf-8") -> list[QuestionPair]:
    """`QUESTION1<TAB>QUESTION2<TAB>LABEL` per line, label 1 (same question) or 0 (AFQMC, LCQMC)."""
    path = Path(path)
    pairs = []
    for number, line in enumerate(split_lines(read_text(path, encoding)), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 3 or columns[2].strip() not in ("0", "1"):
            raise NanoNLPError(f"{path}, line {number}: expected 'QUESTION1<TAB>QUESTION2<TAB>LABEL' with label 0 or 1, "
                               f"found {len(columns)} column(s) in '{line[:40]}'.")
        if not columns[0].strip() or not columns[1].strip():
            raise NanoNLPError(f"{path}, line {number}: a question is empty.")
        pairs.append(QuestionPair(columns[0].strip(), columns[1].strip(), columns[2].strip() == "1"))
    if not pairs:
        raise NanoNLPError(f"{path} holds no question pairs.")
    return pairs


@dataclass(frozen=True)
class Turn:
    speaker: str  # "user" or "system"
    text: str
    labels: tuple[str, ...]  # SGD: the user's active intent, or the system's act types; CrossWOZ: the turn's acts
    services: tuple[str, ...] = ()  # SGD: the dialogue's services (Restaurants_2, ...)


@dataclass(frozen=True)
class Dialogue:
    id: str
    turns: tuple[Turn, ...]


SGD_HEADER = ["dialogue_id", "turn", "speaker", "service", "intent_or_acts", "utterance"]


def read_sgd_turns(path: str | Path, encoding: str = "utf-8") -> list[Dialogue]:
    """Schema-Guided Dialogue flattened to one turn a line: a TSV with header
    `dialogue_id turn speaker service intent_or_acts utterance`; USER rows carry the active intent
    (NONE when there is none), SYSTEM rows the comma-separated dialogue act types."""
    path = Path(path)
    lines = split_lines(read_text(path, encoding))
    if lines[0].split("\t") != SGD_HEADER:
        raise NanoNLPError(f"{path}, line 1: expected the header '{' '.join(SGD_HEADER)}' (tab-separated), found '{lines[0][:60]}'.")
    dialogues: dict[str, list[Turn]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 6:
            raise NanoNLPError(f"{path}, line {number}: expected 6 tab-separated columns, found {len(columns)}.")
        dialogue_id, turn, speaker, services, labels, text = columns
        if speaker not in ("USER", "SYSTEM"):
            raise NanoNLPError(f"{path}, line {number}: speaker '{speaker[:20]}' is neither USER nor SYSTEM.")
        turns = dialogues.setdefault(dialogue_id, [])
        if not turn.isdigit() or int(turn) != len(turns):
            raise NanoNLPError(f"{path}, line {number}: turn '{turn[:10]}' of dialogue {dialogue_id} should be {len(turns)} "
                               "(the turns of a dialogue come in order, from 0, on consecutive lines).")
        if not labels.strip():
            raise NanoNLPError(f"{path}, line {number}: the intent_or_acts column is empty.")
        turns.append(Turn(speaker.lower(), text, tuple(labels.split(",")) if speaker == "SYSTEM" else (labels,),
                          tuple(services.split(","))))
    if not dialogues:
        raise NanoNLPError(f"{path} holds no turns.")
    return [Dialogue(d, tuple(turns)) for d, turns in dialogues.items()]


def read_crosswoz(path: str | Path, encoding: str = "utf-8") -> list[Dialogue]:
    """CrossWOZ: a JSON object (or a zip holding one JSON file) mapping dialogue id to
    `{messages: [{role: usr|sys, content, dialog_act: [[intent, domain, slot, value], ...]}, ...]}`.
    A turn's labels are its acts as `intent-domain-slot` (values left out), each once, sorted."""
    import json
    import zipfile

    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".json")]
            if len(members) != 1:
                raise NanoNLPError(f"{path} should hold one .json file; it holds {len(members)}.")
            raw = archive.read(members[0])
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as err:
            raise NanoNLPError(f"{path}:{members[0]} is not valid {encoding} (byte offset {err.start}).") from None
        where = f"{path}:{members[0]}"
    else:
        text, where = read_text(path, encoding), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise NanoNLPError(f"{where} is not valid JSON (line {err.lineno}: {err.msg}).") from None
    if not isinstance(data, dict) or not data:
        raise NanoNLPError(f"{where}: expected a JSON object mapping dialogue ids to dialogues.")
    dialogues = []
    for dialogue_id, dialogue in data.items():
        messages = dialogue.get("messages") if isinstance(dialogue, dict) else None
        if not isinstance(messages, list):
            raise NanoNLPError(f"{where}: dialogue {dialogue_id} has no 'messages' list.")
        turns = []
        for number, message in enumerate(messages):
            if not (isinstance(message, dict) and message.get("role") in ("usr", "sys") and isinstance(message.get("content"), str)
                    and isinstance(message.get("dialog_act"), list)):
                raise NanoNLPError(f"{where}: dialogue {dialogue_id}, message {number}: expected role usr or sys, "
                                   "a content string and a dialog_act list.")
            acts = set()
            for act in message["dialog_act"]:
                if not (isinstance(act, list) and len(act) == 4):
                    raise NanoNLPError(f"{where}: dialogue {dialogue_id}, message {number}: an act is not [intent, domain, slot, value].")
                acts.add(f"{act[0]}-{act[1]}-{act[2]}")
            turns.append(Turn("user" if message["role"] == "usr" else "system", message["content"], tuple(sorted(acts))))
        dialogues.append(Dialogue(str(dialogue_id), tuple(turns)))
    return dialogues


CONTEXT_TURNS = 3  # previous turns a context-reading example keeps (most recent first)
CONTEXT_MARK = " ||| "  # between the turn and its context, and between context turns


def turn_examples(dialogues: list[Dialogue], speaker: str, context_turns: int = 0, predict_next: bool = False,
                  join_labels: bool = False) -> list[Example]:
    """One classification example per turn of `speaker`: the turn's text and labels, or with
    `predict_next` the labels of the turn that follows it (the system's next acts after a user turn).
    With `context_turns`, the text is followed by that many previous turns, most recent first, each
    after CONTEXT_MARK, so that truncation drops the oldest first and the turn itself is never cut."""
    examples = []
    for dialogue in dialogues:
        for i, turn in enumerate(dialogue.turns):
            if turn.speaker != speaker:
                continue
            target = turn
            if predict_next:
                if i + 1 >= len(dialogue.turns):
                    continue
                target = dialogue.turns[i + 1]
            context = [t.text for t in reversed(dialogue.turns[max(0, i - context_turns) : i])] if context_turns else []
            labels = target.labels or ("none",)
            examples.append(Example(CONTEXT_MARK.join([turn.text] + context), (",".join(labels),) if join_labels else labels))
    return examples


# Dialogue turns as classification examples: format -> (reader, speaker, context turns, label of the next turn).
DIALOGUE_FORMATS = {
    "sgd_intent": ("sgd", "user", 0, False),  # the user's active intent from the turn alone
    "sgd_intent_context": ("sgd", "user", CONTEXT_TURNS, False),  # ... and from the previous turns too
    "sgd_next_act": ("sgd", "user", CONTEXT_TURNS, True),  # the system's next act types, after the user turn and its context
    "crosswoz_acts": ("crosswoz", "user", 0, False),  # the user's acts (intent-domain-slot; multi-label) from the turn alone
    "crosswoz_acts_context": ("crosswoz", "user", CONTEXT_TURNS, False),  # ... and from the previous turns too
}
CLASSIFY_FORMATS = ("auto", "label_text", "csv", "tsv", "jsonl", "clinc", "sms", "snips", "cais", *DIALOGUE_FORMATS)

"""Documents in: CSV, TSV and JSON-lines files (or a glob of them), read as a stream of batches.

Each row becomes a `Document` with its file and line, so that a malformed row can be named: a row
without the text field, a time that does not parse, a line that is not JSON, undecodable bytes.
With `on_error="stop"` the first one stops the run with that sentence; with "skip" it is reported
(one line on stderr each, and counted) and the stream goes on.
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterator

from nanonlp.errors import NanoNLPError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class Document:
    id: str
    text: str
    time: datetime | None = None
    source: str | None = None
    entities: list[str] = field(default_factory=list)
    file: str = ""
    line: int = 0


class MalformedRow(NanoNLPError):
    pass


def expand(patterns: list[str]) -> list[Path]:
    """The files named by paths or globs, in order, each once; a pattern matching nothing is an error."""
    out: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise NanoNLPError(f"no file matches '{pattern}'.")
        for name in matched:
            path = Path(name)
            if not path.is_file():
                raise NanoNLPError(f"input '{path}' does not exist or is not a file.")
            if path.suffix.lower() not in FORMATS:
                raise NanoNLPError(f"input '{path}' is not .csv, .tsv or .jsonl; rename it or convert it.")
            if path not in out:
                out.append(path)
    if not out:
        raise NanoNLPError("no input files given.")
    return out


def parse_time(value) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text (a date alone is midnight UTC) or Unix seconds; None for empty."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    text = str(value).strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), tz=timezone.utc)
        moment = datetime.fromisoformat(text.replace(" UTC", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"time '{text[:40]}' is not ISO 8601 (2016-03-31T14:05:00Z) or Unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class _Lines:
    """The file's lines decoded one at a time, counting physical lines; a line that is not UTF-8 is
    decoded with replacement characters and its number remembered, so the record holding it is
    reported (and skipped) by number rather than the whole file failing at a buffer boundary."""

    def __init__(self, raw):
        self.raw, self.number, self.bad = raw, 0, {}

    def __iter__(self):
        for line in self.raw:
            self.number += 1
            if self.number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as err:
                self.bad[self.number] = err.reason
                yield line.decode("utf-8", errors="replace")


def _rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row mapping or None, problem or None) for each record of the file."""
    kind = FORMATS[path.suffix.lower()]
    with open(path, "rb") as raw:
        lines = _Lines(raw)
        if kind == "jsonl":
            for line in lines:
                number = lines.number
                if number in lines.bad:
                    yield number, None, f"bytes that are not UTF-8 ({lines.bad[number]})"
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    yield number, None, f"not JSON ({err.msg} at column {err.colno})"
                    continue
                yield (number, row, None) if isinstance(row, dict) else (number, None, "a JSON value that is not an object")
            return
        reader = csv.reader(lines, delimiter="," if kind == "csv" else "\t")
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield 1, None, f"an unreadable header ({err})"
            return
        if 1 in lines.bad:
            yield 1, None, f"a header with bytes that are not UTF-8 ({lines.bad[1]})"
            return
        while True:
            first = lines.number + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield lines.number, None, f"unreadable CSV ({err})"
                continue
            bad = [n for n in range(first, lines.number + 1) if n in lines.bad]
            if bad:
                yield bad[0], None, f"bytes that are not UTF-8 ({lines.bad[bad[0]]})"
                continue
            if not values:
                continue
            if len(values) != len(header):
                yield first, None, f"{len(values)} fields where the header has {len(header)}"
                continue
            yield first, dict(zip(header, values)), None


def read_documents(patterns: list[str], fields, on_error: str = "stop", errors: list | None = None) -> Iterator[Document]:
    """Every document of the files, one at a time (nothing held but the current row). Malformed rows
    are appended to `errors` as (file, line, problem) when skipped."""
    if on_error not in ("stop", "skip"):
        raise NanoNLPError(f"on_error must be stop or skip, got '{on_error}'.")
    for path in expand(patterns):
        for number, row, problem in _rows(path):
            document = None
            if problem is None:
                try:
                    document = _document(row, fields, path, number)
                except ValueError as err:
                    problem = str(err)
            if problem is not None:
                message = f"{path}, line {number}: {problem}"
                if on_error == "stop":
                    raise MalformedRow(f"{message}; fix the row, or pass --on-error skip to skip such rows.")
                print(f"warning: skipped {message}", file=sys.stderr)
                if errors is not None:
                    errors.append({"file": str(path), "line": number, "problem": problem})
                continue
            yield document


def _document(row: dict, fields, path: Path, number: int) -> Document:
    text = row.get(fields.text)
    if text is None:
        raise ValueError(f"no '{fields.text}' field (the text field; name another with --text-field)")
    if not isinstance(text, str):
        raise ValueError(f"the '{fields.text}' field is not a string")
    moment = None
    if fields.time:
        if fields.time not in row:
            raise ValueError(f"no '{fields.time}' field (the time field)")
        moment = parse_time(row[fields.time])
        if moment is None:
            raise ValueError(f"an empty '{fields.time}' field (the time field)")
    entities: list[str] = []
    if fields.entity:
        value = row.get(fields.entity)
        values = value if isinstance(value, list) else str(value or "").split(fields.entity_separator)
        entities = list(dict.fromkeys(" ".join(str(v).split()) for v in values if str(v).strip()))
    identity = row.get(fields.id) if fields.id else None
    source = row.get(fields.source) if fields.source else None
    return Document(id=str(identity) if identity not in (None, "") else f"{path.name}:{number}", text=text, time=moment,
                    source=None if source in (None, "") else str(source), entities=entities, file=str(path), line=number)


def batches(documents, size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def period_of(moment: datetime | None, period: str) -> date | None:
    """The first day of the period holding `moment`: the day itself, or the Monday of its ISO week."""
    if moment is None or period == "all":
        return None
    day = moment.date()
    if period == "week":
        return date.fromordinal(day.toordinal() - day.weekday())
    return day

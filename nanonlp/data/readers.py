"""Readers: one function per file format, each returning plain Python data and never touching models."""

from __future__ import annotations

from pathlib import Path

from nanonlp.errors import NanoNLPError


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole file as text. Undecodable bytes are an error naming the file and the byte offset."""
    path = Path(path)
    if not path.exists():
        raise NanoNLPError(f"data file '{path}' does not exist; check data.path.")
    if not path.is_file():
        raise NanoNLPError(f"data path '{path}' is not a file; point data.path at a text file.")
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
        raise NanoNLPError(f"'{path}' is empty (or only whitespace); a language model needs text to learn from.")
    return text

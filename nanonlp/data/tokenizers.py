"""Tokenizers: characters, and byte-level BPE trained with Hugging Face `tokenizers`.

Every tokenizer has `vocab_size`, `encode(text) -> ids`, `decode(ids) -> text`, `save(folder)`,
and is rebuilt by `load_tokenizer(folder)` from the one file it writes, `tokenizer.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanonlp.errors import NanoNLPError

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order (char-rnn's vocabulary)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.index})
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:5])
            raise NanoNLPError(
                f"the text contains {len(unknown)} character(s) this character-level model never saw in training: "
                f"{shown}; use only characters from the training corpus."
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, folder: str | Path) -> None:
        from nanonlp.checkpoint import atomic_write_text

        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): any text encodes, since every byte is in the base vocabulary."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(_chunks(text), trainer=trainer, length=None)
        return cls(tokenizer)

    @classmethod
    def from_huggingface(cls, folder: str | Path) -> "BPETokenizer":
        """A GPT-2 style tokenizer from `tokenizer.json`, or from `vocab.json` and `merges.txt`."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        folder = Path(folder)
        if (folder / TOKENIZER_FILE).is_file():
            return cls(Tokenizer.from_file(str(folder / TOKENIZER_FILE)))
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            return cls(tokenizer)
        raise NanoNLPError(f"'{folder}' has no tokenizer.json, nor vocab.json and merges.txt; it needs GPT-2 tokenizer files.")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        # Encode line by line in parallel (Rust threads); byte-level BPE is lossless, so the
        # concatenated ids decode back to exactly the input.
        lines = text.splitlines(keepends=True)
        if len(lines) == 1:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for encoding in self.tokenizer.encode_batch(lines, add_special_tokens=False):
            ids.extend(encoding.ids)
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.tokenizer.id_to_token(i)

    def save(self, folder: str | Path) -> None:
        from nanonlp.checkpoint import atomic_write_text

        atomic_write_text(Path(folder) / TOKENIZER_FILE, self.tokenizer.to_str())


def _chunks(text: str, lines_per_chunk: int = 1000):
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), lines_per_chunk):
        yield "".join(lines[i : i + lines_per_chunk])


def train_tokenizer(kind: str, text: str, vocab_size: int):
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise NanoNLPError(f"unknown tokenizer '{kind}'; use char or bpe.")


def load_tokenizer(folder: str | Path):
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise NanoNLPError(f"'{folder}' has no {TOKENIZER_FILE}; is it a nanonlp run directory?")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("type") == "char":
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(path.read_text(encoding="utf-8")))


class StreamDecoder:
    """Turns ids arriving one at a time into text, holding back bytes of an unfinished character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        # A byte-level token can end inside a multi-byte UTF-8 character; wait for the rest.
        if text.endswith("\ufffd") and len(self.pending) < 8:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text

"""Tokenizers: characters, byte-level BPE trained with Hugging Face `tokenizers`, and BERT's WordPiece.

Every tokenizer has `vocab_size`, `encode(text) -> ids`, `decode(ids) -> text`, `save(folder)`,
and is rebuilt by `load_tokenizer(folder)` from `tokenizer.json` (WordPiece also writes vocab.txt).
"""

from __future__ import annotations

import json
from pathlib import Path

from nanonlp.errors import NanoNLPError

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order (char-rnn's vocabulary)."""

    kind = "char"
    pad_id = 0  # no id is reserved; classification masks padding out, so any id serves

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
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise NanoNLPError(
                f"the text contains {len(unknown)} character(s) this character-level model never saw in training: "
                f"{shown}{more}; use only characters from the training corpus."
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, folder: str | Path) -> None:
        from nanonlp.io import atomic_write_text

        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): any text encodes, since every byte is in the base vocabulary."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: tuple[str, ...] = ()) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=list(special_tokens),  # first ids, e.g. <pad> = 0 for classification batches
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

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.token_to_id("<pad>")
        return 0 if pad is None else pad  # GPT-2 vocabularies have no pad; masks keep it out of the way

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

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many single-line texts at once (Rust threads)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.tokenizer.id_to_token(i)

    def token_id(self, token: str) -> int:
        """The id of a special token such as <s>; an error if the vocabulary lacks it."""
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise NanoNLPError(f"the BPE vocabulary has no {token} token; it was not trained with the special tokens this task needs.")
        return i

    def save(self, folder: str | Path) -> None:
        from nanonlp.io import atomic_write_text

        atomic_write_text(Path(folder) / TOKENIZER_FILE, self.tokenizer.to_str())


class WordTokenizer:
    """Words (and optionally hashed word n-grams, as in fastText) for the from-scratch classifiers.

    Ids: 0 is padding, 1 unknown words, then the vocabulary by descending frequency; with ngrams > 1,
    every n-gram of 2..ngrams words adds one id in [len(words), len(words) + buckets), by a stable hash.
    """

    kind = "word"
    pad_id, unk_id = 0, 1
    PATTERN = r"\w+(?:'\w+)?|[^\w\s]"

    def __init__(self, words: list[str], lowercase: bool = True, ngrams: int = 1, buckets: int = 0):
        self.words, self.lowercase, self.ngrams, self.buckets = list(words), lowercase, ngrams, buckets
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def train(cls, texts, vocab_size: int, min_freq: int = 1, lowercase: bool = True, ngrams: int = 1, buckets: int = 0):
        from collections import Counter

        counts = Counter()
        probe = cls(["<pad>", "<unk>"], lowercase)
        for text in texts:
            counts.update(probe.split(text))
        kept = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq][: max(0, vocab_size - 2)]
        return cls(["<pad>", "<unk>"] + kept, lowercase, ngrams, buckets if ngrams > 1 else 0)

    @property
    def vocab_size(self) -> int:
        return len(self.words) + self.buckets

    def split(self, text: str) -> list[str]:
        import re

        return re.findall(self.PATTERN, text.lower() if self.lowercase else text)

    def encode(self, text: str) -> list[int]:
        import zlib

        tokens = self.split(text)
        ids = [self.index.get(t, self.unk_id) for t in tokens]
        for n in range(2, self.ngrams + 1):
            for i in range(len(tokens) - n + 1):
                # crc32, not hash(): Python salts str hashes per process, and ids must be stable.
                ids.append(len(self.words) + zlib.crc32(" ".join(tokens[i : i + n]).encode("utf-8")) % self.buckets)
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids if 0 < i < len(self.words))

    def save(self, folder: str | Path) -> None:
        from nanonlp.io import atomic_write_text

        data = {"type": "word", "lowercase": self.lowercase, "ngrams": self.ngrams, "buckets": self.buckets, "words": self.words}
        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps(data, ensure_ascii=False))


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
    if data.get("type") == "word":
        return WordTokenizer(data["words"], data["lowercase"], data["ngrams"], data["buckets"])
    if data.get("type") == "wordpiece":
        vocab = WordPieceTokenizer.read_vocab(folder)  # vocab.txt beside tokenizer.json
        return WordPieceTokenizer(vocab, data["lowercase"], data["strip_accents"], data["chinese_chars"])
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


class WordPieceTokenizer:
    """BERT's WordPiece (Wu et al. 2016; Devlin et al. 2019) over a pretrained vocab.txt.

    Built on Hugging Face `tokenizers` exactly as BERT's tokenizer is: clean and (optionally)
    lowercase and strip accents, put spaces around CJK characters, split on whitespace and
    punctuation, then split each word greedily into the longest pieces in the vocabulary ("##"
    marks a piece that continues a word; a word with no split, or longer than 100 characters,
    becomes [UNK]). `encode` wraps the ids in [CLS] ... [SEP]. Line i of vocab.txt is id i.
    """

    kind = "wordpiece"
    VOCAB_FILE = "vocab.txt"
    SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, vocab: list[str], lowercase: bool = True, strip_accents: bool | None = None,
                 chinese_chars: bool = True):
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

        self.vocab = list(vocab)  # line i of vocab.txt, i.e. the token with id i
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents  # BERT's rule when unset
        self.chinese_chars = chinese_chars
        index = {token: i for i, token in enumerate(self.vocab)}  # a repeated line keeps its last id, as in BERT
        needed = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in index]
        if needed:
            raise NanoNLPError(f"the WordPiece vocabulary lacks {', '.join(needed)}; use a BERT-style vocab.txt.")
        self.tokenizer = Tokenizer(models.WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=100))
        self.tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=self.strip_accents, lowercase=lowercase
        )
        self.tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.tokenizer.decoder = decoders.WordPiece(prefix="##")
        # "[MASK]" written in a text is the mask token, not "[", "mask", "]".
        self.tokenizer.add_special_tokens([t for t in self.SPECIAL_TOKENS if t in index])
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (index[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"))
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> "WordPieceTokenizer":
        """A BERT tokenizer from vocab.txt, lowercasing per tokenizer_config.json's do_lower_case (default true)."""
        folder = Path(folder)
        vocab = cls.read_vocab(folder)
        options = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            options = json.loads(config_path.read_text(encoding="utf-8"))
        lowercase = options.get("do_lower_case", options.get("lowercase", True))
        chinese_chars = options.get("tokenize_chinese_chars", options.get("chinese_chars", True))
        return cls(vocab, lowercase=bool(lowercase), strip_accents=options.get("strip_accents"),
                   chinese_chars=bool(chinese_chars))

    @classmethod
    def read_vocab(cls, folder: str | Path) -> list[str]:
        """The tokens of folder/vocab.txt, one a line, in id order."""
        vocab_path = Path(folder) / cls.VOCAB_FILE
        if not vocab_path.is_file():
            raise NanoNLPError(f"'{folder}' has no {cls.VOCAB_FILE}; a WordPiece tokenizer needs a BERT-style vocabulary file.")
        lines = vocab_path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line.rstrip() for line in lines]  # trailing whitespace ("\r" of Windows files) is not part of a token

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids  # [CLS] ... [SEP]

    def encode_batch(self, texts: list[str], max_length: int):
        """Ids (B, T) padded with pad_id, and attention_mask (B, T) of 1/0; T <= max_length.

        A text longer than max_length keeps its first max_length - 2 tokens between [CLS] and [SEP].
        """
        import torch

        if max_length < 2:
            raise NanoNLPError(f"max_length must be at least 2 to hold [CLS] and [SEP], got {max_length}.")
        rows = []
        for encoding in self.tokenizer.encode_batch(list(texts)):
            ids = encoding.ids
            rows.append(ids if len(ids) <= max_length else ids[: max_length - 1] + [self.sep_id])
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return ids, attention_mask

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def save(self, folder: str | Path) -> None:
        """Write vocab.txt and a tokenizer.json saying how to read it, for load_tokenizer."""
        from nanonlp.io import atomic_write_text

        description = {"type": "wordpiece", "lowercase": self.lowercase,
                       "strip_accents": self.strip_accents, "chinese_chars": self.chinese_chars}
        atomic_write_text(Path(folder) / self.VOCAB_FILE, "".join(token + "\n" for token in self.vocab))
        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps(description, indent=2) + "\n")

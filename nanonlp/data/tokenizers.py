"""Tokenizers: characters, byte-level BPE trained with Hugging Face `tokenizers`, and BERT's WordPiece.

Every tokenizer has `vocab_size`, `encode(text) -> ids`, `decode(ids) -> text`, `save(folder)`,
and is rebuilt by `load_tokenizer(folder)` from `tokenizer.json` (WordPiece also writes vocab.txt).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import threading
import warnings
from functools import lru_cache
from pathlib import Path

from nanonlp.errors import NanoNLPError

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order (char-rnn's vocabulary),
    plus U+FFFD, the replacement character, which stands for every character training never saw.

    A text with unseen characters encodes with them as U+FFFD and one warning naming them, so that a
    Chinese prompt with a rare character still runs. A vocabulary saved before U+FFFD was reserved
    has no unknown id: there an unseen character is an error, as it was.
    """

    kind = "char"
    pad_id = 0  # no id is reserved; classification masks padding out, so any id serves
    UNKNOWN = "\ufffd"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.unk_id = self.index.get(self.UNKNOWN)

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        # U+FFFD sorts after every character of the Basic Multilingual Plane (emoji and the rarest Han,
        # beyond it, sort after it), so most characters keep char-rnn's ids.
        return cls(sorted(set(text) | {cls.UNKNOWN}))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            pass
        unknown = sorted({c for c in text if c not in self.index})
        if self.unk_id is None:
            raise NanoNLPError(
                f"the text contains {_listed(unknown)} this character-level model never saw in training; "
                "use only characters from the training corpus (a model trained now reads them as unknown)."
            )
        collected = getattr(_collecting, "chars", None)
        if collected is not None:
            collected.update(unknown)  # one warning for the whole batch, at the end of one_unknown_warning
        else:
            warnings.warn(f"{_listed(unknown)} this character-level model never saw in training read as unknown.",
                          UnknownCharactersWarning, stacklevel=2)
        return [self.index.get(c, self.unk_id) for c in text]

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of `text` this vocabulary lacks, sorted."""
        return sorted({c for c in text if c not in self.index})

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, folder: str | Path) -> None:
        from nanonlp.io import atomic_write_text

        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))


class UnknownCharactersWarning(UserWarning):
    """A text held characters the model's vocabulary lacks; they were read as the unknown id."""


_collecting = threading.local()


def _listed(chars: list[str]) -> str:
    """"3 character(s) ('a' (U+0061), ...)" with at most five shown and the rest counted."""
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:5])
    more = f" and {len(chars) - 5} more" if len(chars) > 5 else ""
    return f"{len(chars)} character(s) ({shown}{more})"


@contextlib.contextmanager
def one_unknown_warning():
    """Within the block, character vocabularies collect the characters they never saw instead of
    warning once per text; one warning names them all when the block ends (a batch of a thousand
    reviews gives one warning, not a thousand)."""
    if getattr(_collecting, "chars", None) is not None:  # nested: the outer block warns
        yield
        return
    _collecting.chars = set()
    try:
        yield
    finally:
        chars, _collecting.chars = sorted(_collecting.chars), None
        if chars:
            warnings.warn(f"{_listed(chars)} this character-level model never saw in training read as unknown.",
                          UnknownCharactersWarning, stacklevel=3)


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

    @property
    def byte_level(self) -> bool:
        """Whether tokens spell bytes in GPT-2's printable alphabet (every tokenizer this project trains)."""
        from tokenizers import decoders

        return isinstance(self.tokenizer.decoder, decoders.ByteLevel)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes token i stands for; a piece of a character when its bytes are split."""
        token = self.tokenizer.id_to_token(int(i))
        if token is None:
            raise NanoNLPError(f"token id {i} is outside this BPE vocabulary of {self.vocab_size:,}.")
        if not self.byte_level or int(i) in self._added_ids:
            return token.encode("utf-8")  # special tokens (<pad>, <s>) are written as themselves
        table = _unicode_to_byte()
        try:
            return bytes(table[c] for c in token)
        except KeyError:
            raise NanoNLPError(f"token {token!r} (id {i}) is not written in the byte-level alphabet; "
                               "the tokenizer file is not a byte-level BPE.") from None

    @property
    def _added_ids(self) -> frozenset[int]:
        if not hasattr(self, "_added"):
            self._added = frozenset(self.tokenizer.get_added_tokens_decoder())
        return self._added

    def decode(self, ids) -> str:
        """The text of the ids. Bytes that make no whole character (a sequence cut short by the end
        of the ids, or a stray continuation byte a model sampled) are left out, never shown as U+FFFD."""
        ids = list(ids)
        if not self.byte_level:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="ignore")

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


# Han (with the extension blocks and compatibility ideographs), kana and Hangul: each character is one
# token of the word tokenizer. Chinese and Japanese put no spaces between words; Korean does, but its
# words inflect, and syllables generalise better than whole words for a small vocabulary.
CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u303b\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff"
       "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f"
       "\U00020000-\U000323af")
# One CJK character; else a run of other word characters (with an inner apostrophe: "don't");
# else one punctuation mark. Whitespace separates and is dropped.
WORD_PATTERN = re.compile(rf"[{CJK}]|(?:(?![{CJK}])\w)+(?:'(?:(?![{CJK}])\w)+)?|[^\w\s]")
CJK_RUN = re.compile(rf"([{CJK}]+)")


class WordTokenizer:
    """Words (optionally with hashed word n-grams and character n-grams, as in fastText) for the
    from-scratch classifiers.

    A word is a run of letters and digits; a CJK character (Han, kana, Hangul) is a word of its own,
    since those scripts put no spaces between words, and each punctuation mark is one. With
    `segmenter="jieba"` Chinese text is first cut into words by jieba's dictionary instead.

    Ids: 0 is padding, 1 unknown words, then the vocabulary by descending frequency. With ngrams > 1,
    every n-gram of 2..ngrams words adds one id in [len(words), len(words) + buckets), by a stable
    hash; with char_ngrams = n >= 2, so does every character n-gram (lengths 2..n) of each word
    written between "<" and ">" (fastText's subwords, Bojanowski et al. 2017). N-gram ids follow the
    word ids, so they suit the bag-of-n-grams model, which ignores order.
    """

    kind = "word"
    pad_id, unk_id = 0, 1
    SEGMENTERS = ("none", "jieba")

    def __init__(self, words: list[str], lowercase: bool = True, ngrams: int = 1, buckets: int = 0,
                 char_ngrams: int = 0, segmenter: str = "none", cjk: bool = True):
        if segmenter not in self.SEGMENTERS:
            raise NanoNLPError(f"unknown segmenter '{segmenter}'; use none or jieba.")
        self.words, self.lowercase, self.ngrams, self.char_ngrams = list(words), lowercase, ngrams, char_ngrams
        self.buckets = buckets if ngrams > 1 or char_ngrams > 1 else 0
        if (ngrams > 1 or char_ngrams > 1) and buckets < 1:
            raise NanoNLPError("hashed n-grams need at least one bucket; set data.ngram_buckets.")
        self.segmenter, self.cjk = segmenter, cjk  # cjk False: a vocabulary saved before CJK characters were split
        self.index = {w: i for i, w in enumerate(self.words)}
        self._jieba = _jieba() if segmenter == "jieba" else None

    @classmethod
    def train(cls, texts, vocab_size: int, min_freq: int = 1, lowercase: bool = True, ngrams: int = 1, buckets: int = 0,
              char_ngrams: int = 0, segmenter: str = "none"):
        from collections import Counter

        counts = Counter()
        probe = cls(["<pad>", "<unk>"], lowercase, segmenter=segmenter)
        for text in texts:
            counts.update(probe.split(text))
        kept = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq][: max(0, vocab_size - 2)]
        return cls(["<pad>", "<unk>"] + kept, lowercase, ngrams, buckets, char_ngrams, segmenter)

    @property
    def vocab_size(self) -> int:
        return len(self.words) + self.buckets

    def split(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        if not self.cjk:
            return re.findall(r"\w+(?:'\w+)?|[^\w\s]", text)
        if self._jieba is None:
            return WORD_PATTERN.findall(text)
        # runs of CJK characters cut into words by jieba; everything between them as without it
        tokens = []
        for i, part in enumerate(CJK_RUN.split(text)):
            tokens.extend(self._jieba.lcut(part, HMM=True) if i % 2 else WORD_PATTERN.findall(part))
        return tokens

    def encode(self, text: str, max_words: int | None = None) -> list[int]:
        """Word ids, then the hashed n-gram ids; with max_words, of the first max_words words only."""
        import zlib

        tokens = self.split(text)[:max_words]
        ids = [self.index.get(t, self.unk_id) for t in tokens]

        def hashed(gram: str) -> int:
            # crc32, not hash(): Python salts str hashes per process, and ids must be stable.
            return len(self.words) + zlib.crc32(gram.encode("utf-8")) % self.buckets

        for n in range(2, self.ngrams + 1):
            ids.extend(hashed(" ".join(tokens[i : i + n])) for i in range(len(tokens) - n + 1))
        if self.char_ngrams > 1:
            for token in tokens:
                marked = f"<{token}>"
                for n in range(2, min(self.char_ngrams, len(marked)) + 1):
                    # the n-gram "<w>" of a one-character word is the word itself, already counted
                    ids.extend(hashed("#" + marked[i : i + n]) for i in range(len(marked) - n + 1) if n < len(marked))
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids if 0 < i < len(self.words))

    def save(self, folder: str | Path) -> None:
        from nanonlp.io import atomic_write_text

        data = {"type": "word", "lowercase": self.lowercase, "ngrams": self.ngrams, "buckets": self.buckets,
                "char_ngrams": self.char_ngrams, "segmenter": self.segmenter, "cjk": self.cjk, "words": self.words}
        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps(data, ensure_ascii=False))


@lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError:
        raise NanoNLPError("data.segmenter jieba needs the jieba package: pip install 'nanonlp[zh]' (or pip install jieba).") from None
    import logging

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading messages are not ours to print
    return jieba


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
        return WordTokenizer(data["words"], data["lowercase"], data["ngrams"], data["buckets"], data.get("char_ngrams", 0),
                             data.get("segmenter", "none"), data.get("cjk", False))
    if data.get("type") == "wordpiece":
        vocab = WordPieceTokenizer.read_vocab(folder)  # vocab.txt beside tokenizer.json
        return WordPieceTokenizer(vocab, data["lowercase"], data["strip_accents"], data["chinese_chars"])
    if isinstance(data.get("model"), dict) and data["model"].get("type") == "WordPiece":
        return WordPieceTokenizer.from_tokenizer_json(folder)  # a pretrained folder's own tokenizer.json, kept as it was
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(path.read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, read backwards: each of the 256 printable stand-in characters to
    its byte. Bytes that print as themselves keep their code point; the other 68 (controls, space,
    and a few Latin-1 marks) are moved to 256 and up, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, moved = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + moved)] = byte
            moved += 1
    return table


class StreamDecoder:
    """Turns ids arriving one at a time into text. With byte-level BPE, the bytes of a character
    split across tokens are held back until the character is whole, so no partial character (U+FFFD)
    is ever shown; bytes that can never make a character are dropped."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bytes_in = isinstance(tokenizer, BPETokenizer) and tokenizer.byte_level
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def push(self, token_id: int) -> str:
        if not self.bytes_in:
            return self.tokenizer.decode([token_id])
        return self.utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is held back; the bytes of an unfinished character are dropped."""
        text = self.utf8.decode(b"", final=True) if self.bytes_in else ""
        self.utf8.reset()
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
        """A pretrained folder's tokenizer: its tokenizer.json (Hugging Face `tokenizers` format) where it has
        one, else vocab.txt, lowercasing per tokenizer_config.json's do_lower_case (default true)."""
        folder = Path(folder)
        if (folder / TOKENIZER_FILE).is_file():
            return cls.from_tokenizer_json(folder)
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
    def from_tokenizer_json(cls, folder: str | Path) -> "WordPieceTokenizer":
        """The WordPiece tokenizer a folder's tokenizer.json describes, read by Hugging Face `tokenizers` as
        `transformers` reads it (normalizer, pre-tokenizer, vocabulary and special tokens as written there), so
        folders without vocab.txt load (m3e-small) and MPNet's <s> ... </s> wrapping comes with it. The special
        tokens' names come from tokenizer_config.json or special_tokens_map.json where the folder has them."""
        from tokenizers import Tokenizer, processors

        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
            backend = Tokenizer.from_str(text)
        except (OSError, UnicodeDecodeError, ValueError, Exception) as error:
            raise NanoNLPError(f"cannot read '{path}' as a Hugging Face tokenizer ({error}); restore the file.") from None
        if not isinstance(data.get("model"), dict) or data["model"].get("type") != "WordPiece":
            kind = data.get("model", {}).get("type") if isinstance(data.get("model"), dict) else None
            raise NanoNLPError(f"'{path}' holds a {kind or 'non-WordPiece'} tokenizer; a BERT-style encoder needs WordPiece.")
        # the padding and truncation saved with a sentence-transformers model are batching choices, made here by encode_batch
        backend.no_padding()
        backend.no_truncation()
        options = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins, as in transformers
            if (folder / name).is_file():
                with contextlib.suppress(ValueError, OSError):
                    loaded = json.loads((folder / name).read_text(encoding="utf-8"))
                    options.update(loaded if isinstance(loaded, dict) else {})
        # a special token may be written as {"content": "<mask>", "lstrip": true, ...}
        options = {k: (v.get("content") if isinstance(v, dict) and k.endswith("_token") else v) for k, v in options.items()}
        self = cls.__new__(cls)
        self.tokenizer, self.from_vocab_txt = backend, False
        index = backend.get_vocab(with_added_tokens=True)
        self.vocab = [""] * (max(index.values()) + 1)
        for token, i in index.items():
            self.vocab[i] = token
        normalizer = data.get("normalizer") or {}
        bert_normalizer = normalizer.get("type") == "BertNormalizer"
        self.lowercase = bool(normalizer.get("lowercase")) if bert_normalizer else options.get("do_lower_case")
        self.strip_accents = normalizer.get("strip_accents") if bert_normalizer else None
        self.chinese_chars = normalizer.get("handle_chinese_chars") if bert_normalizer else None
        self.huggingface_class = options.get("tokenizer_class") or "BertTokenizer"
        self.options = {k: v for k, v in options.items() if k.endswith("_token") or k == "tokenizer_class"}

        def special(role: str, default: str) -> int:
            token = options.get(f"{role}_token", default)
            found = backend.token_to_id(token) if isinstance(token, str) else None
            if found is None:
                raise NanoNLPError(f"the tokenizer in '{folder}' has no {role} token '{token}'; name it as {role}_token in "
                                   "tokenizer_config.json.")
            return found

        unk = data["model"].get("unk_token") or "[UNK]"
        self.pad_id, self.unk_id = special("pad", "[PAD]"), special("unk", unk)
        self.cls_id, self.sep_id = special("cls", "[CLS]"), special("sep", "[SEP]")
        if backend.post_processor is None:  # no wrapping written: BERT's
            cls_token, sep_token = self.vocab[self.cls_id], self.vocab[self.sep_id]
            backend.post_processor = processors.TemplateProcessing(
                single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
                special_tokens=[(cls_token, self.cls_id), (sep_token, self.sep_id)])
        return self

    from_vocab_txt = True  # built from vocab.txt and BERT's rules; false: read from a pretrained tokenizer.json
    huggingface_class = "BertTokenizer"  # what transformers' AutoTokenizer builds from an exported folder
    options: dict = {}  # the special tokens' names as a pretrained folder's tokenizer_config.json gives them

    def special_tokens(self) -> dict:
        """The special tokens by role, as tokenizer_config.json names them."""
        tokens = {f"{role}_token": self.vocab[i] for role, i in
                  (("unk", self.unk_id), ("cls", self.cls_id), ("sep", self.sep_id), ("pad", self.pad_id))}
        mask = self.tokenizer.token_to_id("[MASK]")
        if mask is not None:
            tokens["mask_token"] = "[MASK]"
        tokens.update({k: v for k, v in self.options.items() if k.endswith("_token")})
        return tokens

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

    def coverage(self, texts) -> tuple[float, list[str]]:
        """The share of the texts' characters (whitespace aside) that this vocabulary reads as pieces
        rather than [UNK], and the characters read as [UNK], most frequent first. (A Latin word that
        becomes [UNK] counts all its letters; a CJK character is a word of its own.)"""
        from collections import Counter

        texts = [t for t in texts if t]
        total = sum(1 for text in texts for c in text if not c.isspace())
        missing = Counter()
        for text, encoding in zip(texts, self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            for token_id, (start, end) in zip(encoding.ids, encoding.offsets):
                if token_id == self.unk_id:
                    missing.update(c for c in text[start:end] if not c.isspace())
        share = 1.0 - sum(missing.values()) / total if total else 1.0
        return share, [c for c, _ in missing.most_common()]

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def save(self, folder: str | Path) -> None:
        """Write vocab.txt and a tokenizer.json saying how to read it, for load_tokenizer; a tokenizer read
        from a pretrained tokenizer.json writes that file back (with tokenizer_config.json naming its special tokens)."""
        from nanonlp.io import atomic_write_text

        if not self.from_vocab_txt:
            atomic_write_text(Path(folder) / TOKENIZER_FILE, self.tokenizer.to_str(pretty=True))
            config = {"tokenizer_class": self.huggingface_class, **self.special_tokens()}
            atomic_write_text(Path(folder) / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
            return

        description = {"type": "wordpiece", "lowercase": self.lowercase,
                       "strip_accents": self.strip_accents, "chinese_chars": self.chinese_chars}
        atomic_write_text(Path(folder) / self.VOCAB_FILE, "".join(token + "\n" for token in self.vocab))
        atomic_write_text(Path(folder) / TOKENIZER_FILE, json.dumps(description, indent=2) + "\n")

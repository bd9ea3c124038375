"""A trained entity tagger: raw text in, entity spans with character offsets, types and confidences out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from nanonlp.data.tagging import convert, to_spans
from nanonlp.errors import NanoNLPError
from nanonlp.io import atomic_write_text
from nanonlp.predict import as_batch, load_model, open_for_inference

PAD, UNK = "<pad>", "<unk>"
VOCABULARY_FILE = "tokenizer.json"

# A token of raw text: one CJK character (Han, kana, Hangul: Chinese is tagged character by
# character), a run of other letters and digits, or any single other visible character.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002ffff"
TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)


CHARACTER = re.compile(r"\S")


def tokenize(text: str, characters: bool = False) -> list[tuple[str, int, int]]:
    """(token, start, end) for every token of `text`, with offsets into the raw string. A tagger
    trained one character a token (MSRA) reads every visible character alone, digits and Latin too."""
    return [(m.group(), m.start(), m.end()) for m in (CHARACTER if characters else TOKEN).finditer(text)]


class TagVocabulary:
    """Word and character ids of a tagger (0 padding, 1 unknown), and its tags."""

    def __init__(self, words: list[str], chars: list[str], tags: list[str], lowercase: bool, max_word_length: int,
                 character_tokens: bool = False):
        self.words, self.chars, self.tags, self.character_tokens = words, chars, tags, character_tokens
        self.lowercase, self.max_word_length = lowercase, max_word_length
        self.word_index = {w: i for i, w in enumerate(words)}
        self.char_index = {c: i for i, c in enumerate(chars)}
        self.tag_index = {t: i for i, t in enumerate(tags)}

    @classmethod
    def build(cls, sentences: list[list[str]], tags: list[str], lowercase: bool, max_words: int, min_freq: int, max_word_length: int):
        from collections import Counter

        words = Counter(w.lower() if lowercase else w for s in sentences for w in s)
        chars = Counter(c for s in sentences for w in s for c in w)
        kept = [w for w, n in sorted(words.items(), key=lambda x: (-x[1], x[0])) if n >= min_freq][: max(0, max_words - 2)]
        tokens = sum(words.values())
        single = sum(n for w, n in words.items() if len(w) == 1)
        # Data tokenized one character a token (Chinese NER): raw text is then read the same way.
        return cls([PAD, UNK] + kept, [PAD, UNK] + sorted(chars), tags, lowercase, max_word_length, single >= 0.99 * tokens)

    def word_ids(self, tokens: list[str]) -> list[int]:
        return [self.word_index.get(t.lower() if self.lowercase else t, 1) for t in tokens]

    def char_ids(self, tokens: list[str]) -> list[list[int]]:
        return [[self.char_index.get(c, 1) for c in t[: self.max_word_length]] or [1] for t in tokens]

    def save(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / VOCABULARY_FILE, json.dumps(
            {"kind": "tagger", "words": self.words, "chars": self.chars, "tags": self.tags, "lowercase": self.lowercase,
             "max_word_length": self.max_word_length, "character_tokens": self.character_tokens}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "TagVocabulary":
        path = Path(folder) / VOCABULARY_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["words"], data["chars"], data["tags"], data["lowercase"], data["max_word_length"],
                       data.get("character_tokens", False))
        except (OSError, ValueError, KeyError) as error:
            raise NanoNLPError(f"'{path}' is not a readable tagger vocabulary ({error}); train the run again.") from None


def batch_tensors(vocab: TagVocabulary, sentences: list[list[str]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(words (B, L), chars (B, L, W), mask (B, L)) for token lists, padded on the right."""
    length = max(len(s) for s in sentences)
    width = max(len(c) for s in sentences for c in vocab.char_ids(s)) if length else 1
    words = torch.zeros(len(sentences), length, dtype=torch.long)
    chars = torch.zeros(len(sentences), length, width, dtype=torch.long)
    mask = torch.zeros(len(sentences), length, dtype=torch.bool)
    for row, tokens in enumerate(sentences):
        words[row, : len(tokens)] = torch.tensor(vocab.word_ids(tokens), dtype=torch.long)
        for col, ids in enumerate(vocab.char_ids(tokens)):
            chars[row, col, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(tokens)] = True
    return words.to(device), chars.to(device), mask.to(device)


class Tagger:
    """A trained entity tagger: `tag(texts)` on raw text, `tag_tokens(sentences)` on tokens; thread-safe."""

    task = "tag"

    def __init__(self, model, vocab: TagVocabulary, config, device):
        self.model, self.vocab, self.config, self.device = model.eval(), vocab, config, torch.device(device)

    @property
    def labels(self) -> list[str]:
        """The entity types."""
        return sorted({t.split("-", 1)[1] for t in self.vocab.tags if t != "O"})

    @property
    def max_input_length(self) -> None:
        return None  # an LSTM reads sentences of any length

    @torch.inference_mode()
    def _decode(self, sentences: list[list[str]], with_scores: bool):
        out = [([], []) for _ in sentences]
        order = [i for i in sorted(range(len(sentences)), key=lambda i: len(sentences[i])) if sentences[i]]
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            words, chars, mask = batch_tensors(self.vocab, [sentences[i] for i in rows], self.device)
            emissions, _ = self.model(words, chars, mask)
            paths = self.model.decode(emissions, mask)
            tag_rows = [[self.vocab.tags[t] for t in path] for path in paths]
            scheme = self.config.data.inner_scheme
            spans = [[(s, path[s:e]) for s, e, _ in to_spans(tags, scheme)] for tags, path in zip(tag_rows, paths)]
            scores = self.model.span_scores(emissions, mask, spans) if with_scores else [[] for _ in rows]
            for row, tags, row_scores in zip(rows, tag_rows, scores):
                out[row] = (tags, row_scores)
        return out

    def tag_tokens(self, sentences: list[list[str]], scheme: str | None = None) -> list[list[str]]:
        """The tag of every token of every (already tokenized) sentence, in `scheme` (default: the
        scheme of the run's data files, data.scheme)."""
        inner, wanted = self.config.data.inner_scheme, scheme or self.config.data.scheme
        return [convert(tags, inner, wanted) if wanted != inner else tags for tags, _ in self._decode(sentences, with_scores=False)]

    def tag(self, texts: str | list[str]) -> dict | list[dict]:
        """Per raw text: {"text", "entities": [{"start", "end", "type", "text", "score"}]}, offsets
        into the text as given (double spaces, tabs, emoji and mixed scripts included)."""
        texts, single = as_batch(texts)
        tokenized = [tokenize(t, self.vocab.character_tokens) for t in texts]
        decoded = self._decode([[tok for tok, _, _ in toks] for toks in tokenized], with_scores=True)
        out = []
        for text, toks, (tags, scores) in zip(texts, tokenized, decoded):
            entities = []
            for (s, e, kind), score in zip(to_spans(tags, self.config.data.inner_scheme), scores):
                begin, end = toks[s][1], toks[e - 1][2]
                entities.append({"start": begin, "end": end, "type": kind, "text": text[begin:end], "score": round(score, 6)})
            out.append({"text": text, "entities": entities})
        return out[0] if single else out


def load(run_dir: str | Path, device: str = "auto") -> Tagger:
    run, torch_device = open_for_inference(run_dir, device)
    return Tagger(load_model(run, torch_device), TagVocabulary.load(run.dir), run.config, torch_device)

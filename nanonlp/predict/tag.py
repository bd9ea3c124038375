"""A trained entity tagger: raw text in, entity spans with character offsets, types and confidences out.

Two readers turn a sentence's words into model inputs: `TagVocabulary` (a BiLSTM-CRF's word,
character and bigram ids) and `PieceReader` (the sub-word pieces of a pretrained Transformer's own
tokenizer). `decode`, shared by the predictor and the training job's validation, batches a reader's
units, decodes them under the scheme's constraints and joins them back per sentence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from nanonlp.data.batching import by_length
from nanonlp.data.tagging import convert, to_spans
from nanonlp.errors import NanoNLPError
from nanonlp.io import atomic_write_text
from nanonlp.models.pretrained_tagger import word_shape
from nanonlp.predict import as_batch, load_model, open_for_inference
from nanonlp.predict.service import Endpoint, Param

PAD, UNK = "<pad>", "<unk>"
VOCABULARY_FILE = "tokenizer.json"

# A token of raw text: one CJK character (Han, kana, Hangul: Chinese is tagged character by
# character), a run of other letters and digits, or any single other visible character.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002ffff"
TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)


CHARACTER = re.compile(r"\S")


def character_tokenized(sentences: list[list[str]]) -> bool:
    """Whether tagged data has one character a token (Chinese NER): raw text is then read the same way."""
    tokens = sum(len(s) for s in sentences)
    return sum(len(t) == 1 for s in sentences for t in s) >= 0.99 * tokens


def tokenize(text: str, characters: bool = False) -> list[tuple[str, int, int]]:
    """(token, start, end) for every token of `text`, with offsets into the raw string. A tagger
    trained one character a token (MSRA) reads every visible character alone, digits and Latin too."""
    return [(m.group(), m.start(), m.end()) for m in (CHARACTER if characters else TOKEN).finditer(text)]


END = "</s>"  # the right neighbour of a sentence's last token, in bigrams
WINDOW_TOKENS = 256  # a BiLSTM-CRF reads a longer text in windows of this many tokens
SENTENCE_ENDS = frozenset(".!?;。！？；")  # tokens after which a window is best cut


class TagVocabulary:
    """Word, character and (optionally) token-bigram ids of a tagger (0 padding, 1 unknown), and its tags."""

    def __init__(self, words: list[str], chars: list[str], tags: list[str], lowercase: bool, max_word_length: int,
                 character_tokens: bool = False, bigrams: list[str] | None = None):
        self.words, self.chars, self.tags, self.character_tokens = words, chars, tags, character_tokens
        self.lowercase, self.max_word_length = lowercase, max_word_length
        self.word_index = {w: i for i, w in enumerate(words)}
        self.char_index = {c: i for i, c in enumerate(chars)}
        self.tag_index = {t: i for i, t in enumerate(tags)}
        self.bigrams = bigrams or []
        self.bigram_index = {b: i for i, b in enumerate(self.bigrams)}

    @classmethod
    def build(cls, sentences: list[list[str]], tags: list[str], lowercase: bool, max_words: int, min_freq: int, max_word_length: int,
              bigram_min_freq: int = 0):
        """From the training sentences; bigram_min_freq > 0 also keeps the token bigrams seen that often."""
        from collections import Counter

        words = Counter(w.lower() if lowercase else w for s in sentences for w in s)
        chars = Counter(c for s in sentences for w in s for c in w)
        kept = [w for w, n in sorted(words.items(), key=lambda x: (-x[1], x[0])) if n >= min_freq][: max(0, max_words - 2)]
        bigrams = None
        if bigram_min_freq > 0:
            counts = Counter(b for s in sentences for b in cls._bigrams(s, lowercase))
            bigrams = [PAD, UNK] + [b for b, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if n >= bigram_min_freq]
        return cls([PAD, UNK] + kept, [PAD, UNK] + sorted(chars), tags, lowercase, max_word_length, character_tokenized(sentences), bigrams)

    @staticmethod
    def _bigrams(tokens: list[str], lowercase: bool) -> list[str]:
        """Each token with its right neighbour (the last with END), tab-joined: a character's bigram in Chinese."""
        tokens = [t.lower() for t in tokens] if lowercase else tokens
        return [f"{a}\t{b}" for a, b in zip(tokens, tokens[1:] + [END])]

    def bigram_ids(self, tokens: list[str]) -> list[int]:
        return [self.bigram_index.get(b, 1) for b in self._bigrams(tokens, self.lowercase)]

    def word_ids(self, tokens: list[str]) -> list[int]:
        return [self.word_index.get(t.lower() if self.lowercase else t, 1) for t in tokens]

    def char_ids(self, tokens: list[str]) -> list[list[int]]:
        return [[self.char_index.get(c, 1) for c in t[: self.max_word_length]] or [1] for t in tokens]

    # -- the reader interface shared with PieceReader: a sentence as units, units as model inputs ----

    window = WINDOW_TOKENS  # tokens per unit at most

    def units(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[list[str], int, int]]:
        """(unit, first word, end word): a text in windows of at most `window` tokens, each read as if
        alone, so that one huge text costs linear time and is not padded together with short ones. A
        window ends after a sentence's last token where one falls in its second half (few entities
        are cut); otherwise at the limit, cutting an entity there in two."""
        tokens = [text[s:e] for s, e in spans]
        out, first = [], 0
        while first < len(tokens):
            end = min(first + self.window, len(tokens))
            if end < len(tokens):
                end = next((k for k in range(end, first + self.window // 2, -1) if tokens[k - 1] in SENTENCE_ENDS), end)
            out.append((tokens[first:end], first, end))
            first = end
        return out or [([], 0, 0)]

    @staticmethod
    def unit_length(unit: list[str]) -> int:
        return len(unit)

    def batch(self, units: list[list[str]], device) -> tuple[tuple, torch.Tensor]:
        """(the model's inputs, the word mask (B, L))."""
        words, chars, mask, bigrams = batch_tensors(self, units, device)
        return (words, chars, mask, bigrams), mask

    def save(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / VOCABULARY_FILE, json.dumps(
            {"kind": "tagger", "words": self.words, "chars": self.chars, "tags": self.tags, "lowercase": self.lowercase,
             "max_word_length": self.max_word_length, "character_tokens": self.character_tokens, "bigrams": self.bigrams},
            ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "TagVocabulary":
        path = Path(folder) / VOCABULARY_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["words"], data["chars"], data["tags"], data["lowercase"], data["max_word_length"],
                       data.get("character_tokens", False), data.get("bigrams"))
        except (OSError, ValueError, KeyError) as error:
            raise NanoNLPError(f"'{path}' is not a readable tagger vocabulary ({error}); train the run again.") from None


def batch_tensors(vocab: TagVocabulary, sentences: list[list[str]], device):
    """(words (B, L), chars (B, L, W), mask (B, L), bigrams (B, L) or None without a bigram vocabulary)
    for token lists, padded on the right."""
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
    bigrams = None
    if vocab.bigrams:
        bigrams = torch.zeros(len(sentences), length, dtype=torch.long)
        for row, tokens in enumerate(sentences):
            bigrams[row, : len(tokens)] = torch.tensor(vocab.bigram_ids(tokens), dtype=torch.long)
        bigrams = bigrams.to(device)
    return words.to(device), chars.to(device), mask.to(device), bigrams


def join_tokens(tokens: list[str], character_tokens: bool) -> tuple[str, list[tuple[int, int]]]:
    """Already tokenized words as one text for a pretrained model's tokenizer, and each word's
    (start, end) in it: words joined by a space, characters of character-tokenized data by nothing."""
    glue = "" if character_tokens else " "
    spans, position = [], 0
    for i, token in enumerate(tokens):
        position += len(glue) if i else 0
        spans.append((position, position + len(token)))
        position += len(token)
    return glue.join(tokens), spans


class PieceReader:
    """Words to the sub-word pieces of a pretrained model's tokenizer, and back.

    The text is tokenized whole (so a GPT sees the spacing it was pretrained on) with the character
    offsets of its pieces; a word is read at the first piece that overlaps it (or the last, per the
    model). A word no piece overlaps (a control character BERT's cleaning drops) is read at the piece
    before it. A sentence longer than the model's positions is cut into runs of whole words that fit,
    each tagged on its own; an entity across a cut is cut too. Each run tokenizes only a slice of
    whole words about the size it can read (doubled until its pieces overflow the model or the text
    ends), so a long text costs linear time, not a tokenization of the whole rest per run.
    """

    def __init__(self, tokenizer, model_config, first_piece: bool, max_pieces: int):
        self.tokenizer = tokenizer
        self.tags, self.character_tokens = model_config.tags, model_config.character_tokens
        self.first_piece = first_piece
        self.bert = getattr(tokenizer, "kind", "") == "wordpiece"
        self.limit = max_pieces - 2 if self.bert else max_pieces  # room for [CLS] and [SEP]
        if self.limit < 1:
            raise NanoNLPError(f"the pretrained model reads {max_pieces} positions, too few to tag with.")
        if tokenizer.kind == "char":  # a character the language model never saw reads as one it did
            self.fallback = tokenizer.index.get("\ufffd", tokenizer.index.get(" ", 0))

    def pieces(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of the text's pieces (no special tokens) and each piece's (start, end) in it."""
        if self.tokenizer.kind == "char":
            index = self.tokenizer.index
            return [index.get(c, self.fallback) for c in text], [(i, i + 1) for i in range(len(text))]
        encoding = self.tokenizer.tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), list(encoding.offsets)

    @staticmethod
    def _overlaps(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int] | None]:
        """(first, last) index of the pieces overlapping each word, None where none does."""
        out, p = [], 0
        for start, end in spans:
            while p < len(offsets) and offsets[p][1] <= start:  # pieces wholly before the word
                p += 1
            q, hits = p, []
            while q < len(offsets) and offsets[q][0] < end:
                if offsets[q][1] > offsets[q][0]:
                    hits.append(q)
                q += 1
            out.append((hits[0], hits[-1]) if hits else None)
        return out

    def units(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[tuple, int, int]]:
        """(unit, first word, end word) per run of words that fits the model; a unit is (ids, word positions, shapes)."""
        out, first = [], 0
        while first < len(spans):
            base = spans[first][0]
            budget, stop = 2 * self.limit, first + 1  # characters of whole words tokenized; the words [first, stop)
            while True:
                while stop < len(spans) and spans[stop][1] - base <= budget:
                    stop += 1
                ids, offsets = self.pieces(text[base : spans[stop - 1][1]])
                if len(ids) > self.limit or stop == len(spans):
                    break
                budget *= 2  # the pieces fit and words are left: a longer slice
            overlaps = self._overlaps(offsets, [(s - base, e - base) for s, e in spans[first:stop]])
            end = len(overlaps)
            if len(ids) > self.limit:  # the words whose pieces all fit, at least one
                end = max(1, next((i for i, o in enumerate(overlaps) if o is not None and o[1] >= self.limit), end))
                ids = ids[: self.limit]
            positions, last = [], 0
            for o in overlaps[:end]:
                if o is not None:
                    last = min(o[0] if self.first_piece else o[1], len(ids) - 1)
                positions.append(last)  # no piece of its own: the piece before it
            if self.bert:
                ids = [self.tokenizer.cls_id] + ids + [self.tokenizer.sep_id]
                positions = [p + 1 for p in positions]
            elif not ids:
                ids = [self.tokenizer.pad_id]  # a GPT needs one position to read
            shapes = [word_shape(text[s:e]) for s, e in spans[first : first + end]]
            out.append(((ids, positions, shapes), first, first + end))
            first += end
        return out

    @staticmethod
    def unit_length(unit: tuple) -> int:
        return len(unit[0])

    def batch(self, units: list[tuple], device) -> tuple[tuple, torch.Tensor]:
        """((input_ids, attention_mask, word_index, word_mask, shapes), word_mask), padded on the right."""
        width, length = max(len(u[0]) for u in units), max(len(u[1]) for u in units)
        ids = torch.full((len(units), width), self.tokenizer.pad_id, dtype=torch.long)
        attention = torch.zeros(len(units), width, dtype=torch.long)
        index = torch.zeros(len(units), length, dtype=torch.long)
        mask = torch.zeros(len(units), length, dtype=torch.bool)
        shapes = torch.zeros(len(units), length, dtype=torch.long)
        for row, (piece_ids, positions, word_shapes) in enumerate(units):
            ids[row, : len(piece_ids)] = torch.tensor(piece_ids, dtype=torch.long)
            attention[row, : len(piece_ids)] = 1
            index[row, : len(positions)] = torch.tensor(positions, dtype=torch.long)
            mask[row, : len(positions)] = True
            shapes[row, : len(word_shapes)] = torch.tensor(word_shapes, dtype=torch.long)
        mask = mask.to(device)
        return (ids.to(device), attention.to(device), index.to(device), mask, shapes.to(device)), mask


def decode(model, reader, items: list[tuple[str, list[tuple[int, int]]]], device, scheme: str, with_scores: bool = False,
           batch_size: int = 64) -> list[tuple[list[int], list[float]]]:
    """(tag ids, span confidences) per (text, word spans) item: its units batched by length, decoded
    under the scheme's constraints, joined back in order. The caller picks the grad mode."""
    units = [(i, unit) for i, (text, spans) in enumerate(items) if spans for unit, _, _ in reader.units(text, spans)]

    def run(chunk: list) -> list[tuple[list[int], list[float]]]:
        inputs, mask = reader.batch(chunk, device)
        emissions, _ = model(*inputs)
        paths = model.decode(emissions, mask)
        if not with_scores:
            return [(path, []) for path in paths]
        spans = [[(s, path[s:e]) for s, e, _ in to_spans([reader.tags[t] for t in path], scheme)] for path in paths]
        return list(zip(paths, model.span_scores(emissions, mask, spans)))

    decoded = by_length([u for _, u in units], [reader.unit_length(u) for _, u in units], batch_size, run)
    out = [([], []) for _ in items]
    for (i, _), (path, scores) in zip(units, decoded):  # an item's units in order: its parts join up
        out[i][0].extend(path)
        out[i][1].extend(scores)
    return out


def tag_endpoint(tagger) -> Endpoint:
    """POST /v1/tag: per text the entities with character offsets and confidences; requests to one model
    are batched together. A tagger reads every text whole, so results carry no `truncated` flag."""
    return Endpoint("tag", {"texts": Param(list[str], description="the texts, a batch")}, tagger.tag, runner="batch", items="texts",
                    title="Tag", placeholder="One text a line", view={"kind": "spans"})


class Tagger:
    """A trained entity tagger: `tag(texts)` on raw text, `tag_tokens(sentences)` on tokens; thread-safe."""

    task = "tag"

    def __init__(self, model, reader, config, device):
        self.model, self.reader, self.config, self.device = model.eval(), reader, config, torch.device(device)

    @property
    def labels(self) -> list[str]:
        """The entity types."""
        return sorted({t.split("-", 1)[1] for t in self.reader.tags if t != "O"})

    @property
    def max_input_length(self) -> None:
        return None  # any length: read in windows (an LSTM) or runs of words that fit (a Transformer)

    def describe(self) -> dict:
        return {"labels": list(self.labels)}

    def endpoints(self) -> list[Endpoint]:
        return [tag_endpoint(self)]

    def _warn_unseen_characters(self, texts: list[str]) -> None:
        """A character-level tagger of its own vocabulary (MSRA) reads characters it never saw as
        unknown: one warning names them. (Word taggers meet unseen words all the time; Transformer
        taggers read pieces of their pretrained vocabulary.)"""
        if not (isinstance(self.reader, TagVocabulary) and self.reader.character_tokens):
            return
        unseen = sorted({c for t in texts for c in t if not c.isspace() and c not in self.reader.char_index})
        if unseen:
            import warnings

            from nanonlp.data.tokenizers import UnknownCharactersWarning

            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unseen[:5])
            more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
            warnings.warn(f"{len(unseen)} character(s) this tagger never saw in training read as unknown: {shown}{more}.",
                          UnknownCharactersWarning, stacklevel=3)

    @torch.inference_mode()
    def _decode(self, items: list[tuple[str, list[tuple[int, int]]]], with_scores: bool):
        decoded = decode(self.model, self.reader, items, self.device, self.config.data.inner_scheme, with_scores)
        return [([self.reader.tags[t] for t in path], scores) for path, scores in decoded]

    def tag_tokens(self, sentences: list[list[str]], scheme: str | None = None) -> list[list[str]]:
        """The tag of every token of every (already tokenized) sentence, in `scheme` (default: the
        scheme of the run's data files, data.scheme)."""
        inner, wanted = self.config.data.inner_scheme, scheme or self.config.data.scheme
        self._warn_unseen_characters(["".join(tokens) for tokens in sentences])
        items = [join_tokens(tokens, self.reader.character_tokens) for tokens in sentences]
        return [convert(tags, inner, wanted) if wanted != inner else tags for tags, _ in self._decode(items, with_scores=False)]

    def tag(self, texts: str | list[str]) -> dict | list[dict]:
        """Per raw text: {"text", "entities": [{"start", "end", "type", "text", "score"}], "truncated"},
        offsets into the text as given (double spaces, tabs, emoji and mixed scripts included).
        `truncated` is always false: a text of any length is read whole, in windows."""
        texts, single = as_batch(texts)
        self._warn_unseen_characters(texts)
        tokenized = [tokenize(t, self.reader.character_tokens) for t in texts]
        decoded = self._decode([(text, [(s, e) for _, s, e in toks]) for text, toks in zip(texts, tokenized)], with_scores=True)
        out = []
        for text, toks, (tags, scores) in zip(texts, tokenized, decoded):
            entities = []
            for (s, e, kind), score in zip(to_spans(tags, self.config.data.inner_scheme), scores):
                begin, end = toks[s][1], toks[e - 1][2]
                entities.append({"start": begin, "end": end, "type": kind, "text": text[begin:end], "score": round(score, 6)})
            out.append({"text": text, "entities": entities, "truncated": False})  # every token is read
        return out[0] if single else out


def reader_for(run_dir: str | Path, model):
    """How a run's tagger reads words: its word and character vocabulary (BiLSTM-CRF), or the
    pretrained model's tokenizer (a tagger on a pretrained Transformer)."""
    if hasattr(model, "body"):
        from nanonlp.data.tokenizers import load_tokenizer

        return PieceReader(load_tokenizer(run_dir), model.config, model.first_piece, model.max_pieces)
    return TagVocabulary.load(run_dir)


def load(run_dir: str | Path, device: str = "auto") -> Tagger:
    run, torch_device = open_for_inference(run_dir, device)
    model = load_model(run, torch_device)
    return Tagger(model, reader_for(run.dir, model), run.config, torch_device)

"""Per document: sentiment, entities, events with their evidence, and a near-duplicate signature.

`Annotator` holds the loaded models and annotates a batch of documents; it keeps nothing of one batch
for the next, so the default engine calls it in-process and the Ray engine builds one per actor.
`Deduplicator` is the one stateful step (which earlier document is this one a repost of?) and runs
in document order wherever the annotations were computed, so both engines mark the same reposts.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from nanonlp.errors import ConfigError, NanoNLPError

# The one place a classifier's label names become sentiment values. Names are matched
# case-insensitively; numeric labels only in the conventions the data sets here document:
# 0/1 = negative/positive (SST-2, ChnSentiCorp), 0/1/2 = negative/neutral/positive (FinFE),
# -1/0/1 = negative/neutral/positive.
SENTIMENT_NAMES = {
    "negative": -1.0, "neg": -1.0, "neutral": 0.0, "positive": 1.0, "pos": 1.0,
    "负面": -1.0, "消极": -1.0, "中性": 0.0, "正面": 1.0, "积极": 1.0,
    # a negative-or-not detector (FinNSP): what is not negative counts as neutral
    "not negative": 0.0, "non-negative": 0.0, "非负面": 0.0,
}
NUMERIC_CONVENTIONS = [
    ({"0", "1"}, {"0": -1.0, "1": 1.0}),
    ({"0", "1", "2"}, {"0": -1.0, "1": 0.0, "2": 1.0}),
    ({"-1", "0", "1"}, {"-1": -1.0, "0": 0.0, "1": 1.0}),
]
LABEL_OF_VALUE = {-1.0: "negative", 0.0: "neutral", 1.0: "positive"}


def sentiment_values(labels: list[str]) -> dict[str, float]:
    """label -> -1, 0 or +1 for a classifier's labels; a label set that names no sentiment is an error."""
    labels = [str(label) for label in labels]
    for names, values in NUMERIC_CONVENTIONS:
        if set(labels) == names:
            return dict(values)
    unknown = [label for label in labels if label.strip().lower() not in SENTIMENT_NAMES]
    if unknown:
        raise ConfigError(f"the sentiment run's labels {', '.join(map(repr, unknown[:5]))} name no sentiment; its labels must be "
                          "negative/neutral/positive (or 负面/中性/正面, or 0/1, 0/1/2), or use a regression run.")
    values = {label: SENTIMENT_NAMES[label.strip().lower()] for label in labels}
    if -1.0 not in values.values():
        raise ConfigError("the sentiment run has no negative label, so no negative share can be measured; use a run with one.")
    return values


class SentimentModel:
    """A classification run (label names mapped to -1/0/+1; the score is their expected value under
    the predicted probabilities) or a regression run (its score, clipped to [-1, 1])."""

    def __init__(self, predictor, neutral_band: float):
        self.predictor, self.neutral_band = predictor, neutral_band
        labels = getattr(predictor, "labels", None)
        # a regression run of the classification task (data.target: regression) answers {"score"}
        self.regression = bool(getattr(predictor, "regression", False)) or not labels
        if not self.regression and getattr(predictor, "multi_label", False):
            raise ConfigError("the sentiment run is multi-label; sentiment needs a single-label classifier or a regression run.")
        # A run whose data names its labels (catalog entries, data.label_names) answers by name: read
        # both in English, the language the sentiment names are matched in.
        self.named = hasattr(predictor, "label_names")
        if not self.regression:
            self.values = sentiment_values(predictor.label_names("en") if self.named else list(labels))
        else:
            self.values = None

    def __call__(self, texts: list[str]) -> list[dict]:
        out = []
        for result in (self.predictor.predict(texts, language="en") if self.named and not self.regression else self.predictor.predict(texts)):
            if "score" in result:
                score = max(-1.0, min(1.0, float(result["score"])))
                label = "negative" if score < -self.neutral_band else "positive" if score > self.neutral_band else "neutral"
                out.append({"label": label, "score": score, "probability": None})
                continue
            if "label" not in result:
                raise NanoNLPError("the sentiment run answered neither a label nor a score; use a classification or regression run.")
            values = self.values or sentiment_values(list(result["probabilities"]))
            score = sum(values[name] * p for name, p in result["probabilities"].items())
            raw = result["label"]
            label = LABEL_OF_VALUE[values[raw]] if raw in values else str(raw)  # out_of_scope stays itself
            out.append({"label": label, "score": round(score, 6), "probability": round(float(result["probability"]), 6)})
        return out


_LATIN_WORD = re.compile(r"^\w", re.ASCII)


class KeywordEvents:
    """Event rules: each event's words as one regex. Words of Latin script match whole words
    (case-insensitively); words of other scripts (Chinese) match anywhere, as Chinese has no spaces."""

    def __init__(self, rules: dict):
        self.patterns = {}
        for name, rule in rules.items():
            parts = []
            for word in sorted(rule.words, key=len, reverse=True):
                escaped = re.escape(word.strip())
                parts.append(rf"(?<!\w){escaped}(?!\w)" if _LATIN_WORD.match(word.strip()) else escaped)
            self.patterns[name] = re.compile("|".join(parts), re.IGNORECASE)

    def __call__(self, text: str) -> dict[str, list[str]]:
        """event -> the distinct words matched in `text`, in order of appearance."""
        found = {}
        for name, pattern in self.patterns.items():
            words = list(dict.fromkeys(m.group() for m in pattern.finditer(text)))
            if words:
                found[name] = words
        return found


# -- near duplicates: MinHash over character shingles of the normalized text -------------------------

_URL = re.compile(r"https?://\S+|www\.\S+")
_NOT_WORD = re.compile(r"[\W_]+")
PERMUTATIONS, BANDS = 64, 16  # 16 bands of 4 rows: pairs at Jaccard 0.8 meet in a band with probability > 0.999
_rng = np.random.default_rng(20240601)
# Each "permutation" is x -> a*x + b modulo 2**32 with a odd: a bijection of 32-bit shingle hashes.
_MULTIPLY = (_rng.integers(1, 2**32, PERMUTATIONS, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
_ADD = _rng.integers(0, 2**32, PERMUTATIONS, dtype=np.uint64).astype(np.uint32)


def normalize(text: str) -> str:
    """NFKC, case-folded, links dropped, and only letters and digits kept: a repost with other
    punctuation, spacing or link is the same text. Chinese characters are letters, so it works on Chinese."""
    return _NOT_WORD.sub("", _URL.sub(" ", unicodedata.normalize("NFKC", text).casefold()))


def signatures(texts: list[str], shingle: int) -> np.ndarray:
    """(N, PERMUTATIONS) uint32 MinHash signatures of the texts' `shingle`-character shingles, the
    whole batch at once in NumPy; a text with nothing left after normalizing has a row of zeros
    (never a duplicate). A text shorter than a shingle is one shingle."""
    normalized = [normalize(t) for t in texts]
    lengths = np.array([max(len(t), shingle) if t else 0 for t in normalized], dtype=np.int64)
    out = np.zeros((len(texts), PERMUTATIONS), dtype=np.uint32)
    if not lengths.any():
        return out
    padded = "".join(t.ljust(n, "\0") for t, n in zip(normalized, lengths))
    chars = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    # a polynomial hash of every window of `shingle` characters of the concatenation (wrapping uint64)
    windows = len(chars) - shingle + 1
    hashes = np.zeros(windows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(shingle):
            hashes = hashes * np.uint64(1_000_003) + chars[offset: offset + windows]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    rows = np.flatnonzero(lengths)
    counts = lengths[rows] - shingle + 1  # windows inside each text (those across two texts are dropped)
    positions = np.concatenate([np.arange(s, s + c) for s, c in zip(starts[rows], counts)])
    folded = (hashes[positions] ^ (hashes[positions] >> np.uint64(29))).astype(np.uint32)  # (S,)
    with np.errstate(over="ignore"):
        permuted = folded[:, None] * _MULTIPLY[None, :] + _ADD[None, :]  # (S, P), modulo 2**32
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out[rows] = np.minimum.reduceat(permuted, offsets, axis=0)
    return out


class Deduplicator:
    """Marks a document that repeats one of the last `window` documents about the same entities
    (estimated Jaccard similarity of shingles >= threshold) as a duplicate of the first one.
    Memory is bounded by the window."""

    def __init__(self, threshold: float, window: int):
        self.threshold, self.window = threshold, window
        self.buckets: dict[int, int] = {}  # band key -> serial number of the latest document in it
        self.recent: dict[int, tuple[str, np.ndarray, list[int]]] = {}  # serial -> (id, signature, band keys)
        self.serial = 0

    def __call__(self, doc_id: str, signature: np.ndarray, entities: list[str]) -> str | None:
        if not signature.any():
            return None
        scope = hash(tuple(sorted(entities)))  # the same tweet about two companies is one post about each
        keys = [hash((scope, band, row.tobytes())) for band, row in enumerate(signature.reshape(BANDS, -1))]
        original = None
        needed = self.threshold * PERMUTATIONS
        for serial in dict.fromkeys(self.buckets[k] for k in keys if k in self.buckets):
            other_id, other, _ = self.recent[serial]
            if np.count_nonzero(other == signature) >= needed:
                original = other_id
                break
        self.serial += 1
        self.recent[self.serial] = (original or doc_id, signature, keys)  # a repost points at the first post
        for key in keys:
            self.buckets[key] = self.serial
        old = self.serial - self.window
        if old in self.recent:
            for key in self.recent.pop(old)[2]:
                if self.buckets.get(key) == old:
                    del self.buckets[key]
        return original


# -- the annotator -----------------------------------------------------------------------------------

def _load(run_or_predictor, device: str):
    if run_or_predictor is None or not isinstance(run_or_predictor, (str, bytes)) and not hasattr(run_or_predictor, "__fspath__"):
        return run_or_predictor
    import nanonlp

    return nanonlp.load(run_or_predictor, device=device)


class Annotator:
    """The models of an analysis, loaded once; `annotate(texts, entities)` gives per document its
    sentiment, entities, events with evidence, and a MinHash signature. Models may be given as run
    directories (config) or as predictors already loaded (`models`, e.g. by `nanonlp serve`)."""

    def __init__(self, config, models: dict | None = None, device: str = "cpu"):
        models = models or {}
        self.config = config
        sentiment = _load(models.get("sentiment", config.sentiment.run), device)
        self.sentiment = SentimentModel(sentiment, config.sentiment.neutral_band) if sentiment is not None else None
        self.tagger = _load(models.get("entities", config.entities.run), device)
        if self.tagger is not None and not hasattr(self.tagger, "tag"):
            raise ConfigError("entities.run must be a tagging run (its predictor tags entities).")
        self.event_model = _load(models.get("events", config.events.run), device)
        if self.event_model is not None and not getattr(self.event_model, "multi_label", False):
            raise ConfigError("events.run must be a multi-label classification run (data.multi_label: true), its labels the event types.")
        self.keywords = KeywordEvents(config.events.rules)
        self.entity_types = set(config.entities.types)

    def annotate(self, texts: list[str], given_entities: list[list[str]]) -> list[dict]:
        n = len(texts)
        sentiment = self.sentiment(texts) if self.sentiment is not None and n else [None] * n
        tagged = self.tagger.tag(texts) if self.tagger is not None and n else [None] * n
        modelled = self.event_model.predict(texts) if self.event_model is not None and n else [None] * n
        sigs = signatures(texts, self.config.duplicates.shingle)
        out = []
        for i, text in enumerate(texts):
            entities = list(given_entities[i])
            if tagged[i] is not None:
                for entity in tagged[i]["entities"]:
                    if not self.entity_types or entity["type"] in self.entity_types:
                        name = " ".join(entity["text"].split())
                        if name and name not in entities:
                            entities.append(name)
            evidence = self.keywords(text)
            scores = {}
            if modelled[i] is not None:
                for label in modelled[i]["labels"]:
                    scores[label] = round(float(modelled[i]["probabilities"][label]), 6)
            events = list(dict.fromkeys(list(evidence) + list(scores)))
            out.append({"sentiment": sentiment[i], "entities": entities, "events": events, "evidence": evidence,
                        "event_scores": scores, "signature": sigs[i]})
        return out

"""The FAQ index: Okapi BM25 over character n-grams (Robertson and Zaragoza 2009, "The Probabilistic
Relevance Framework: BM25 and Beyond").

Character n-grams need no word segmenter, so one index serves English and Chinese, and they forgive
typos and inflections ("cards" still shares "car", "ard" with "card"). Every question and each of its
paraphrases is a document pointing at its answer. A query's best score is divided by the score the
query would get against itself as a document, so the similarity lies in [0, 1] and one threshold
(`fallback.faq_threshold`) means the same for short and long questions.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from nanonlp.io import save_json

K1, B = 1.2, 0.75


def char_ngrams(text: str, sizes=(1, 2, 3)) -> list[str]:
    """Lowercased character n-grams of the text with its spaces folded to one and its ends marked;
    unigrams are left out for Latin text, where single letters say nothing."""
    text = " " + " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split()) + " "
    latin = not re.search(r"[\u3400-\u9fff]", text)
    grams = []
    for n in sizes:
        if latin and n < 3:
            continue
        grams += [text[i : i + n] for i in range(len(text) - n + 1) if text[i : i + n].strip()]
    if latin:
        grams += [text[i : i + 4] for i in range(len(text) - 3)]
    return grams


class FAQIndex:
    """BM25 over the questions and paraphrases; `search(query, k)` -> [(entry index, similarity)]."""

    def __init__(self, entries: list[dict]):
        self.entries = entries
        self.documents, self.owner = [], []
        for index, entry in enumerate(entries):
            for text in [entry["question"], *entry.get("paraphrases", [])]:
                self.documents.append(Counter(char_ngrams(text)))
                self.owner.append(index)
        self.lengths = [sum(d.values()) for d in self.documents]
        self.mean_length = sum(self.lengths) / max(len(self.lengths), 1)
        frequency = Counter(gram for document in self.documents for gram in document)
        n = len(self.documents)
        self.idf = {gram: math.log(1 + (n - df + 0.5) / (df + 0.5)) for gram, df in frequency.items()}
        # a gram no question has weighs most: in the query's score against itself it lowers the
        # similarity of a query that says much the FAQ does not know
        self.unseen_idf = math.log(1 + (n + 0.5) / 0.5)

    def _score(self, query: Counter, document: Counter, length: int) -> float:
        score = 0.0
        for gram, count in query.items():
            tf = document.get(gram, 0)
            if tf:
                score += count * self.idf.get(gram, self.unseen_idf) * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / self.mean_length))
        return score

    def search(self, query: str, k: int = 1) -> list[tuple[int, float]]:
        """The k best entries (each once, by its best question or paraphrase) with similarity in [0, 1]."""
        grams = Counter(char_ngrams(query))
        if not grams or not self.documents:
            return []
        own = self._score(grams, grams, sum(grams.values()))
        if own <= 0:
            return []
        best: dict[int, float] = {}
        for document, length, owner in zip(self.documents, self.lengths, self.owner):
            score = min(self._score(grams, document, length) / own, 1.0)
            best[owner] = max(best.get(owner, 0.0), score)
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    def answer(self, query: str) -> tuple[dict | None, float]:
        found = self.search(query, 1)
        return (self.entries[found[0][0]], found[0][1]) if found else (None, 0.0)

    def save(self, path: Path) -> None:
        save_json(path, {"kind": "bm25_char_ngrams", "entries": self.entries})

    @classmethod
    def load(cls, path: Path) -> "FAQIndex":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["entries"])

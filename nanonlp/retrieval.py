"""Finding the stored text nearest a query: BM25 over character n-grams, for any language and with
nothing to train, and cosine similarity over the sentence embeddings of a pretrained encoder.

The assistant's FAQ index uses both (the encoder where one is installed); bench/assistant.py
compares them on AFQMC. BM25 is Robertson and Zaragoza's Okapi BM25 ("The Probabilistic Relevance
Framework: BM25 and Beyond", 2009) with Lucene's non-negative idf,

    score(q, d) = sum over distinct terms t of q:  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

where the terms are character n-grams: they need no word segmenter, so Chinese, English and a
misspelt word all work ("退货" matches "退货流程"; "refnd" shares "re" and "nd" with "refund").
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from nanonlp.errors import NanoNLPError

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width letters and digits to their ASCII forms), lowercased, runs of whitespace as one space."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def char_ngrams(text: str, min_n: int = 1, max_n: int = 2) -> list[str]:
    """The character n-grams of the normalized text, min_n <= n <= max_n, in order (repeats kept).
    A space is a character too, so English n-grams see word boundaries; a text shorter than min_n
    gives its whole self, so no non-empty text goes without a term."""
    text = normalize(text)
    grams = [text[i : i + n] for n in range(min_n, max_n + 1) for i in range(len(text) - n + 1)]
    return grams or ([text] if text else [])


class BM25Index:
    """Okapi BM25 over character n-grams of a fixed list of documents (FAQ questions, say).

    Built once (inverted lists of term -> [(document, count)]); a query costs time in the documents
    that share a term with it, not in all of them."""

    def __init__(self, documents: Sequence[str], min_n: int = 1, max_n: int = 2, k1: float = 1.2, b: float = 0.75):
        if not 1 <= min_n <= max_n:
            raise NanoNLPError(f"BM25 n-gram lengths must satisfy 1 <= min_n <= max_n, got min_n {min_n} and max_n {max_n}.")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise NanoNLPError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1 {k1} and b {b}.")
        if not documents:
            raise NanoNLPError("a BM25 index needs at least one document.")
        self.documents, self.min_n, self.max_n, self.k1, self.b = list(documents), min_n, max_n, k1, b
        self.postings: dict[str, list[tuple[int, int]]] = {}
        self.lengths: list[int] = []
        for index, document in enumerate(self.documents):
            counts = Counter(char_ngrams(document, min_n, max_n))
            self.lengths.append(sum(counts.values()))
            for term, count in counts.items():
                self.postings.setdefault(term, []).append((index, count))
        self.average_length = sum(self.lengths) / len(self.lengths) or 1.0  # all-empty documents: no division by zero
        total = len(self.documents)
        self.idf = {term: math.log(1.0 + (total - len(docs) + 0.5) / (len(docs) + 0.5)) for term, docs in self.postings.items()}

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for the query, in document order (0 where no term is shared)."""
        scores = [0.0] * len(self.documents)
        for term in set(char_ngrams(query, self.min_n, self.max_n)):
            idf = self.idf.get(term)
            if idf is None:
                continue
            for index, tf in self.postings[term]:
                norm = self.k1 * (1.0 - self.b + self.b * self.lengths[index] / self.average_length)
                scores[index] += idf * tf * (self.k1 + 1.0) / (tf + norm)
        return scores

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        """The k best (document index, score), best first; ties go to the earlier document."""
        scores = self.scores(query)
        return sorted(((i, s) for i, s in enumerate(scores) if s > 0.0), key=lambda pair: (-pair[1], pair[0]))[:k]


# ---------------------------------------------------------------------------------------------------
# sentence embeddings from a pretrained encoder


class SentenceEncoder:
    """Sentence embeddings from a BERT-format encoder: the mean of its last hidden states over the real
    tokens, scaled to unit length, as sentence-transformers pools all-MiniLM-L6-v2. Inference only;
    safe to call from several threads (no state changes after loading)."""

    def __init__(self, source: str = "all-MiniLM-L6-v2", device: str = "cpu", max_length: int = 128):
        from nanonlp.data.tokenizers import WordPieceTokenizer
        from nanonlp.models.bert import BertEncoder
        from nanonlp.pretrained import pretrained_folder

        folder = Path(pretrained_folder(source, "the encoder"))
        self.tokenizer = WordPieceTokenizer.from_folder(folder)
        self.model = BertEncoder.from_huggingface(folder).to(device).eval()
        self.device, self.max_length = torch.device(device), max_length

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-length embeddings (N, H) of the texts, in order; texts are batched by length."""
        if not texts:
            return torch.zeros(0, self.model.config.hidden_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = self.tokenizer.encode_batch([texts[i] for i in rows], self.max_length)
            hidden = self.model(ids.to(self.device), mask.to(self.device)).float()  # (B, T, H)
            mask = mask.to(self.device).unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out


class EmbeddingIndex:
    """Cosine similarity between a query's embedding and the documents' (computed once)."""

    def __init__(self, documents: Sequence[str], encoder: SentenceEncoder, batch_size: int = 64):
        if not documents:
            raise NanoNLPError("an embedding index needs at least one document.")
        self.documents, self.encoder = list(documents), encoder
        self.vectors = encoder.encode(self.documents, batch_size)  # (N, H), unit length

    def scores(self, query: str) -> list[float]:
        return (self.vectors @ self.encoder.encode([query])[0]).tolist()

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        return top_k(self.vectors, self.encoder.encode([query]), k)[0]


def top_k(vectors: torch.Tensor, queries: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """For each unit-length query row, the k rows of `vectors` with the highest cosine, best first."""
    similarity = queries @ vectors.T  # (Q, N)
    values, indices = similarity.topk(min(k, vectors.size(0)), dim=1)
    return [[(int(i), float(v)) for i, v in zip(row_i, row_v)] for row_i, row_v in zip(indices.tolist(), values.tolist())]

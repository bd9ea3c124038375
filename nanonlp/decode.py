"""Decoding: turning a model's next-token logits into text.

Sampling with temperature, top-k (Fan et al. 2018) and top-p / nucleus (Holtzman et al. 2020).
Any model with `init_state(batch)` and `next_logits(idx, state, history) -> (logits, state)`
generates here: GPT carries a key/value cache as its state, CharRNN its hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (B, vocab)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best always stays.
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """The next token (B, 1) from logits (B, vocab). Temperature 0 is greedy."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


class Cancelled(Exception):
    """A caller's cancel flag was set: decoding stopped between two steps (a server's time limit)."""


def check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("decoding was cancelled")


@torch.no_grad()
def generate_ids(
    model,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) as it is chosen. prompt: (B, T) ids with T >= 1.

    The caller puts the model in eval mode: this never switches it, so one model can serve several
    threads generating at once (each call has its own cache and generator)."""
    state = model.init_state(prompt.size(0))
    history = prompt
    step_input = prompt
    for _ in range(max_new_tokens):
        logits, state = model.next_logits(step_input, state, history)
        token = choose(logits, temperature, top_k, top_p, generator)
        history = torch.cat([history, token], dim=1)
        step_input = token
        yield token
        if stop_id is not None and bool((token == stop_id).all()):
            break


# ---------------------------------------------------------------------------------------------------
# translation: greedy and beam search over an encoder-decoder
#
# A translation model has `encode(src) -> state` and `decode_step(tokens, state, step, need_weights)
# -> (log-probabilities (B, V), state, attention)`, where the state is a dict of tensors with the batch
# first, so that beam search can reorder it with one index_select per tensor.


def reorder(state: dict, index: torch.Tensor) -> dict:
    """Keep or repeat rows of every state tensor: row i of the result is row index[i] of the input."""
    return {k: v.index_select(0, index) for k, v in state.items()}


def length_penalty(length: int, alpha: float) -> float:
    """Wu et al. 2016 (GNMT): ((5 + length) / 6) ** alpha; scores are divided by it. 0 turns it off."""
    return ((5.0 + length) / 6.0) ** alpha


def _allowed(logprobs: torch.Tensor, bos_id: int, pad_id: int) -> torch.Tensor:
    logprobs = logprobs.clone()
    logprobs[:, bos_id] = float("-inf")  # never produced: they only start or pad a sentence
    logprobs[:, pad_id] = float("-inf")
    return logprobs


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos and eos
    score: float  # sum of log-probabilities (eos included) divided by the length penalty
    logprob: float  # sum of log-probabilities


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, max_lengths: torch.Tensor, bos_id: int, eos_id: int, pad_id: int,
                  alpha: float = 0.0, cancel=None) -> list[Hypothesis]:
    """The most likely next token at every step, per sentence, until eos or its max length (B,).

    The eos token is not part of the returned tokens; the score counts the log-probability of the eos
    that ends the sentence, or of none when the length limit ends it."""
    state = model.encode(src)
    B = src.size(0)
    tokens = torch.full((B,), bos_id, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(B)]
    logprob = [0.0] * B
    done = [False] * B
    limit = max_lengths.tolist()
    for step in range(max(limit)):
        check_cancel(cancel)  # a threading.Event set by a caller that stopped waiting
        logprobs, state, _ = model.decode_step(tokens, state, step)
        logprobs = _allowed(logprobs, bos_id, pad_id)
        best, tokens = logprobs.max(dim=-1)
        for i, (token, value) in enumerate(zip(tokens.tolist(), best.tolist())):
            if done[i]:
                continue
            logprob[i] += value
            if token == eos_id:
                done[i] = True
                continue
            out[i].append(token)
            done[i] = len(out[i]) >= limit[i]
        if all(done):
            break
    return [Hypothesis(t, lp / length_penalty(len(t) + 1, alpha), lp) for t, lp in zip(out, logprob)]


@torch.no_grad()
def beam_search(model, src: torch.Tensor, max_lengths: torch.Tensor, beam_size: int, bos_id: int, eos_id: int, pad_id: int,
                alpha: float = 1.0, nbest: int = 1, cancel=None) -> list[list[Hypothesis]]:
    """Batched beam search; for each sentence its `nbest` best finished hypotheses, best first.

    Each sentence keeps `beam_size` live hypotheses. At every step the 2 x beam best extensions are
    ranked: an extension ending in eos among the first beam_size finishes a hypothesis, the others fill
    the beam. A sentence is done once beam_size hypotheses have finished and the worst of the best
    beam_size of them scores at least the best live hypothesis as it stands; at its maximum length
    (max_lengths, in tokens before eos) eos is the only choice. Finished hypotheses are ranked by their
    log-probability divided by the GNMT length penalty (length counted with eos). Beam size 1 is greedy.
    Setting `cancel` (a threading.Event) stops the search before the next step, raising Cancelled.
    """
    B, K = src.size(0), beam_size
    device = src.device
    state = reorder(model.encode(src), torch.arange(B, device=device).repeat_interleave(K))  # (B*K, ...)
    # Only the first copy of each sentence is live at the start, so the beam does not fill with duplicates.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    history: list[list[int]] = [[] for _ in range(B * K)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    limit = max_lengths.tolist()
    for step in range(max(limit) + 1):
        check_cancel(cancel)
        logprobs, state, _ = model.decode_step(tokens, state, step)
        logprobs = _allowed(logprobs, bos_id, pad_id)  # (B*K, V)
        V = logprobs.size(1)
        for b in range(B):
            if step >= limit[b]:  # at the maximum length only eos may follow
                rows = logprobs[b * K : (b + 1) * K]
                eos = rows[:, eos_id].clone()
                rows.fill_(float("-inf"))
                rows[:, eos_id] = eos
        candidates = (scores[:, :, None] + logprobs.view(B, K, V)).view(B, K * V)  # (B, K*V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            kept = []
            if not done[b]:
                for rank, (score, index) in enumerate(zip(top_scores[b], top_index[b])):
                    if score == float("-inf") or len(kept) == K:
                        break
                    beam, token = divmod(index, V)
                    if token == eos_id:
                        if rank < K:
                            words = history[b * K + beam]
                            finished[b].append(Hypothesis(list(words), score / length_penalty(len(words) + 1, alpha), score))
                        continue
                    kept.append((b * K + beam, token, score))
                if not kept:
                    done[b] = True
                elif len(finished[b]) >= K:
                    # Done when the beam's k-th best finished hypothesis beats the best live one scored
                    # as if it ended now (Hugging Face's rule). Stopping at k finished hypotheses alone
                    # can end on poor ones while a far better hypothesis is still growing.
                    kth = sorted((h.score for h in finished[b]), reverse=True)[K - 1]
                    done[b] = kth >= kept[0][2] / length_penalty(step + 1, alpha)
            if done[b]:
                kept = []
            # Dead rows keep decoding a harmless token with score -inf; they never win again.
            kept += [(b * K, eos_id, float("-inf"))] * (K - len(kept))
            for row, token, score in kept:
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if all(done):
            break
        index = torch.tensor(next_rows, device=device)
        history = [history[r] + [t] for r, t in zip(next_rows, next_tokens)]
        state = reorder(state, index)
        tokens = torch.tensor(next_tokens, device=device)
        scores = torch.tensor(next_scores, device=device).view(B, K)
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]

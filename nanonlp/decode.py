"""Decoding: turning a model's next-token logits into text.

Sampling with temperature, top-k (Fan et al. 2018) and top-p / nucleus (Holtzman et al. 2020).
Any model with `init_state(batch)` and `next_logits(idx, state, history) -> (logits, state)`
generates here: GPT carries a key/value cache as its state, CharRNN its hidden state.
"""

from __future__ import annotations

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
    """Yield each new token (B, 1) as it is chosen. prompt: (B, T) ids with T >= 1."""
    was_training = model.training
    model.eval()
    try:
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
    finally:
        model.train(was_training)

"""CharRNN: a recurrent language model over characters (or any tokens).

Karpathy 2015, "The Unreasonable Effectiveness of Recurrent Neural Networks" (char-rnn), after
Graves 2013, "Generating Sequences With Recurrent Neural Networks". An embedding, a stack of LSTM
(Hochreiter & Schmidhuber 1997) or GRU (Cho et al. 2014) layers, and a linear read-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.layers import Dropout


@dataclass
class CharRNNConfig:
    cell: str = field(default="lstm", metadata={"choices": ("lstm", "gru")})
    block_size: int = 128  # truncated backpropagation length: tokens per training sequence
    n_layer: int = 2
    n_embd: int = 128  # embedding width
    hidden_size: int = 512
    dropout: float = 0.2  # between layers and before the read-out
    vocab_size: int = field(default=0, metadata={"derived": "the tokenizer's vocabulary size"})

    def validate(self) -> None:
        for name in ("block_size", "n_layer", "n_embd", "hidden_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class CharRNN(nn.Module):
    def __init__(self, config: CharRNNConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise NanoNLPError("CharRNNConfig.vocab_size must be set from the tokenizer before building the model.")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        # nn.LSTM applies dropout between layers only; a one-layer stack would warn about it.
        self.rnn = rnn(config.n_embd, config.hidden_size, config.n_layer, batch_first=True,
                       dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab), and the mean cross entropy if targets are given.

        Training starts every window from a zero state, as char-rnn does with random windows.
        """
        logits, _ = self._run(idx, state)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _run(self, idx: torch.Tensor, state):
        x = self.embedding(idx)  # (B, T, n_embd)
        out, state = self.rnn(x, state)  # (B, T, hidden)
        return self.head(self.dropout(out)), state  # (B, T, vocab)

    # -- generation interface shared with GPT ----------------------------------------------------

    def init_state(self, batch_size: int):
        return None  # PyTorch's RNNs start from zeros when given no state

    def next_logits(self, idx: torch.Tensor, state, history: torch.Tensor):
        """Logits (B, vocab) after feeding `idx` (B, T); the hidden state carries all earlier context."""
        logits, state = self._run(idx, state)
        return logits[:, -1, :], state

    # -- continuous batching (serve/generation.py): a slot is one row of a stacked hidden state -------

    def init_slots(self, slots: int) -> tuple[torch.Tensor, ...]:
        """Hidden states of `slots` sequences: (h, c) for an LSTM, (h,) for a GRU, each (layers, slots, hidden)."""
        p = self.head.weight
        shape = (self.config.n_layer, slots, self.config.hidden_size)
        return tuple(torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(2 if self.config.cell == "lstm" else 1))

    def fill_slot(self, slots: tuple[torch.Tensor, ...], slot: int, state, row: int = 0) -> None:
        """Slot `slot` takes over the sequence in row `row` of a `next_logits` state (its hidden state)."""
        for stacked, own in zip(slots, state if isinstance(state, tuple) else (state,)):
            stacked[:, slot] = own[:, row]

    def move_slot(self, slots: tuple[torch.Tensor, ...], source: int, slot: int) -> None:
        for stacked in slots:
            stacked[:, slot] = stacked[:, source]

    def step_slots(self, idx: torch.Tensor, rows: torch.Tensor | None, slots: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits (S, vocab) after feeding token idx[b] to the sequence in slot rows[b] (rows None: the
        first S slots): the rows' hidden states are gathered, stepped together and scattered back."""
        rows = slice(0, idx.size(0)) if rows is None else rows
        state = tuple(stacked[:, rows] for stacked in slots)
        logits, state = self._run(idx[:, None], state if self.config.cell == "lstm" else state[0])
        for stacked, new in zip(slots, state if isinstance(state, tuple) else (state,)):
            stacked[:, rows] = new
        return logits[:, 0]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: about 6 per weight (forward 2, backward 4); the embedding is a lookup."""
        n = sum(p.numel() for p in self.parameters()) - self.embedding.weight.numel()
        return 6 * n

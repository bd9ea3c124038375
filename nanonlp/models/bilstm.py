"""BiLSTMClassifier: a bidirectional LSTM sentence classifier with max or attention pooling.

Graves & Schmidhuber 2005, "Framewise Phoneme Classification with Bidirectional LSTM": one LSTM
reads the sentence left to right, another right to left, and each position carries both states.
The states are pooled into one vector either by a max over positions, or by additive attention with
a learned query, after Lin et al. 2017, "A Structured Self-Attentive Sentence Embedding" (with one
attention hop) and Yang et al. 2016, "Hierarchical Attention Networks for Document Classification".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nanonlp.errors import ConfigError
from nanonlp.models.layers import Dropout, check_data_fields


@dataclass
class BiLSTMConfig:
    n_embd: int = 128  # word vector width
    hidden_size: int = 128  # LSTM state width per direction; positions carry 2 * hidden_size
    n_layer: int = 1  # stacked bidirectional layers
    pooling: str = field(default="max", metadata={"choices": ("max", "attention")})  # positions -> one vector
    attention_size: int = 128  # width of the attention scorer's hidden layer (pooling: attention only)
    dropout: float = 0.5  # between LSTM layers and on the pooled vector
    vocab_size: int = field(default=0, metadata={"derived": "the tokenizer's vocabulary size"})
    num_classes: int = field(default=0, metadata={"derived": "the number of labels in the training data"})
    pad_id: int = field(default=0, metadata={"derived": "the tokenizer's padding id"})

    def validate(self) -> None:
        for name in ("n_embd", "hidden_size", "n_layer", "attention_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.pooling not in ("max", "attention"):
            raise ConfigError(f"model.pooling must be one of max, attention, got '{self.pooling}'.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class AttentionPooling(nn.Module):
    """score_t = v . tanh(W h_t + b); the pooled vector is the softmax(score)-weighted sum of h_t."""

    def __init__(self, width: int, attention_size: int):
        super().__init__()
        self.proj = nn.Linear(width, attention_size)
        self.query = nn.Linear(attention_size, 1, bias=False)  # Yang et al.'s context vector u_w

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))  # padding gets exactly zero weight
        weights = F.softmax(scores.float(), dim=1).to(h.dtype)  # (B, T)
        return torch.bmm(weights.unsqueeze(1), h).squeeze(1)  # (B, 1, T) @ (B, T, W) -> (B, W)


class BiLSTMClassifier(nn.Module):
    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        check_data_fields(config)
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_id)
        # nn.LSTM applies dropout between layers only; a one-layer stack would warn about it.
        self.lstm = nn.LSTM(config.n_embd, config.hidden_size, config.n_layer, batch_first=True, bidirectional=True,
                            dropout=config.dropout if config.n_layer > 1 else 0.0)
        width = 2 * config.hidden_size  # forward and backward states side by side
        self.attention = AttentionPooling(width, config.attention_size) if config.pooling == "attention" else None
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(width, config.num_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids, attention_mask (B, T) -> logits (B, num_classes), and the mean cross entropy if targets are given."""
        B, T = input_ids.shape
        # Packing needs at least one step per row; an empty row reads its first (padding) token.
        lengths = attention_mask.sum(dim=1).long().clamp(min=1)  # (B,)
        x = self.embedding(input_ids)  # (B, T, n_embd)
        # Packing runs each row for exactly its own length, so the backward LSTM starts on the last
        # real token rather than on padding; lengths must sit on the CPU (one sync on GPUs).
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=T)  # (B, T, 2 * hidden), zero at padding
        mask = torch.arange(T, device=input_ids.device) < lengths.unsqueeze(1)  # (B, T), the positions the LSTM ran
        if self.attention is not None:
            pooled = self.attention(h, mask)  # (B, 2 * hidden)
        else:
            # -inf, not the zeros pad_packed_sequence leaves: a real state may be negative everywhere.
            pooled = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, 2 * hidden)
        logits = self.head(self.dropout(pooled))  # (B, num_classes)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets)
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token: about 6 per weight (forward 2, backward 4); each direction's
        weights run once per token. The head runs once per sequence, so this is a slight upper bound."""
        n = sum(p.numel() for p in self.parameters()) - self.embedding.weight.numel()
        return 6 * n

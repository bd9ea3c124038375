"""BagOfNgrams: the fastText text classifier.

Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification": embed every word and every
hashed word n-gram, average the vectors, and read the classes off the average with one linear layer.
The hashing happens in the data code, which appends the n-gram bucket ids after the word ids; this
module only embeds ids, so `vocab_size` counts words and buckets together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import ConfigError
from nanonlp.models.layers import Dropout, check_data_fields


@dataclass
class BagOfNgramsConfig:
    n_embd: int = 64  # width of each word / n-gram vector (fastText's -dim)
    dropout: float = 0.0  # on the averaged vector; fastText itself uses none
    vocab_size: int = field(default=0, metadata={"derived": "the tokenizer's words plus the n-gram hash buckets"})
    num_classes: int = field(default=0, metadata={"derived": "the number of labels in the training data"})
    pad_id: int = field(default=0, metadata={"derived": "the tokenizer's padding id"})

    def validate(self) -> None:
        if self.n_embd < 1:
            raise ConfigError(f"model.n_embd must be at least 1, got {self.n_embd}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class BagOfNgrams(nn.Module):
    def __init__(self, config: BagOfNgramsConfig):
        super().__init__()
        check_data_fields(config)
        self.config = config
        # The mask in forward is what makes padding harmless; padding_idx also pins the padding row
        # at zero (no gradient), so a caller that forgets the mask still adds nothing to the sum.
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_id)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.n_embd, config.num_classes)
        # fastText's initialisation: small uniform vectors, so that averaging many n-grams starts
        # near zero instead of being dominated by whichever rows happen to be large.
        nn.init.uniform_(self.embedding.weight, -1.0 / config.n_embd, 1.0 / config.n_embd)
        with torch.no_grad():
            self.embedding.weight[config.pad_id].zero_()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids, attention_mask (B, T) -> logits (B, num_classes), and the mean cross entropy if targets are given."""
        mask = attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)  # (B, T, 1)
        x = self.embedding(input_ids) * mask  # (B, T, C), zero at padding
        # clamp: an empty row averages to the zero vector rather than 0 / 0
        x = x.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, C)
        logits = self.head(self.dropout(x))  # (B, num_classes)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets)
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight of the head, an upper bound since the head runs once
        per sequence; the embedding is a lookup and an add (plus its sparse gradient) per token."""
        return 6 * self.head.weight.numel() + 3 * self.config.n_embd


"""TextCNN: a convolutional sentence classifier.

Kim 2014, "Convolutional Neural Networks for Sentence Classification": embed the tokens, run
parallel 1-D convolutions of a few widths over them, keep each filter's largest response anywhere
in the sentence (max-over-time pooling), and classify the concatenated maxima after dropout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import ConfigError
from nanonlp.models.layers import Dropout, check_data_fields


@dataclass
class TextCNNConfig:
    n_embd: int = 128  # word vector width (Kim uses 300-d word2vec vectors)
    kernel_sizes: str = "3,4,5"  # comma-separated filter widths, in tokens; one convolution per width
    num_filters: int = 100  # feature maps per width
    dropout: float = 0.5  # on the pooled features, before the classifier
    vocab_size: int = field(default=0, metadata={"derived": "the tokenizer's vocabulary size"})
    num_classes: int = field(default=0, metadata={"derived": "the number of labels in the training data"})
    pad_id: int = field(default=0, metadata={"derived": "the tokenizer's padding id"})

    def widths(self) -> list[int]:
        """kernel_sizes as integers: '3,4,5' -> [3, 4, 5]."""
        try:
            widths = [int(part) for part in self.kernel_sizes.split(",")]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise ConfigError(f"model.kernel_sizes must be comma-separated positive integers such as '3,4,5', got '{self.kernel_sizes}'.")
        return widths

    def validate(self) -> None:
        for name in ("n_embd", "num_filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        self.widths()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class TextCNN(nn.Module):
    def __init__(self, config: TextCNNConfig):
        super().__init__()
        check_data_fields(config)
        self.config = config
        self.widths = config.widths()
        # padding_idx pins the padding vector at zero, the same zeros the model appends itself
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(config.n_embd, config.num_filters, width) for width in self.widths)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.num_filters * len(self.widths), config.num_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids, attention_mask (B, T) -> logits (B, num_classes), and the mean cross entropy if targets are given."""
        mask = attention_mask.to(self.embedding.weight.dtype)  # (B, T), 1 = real token
        x = self.embedding(input_ids) * mask.unsqueeze(-1)  # (B, T, C), zero at padding whatever its id
        # Append widest - 1 zero positions, always the same number: then every window that starts on
        # a real token fits in the tensor, so a one-token sentence still yields a window of each
        # width, and each such window sees the same real tokens and zeros however much padding the
        # batch carried. Kim pads sentences with zero vectors in the same way.
        extra = max(self.widths) - 1
        x = F.pad(x.transpose(1, 2), (0, extra))  # (B, C, T + extra)
        mask = F.pad(mask, (0, extra)).unsqueeze(1)  # (B, 1, T + extra)
        pooled = []
        for width, conv in zip(self.widths, self.convs):
            scores = conv(x)  # (B, num_filters, T + extra - width + 1), one score per window start
            # A window that holds no real token must not win the max: its score is only the bias.
            has_token = F.max_pool1d(mask, width, stride=1) > 0  # (B, 1, T + extra - width + 1)
            scores = scores.masked_fill(~has_token, float("-inf"))
            pooled.append(scores.amax(dim=2))  # (B, num_filters)
        # ReLU after the max rather than before: the two commute (ReLU is monotone), this way it
        # touches (B, F) numbers instead of (B, F, T), and an empty row's -inf becomes 0, not NaN.
        features = F.relu(torch.cat(pooled, dim=1))  # (B, num_filters * len(widths))
        logits = self.head(self.dropout(features))  # (B, num_classes)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets)
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per convolution weight (each filter slides over every position)
        and per head weight (an upper bound: the head runs once per sequence); the embedding is a lookup."""
        n = sum(p.numel() for p in self.parameters()) - self.embedding.weight.numel()
        return 6 * n

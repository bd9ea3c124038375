"""TransformerClassifier: a small Transformer encoder trained from scratch to classify text.

Vaswani et al. 2017, "Attention Is All You Need": self-attention blocks over token plus learned
position embeddings, here with the pre-LayerNorm arrangement (normalise each sub-layer's input, as
GPT-2 does), which trains stably without the long warm-up post-LN needs (Xiong et al. 2020). The sentence
vector is the mean of the final states over real tokens, or the state at position 0 as in Devlin et
al. 2019, "BERT" (their [CLS] token; the data code decides what token sits there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.layers import Dropout, check_data_fields


@dataclass
class TransformerClassifierConfig:
    max_length: int = 256  # the longest input, in tokens: the number of learned positions
    n_layer: int = 2  # encoder blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width; must be divisible by n_head
    dropout: float = 0.1  # on embeddings, attention weights, sub-layer outputs and the pooled vector
    pooling: str = field(default="mean", metadata={"choices": ("mean", "cls")})  # mean of real tokens, or position 0
    vocab_size: int = field(default=0, metadata={"derived": "the tokenizer's vocabulary size"})
    num_classes: int = field(default=0, metadata={"derived": "the number of labels in the training data"})
    pad_id: int = field(default=0, metadata={"derived": "the tokenizer's padding id"})

    def validate(self) -> None:
        for name in ("max_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}).")
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"model.pooling must be one of mean, cls, got '{self.pooling}'.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention in which no query attends to a padding key."""

    def __init__(self, config: TransformerClassifierConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # key_mask (B, 1, 1, T) broadcasts over heads and queries: True = this key may be attended.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: TransformerClassifierConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class EncoderBlock(nn.Module):
    def __init__(self, config: TransformerClassifierConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)
        return x + self.mlp(self.ln_2(x))


class TransformerClassifier(nn.Module):
    def __init__(self, config: TransformerClassifierConfig):
        super().__init__()
        check_data_fields(config)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_id)
        self.position_embedding = nn.Embedding(config.max_length, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)  # pre-LN blocks leave the residual stream unnormalised
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.n_embd, config.num_classes)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids, attention_mask (B, T) -> logits (B, num_classes), and the mean cross entropy if targets are given."""
        B, T = input_ids.shape
        if T > self.config.max_length:
            raise NanoNLPError(f"input of {T} tokens is longer than the model's max_length {self.config.max_length}; "
                               "truncate the texts or raise model.max_length before training.")
        mask = attention_mask.bool()  # (B, T), True = real token
        # Position 0 stays attendable even in an all-padding row, so its softmax has something to
        # normalise over instead of returning NaN; in any real row position 0 is a real token anyway.
        key_mask = mask.clone()
        key_mask[:, 0] = True
        key_mask = key_mask.view(B, 1, 1, T)  # (B, 1, 1, T)
        pos = torch.arange(T, device=input_ids.device)
        x = self.drop(self.token_embedding(input_ids) + self.position_embedding(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.ln_f(x)  # (B, T, C)
        if self.config.pooling == "cls":
            pooled = x[:, 0]  # (B, C)
        else:
            weights = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            # clamp: an empty row pools to the zero vector rather than 0 / 0
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, C)
        logits = self.head(self.dropout(pooled))  # (B, num_classes)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets)
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B: 6 per
        weight, plus attention over max_length keys; an upper bound for batches of shorter texts."""
        n = sum(p.numel() for p in self.parameters())
        n -= self.token_embedding.weight.numel() + self.position_embedding.weight.numel()
        c = self.config
        return 6 * n + 12 * c.n_layer * c.n_embd * c.max_length

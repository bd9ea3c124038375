"""Transformer: the encoder-decoder of Vaswani et al. 2017, "Attention Is All You Need", for translation.

Pre-LayerNorm sub-layers (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture":
normalising each sub-layer's input trains without the long warm-up post-LN needs), sinusoidal or learned
positions, and optionally one embedding matrix shared by the source, the target and the output layer
(Press and Wolf 2017; needs a joint vocabulary). Every attention masks padding keys; the decoder's
self-attention is causal. Decoding keeps a key/value cache: one new token per step costs one position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.layers import Dropout, check_translation_fields, smoothed_cross_entropy


@dataclass
class TransformerConfig:
    n_embd: int = 256  # model width; must be divisible by n_head
    n_head: int = 4  # attention heads
    encoder_layers: int = 3
    decoder_layers: int = 3
    ffn_dim: int = 1024  # hidden width of each feed-forward sub-layer
    dropout: float = 0.1  # on embeddings, attention weights and sub-layer outputs
    positions: str = field(default="sinusoidal", metadata={"choices": ("sinusoidal", "learned")})
    max_positions: int = 256  # the longest sentence, in tokens (the size of the position table)
    share_embeddings: bool = True  # one matrix for source, target and output (needs data.joint_vocab)
    tie_output: bool = True  # the output layer reuses the target embedding matrix
    source_vocab_size: int = field(default=0, metadata={"derived": "the source tokenizer's vocabulary size"})
    target_vocab_size: int = field(default=0, metadata={"derived": "the target tokenizer's vocabulary size"})
    pad_id: int = field(default=0, metadata={"derived": "the tokenizers' padding id"})
    bos_id: int = field(default=1, metadata={"derived": "the target tokenizer's begin-of-sentence id"})
    eos_id: int = field(default=2, metadata={"derived": "the tokenizers' end-of-sentence id"})

    def validate(self) -> None:
        for name in ("n_embd", "n_head", "encoder_layers", "decoder_layers", "ffn_dim", "max_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}).")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) position encodings: sin on even, cos on odd channels, wavelengths 2pi .. 10000 * 2pi."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class Attention(nn.Module):
    """Multi-head attention of queries over keys/values from the same (self) or another (cross) sequence."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.q = nn.Linear(config.n_embd, config.n_embd)
        self.kv = nn.Linear(config.n_embd, 2 * config.n_embd)  # keys and values in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = Dropout(config.dropout)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, head_dim)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x, k, v, mask=None, causal: bool = False, need_weights: bool = False):
        """x (B, T, C) queries; k, v (B, n_head, S, head_dim); mask (B, 1, 1, S) True = may attend."""
        B, T, C = x.shape
        q = self.heads(self.q(x))
        weights = None
        if need_weights:  # written out, to return the weights (attention plots); same maths as SDPA
            scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # (B, n_head, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            if causal:
                scores = scores.masked_fill(torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            y = weights.to(v.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y)), weights


class FeedForward(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_dim)
        self.proj = nn.Linear(config.ffn_dim, config.n_embd)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x))))


class EncoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(config.n_embd), Attention(config)
        self.ln_2, self.ffn = nn.LayerNorm(config.n_embd), FeedForward(config)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        k, v = self.attn.keys_values(h)
        x = x + self.attn(h, k, v, src_mask)[0]
        return x + self.ffn(self.ln_2(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_1, self.self_attn = nn.LayerNorm(config.n_embd), Attention(config)
        self.ln_2, self.cross_attn = nn.LayerNorm(config.n_embd), Attention(config)
        self.ln_3, self.ffn = nn.LayerNorm(config.n_embd), FeedForward(config)

    def forward(self, x, memory_k, memory_v, src_mask, cache: tuple | None = None, need_weights: bool = False):
        """x (B, T, C). With a cache (keys, values of earlier steps) x holds only the new step(s)."""
        h = self.ln_1(x)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        # Causal over the whole target in training; a single new step may see every cached position.
        x = x + self.self_attn(h, k, v, causal=cache is None and x.size(1) > 1)[0]
        y, weights = self.cross_attn(self.ln_2(x), memory_k, memory_v, src_mask, need_weights=need_weights)
        x = x + y
        return x + self.ffn(self.ln_3(x)), (k, v), weights


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        check_translation_fields(config)
        if config.share_embeddings and config.source_vocab_size != config.target_vocab_size:
            raise NanoNLPError("model.share_embeddings needs one vocabulary for both languages: set data.joint_vocab: true "
                               "or model.share_embeddings: false.")
        self.config = config
        C = config.n_embd
        self.target_embedding = nn.Embedding(config.target_vocab_size, C, padding_idx=config.pad_id)
        self.source_embedding = self.target_embedding if config.share_embeddings else nn.Embedding(config.source_vocab_size, C, padding_idx=config.pad_id)
        if config.positions == "learned":
            self.position_embedding = nn.Embedding(config.max_positions, C)
        else:
            self.register_buffer("position_table", sinusoids(config.max_positions, C), persistent=False)
        self.drop = Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.encoder_ln = nn.LayerNorm(C)  # pre-LN stacks leave their output unnormalised
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.decoder_ln = nn.LayerNorm(C)
        self.out = nn.Linear(C, config.target_vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_output:
            self.out.weight = self.target_embedding.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # N(0, 1/C): scaled by sqrt(C) at the input, the embeddings start at unit size like the positions
            nn.init.normal_(module.weight, mean=0.0, std=module.embedding_dim ** -0.5)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])

    def embed(self, embedding: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = ids.size(1)
        if start + T > self.config.max_positions:
            raise NanoNLPError(f"a sentence of {start + T} tokens is longer than model.max_positions "
                               f"({self.config.max_positions}); shorten it or train with a larger max_positions.")
        pos = torch.arange(start, start + T, device=ids.device)
        positions = self.position_embedding(pos) if self.config.positions == "learned" else self.position_table[pos]
        return self.drop(embedding(ids) * math.sqrt(self.config.n_embd) + positions)  # (B, T, C)

    # ------------------------------------------------------------------ encoder side

    def encoder_states(self, src: torch.Tensor) -> torch.Tensor:
        """Source ids (B, S) -> the encoder's output (B, S, C)."""
        attend = (src != self.config.pad_id)[:, None, None, :]  # (B, 1, 1, S)
        x = self.embed(self.source_embedding, src)
        for layer in self.encoder_layers:
            x = layer(x, attend)
        return self.encoder_ln(x)

    def encode(self, src: torch.Tensor) -> dict:
        """The decoding state for source ids (B, S): each decoder layer's cross-attention keys and values."""
        memory = self.encoder_states(src)  # (B, S, C)
        state = {"src_mask": src != self.config.pad_id}
        for i, layer in enumerate(self.decoder_layers):
            state[f"memory_k{i}"], state[f"memory_v{i}"] = layer.cross_attn.keys_values(memory)
        return state

    # ------------------------------------------------------------------ decoder side

    def decode(self, tgt_in: torch.Tensor, state: dict, start: int = 0, need_weights: bool = False):
        """Target ids (B, T) from position `start` -> logits (B, T, V), new state, cross-attention
        (B, layers, T, S) averaged over heads when need_weights."""
        attend = state["src_mask"][:, None, None, :]
        x = self.embed(self.target_embedding, tgt_in, start)
        new_state, attention = dict(state), []
        cached = start > 0 or "self_k0" in state
        for i, layer in enumerate(self.decoder_layers):
            cache = (state[f"self_k{i}"], state[f"self_v{i}"]) if cached else None
            x, (k, v), weights = layer(x, state[f"memory_k{i}"], state[f"memory_v{i}"], attend, cache, need_weights)
            new_state[f"self_k{i}"], new_state[f"self_v{i}"] = k, v
            if need_weights:
                attention.append(weights.mean(dim=1))  # (B, T, S)
        logits = self.out(self.decoder_ln(x))  # (B, T, V)
        return logits, new_state, (torch.stack(attention, dim=1) if need_weights else None)

    def decode_step(self, tokens: torch.Tensor, state: dict, step: int, need_weights: bool = False):
        """One target step. tokens (B,) at position `step` -> (log-probabilities (B, V), new state,
        cross-attention (B, layers, S) averaged over heads, or None)."""
        logits, state, attention = self.decode(tokens[:, None], state, step, need_weights)
        return F.log_softmax(logits[:, 0].float(), dim=-1), state, (attention[:, :, 0] if need_weights else None)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None, label_smoothing: float = 0.0):
        """Teacher forcing. src (B, S), tgt_in (B, T) starting with bos -> (log-probabilities (B, T, V), loss)."""
        logits, _, _ = self.decode(tgt_in, self.encode(src))
        logprobs = F.log_softmax(logits.float(), dim=-1)
        loss = None
        if tgt_out is not None:
            loss = smoothed_cross_entropy(logprobs, tgt_out, self.config.pad_id, label_smoothing)
        return logprobs, loss

    def flops_per_token(self) -> int:
        """About 6 x parameters per target token (forward and backward); attention over short sentences is small."""
        return 6 * sum(p.numel() for p in self.parameters())

"""GPT: a decoder-only Transformer language model.

Radford et al. 2018/2019, "Improving Language Understanding by Generative Pre-Training" and
"Language Models are Unsupervised Multitask Learners" (GPT-2): pre-LayerNorm blocks, learned
positions, the output projection tied to the token embedding. Parameter names follow GPT-2's
layout so `from_huggingface` maps Hugging Face GPT-2 files onto this module one tensor at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.io import read_huggingface_weights
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.layers import Dropout


@dataclass
class GPTConfig:
    block_size: int = 256  # context length: the longest sequence the model attends over
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384  # width; must be divisible by n_head
    dropout: float = 0.2
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    vocab_size: int = field(default=0, metadata={"derived": "the tokenizer's vocabulary size"})
    layer_norm_epsilon: float = 1e-5
    size: str = field(default="manual", metadata={"choices": ("manual", "auto")})  # auto: shape, batch and rates chosen for train.max_seconds (nanonlp.recipe)
    # The NanoGPT speedrun's changes (Jordan et al. 2024, modded-nanogpt); the defaults are GPT-2's layout.
    position: str = field(default="learned", metadata={"choices": ("learned", "rotary")})  # rotary: RoPE (Su et al. 2021), no wpe
    rotary_base: float = 10000.0  # RoPE's base wavelength
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    activation: str = field(default="gelu", metadata={"choices": ("gelu", "relu2")})  # relu2: ReLU squared (So et al. 2021)
    zero_init: bool = False  # output projections of every block (and an untied head) start at zero
    tie_embeddings: bool = True  # the output head shares the token embedding (GPT-2); false: its own matrix
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) (Gemma 2); 0 off
    # Training loss over the vocabulary loss_chunk tokens at a time, each chunk's logits recomputed in
    # the backward pass, so (tokens x vocab) logits never exist at once (forward then returns no
    # logits with the loss); 0: all at once. Pays off for large vocabularies, not for characters.
    loss_chunk: int = 0

    def validate(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.size == "auto":  # the recipe fills in the shape around what was given, and checks it (nanonlp.recipe)
            pass
        elif self.n_embd % self.n_head != 0:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}).")
        elif self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"rotary positions need an even head width; n_embd / n_head is {self.n_embd // self.n_head}.")
        if self.logit_softcap < 0 or self.rotary_base <= 1:
            raise ConfigError("model.logit_softcap must not be negative and model.rotary_base must be above 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")
        if self.loss_chunk < 0:
            raise ConfigError(f"model.loss_chunk must not be negative (0 turns chunking off), got {self.loss_chunk}.")

    @property
    def gpt2_layout(self) -> bool:
        """Whether the weights are GPT-2's, tensor for tensor (Hugging Face files load and save)."""
        return self.position == "learned" and self.tie_embeddings and not self.qk_norm and self.activation == "gelu"


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # tokens stored so far (the same for every layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, T = self.length, k.size(2)
        self.keys[layer][:, :, start : start + T] = k
        self.values[layer][:, :, start : start + T] = v
        return self.keys[layer][:, :, : start + T], self.values[layer][:, :, : start + T]


class SlotCache:
    """Keys and values of up to `slots` sequences generated together (continuous batching): row i is
    one sequence, at its own length, lengths[i]. A sequence's prompt is filled in from a KVCache of its
    own (`fill`); `GPT.step_slots` then adds one token per row per step."""

    def __init__(self, config: GPTConfig, slots: int, device, dtype):
        head_dim = config.n_embd // config.n_head
        shape = (slots, config.n_head, config.block_size, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)

    def move(self, source: int, slot: int) -> None:
        """Row `slot` takes the sequence in row `source` (which is then free)."""
        for layer in range(len(self.keys)):
            self.keys[layer][slot] = self.keys[layer][source]
            self.values[layer][slot] = self.values[layer][source]
        self.lengths[slot] = self.lengths[source]

    def fill(self, slot: int, cache: KVCache, row: int = 0) -> None:
        """Row `slot` takes the keys and values of row `row` of `cache`."""
        n = cache.length
        for layer in range(len(self.keys)):
            self.keys[layer][slot, :, :n] = cache.keys[layer][row, :, :n]
            self.values[layer][slot, :, :n] = cache.values[layer][row, :, :n]
        self.lengths[slot] = n


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021): each pair of a head's channels (i, i + d/2) is
    rotated by an angle proportional to the position, so q . k depends on positions only through
    their difference."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (T, d/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, heads, T, d) at positions start .. start + T - 1."""
        T, half = x.size(2), x.size(3) // 2
        cos, sin = self.cos[start : start + T].to(x.dtype), self.sin[start : start + T].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, heads, 1, d), row b at position positions[b]."""
        half = x.size(3) // 2
        cos, sin = self.cos[positions][:, None, None].to(x.dtype), self.sin[positions][:, None, None].to(x.dtype)  # (B, 1, 1, d/2)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = Dropout(config.dropout)  # on the attention weights, where training on a CPU (see _attend_with_dropout)
        self.resid_dropout = Dropout(config.dropout)
        self.qk_norm = config.qk_norm
        head_dim = config.n_embd // config.n_head
        self.rotary = Rotary(head_dim, config.block_size, config.rotary_base) if config.position == "rotary" else None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = cache.length if cache is not None else 0
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary is not None:
            q, k = self.rotary(q, past), self.rotary(k, past)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if past == 0 and dropout and x.device.type == "cpu":
            y = self._attend_with_dropout(q, k, v)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # one new token sees everything
        else:
            # new token i (absolute position past + i) may attend to keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def step(self, x: torch.Tensor, slots: SlotCache, layer: int, rows, positions: torch.Tensor, span: int,
             mask: torch.Tensor | None) -> torch.Tensor:
        """One new token per row: x (S, 1, C) for the sequences in slot rows `rows` (S,) (a slice: the
        first S slots, read as views), each at its own position (S,); span: the longest row's length
        after this token; mask (S, 1, 1, span) lets row b see its keys 0 .. positions[b] (None: all rows
        are at one position)."""
        S, _, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(S, 1, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (S, nh, 1, hd)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary is not None:
            q, k = self.rotary.at(q, positions), self.rotary.at(k, positions)
        index = torch.arange(S, device=x.device) if isinstance(rows, slice) else rows
        # under autocast k and v may be in bf16 while the cache keeps the weights' dtype (KVCache.update's copy casts)
        slots.keys[layer][index, :, positions] = k[:, :, 0].to(slots.keys[layer].dtype)
        slots.values[layer][index, :, positions] = v[:, :, 0].to(slots.values[layer].dtype)
        keys, values = slots.keys[layer][rows, :, :span], slots.values[layer][rows, :, :span]  # (S, nh, span, hd)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(S, 1, C))

    def _attend_with_dropout(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention with dropout on its weights, (B, nh, T, hd) -> (B, nh, T, hd). On a CPU,
        scaled_dot_product_attention has no fused kernel with dropout: it takes the same matmul and
        softmax path as here, but draws the mask with bernoulli_, which profiled at 9% of a bf16 step of
        nanoGPT's Shakespeare shape; layers.Dropout draws the same Bernoulli mask about three times faster."""
        T = q.size(2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return self.attn_dropout(weights) @ v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.relu2 = config.activation == "relu2"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))

    def step(self, x: torch.Tensor, slots: SlotCache, layer: int, rows, positions: torch.Tensor, span: int,
             mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn.step(self.ln_1(x), slots, layer, rows, positions, span, mask)
        return x + self.mlp(self.ln_2(x))


def _summed_cross_entropy(logits_of, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(x).float(), targets, ignore_index=-1, reduction="sum")


def chunked_cross_entropy(x: torch.Tensor, targets: torch.Tensor, logits_of, chunk: int) -> torch.Tensor:
    """The mean cross entropy of logits_of(x) (N, C) -> (N, vocab) against targets (N,) (-1: ignored),
    `chunk` rows at a time. Each chunk is checkpointed: its logits are freed after its loss and
    recomputed in the backward pass, so memory holds one chunk's logits instead of all of them."""
    from torch.utils.checkpoint import checkpoint

    total = x.new_zeros((), dtype=torch.float32)
    for start in range(0, x.size(0), chunk):
        total = total + checkpoint(_summed_cross_entropy, logits_of, x[start : start + chunk], targets[start : start + chunk],
                                   use_reentrant=False)
    return total / (targets != -1).sum().clamp(min=1)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise NanoNLPError("GPTConfig.vocab_size must be set from the tokenizer before building the model.")
        self.config = config
        parts = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        parts.update(drop=Dropout(config.dropout), h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                     ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias))
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth. The speedrun starts them (and an untied head) at zero:
        # every block begins as the identity.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init and not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)

    def matrix_parameters(self):
        """The hidden layers' weight matrices (what Muon updates): not the embeddings or the head."""
        return [p for name, p in self.transformer.h.named_parameters() if p.dim() == 2]

    def stacked_matrices(self) -> dict[int, int]:
        """Matrices that stack several by rows, by id: each c_attn weight is q, k and v (Muon may orthogonalise them apart)."""
        return {id(block.attn.c_attn.weight): 3 for block in self.transformer.h}

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(start, start + idx.size(1), device=idx.device))
        return self.transformer.drop(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.transformer.ln_f(x))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross entropy if targets are given."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise NanoNLPError(f"sequence of {start + T} tokens is longer than the model's block_size {self.config.block_size}.")
        x = self._embed(idx, start)  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        if targets is not None and self.config.loss_chunk:
            return None, chunked_cross_entropy(x.reshape(-1, x.size(-1)), targets.reshape(-1), self._logits, self.config.loss_chunk)
        logits = self._logits(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> the final LayerNorm's output (B, T, C), what the LM head reads: the body that
        classifiers and taggers fine-tune. Attention is causal, so padding after a text never changes it."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise NanoNLPError(f"input of {T} tokens is longer than the GPT's block_size {self.config.block_size}.")
        x = self._embed(idx, 0)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    # -- generation interface shared with CharRNN: a state carried from one step to the next --------

    def init_state(self, batch_size: int) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, p.device, p.dtype)

    def next_logits(self, idx: torch.Tensor, state: KVCache, history: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, vocab) for the token after `idx` (B, T), the newest tokens of `history`.

        The cache holds keys and values of earlier tokens. When the context would pass block_size,
        learned positions cannot go further: we refill a fresh cache from the last block_size tokens
        of the history, exactly the window a model without a cache would see. Past block_size every
        step therefore costs a full forward pass, as it does without a cache.
        """
        if state.length + idx.size(1) > self.config.block_size:
            state = self.init_state(idx.size(0))
            idx = history[:, -self.config.block_size :]
        logits, _ = self(idx, cache=state)
        return logits[:, -1, :], state

    # -- continuous batching (serve/generation.py): many sequences, each in a slot at its own length --

    def init_slots(self, slots: int) -> SlotCache:
        p = self.transformer.wte.weight
        return SlotCache(self.config, slots, p.device, p.dtype)

    def fill_slot(self, slots: SlotCache, slot: int, state: KVCache, row: int = 0) -> None:
        """Slot `slot` takes over the sequence in row `row` of a `next_logits` state (its cache)."""
        slots.fill(slot, state, row)

    def move_slot(self, slots: SlotCache, source: int, slot: int) -> None:
        slots.move(source, slot)

    def step_slots(self, idx: torch.Tensor, rows: torch.Tensor | None, slots: SlotCache) -> torch.Tensor:
        """Logits (S, vocab) after feeding token idx[b] to the sequence in slot rows[b] (rows None:
        slot b, for the first S slots, which reads the cache without copying it), for S sequences at
        once, each at its own position (learned or rotary) and attending over its own keys only.
        Every row must have room: sequences at block_size go through `next_logits` instead, which
        re-windows them as generation without batching does."""
        rows = slice(0, idx.size(0)) if rows is None else rows
        positions = slots.lengths[rows]  # (S,)
        if int(positions.max()) >= self.config.block_size:
            raise NanoNLPError(f"a slot is full ({self.config.block_size} tokens); re-window that sequence with next_logits.")
        x = self.transformer.wte(idx)[:, None]  # (S, 1, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(positions)[:, None]
        x = self.transformer.drop(x)
        span = int(positions.max()) + 1  # keys past the longest row are never read
        mask = None
        if int(positions.min()) + 1 < span:
            mask = (torch.arange(span, device=idx.device) <= positions[:, None])[:, None, None, :]  # (S, 1, 1, span)
        for layer, block in enumerate(self.transformer.h):
            x = block.step(x, slots, layer, rows, positions, span, mask)
        slots.lengths[rows] += 1
        return self._logits(x)[:, 0]

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
        n = sum(p.numel() for p in self.parameters()) - (self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0)
        if not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()  # an untied embedding is a lookup, not a matmul
        c = self.config
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size

    # -- Hugging Face GPT-2 files ---------------------------------------------------------------

    @classmethod
    def from_huggingface(cls, folder: str | Path, dropout: float = 0.0) -> "GPT":
        """Load GPT-2 weights from a local folder with config.json and model.safetensors or pytorch_model.bin."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise NanoNLPError(f"'{folder}' has no config.json; point at a folder of Hugging Face GPT-2 files.")
        hf = json.loads(config_path.read_text(encoding="utf-8"))
        if hf.get("model_type", "gpt2") != "gpt2":
            raise NanoNLPError(f"'{folder}' holds a '{hf.get('model_type')}' model; only GPT-2 format weights load into GPT.")
        activation = hf.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise NanoNLPError(f"'{folder}' uses activation '{activation}'; GPT implements GPT-2's tanh GELU (gelu_new) only.")
        config = GPTConfig(
            block_size=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            dropout=dropout, bias=True, vocab_size=hf["vocab_size"], layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        )
        state = read_huggingface_weights(folder)
        model = cls(config)
        # HF GPT-2 uses Conv1D, whose weight is the transpose of nn.Linear's.
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        ours = model.state_dict()
        loaded = set()
        for name, tensor in state.items():
            key = name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
            if key.endswith((".attn.bias", ".attn.masked_bias")) or key not in ours:
                continue  # causal-mask buffers of older files
            if key.endswith(transposed):
                tensor = tensor.t()
            if ours[key].shape != tensor.shape:
                raise NanoNLPError(f"weight '{name}' in '{folder}' has shape {tuple(tensor.shape)}, expected {tuple(ours[key].shape)}.")
            ours[key].copy_(tensor)
            loaded.add(key)
        missing = [k for k in ours if k not in loaded and k != "lm_head.weight"]
        if missing:
            raise NanoNLPError(f"'{folder}' is missing weights {', '.join(missing[:3])}; is it a complete GPT-2 checkpoint?")
        return model




# ---------------------------------------------------------------------------------------------------
# a classification head on a pretrained GPT (Radford et al. 2018; Howard & Ruder 2018, ULMFiT)


@dataclass
class GPTClassifierConfig:
    pooling: str = field(default="last", metadata={"choices": ("last", "mean")})  # last real token, or the mean
    dropout: float = 0.1  # before the classification layer
    num_classes: int = field(default=0, metadata={"derived": "the labels of the training data"})
    gpt: dict = field(default_factory=dict, metadata={"derived": "the pretrained language model's config"})

    def validate(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class GPTClassifier(nn.Module):
    """A GPT body read up to its final LayerNorm, pooled, then a linear layer.

    Attention is causal and padding comes after the text, so pads never reach a real position; the
    'last' pooling reads the state of the last real token, which has seen the whole text.
    """

    def __init__(self, config: GPTClassifierConfig, body: GPT | None = None):
        super().__init__()
        if config.num_classes < 1:
            raise NanoNLPError("GPTClassifierConfig.num_classes must be set from the labels before building the model.")
        self.config = config
        self.gpt = body if body is not None else GPT(GPTConfig(**config.gpt))
        self.dropout = Dropout(config.dropout)
        self.classifier = nn.Linear(self.gpt.config.n_embd, config.num_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = input_ids.shape
        if T > self.gpt.config.block_size:
            raise NanoNLPError(f"input of {T} tokens is longer than the GPT's block_size {self.gpt.config.block_size}; lower data.max_length.")
        x = self.gpt.hidden_states(input_ids)  # (B, T, C)
        mask = attention_mask.to(x.dtype)
        if self.config.pooling == "last":
            last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token
            pooled = x[torch.arange(B, device=x.device), last]
        else:
            pooled = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))  # (B, classes)
        loss = F.cross_entropy(logits.float(), targets) if targets is not None else None
        return logits, loss

    def head_parameters(self):
        return self.classifier.parameters()

    def flops_per_token(self) -> float:
        return self.gpt.flops_per_token()

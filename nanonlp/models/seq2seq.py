"""Seq2Seq: a recurrent encoder-decoder with attention, for translation.

Bahdanau, Cho and Bengio 2015, "Neural Machine Translation by Jointly Learning to Align and
Translate": a bidirectional RNN encodes the source; at each target step an additive attention over the
encoder states, queried by the previous decoder state, gives a context vector fed into the decoder RNN.
Luong, Pham and Manning 2015, "Effective Approaches to Attention-based NMT": the attention is queried by
the current decoder state and scored by a dot product ("dot") or a bilinear form ("general"); the
attentional vector tanh(W [h; context]) predicts the word, and with input feeding it is also fed into
the next step, so the decoder knows what it attended to before.

The decoder runs one step at a time, in training as in decoding: one code path, so what is trained is
what is searched. Decoding state is a dict of tensors with the batch first (see `decode.reorder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nanonlp.errors import ConfigError
from nanonlp.models.layers import Dropout, check_translation_fields, smoothed_cross_entropy


@dataclass
class Seq2SeqConfig:
    rnn: str = field(default="gru", metadata={"choices": ("gru", "lstm")})  # cell of the encoder and the decoder
    attention: str = field(default="bahdanau", metadata={"choices": ("bahdanau", "dot", "general")})  # additive, or Luong's
    input_feeding: bool = True  # Luong attention: feed the last attentional vector into the next step
    embed_dim: int = 256  # source and target embedding width
    hidden_size: int = 512  # decoder state; the encoder has hidden_size / 2 per direction
    num_layers: int = 1  # stacked RNN layers in the encoder and in the decoder
    dropout: float = 0.3  # on embeddings, between RNN layers and before the output layer
    source_vocab_size: int = field(default=0, metadata={"derived": "the source tokenizer's vocabulary size"})
    target_vocab_size: int = field(default=0, metadata={"derived": "the target tokenizer's vocabulary size"})
    pad_id: int = field(default=0, metadata={"derived": "the tokenizers' padding id"})
    bos_id: int = field(default=1, metadata={"derived": "the target tokenizer's begin-of-sentence id"})
    eos_id: int = field(default=2, metadata={"derived": "the tokenizers' end-of-sentence id"})

    def validate(self) -> None:
        for name in ("embed_dim", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        if self.hidden_size % 2:
            raise ConfigError(f"model.hidden_size must be even (the encoder has hidden_size / 2 per direction), got {self.hidden_size}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class Encoder(nn.Module):
    """Embeddings, then a bidirectional RNN over the real tokens only (packed, so padding is never read)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(config.source_vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.dropout = Dropout(config.dropout)
        rnn = nn.GRU if config.rnn == "gru" else nn.LSTM
        self.rnn = rnn(config.embed_dim, config.hidden_size // 2, config.num_layers, batch_first=True, bidirectional=True,
                       dropout=config.dropout if config.num_layers > 1 else 0.0)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        x = self.dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, H)
        return out, final  # final: (num_layers * 2, B, H/2), or a pair of them for an LSTM


class Attention(nn.Module):
    """Scores of a query against every encoder state, masked to real source tokens, and their context."""

    def __init__(self, kind: str, hidden_size: int):
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":  # v . tanh(W_q q + W_k k)
            self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)
            self.query_proj = nn.Linear(hidden_size, hidden_size, bias=False)
            self.energy = nn.Linear(hidden_size, 1, bias=False)
        elif kind == "general":  # q . W k
            self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The part of the score that depends on the source only, computed once per sentence."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor):
        # query (B, H); keys, memory (B, S, H); src_mask (B, S), True at real tokens
        if self.kind == "bahdanau":
            scores = self.energy(torch.tanh(self.query_proj(query)[:, None, :] + keys)).squeeze(2)  # (B, S)
        else:
            scores = torch.bmm(keys, query[:, :, None]).squeeze(2)  # (B, S)
        scores = scores.float().masked_fill(~src_mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).to(memory.dtype)  # (B, S)
        context = torch.bmm(weights[:, None, :], memory).squeeze(1)  # (B, H)
        return context, weights


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        check_translation_fields(config)
        self.config = config
        H, E = config.hidden_size, config.embed_dim
        self.encoder = Encoder(config)
        # The decoder starts from a projection of the encoder's last forward and first backward states.
        self.bridge = nn.Linear(H, H)
        self.embed = nn.Embedding(config.target_vocab_size, E, padding_idx=config.pad_id)
        self.dropout = Dropout(config.dropout)
        self.attention = Attention(config.attention, H)
        feeds_vector = config.attention == "bahdanau" or config.input_feeding
        rnn = nn.GRU if config.rnn == "gru" else nn.LSTM
        self.rnn = rnn(E + H if feeds_vector else E, H, config.num_layers, batch_first=True,
                       dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.combine = nn.Linear(2 * H, H, bias=False)  # attentional vector tanh(W [h; context])
        self.out = nn.Linear(H, config.target_vocab_size)

    # ------------------------------------------------------------------ encoder side

    def encode(self, src: torch.Tensor) -> dict:
        """The decoding state for a batch of source ids (B, S): encoder states and the decoder's start."""
        src_mask = src != self.config.pad_id  # (B, S)
        lengths = src_mask.sum(1).clamp(min=1)
        memory, final = self.encoder(src, lengths)
        state = {"memory": memory, "keys": self.attention.keys(memory), "src_mask": src_mask}
        if self.config.rnn == "lstm":
            state["hidden"], state["cell"] = self._bridge(final[0]), self._bridge(final[1])
        else:
            state["hidden"] = self._bridge(final)
        state["attentional"] = memory.new_zeros(src.size(0), self.config.hidden_size)
        return state

    def _bridge(self, final: torch.Tensor) -> torch.Tensor:
        # (layers * 2, B, H/2) -> (B, layers, H): both directions of each layer side by side
        layers, B = self.config.num_layers, final.size(1)
        both = final.view(layers, 2, B, -1).permute(2, 0, 1, 3).reshape(B, layers, -1)
        return torch.tanh(self.bridge(both))

    # ------------------------------------------------------------------ decoder side

    def _step(self, tokens: torch.Tensor, state: dict):
        """One decoder step up to the attentional vector: tokens (B,) -> (attentional (B, H), new state, weights (B, S))."""
        emb = self.dropout(self.embed(tokens))  # (B, E)
        hidden = state["hidden"].transpose(0, 1).contiguous()  # (layers, B, H)
        if self.config.attention == "bahdanau":
            # Bahdanau: the previous state asks where to look; the context is an input of this step.
            context, weights = self.attention(hidden[-1], state["keys"], state["memory"], state["src_mask"])
            rnn_input = torch.cat([emb, context], dim=1)
        elif self.config.input_feeding:
            rnn_input = torch.cat([emb, state["attentional"]], dim=1)
        else:
            rnn_input = emb
        rnn_state = (hidden, state["cell"].transpose(0, 1).contiguous()) if self.config.rnn == "lstm" else hidden
        output, rnn_state = self.rnn(rnn_input[:, None, :], rnn_state)
        output = output[:, 0]  # (B, H)
        if self.config.attention != "bahdanau":
            # Luong: the new state asks where to look.
            context, weights = self.attention(output, state["keys"], state["memory"], state["src_mask"])
        attentional = torch.tanh(self.combine(torch.cat([output, context], dim=1)))  # (B, H)
        new_state = dict(state, attentional=attentional)
        if self.config.rnn == "lstm":
            new_state["hidden"], new_state["cell"] = rnn_state[0].transpose(0, 1), rnn_state[1].transpose(0, 1)
        else:
            new_state["hidden"] = rnn_state.transpose(0, 1)
        return attentional, new_state, weights

    def decode_step(self, tokens: torch.Tensor, state: dict, step: int = 0, need_weights: bool = False):
        """One target step. tokens (B,) -> (log-probabilities (B, V), new state, attention (B, 1, S))."""
        attentional, state, weights = self._step(tokens, state)
        logits = self.out(self.dropout(attentional))  # (B, V)
        return F.log_softmax(logits.float(), dim=-1), state, weights[:, None, :]

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None, label_smoothing: float = 0.0):
        """Teacher forcing. src (B, S), tgt_in (B, T) starting with bos -> (log-probabilities (B, T, V), loss)."""
        state = self.encode(src)
        vectors = []
        for t in range(tgt_in.size(1)):
            attentional, state, _ = self._step(tgt_in[:, t], state)
            vectors.append(attentional)
        # The output layer, the largest matmul, runs once over all steps instead of once per step.
        logits = self.out(self.dropout(torch.stack(vectors, dim=1)))  # (B, T, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        loss = None
        if tgt_out is not None:
            loss = smoothed_cross_entropy(logprobs, tgt_out, self.config.pad_id, label_smoothing)
        return logprobs, loss

    def flops_per_token(self) -> int:
        """About 6 x parameters per target token (forward and backward), as for any dense network."""
        return 6 * sum(p.numel() for p in self.parameters())

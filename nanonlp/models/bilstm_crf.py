"""BiLSTM-CRF: a named-entity tagger from word embeddings, character features and a CRF.

Lample et al. 2016, "Neural Architectures for Named Entity Recognition": each word is its embedding
joined with features of its characters (a character BiLSTM there; a character CNN as in Ma and Hovy
2016, "End-to-end Sequence Labeling via Bi-directional LSTM-CNNs-CRF", here by default), read by a
bidirectional LSTM whose states score every tag; a linear-chain CRF on top scores whole tag
sequences. For Chinese the tokens are characters, and the character features see one character.

Decoding never gives a tag sequence the scheme forbids (I-PER after B-LOC): the CRF carries the
scheme's constraints, and without a CRF the per-token log-probabilities are decoded by the same
constrained Viterbi with zero transition scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nanonlp.errors import ConfigError
from nanonlp.models.crf import SequenceTagger
from nanonlp.models.layers import Dropout


@dataclass
class BiLSTMCRFConfig:
    vocab_size: int = field(default=0, metadata={"derived": "the word vocabulary of the training data"})
    char_vocab_size: int = field(default=0, metadata={"derived": "the characters of the training data"})
    pad_id: int = field(default=0, metadata={"derived": "the word vocabulary"})
    bigram_vocab_size: int = field(default=0, metadata={"derived": "the token bigrams of the training data (with bigram_dim)"})
    tags: list = field(default_factory=list, metadata={"derived": "the tags of the training data"})
    allowed: list = field(default_factory=list, metadata={"derived": "the tagging scheme: [start, transitions, end] allowed"})
    embed_dim: int = 100  # word embedding width
    bigram_dim: int = 0  # width of an embedding of each token with its right neighbour (a character bigram in Chinese); 0: none
    char_features: str = field(default="cnn", metadata={"choices": ("cnn", "lstm", "none")})  # how characters are read
    char_embed_dim: int = 25
    char_hidden: int = 50  # CNN filters, or LSTM units per direction
    char_kernel: int = 3  # CNN window over characters
    hidden_size: int = 128  # word LSTM units per direction
    num_layers: int = 1
    dropout: float = 0.5  # on the word representations and on the LSTM's outputs
    word_dropout: float = 0.0  # in training, each word id becomes <unk> with this probability, so the <unk> vector learns what rare words look like
    crf: bool = True  # score whole sequences with a CRF; false: a softmax per token (still decoded under the constraints)

    def validate(self) -> None:
        if self.bigram_dim < 0:
            raise ConfigError(f"model.bigram_dim must be 0 (off) or more, got {self.bigram_dim}.")
        for name in ("embed_dim", "char_embed_dim", "char_hidden", "char_kernel", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("dropout", "word_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}.")


class CharCNN(nn.Module):
    """Each word's characters -> max over a 1-D convolution (Ma and Hovy 2016)."""

    def __init__(self, config: BiLSTMCRFConfig):
        super().__init__()
        self.embed = nn.Embedding(config.char_vocab_size, config.char_embed_dim, padding_idx=0)
        self.conv = nn.Conv1d(config.char_embed_dim, config.char_hidden, config.char_kernel, padding=config.char_kernel // 2)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        B, L, W = chars.shape
        x = self.embed(chars.view(B * L, W)).transpose(1, 2)  # (B*L, E, W)
        h = self.conv(x)  # (B*L, F, W')
        h = h[:, :, :W].masked_fill((chars.view(B * L, 1, W) == 0), float("-inf"))  # padding characters never win the max
        h = h.max(dim=2).values
        return torch.where(torch.isinf(h), torch.zeros_like(h), h).view(B, L, -1)  # padding words: zeros


class CharLSTM(nn.Module):
    """Each word's characters -> the last states of a character BiLSTM (Lample et al. 2016)."""

    def __init__(self, config: BiLSTMCRFConfig):
        super().__init__()
        self.embed = nn.Embedding(config.char_vocab_size, config.char_embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(config.char_embed_dim, config.char_hidden, batch_first=True, bidirectional=True)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        B, L, W = chars.shape
        flat = chars.view(B * L, W)
        lengths = (flat != 0).sum(1)
        out = torch.zeros(B * L, 2 * self.lstm.hidden_size, device=chars.device)
        real = lengths > 0
        if real.any():
            packed = pack_padded_sequence(self.embed(flat[real]), lengths[real].cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.lstm(packed)  # h: (2, N, H), forward and backward final states
            out[real] = torch.cat([h[0], h[1]], dim=1).to(out.dtype)
        return out.view(B, L, -1)


class BiLSTMCRF(SequenceTagger):
    def __init__(self, config: BiLSTMCRFConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.chars = {"cnn": CharCNN, "lstm": CharLSTM}.get(config.char_features, lambda c: None)(config)
        char_width = {"cnn": config.char_hidden, "lstm": 2 * config.char_hidden}.get(config.char_features, 0)
        self.dropout = Dropout(config.dropout)
        self.bigrams = nn.Embedding(config.bigram_vocab_size, config.bigram_dim, padding_idx=0) if config.bigram_dim else None
        self.lstm = nn.LSTM(config.embed_dim + char_width + config.bigram_dim, config.hidden_size, num_layers=config.num_layers,
                            batch_first=True, bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self._build_output(2 * config.hidden_size)

    def forward(self, words: torch.Tensor, chars: torch.Tensor, mask: torch.Tensor, bigrams: torch.Tensor | None = None,
                tags: torch.Tensor | None = None):
        """words (B, L), chars (B, L, W), mask (B, L) bool, bigrams (B, L) with bigram_dim -> emissions
        (B, L, T) and the loss when tags are given."""
        if self.training and self.config.word_dropout > 0:
            # Lample et al. replace singletons by <unk> (id 1) at random; any word here, as rare words dominate the unknowns at test time.
            drop = (torch.rand(words.shape, device=words.device) < self.config.word_dropout) & mask
            words = torch.where(drop, torch.ones_like(words), words)
            if bigrams is not None:
                drop = (torch.rand(bigrams.shape, device=bigrams.device) < self.config.word_dropout) & mask
                bigrams = torch.where(drop, torch.ones_like(bigrams), bigrams)
        x = self.embed(words)
        if self.chars is not None:
            x = torch.cat([x, self.chars(chars)], dim=-1)
        if self.bigrams is not None:
            if bigrams is None:
                raise ValueError("this tagger reads token bigrams (model.bigram_dim); pass their ids")
            x = torch.cat([x, self.bigrams(bigrams)], dim=-1)
        x = self.dropout(x)
        lengths = mask.sum(1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=words.size(1))  # (B, L, 2H)
        return self.output(self.dropout(h), mask, tags)

    def flops_per_token(self) -> float:
        # 2 FLOPs per multiply-add, forward and backward (x3), for the LSTM's and head's weight matrices.
        matrices = sum(p.numel() for name, p in self.named_parameters() if p.dim() == 2 and not name.startswith(("embed", "chars.embed")))
        return 6.0 * matrices

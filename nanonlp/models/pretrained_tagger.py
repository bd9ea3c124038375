"""Entity taggers on a pretrained Transformer: a BERT-format encoder, or a GPT pretrained by nanonlp.

The pretrained body reads the text as sub-word pieces. Each word is represented by the state of one
of its pieces: the first under a bidirectional encoder, as in Devlin et al. 2019 (sec. 5.3, "we use
the representation of the first sub-token"); the last under a causal GPT, as the last piece is the
first whose state has seen the whole word. Two optional additions before the output layer:

- an embedding of the word's letter case (Collobert et al. 2011's caps feature), for lowercasing
  encoders such as all-MiniLM-L6-v2, which cannot tell "Apple" from "apple";
- a BiLSTM over the word states, which gives a GPT's left-to-right states their right context.

The output layer and the optional CRF are the BiLSTM-CRF's (nanonlp.models.crf.SequenceTagger), with
the same transition constraints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.bert import BertConfig, BertEncoder, layer_depths
from nanonlp.models.crf import SequenceTagger
from nanonlp.models.gpt import GPT, GPTConfig
from nanonlp.models.layers import Dropout

# Word shapes for the case feature; index 0 is padding.
SHAPES = ("<pad>", "lower", "upper", "title", "mixed", "digits", "other")


def word_shape(word: str) -> int:
    """The id in SHAPES of a word's letter case: lower, UPPER, Title, miXed, digits, or other (punctuation, CJK)."""
    if word.isdigit():
        return SHAPES.index("digits")
    cased = [c for c in word if c.isupper() or c.islower()]
    if not cased:
        return SHAPES.index("other")
    if all(c.islower() for c in cased):
        return SHAPES.index("lower")
    if all(c.isupper() for c in cased):
        return SHAPES.index("upper")
    if cased[0].isupper() and all(c.islower() for c in cased[1:]):
        return SHAPES.index("title")
    return SHAPES.index("mixed")


@dataclass
class PretrainedTaggerConfig:
    tags: list = field(default_factory=list, metadata={"derived": "the tags of the training data"})
    allowed: list = field(default_factory=list, metadata={"derived": "the tagging scheme: [start, transitions, end] allowed"})
    character_tokens: bool = field(default=False, metadata={"derived": "whether the training data has one character a token"})
    subtoken: str = field(default="auto", metadata={"choices": ("auto", "first", "last")})  # the piece whose state stands for a word; auto: first (BERT), last (GPT)
    case_embed_dim: int = 0  # width of a letter-case embedding joined to each word's state; 0: none
    rnn_hidden: int = 0  # units per direction of a BiLSTM over the word states; 0: none
    dropout: float = 0.1  # on the word states before the output layer
    crf: bool = True  # score whole sequences with a CRF; false: a softmax per word (still decoded under the constraints)

    def validate(self) -> None:
        for name in ("case_embed_dim", "rnn_hidden"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be 0 (off) or more, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


@dataclass
class BertTaggerConfig(PretrainedTaggerConfig):
    encoder: dict = field(default_factory=dict, metadata={"derived": "the pretrained encoder's config.json"})


@dataclass
class GPTTaggerConfig(PretrainedTaggerConfig):
    gpt: dict = field(default_factory=dict, metadata={"derived": "the pretrained language model's config"})


class PretrainedTagger(SequenceTagger):
    """A pretrained body, one state per word, [case embedding], [BiLSTM], the output layer and CRF."""

    def __init__(self, config: PretrainedTaggerConfig, width: int):
        super().__init__()
        if not config.tags:
            raise NanoNLPError("the tagger's config has no tags; they are set from the training data before building the model.")
        self.config = config
        self.case = nn.Embedding(len(SHAPES), config.case_embed_dim, padding_idx=0) if config.case_embed_dim else None
        width += config.case_embed_dim
        self.dropout = Dropout(config.dropout)
        self.rnn = None
        if config.rnn_hidden:
            self.rnn = nn.LSTM(width, config.rnn_hidden, batch_first=True, bidirectional=True)
            width = 2 * config.rnn_hidden
        self._build_output(width)

    @property
    def first_piece(self) -> bool:
        """Whether a word is read at its first piece (else its last)."""
        return self.config.subtoken == "first" or (self.config.subtoken == "auto" and not self.causal)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_index: torch.Tensor, word_mask: torch.Tensor,
                shapes: torch.Tensor, tags: torch.Tensor | None = None):
        """input_ids, attention_mask (B, T) pieces; word_index (B, L) the piece standing for each word;
        word_mask (B, L); shapes (B, L) ids in SHAPES -> emissions (B, L, tags) and the loss when tags are given."""
        hidden = self.body_states(input_ids, attention_mask)  # (B, T, H)
        states = hidden.gather(1, word_index.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # (B, L, H)
        if self.case is not None:
            states = torch.cat([states, self.case(shapes).to(states.dtype)], dim=-1)
        states = self.dropout(states)
        if self.rnn is not None:
            lengths = word_mask.sum(1).clamp(min=1)
            packed = pack_padded_sequence(states, lengths.cpu(), batch_first=True, enforce_sorted=False)
            states, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=word_mask.size(1))
            states = self.dropout(states)
        return self.output(states, word_mask, tags)

    def head_parameters(self):
        """Everything but the pretrained body: it may learn at train.head_learning_rate."""
        body = {id(p) for p in self.body.parameters()}
        return [p for p in self.parameters() if id(p) not in body]

    def flops_per_token(self) -> float:
        # per piece, forward and backward, for the body's matrices (its embeddings are lookups)
        return 6.0 * sum(p.numel() for n, p in self.body.named_parameters() if p.dim() == 2 and "wte" not in n
                         and "wpe" not in n and "embeddings" not in n)


class BertTagger(PretrainedTagger):
    causal = False

    def __init__(self, config: BertTaggerConfig, encoder: BertEncoder | None = None):
        if not config.encoder and encoder is None:
            raise NanoNLPError("BertTaggerConfig.encoder must be set from the pretrained encoder before building the model.")
        encoder = encoder if encoder is not None else BertEncoder(BertConfig(**config.encoder), pooler=False)
        super().__init__(config, encoder.config.hidden_size)
        self.bert = encoder

    @property
    def body(self) -> nn.Module:
        return self.bert

    @property
    def max_pieces(self) -> int:
        return self.bert.config.max_position_embeddings

    def body_states(self, input_ids, attention_mask):
        return self.bert(input_ids, attention_mask)

    def layer_depths(self) -> tuple[dict[int, int], int]:
        return layer_depths(self.bert)


class GPTTagger(PretrainedTagger):
    causal = True

    def __init__(self, config: GPTTaggerConfig, body: GPT | None = None):
        if not config.gpt and body is None:
            raise NanoNLPError("GPTTaggerConfig.gpt must be set from the pretrained language model before building the model.")
        body = body if body is not None else GPT(GPTConfig(**config.gpt))
        super().__init__(config, body.config.n_embd)
        self.gpt = body

    @property
    def body(self) -> nn.Module:
        return self.gpt

    @property
    def max_pieces(self) -> int:
        return self.gpt.config.block_size

    def body_states(self, input_ids, attention_mask):
        return self.gpt.hidden_states(input_ids)  # causal: the padding after a text never reaches it

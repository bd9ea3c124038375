"""MPNet: a bidirectional Transformer encoder with relative position buckets.

Song et al. 2020, "MPNet: Masked and Permuted Pre-training for Language Understanding". Once
pre-trained, the encoder is BERT's post-LayerNorm Transformer with two differences, both here:

- positions are learned absolute embeddings counted from pad_token_id + 1 (RoBERTa's convention:
  padding tokens sit at position pad_token_id and do not advance the count), and there are no
  segment embeddings;
- every attention layer adds a learned bias per head for the relative distance between query and
  key, the distance first put in one of `relative_attention_num_buckets` buckets (Raffel et al. 2020,
  T5): half the buckets for keys before the query, half after; within each half, exact distances up
  to a quarter of the buckets, then logarithmically wider ones up to 128 tokens, all further ones in
  the last bucket. One table (encoder.relative_attention_bias) serves every layer.

Module names follow Hugging Face's `MPNetModel`, so `from_huggingface` loads their checkpoints
(all-mpnet-base-v2) one tensor to one parameter. The feed-forward sublayer is BERT's, shared.
`MPNetClassifier` and `MPNetTagger`, at the end, put the task heads beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import read_huggingface_weights
from nanonlp.models.bert import BertClassifierConfig, BertIntermediate, BertOutput, layer_depths, pool
from nanonlp.models.layers import Dropout
from nanonlp.models.pretrained_tagger import PretrainedTagger, PretrainedTaggerConfig

MAX_DISTANCE = 128  # relative distances from here on share the last bucket


@dataclass
class MPNetConfig:
    vocab_size: int = 30527  # defaults are microsoft/mpnet-base (all-mpnet-base-v2)
    hidden_size: int = 768  # width; must be divisible by num_attention_heads
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # width of the feed-forward layer inside each block
    hidden_act: str = "gelu"  # exact (erf) GELU, the only activation implemented
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514  # includes the pad_token_id + 1 positions before the first token
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    relative_attention_num_buckets: int = 32  # distance buckets, half before and half after the query

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be an integer of at least 1, got {getattr(self, name)!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.num_attention_heads ({self.num_attention_heads}).")
        if self.hidden_act != "gelu":
            raise ConfigError(f"model.hidden_act '{self.hidden_act}' is not supported; MPNet here uses 'gelu' (exact erf GELU).")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 4:
            raise ConfigError(f"model.relative_attention_num_buckets must be a multiple of 4, got {self.relative_attention_num_buckets}.")
        if not isinstance(self.pad_token_id, int) or not 0 <= self.pad_token_id < min(self.vocab_size, self.max_position_embeddings):
            raise ConfigError(f"model.pad_token_id must be an id below vocab_size and max_position_embeddings, got {self.pad_token_id!r}.")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"model.layer_norm_eps must be positive, got {self.layer_norm_eps}.")

    @property
    def max_tokens(self) -> int:
        """The longest input: positions begin after pad_token_id."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def from_json(cls, path: str | Path) -> "MPNetConfig":
        """Read a Hugging Face config.json; keys that are not fields are ignored."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise NanoNLPError(f"cannot read the MPNet config '{path}' ({error}); it must be a JSON file.") from None
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known and v is not None})
        config.validate()
        return config


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """Bucket of each (key position - query position): keys after the query use the upper half of the
    buckets; within a half, distances below a quarter of all buckets get one bucket each, the rest
    share logarithmically wider buckets, and from max_distance on, the half's last bucket."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    # log-spaced: exact .. half - 1 cover distances exact .. max_distance
    far = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class MPNetEmbeddings(nn.Module):
    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        real = input_ids.ne(self.pad_token_id).long()  # (B, T)
        # real tokens count from pad_token_id + 1; pad tokens stay at pad_token_id (an embedding never trained)
        positions = torch.cumsum(real, dim=1) * real + self.pad_token_id
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))  # (B, T, H)


class MPNetSelfAttention(nn.Module):
    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.k = nn.Linear(config.hidden_size, config.hidden_size)
        self.v = nn.Linear(config.hidden_size, config.hidden_size)
        self.o = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, H); bias (B or 1, heads, T, T): relative-position bias plus -inf at padded keys."""
        B, T, H = x.shape
        # (B, T, H) -> (B, heads, T, head_dim)
        q, k, v = (proj(x).view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, H))  # (B, T, H)


class MPNetAttention(nn.Module):
    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.attn = MPNetSelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x + self.dropout(self.attn(x, bias)))  # post-LN, as BERT


class MPNetLayer(nn.Module):
    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.attention = MPNetAttention(config)
        self.intermediate = BertIntermediate(config)  # BERT's feed-forward sublayer: the same maths and names
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class MPNetPooler(nn.Module):
    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class MPNetEncoder(nn.Module):
    def __init__(self, config: MPNetConfig, pooler: bool = True):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = MPNetEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([MPNetLayer(config) for _ in range(config.num_hidden_layers)])
        self.encoder.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)
        self.pooler = MPNetPooler(config) if pooler else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def position_bias(self, T: int, device) -> torch.Tensor:
        """(1, heads, T, T): the learned bias of each query-key distance."""
        positions = torch.arange(T, device=device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.config.relative_attention_num_buckets)
        return self.encoder.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # (T, T, heads) -> (1, heads, T, T)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T); attention_mask (B, T) of 1 for real tokens, 0 for padding -> hidden (B, T, H)."""
        B, T = input_ids.shape
        if T > self.config.max_tokens:
            raise NanoNLPError(f"input of {T} tokens is longer than the model's {self.config.max_tokens} positions; truncate it "
                               "(e.g. data.max_length).")
        x = self.embeddings(input_ids)  # (B, T, H)
        bias = self.position_bias(T, input_ids.device)  # (1, heads, T, T)
        if attention_mask is not None:
            # padded keys get -inf: no real token's state depends on padding (padded queries still see real keys)
            bias = bias.masked_fill(~attention_mask.to(torch.bool)[:, None, None, :], float("-inf"))  # (B, heads, T, T)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x

    @classmethod
    def from_huggingface(cls, folder: str | Path) -> "MPNetEncoder":
        """Load an MPNet folder (config.json, model.safetensors or pytorch_model.bin), in eval mode."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise NanoNLPError(f"'{folder}' has no config.json; point at a folder of Hugging Face MPNet files.")
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
        if model_type != "mpnet":
            raise NanoNLPError(f"'{folder}' holds a '{model_type}' model (config.json model_type); only 'mpnet' loads into MPNetEncoder.")
        try:
            config = MPNetConfig.from_json(config_path)
        except ConfigError as error:
            raise NanoNLPError(f"config.json in '{folder}' does not describe a supported MPNet: {error}") from None
        state = {name.removeprefix("mpnet."): tensor for name, tensor in read_huggingface_weights(folder).items()}
        model = cls(config, pooler="pooler.dense.weight" in state)
        ours = model.state_dict()
        with torch.no_grad():
            for name, tensor in state.items():
                if name not in ours:
                    continue  # index buffers and task heads (lm_head.*, classifier.*)
                if ours[name].shape != tensor.shape:
                    raise NanoNLPError(f"weight '{name}' in '{folder}' has shape {tuple(tensor.shape)}, expected "
                                       f"{tuple(ours[name].shape)} from config.json; do the weights match the config?")
                ours[name].copy_(tensor)
        missing = [k for k in ours if k not in state]
        if missing:
            raise NanoNLPError(f"'{folder}' is missing {len(missing)} weights ({', '.join(missing[:3])}); is it a complete "
                               "MPNet checkpoint matching its config.json?")
        return model.eval()


def is_mpnet_folder(folder: str | Path) -> bool:
    """Whether a pretrained folder's config.json names model_type mpnet."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == "mpnet"
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------------
# task heads beside the encoder


@dataclass
class MPNetClassifierConfig(BertClassifierConfig):
    """The BERT classifier's settings (pooling, dropout), over an MPNet body."""


class MPNetClassifier(nn.Module):
    """An MPNet encoder, pooled to one vector per text (mean of the real tokens, or <s>), then a linear layer."""

    def __init__(self, config: MPNetClassifierConfig, encoder: MPNetEncoder | None = None):
        super().__init__()
        if config.num_classes < 1:
            raise NanoNLPError("MPNetClassifierConfig.num_classes must be set from the labels before building the model.")
        self.config = config
        self.mpnet = encoder if encoder is not None else MPNetEncoder(MPNetConfig(**config.encoder), pooler=False)
        self.dropout = Dropout(config.dropout)
        self.classifier = nn.Linear(self.mpnet.config.hidden_size, config.num_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None):
        hidden = self.mpnet(input_ids, attention_mask)  # (B, T, H)
        logits = self.classifier(self.dropout(pool(hidden, attention_mask, self.config.pooling)))  # (B, classes)
        loss = F.cross_entropy(logits.float(), targets) if targets is not None else None
        return logits, loss

    def head_parameters(self):
        return self.classifier.parameters()

    def layer_depths(self) -> tuple[dict[int, int], int]:
        return layer_depths(self.mpnet)

    def flops_per_token(self) -> float:
        return 6 * sum(p.numel() for n, p in self.mpnet.named_parameters() if "embeddings" not in n)

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: MPNetClassifierConfig) -> "MPNetClassifier":
        encoder = MPNetEncoder.from_huggingface(folder)
        encoder.pooler = None  # the pooler is not used by mean or first-token pooling
        config = dataclasses.replace(config, encoder=dataclasses.asdict(encoder.config))
        return cls(config, encoder).train()


@dataclass
class MPNetTaggerConfig(PretrainedTaggerConfig):
    encoder: dict = field(default_factory=dict, metadata={"derived": "the pretrained encoder's config.json"})


class MPNetTagger(PretrainedTagger):
    """The pretrained tagger (nanonlp.models.pretrained_tagger) over an MPNet body, words read at their first piece."""

    causal = False

    def __init__(self, config: MPNetTaggerConfig, encoder: MPNetEncoder | None = None):
        if not config.encoder and encoder is None:
            raise NanoNLPError("MPNetTaggerConfig.encoder must be set from the pretrained encoder before building the model.")
        encoder = encoder if encoder is not None else MPNetEncoder(MPNetConfig(**config.encoder), pooler=False)
        super().__init__(config, encoder.config.hidden_size)
        self.mpnet = encoder

    @property
    def body(self) -> nn.Module:
        return self.mpnet

    @property
    def max_pieces(self) -> int:
        return self.mpnet.config.max_tokens

    def body_states(self, input_ids, attention_mask):
        return self.mpnet(input_ids, attention_mask)

    def layer_depths(self) -> tuple[dict[int, int], int]:
        return layer_depths(self.mpnet)

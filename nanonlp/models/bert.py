"""BERT: a bidirectional Transformer encoder.

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding": token + position + segment embeddings, post-LayerNorm blocks (the residual sum is
normalised, unlike GPT-2), exact erf GELU. Module names follow Hugging Face's `BertModel`, so
`from_huggingface` loads their checkpoints (BERT, MiniLM, sentence-transformers encoders) one
tensor to one parameter. `BertClassifier`, at the end, puts a classification head beside it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.io import read_huggingface_weights
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.layers import Dropout


@dataclass
class BertConfig:
    vocab_size: int = 30522  # defaults are bert-base-uncased
    hidden_size: int = 768  # width; must be divisible by num_attention_heads
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # width of the feed-forward layer inside each block
    hidden_act: str = "gelu"  # exact (erf) GELU, the only activation implemented
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512  # the longest input, in tokens
    type_vocab_size: int = 2  # segments (sentence A / B) told apart by token_type_ids
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be an integer of at least 1, got {getattr(self, name)!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.num_attention_heads ({self.num_attention_heads}).")
        if self.hidden_act != "gelu":
            raise ConfigError(f"model.hidden_act '{self.hidden_act}' is not supported; BERT here uses 'gelu' (exact erf GELU).")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}.")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"model.layer_norm_eps must be positive, got {self.layer_norm_eps}.")
        if not isinstance(self.pad_token_id, int) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model.pad_token_id must be an id below vocab_size ({self.vocab_size}), got {self.pad_token_id!r}.")

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read a Hugging Face config.json (or our own model JSON); keys that are not fields are ignored."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise NanoNLPError(f"cannot read the BERT config '{path}' ({error}); it must be a JSON file.") from None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        config = cls(**values)
        config.validate()
        return config


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,), broadcast over the batch
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))  # (B, T, H)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        # (B, T, H) -> (B, heads, T, head_dim)
        q, k, v = (proj(x).view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(y)))  # post-LN: normalise the sum


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.gelu = nn.GELU()  # exact erf form, as in the original BERT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gelu(self.dense(x))  # (B, T, intermediate)


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertPooler(nn.Module):
    """BERT's next-sentence head input: tanh(dense(hidden state of [CLS]))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig, pooler: bool = True):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.pooler = BertPooler(config) if pooler else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initializer_range 0.02; LayerNorm keeps PyTorch's ones and zeros.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T); attention_mask (B, T) of 1 for real tokens, 0 for padding -> hidden (B, T, H)."""
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise NanoNLPError(f"input of {T} tokens is longer than the model's max_position_embeddings "
                               f"{self.config.max_position_embeddings}; truncate it (e.g. encode_batch's max_length).")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None
        if attention_mask is not None:
            # (B, T) -> (B, 1, 1, T): every head and every query may look only at real keys, so
            # padding never changes the hidden states of real tokens. Padded queries still attend
            # to real keys, which keeps their rows finite (they are ignored by pool()).
            mask = attention_mask.to(torch.bool)[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    # -- Hugging Face BERT files ----------------------------------------------------------------

    @classmethod
    def from_huggingface(cls, folder: str | Path) -> "BertEncoder":
        """Load a BERT-format folder (config.json and model.safetensors or pytorch_model.bin), in eval mode."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise NanoNLPError(f"'{folder}' has no config.json; point at a folder of Hugging Face BERT files.")
        hf = json.loads(config_path.read_text(encoding="utf-8"))
        if hf.get("model_type") != "bert":
            raise NanoNLPError(f"'{folder}' holds a '{hf.get('model_type')}' model (config.json model_type); "
                               "only model_type 'bert' loads into BertEncoder (for model_type mpnet, use model.type mpnet).")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise NanoNLPError(f"'{folder}' uses position_embedding_type '{hf['position_embedding_type']}'; "
                               "BertEncoder implements absolute positions only.")
        try:
            config = BertConfig.from_json(config_path)
        except ConfigError as error:
            raise NanoNLPError(f"config.json in '{folder}' does not describe a supported BERT: {error}") from None
        state = {}
        for name, tensor in read_huggingface_weights(folder).items():
            name = name.removeprefix("bert.")
            # very old TensorFlow conversions name LayerNorm parameters gamma and beta
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            state[name] = tensor
        model = cls(config, pooler="pooler.dense.weight" in state)
        ours = model.state_dict()
        unexpected = []
        with torch.no_grad():
            for name, tensor in state.items():
                if name.endswith((".position_ids", ".token_type_ids")):
                    continue  # index buffers, rebuilt in forward
                if name not in ours:
                    # task heads (cls.*, classifier.*, ...) are not part of the encoder
                    if name.startswith(("embeddings.", "encoder.", "pooler.")):
                        unexpected.append(name)
                    continue
                if ours[name].shape != tensor.shape:
                    raise NanoNLPError(f"weight '{name}' in '{folder}' has shape {tuple(tensor.shape)}, expected "
                                       f"{tuple(ours[name].shape)} from config.json; do the weights match the config?")
                ours[name].copy_(tensor)
        missing = [k for k in ours if k not in state]
        if missing or unexpected:
            problems = [f"missing {len(missing)} weights ({', '.join(missing[:3])})"] if missing else []
            problems += [f"{len(unexpected)} unexpected weights ({', '.join(unexpected[:3])})"] if unexpected else []
            raise NanoNLPError(f"'{folder}' has {' and '.join(problems)}; is it a complete BERT checkpoint matching its config.json?")
        return model.eval()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One vector per sequence: hidden (B, T, H), attention_mask (B, T) -> (B, H).

    "mean" averages the real tokens only (sentence-transformers' mean pooling); "cls" takes the first.
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    raise NanoNLPError(f"unknown pooling '{how}'; use mean or cls.")




def layer_depths(encoder: BertEncoder) -> tuple[dict[int, int], int]:
    """For layer-wise learning rates: id(parameter) -> depth (embeddings 0, encoder layer i at i + 1),
    and the top depth, for every parameter of the encoder. A head beside it is left out: it has its own rate."""
    depths, top = {}, 0
    for name, p in encoder.named_parameters():
        if ".layer." in f".{name}":
            depth = int(name.split("layer.")[1].split(".")[0]) + 1
        else:
            depth = 0 if "embeddings" in name else None  # e.g. a pooler sits on top
        depths[id(p)] = depth
        top = max(top, depth or 0)
    return {k: (top if v is None else v) for k, v in depths.items()}, top


# ---------------------------------------------------------------------------------------------------
# a classification head beside the encoder


@dataclass
class BertClassifierConfig:
    pooling: str = field(default="mean", metadata={"choices": ("mean", "cls")})  # how token states become one vector
    dropout: float = 0.1  # before the classification layer
    num_classes: int = field(default=0, metadata={"derived": "the labels of the training data"})
    encoder: dict = field(default_factory=dict, metadata={"derived": "the pretrained encoder's config.json"})

    def validate(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}.")


class BertClassifier(nn.Module):
    """A BERT-style encoder, pooled to one vector per text, then a linear layer (Devlin et al. 2019, sec. 4)."""

    def __init__(self, config: BertClassifierConfig, encoder: BertEncoder | None = None):
        super().__init__()
        if config.num_classes < 1:
            raise NanoNLPError("BertClassifierConfig.num_classes must be set from the labels before building the model.")
        self.config = config
        self.bert = encoder if encoder is not None else BertEncoder(BertConfig(**config.encoder), pooler=False)
        self.dropout = Dropout(config.dropout)
        self.classifier = nn.Linear(self.bert.config.hidden_size, config.num_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor | None = None):
        hidden = self.bert(input_ids, attention_mask)  # (B, T, H)
        logits = self.classifier(self.dropout(pool(hidden, attention_mask, self.config.pooling)))  # (B, classes)
        loss = F.cross_entropy(logits.float(), targets) if targets is not None else None
        return logits, loss

    def head_parameters(self):
        return self.classifier.parameters()

    def layer_depths(self) -> tuple[dict[int, int], int]:
        return layer_depths(self.bert)

    def flops_per_token(self) -> float:
        return 6 * sum(p.numel() for n, p in self.bert.named_parameters() if "embeddings" not in n)

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: BertClassifierConfig) -> "BertClassifier":
        encoder = BertEncoder.from_huggingface(folder)
        if encoder.pooler is not None:
            encoder.pooler = None  # BERT's next-sentence pooler is not used by mean or [CLS] pooling here
        config = dataclasses.replace(config, encoder=dataclasses.asdict(encoder.config))
        return cls(config, encoder).train()

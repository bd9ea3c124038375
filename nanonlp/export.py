"""Trained runs out of nanonlp: Hugging Face folders (`transformers`) and ONNX graphs (ONNX Runtime).

`export(run_dir, "hf" | "onnx", out)` writes one folder, atomically: everything goes to a hidden
temporary folder beside `out`, which is renamed into place only once complete, so a failure leaves
nothing behind.

Hugging Face (`--format hf`), one tensor to one tensor, with no conversion of the arithmetic:

    GPT in GPT-2's layout             -> GPT2LMHeadModel (+ its tokenizer: byte-level BPE or characters)
    classifier on a BERT/MPNet body   -> BertForSequenceClassification / MPNetForSequenceClassification
                                         subclasses that pool as nanonlp does (mean or first token),
                                         shipped as modeling_nanonlp.py in the folder: load with
                                         trust_remote_code=True; labels in config.json's id2label
    tagger on a BERT/MPNet body       -> BertForTokenClassification / MPNetForTokenClassification (stock)

What `transformers` has no layer for is refused, naming it: a speedrun GPT's rotary positions,
QK-norm, ReLU², untied head or logit soft-cap; a tagger's CRF, case embedding or BiLSTM; models with
no Hugging Face counterpart at all (n-grams, CNN, BiLSTM, char-RNN, translators, VAEs).

ONNX (`--format onnx`): model.onnx plus nanonlp.json (the inputs, outputs and labels or tags) and the
tokenizer. Classifiers: (input_ids, attention_mask) -> logits. Pretrained taggers: (input_ids,
attention_mask, word_index, word_mask, shapes) -> emissions per word (a CRF's transition matrix goes
into nanonlp.json; Viterbi decoding stays with the caller). GPT: (input_ids, past_key_i, past_value_i
for every layer) -> (logits, present_key_i, present_value_i): the KV cache as inputs and outputs, so a
caller generates one token a step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.errors import NanoNLPError

FORMATS = ("hf", "onnx")


def export(run_dir: str | Path, format: str, out: str | Path) -> Path:
    """Write the run's model in `format` (hf or onnx) to the new folder `out`; returns `out`."""
    from nanonlp.checkpoint import open_run
    from nanonlp.predict import load_model

    if format not in FORMATS:
        raise NanoNLPError(f"unknown export format '{format}'; use hf (a transformers folder) or onnx.")
    out = Path(out)
    if out.exists():
        raise NanoNLPError(f"'{out}' already exists; choose another --out or delete it.")
    run = open_run(run_dir)
    model = load_model(run, torch.device("cpu")).float()
    writer = _huggingface if format == "hf" else _onnx
    plan = writer(run, model)  # checks everything it can before a file is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        plan(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _kind(model: nn.Module) -> str:
    from nanonlp.models.bert import BertClassifier
    from nanonlp.models.gpt import GPT, GPTClassifier
    from nanonlp.models.pretrained_tagger import PretrainedTagger

    if isinstance(model, GPT):
        return "gpt"
    if isinstance(model, BertClassifier) or isinstance(model, GPTClassifier) or _is_mpnet(model, "classifier"):
        return "classifier"
    if isinstance(model, PretrainedTagger):
        return "tagger"
    return type(model).__name__


def _is_mpnet(model: nn.Module, what: str) -> bool:
    try:
        from nanonlp.models import mpnet
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, mpnet.MPNetClassifier if what == "classifier" else mpnet.MPNetTagger)


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders


def _huggingface(run, model: nn.Module):
    from nanonlp.data.tokenizers import load_tokenizer
    from nanonlp.models.bert import BertClassifier
    from nanonlp.models.gpt import GPT
    from nanonlp.models.pretrained_tagger import BertTagger

    tokenizer = load_tokenizer(run.dir)
    if isinstance(model, GPT):
        return _gpt2(model, tokenizer)
    if isinstance(model, BertClassifier):
        return _sequence_classifier(run, model, tokenizer, "bert")
    if _is_mpnet(model, "classifier"):
        return _sequence_classifier(run, model, tokenizer, "mpnet")
    if isinstance(model, BertTagger):
        return _token_classifier(model, tokenizer, "bert")
    if _is_mpnet(model, "tagger"):
        return _token_classifier(model, tokenizer, "mpnet")
    onnx = run.config.task == "classify" or _kind(model) == "tagger"
    raise NanoNLPError(f"a {type(model).__name__} ({run.config.task} task) has no transformers counterpart; --format hf "
                       "exports GPTs in GPT-2's layout and classifiers and taggers on a pretrained BERT or MPNet body"
                       + ("; --format onnx exports it." if onnx else "."))


def _gpt2(model, tokenizer):
    c = model.config
    missing = [what for what, present in [
        ("rotary positions (model.position: rotary)", c.position != "learned"),
        ("QK-norm (model.qk_norm)", c.qk_norm),
        ("the ReLU² activation (model.activation: relu2)", c.activation != "gelu"),
        ("an untied output head (model.tie_embeddings: false)", not c.tie_embeddings),
        ("a logit soft-cap (model.logit_softcap)", c.logit_softcap > 0),
    ] if present]
    if missing:
        raise NanoNLPError(f"GPT2LMHeadModel has no {', no '.join(missing)}; only a GPT in GPT-2's layout exports to "
                           "Hugging Face (--format onnx exports this one).")
    hf_tokenizer = _huggingface_tokenizer(tokenizer)
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.block_size,
        "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "layer_norm_epsilon": c.layer_norm_epsilon,
        "tie_word_embeddings": True, "scale_attn_weights": True, "use_cache": True, "torch_dtype": "float32",
    }
    # GPT-2's Conv1D stores the transpose of nn.Linear's weight; a bias-free nanonlp GPT (model.bias:
    # false) gets zero biases, which compute the same.
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        state[name] = tensor.t() if name.endswith(transposed) else tensor
    if not c.bias:
        for i in range(c.n_layer):
            for part, width in [("ln_1", c.n_embd), ("ln_2", c.n_embd), ("attn.c_attn", 3 * c.n_embd), ("attn.c_proj", c.n_embd),
                                ("mlp.c_fc", 4 * c.n_embd), ("mlp.c_proj", c.n_embd)]:
                state[f"transformer.h.{i}.{part}.bias"] = torch.zeros(width)
        state["transformer.ln_f.bias"] = torch.zeros(c.n_embd)

    def write(folder: Path) -> None:
        _write_weights(state, folder)
        _write_json(folder / "config.json", config)
        hf_tokenizer(folder, c.block_size)

    return write


def _sequence_classifier(run, model, tokenizer, family: str):
    from nanonlp.predict.classify import read_labels

    labels = read_labels(run.dir)
    multi_label = bool(getattr(run.config.classify, "multi_label", False))
    pooling = model.config.pooling
    encoder_config = _encoder_config(model, family)
    base = "BertForSequenceClassification" if family == "bert" else "MPNetForSequenceClassification"
    name = f"NanoNLP{base}"
    config = {
        **encoder_config, "architectures": [name], "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)}, "classifier_dropout": model.config.dropout,
        "problem_type": "multi_label_classification" if multi_label else "single_label_classification",
        "nanonlp_pooling": pooling, "auto_map": {"AutoModelForSequenceClassification": f"modeling_nanonlp.{name}"},
    }
    body = "bert" if family == "bert" else "mpnet"
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(("bert.", "mpnet.")):
            state[body + key[key.index("."):]] = tensor
        elif key.startswith("classifier."):
            # MPNet's stock head is dense -> tanh -> out_proj; ours is one linear layer, kept as classifier.out_proj
            state[key if family == "bert" else key.replace("classifier.", "classifier.out_proj.")] = tensor
    hf_tokenizer = _huggingface_tokenizer(tokenizer)
    max_length = getattr(run.config.data, "max_length", None)

    def write(folder: Path) -> None:
        _write_weights(state, folder)
        _write_json(folder / "config.json", config)
        (folder / "modeling_nanonlp.py").write_text(_MODELING[family].replace("{name}", name).replace("{base}", base), encoding="utf-8")
        hf_tokenizer(folder, max_length)

    return write


def _token_classifier(model, tokenizer, family: str):
    c = model.config
    missing = [what for what, present in [
        ("CRF (model.crf: true; train with model.crf: false to export)", c.crf),
        ("letter-case embedding (model.case_embed_dim)", c.case_embed_dim > 0),
        ("BiLSTM over the word states (model.rnn_hidden)", c.rnn_hidden > 0),
        ("last-piece word reading (model.subtoken: last)", not model.first_piece),
    ] if present]
    base = "BertForTokenClassification" if family == "bert" else "MPNetForTokenClassification"
    if missing:
        raise NanoNLPError(f"{base} has no {', no '.join(missing)}; --format onnx exports this tagger.")
    config = {**_encoder_config(model, family), "architectures": [base], "id2label": {str(i): t for i, t in enumerate(c.tags)},
              "label2id": {t: i for i, t in enumerate(c.tags)}, "classifier_dropout": c.dropout}
    body = "bert" if family == "bert" else "mpnet"
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(("bert.", "mpnet.")):
            state[body + key[key.index("."):]] = tensor
        elif key.startswith("emissions."):
            state[key.replace("emissions.", "classifier.")] = tensor
    hf_tokenizer = _huggingface_tokenizer(tokenizer)

    def write(folder: Path) -> None:
        _write_weights(state, folder)
        _write_json(folder / "config.json", config)
        hf_tokenizer(folder, model.max_pieces)

    return write


def _encoder_config(model, family: str) -> dict:
    body = model.bert if family == "bert" else model.mpnet
    config = dataclasses.asdict(body.config)
    if family == "bert":
        return {"model_type": "bert", **config, "position_embedding_type": "absolute", "torch_dtype": "float32"}
    return {"model_type": "mpnet", **config, "torch_dtype": "float32"}


def _huggingface_tokenizer(tokenizer):
    """A function writing the tokenizer files `transformers`' AutoTokenizer reads (tokenizer.json in
    Hugging Face `tokenizers`' format, and its tokenizer_config.json); checked before anything is written."""
    from nanonlp.data.tokenizers import BPETokenizer, CharTokenizer, WordPieceTokenizer

    if isinstance(tokenizer, WordPieceTokenizer):
        special = tokenizer.special_tokens()
        extra = {"do_lower_case": tokenizer.lowercase} if tokenizer.lowercase is not None else {}
        backend, options = tokenizer.tokenizer, {"tokenizer_class": tokenizer.huggingface_class, **extra, **special}
    elif isinstance(tokenizer, BPETokenizer):
        backend, options = tokenizer.tokenizer, {"tokenizer_class": "PreTrainedTokenizerFast"}
    elif isinstance(tokenizer, CharTokenizer):
        backend, options = char_tokenizer(tokenizer), {"tokenizer_class": "PreTrainedTokenizerFast"}
        if tokenizer.unk_id is not None:
            options["unk_token"] = tokenizer.UNKNOWN
    else:
        raise NanoNLPError(f"a {type(tokenizer).__name__} has no Hugging Face tokenizer counterpart.")

    def write(folder: Path, max_length: int | None) -> None:
        backend.save(str(folder / "tokenizer.json"))
        _write_json(folder / "tokenizer_config.json", {**options, **({"model_max_length": max_length} if max_length else {})})
        if isinstance(tokenizer, WordPieceTokenizer):
            (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokenizer.vocab), encoding="utf-8")

    return write


def char_tokenizer(tokenizer):
    """nanonlp's character vocabulary as a Hugging Face `tokenizers` Tokenizer with the same ids: every
    character a token (newlines and spaces too), unseen characters to U+FFFD where the vocabulary has it,
    ids joined back without spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    unk = tokenizer.UNKNOWN if tokenizer.unk_id is not None else None
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def _write_weights(state: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().contiguous().clone() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# The pooling heads written beside a classifier's weights: subclasses of the stock classes, so that
# isinstance checks, pipelines and Trainer treat them as the stock ones; only the pooling differs.
_MODELING_COMMON = '''"""Written by `nanonlp export --format hf`: {base} pooled as the nanonlp classifier was trained
(config.nanonlp_pooling: mean over the real tokens, or the first token), then one linear layer. Load with
AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)."""

import torch
from torch import nn
from transformers import {base}, {model}
from transformers.modeling_outputs import SequenceClassifierOutput


class {name}({base}):
    def __init__(self, config):
        super().__init__(config)
        self.{body} = {model}(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)
        {head}
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.{body}(input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, H)
        if self.config.nanonlp_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        logits = {logits}
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


_MODELING = {
    "bert": _MODELING_COMMON.replace("{model}", "BertModel").replace("{body}", "bert")
    .replace("{head}", "self.classifier = nn.Linear(config.hidden_size, config.num_labels)")
    .replace("{logits}", "self.classifier(self.dropout(pooled))  # (B, labels)"),
    "mpnet": _MODELING_COMMON.replace("{model}", "MPNetModel").replace("{body}", "mpnet")
    .replace("{head}", "self.classifier = nn.Module()\n        self.classifier.out_proj = nn.Linear(config.hidden_size, config.num_labels)")
    .replace("{logits}", "self.classifier.out_proj(self.dropout(pooled))  # (B, labels)"),
}


# ---------------------------------------------------------------------------------------------------
# ONNX


OPSET = 17


def _onnx(run, model: nn.Module):
    from nanonlp.data.tokenizers import load_tokenizer

    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise NanoNLPError("--format onnx needs the onnx package: pip install 'nanonlp[onnx]'.") from None
    kind = _kind(model)
    tokenizer = load_tokenizer(run.dir)
    if kind == "gpt":
        wrapper, inputs, names, dynamic, meta = _gpt_graph(model)
    elif kind == "classifier" or run.config.task == "classify":
        wrapper, inputs, names, dynamic, meta = _classifier_graph(run, model)
    elif kind == "tagger":
        wrapper, inputs, names, dynamic, meta = _tagger_graph(model)
    else:
        raise NanoNLPError(f"--format onnx exports classifiers, taggers on a pretrained body and GPTs; a {type(model).__name__} "
                           f"({run.config.task} task) is none of them.")
    try:
        hf_tokenizer = _huggingface_tokenizer(tokenizer)
    except NanoNLPError:
        hf_tokenizer = None  # a word vocabulary: the run's own tokenizer.json is copied instead

    def write(folder: Path) -> None:
        import warnings

        import onnx

        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on Python-side checks (a length limit) and its own deprecation notices
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper.eval(), inputs, str(folder / "model.onnx"), input_names=names[0], output_names=names[1],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        # an input the graph never reads (a tagger's word_mask without a BiLSTM) is dropped by the exporter
        kept = [i.name for i in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.input]
        _write_json(folder / "nanonlp.json", {**meta, "inputs": kept, "outputs": names[1], "task": run.config.task,
                                              "model_type": type(model).__name__})
        if hf_tokenizer is not None:
            hf_tokenizer(folder, meta.get("max_length"))
        else:
            shutil.copy2(run.dir / "tokenizer.json", folder / "nanonlp_tokenizer.json")

    return write


class _Classifier(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)[0]


def _classifier_graph(run, model):
    from nanonlp.predict.classify import read_labels

    B, T = 2, 8
    inputs = (torch.ones(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.long))
    names = (["input_ids", "attention_mask"], ["logits"])
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}
    meta = {"kind": "classifier", "labels": read_labels(run.dir), "max_length": getattr(run.config.data, "max_length", None),
            "multi_label": bool(getattr(run.config.classify, "multi_label", False))}
    return _Classifier(model), inputs, names, dynamic, meta


class _Tagger(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, word_index, word_mask, shapes):
        return self.model(input_ids, attention_mask, word_index, word_mask, shapes)[0]


def _tagger_graph(model):
    if model.rnn is not None:
        raise NanoNLPError("a tagger with a BiLSTM over its word states (model.rnn_hidden) does not export to ONNX here; "
                           "train it with model.rnn_hidden: 0 to export.")
    B, T, L = 2, 10, 6
    long = dict(dtype=torch.long)
    inputs = (torch.ones(B, T, **long), torch.ones(B, T, **long), torch.arange(L).repeat(B, 1) + 1, torch.ones(B, L, dtype=torch.bool),
              torch.ones(B, L, **long))
    names = (["input_ids", "attention_mask", "word_index", "word_mask", "shapes"], ["emissions"])
    dynamic = {"input_ids": {0: "batch", 1: "pieces"}, "attention_mask": {0: "batch", 1: "pieces"}, "word_index": {0: "batch", 1: "words"},
               "word_mask": {0: "batch", 1: "words"}, "shapes": {0: "batch", 1: "words"}, "emissions": {0: "batch", 1: "words"}}
    c = model.config
    meta = {"kind": "tagger", "tags": list(c.tags), "crf": c.crf, "first_piece": model.first_piece, "max_length": model.max_pieces,
            "transitions": model.crf.transitions.tolist() if c.crf else None, "allowed": c.allowed,
            "note": "emissions per word; decode with Viterbi over the transitions (crf) or take the argmax under the allowed transitions"}
    return _Tagger(model), inputs, names, dynamic, meta


class _GPTStep(nn.Module):
    """GPT's forward with its KV cache as plain tensors: (input_ids (B, T), past keys and values of every
    layer (B, heads, P, head_dim)) -> (logits (B, T, vocab), present keys and values (B, heads, P + T, head_dim)).
    The same modules and weights as nanonlp.models.gpt.GPT; positions start at P."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, *past):
        gpt, c = self.gpt, self.gpt.config
        B, T = input_ids.shape
        P = past[0].shape[2]
        x = gpt.transformer.wte(input_ids)
        if "wpe" in gpt.transformer:
            x = x + gpt.transformer.wpe(torch.arange(T, device=input_ids.device) + P)
        presents = []
        # new token i (absolute position P + i) may attend to keys 0 .. P + i
        mask = torch.ones(T, P + T, dtype=torch.bool, device=input_ids.device).tril(diagonal=P)
        for i, block in enumerate(gpt.transformer.h):
            attn, h = block.attn, block.ln_1(x)
            q, k, v = attn.c_attn(h).split(c.n_embd, dim=2)
            # (B, T, C) -> (B, heads, T, head_dim)
            q, k, v = (t.view(B, T, c.n_head, c.n_embd // c.n_head).transpose(1, 2) for t in (q, k, v))
            if attn.qk_norm:
                q, k = _rms_norm(q), _rms_norm(k)
            if attn.rotary is not None:
                q, k = _rotate(attn.rotary, q, P), _rotate(attn.rotary, k, P)
            k, v = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, c.n_embd))
            x = x + block.mlp(block.ln_2(x))
        return (gpt._logits(x), *presents)


def _rms_norm(x):
    """F.rms_norm without a weight (its eps: the dtype's), spelled in operators opset 17 has."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def _rotate(rotary, x, start):
    T, half = x.size(2), x.size(3) // 2
    cos, sin = rotary.cos[start : start + T], rotary.sin[start : start + T]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _gpt_graph(model):
    c = model.config
    B, T, P = 2, 3, 4
    head_dim = c.n_embd // c.n_head
    past = [torch.zeros(B, c.n_head, P, head_dim) for _ in range(2 * c.n_layer)]
    inputs = (torch.zeros(B, T, dtype=torch.long), *past)
    cache_in = [f"past_{kind}_{i}" for i in range(c.n_layer) for kind in ("key", "value")]
    cache_out = [f"present_{kind}_{i}" for i in range(c.n_layer) for kind in ("key", "value")]
    names = (["input_ids", *cache_in], ["logits", *cache_out])
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}}
    dynamic.update({name: {0: "batch", 2: "past"} for name in cache_in})
    dynamic.update({name: {0: "batch", 2: "past_and_tokens"} for name in cache_out})
    meta = {"kind": "gpt", "n_layer": c.n_layer, "n_head": c.n_head, "head_dim": head_dim, "block_size": c.block_size,
            "max_length": c.block_size,
            "note": "start with past tensors of shape (batch, n_head, 0, head_dim); feed each step's present_* back as past_*; "
                    "past + tokens must not exceed block_size"}
    return _GPTStep(model), inputs, names, dynamic, meta

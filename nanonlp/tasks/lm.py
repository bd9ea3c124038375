"""Language modelling: train a CharRNN or GPT on a text file, sample from it, score text with it.

This is the one place that joins the text reader, the tokenizer, the id arrays, the model and the
training loop for this task.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from nanonlp import checkpoint
from nanonlp.config import Config, DataConfig, SampleConfig, dump_yaml, from_dict, read_yaml, to_dict
from nanonlp.data import catalog
from nanonlp.data.readers import read_text
from nanonlp.data.tokenizers import BPETokenizer, StreamDecoder, load_tokenizer, train_tokenizer
from nanonlp.decode import generate_ids
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models import GPT, GPTConfig, build_model
from nanonlp.train import TrainingJob, autocast, init_distributed, model_summary, resolve_device, resolve_dtype, train

DATA_DIR = "data"


# ---------------------------------------------------------------------------------------------------
# data: tokenize once into memory-mapped id arrays in the run directory


def write_ids(path: Path, ids: list[int] | np.ndarray, vocab_size: int) -> None:
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    checkpoint.atomic_write_bytes(path, np.asarray(ids, dtype=dtype).tobytes())


def read_ids(path: Path, vocab_size: int) -> np.ndarray:
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r")


def prepare_data(cfg: DataConfig, run_dir: Path, tokenizer=None, quiet: bool = False):
    """Read the corpus, split off the last val_fraction of it, train the tokenizer (unless given one),
    write train.bin and val.bin; return the tokenizer."""
    source = catalog.resolve(cfg.path)
    text = read_text(source, cfg.encoding)
    split_at = int(len(text) * (1.0 - cfg.val_fraction))
    train_text, val_text = text[:split_at], text[split_at:]
    if tokenizer is None:
        # BPE merges are learned from the training split only; the character vocabulary covers the
        # whole text, so the validation split never holds a character the model cannot encode.
        tokenizer = train_tokenizer(cfg.tokenizer, text if cfg.tokenizer == "char" else train_text, cfg.vocab_size)
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    n_train, n_val = len(train_ids), len(val_ids)
    data_dir = run_dir / DATA_DIR
    write_ids(data_dir / "train.bin", train_ids, tokenizer.vocab_size)
    write_ids(data_dir / "val.bin", val_ids, tokenizer.vocab_size)
    meta = {"source": str(source), "characters": len(text), "train_tokens": n_train, "val_tokens": n_val}
    checkpoint.save_json(data_dir / "meta.json", meta)
    tokenizer.save(run_dir)
    if not quiet:
        print(f"data: {source}: {len(text):,} characters -> {n_train + n_val:,} tokens "
              f"({tokenizer.kind}, vocabulary {tokenizer.vocab_size}); {n_train:,} train / {n_val:,} validation",
              file=sys.stderr)
    return tokenizer


class WindowSampler:
    """Random windows of block_size + 1 tokens from a memory-mapped id array: inputs and shifted targets."""

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, device: torch.device, seed: int, split: str,
                 rank: int = 0, world_size: int = 1):
        if len(ids) < block_size + 1:
            raise NanoNLPError(
                f"the {split} split has {len(ids)} tokens, fewer than model.block_size + 1 = {block_size + 1}; "
                f"use more text, a smaller model.block_size, or {'a larger' if split == 'validation' else 'a smaller'} data.val_fraction."
            )
        self.ids, self.block_size, self.batch_size, self.device = ids, block_size, batch_size, device
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Every rank draws the same global batch and keeps its own slice of it: the ranks together
        # train on exactly the batch one process with batch_size * world_size would see.
        starts = torch.randint(len(self.ids) - self.block_size, (self.batch_size * self.world_size,), generator=self.generator)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].numpy()
        window = torch.from_numpy(self.ids[starts[:, None] + self.offsets].astype(np.int64))  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the GPU still working on the last step.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y


def lm_loss(model, batch) -> torch.Tensor:
    x, y = batch
    _, loss = model(x, y)
    return loss


# ---------------------------------------------------------------------------------------------------
# training


def _check_resume_compatible(cfg: Config, saved: Config) -> None:
    for section in ("data", "model"):
        ours, theirs = to_dict(cfg)[section], to_dict(saved)[section]
        for key, value in theirs.items():
            if key == "vocab_size" or (section == "model" and cfg.train.init_from and key != "dropout"):
                continue  # a fine-tuned GPT-2's shape comes from its folder, not from the config
            if ours.get(key) != value:
                raise ConfigError(
                    f"cannot resume: the run in '{cfg.train.out_dir}' was trained with {section}.{key}={value!r} "
                    f"but the config now says {ours.get(key)!r}; restore it or choose a new train.out_dir."
                )


def _build_from_pretrained(cfg: Config):
    """GPT-2 weights and tokenizer from train.init_from, positions cropped to model.block_size."""
    folder = Path(cfg.train.init_from)
    model = GPT.from_huggingface(folder, dropout=cfg.model.dropout if isinstance(cfg.model, GPTConfig) else 0.0)
    block_size = min(cfg.model.block_size, model.config.block_size)
    # Keep only the positions we train on (nanoGPT's crop_block_size): less memory, same weights.
    model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size].clone())
    model.config = dataclasses.replace(model.config, block_size=block_size)
    cfg.model = model.config
    return model, BPETokenizer.from_huggingface(folder)


def _prepare_run(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Rank 0 only: check the run directory, tokenize the data, write config.yaml and model.json."""
    has_run = checkpoint.claim_run_dir(run_dir, resume, overwrite)
    if has_run:  # resume: the data and tokenizer of the run are reused as they are
        _check_resume_compatible(cfg, from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True))
        return
    pretrained = None
    if cfg.train.init_from:
        _, pretrained = _build_from_pretrained(cfg)
    tokenizer = prepare_data(cfg.data, run_dir, pretrained, quiet)
    if pretrained is None:
        cfg.model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    checkpoint.save_model_config(run_dir, to_dict(cfg)["model"]["type"], cfg.model)
    checkpoint.atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))  # last: marks the run as prepared


def train_lm(cfg: Config, resume: bool = False, quiet: bool = False, overwrite: bool = False):
    run_dir = Path(cfg.train.out_dir)
    dist = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device)
    quiet = quiet or not dist.is_main
    dist.main_first(lambda: _prepare_run(cfg, run_dir, resume, overwrite, quiet), device)

    # Every rank rebuilds the model from what rank 0 wrote; the same seed gives the same weights.
    cfg.model = from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True).model
    tokenizer = load_tokenizer(run_dir)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.init_from:
        model, _ = _build_from_pretrained(cfg)
    else:
        model = build_model(cfg.model)
    if dist.rank > 0:
        torch.manual_seed(cfg.train.seed + 1000 * dist.rank)  # different dropout masks on each rank
    model.to(device)

    block_size, tc = cfg.model.block_size, cfg.train
    if not (run_dir / DATA_DIR / "train.bin").is_file() or not (run_dir / DATA_DIR / "val.bin").is_file():
        raise NanoNLPError(f"run directory '{run_dir}' has no tokenized data ({DATA_DIR}/train.bin); start it over with --overwrite.")
    train_ids = read_ids(run_dir / DATA_DIR / "train.bin", tokenizer.vocab_size)
    val_ids = read_ids(run_dir / DATA_DIR / "val.bin", tokenizer.vocab_size)
    sampler = WindowSampler(train_ids, block_size, tc.batch_size, device, tc.seed, "training", dist.rank, dist.world_size)
    WindowSampler(val_ids, block_size, tc.batch_size, device, tc.seed, "validation")  # fail early if too short

    def evaluate(model) -> dict:
        # The same validation windows every time, so evaluations compare like with like.
        val = WindowSampler(val_ids, block_size, tc.batch_size, device, tc.seed + 1, "validation")
        losses = [lm_loss(model, val()).item() for _ in range(tc.eval_batches)]
        return {"val_loss": sum(losses) / len(losses)}

    if not quiet:
        if dist.enabled:
            print(f"distributed: {dist.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'})", file=sys.stderr)
        print(model_summary(model, device, tc.dtype), file=sys.stderr)
    job = TrainingJob(
        model=model,
        train_batch=sampler,
        loss=lm_loss,
        evaluate=evaluate,
        batch_tokens=lambda batch: batch[0].numel(),
        data_state=lambda: {"generator": sampler.generator.get_state()},
        load_data_state=lambda state: sampler.generator.set_state(state["generator"]),
        flops_per_token=model.flops_per_token(),
    )
    result = train(job, tc, run_dir, device, resume=resume, quiet=quiet)
    if dist.is_main:
        from nanonlp.plots import loss_curve

        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return result


# ---------------------------------------------------------------------------------------------------
# using a trained model


class LanguageModel:
    """A trained language model with its tokenizer: `generate`, `stream`, `evaluate`."""

    def __init__(self, model, tokenizer, config: Config | None, device: torch.device, run_dir: Path | None = None):
        self.model, self.tokenizer, self.config, self.device, self.run_dir = model, tokenizer, config, device, run_dir
        self.model.eval()

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise NanoNLPError("the prompt is empty after tokenization; give at least one character of prompt.")
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def stream(self, prompt: str = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated.

        Bad arguments and an unencodable prompt raise here, before anything is generated.
        """
        SampleConfig(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p).validate()
        prompt_ids = self._prompt_ids(prompt)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        return self._pieces(prompt_ids, max_new_tokens, temperature, top_k, top_p, generator)

    def _pieces(self, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator) -> Iterator[str]:
        decoder = StreamDecoder(self.tokenizer)
        # bf16 sampling on GPUs; on CPU float32, whose per-token matmuls are too small to gain from bf16.
        dtype = resolve_dtype("auto", self.device) if self.device.type == "cuda" else torch.float32
        with autocast(self.device, dtype):
            for token in generate_ids(self.model, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator):
                piece = decoder.push(int(token[0, 0]))
                if piece:
                    yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def generate(self, prompt: str = "\n", max_new_tokens: int = 500, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None) -> str:
        """The prompt followed by its generated continuation."""
        return prompt + "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed))

    @torch.no_grad()
    def evaluate(self, text: str, batch_size: int = 16) -> dict:
        """Loss (nats per token), perplexity and bits per character of `text`.

        Windows of block_size tokens advance by half a window; each token is scored once, with at
        least half a window of context (all of it at the start of the text).
        """
        ids = self.tokenizer.encode(text)
        if len(ids) < 2:
            raise NanoNLPError("the text is too short to score: it needs at least two tokens.")
        T = self.block_size
        stride = max(1, T // 2)
        windows, begin, scored_to = [], 0, 0  # scored_to: targets up to this index are scored
        while True:
            end = min(begin + T, len(ids) - 1)
            windows.append((begin, end, scored_to))
            scored_to = end
            if end == len(ids) - 1:
                break
            begin += stride
        total_nll, total_tokens = 0.0, 0
        for i in range(0, len(windows), batch_size):
            group = windows[i : i + batch_size]
            width = max(end - begin for begin, end, _ in group)
            x = torch.zeros(len(group), width, dtype=torch.long)
            y = torch.full((len(group), width), -1, dtype=torch.long)  # -1: not scored
            for row, (begin, end, already) in enumerate(group):
                x[row, : end - begin] = torch.tensor(ids[begin:end])
                first = max(already - begin, 0)  # target index (relative) from which this window scores
                y[row, first : end - begin] = torch.tensor(ids[begin + 1 + first : end + 1])
            logits, _ = self.model(x.to(self.device))
            nll = torch.nn.functional.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.to(self.device).view(-1), ignore_index=-1, reduction="sum"
            )
            total_nll += nll.item()
            total_tokens += int((y != -1).sum())
        characters = len(text) - len(self.tokenizer.decode(ids[:1]))
        loss = total_nll / total_tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_char": total_nll / max(characters, 1) / math.log(2),
            "tokens": total_tokens,
            "characters": characters,
        }


def load(run_dir: str | Path, device: str = "auto") -> LanguageModel:
    """Rebuild a trained language model from a run directory (or a Hugging Face GPT-2 folder)."""
    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    if not run_dir.is_dir():
        raise NanoNLPError(f"run directory '{run_dir}' does not exist.")
    if not (run_dir / "config.yaml").is_file() and (run_dir / "config.json").is_file():
        model = GPT.from_huggingface(run_dir).to(torch_device)
        return LanguageModel(model, BPETokenizer.from_huggingface(run_dir), None, torch_device, run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise NanoNLPError(f"'{run_dir}' has no config.yaml; is it a nanonlp run directory?")
    cfg = from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        latest = checkpoint.latest_checkpoint(run_dir)
        if latest is None:
            raise NanoNLPError(f"'{run_dir}' has no weights yet; train until the first evaluation (train.eval_interval steps).")
        weights = latest / "model.safetensors"
    model = build_model(cfg.model)
    checkpoint.load_weights(model, weights)
    model.to(torch_device)
    return LanguageModel(model, load_tokenizer(run_dir), cfg, torch_device, run_dir)


"""Language modelling: train a CharRNN or GPT on a text file, sample from it, score text with it.

This is the one place that joins the text reader, the tokenizer, the id arrays, the model and the
shared training loop for this task. The predictor lives in nanonlp.predict.lm.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nanonlp.data import cache, catalog
from nanonlp.data.readers import read_text
from nanonlp.data.tokenizers import BPETokenizer, load_tokenizer, train_tokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_bytes, save_json
from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
from nanonlp.models.gpt import GPT, GPTConfig
from nanonlp.predict import lm as predict_lm
from nanonlp.predict.lm import SampleConfig
from nanonlp.tasks import Command, Context, Task, TrainingJob, add_option, register

DATA_DIR = "data"


@dataclass
class DataConfig:
    path: str = "tiny_shakespeare"  # a text file, or a catalog name (see `nanonlp data`)
    tokenizer: str = field(default="char", metadata={"choices": ("char", "bpe")})
    vocab_size: int = 1024  # BPE only: size of the byte-level BPE vocabulary trained on the corpus
    val_fraction: float = 0.1  # the last fraction of the corpus is held out for validation
    encoding: str = "utf-8"  # text encoding of data.path

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}.")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise ConfigError(f"data.vocab_size must be at least 257 for a byte-level BPE tokenizer, got {self.vocab_size}.")


# ---------------------------------------------------------------------------------------------------
# data: tokenize once into memory-mapped id arrays in the run directory


def write_ids(path: Path, ids: list[int] | np.ndarray, vocab_size: int) -> None:
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    atomic_write_bytes(path, np.asarray(ids, dtype=dtype).tobytes())


def read_ids(path: Path, vocab_size: int) -> np.ndarray:
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r")


def prepare_data(cfg: DataConfig, run_dir: Path, tokenizer=None, quiet: bool = False):
    """Read the corpus, split off the last val_fraction of it, train the tokenizer (unless given one),
    write train.bin, val.bin and the cache's fingerprint; return the tokenizer."""
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
    meta = {"source": str(source), "characters": len(text), "val_characters": len(val_text), "train_tokens": n_train, "val_tokens": n_val}
    save_json(data_dir / "meta.json", meta)
    tokenizer.save(run_dir)
    cache.write_manifest(data_dir, [source], dataclasses.asdict(cfg), cache.tokenizer_files(run_dir))
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


def lm_loss(model, batch, step: int = 0) -> torch.Tensor:
    x, y = batch
    _, loss = model(x, y)
    return loss


def build_from_pretrained(cfg):
    """GPT-2 weights and tokenizer from train.init_from, positions cropped to model.block_size."""
    folder = Path(cfg.train.init_from)
    model = GPT.from_huggingface(folder, dropout=cfg.model.dropout if isinstance(cfg.model, GPTConfig) else 0.0)
    block_size = min(cfg.model.block_size, model.config.block_size)
    # Keep only the positions we train on (nanoGPT's crop_block_size): less memory, same weights.
    model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size].clone())
    model.config = dataclasses.replace(model.config, block_size=block_size)
    cfg.model = model.config
    return model, BPETokenizer.from_huggingface(folder)


def _check_cache(run_dir: Path, data_cfg: DataConfig) -> None:
    data_dir = run_dir / DATA_DIR
    if not (data_dir / "train.bin").is_file() or not (data_dir / "val.bin").is_file():
        raise NanoNLPError(f"run directory '{run_dir}' has no tokenized data ({DATA_DIR}/train.bin); start it over with --overwrite.")
    if (data_dir / cache.MANIFEST).is_file():
        cache.check(data_dir, dataclasses.asdict(data_cfg), cache.tokenizer_files(run_dir))
        return
    # A run prepared before the fingerprint existed: fingerprint its corpus now, so later changes are caught.
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    if Path(meta["source"]).is_file():
        cache.write_manifest(data_dir, [Path(meta["source"])], dataclasses.asdict(data_cfg), cache.tokenizer_files(run_dir))


# ---------------------------------------------------------------------------------------------------
# the `sample` command


def _add_sample_arguments(p) -> None:
    add_option(p, "run_dir", help="run directory written by `nanonlp train` (or a Hugging Face GPT-2 folder)")
    # task sentence adds --nearest to these
    add_option(p, "--prompt", help="text to continue (default: the run's sample.prompt)")
    add_option(p, "--max-new-tokens", type=int, help="tokens to generate (a sentence model: the longest sentence, in words)")
    add_option(p, "--temperature", type=float, help="0 is greedy; below 1 is more conservative")
    add_option(p, "--top-k", type=int, help="sample from the k most likely tokens only (0: off)")
    add_option(p, "--top-p", type=float, help="sample from the smallest set reaching probability p (1: off)")
    add_option(p, "--seed", type=int, help="random seed; the same seed gives the same text")
    add_option(p, "--stop", action="append", default=[], help="end a sample before this text (may be given several times)")
    add_option(p, "--num-samples", type=int, default=1, help="how many independent samples to print")
    add_option(p, "--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _sample(args) -> None:
    if getattr(args, "nearest", 0):
        raise ConfigError("--nearest is for sentence models (task: sentence); a language model's samples are running text.")
    lm = LMTask().load(args.run_dir, args.device)
    defaults = lm.sample_defaults
    pick = lambda value, default: default if value is None else value  # noqa: E731
    prompt = pick(args.prompt, defaults.prompt)
    for i in range(args.num_samples):
        seed = pick(args.seed, defaults.seed) + i
        pieces = lm.stream(prompt, pick(args.max_new_tokens, defaults.max_new_tokens), pick(args.temperature, defaults.temperature),
                           pick(args.top_k, defaults.top_k), pick(args.top_p, defaults.top_p), seed, args.stop)
        sys.stdout.write(prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n" if args.num_samples == 1 else "\n" + "-" * 40 + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------
# the task


class LMTask(Task):
    name = "lm"
    serves = ("generate",)
    sections = {"data": DataConfig, "sample": SampleConfig}
    models = {"gpt": (GPTConfig, GPT), "char_rnn": (CharRNNConfig, CharRNN)}
    frozen = ("train.init_from",)
    commands = (Command("sample", "generate text from a trained language model", _add_sample_arguments, _sample),)
    eval_help = "a language model's loss, perplexity and bits per character"

    def check(self, cfg, run_dir: Path) -> None:
        if cfg.train.init_from and isinstance(cfg.model, GPTConfig) and not cfg.model.gpt2_layout:
            raise ConfigError("train.init_from loads GPT-2 weights, whose layout has learned positions, a tied head, no QK-norm "
                              "and GELU: remove model.position, model.qk_norm, model.activation and model.tie_embeddings.")
        if isinstance(cfg.model, GPTConfig) and cfg.model.size == "auto":
            if cfg.train.max_seconds <= 0:
                raise ConfigError("model.size auto chooses the model for a time budget: set train.max_seconds.")
            if cfg.train.init_from:
                raise ConfigError("model.size auto builds a model from scratch; it cannot be combined with train.init_from.")

    def frozen_keys(self, cfg) -> list[str]:
        keys = super().frozen_keys(cfg)
        if isinstance(cfg.model, GPTConfig) and cfg.model.size == "auto":  # the recipe chose the shape, except what the user gave
            from nanonlp.recipe import MODEL_KEYS

            given = cfg.given or frozenset()
            keys = [k for k in keys if not (k.startswith("model.") and k[len("model."):] in MODEL_KEYS) or k in given]
        if cfg.train.init_from:  # a fine-tuned GPT-2's shape comes from its folder, not from the config
            keys = [k for k in keys if not k.startswith("model.") or k == "model.dropout"]
        if cfg.data.tokenizer == "char":  # the vocabulary size of a char tokenizer is the corpus's, not a setting
            keys.remove("data.vocab_size")
        return keys

    def check_prepared(self, cfg, ctx: Context) -> None:
        _check_cache(ctx.run_dir, cfg.data)
        if isinstance(cfg.model, GPTConfig) and cfg.model.size == "auto":
            from nanonlp import recipe

            recipe.load_for_run(cfg, ctx.run_dir)  # so the config.yaml of the resumed run says what it trains with

    def prepare(self, cfg, ctx: Context) -> None:
        pretrained = None
        if cfg.train.init_from:
            _, pretrained = build_from_pretrained(cfg)
        tokenizer = prepare_data(cfg.data, ctx.run_dir, pretrained, ctx.quiet)
        if pretrained is None:
            cfg.model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
        if isinstance(cfg.model, GPTConfig) and cfg.model.size == "auto":
            from nanonlp import recipe

            train_tokens = len(read_ids(ctx.run_dir / DATA_DIR / "train.bin", tokenizer.vocab_size))
            recipe.choose_for_run(cfg, ctx.run_dir, tokenizer.vocab_size, train_tokens, ctx.device, ctx.quiet)

    def job(self, cfg, ctx: Context) -> TrainingJob:
        run_dir, device, tc = ctx.run_dir, ctx.device, cfg.train
        if not (run_dir / DATA_DIR / "train.bin").is_file() or not (run_dir / DATA_DIR / "val.bin").is_file():
            raise NanoNLPError(f"run directory '{run_dir}' has no tokenized data ({DATA_DIR}/train.bin); start it over with --overwrite.")
        tokenizer = load_tokenizer(run_dir)
        spent = 0.0
        if isinstance(cfg.model, GPTConfig) and cfg.model.size == "auto":
            from nanonlp import recipe

            chosen = recipe.load_for_run(cfg, run_dir)  # a resumed run continues its recipe, whatever the config's train section says
            spent = chosen.probe_seconds if chosen is not None and ctx.fresh else 0.0  # the probe counts against the budget
        model = build_from_pretrained(cfg)[0] if cfg.train.init_from else self.build_model(cfg.model)
        model.to(device)
        block_size = cfg.model.block_size
        train_ids = read_ids(run_dir / DATA_DIR / "train.bin", tokenizer.vocab_size)
        val_ids = read_ids(run_dir / DATA_DIR / "val.bin", tokenizer.vocab_size)
        sampler = WindowSampler(train_ids, block_size, tc.batch_size, device, tc.seed, "training", ctx.rank, ctx.world_size)
        WindowSampler(val_ids, block_size, tc.batch_size, device, tc.seed, "validation")  # fail early if too short

        def evaluate(model) -> dict:
            # The same validation windows every time, so evaluations compare like with like.
            val = WindowSampler(val_ids, block_size, tc.batch_size, device, tc.seed + 1, "validation")
            losses = [lm_loss(model, val()).item() for _ in range(tc.eval_batches)]
            return {"val_loss": sum(losses) / len(losses)}

        return TrainingJob(
            model=model,
            train_batch=sampler,
            loss=lm_loss,
            evaluate=evaluate,
            batch_tokens=lambda batch: batch[0].numel(),
            data_state=lambda: {"generator": sampler.generator.get_state()},
            load_data_state=lambda state: sampler.generator.set_state(state["generator"]),
            flops_per_token=model.flops_per_token(),
            spent_seconds=spent,
        )

    def add_eval_arguments(self, parser) -> None:
        add_option(parser, "--data", help="a file or catalog name (default: the run's validation split, or a classifier's test split)")
        add_option(parser, "--encoding", default=None, help="encoding of --data (default: the run's data.encoding, or utf-8)")

    def evaluate(self, args) -> None:
        lm = self.load(args.run_dir, args.device)
        if args.data:
            source = catalog.resolve(args.data)
            result = lm.evaluate(read_text(source, args.encoding or "utf-8", "--data"))
        else:
            run_dir = Path(args.run_dir)
            val = run_dir / DATA_DIR / "val.bin"
            if not val.is_file():
                raise NanoNLPError(f"'{args.run_dir}' has no validation split; pass --data PATH.")
            source = "validation split"
            ids = read_ids(val, lm.tokenizer.vocab_size).tolist()
            meta_path = run_dir / DATA_DIR / "meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            if "val_characters" in meta:  # the cached ids are scored as they are, without decoding them
                characters = meta["val_characters"] - len(lm.tokenizer.decode(ids[:1]))
            else:
                characters = len(lm.tokenizer.decode(ids)) - len(lm.tokenizer.decode(ids[:1]))
            result = lm.score_ids(ids, characters)
        if args.json:
            print(json.dumps({"data": str(source), **result}))
            return
        print(f"data:           {source}")
        print(f"tokens scored:  {result['tokens']:,} ({result['characters']:,} characters)")
        print(f"loss:           {result['loss']:.4f} nats/token")
        print(f"perplexity:     {result['perplexity']:.3f}")
        print(f"bits per char:  {result['bits_per_char']:.4f}")

    def load(self, run_dir, device: str = "auto") -> predict_lm.LanguageModel:
        return predict_lm.load(run_dir, device)

    def recognizes(self, folder: Path) -> bool:
        return predict_lm.is_huggingface_gpt2(folder)


register(LMTask())

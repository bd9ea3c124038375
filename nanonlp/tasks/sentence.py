"""Sentence generation through a latent space: the sentence VAE, the ARAE (a GAN for text), and the
same-size GRU language model they are measured against, on any one-sentence-per-line file.

Preparation deduplicates the sentences (as token sequences), drops those longer than data.max_words,
holds out a seeded test set and a validation set, learns the word vocabulary on the rest, and caches
the id arrays and the tokenized training sentences (for the nearest-sentence search) in the run
directory. The predictor lives in nanonlp.predict.sentence.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanonlp.data import cache, catalog
from nanonlp.data.readers import read_text
from nanonlp.data.tokenizers import WordTokenizer, load_tokenizer
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_bytes, atomic_write_text, save_json
from nanonlp.models.arae import ARAE, ARAEConfig
from nanonlp.models.vae import SPECIALS, SentenceLM, SentenceLMConfig, SentenceVAE, SentenceVAEConfig, kl_weight
from nanonlp.predict import sentence as predict_sentence
from nanonlp.predict.lm import check_sampling
from nanonlp.predict.sentence import DATA_DIR, batches, latent_figures, make_batch, read_split
from nanonlp.tasks import Command, Context, Task, TrainingJob, add_option, register

SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    path: str = "tatoeba_en_sentences"  # a file with one sentence a line, or a catalog name (see `nanonlp data`)
    encoding: str = "utf-8"  # text encoding of data.path
    lowercase: bool = True  # lowercase before tokenizing
    vocab_size: int = 10000  # the most frequent training words kept (with <pad>, <unk>, <s>, </s>)
    min_freq: int = 2  # a word seen fewer times in training reads as <unk>
    max_words: int = 30  # sentences longer than this are left out of every split
    test_sentences: int = 5000  # a seeded sample of distinct sentences held out for `nanonlp eval` and the benchmark
    val_sentences: int = 1000  # held out for the evaluations during training
    seed: int = 0  # the shuffle that picks the held-out sentences
    vocab_from: str = ""  # a sentence run directory whose vocabulary to reuse (models compared on one vocabulary); "" learns one

    def validate(self) -> None:
        if self.vocab_size <= len(SPECIALS):
            raise ConfigError(f"data.vocab_size must be above {len(SPECIALS)}, got {self.vocab_size}.")
        for name in ("min_freq", "max_words", "val_sentences"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}.")
        if self.test_sentences < 0:
            raise ConfigError(f"data.test_sentences must not be negative, got {self.test_sentences}.")


@dataclass
class VAEConfig:
    kl_schedule: str = dataclasses.field(default="logistic", metadata={"choices": ("constant", "linear", "logistic", "cyclical")})
    kl_anneal_steps: int = 2000  # linear/logistic: steps to reach kl_max; cyclical: the length of one cycle
    kl_cycles: int = 4  # cyclical: how many cycles before the weight stays at kl_max
    kl_cycle_ratio: float = 0.5  # cyclical: the share of a cycle spent rising
    kl_max: float = 1.0  # the KL weight the schedule reaches
    free_bits: float = 0.0  # nats per latent dimension below which the KL costs nothing (Kingma et al. 2016); 0 off
    iw_samples: int = 50  # k of the importance-weighted bound computed at each evaluation
    eval_sentences: int = 500  # validation sentences the bound, mutual information and active units use

    def validate(self) -> None:
        if self.kl_anneal_steps < 0:
            raise ConfigError(f"vae.kl_anneal_steps must not be negative, got {self.kl_anneal_steps}.")
        if self.kl_cycles < 1:
            raise ConfigError(f"vae.kl_cycles must be at least 1, got {self.kl_cycles}.")
        if not 0.0 < self.kl_cycle_ratio <= 1.0:
            raise ConfigError(f"vae.kl_cycle_ratio must be in (0, 1], got {self.kl_cycle_ratio}.")
        if self.kl_max < 0 or self.free_bits < 0:
            raise ConfigError("vae.kl_max and vae.free_bits must not be negative.")
        if self.iw_samples < 1 or self.eval_sentences < 2:
            raise ConfigError("vae.iw_samples must be at least 1 and vae.eval_sentences at least 2.")

    def weight(self, step: int) -> float:
        return kl_weight(step, self.kl_schedule, self.kl_anneal_steps, self.kl_cycles, self.kl_cycle_ratio, self.kl_max)


@dataclass
class SampleConfig:
    temperature: float = 1.0  # 0 is greedy; below 1 is more conservative
    top_k: int = 0  # keep only the k most likely words; 0 disables
    top_p: float = 1.0  # keep the smallest set of words whose probability reaches p; 1 disables
    seed: int = 1

    def validate(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)  # the one validation of sampling options


# ---------------------------------------------------------------------------------------------------
# data


def read_sentences(path: Path, encoding: str, key: str = "data.path") -> list[str]:
    """The non-blank lines of a one-sentence-per-line file, stripped."""
    lines = [line.strip() for line in read_text(path, encoding, key).splitlines()]
    return [line for line in lines if line]


def new_tokenizer(words: list[str], lowercase: bool) -> WordTokenizer:
    # <pad> and <unk> are the word tokenizer's ids 0 and 1; <s> and </s> follow (nanonlp.models.vae).
    return WordTokenizer(SPECIALS + words, lowercase)


def split_sentences(sentences: list[str], cfg: DataConfig, tokenizer: WordTokenizer) -> tuple[dict, int]:
    """Distinct token sequences of at most max_words words, shuffled with data.seed and split into
    test, validation and training; returns {split: [token lists]} and how many were too long."""
    seen, kept, too_long = set(), [], 0
    for sentence in sentences:
        words = tuple(tokenizer.split(sentence))
        if not words or words in seen:
            continue
        if len(words) > cfg.max_words:
            too_long += 1
            continue
        seen.add(words)
        kept.append(list(words))
    held_out = cfg.test_sentences + cfg.val_sentences
    if len(kept) < held_out + 2:
        raise NanoNLPError(
            f"data.path has {len(kept)} distinct sentences of at most {cfg.max_words} words, too few to hold out "
            f"{cfg.test_sentences} test and {cfg.val_sentences} validation sentences and train on the rest; "
            "use more text or lower data.test_sentences and data.val_sentences."
        )
    random.Random(cfg.seed).shuffle(kept)
    test, val, train = kept[: cfg.test_sentences], kept[cfg.test_sentences : held_out], kept[held_out:]
    return {"train": train, "val": val, "test": test}, too_long


def ids_of(words: list[str], tokenizer: WordTokenizer) -> list[int]:
    return [tokenizer.index.get(w, tokenizer.unk_id) for w in words]


def write_split(data_dir: Path, name: str, sentences: list[list[int]]) -> None:
    """A split as two arrays: all ids end to end, and where each sentence starts (one more than sentences)."""
    offsets = np.cumsum([0] + [len(s) for s in sentences]).astype(np.int64)
    ids = np.fromiter((i for s in sentences for i in s), dtype=np.int32, count=int(offsets[-1]))
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids, offsets=offsets)
    atomic_write_bytes(data_dir / f"{name}.npz", buffer.getvalue())


def prepare_data(cfg: DataConfig, run_dir: Path, quiet: bool = False) -> WordTokenizer:
    source = catalog.resolve(cfg.path)
    sentences = read_sentences(source, cfg.encoding)
    splits, too_long = split_sentences(sentences, cfg, new_tokenizer([], cfg.lowercase))
    from collections import Counter

    if cfg.vocab_from:
        tokenizer = load_tokenizer(cfg.vocab_from)
        if not isinstance(tokenizer, WordTokenizer) or tokenizer.words[: len(SPECIALS)] != SPECIALS:
            raise NanoNLPError(f"data.vocab_from '{cfg.vocab_from}' is not a sentence model's run directory (task: sentence).")
        if tokenizer.lowercase != cfg.lowercase:
            raise ConfigError(f"data.lowercase must match the vocabulary of data.vocab_from '{cfg.vocab_from}' ({tokenizer.lowercase}).")
    else:
        counts = Counter(w for words in splits["train"] for w in words)
        vocabulary = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= cfg.min_freq]
        tokenizer = new_tokenizer(vocabulary[: cfg.vocab_size - len(SPECIALS)], cfg.lowercase)
    data_dir = run_dir / DATA_DIR
    for name in SPLITS:
        write_split(data_dir, name, [ids_of(words, tokenizer) for words in splits[name]])
        # The words themselves: the nearest-sentence search and the copy check compare samples with them.
        atomic_write_text(data_dir / f"{name}.txt", "".join(" ".join(words) + "\n" for words in splits[name]))
    tokens = sum(len(w) for w in splits["train"])
    unknown = sum(1 for words in splits["train"] for w in words if w not in tokenizer.index)
    meta = {"source": str(source), "lines": len(sentences), "too_long": too_long,
            **{f"{name}_sentences": len(splits[name]) for name in SPLITS}, "train_words": tokens, "train_unknown": unknown}
    save_json(data_dir / "meta.json", meta)
    tokenizer.save(run_dir)
    cache.write_manifest(data_dir, [source], dataclasses.asdict(cfg), cache.tokenizer_files(run_dir))
    if not quiet:
        print(f"data: {source}: {len(sentences):,} lines -> {sum(len(splits[s]) for s in SPLITS):,} distinct sentences of at most "
              f"{cfg.max_words} words ({too_long:,} longer left out); {len(splits['train']):,} train / {len(splits['val']):,} "
              f"validation / {len(splits['test']):,} test; vocabulary {tokenizer.vocab_size:,} words "
              f"({100 * unknown / max(1, tokens):.2f}% of training words read as <unk>)", file=sys.stderr)
    return tokenizer


class SentenceSampler:
    """Random batches of training sentences from a seeded generator (its state is saved for resume)."""

    def __init__(self, sentences: list, batch_size: int, device: torch.device, seed: int, rank: int = 0, world_size: int = 1):
        self.sentences, self.batch_size, self.device = sentences, batch_size, device
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self):
        picks = torch.randint(len(self.sentences), (self.batch_size * self.world_size,), generator=self.generator)
        picks = picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()
        return make_batch([self.sentences[i] for i in picks], self.device)


# ---------------------------------------------------------------------------------------------------
# commands


def _add_sample_arguments(p) -> None:
    from nanonlp.tasks.lm import _add_sample_arguments as language_model_options

    language_model_options(p)  # `sample` is shared with task lm: the same options, and one of our own
    add_option(p, "--nearest", type=int, default=0, help="sentence models: also print the K training sentences nearest each sample")


def _sample(args) -> None:
    for flag, value in (("--prompt", getattr(args, "prompt", None)), ("--stop", getattr(args, "stop", None))):
        if value:
            raise ConfigError(f"{flag} is for language models (task: lm); a sentence model samples whole sentences.")
    model = predict_sentence.load(args.run_dir, args.device)
    defaults = model.sample_defaults
    pick = lambda value, default: default if value is None else value  # noqa: E731
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}.")
    samples = model.sample(args.num_samples, pick(args.temperature, defaults.temperature), pick(args.top_k, defaults.top_k),
                           pick(args.top_p, defaults.top_p), pick(args.seed, defaults.seed), args.max_new_tokens)
    for text in samples:
        print(text)
        if args.nearest:
            for neighbour, similarity in model.nearest(text, args.nearest):
                print(f"    {similarity:.2f}  {neighbour}")


def _add_reconstruct_arguments(p) -> None:
    p.add_argument("run_dir", help="run directory of a sentence VAE or ARAE")
    p.add_argument("texts", nargs="*", help="sentences to reconstruct (default: one a line from standard input)")
    p.add_argument("--samples", type=int, default=3, help="sampled reconstructions beside the greedy one (z drawn from q(z|x))")
    p.add_argument("--temperature", type=float, default=1.0, help="the sampled reconstructions' temperature")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _texts(args) -> list[str]:
    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise NanoNLPError("no sentences given: pass them as arguments or one a line on standard input.")
    return texts


def _reconstruct(args) -> None:
    model = predict_sentence.load(args.run_dir, args.device)
    for text in _texts(args):
        print(f"input:   {text}")
        print(f"greedy:  {model.reconstruct(text)}")
        for i in range(args.samples):
            print(f"sampled: {model.reconstruct(text, temperature=args.temperature, sample_z=True, seed=args.seed + i)}")


def _add_interpolate_arguments(p) -> None:
    p.add_argument("run_dir", help="run directory of a sentence VAE or ARAE")
    p.add_argument("first", help="the sentence at one end")
    p.add_argument("second", help="the sentence at the other end")
    p.add_argument("--steps", type=int, default=8, help="points on the line, both ends included")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _interpolate(args) -> None:
    model = predict_sentence.load(args.run_dir, args.device)
    steps = model.interpolate(args.first, args.second, args.steps)
    for i, text in enumerate(steps):
        print(f"{i / (len(steps) - 1):.2f}  {text}")


# ---------------------------------------------------------------------------------------------------
# the task


class SentenceTask(Task):
    name = "sentence"
    serves = ("sample",)
    sections = {"data": DataConfig, "vae": VAEConfig, "sample": SampleConfig}
    models = {"vae": (SentenceVAEConfig, SentenceVAE), "arae": (ARAEConfig, ARAE), "rnn_lm": (SentenceLMConfig, SentenceLM)}
    commands = (
        Command("sample", "generate from a trained model (a language model, or a sentence VAE, ARAE or RNN LM)",
                _add_sample_arguments, _sample),
        Command("reconstruct", "encode sentences with a sentence VAE or ARAE and decode them again", _add_reconstruct_arguments,
                _reconstruct),
        Command("interpolate", "decode the points on the line between two sentences' latent codes", _add_interpolate_arguments,
                _interpolate),
    )
    eval_help = "a sentence model's held-out NLL (importance-weighted for a VAE), perplexity, KL, mutual information and active units"

    def check_prepared(self, cfg, ctx: Context) -> None:
        data_dir = ctx.run_dir / DATA_DIR
        if not all((data_dir / f"{name}.npz").is_file() for name in SPLITS):
            raise NanoNLPError(f"run directory '{ctx.run_dir}' has no prepared sentences ({DATA_DIR}/train.npz); start it over with --overwrite.")
        cache.check(data_dir, dataclasses.asdict(cfg.data), cache.tokenizer_files(ctx.run_dir))

    def prepare(self, cfg, ctx: Context) -> None:
        tokenizer = prepare_data(cfg.data, ctx.run_dir, ctx.quiet)
        cfg.model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)

    def job(self, cfg, ctx: Context) -> TrainingJob:
        run_dir, device, tc, vae = ctx.run_dir, ctx.device, cfg.train, cfg.vae
        train = read_split(run_dir / DATA_DIR, "train")
        val = read_split(run_dir / DATA_DIR, "val")
        model = self.build_model(cfg.model).to(device)
        sampler = SentenceSampler(train, tc.batch_size, device, tc.seed, ctx.rank, ctx.world_size)
        figures_on = val[: vae.eval_sentences]

        def loss(model, batch, step: int):
            return model(*batch, kl_weight=vae.weight(step), free_bits_nats=vae.free_bits)

        def evaluate(model) -> dict:
            inner = getattr(model, "module", model)
            inner = getattr(inner, "_orig_mod", inner)
            sums, count = {}, 0
            # The same noise at every evaluation, without touching the training's random stream.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(tc.seed + 1)
                for batch in batches(val, 256, device):
                    parts = inner(*batch)
                    for name in ("reconstruction", "kl", "wasserstein"):
                        if name in parts:
                            sums[name] = sums.get(name, 0.0) + float(parts[name]) * len(batch[2])
                    count += len(batch[2])
            metrics = {f"val_{name}": value / count for name, value in sums.items()}
            metrics["val_loss"] = metrics["val_reconstruction"] + metrics.get("val_kl", 0.0)  # -ELBO per sentence (NLL for an LM)
            if isinstance(inner, SentenceVAE):
                figures = latent_figures(inner, figures_on, device, vae.iw_samples, tc.seed)
                metrics.update(val_iw_nll=figures["nll"], val_ppl=figures["ppl"], val_mi=figures["mutual_information"],
                               val_active_units=figures["active_units"])
            elif isinstance(inner, SentenceLM):
                tokens = sum(len(s) + 1 for s in val)
                metrics["val_ppl"] = float(np.exp(metrics["val_loss"] * count / tokens))
            return metrics

        return TrainingJob(
            model=model,
            train_batch=sampler,
            loss=loss,
            evaluate=evaluate,
            batch_tokens=lambda batch: int(batch[2].sum()),
            data_state=lambda: {"generator": sampler.generator.get_state()},
            load_data_state=lambda state: sampler.generator.set_state(state["generator"]),
        )

    def finish(self, cfg, ctx: Context) -> None:
        from nanonlp.plots import latent_curve

        if not isinstance(cfg.model, SentenceLMConfig):
            latent_curve(ctx.run_dir / "metrics.jsonl", ctx.run_dir / "latent.png")

    def add_eval_arguments(self, parser) -> None:
        add_option(parser, "--data", help="a file or catalog name (default: the run's validation split, or a classifier's test split)")
        add_option(parser, "--encoding", default=None, help="encoding of --data (default: the run's data.encoding, or utf-8)")
        add_option(parser, "--iw-samples", type=int, default=500, help="sentence VAE: k of the importance-weighted NLL bound")

    def evaluate(self, args) -> None:
        model = self.load(args.run_dir, args.device)
        if args.iw_samples < 1:
            raise ConfigError(f"--iw-samples must be at least 1, got {args.iw_samples}.")
        if args.data:
            source = str(catalog.resolve(args.data))
            texts = read_sentences(Path(source), args.encoding or model.config.data.encoding, "--data")
        else:
            source, texts = "test split", None
        result = model.evaluate(texts, iw_samples=args.iw_samples)
        if args.json:
            print(json.dumps({"data": source, **result}))
            return
        print(f"data:                {source} ({result['sentences']:,} sentences, {result['tokens']:,} tokens with </s>)")
        for key, label in [("nll", "NLL per sentence"), ("ppl", "perplexity"), ("elbo", "ELBO per sentence"),
                           ("reconstruction", "reconstruction"), ("kl", "KL"), ("mutual_information", "mutual information"),
                           ("active_units", "active units")]:
            if key in result:
                value = result[key]
                print(f"{label + ':':21s}{value:,.4f}" if isinstance(value, float) else f"{label + ':':21s}{value}")
        if "iw_samples" in result:
            print(f"{'IW samples:':21s}{result['iw_samples']}")

    def load(self, run_dir, device: str = "auto") -> predict_sentence.SentenceModel:
        return predict_sentence.load(run_dir, device)


register(SentenceTask())

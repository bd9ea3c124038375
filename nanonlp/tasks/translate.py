"""Machine translation: an attention seq2seq or a Transformer trained on sentence pairs, decoded with
greedy or beam search, scored with sacreBLEU.

This is the one place that joins the pair readers, the BPE vocabularies, token-sized batches, the
models and the shared training loop for this task. The predictor lives in nanonlp.predict.translate.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanonlp.data import cache, catalog
from nanonlp.data.batching import PairBatches, pad_batch
from nanonlp.data.readers import Pair, read_aligned_pairs, read_text, read_tsv_pairs, split_lines
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_text
from nanonlp.metrics import BLEU_TOKENIZERS, bleu_chrf, bleu_tokenizer
from nanonlp.models.seq2seq import Seq2Seq, Seq2SeqConfig
from nanonlp.models.transformer_nmt import Transformer, TransformerConfig
from nanonlp.predict import translate as predict_translate
from nanonlp.predict.translate import Translator, Vocabularies
from nanonlp.tasks import Command, Context, Task, TrainingJob, add_option, register

SPLITS = ("train", "dev", "test")


@dataclass
class TranslateDataConfig:
    path: str = "multi30k"  # training pairs: a catalog name (multi30k, tatoeba_en_fr), a TSV file, or a prefix P of P.<lang> files
    dev_path: str = ""  # validation pairs, same forms; "" uses the catalog's split, else holds dev_size pairs out
    test_path: str = ""  # test pairs for `nanonlp eval`; "" uses the catalog's split, else holds test_size pairs out
    source_lang: str = "en"  # the language translated from (a suffix of line-aligned files; a column of catalog TSVs)
    target_lang: str = "de"  # the language translated into
    source_column: int = 0  # TSV files: the column of the source sentence (0 is the first)
    target_column: int = 1  # TSV files: the column of the target sentence
    encoding: str = "utf-8"  # text encoding of the files
    max_length: int = 100  # training pairs with more subword tokens than this on either side are dropped
    max_length_ratio: float = 3.0  # ... and pairs where one side is this many times longer than the other; 0 keeps them
    dedup: bool = True  # drop repeated training pairs, and training pairs whose source is a dev or test source
    dev_size: int = 1000  # pairs held out for validation when the data has no dev split
    test_size: int = 1000  # pairs held out for testing when the data has no test split
    split_seed: int = 0  # seeds that hold-out
    vocab_size: int = 8000  # BPE vocabulary size (per language when not joint)
    joint_vocab: bool = True  # one BPE vocabulary trained on both languages (needed by model.share_embeddings)
    batch_tokens: int = 4096  # a training batch holds about this many tokens (source or target, the longer); replaces train.batch_size

    def validate(self) -> None:
        for name in ("max_length", "vocab_size", "batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("source_column", "target_column", "dev_size", "test_size", "max_length_ratio"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must not be negative, got {getattr(self, name)}.")
        if self.vocab_size < 260:
            raise ConfigError(f"data.vocab_size must be at least 260 for a byte-level BPE vocabulary, got {self.vocab_size}.")
        if 0 < self.max_length_ratio < 1:
            raise ConfigError(f"data.max_length_ratio must be 0 (off) or at least 1, got {self.max_length_ratio}; below 1 no pair passes.")
        if self.source_column == self.target_column:
            raise ConfigError("data.source_column and data.target_column must differ.")
        if self.source_lang == self.target_lang:
            raise ConfigError(f"data.source_lang and data.target_lang are both '{self.source_lang}'; name two languages.")


@dataclass
class TranslateConfig:
    label_smoothing: float = 0.1  # share of the target probability spread over the vocabulary (Szegedy et al. 2016)
    beam_size: int = 5  # beam width for translate and eval; 1 is greedy
    length_penalty: float = 1.0  # GNMT alpha: scores are divided by ((5 + length) / 6) ** alpha; 0 turns it off
    max_length_ratio: float = 1.5  # a translation has at most ratio * source tokens + max_length_offset tokens
    max_length_offset: int = 10
    batch_size: int = 64  # sentences translated at once
    val_sentences: int = 500  # dev sentences translated (greedy) for the validation BLEU at each evaluation; 0 skips BLEU
    bleu_tokenize: str = field(default="auto", metadata={"choices": ("auto",) + BLEU_TOKENIZERS})  # sacreBLEU tokenization; auto: zh for Chinese targets, ja-mecab (where installed) for Japanese, else 13a

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"translate.label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        for name in ("beam_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"translate.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("length_penalty", "max_length_ratio", "max_length_offset", "val_sentences"):
            if getattr(self, name) < 0:
                raise ConfigError(f"translate.{name} must not be negative, got {getattr(self, name)}.")
        if self.max_length_ratio == 0 and self.max_length_offset == 0:
            raise ConfigError("translate.max_length_ratio and max_length_offset are both 0: translations could have no tokens.")


# ---------------------------------------------------------------------------------------------------
# data


def read_pairs(spec: str, cfg: TranslateDataConfig) -> list[Pair]:
    """Pairs from a catalog name, a TSV file, or a prefix P with files P.<source_lang> and P.<target_lang>."""
    entry = catalog.CATALOG.get(spec)
    if entry is not None and entry.format == "aligned":
        return read_aligned_pairs(catalog.resolve(spec, cfg.source_lang), catalog.resolve(spec, cfg.target_lang), cfg.encoding)
    if entry is not None and entry.format == "tsv":
        for lang in (cfg.source_lang, cfg.target_lang):
            if lang not in entry.languages:
                raise NanoNLPError(f"'{spec}' has the languages {', '.join(entry.languages)}; got '{lang}'. "
                                   "Set data.source_lang and data.target_lang to two of them.")
        columns = entry.languages.index(cfg.source_lang), entry.languages.index(cfg.target_lang)
        return read_tsv_pairs(catalog.resolve(spec), *columns, cfg.encoding)
    path = Path(spec).expanduser()
    if path.is_file():
        return read_tsv_pairs(path, cfg.source_column, cfg.target_column, cfg.encoding)
    source, target = Path(f"{path}.{cfg.source_lang}"), Path(f"{path}.{cfg.target_lang}")
    if source.is_file() or target.is_file():
        return read_aligned_pairs(source, target, cfg.encoding)  # a missing one is reported by the reader
    names = ", ".join(n for n, e in catalog.CATALOG.items() if e.format in ("aligned", "tsv") and not e.name.endswith(("_val", "_test")))
    raise NanoNLPError(f"'{spec}' is not a TSV file of sentence pairs, nor the prefix of {source.name} and {target.name}, "
                       f"nor a catalog name ({names}); check data.path.")


def _split_spec(cfg: TranslateDataConfig, split: str) -> str | None:
    return catalog.split_of(cfg.path, split, {"dev": cfg.dev_path, "test": cfg.test_path}[split])


def load_splits(cfg: TranslateDataConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Training, dev and test pairs. Splits the data lacks are held out of the training pairs with a
    seeded shuffle; the same config always holds out the same pairs."""
    train_pairs = [p for p in read_pairs(cfg.path, cfg) if p.source and p.target]  # an empty side teaches nothing
    if not train_pairs:
        raise NanoNLPError(f"'{cfg.path}' has no sentence pair with text on both sides; a translator needs pairs to learn from.")
    dev_spec, test_spec = _split_spec(cfg, "dev"), _split_spec(cfg, "test")
    if cfg.dedup:
        train_pairs = list(dict.fromkeys(train_pairs))  # first occurrence kept, order unchanged
    held: dict[str, list[Pair]] = {}
    missing = [(name, size) for name, spec, size in (("test", test_spec, cfg.test_size), ("dev", dev_spec, cfg.dev_size)) if spec is None]
    if missing:
        wanted = sum(size for _, size in missing)
        if wanted >= len(train_pairs):
            raise NanoNLPError(f"'{cfg.path}' has {len(train_pairs):,} pairs, too few to hold out {wanted:,} for dev and test; "
                               "lower data.dev_size / data.test_size or give data.dev_path and data.test_path.")
        order = torch.randperm(len(train_pairs), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
        start = 0
        for name, size in missing:
            held[name] = [train_pairs[i] for i in order[start : start + size]]
            start += size
        kept = set(order[start:])
        train_pairs = [p for i, p in enumerate(train_pairs) if i in kept]
    dev = held["dev"] if dev_spec is None else read_pairs(dev_spec, cfg)
    test = held["test"] if test_spec is None else read_pairs(test_spec, cfg)
    if cfg.dedup:
        # A sentence to be tested must not be learned by heart: Tatoeba has many translations per sentence.
        evaluated = {p.source for p in dev} | {p.source for p in test}
        train_pairs = [p for p in train_pairs if p.source not in evaluated]
    if not dev:
        raise NanoNLPError("the dev split is empty; set data.dev_size above 0 or give data.dev_path.")
    return train_pairs, dev, test


def keep_pair(source_ids: list[int], target_ids: list[int], cfg: TranslateDataConfig) -> bool:
    """The training length filter: both sides within max_length tokens, and within max_length_ratio of each other."""
    s, t = len(source_ids) - 1, len(target_ids)  # the source carries its eos
    if not (1 <= s <= cfg.max_length and 1 <= t <= cfg.max_length):
        return False
    return cfg.max_length_ratio == 0 or max(s, t) <= cfg.max_length_ratio * min(s, t)


def make_batch(sources: list[list[int]], targets: list[list[int]], vocab: Vocabularies, device) -> tuple:
    """(src (B, S), tgt_in (B, T) = bos + target, tgt_out (B, T) = target + eos, target token count)."""
    src = pad_batch(sources, vocab.pad_id)
    tgt_in = pad_batch([[vocab.bos_id] + t for t in targets], vocab.pad_id)
    tgt_out = pad_batch([t + [vocab.eos_id] for t in targets], vocab.pad_id)
    return src.to(device), tgt_in.to(device), tgt_out.to(device), sum(len(t) + 1 for t in targets)




def pair_files(spec: str, cfg: TranslateDataConfig) -> list[Path]:
    """The raw files `read_pairs(spec)` reads (their fingerprint guards the cache)."""
    entry = catalog.CATALOG.get(spec)
    if entry is not None and entry.format == "aligned":
        return [catalog.resolve(spec, cfg.source_lang), catalog.resolve(spec, cfg.target_lang)]
    if entry is not None:
        return [catalog.resolve(spec)]
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    return [p for p in (Path(f"{path}.{cfg.source_lang}"), Path(f"{path}.{cfg.target_lang}")) if p.is_file()]


def raw_files(cfg: TranslateDataConfig) -> list[Path]:
    specs = [cfg.path] + [s for s in (_split_spec(cfg, "dev"), _split_spec(cfg, "test")) if s]
    return [p for spec in specs for p in pair_files(spec, cfg)]


# ---------------------------------------------------------------------------------------------------
# the prepared data: every split read and tokenized once, in the run directory


def _save_split(data_dir: Path, split: str, pairs: list[Pair], sources: list[list[int]], targets: list[list[int]]) -> None:
    cache.save_ids(data_dir / f"{split}.source.npz", sources)
    cache.save_ids(data_dir / f"{split}.target.npz", targets)
    cache.save_records(data_dir / f"{split}.json", {"source": [p.source for p in pairs], "target": [p.target for p in pairs]})


def load_cached_split(data_dir: Path, split: str) -> tuple[list[Pair], list[list[int]], list[list[int]]]:
    texts = cache.load_records(data_dir / f"{split}.json")
    pairs = [Pair(s, t) for s, t in zip(texts["source"], texts["target"])]
    return pairs, cache.load_ids(data_dir / f"{split}.source.npz"), cache.load_ids(data_dir / f"{split}.target.npz")


def check_cache(run_dir: Path, cfg) -> Path:
    data_dir = Path(run_dir) / "data"
    cache.check(data_dir, dataclasses.asdict(cfg.data), cache.tokenizer_files(run_dir))
    return data_dir


def write_cache(cfg, run_dir: Path, vocab: Vocabularies, splits: tuple, quiet: bool) -> None:
    """Tokenize every split once, then write the fingerprint, last. Training pairs are length-filtered
    here; dev pairs are scored whole, except beyond a Transformer's position table; test sources are
    encoded as the translator reads them."""
    train_pairs, dev, test = splits
    cap = getattr(cfg.model, "max_positions", None)
    sources = vocab.encode_sources([p.source for p in train_pairs])
    targets = vocab.encode_targets([p.target for p in train_pairs])
    kept = [i for i in range(len(sources)) if keep_pair(sources[i], targets[i], cfg.data)]
    if not kept:
        raise NanoNLPError(f"no training pair is within data.max_length ({cfg.data.max_length}) tokens; raise it.")
    if not quiet and len(kept) < len(sources):
        print(f"data: {len(sources) - len(kept):,} training pairs dropped by the length filter "
              f"(max_length {cfg.data.max_length}, max_length_ratio {cfg.data.max_length_ratio})", file=sys.stderr)
    data_dir = Path(run_dir) / "data"
    _save_split(data_dir, "train", [train_pairs[i] for i in kept], [sources[i] for i in kept], [targets[i] for i in kept])
    _save_split(data_dir, "dev", dev, vocab.encode_sources([p.source for p in dev], cap),
                [t[: cap - 1] if cap else t for t in vocab.encode_targets([p.target for p in dev])])
    _save_split(data_dir, "test", test, vocab.encode_sources([p.source.strip() for p in test], cap),
                vocab.encode_targets([p.target for p in test]))
    cache.write_manifest(data_dir, raw_files(cfg.data), dataclasses.asdict(cfg.data), cache.tokenizer_files(run_dir),
                         train_pairs=len(kept), dev_pairs=len(dev), test_pairs=len(test))


LEGACY_DATA_FILE = "data.json"  # the split fingerprint of runs prepared before the cache existed


def legacy_fingerprint(splits: tuple) -> str:
    """SHA-256 of every pair of every split, in order, as runs prepared before the cache wrote it."""
    import hashlib

    digest = hashlib.sha256()
    for name, pairs in zip(("train", "dev", "test"), splits):
        digest.update(name.encode())
        for p in pairs:
            digest.update(f"{p.source}\t{p.target}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def read_legacy_splits(run_dir: Path, cfg) -> tuple:
    """The splits of a run prepared before the cache existed, read from the raw files and checked against its data.json."""
    splits = load_splits(cfg.data)
    path = Path(run_dir) / LEGACY_DATA_FILE
    if path.is_file() and json.loads(path.read_text())["sha256"] != legacy_fingerprint(splits):
        raise NanoNLPError(f"the data of '{run_dir}' changed since the run was prepared (its splits no longer match {LEGACY_DATA_FILE}); "
                           "restore the original files, or train a new run on the new data.")
    return splits


# ---------------------------------------------------------------------------------------------------
# commands: `translate`


def _add_translate_arguments(p) -> None:
    p.add_argument("run_dir", help="run directory of a translation run")
    p.add_argument("texts", nargs="*", help="sentences to translate (default: --input, else one sentence per line on stdin)")
    p.add_argument("--input", help="a file with one sentence per line")
    p.add_argument("--output", help="write the translations here, one per line (default: stdout)")
    p.add_argument("--beam", type=int, help="beam width (default: the run's translate.beam_size); 1 is greedy")
    p.add_argument("--nbest", type=int, default=1, help="print this many translations per sentence: INDEX<TAB>SCORE<TAB>TEXT")
    p.add_argument("--length-penalty", type=float, help="GNMT alpha (default: the run's translate.length_penalty)")
    p.add_argument("--batch-size", type=int, help="sentences translated at once (default: the run's translate.batch_size)")
    p.add_argument("--plot-attention", metavar="PNG", help="write the attention heatmap of the (first) sentence here")
    p.add_argument("--layer", type=int, default=-1, help="Transformer: the decoder layer whose cross-attention is plotted (default: last)")
    p.add_argument("--encoding", default="utf-8", help="encoding of --input")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _read_lines(path: str, encoding: str = "utf-8", key: str = "--input") -> list[str]:
    return split_lines(read_text(path, encoding, key))


def _write_lines(lines: list[str], path: str | None) -> None:
    if path is None:
        for line in lines:
            print(line, flush=True)
        return
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _translate(args) -> None:
    for name in ("beam", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.nbest < 1:
        raise ConfigError(f"--nbest must be at least 1, got {args.nbest}.")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise ConfigError(f"--length-penalty must not be negative, got {args.length_penalty}.")
    if args.texts and args.input:
        raise ConfigError("give sentences as arguments or with --input, not both.")
    translator = TranslateTask().load(args.run_dir, args.device)
    if args.texts:
        texts = args.texts
    elif args.input:
        texts = _read_lines(args.input, args.encoding)
    else:
        texts = split_lines(sys.stdin.read())
    if not texts:
        raise NanoNLPError("nothing to translate: give sentences as arguments, with --input FILE, or on stdin.")
    beam = args.beam or translator.config.translate.beam_size
    nbest = translator.translate_nbest(texts, beam, args.nbest, args.batch_size, args.length_penalty)
    if args.nbest == 1:
        _write_lines([n[0][0] for n in nbest], args.output)
    else:
        _write_lines([f"{i}\t{score:.4f}\t{text}" for i, options in enumerate(nbest) for text, score in options], args.output)
    if args.output:
        print(f"wrote {len(texts):,} translation(s) to {args.output}", file=sys.stderr)
    if args.plot_attention:
        from nanonlp.plots import attention_heatmap

        source, target, weights = translator.attention(texts[0], beam, args.layer, args.length_penalty)
        family = type(translator.model).__name__
        title = f"{family} cross-attention, layer {args.layer}, mean of heads" if family == "Transformer" else f"{family} attention"
        attention_heatmap(weights.numpy(), source, target, args.plot_attention, title)
        print(f"attention heatmap: {args.plot_attention}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# the task


class TranslateTask(Task):
    name = "translate"
    serves = ("translate",)
    sections = {"data": TranslateDataConfig, "translate": TranslateConfig}
    models = {"seq2seq": (Seq2SeqConfig, Seq2Seq), "transformer": (TransformerConfig, Transformer)}
    commands = (Command("translate", "translate sentences with a trained translation model", _add_translate_arguments, _translate),)
    eval_help = "a translator's BLEU and chrF"

    def check(self, cfg, run_dir: Path) -> None:
        if cfg.train.fsdp:
            # The decoders run outside the root module's forward (encode, decode_step, validation BLEU),
            # where FSDP's sharded parameters are not gathered.
            raise ConfigError("train.fsdp is not supported for translation; under torchrun translation trains with DDP (leave fsdp off).")

    def prepare(self, cfg, ctx: Context) -> None:
        if getattr(cfg.model, "share_embeddings", False) and not cfg.data.joint_vocab:
            raise ConfigError("model.share_embeddings needs one vocabulary for both languages: set data.joint_vocab: true "
                              "or model.share_embeddings: false.")
        cap = getattr(cfg.model, "max_positions", None)
        if cap is not None and cfg.data.max_length + 1 > cap:
            raise ConfigError(f"data.max_length ({cfg.data.max_length}) + 1 for the end token must fit model.max_positions ({cap}); "
                              "lower the one or raise the other.")
        train_pairs, dev, test = load_splits(cfg.data)
        vocab = Vocabularies.train(cfg.data, train_pairs)
        cfg.model = dataclasses.replace(cfg.model, source_vocab_size=vocab.source.vocab_size, target_vocab_size=vocab.target.vocab_size,
                                        pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
        self.build_model(cfg.model)  # fail now, before anything is written, if the settings do not fit together
        vocab.save(ctx.run_dir)

        write_cache(cfg, ctx.run_dir, vocab, (train_pairs, dev, test), ctx.quiet)
        if not ctx.quiet:
            joint = "joint" if cfg.data.joint_vocab else "separate"
            print(f"data: {len(train_pairs):,} training, {len(dev):,} dev and {len(test):,} test pairs "
                  f"({cfg.data.source_lang}->{cfg.data.target_lang}); {joint} BPE vocabulary {vocab.source.vocab_size:,}"
                  + ("" if cfg.data.joint_vocab else f" / {vocab.target.vocab_size:,}"), file=sys.stderr)

    def check_prepared(self, cfg, ctx: Context) -> None:
        if (ctx.run_dir / "data" / cache.MANIFEST).is_file():
            check_cache(ctx.run_dir, cfg)
        else:  # a run prepared before the cache existed: prepare it now, from the raw files and the run's vocabularies
            write_cache(cfg, ctx.run_dir, Vocabularies.load(ctx.run_dir), read_legacy_splits(ctx.run_dir, cfg), ctx.quiet)

    def job(self, cfg, ctx: Context) -> TrainingJob:
        run_dir, device = ctx.run_dir, ctx.device
        vocab = Vocabularies.load(run_dir)
        model = self.build_model(cfg.model).to(device)
        data_dir = run_dir / "data"  # checked on rank 0 (prepare_run), not again on every rank
        _, sources, targets = load_cached_split(data_dir, "train")
        dev, dev_sources, dev_targets = load_cached_split(data_dir, "dev")
        if ctx.world_size > 1:  # each rank trains on its own shard of the pairs
            sources, targets = sources[ctx.rank :: ctx.world_size], targets[ctx.rank :: ctx.world_size]
        sampler = PairBatches(sources, targets, cfg.data.batch_tokens, cfg.train.seed)
        smoothing = cfg.translate.label_smoothing
        if not ctx.quiet:
            print(f"data: {len(sources):,} training pairs", file=sys.stderr)

        def train_batch():
            rows = sampler.next_rows()
            return make_batch([sources[i] for i in rows], [targets[i] for i in rows], vocab, device)

        def loss(model, batch, step):
            src, tgt_in, tgt_out, _ = batch
            return model(src, tgt_in, tgt_out, smoothing)[1]

        tokenize = bleu_tokenizer(cfg.data.target_lang, cfg.translate.bleu_tokenize)

        def evaluate(model) -> dict:
            """Dev cross entropy (no smoothing: a true perplexity) and greedy BLEU on the first val_sentences."""
            total, count = 0.0, 0
            order = sorted(range(len(dev)), key=lambda i: len(dev_sources[i]))
            for start in range(0, len(order), 64):  # similar lengths share a batch; a sum needs no order restored
                batch_rows = order[start : start + 64]
                src, tgt_in, tgt_out, n = make_batch([dev_sources[i] for i in batch_rows], [dev_targets[i] for i in batch_rows], vocab, device)
                total += model(src, tgt_in, tgt_out, 0.0)[1].item() * n
                count += n
            metrics = {"val_loss": total / max(count, 1)}
            if cfg.translate.val_sentences > 0:
                subset = dev[: cfg.translate.val_sentences]
                hypotheses = Translator(model, vocab, cfg, device).translate([p.source for p in subset], beam_size=1)
                metrics["val_bleu"] = bleu_chrf(hypotheses, [p.target for p in subset], tokenize)["bleu"]
            return metrics

        return TrainingJob(
            model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
            batch_tokens=lambda batch: batch[3],
            data_state=sampler.state_dict, load_data_state=sampler.load_state_dict,
            monitor="val_bleu" if cfg.translate.val_sentences > 0 else "val_loss",
            monitor_mode="max" if cfg.translate.val_sentences > 0 else "min",
            flops_per_token=model.flops_per_token(),
        )

    def add_eval_arguments(self, parser) -> None:
        add_option(parser, "--src", help="translator: source sentences, one per line (default: the run's test split)")
        add_option(parser, "--ref", help="translator: reference translations of --src, one per line")
        add_option(parser, "--beam", type=int, help="translator: beam width (default: the run's translate.beam_size)")
        add_option(parser, "--output", help="translator: also write the translations here, one per line")
        add_option(parser, "--bleu-tokenize", default=None, choices=("auto",) + BLEU_TOKENIZERS,
                   help="translator: sacreBLEU tokenization (default: the run's translate.bleu_tokenize; auto picks zh for Chinese targets)")
        add_option(parser, "--encoding", default=None, help="encoding of --data (default: the run's data.encoding, or utf-8)")

    def evaluate(self, args) -> None:
        if bool(args.src) != bool(args.ref):
            raise ConfigError("give both --src and --ref (source sentences and their reference translations), or neither.")
        if args.beam is not None and args.beam < 1:
            raise ConfigError(f"--beam must be at least 1, got {args.beam}.")
        translator = self.load(args.run_dir, args.device)
        source_ids = None
        if args.src:
            encoding = args.encoding or translator.config.data.encoding
            sources, references = _read_lines(args.src, encoding, "--src"), _read_lines(args.ref, encoding, "--ref")
            where = f"{args.src} -> {args.ref}"
        else:
            run_dir = Path(args.run_dir)
            if (run_dir / "data" / cache.MANIFEST).is_file():
                test, source_ids, _ = load_cached_split(check_cache(run_dir, translator.config), "test")
            else:  # a run prepared before the cache existed
                test = read_legacy_splits(run_dir, translator.config)[2]
            sources, references, where = [p.source for p in test], [p.target for p in test], "the run's test split"
        beam = args.beam or translator.config.translate.beam_size
        report, hypotheses = translator.evaluate(sources, references, args.beam, source_ids, args.bleu_tokenize)
        if args.output:
            _write_lines(hypotheses, args.output)
        if args.json:
            print(json.dumps({"data": where, "beam": beam, **report}))
            return
        print(f"data:  {where} ({len(sources):,} sentences, beam {beam})")
        print(f"BLEU:  {report['bleu']:.2f}   {report['bleu_detail']}")
        print(f"       {report['bleu_signature']}")
        print(f"chrF:  {report['chrf']:.2f}   {report['chrf_signature']}")

    def load(self, run_dir, device: str = "auto") -> Translator:
        return predict_translate.load(run_dir, device)


register(TranslateTask())

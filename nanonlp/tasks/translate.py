"""Machine translation: an attention seq2seq or a Transformer trained on sentence pairs, decoded with
greedy or beam search, scored with sacreBLEU.

This is the one place that joins the pair readers, the BPE vocabularies, token-sized batches, the
models, the training loop and decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

from nanonlp import checkpoint
from nanonlp.config import Config, TranslateDataConfig, dump_yaml, from_dict, read_yaml, to_dict
from nanonlp.data import catalog
from nanonlp.data.batching import PairBatches, pad_batch
from nanonlp.data.readers import Pair, read_aligned_pairs, read_tsv_pairs
from nanonlp.data.tokenizers import BPETokenizer, load_tokenizer
from nanonlp.decode import beam_search, greedy_search
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.metrics import bleu_chrf
from nanonlp.models import build_model
from nanonlp.train import TrainingJob, init_distributed, model_summary, resolve_device, train

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 of every vocabulary


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
    explicit = {"dev": cfg.dev_path, "test": cfg.test_path}[split]
    if explicit:
        return explicit
    entry = catalog.CATALOG.get(cfg.path)
    return entry.split(split) if entry is not None else None


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


def fingerprint(splits: tuple[list[Pair], list[Pair], list[Pair]]) -> str:
    """SHA-256 of every pair of every split, in order."""
    digest = hashlib.sha256()
    for name, pairs in zip(("train", "dev", "test"), splits):
        digest.update(name.encode())
        for p in pairs:
            digest.update(f"{p.source}\t{p.target}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def check_data_unchanged(run_dir: Path, splits) -> None:
    """Refuse to resume or score a run whose data changed since it was prepared: the held-out pairs
    would differ, so the test set could overlap what the model trained on."""
    path = Path(run_dir) / DATA_FILE
    if path.is_file() and json.loads(path.read_text())["sha256"] != fingerprint(splits):
        raise NanoNLPError(f"the data of '{run_dir}' changed since the run was prepared (its splits no longer match {DATA_FILE}); "
                           "restore the original files, or train a new run on the new data.")


DATA_FILE = "data.json"


class Vocabularies:
    """The source and target BPE tokenizers (the same object when the vocabulary is joint), with the
    special ids every translator uses: sources end with eos; targets start with bos and end with eos."""

    def __init__(self, source: BPETokenizer, target: BPETokenizer):
        self.source, self.target = source, target
        self.pad_id, self.bos_id, self.eos_id = (target.token_id(t) for t in SPECIAL_TOKENS)
        if (source.token_id("<pad>"), source.token_id("</s>")) != (self.pad_id, self.eos_id):
            raise NanoNLPError("the source and target vocabularies disagree on the <pad> and </s> ids.")

    @classmethod
    def train(cls, cfg: TranslateDataConfig, pairs: list[Pair]) -> "Vocabularies":
        sources, targets = [p.source for p in pairs], [p.target for p in pairs]
        if cfg.joint_vocab:
            joint = BPETokenizer.train("\n".join(sources + targets), cfg.vocab_size, special_tokens=SPECIAL_TOKENS)
            return cls(joint, joint)
        return cls(BPETokenizer.train("\n".join(sources), cfg.vocab_size, special_tokens=SPECIAL_TOKENS),
                   BPETokenizer.train("\n".join(targets), cfg.vocab_size, special_tokens=SPECIAL_TOKENS))

    def save(self, run_dir: Path) -> None:
        self.source.save(run_dir / "source")
        self.target.save(run_dir / "target")

    @classmethod
    def load(cls, run_dir: Path) -> "Vocabularies":
        return cls(load_tokenizer(run_dir / "source"), load_tokenizer(run_dir / "target"))

    def encode_sources(self, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
        """Source ids ending with eos; beyond max_tokens (a Transformer's position table) cut, eos kept."""
        out = [ids + [self.eos_id] for ids in self.source.encode_batch(texts)]
        if max_tokens is not None:
            out = [s if len(s) <= max_tokens else s[: max_tokens - 1] + [self.eos_id] for s in out]
        return out

    def encode_targets(self, texts: list[str]) -> list[list[int]]:
        return self.target.encode_batch(texts)

    def decode_target(self, ids: list[int]) -> str:
        return self.target.decode(ids).strip()

    @staticmethod
    def pieces(tokenizer: BPETokenizer, ids: list[int]) -> list[str]:
        """Readable labels for single tokens: their text, a leading space shown as '▁'."""
        out = []
        for i in ids:
            token = tokenizer.id_to_token(i)
            out.append(token if token in SPECIAL_TOKENS else tokenizer.decode([i]).replace(" ", "▁"))
        return out


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


# ---------------------------------------------------------------------------------------------------
# training


def _prepare_run(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, quiet: bool) -> None:
    if checkpoint.claim_run_dir(run_dir, resume, overwrite):
        return
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
    build_model(cfg.model)  # fail now, before anything is written, if the settings do not fit together
    vocab.save(run_dir)
    checkpoint.save_json(run_dir / DATA_FILE, {"sha256": fingerprint((train_pairs, dev, test)), "train_pairs": len(train_pairs),
                                               "dev_pairs": len(dev), "test_pairs": len(test)})
    checkpoint.save_model_config(run_dir, to_dict(cfg)["model"]["type"], cfg.model)
    if not quiet:
        joint = "joint" if cfg.data.joint_vocab else "separate"
        print(f"data: {len(train_pairs):,} training, {len(dev):,} dev and {len(test):,} test pairs "
              f"({cfg.data.source_lang}->{cfg.data.target_lang}); {joint} BPE vocabulary {vocab.source.vocab_size:,}"
              + ("" if cfg.data.joint_vocab else f" / {vocab.target.vocab_size:,}"), file=sys.stderr)
    checkpoint.atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))  # last: marks the run as prepared


def train_translator(cfg: Config, resume: bool = False, quiet: bool = False, overwrite: bool = False):
    run_dir = Path(cfg.train.out_dir)
    if cfg.train.fsdp:
        # The decoders run outside the root module's forward (encode, decode_step, validation BLEU),
        # where FSDP's sharded parameters are not gathered.
        raise ConfigError("train.fsdp is not supported for translation; under torchrun translation trains with DDP (leave fsdp off).")
    dist = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device)
    quiet = quiet or not dist.is_main
    dist.main_first(lambda: _prepare_run(cfg, run_dir, resume, overwrite, quiet), device)

    saved = from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True)
    cfg.model, cfg.data = saved.model, saved.data  # the run's own data and model settings
    vocab = Vocabularies.load(run_dir)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    if dist.rank > 0:
        torch.manual_seed(cfg.train.seed + 1000 * dist.rank)

    splits = load_splits(cfg.data)
    check_data_unchanged(run_dir, splits)
    train_pairs, dev, _ = splits
    sources = vocab.encode_sources([p.source for p in train_pairs])
    targets = vocab.encode_targets([p.target for p in train_pairs])
    kept = [i for i in range(len(sources)) if keep_pair(sources[i], targets[i], cfg.data)]
    if not kept:
        raise NanoNLPError(f"no training pair is within data.max_length ({cfg.data.max_length}) tokens; raise it.")
    if not quiet and len(kept) < len(sources):
        print(f"data: {len(sources) - len(kept):,} training pairs dropped by the length filter "
              f"(max_length {cfg.data.max_length}, max_length_ratio {cfg.data.max_length_ratio})", file=sys.stderr)
    if dist.enabled:  # each rank trains on its own shard of the pairs
        kept = kept[dist.rank :: dist.world_size]
    sources, targets = [sources[i] for i in kept], [targets[i] for i in kept]
    sampler = PairBatches(sources, targets, cfg.data.batch_tokens, cfg.train.seed)

    # Dev pairs are scored whole, except beyond a Transformer's position table.
    cap = getattr(cfg.model, "max_positions", None)
    dev_sources = vocab.encode_sources([p.source for p in dev], cap)
    dev_targets = [t[: cap - 1] if cap else t for t in vocab.encode_targets([p.target for p in dev])]
    smoothing = cfg.translate.label_smoothing

    def train_batch():
        rows = sampler.next_rows()
        return make_batch([sources[i] for i in rows], [targets[i] for i in rows], vocab, device)

    def loss(model, batch):
        src, tgt_in, tgt_out, _ = batch
        return model(src, tgt_in, tgt_out, smoothing)[1]

    def evaluate(model) -> dict:
        """Dev cross entropy (no smoothing: a true perplexity) and greedy BLEU on the first val_sentences."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            order = sorted(range(len(dev)), key=lambda i: len(dev_sources[i]))
            for batch_rows in _chunks(order, 64):
                src, tgt_in, tgt_out, n = make_batch([dev_sources[i] for i in batch_rows], [dev_targets[i] for i in batch_rows], vocab, device)
                total += model(src, tgt_in, tgt_out, 0.0)[1].item() * n
                count += n
        metrics = {"val_loss": total / max(count, 1)}
        if cfg.translate.val_sentences > 0:
            subset = dev[: cfg.translate.val_sentences]
            translator = Translator(model, vocab, cfg, device)
            hypotheses = translator.translate([p.source for p in subset], beam_size=1)
            metrics["val_bleu"] = bleu_chrf(hypotheses, [p.target for p in subset])["bleu"]
        model.train(was_training)
        return metrics

    if not quiet:
        print(f"{model_summary(model, device, cfg.train.dtype)}; {len(sources):,} training pairs", file=sys.stderr)
    job = TrainingJob(
        model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
        batch_tokens=lambda batch: batch[3],
        data_state=sampler.state_dict, load_data_state=sampler.load_state_dict,
        monitor="val_bleu" if cfg.translate.val_sentences > 0 else "val_loss",
        monitor_mode="max" if cfg.translate.val_sentences > 0 else "min",
        flops_per_token=model.flops_per_token(),
    )
    result = train(job, cfg.train, run_dir, device, resume=resume, quiet=quiet)
    if dist.is_main:
        from nanonlp.plots import loss_curve

        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return result


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------------
# using a trained translator


class Translator:
    """A trained translation model with its vocabularies: `translate`, `translate_nbest`, `attention`, `evaluate`."""

    def __init__(self, model, vocab: Vocabularies, config: Config, device):
        self.model, self.vocab, self.config, self.device = model, vocab, config, torch.device(device)

    def max_lengths(self, sources: list[list[int]]) -> torch.Tensor:
        """Per source, the most tokens its translation may have: ratio * source length + offset,
        within the model's position table (a Transformer)."""
        options = self.config.translate
        cap = getattr(self.model.config, "max_positions", None)
        limits = []
        for ids in sources:
            limit = max(1, int(options.max_length_ratio * (len(ids) - 1) + options.max_length_offset))
            limits.append(min(limit, cap - 1) if cap else limit)
        return torch.tensor(limits)

    def _source_ids(self, texts: list[str]) -> list[list[int]]:
        return self.vocab.encode_sources([t.strip() for t in texts], getattr(self.model.config, "max_positions", None))

    @torch.no_grad()
    def translate_nbest(self, texts: list[str], beam_size: int | None = None, nbest: int = 1,
                        batch_size: int | None = None, alpha: float | None = None) -> list[list[tuple[str, float]]]:
        """For each text its `nbest` translations with their scores (log-probability divided by the
        length penalty), best first. Beam size 1 is greedy search."""
        beam_size = beam_size or self.config.translate.beam_size
        batch_size = batch_size or self.config.translate.batch_size
        alpha = self.config.translate.length_penalty if alpha is None else alpha
        if nbest > beam_size:
            raise NanoNLPError(f"--nbest {nbest} is larger than the beam ({beam_size}); a beam of k keeps at most k translations.")
        was_training = self.model.training
        self.model.eval()
        sources = self._source_ids(texts)
        # similar lengths share a batch (less padding); a blank line translates to a blank line
        order = sorted((i for i in range(len(texts)) if texts[i].strip()), key=lambda i: len(sources[i]))
        out: list = [[("", 0.0)] if not text.strip() else None for text in texts]
        v = self.vocab
        try:
            for rows in _chunks(order, batch_size):
                batch = [sources[i] for i in rows]
                src = pad_batch(batch, v.pad_id).to(self.device)
                limits = self.max_lengths(batch)
                if beam_size == 1:
                    results = [[h] for h in greedy_search(self.model, src, limits, v.bos_id, v.eos_id, v.pad_id, alpha)]
                else:
                    results = beam_search(self.model, src, limits, beam_size, v.bos_id, v.eos_id, v.pad_id, alpha, nbest)
                for i, hypotheses in zip(rows, results):
                    out[i] = [(v.decode_target(h.tokens), h.score) for h in hypotheses]
        finally:
            self.model.train(was_training)
        return out

    def translate(self, texts: list[str], beam_size: int | None = None, batch_size: int | None = None) -> list[str]:
        """The best translation of each text."""
        return [n[0][0] for n in self.translate_nbest(texts, beam_size, 1, batch_size)]

    @torch.no_grad()
    def attention(self, text: str, beam_size: int | None = None, layer: int = -1, alpha: float | None = None):
        """Source pieces, translation pieces (with </s>), and the attention (T, S) of each translation
        token over the source: the RNN's attention, or the Transformer's cross-attention of `layer`
        averaged over heads."""
        v = self.vocab
        if not text.strip():
            raise NanoNLPError("the sentence whose attention should be plotted is empty.")
        self.model.eval()
        source = self._source_ids([text])[0]
        beam_size = beam_size or self.config.translate.beam_size
        src = torch.tensor([source], device=self.device)
        limits = self.max_lengths([source])
        alpha = self.config.translate.length_penalty if alpha is None else alpha
        # beam search (beam 1 is greedy) ends every translation with eos, forced at the length limit
        tokens = beam_search(self.model, src, limits, beam_size, v.bos_id, v.eos_id, v.pad_id, alpha)[0][0].tokens
        state = self.model.encode(src)
        rows = []
        for step, token in enumerate([v.bos_id] + tokens):  # feed the translation back, reading the attention
            _, state, weights = self.model.decode_step(torch.tensor([token], device=self.device), state, step, need_weights=True)
            layers = weights.size(1)
            if not -layers <= layer < layers:
                raise NanoNLPError(f"--layer {layer} is out of range: the model has {layers} attention layer(s).")
            rows.append(weights[0, layer].float().cpu())
        return Vocabularies.pieces(v.source, source), Vocabularies.pieces(v.target, tokens + [v.eos_id]), torch.stack(rows)

    def evaluate(self, sources: list[str], references: list[str], beam_size: int | None = None) -> tuple[dict, list[str]]:
        """sacreBLEU BLEU and chrF of the translations of `sources` against `references`, and the translations."""
        if len(sources) != len(references):
            raise NanoNLPError(f"{len(sources):,} source sentences but {len(references):,} references; they must pair up line by line.")
        hypotheses = self.translate(sources, beam_size)
        return bleu_chrf(hypotheses, references), hypotheses


def load(run_dir: str | Path, device: str = "auto") -> Translator:
    run_dir = Path(run_dir)
    cfg = from_dict(read_yaml(run_dir / "config.yaml"), allow_derived=True)
    torch_device = resolve_device(device)
    model = build_model(cfg.model)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise NanoNLPError(f"'{run_dir}' has no weights yet; train until the first evaluation (train.eval_interval steps).")
    checkpoint.load_weights(model, weights)
    model.to(torch_device).eval()
    return Translator(model, Vocabularies.load(run_dir), cfg, torch_device)

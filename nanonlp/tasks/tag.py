"""Named-entity tagging: a BiLSTM-CRF trained on CoNLL-style or JSONL tagged sentences (English words,
or Chinese characters), scored with entity-level F1 through seqeval, used on raw text with character
offsets.

This is the one place that joins the tagged-sentence readers, the tagging schemes, the vocabulary,
the model and the shared training loop for this task. The predictor lives in nanonlp.predict.tag.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanonlp.data import cache, catalog
from nanonlp.data.batching import LengthBatches
from nanonlp.data.tagging import (TaggedSentence, allowed_transitions, convert, read_tagged, repair, split_sentences, tag_set,
                                  tag_types, to_spans)
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_text
from nanonlp.metrics import entity_report
from nanonlp.models.bilstm_crf import BiLSTMCRF, BiLSTMCRFConfig
from nanonlp.models.pretrained_tagger import BertTagger, BertTaggerConfig, GPTTagger, GPTTaggerConfig, PretrainedTaggerConfig
from nanonlp.models.mpnet import MPNetEncoder, MPNetTagger, MPNetTaggerConfig
from nanonlp.predict import tag as predict_tag
from nanonlp.predict.tag import Tagger, TagVocabulary, character_tokenized, decode, join_tokens, reader_for, tokenize
from nanonlp.tasks import Command, Context, Task, TrainingJob, add_option, register

SPLITS = ("train", "dev", "test")


@dataclass
class TagDataConfig:
    path: str = "wikiann_en"  # tagged sentences: a CoNLL-style or JSONL file, or a catalog name (wikiann_en, msra_ner)
    dev_path: str = ""  # "" uses the catalog's dev split, else holds dev_fraction out of the training file
    test_path: str = ""  # "" uses the catalog's test split, else holds test_fraction out of the training file
    format: str = field(default="auto", metadata={"choices": ("auto", "conll", "jsonl", "snips", "cais")})  # auto: the catalog's, else by name
    tag_column: int = -1  # CoNLL: the column holding the tag (-1: the last)
    separator: str = ""  # CoNLL: the column separator; "" any run of whitespace (use "\t" for one character per line)
    token_prefix: str = ""  # stripped from every token that has it (WikiANN: "en:")
    scheme: str = field(default="iob2", metadata={"choices": ("iob1", "iob2", "bioes")})  # the scheme of the files
    inner_scheme: str = field(default="bioes", metadata={"choices": ("iob2", "bioes")})  # the scheme the model tags in
    encoding: str = "utf-8"
    dev_fraction: float = 0.05  # held out for dev when the data has no dev split
    test_fraction: float = 0.05  # held out for test when the data has no test split
    split_seed: int = 0  # seeds that hold-out
    lowercase: bool = False  # word ids from lowercased tokens (the character features keep the case)
    vocab_size: int = 50000  # most frequent training words kept
    min_freq: int = 1  # drop words seen fewer times in training
    max_word_length: int = 20  # characters read per word
    bigram_min_freq: int = 2  # with model.bigram_dim: keep the training bigrams seen at least this often

    def validate(self) -> None:
        for name in ("dev_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ConfigError(f"data.{name} must be between 0 and 0.5, got {getattr(self, name)}.")
        for name in ("vocab_size", "min_freq", "max_word_length", "bigram_min_freq"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self, name)}.")


@dataclass
class TagConfig:
    init_from: str = ""  # the pretrained body of model.type bert (a BERT-format folder, all-MiniLM-L6-v2, m3e-small), mpnet (an MPNet folder, all-mpnet-base-v2) or gpt (a nanonlp GPT run)

    def validate(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# data


def _read(spec: str, cfg: TagDataConfig, quiet: bool = True) -> list[TaggedSentence]:
    """Sentences of one file, repaired where the scheme is broken (counted in a warning), in the inner scheme."""
    entry = catalog.CATALOG.get(spec)
    path = catalog.resolve(spec)
    prefix = cfg.token_prefix or ("en:" if entry is not None and entry.name.startswith("wikiann_en") else "")
    separator = cfg.separator or ("\t" if entry is not None and entry.name == "msra_ner" else None)
    sentences = read_tagged(path, cfg.format if cfg.format != "auto" else (entry.format if entry else "auto"), cfg.encoding,
                            cfg.tag_column, separator, prefix)
    out, repairs = [], 0
    for s in sentences:
        fixed, n = repair(s.tags, cfg.scheme)
        repairs += n
        out.append(TaggedSentence(s.tokens, convert(fixed, cfg.scheme, cfg.inner_scheme)))
    if repairs and not quiet:
        print(f"warning: {path}: {repairs:,} tag(s) broke the {cfg.scheme.upper()} scheme and were read as seqeval reads them "
              "(an I- that continues no entity begins one)", file=sys.stderr)
    return out


def raw_files(cfg: TagDataConfig) -> list[Path]:
    specs = [cfg.path] + [s for s in (_split_spec(cfg, "dev"), _split_spec(cfg, "test")) if s]
    return [catalog.resolve(s) for s in specs]


def _split_spec(cfg: TagDataConfig, split: str) -> str | None:
    return catalog.split_of(cfg.path, split, {"dev": cfg.dev_path, "test": cfg.test_path}[split])


def load_splits(cfg: TagDataConfig, quiet: bool = True) -> dict[str, list[TaggedSentence]]:
    """Training, dev and test sentences; splits the data lacks are held out of the training file with a seeded shuffle."""
    train = _read(cfg.path, cfg, quiet)
    dev_spec, test_spec = _split_spec(cfg, "dev"), _split_spec(cfg, "test")
    dev = _read(dev_spec, cfg, quiet) if dev_spec else None
    test = _read(test_spec, cfg, quiet) if test_spec else None
    if dev is None or test is None:
        dev_fraction = cfg.dev_fraction if dev is None else 0.0
        test_fraction = cfg.test_fraction if test is None else 0.0
        kept, held_dev, held_test = split_sentences(train, (1.0 - dev_fraction - test_fraction, dev_fraction, test_fraction), cfg.split_seed)
        if not kept or (dev is None and not held_dev) or (test is None and not held_test):
            raise NanoNLPError(f"'{cfg.path}' has {len(train):,} sentences, too few to hold out dev and test sentences; "
                               "give data.dev_path and data.test_path, or more data.")
        train, dev, test = kept, dev if dev is not None else held_dev, test if test is not None else held_test
    return {"train": train, "dev": dev, "test": test}


def _settings(cfg) -> dict:
    """The data settings the prepared sentences depend on (bigram_min_freq shapes only the vocabulary,
    which is fingerprinted as a tokenizer file; runs prepared before it existed still match)."""
    settings = dataclasses.asdict(cfg.data)
    settings.pop("bigram_min_freq")
    return settings


def write_cache(run_dir: Path, cfg, splits: dict) -> None:
    data_dir = Path(run_dir) / "data"
    for split, sentences in splits.items():
        cache.save_records(data_dir / f"{split}.json", {"tokens": [s.tokens for s in sentences], "tags": [s.tags for s in sentences]})
    cache.write_manifest(data_dir, raw_files(cfg.data), _settings(cfg), cache.tokenizer_files(run_dir))


def cached_split(run_dir: Path, split: str) -> list[TaggedSentence]:
    records = cache.load_records(Path(run_dir) / "data" / f"{split}.json")
    return [TaggedSentence(tokens, tags) for tokens, tags in zip(records["tokens"], records["tags"])]


def tag_tensor(tag_index: dict[str, int], rows: list[list[str]], device, length: int) -> torch.Tensor:
    """Tag ids (B, length), padded with 0."""
    tags = torch.zeros(len(rows), length, dtype=torch.long)
    for row, sentence_tags in enumerate(rows):
        tags[row, : len(sentence_tags)] = torch.tensor([tag_index[t] for t in sentence_tags], dtype=torch.long)
    return tags.to(device)


def units_of(reader, sentences: list[TaggedSentence], scheme: str) -> list[tuple[object, list[str]]]:
    """(unit, its tags) for the sentences' units, as the model reads them. A Transformer's long
    sentence is cut into runs of words that fit; an entity across a cut becomes two, each whole
    (I-LOC E-LOC after a cut begins B-LOC E-LOC), as the tagger reading the runs can only tag them."""
    out = []
    for s in sentences:
        if s.tokens:
            text, spans = join_tokens(s.tokens, reader.character_tokens)
            units = reader.units(text, spans)
            out += [(unit, s.tags[a:b] if len(units) == 1 else repair(s.tags[a:b], scheme)[0]) for unit, a, b in units]
    return out


# ---------------------------------------------------------------------------------------------------
# the pretrained body of a bert or gpt tagger


def pretrained_body(cfg, weights: bool):
    """(tokenizer, the body's config as a dict, the body with its weights or None) from tag.init_from."""
    from nanonlp.pretrained import pretrained_folder

    source = pretrained_folder(cfg.tag.init_from, "tag.init_from")
    if isinstance(cfg.model, MPNetTaggerConfig):
        from nanonlp.data.tokenizers import WordPieceTokenizer

        encoder = MPNetEncoder.from_huggingface(source)
        encoder.pooler = None
        return WordPieceTokenizer.from_folder(source), dataclasses.asdict(encoder.config), encoder.train() if weights else None
    if isinstance(cfg.model, BertTaggerConfig):
        from nanonlp.data.tokenizers import WordPieceTokenizer
        from nanonlp.models.bert import BertEncoder

        encoder = BertEncoder.from_huggingface(source)
        encoder.pooler = None  # BERT's next-sentence pooler reads [CLS] only; a tagger reads every word
        return WordPieceTokenizer.from_folder(source), dataclasses.asdict(encoder.config), encoder.train() if weights else None
    from nanonlp.predict.lm import load as load_lm

    lm = load_lm(source, device="cpu")
    if type(lm.model).__name__ != "GPT":
        raise ConfigError(f"tag.init_from '{source}' holds a {type(lm.model).__name__}; model.type gpt needs a GPT language-model run.")
    return lm.tokenizer, dataclasses.asdict(lm.model.config), lm.model.train() if weights else None


def as_iob2(tags: list[str], scheme: str) -> list[str]:
    return convert(tags, scheme, "iob2") if scheme != "iob2" else list(tags)


# ---------------------------------------------------------------------------------------------------
# the `tag` command


def _add_tag_arguments(p) -> None:
    p.add_argument("run_dir", help="run directory of a tagging run")
    p.add_argument("texts", nargs="*", help="texts to tag (default: --input, else one text per line on stdin)")
    p.add_argument("--input", help="text lines, or tagged sentences to tag again (.conll: a token per line; .jsonl: {\"tokens\": [...]})")
    p.add_argument("--output", help="write the results here (default: print them)")
    p.add_argument("--format", choices=("jsonl", "conll"), default="jsonl",
                   help="jsonl: one line per text, {\"text\", \"entities\": [{\"start\", \"end\", \"type\", \"text\", \"score\"}]}; "
                        "conll: TOKEN<TAB>TAG lines, a blank line between texts")
    p.add_argument("--encoding", default="utf-8", help="encoding of --input")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _tokens_input(path: str, encoding: str) -> list[list[str]] | None:
    """Token lists of a .conll/.jsonl input (its tags, if any, are ignored); None for a file of text lines."""
    name = path.lower()
    if name.endswith((".jsonl", ".ndjson")):
        rows = []
        for number, line in enumerate(Path(path).read_text(encoding=encoding).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append([str(t) for t in json.loads(line)["tokens"]])
                except (ValueError, KeyError, TypeError):
                    raise NanoNLPError(f"{path} line {number}: expected a JSON object with a \"tokens\" list.") from None
        return rows
    if name.endswith((".conll", ".bio", ".iob")):
        sentences, tokens = [], []
        for line in Path(path).read_text(encoding=encoding).splitlines() + [""]:
            if line.strip():
                tokens.append(line.split()[0])
            elif tokens:
                sentences.append(tokens)
                tokens = []
        return sentences
    return None


def _tag(args) -> None:
    from nanonlp.data.readers import read_text, split_lines

    tagger = TagTask().load(args.run_dir, args.device)
    if args.texts and args.input:
        raise ConfigError("give texts as arguments or with --input, not both.")
    token_lists = _tokens_input(args.input, args.encoding) if args.input else None
    lines = []
    if token_lists is not None:
        tags = tagger.tag_tokens(token_lists)  # in the scheme of the run's data files
        if args.format == "conll":
            lines = [line for tokens, row in zip(token_lists, tags) for line in [f"{t}\t{g}" for t, g in zip(tokens, row)] + [""]]
        else:
            for tokens, row, spans_tags in zip(token_lists, tags, tagger.tag_tokens(token_lists, "iob2")):
                entities = [{"start": s, "end": e, "type": k, "text": " ".join(tokens[s:e])} for s, e, k in to_spans(spans_tags, "iob2")]
                lines.append(json.dumps({"tokens": tokens, "tags": row, "entities": entities}, ensure_ascii=False))
    else:
        texts = args.texts or [t for t in split_lines(read_text(args.input, args.encoding, "--input") if args.input else sys.stdin.read()) if t.strip()]
        if not texts:
            raise NanoNLPError("nothing to tag: give texts as arguments, with --input FILE, or on stdin.")
        results = tagger.tag(texts)
        if args.format == "conll":
            sentences = [[tok for tok, _, _ in tokenize(t, tagger.reader.character_tokens)] for t in texts]
            for tokens, row in zip(sentences, tagger.tag_tokens(sentences)):
                lines += [f"{t}\t{g}" for t, g in zip(tokens, row)] + [""]
        else:
            lines = [json.dumps(r, ensure_ascii=False) for r in results]
    content = "".join(line + "\n" for line in lines)
    if args.output:
        atomic_write_text(args.output, content)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(content)


# ---------------------------------------------------------------------------------------------------
# the task


class TagTask(Task):
    name = "tag"
    serves = ("tag",)
    sections = {"data": TagDataConfig, "tag": TagConfig}
    models = {"bilstm_crf": (BiLSTMCRFConfig, BiLSTMCRF), "bert": (BertTaggerConfig, BertTagger), "mpnet": (MPNetTaggerConfig, MPNetTagger),
              "gpt": (GPTTaggerConfig, GPTTagger)}
    frozen = ("tag.init_from",)
    commands = (Command("tag", "find named entities in text with a trained tagger", _add_tag_arguments, _tag),)
    eval_help = "a tagger's entity-level precision, recall and F1 per type"

    def check(self, cfg, run_dir: Path) -> None:
        kind = self.model_type(cfg.model)
        if isinstance(cfg.model, PretrainedTaggerConfig) and not cfg.tag.init_from:
            raise ConfigError(f"model.type {kind} tags with a pretrained body: set tag.init_from to "
                              + ("a BERT-format folder or all-MiniLM-L6-v2." if kind == "bert" else "an MPNet folder or all-mpnet-base-v2." if kind == "mpnet"
                                 else "a nanonlp language-model run of a GPT."))
        if not isinstance(cfg.model, PretrainedTaggerConfig) and cfg.tag.init_from:
            raise ConfigError(f"tag.init_from is the pretrained body of model.type bert or gpt; model.type {kind} trains from scratch, "
                              "so leave it empty.")

    def prepare(self, cfg, ctx: Context) -> None:
        splits = load_splits(cfg.data, quiet=ctx.quiet)
        types = tag_types(splits["train"])
        if not types:
            raise NanoNLPError(f"the training data '{cfg.data.path}' holds no entity; a tagger needs tagged entities to learn from.")
        tags = tag_set(types, cfg.data.inner_scheme)
        unknown = sorted({t for split in ("dev", "test") for s in splits[split] for t in s.tags if t not in tags})
        if unknown:  # a type only dev or test has: it can never be predicted, and counts as missed
            print(f"warning: the dev or test data has tags the training data lacks ({', '.join(unknown[:5])}); "
                  "they count as missed entities", file=sys.stderr)
        start, transitions, end = allowed_transitions(tags, cfg.data.inner_scheme)
        allowed = [start, transitions, end]
        if isinstance(cfg.model, PretrainedTaggerConfig):
            tokenizer, body, _ = pretrained_body(cfg, weights=False)
            if isinstance(cfg.model, (BertTaggerConfig, MPNetTaggerConfig)):
                from nanonlp.pretrained import warn_on_coverage

                warn_on_coverage(tokenizer, (" ".join(s.tokens) for s in splits["train"]), cfg.tag.init_from)
            tokenizer.save(ctx.run_dir)
            size = f"{tokenizer.vocab_size:,} pieces of the pretrained tokenizer"
            cfg.model = dataclasses.replace(cfg.model, tags=tags, allowed=allowed, **{"encoder" if isinstance(cfg.model, (BertTaggerConfig, MPNetTaggerConfig)) else "gpt": body},
                                            character_tokens=character_tokenized([s.tokens for s in splits["train"]]))
        else:
            vocab = TagVocabulary.build([s.tokens for s in splits["train"]], tags, cfg.data.lowercase, cfg.data.vocab_size,
                                        cfg.data.min_freq, cfg.data.max_word_length, cfg.data.bigram_min_freq if cfg.model.bigram_dim else 0)
            vocab.save(ctx.run_dir)
            size = f"{len(vocab.words):,} words, {len(vocab.chars):,} characters" + (f", {len(vocab.bigrams):,} bigrams" if vocab.bigrams else "")
            cfg.model = dataclasses.replace(cfg.model, vocab_size=len(vocab.words), char_vocab_size=len(vocab.chars), pad_id=0,
                                            bigram_vocab_size=len(vocab.bigrams), tags=tags, allowed=allowed)
        write_cache(ctx.run_dir, cfg, splits)
        if not ctx.quiet:
            counts = ", ".join(f"{len(splits[s]):,} {s}" for s in SPLITS)
            print(f"data: {counts} sentences; types {', '.join(types)}; {size}; "
                  f"tags in {cfg.data.inner_scheme.upper()}", file=sys.stderr)

    def check_prepared(self, cfg, ctx: Context) -> None:
        cache.check(ctx.run_dir / "data", _settings(cfg), cache.tokenizer_files(ctx.run_dir))

    def job(self, cfg, ctx: Context) -> TrainingJob:
        run_dir, device = ctx.run_dir, ctx.device
        if ctx.fresh and isinstance(cfg.model, PretrainedTaggerConfig):  # the pretrained weights; a resume restores its own
            model = self.models[self.model_type(cfg.model)][1](cfg.model, pretrained_body(cfg, weights=True)[2])
        else:
            model = self.build_model(cfg.model)
        model = model.to(device)
        reader = reader_for(run_dir, model)
        pretrained = isinstance(cfg.model, PretrainedTaggerConfig)
        tag_index = {t: i for i, t in enumerate(reader.tags)}
        train_sentences = cached_split(run_dir, "train")
        if ctx.world_size > 1:  # each rank trains on its own shard of the sentences
            train_sentences = train_sentences[ctx.rank :: ctx.world_size]
        scheme = cfg.data.inner_scheme
        train = units_of(reader, train_sentences, scheme)
        dev = [s for s in cached_split(run_dir, "dev") if s.tokens]
        dev_items = [join_tokens(s.tokens, reader.character_tokens) for s in dev]
        dev_units = [(u, tags) for u, tags in units_of(reader, dev, scheme) if all(t in tag_index for t in tags)]  # dev loss needs known tags
        dev_units.sort(key=lambda u: reader.unit_length(u[0]))
        sampler = LengthBatches([reader.unit_length(u) for u, _ in train], cfg.train.batch_size, cfg.train.seed)

        def train_batch():
            batch = [train[i] for i in sampler.next_rows()]
            inputs, mask = reader.batch([u for u, _ in batch], device)
            return inputs, mask, tag_tensor(tag_index, [tags for _, tags in batch], device, mask.size(1))

        def loss(model, batch, step):
            inputs, _, tags = batch
            return model(*inputs, tags=tags)[1]

        def evaluate(model) -> dict:
            total, count = 0.0, 0
            for start in range(0, len(dev_units), 64):
                batch = dev_units[start : start + 64]
                inputs, mask = reader.batch([u for u, _ in batch], device)
                _, value = model(*inputs, tags=tag_tensor(tag_index, [tags for _, tags in batch], device, mask.size(1)))
                total, count = total + value.item() * len(batch), count + len(batch)
            predicted = [[reader.tags[t] for t in path] for path, _ in decode(model, reader, dev_items, device, scheme)]
            report = entity_report([as_iob2(s.tags, scheme) for s in dev], [as_iob2(p, scheme) for p in predicted])
            return {"val_loss": total / max(count, 1), "val_f1": report["micro_f1"], "val_precision": report["micro_precision"],
                    "val_recall": report["micro_recall"]}

        return TrainingJob(model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
                           # per piece for a Transformer (its FLOPs per token are per piece), per word for an LSTM
                           batch_tokens=lambda batch: int((batch[0][1] if pretrained else batch[1]).sum()),
                           data_state=sampler.state_dict, load_data_state=sampler.load_state_dict,
                           monitor="val_f1", monitor_mode="max", flops_per_token=model.flops_per_token())

    def add_eval_arguments(self, parser) -> None:
        add_option(parser, "--data", help="a file or catalog name (default: the run's validation split, or a classifier's test split)")
        add_option(parser, "--encoding", default=None, help="encoding of --data (default: the run's data.encoding, or utf-8)")

    def evaluate(self, args) -> None:
        tagger = self.load(args.run_dir, args.device)
        cfg = tagger.config
        if args.data:
            data_cfg = dataclasses.replace(cfg.data, encoding=args.encoding or cfg.data.encoding)
            sentences, source = _read(args.data, data_cfg, quiet=False), args.data
        else:
            cache.check(Path(args.run_dir) / "data", _settings(cfg), cache.tokenizer_files(args.run_dir))
            sentences, source = cached_split(Path(args.run_dir), "test"), "test split"
        predicted = tagger.tag_tokens([s.tokens for s in sentences], "iob2")
        report = entity_report([as_iob2(s.tags, cfg.data.inner_scheme) for s in sentences], predicted)
        if args.json:
            print(json.dumps({"data": str(source), "sentences": len(sentences), **report}))
            return
        print(f"data: {source} ({len(sentences):,} sentences, {report['entities']:,} entities; strict IOB2 matching, seqeval)")
        for key in ("micro_precision", "micro_recall", "micro_f1", "macro_f1"):
            print(f"{key + ':':18s}{report[key]:.4f}")
        print(f"\n{'type':12s} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for kind, row in report["per_type"].items():
            print(f"{kind:12s} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
        kinds = sorted(set(report["confusion"]) | {k for row in report["confusion"].values() for k in row})
        print("\nconfusion (rows gold, columns predicted on the same span; O: none)")
        print(f"{'':12s}" + "".join(f"{k:>8s}" for k in kinds))
        for gold in kinds:
            print(f"{gold:12s}" + "".join(f"{report['confusion'].get(gold, {}).get(k, 0):8d}" for k in kinds))

    def load(self, run_dir, device: str = "auto") -> Tagger:
        return predict_tag.load(run_dir, device)


register(TagTask())

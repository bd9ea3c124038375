"""The `nanonlp` command: parses arguments, loads the config, calls the task. No logic of its own.

Exit codes: 0 success; 1 a runtime problem (missing data, bad file, diverged training);
2 a bad command line or config (unknown key, wrong type, impossible value); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nanonlp.errors import ConfigError, NanoNLPError

EXAMPLES = """examples:
  nanonlp train configs/shakespeare_char_gpt.yaml
  nanonlp train configs/shakespeare_char_gpt.yaml --train.max_steps=200 --model.n_layer=2
  nanonlp train configs/shakespeare_char_gpt.yaml --resume
  nanonlp sample runs/shakespeare_char_gpt --prompt "ROMEO:" --max-new-tokens 500 --top-k 50 --seed 1
  nanonlp eval runs/shakespeare_char_gpt --data path/to/text.txt
  nanonlp train configs/sst2_cnn.yaml
  nanonlp classify runs/sst2_cnn "an utterly charming film"
  nanonlp classify runs/sst2_cnn --input reviews.csv --text-column review --output predictions.csv
  nanonlp eval runs/sst2_cnn --data ../shared/data/sst2/dev.txt
  nanonlp train configs/multi30k_en_de_transformer.yaml
  nanonlp translate runs/multi30k_en_de_transformer --beam 5 < sentences.en > sentences.de
  nanonlp translate runs/multi30k_en_de_transformer "A man is riding a bike." --plot-attention attn.png
  nanonlp eval runs/multi30k_en_de_transformer --src test.en --ref test.de
  nanonlp average runs/multi30k_en_de_transformer --last 5
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanonlp", description="Train, evaluate and sample classic neural NLP models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    from nanonlp import __version__

    parser.add_argument("--version", action="version", version=f"nanonlp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("train", help="train a model from a YAML config",
                            description="Train from CONFIG. Any config key can be overridden as --section.key=value.")
    p.add_argument("config", help="YAML experiment config, e.g. configs/shakespeare_char_gpt.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in train.out_dir and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages, only errors")

    p = commands.add_parser("sample", help="generate text from a trained language model")
    p.add_argument("run_dir", help="run directory written by `nanonlp train` (or a Hugging Face GPT-2 folder)")
    p.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate")
    p.add_argument("--temperature", type=float, help="0 is greedy; below 1 is more conservative")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens only (0: off)")
    p.add_argument("--top-p", type=float, help="sample from the smallest set reaching probability p (1: off)")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="how many independent samples to print")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = commands.add_parser("classify", help="label texts with a trained classifier")
    p.add_argument("run_dir", help="run directory of a classification run")
    p.add_argument("texts", nargs="*", help="texts to classify (or use --input)")
    p.add_argument("--input", help="a file of texts: .csv/.tsv (with --text-column), .jsonl, or one text per line")
    p.add_argument("--text-column", default="text", help="column (or JSON key) holding the text in --input")
    p.add_argument("--output", help="write predictions here (.csv, .tsv or .jsonl); default: print them")
    p.add_argument("--encoding", default="utf-8", help="encoding of --input")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = commands.add_parser("translate", help="translate sentences with a trained translation model")
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

    p = commands.add_parser("average", help="average the last checkpoints of a run into a new run directory")
    p.add_argument("run_dir", help="run directory written by `nanonlp train`")
    p.add_argument("--last", type=int, default=5, help="how many of the newest step checkpoints to average")
    p.add_argument("--out", help="the new run directory (default: RUN_avgN beside the run)")

    p = commands.add_parser("eval", help="evaluate a trained model: a language model's loss, perplexity and bits per "
                            "character; a classifier's accuracy, P/R/F1, confusion matrix and calibration; "
                            "a translator's BLEU and chrF")
    p.add_argument("run_dir", help="run directory written by `nanonlp train`")
    p.add_argument("--data", help="a file or catalog name (default: the run's validation split, or a classifier's test split)")
    p.add_argument("--format", default="auto", help="classifier data layout: auto, label_text, csv, tsv, jsonl, clinc, sms")
    p.add_argument("--plot", help="classifier: where to write the confusion-matrix PNG (default: RUN/confusion.png)")
    p.add_argument("--encoding", default=None, help="encoding of --data (default: the run's data.encoding, or utf-8)")
    p.add_argument("--src", help="translator: source sentences, one per line (default: the run's test split)")
    p.add_argument("--ref", help="translator: reference translations of --src, one per line")
    p.add_argument("--beam", type=int, help="translator: beam width (default: the run's translate.beam_size)")
    p.add_argument("--output", help="translator: also write the translations here, one per line")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    commands.add_parser("data", help="list the named data sets and where each resolves")
    return parser


def cmd_train(args, overrides: list[str]) -> None:
    from nanonlp.config import load_config
    from nanonlp.train import distributed

    cfg = load_config(args.config, overrides)
    if cfg.task == "classify":
        from nanonlp.tasks.classify import train_classifier as run
    elif cfg.task == "translate":
        from nanonlp.tasks.translate import train_translator as run
    else:
        from nanonlp.tasks.lm import train_lm as run
    try:
        result = run(cfg, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite)
        # Ranks leave together: a rank tearing down gloo while rank 0 still writes its last files
        # can abort the process ("terminate called without an active exception").
        distributed().barrier()
    finally:
        if distributed().enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if not args.quiet and distributed().is_main:
        best = result.best
        shown = {k: v for k, v in best.items() if k != "step"}
        best_text = f"; best at step {best['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) if best else ""
        reason = {"max_seconds": " (time budget train.max_seconds spent)", "early_stopping": " (early stopping)"}.get(result.stopped_by, "")
        print(f"done: step {result.step}{reason}{best_text}; run directory {cfg.train.out_dir}", file=sys.stderr)


def cmd_sample(args) -> None:
    from nanonlp.config import SampleConfig
    from nanonlp.tasks.lm import load

    lm = load(args.run_dir, args.device)
    defaults = lm.config.sample if lm.config is not None else SampleConfig()
    pick = lambda value, default: default if value is None else value  # noqa: E731
    prompt = pick(args.prompt, defaults.prompt)
    for i in range(args.num_samples):
        seed = pick(args.seed, defaults.seed) + i
        pieces = lm.stream(prompt, pick(args.max_new_tokens, defaults.max_new_tokens), pick(args.temperature, defaults.temperature),
                           pick(args.top_k, defaults.top_k), pick(args.top_p, defaults.top_p), seed)
        sys.stdout.write(prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n" if args.num_samples == 1 else "\n" + "-" * 40 + "\n")
    sys.stdout.flush()


def _run_task(run_dir: str) -> str:
    from nanonlp.checkpoint import run_task

    if not Path(run_dir).is_dir():
        raise NanoNLPError(f"run directory '{run_dir}' does not exist; pass the train.out_dir of a finished run.")
    return run_task(run_dir)


def cmd_classify(args) -> None:
    import csv

    from nanonlp.data.readers import read_delimited, read_jsonl, read_text
    from nanonlp.tasks.classify import load

    if _run_task(args.run_dir) != "classify":
        raise NanoNLPError(f"'{args.run_dir}' is not a classification run; `nanonlp classify` needs one.")
    if bool(args.texts) == bool(args.input):
        raise NanoNLPError("give texts as arguments or a file with --input, not both and not neither.")
    rows = None
    if args.input:
        name = args.input.lower()
        if name.endswith((".csv", ".tsv")):
            examples = read_delimited(args.input, "," if name.endswith(".csv") else "\t", args.text_column, None, args.encoding)
        elif name.endswith((".jsonl", ".ndjson")):
            examples = read_jsonl(args.input, args.text_column, None, args.encoding)
        else:
            examples = None
        texts = [e.text for e in examples] if examples is not None else [t for t in read_text(args.input, args.encoding).splitlines() if t.strip()]
        if examples is not None and name.endswith((".csv", ".tsv")):
            with open(args.input, encoding=args.encoding, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="," if name.endswith(".csv") else "\t"))
    else:
        texts = args.texts
    classifier = load(args.run_dir, args.device)
    predictions = classifier.predict(texts)
    label_of = lambda p: "|".join(p["labels"]) if "labels" in p else p["label"]  # noqa: E731
    if not args.output:
        for text, p in zip(texts, predictions):
            probability = f"\t{p['probability']:.4f}" if "probability" in p else ""
            print(f"{label_of(p)}{probability}\t{text}")
        return
    out = Path(args.output)
    if out.suffix.lower() == ".jsonl":
        lines = [json.dumps({"text": t, "label": label_of(p), "probability": p.get("probability"), "probabilities": p["probabilities"]},
                            ensure_ascii=False) for t, p in zip(texts, predictions)]
        content = "\n".join(lines) + "\n"
    else:
        import io

        delimiter = "\t" if out.suffix.lower() == ".tsv" else ","
        base = rows if rows is not None else [{args.text_column: t} for t in texts]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(base[0].keys()) + ["predicted_label", "probability"], delimiter=delimiter)
        writer.writeheader()
        for row, p in zip(base, predictions):
            writer.writerow({**row, "predicted_label": label_of(p), "probability": f"{p.get('probability', 1.0):.4f}"})
        content = buffer.getvalue()
    from nanonlp.checkpoint import atomic_write_text

    atomic_write_text(out, content)
    print(f"wrote {len(predictions)} predictions to {out}", file=sys.stderr)


def cmd_eval_classifier(args) -> None:
    from nanonlp.data import catalog
    from nanonlp.data.readers import read_examples
    from nanonlp.plots import confusion_matrix
    from nanonlp.tasks.classify import default_eval_examples, load

    classifier = load(args.run_dir, args.device)
    data = classifier.config.data
    if args.data:
        entry = catalog.CATALOG.get(args.data)
        data_format = args.format if args.format != "auto" else (entry.format if entry else "auto")
        examples = read_examples(catalog.resolve(args.data), data_format, "test", data.text_column, data.label_column,
                                 args.encoding or data.encoding, data.multi_label, data.label_separator)
        source = args.data
    else:
        source, examples = default_eval_examples(classifier)
    report = classifier.evaluate(examples)
    plot = None
    if "confusion" in report:
        plot = Path(args.plot) if args.plot else Path(args.run_dir) / "confusion.png"
        confusion_matrix(report["confusion"], report["labels"], plot)
    if args.json:
        print(json.dumps({"data": str(source), **{k: v for k, v in report.items() if k not in ("confusion",)}}))
        return
    print(f"data: {source} ({len(examples):,} examples)")
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1",
                "ece", "in_scope_accuracy", "out_of_scope_recall"):
        if key in report:
            print(f"{key + ':':22s}{report[key]:.4f}")
    print(f"\n{'label':24s} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for label, row in report["per_class"].items():
        if row["support"] or row["precision"]:
            print(f"{label[:24]:24s} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
    if plot:
        print(f"\nconfusion matrix: {plot}")


def _read_lines(path: str, encoding: str = "utf-8") -> list[str]:
    from nanonlp.data.readers import read_text, split_lines

    return split_lines(read_text(path, encoding))


def _write_lines(lines: list[str], path: str | None) -> None:
    if path is None:
        for line in lines:
            print(line, flush=True)
        return
    from nanonlp.checkpoint import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in lines))


def cmd_translate(args) -> None:
    from nanonlp.tasks.translate import load

    if _run_task(args.run_dir) != "translate":
        raise NanoNLPError(f"'{args.run_dir}' is not a translation run; `nanonlp translate` needs one trained with task: translate.")
    for name in ("beam", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.nbest < 1:
        raise ConfigError(f"--nbest must be at least 1, got {args.nbest}.")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise ConfigError(f"--length-penalty must not be negative, got {args.length_penalty}.")
    if args.texts and args.input:
        raise ConfigError("give sentences as arguments or with --input, not both.")
    translator = load(args.run_dir, args.device)
    if args.texts:
        texts = args.texts
    elif args.input:
        texts = _read_lines(args.input, args.encoding)
    else:
        from nanonlp.data.readers import split_lines

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


def cmd_average(args) -> None:
    from nanonlp.checkpoint import average_checkpoints

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir.parent / f"{run_dir.name}_avg{args.last}"
    chosen = average_checkpoints(run_dir, args.last, out)
    print(f"averaged {', '.join(p.name for p in chosen)} into {out}", file=sys.stderr)


def cmd_eval_translator(args) -> None:
    from nanonlp.tasks.translate import load, load_splits

    if bool(args.src) != bool(args.ref):
        raise ConfigError("give both --src and --ref (source sentences and their reference translations), or neither.")
    if args.data or args.format != "auto":
        raise ConfigError("a translation run is scored on --src and --ref files (or its own test split); --data and --format are for other tasks.")
    if args.beam is not None and args.beam < 1:
        raise ConfigError(f"--beam must be at least 1, got {args.beam}.")
    translator = load(args.run_dir, args.device)
    if args.src:
        encoding = args.encoding or translator.config.data.encoding
        sources, references, where = _read_lines(args.src, encoding), _read_lines(args.ref, encoding), f"{args.src} -> {args.ref}"
    else:
        from nanonlp.tasks.translate import check_data_unchanged

        splits = load_splits(translator.config.data)
        check_data_unchanged(Path(args.run_dir), splits)
        test = splits[2]
        sources, references, where = [p.source for p in test], [p.target for p in test], "the run's test split"
    report, hypotheses = translator.evaluate(sources, references, args.beam)
    if args.output:
        _write_lines(hypotheses, args.output)
    if args.json:
        print(json.dumps({"data": where, "beam": args.beam or translator.config.translate.beam_size, **report}))
        return
    print(f"data:  {where} ({len(sources):,} sentences, beam {args.beam or translator.config.translate.beam_size})")
    print(f"BLEU:  {report['bleu']:.2f}   {report['bleu_detail']}")
    print(f"       {report['bleu_signature']}")
    print(f"chrF:  {report['chrf']:.2f}   {report['chrf_signature']}")


def cmd_eval(args) -> None:
    task = _run_task(args.run_dir)
    if task == "classify":
        return cmd_eval_classifier(args)
    if task == "translate":
        return cmd_eval_translator(args)
    if args.src or args.ref:
        raise ConfigError("--src and --ref are for translation runs; a language model takes --data.")
    from nanonlp.data import catalog
    from nanonlp.data.readers import read_text
    from nanonlp.tasks.lm import DATA_DIR, load, read_ids

    lm = load(args.run_dir, args.device)
    if args.data:
        source = catalog.resolve(args.data)
        text = read_text(source, args.encoding or "utf-8")
    else:
        val = Path(args.run_dir) / DATA_DIR / "val.bin"
        if not val.is_file():
            raise NanoNLPError(f"'{args.run_dir}' has no validation split; pass --data PATH.")
        source = "validation split"
        text = lm.tokenizer.decode(read_ids(val, lm.tokenizer.vocab_size).tolist())
    result = lm.evaluate(text)
    if args.json:
        print(json.dumps({"data": str(source), **result}))
    else:
        print(f"data:           {source}")
        print(f"tokens scored:  {result['tokens']:,} ({result['characters']:,} characters)")
        print(f"loss:           {result['loss']:.4f} nats/token")
        print(f"perplexity:     {result['perplexity']:.3f}")
        print(f"bits per char:  {result['bits_per_char']:.4f}")


def cmd_data() -> None:
    from nanonlp.data.catalog import CATALOG, cache_dir

    shared = os.environ.get("NANONLP_DATA")
    for entry in CATALOG.values():
        relative = f"{entry.relative_path}.{entry.languages[0]}" if entry.format == "aligned" else entry.relative_path
        here = [p for p in ([Path(shared) / relative] if shared else []) + [cache_dir() / relative] if p.is_file()]
        if here and entry.format == "aligned":
            here = [f"{str(here[0])[: -len(entry.languages[0])]}{{{','.join(entry.languages)}}}"]
        where = str(here[0]) if here else ("built on first use" if entry.build else f"downloaded on first use from {entry.url}")
        print(f"{entry.name:20s} {entry.description}\n{'':20s} {where}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    if extra and args.command in ("translate", "classify") and not any(a.startswith("-") for a in extra):
        # texts after options (`translate RUN --beam 2 "A dog."`): argparse leaves them over
        args.texts, extra = args.texts + extra, []
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            bad = [a for a in extra if not (a.startswith("--") and "=" in a)]
            if bad:
                raise ConfigError(f"unrecognized argument '{bad[0]}'; config overrides look like --train.max_steps=200.")
            cmd_train(args, extra)
        elif args.command == "sample":
            cmd_sample(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "classify":
            cmd_classify(args)
        elif args.command == "translate":
            cmd_translate(args)
        elif args.command == "average":
            cmd_average(args)
        elif args.command == "data":
            cmd_data()
    except NanoNLPError as err:
        print(f"nanonlp: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("\nnanonlp: interrupted; `nanonlp train CONFIG --resume` continues from the last checkpoint.", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `nanonlp sample ... | head` closes the pipe early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)

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

    p = commands.add_parser("eval", help="score text with a trained language model: loss, perplexity, bits per character")
    p.add_argument("run_dir", help="run directory written by `nanonlp train`")
    p.add_argument("--data", help="a text file or catalog name (default: the run's validation split)")
    p.add_argument("--encoding", default="utf-8", help="encoding of --data")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    commands.add_parser("data", help="list the named data sets and where each resolves")
    return parser


def cmd_train(args, overrides: list[str]) -> None:
    from nanonlp.config import load_config
    from nanonlp.tasks.lm import train_lm

    from nanonlp.train import distributed

    cfg = load_config(args.config, overrides)
    try:
        result = train_lm(cfg, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite)
    finally:
        if distributed().enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if not args.quiet and distributed().is_main:
        best = result.best
        best_text = f"; best val_loss {best['val_loss']:.4f} at step {best['step']}" if best else ""
        reason = " (time budget train.max_seconds spent)" if result.stopped_by == "max_seconds" else ""
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


def cmd_eval(args) -> None:
    from nanonlp.data import catalog
    from nanonlp.data.readers import read_text
    from nanonlp.tasks.lm import DATA_DIR, load, read_ids

    lm = load(args.run_dir, args.device)
    if args.data:
        source = catalog.resolve(args.data)
        text = read_text(source, args.encoding)
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
        here = [p for p in ([Path(shared) / entry.relative_path] if shared else []) + [cache_dir() / entry.relative_path] if p.is_file()]
        where = str(here[0]) if here else ("built on first use" if entry.build else f"downloaded on first use from {entry.url}")
        print(f"{entry.name:20s} {entry.description}\n{'':20s} {where}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
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

"""The `nanonlp` command: parses arguments and dispatches. `train`, `eval`, `average` and `data` are
generic; every other command (`sample`, `classify`, `translate`, ...) is declared by its task.

Exit codes: 0 success; 1 a runtime problem (missing data, bad file, diverged training);
2 a bad command line or config (unknown key, wrong type, impossible value); 130 interrupted.
"""

from __future__ import annotations

import argparse
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
  nanonlp export runs/sst2_minilm --format onnx --out exported/sst2_minilm   # or --format hf (transformers)
  nanonlp train tatoeba_en_vae                      # a sentence VAE
  nanonlp sample runs/tatoeba_en_vae --num-samples 10 --nearest 1
  nanonlp interpolate runs/tatoeba_en_vae "i am tired ." "she is a doctor ." --steps 6
  nanonlp configs                                   # the shipped configs
  nanonlp configs chnsenticorp_cnn > my.yaml        # print one to edit
  nanonlp train chnsenticorp_cnn                    # or train a shipped config by name
  nanonlp analyze posts.jsonl --time-field time --entity-field ticker --sentiment runs/fin_sentiment --out analysis
"""

GENERIC = ("train", "eval", "average", "data", "configs", "serve", "analyze", "export")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser, and for each option of `eval` the tasks that take it and its default."""
    from nanonlp import __version__, tasks

    parser = argparse.ArgumentParser(prog="nanonlp", description="Train, evaluate and use classic neural NLP models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nanonlp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("train", help="train a model from a YAML config",
                            description="Train from CONFIG. Any config key can be overridden as --section.key=value.")
    p.add_argument("config", help="YAML experiment config, e.g. configs/shakespeare_char_gpt.yaml, or a shipped config's name")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in train.out_dir and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages, only errors")

    every = tasks.all_tasks()
    # Tasks may share a command (`sample`): one parser takes the options of all (see tasks.add_option),
    # and the run's task runs it.
    shared: dict[str, list] = {}
    for task in every:
        for command in task.commands:
            if command.name in GENERIC:
                raise ValueError(f"task {task.name} declares the command '{command.name}', which is nanonlp's own.")
            shared.setdefault(command.name, []).append(command)
    for name, declared in shared.items():
        sub = commands.add_parser(name, help="; ".join(dict.fromkeys(c.help for c in declared)))
        for command in declared:
            command.add_arguments(sub)

    p = commands.add_parser("average", help="average the last checkpoints of a run into a new run directory")
    p.add_argument("run_dir", help="run directory written by `nanonlp train`")
    p.add_argument("--last", type=int, default=5, help="how many of the newest step checkpoints to average")
    p.add_argument("--out", help="the new run directory (default: RUN_avgN beside the run)")
    p.add_argument("--device", default="auto", help="where to refit what depends on the weights (a classifier's calibration)")

    helps = "; ".join(t.eval_help for t in every if t.eval_help)
    p = commands.add_parser("eval", help=f"evaluate a trained model: {helps}")
    p.add_argument("run_dir", help="run directory written by `nanonlp train`")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    owners: dict[str, set[str]] = {}  # eval option -> the tasks that take it
    for task in every:
        task.add_eval_arguments(p)
        for dest in _eval_options(task):
            owners.setdefault(dest, set()).add(task.name)

    owners = {dest: (names, p.get_default(dest)) for dest, names in owners.items()}

    p = commands.add_parser("export", help="export a trained run to a Hugging Face folder (transformers) or ONNX",
                            description="Write RUN's model to the new folder --out: --format hf for transformers' Auto classes, "
                                        "--format onnx for ONNX Runtime (see docs/export.md).")
    p.add_argument("run_dir", help="run directory written by `nanonlp train`")
    p.add_argument("--format", required=True, choices=("hf", "onnx"), help="hf: a transformers folder; onnx: model.onnx")
    p.add_argument("--out", required=True, help="the folder to create (it must not exist)")

    commands.add_parser("data", help="list the named data sets and where each resolves")
    p = commands.add_parser("configs", help="list the shipped configs, or print one (nanonlp configs NAME > my.yaml)")
    p.add_argument("name", nargs="?", help="a shipped config to print, e.g. chnsenticorp_cnn")
    from nanonlp import serve

    serve.add_arguments(commands.add_parser("serve", help="serve trained runs over HTTP (FastAPI; pip install 'nanonlp[serve]')"))
    from nanonlp.analyze import command as analyze_command

    analyze_command.add_arguments(commands.add_parser("analyze", help="opinion and risk monitoring: sentiment, entities, events, alerts, report"))
    return parser, owners


def _eval_options(task) -> set[str]:
    """The eval options `task` takes, found by letting it add them to a parser of its own."""
    scratch = argparse.ArgumentParser(add_help=False)
    task.add_eval_arguments(scratch)
    return {a.dest for a in scratch._actions}


def cmd_train(args, overrides: list[str]) -> None:
    from nanonlp.config import load_config
    from nanonlp.train import distributed, end_distributed, fit

    cfg = load_config(args.config, overrides)
    try:
        result = fit(cfg, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite)
    except BaseException:
        end_distributed(ok=False)
        raise
    end_distributed()
    if not args.quiet and distributed().is_main:
        best = result.best
        shown = {k: v for k, v in best.items() if k != "step"}
        best_text = f"; best at step {best['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) if best else ""
        reason = {"max_seconds": " (time budget train.max_seconds spent)", "early_stopping": " (early stopping)"}.get(result.stopped_by, "")
        print(f"done: step {result.step}{reason}{best_text}; run directory {cfg.train.out_dir}", file=sys.stderr)


def cmd_eval(args, owners: dict) -> None:
    """`nanonlp eval RUN`: the run's task evaluates; an option of another task only is refused."""
    from nanonlp import tasks

    task = tasks.task_of(args.run_dir)
    for dest, (names, default) in owners.items():
        if task.name not in names and getattr(args, dest, None) != default:
            flag = "--" + dest.replace("_", "-")
            owners_text = " and ".join(", ".join(sorted(names)).rsplit(", ", 1))
            raise ConfigError(f"{flag} is for {owners_text} runs; '{args.run_dir}' is a {task.name} run.")
    task.evaluate(args)


def cmd_task_command(args, name: str) -> None:
    """A task's own command: the run named on the command line must belong to that task."""
    from nanonlp import tasks

    owners = [t for t in tasks.all_tasks() if any(c.name == name for c in t.commands)]
    owner = owners[0]
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:
        owner = tasks.task_of(run_dir)
        if owner not in owners:
            names = " or ".join(t.name for t in owners)
            raise NanoNLPError(f"'{run_dir}' is a {owner.name} run; `nanonlp {name}` needs one trained with task: {names}.")
    next(c for c in owner.commands if c.name == name).run(args)


def cmd_average(args) -> None:
    from nanonlp import tasks
    from nanonlp.checkpoint import average_checkpoints

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir.parent / f"{run_dir.name}_avg{args.last}"
    chosen = average_checkpoints(run_dir, args.last, out)
    print(f"averaged {', '.join(p.name for p in chosen)} into {out}", file=sys.stderr)
    note = tasks.task_of(out).after_average(out, args.device)
    if note:
        print(note, file=sys.stderr)


def cmd_data() -> None:
    from nanonlp.data.catalog import CATALOG, cache_dir

    shared = os.environ.get("NANONLP_DATA")
    for entry in CATALOG.values():
        relative = f"{entry.relative_path}.{entry.languages[0]}" if entry.format == "aligned" else entry.relative_path
        here = [p for p in ([Path(shared) / relative] if shared else []) + [cache_dir() / relative] if p.is_file()]
        if here and entry.format == "aligned":
            here = [f"{str(here[0])[: -len(entry.languages[0])]}{{{','.join(entry.languages)}}}"]
        if here:
            where = str(here[0])
        elif entry.build:
            where = "built on first use"
        else:
            where = f"downloaded on first use from {entry.url}" if entry.url else f"not downloadable: put it at $NANONLP_DATA/{relative}"
        print(f"{entry.name:20s} {entry.description}\n{'':20s} {where}")


def cmd_configs(name: str | None) -> None:
    from nanonlp.config import config_summary, packaged_configs

    configs = packaged_configs()
    if name is None:
        for config_name, path in configs.items():
            print(f"{config_name:32s} {config_summary(path)}")
        return
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if name not in configs:
        raise ConfigError(f"no shipped config is named '{name}'; `nanonlp configs` lists them.")
    sys.stdout.write(configs[name].read_text(encoding="utf-8"))


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=None):
    """nanonlp's own warnings as one line on stderr, as the rest of its messages; others as Python shows them."""
    from nanonlp.data.tokenizers import UnknownCharactersWarning

    if issubclass(category, UnknownCharactersWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> None:
    import functools
    import warnings

    with warnings.catch_warnings():  # the command's warnings are shown our way, and the caller's setting restored after
        warnings.showwarning = functools.partial(_show_warning, _default=warnings.showwarning)
        _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> None:
    if argv == ["--version"]:  # answered before the tasks (and torch) are imported to build the parser
        from nanonlp import __version__

        print(f"nanonlp {__version__}")
        return
    parser, owners = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    if extra and hasattr(args, "texts") and not any(a.startswith("-") for a in extra):
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
        elif args.command == "eval":
            cmd_eval(args, owners)
        elif args.command == "average":
            cmd_average(args)
        elif args.command == "export":
            from nanonlp.export import export

            print(f"exported {args.run_dir} to {export(args.run_dir, args.format, args.out)} ({args.format})", file=sys.stderr)
        elif args.command == "data":
            cmd_data()
        elif args.command == "configs":
            cmd_configs(args.name)
        elif args.command == "serve":
            from nanonlp import serve

            serve.serve(args)
        elif args.command == "analyze":
            from nanonlp.analyze import command as analyze_command

            analyze_command.run(args)
        else:
            cmd_task_command(args, args.command)
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

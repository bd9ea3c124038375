"""Task `assistant`: a customer-service assistant from a folder of YAML files (nanonlp.dialogue).

    nanonlp assistant check examples/bank              # validate: file, line and problem
    nanonlp assistant train examples/bank --out runs/bank
    nanonlp train my_assistant.yaml                    # the same, from a config (task: assistant)
    nanonlp chat runs/bank
    nanonlp eval runs/bank --conversations examples/bank_conversations.yaml

Preparing the run trains the understanding (intent classifier with a tuned out-of-scope threshold,
slot tagger, sentiment model, FAQ index: nanonlp.dialogue.train, each a sub-run of the run
directory); the shared loop then trains the learned policy on the stories, the run's own model.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.tasks import Command, Context, Task, TrainingJob, add_option, register
from nanonlp.dialogue.policy import PolicyConfig, PolicyNet, story_examples


@dataclass
class AssistantDataConfig:
    path: str = ""  # the assistant folder (its YAML files; see docs/assistant.md)


@dataclass
class AssistantTrainOptions:
    holdout: float = 0.2  # share of each intent's examples held out to tune the out-of-scope threshold
    max_in_scope_loss: float = 0.05  # without out_of_scope examples: the in-scope accuracy the threshold may cost
    seed: int = 0  # the hold-out split and the parts' initialisation
    intent_steps: int = 300  # optimizer steps of the intent classifier
    intent_width: int = 32  # its embedding width
    tagger_steps: int = 300  # optimizer steps of the slot tagger
    tagger_hidden: int = 64  # its LSTM units per direction
    sentiment_steps: int = 200  # optimizer steps of a sentiment model trained on the folder's examples

    def validate(self) -> None:
        if not 0.0 <= self.holdout < 0.5:
            raise ConfigError(f"assistant.holdout must be in [0, 0.5), got {self.holdout}.")
        for name in ("intent_steps", "intent_width", "tagger_steps", "tagger_hidden", "sentiment_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"assistant.{name} must be at least 1, got {getattr(self, name)}.")


def default_config(folder: str, out_dir: str, assistant: dict | None = None, **train) -> dict:
    """The config `nanonlp assistant train DIR --out RUN` trains with; `assistant` sets AssistantTrainOptions."""
    return {"task": "assistant", "data": {"path": str(folder)}, "model": {"type": "policy_mlp"}, "assistant": dict(assistant or {}),
            "train": {"out_dir": str(out_dir), "max_steps": 400, "batch_size": 64, "learning_rate": 0.01, "min_lr": 1e-3,
                      "warmup_steps": 10, "weight_decay": 0.0, "eval_interval": 100, "log_interval": 50, "keep_checkpoints": 1, "peak_tflops": 1.0,
                      "device": "cpu", "dtype": "float32", **train}}


class StorySampler:
    """Seeded random batches of (features, action) from the stories."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int, device):
        self.features, self.targets, self.batch_size, self.device = features, targets, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self):
        rows = torch.randint(len(self.targets), (min(self.batch_size, len(self.targets)),), generator=self.generator)
        return self.features[rows].to(self.device), self.targets[rows].to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class AssistantTask(Task):
    name = "assistant"
    serves = ("chat",)
    sections = {"data": AssistantDataConfig, "assistant": AssistantTrainOptions}
    models = {"policy_mlp": (PolicyConfig, PolicyNet)}
    eval_help = "assistant: replay --conversations (intent accuracy, slot F1, next-action accuracy)"

    def check(self, cfg, run_dir: Path) -> None:
        from nanonlp.dialogue.spec import read_assistant

        if not cfg.data.path:
            raise ConfigError("data.path is empty; set it to the assistant folder.")
        read_assistant(cfg.data.path)  # a bad folder fails before the run directory is touched

    def prepare(self, cfg, ctx: Context) -> None:
        from nanonlp.dialogue.spec import read_assistant
        from nanonlp.dialogue.train import prepare_assistant

        spec = read_assistant(cfg.data.path)
        if not spec.stories:
            raise NanoNLPError(f"'{cfg.data.path}' has no stories; the policy learns from them (add a 'stories:' section).")
        device = "cuda" if ctx.device.type == "cuda" else "cpu"
        prepare_assistant(spec, ctx.run_dir, cfg.assistant, device, ctx.quiet)
        cfg.model.intents = spec.classifier_intents
        cfg.model.slots, cfg.model.forms, cfg.model.actions = list(spec.slots), list(spec.forms), spec.actions

    def job(self, cfg, ctx: Context) -> TrainingJob:
        from nanonlp.dialogue.spec import read_assistant

        spec = read_assistant(ctx.run_dir / "assistant")
        model = self.build_model(cfg.model).to(ctx.device)
        examples = story_examples(spec, cfg.model)
        features = torch.stack([x for x, _, _ in examples])
        targets = torch.tensor([y for _, y, _ in examples])
        sampler = StorySampler(features, targets, cfg.train.batch_size, cfg.train.seed, ctx.device)

        def loss(model, batch, step):
            return model(*batch)[1]

        @torch.no_grad()
        def evaluate(model) -> dict:
            # The stories are the policy's specification, not a sample: it is scored on all of them.
            logits, loss_value = model(features.to(ctx.device), targets.to(ctx.device))
            accuracy = (logits.argmax(1).cpu() == targets).float().mean().item()
            return {"val_loss": loss_value.item(), "val_action_accuracy": accuracy}

        return TrainingJob(model=model, train_batch=sampler, loss=loss, evaluate=evaluate, batch_tokens=lambda batch: len(batch[1]),
                           data_state=sampler.state_dict, load_data_state=sampler.load_state_dict, monitor="val_loss", monitor_mode="min")

    def add_eval_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_option(parser, "--conversations", help="assistant: test conversations (YAML) to replay")
        add_option(parser, "--show-failed", type=int, default=10, help="assistant: failed conversations printed turn by turn")

    def evaluate(self, args) -> None:
        from nanonlp.dialogue.evaluate import evaluate_conversations, print_report

        if not args.conversations:
            raise ConfigError("nanonlp eval on an assistant needs --conversations FILE (a YAML file of test conversations).")
        assistant = self.load(args.run_dir, "cpu" if args.device == "auto" else args.device, sessions=":memory:")
        report = evaluate_conversations(assistant, args.conversations)
        print_report(report, as_json=args.json, show_failed=args.show_failed)

    def load(self, run_dir, device: str = "auto", sessions=None):
        from nanonlp.dialogue.assistant import load

        return load(run_dir, sessions=sessions, device="cpu" if device == "auto" else device)


def _assistant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("check", "train"), help="check: validate the folder; train: train a run from it")
    parser.add_argument("folder", help="the assistant folder (YAML files)")
    parser.add_argument("--out", help="train: the run directory to write")
    parser.add_argument("--overwrite", action="store_true", help="train: replace an existing run in --out")
    parser.add_argument("--quiet", action="store_true", help="train: only errors")
    parser.add_argument("--device", default="cpu", help="train: cpu, cuda or auto")


def _assistant(args: argparse.Namespace) -> None:
    from nanonlp.dialogue.spec import read_assistant

    if args.action == "check":
        spec = read_assistant(args.folder)
        print(f"{args.folder}: ok ({spec.language}; {len(spec.intents)} intents, {len(spec.slots)} slots, {len(spec.forms)} forms, "
              f"{len(spec.responses)} responses, {len(spec.faq)} FAQ answers, {len(spec.stories)} stories)")
        return
    if not args.out:
        raise ConfigError("nanonlp assistant train needs --out RUN, the run directory to write.")
    from nanonlp.config import from_dict
    from nanonlp.train import fit

    fit(from_dict(default_config(args.folder, args.out, device=args.device)), quiet=args.quiet, overwrite=args.overwrite)
    if not args.quiet:
        print(f"done: the assistant is in {args.out}; talk to it with `nanonlp chat {args.out}`", file=sys.stderr)


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a trained assistant run")
    parser.add_argument("--session", help="continue this session id")
    parser.add_argument("--sessions", help="the session store: a SQLite path or a SQLAlchemy URL (default RUN/sessions.sqlite)")
    parser.add_argument("--verbose", action="store_true", help="show intent, confidence, slots and action after each reply")


def _chat(args: argparse.Namespace) -> None:
    from nanonlp.dialogue.assistant import load

    assistant = load(args.run_dir, sessions=args.sessions)
    session_id = args.session
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{assistant.spec.name} ({assistant.language}); an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            if interactive:
                break
            continue
        turn = assistant.respond(line, session_id=session_id)
        session_id = turn["session_id"]
        print(f"bot> {turn['reply']}")
        if args.verbose:
            print(f"     [{turn['intent']} {turn['confidence']:.2f}; slots {turn['slots']}; {turn['action']} ({turn['source']});"
                  f" sentiment {turn['sentiment']['label']}]", file=sys.stderr)
        if turn["handoff"]:
            print("     [handed off to a person]", file=sys.stderr)
    if interactive and session_id:
        print(f"session {session_id} (continue with --session)", file=sys.stderr)


AssistantTask.commands = (
    Command("assistant", "check an assistant folder, or train a run from it", _assistant_arguments, _assistant),
    Command("chat", "talk to a trained assistant in the terminal", _chat_arguments, _chat),
)
# `nanonlp assistant-rl RUN`: the policy fine-tuned against the user simulator (nanonlp.dialogue.reinforce)
from nanonlp.dialogue.reinforce import command as _rl_command  # noqa: E402

AssistantTask.commands += (_rl_command(),)

register(AssistantTask())

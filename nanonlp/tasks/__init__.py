"""The task registry: a task is one module that registers itself here, once.

A task declares its name (the config's `task:`), its config sections, its model families, how it
prepares data, the training job it hands the shared loop, how it evaluates, the predictor that
serves it, and any commands of its own (`sample`, `classify`, `translate`). config.py, cli.py,
train.py and `nanonlp.load` reach a task only through this registry, so adding a task is adding a
module. The built-in tasks are the modules of this package whose names do not start with an
underscore, each named as its task: `get(name)` imports that one module (loading a run imports its
own task only); `names()` and `all_tasks()` import them all (the CLI's command list). A task
defined elsewhere (a plugin, a test) calls `register(MyTask())`.

    class Echo(Task):
        name = "echo"
        sections = {"data": EchoData}
        models = {"linear": (LinearConfig, Linear)}
        serves = ("echo",)                   # POST /v1/echo: its predictor's endpoints() declares it
        def prepare(self, cfg, ctx): ...     # read the raw data once, cache ids in ctx.run_dir/data
        def job(self, cfg, ctx): ...         # -> TrainingJob for the shared loop
        def evaluate(self, args): ...        # `nanonlp eval RUN`
        def load(self, run_dir, device): ... # -> the predictor `nanonlp.load` returns

    register(Echo())
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import pkgutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nanonlp.errors import ConfigError, NanoNLPError


@dataclass
class TrainingJob:
    """What a task hands the shared training loop (nanonlp.train.train)."""

    model: Any  # torch.nn.Module
    train_batch: Callable[[], Any]  # the next training batch, already on the device
    # The loss of a batch at an optimizer step: a scalar tensor, or a dict of named scalar tensors
    # with the total under "loss" and its parts (for example "reconstruction" and "kl") beside it;
    # every part is logged. The step lets a schedule (KL annealing) survive a resume.
    loss: Callable[[Any, Any, int], Any]
    evaluate: Callable[[Any], dict]  # validation metrics; must hold `monitor`
    batch_tokens: Callable[[Any], int]  # tokens in a batch, for throughput
    data_state: Callable[[], dict]  # RNG state of the batch sampler, saved for resume
    load_data_state: Callable[[dict], None]
    monitor: str = "val_loss"  # the metric that picks the best checkpoint
    monitor_mode: str = "min"  # "min" or "max"
    flops_per_token: float = 0.0
    spent_seconds: float = 0.0  # of train.max_seconds, spent before the first step (a recipe's speed probe)


@dataclass
class Context:
    """What a task's preparation and training job get beside the config."""

    run_dir: Path
    device: Any  # torch.device
    quiet: bool = False
    rank: int = 0  # this process under torchrun; 0 alone
    world_size: int = 1
    fresh: bool = True  # no step checkpoint yet: the model starts from its initial (or pretrained) weights


@dataclass
class Command:
    """A command of one task, such as `nanonlp sample`: its arguments and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


class Task:
    """Base class of a task. Subclasses set the class attributes and override the methods."""

    name: str = ""
    sections: dict[str, type] = {}  # "data" and the task's own sections -> their Config dataclasses
    models: dict[str, tuple[type, type]] = {}  # model.type -> (its Config dataclass, its nn.Module)
    frozen: tuple[str, ...] = ()  # "section.key" beyond data.* and model.* that a resume must not change
    commands: tuple[Command, ...] = ()
    serves: tuple[str, ...] = ()  # the HTTP endpoints (POST /v1/<path>) its predictor declares, named where none is mounted
    eval_help: str = ""  # what `nanonlp eval` reports for this task

    # ------------------------------------------------------------------------------------------
    # models

    def model_type(self, model_config) -> str:
        for name, (config_class, _) in self.models.items():
            if type(model_config) is config_class:
                return name
        raise ConfigError(f"{type(model_config).__name__} is not a model family of task {self.name}.")

    def build_model(self, model_config):
        for config_class, model_class in self.models.values():
            if type(model_config) is config_class:
                return model_class(model_config)
        raise ConfigError(f"{type(model_config).__name__} is not a model family of task {self.name}.")

    # ------------------------------------------------------------------------------------------
    # training

    def frozen_keys(self, cfg) -> list[str]:
        """The settings a resumed run must keep: every data and model key the user sets (not those
        derived from the data), and the task's own `frozen` keys."""
        keys = []
        for section in ("data", "model"):
            value = getattr(cfg, section)
            if value is None:
                continue
            keys += [f"{section}.{f.name}" for f in dataclasses.fields(value) if not f.metadata.get("derived")]
        return keys + list(self.frozen) + ["train.optimizer", "train.muon_split_qkv"]  # an optimizer's saved state fits only itself

    def check(self, cfg, run_dir: Path) -> None:
        """Checks that need no data, made before the run directory is touched (on rank 0)."""

    def prepare(self, cfg, ctx: Context) -> None:
        """A fresh run, on rank 0 alone: read the raw data, build the tokenizer, cache the token ids
        under ctx.run_dir/data, and fill the model config's derived fields (vocab_size, ...)."""
        raise NotImplementedError

    def check_prepared(self, cfg, ctx: Context) -> None:
        """A resumed run, on rank 0 before any rank reads the data: check the prepared data against the
        raw files, data settings and tokenizer (data.cache.check), or prepare what a run made before
        the cache existed lacks."""

    def job(self, cfg, ctx: Context) -> TrainingJob:
        """The model and the callables the shared loop trains with, from what `prepare` wrote."""
        raise NotImplementedError

    def finish(self, cfg, ctx: Context) -> None:
        """After training, on rank 0 (a classifier fits its calibration here)."""

    def after_average(self, run_dir: Path, device: str) -> str | None:
        """After `nanonlp average` wrote run_dir: refit or drop whatever was fitted to other weights;
        returns a sentence saying what was done, or None."""
        return None

    # ------------------------------------------------------------------------------------------
    # using a trained run

    def add_eval_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of `nanonlp eval` for this task (add them with `add_option`, which several tasks may share)."""

    def evaluate(self, args: argparse.Namespace) -> None:
        """`nanonlp eval RUN`: print the task's figures (as one JSON object with --json)."""
        raise NotImplementedError

    def load(self, run_dir: str | Path, device: str = "auto"):
        """The predictor of a trained run: built from inference-only modules, in eval mode, thread-safe."""
        raise NotImplementedError

    def recognizes(self, folder: Path) -> bool:
        """True for a folder without config.yaml that this task can still load (a Hugging Face GPT-2)."""
        return False


def add_option(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """parser.add_argument, unless another task already added the same option to this parser."""
    if flags and not flags[0].startswith("-"):  # a positional argument: known by its name
        if not any(action.dest == flags[0] and not action.option_strings for action in parser._actions):
            parser.add_argument(*flags, **kwargs)
        return
    known = {flag for action in parser._actions for flag in action.option_strings}
    if not any(flag in known for flag in flags):
        parser.add_argument(*flags, **kwargs)


# ---------------------------------------------------------------------------------------------------
# the registry

_TASKS: dict[str, Task] = {}
_discovered = False
_discovery_lock = threading.RLock()


def register(task: Task) -> Task:
    """Add a task (an instance of a Task subclass); the same name twice replaces the first."""
    if not task.name or "data" not in task.sections or not task.models:
        raise ValueError(f"task {task.name or type(task).__name__} must set name, sections (with 'data') and models.")
    from nanonlp.models import register_family

    for config_class, model_class in task.models.values():  # inference builds a run's model from its config alone
        register_family(config_class, model_class)
    _TASKS[task.name] = task
    return task


def _import_builtin(name: str) -> None:
    """Import the built-in task module of that name, if there is one (it registers itself)."""
    if name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        with _discovery_lock:
            importlib.import_module(f"{__name__}.{name}")


def _discover() -> None:
    """Import the built-in task modules once; threads loading predictors at once wait for the first."""
    global _discovered
    if _discovered:
        return
    with _discovery_lock:
        if _discovered:
            return
        for module in pkgutil.iter_modules(__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def names() -> list[str]:
    _discover()
    return list(_TASKS)


def get(name: str) -> Task:
    if name not in _TASKS:
        _import_builtin(name)
    if name not in _TASKS:
        _discover()  # every task, to name them in the error
    if name not in _TASKS:
        raise ConfigError(f"task must be one of {', '.join(sorted(_TASKS))}, got '{name}'.")
    return _TASKS[name]


def all_tasks() -> list[Task]:
    _discover()
    return list(_TASKS.values())


def task_of(run_dir: str | Path) -> Task:
    """The task of a run directory: its config.yaml says, or a task recognizes the folder."""
    from nanonlp.checkpoint import CONFIG, run_task

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NanoNLPError(f"run directory '{run_dir}' does not exist; pass the train.out_dir of a finished run.")
    name = run_task(run_dir)
    if name is not None:
        return get(name)
    for task in all_tasks():
        if task.recognizes(run_dir):
            return task
    raise NanoNLPError(f"'{run_dir}' has no {CONFIG}; is it a nanonlp run directory?")

"""Inference only: the predictors that `nanonlp.load(run_dir)` returns, one module per task.

A predictor is built from a run directory (`checkpoint.open_run`), puts its model in eval mode once,
at load, and runs every call under `torch.inference_mode`. It keeps nothing of a call on itself
(each generation has its own cache and random generator), so one predictor can serve many threads
at once. Every call takes a list as well as a single item. Nothing here imports the training loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nanonlp.checkpoint import Run, open_run
from nanonlp.errors import NanoNLPError
from nanonlp.device import resolve_device
from nanonlp.io import load_weights


def load_model(run: Run, device: torch.device, allow_latest: bool = False):
    """The run's model with its best weights (or, with allow_latest, the latest step's where no best
    was kept yet), on `device`, in eval mode for good."""
    from nanonlp import tasks  # the registry only: which module a model.type names

    model = tasks.get(run.config.task).build_model(run.config.model)
    load_weights(model, run.weights(allow_latest))
    return model.to(device).eval()


def open_for_inference(run_dir: str | Path, device: str) -> tuple[Run, torch.device]:
    return open_run(run_dir), resolve_device(device)


def as_batch(items) -> tuple[list, bool]:
    """(a list of items, whether one item was given): predictors accept both and answer in kind."""
    if isinstance(items, str):
        return [items], True
    if isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items):
        return list(items), False
    wrong = type(items).__name__ if not isinstance(items, (list, tuple)) else \
        f"a {type(items).__name__} holding a {next(type(i).__name__ for i in items if not isinstance(i, str))}"
    raise NanoNLPError(f"expected one text (a str) or a batch of texts (a list of str), got {wrong}.")

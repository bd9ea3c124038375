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
    from nanonlp.models import build_model  # the family the run's config names (its task registered it)

    model = build_model(run.config.model)
    load_weights(model, run.weights(allow_latest))
    return model.to(device).eval()


def open_for_inference(run_dir: str | Path, device: str) -> tuple[Run, torch.device]:
    return open_run(run_dir), resolve_device(device)


def as_batch(items) -> tuple[list, bool]:
    """(a list of items, whether one item was given): predictors accept both and answer in kind.

    One str is one text (never one text per character); any other iterable of str (a list, tuple,
    generator, NumPy array or pandas Series of strings) is a batch; anything else is an error."""
    if isinstance(items, str):
        return [items], True
    if isinstance(items, (bytes, bytearray, dict)) or not hasattr(items, "__iter__"):
        raise NanoNLPError(f"expected one text (a str) or a batch of texts (a list of str), got {type(items).__name__}.")
    batch = list(items)
    wrong = next((item for item in batch if not isinstance(item, str)), None)
    if wrong is not None:
        raise NanoNLPError(f"expected one text (a str) or a batch of texts (a list of str), got a {type(items).__name__} "
                           f"holding a {type(wrong).__name__}.")
    return batch, False

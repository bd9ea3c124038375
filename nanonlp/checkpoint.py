"""Run directories: their layout, opening one, step checkpoints, resume state and averaging.

A run directory is self-sufficient: `open_run(run_dir)` finds everything needed to rebuild the model.

    config.yaml             the resolved experiment config (task, data, model, train, task sections)
    tokenizer files         tokenizer.json (or source/ and target/ for a translator)
    data/                   the prepared data: token ids cached once, with a fingerprint of the raw
                            files and the tokenizer (prepared.json) that resume and eval check
    model.safetensors       the best weights so far (by the task's validation metric)
    best.json               the step and metrics of those weights
    checkpoints/step_N/     the latest steps: model.safetensors + train_state.pt (optimizer, RNG, step)
    checkpoints/latest      the name of the newest complete step directory
    metrics.jsonl, loss.png training log and its plot

Every file is written to a temporary name and renamed into place (nanonlp.io), and a step directory
is complete before `latest` points at it, so a run killed at any moment leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanonlp.errors import NanoNLPError
from nanonlp.io import UMASK, fsync_dir, atomic_write, atomic_write_text, save_json, save_weights

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
DATA_DIR = "data"
LATEST = "latest"


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Make sure `run_dir` may be written; True when it already holds a run to resume."""
    has_run = (run_dir / "config.yaml").is_file()
    if has_run and not resume:
        if not overwrite:
            raise NanoNLPError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it, "
                               "--overwrite to start over, or set train.out_dir to a new folder.")
        shutil.rmtree(run_dir)
        has_run = False
    run_dir.mkdir(parents=True, exist_ok=True)
    return has_run


def run_task(run_dir: str | Path) -> str | None:
    """The `task:` of a run directory's config.yaml; None where the folder has no config.yaml."""
    import yaml

    config = Path(run_dir) / CONFIG
    if not config.is_file():
        return None
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise NanoNLPError(f"'{config}' is not a readable YAML config; restore it from the run's checkpoint or train again.") from None
    if not isinstance(raw, dict):
        raise NanoNLPError(f"'{config}' is not a YAML mapping; restore it or train again.")
    from nanonlp.config import DEFAULT_TASK

    return str(raw.get("task", DEFAULT_TASK))


@dataclass
class Run:
    """An opened run directory: its folder and its resolved config."""

    dir: Path
    config: Any

    def weights(self, allow_latest: bool = False) -> Path:
        """The best weights; with allow_latest, the latest step's where no evaluation has kept a best yet."""
        best = self.dir / WEIGHTS
        if best.is_file():
            return best
        latest = latest_checkpoint(self.dir) if allow_latest else None
        if latest is None:
            raise NanoNLPError(f"'{self.dir}' has no weights yet; train until the first evaluation (train.eval_interval steps).")
        return latest / WEIGHTS

    @property
    def data_dir(self) -> Path:
        return self.dir / DATA_DIR


def open_run(run_dir: str | Path) -> Run:
    """The one way to open a trained run: check the folder, read and validate its config.yaml."""
    from nanonlp.config import from_dict, read_yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NanoNLPError(f"run directory '{run_dir}' does not exist; pass the train.out_dir of a finished run.")
    if not (run_dir / CONFIG).is_file():
        raise NanoNLPError(f"'{run_dir}' has no {CONFIG}; is it a nanonlp run directory?")
    return Run(run_dir, from_dict(read_yaml(run_dir / CONFIG), allow_derived=True))


def write_step_checkpoint(run_dir: Path, step: int, model, train_state: dict, keep: int) -> Path:
    """Write checkpoints/step_N completely, point `latest` at it, then drop all but the newest `keep`.

    `model` is a module, or a function that writes the weights file at the path it is given.
    """
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)
        if callable(model) and not isinstance(model, torch.nn.Module):
            model(tmp / "model.safetensors")
        else:
            save_weights(model, tmp / "model.safetensors")
        atomic_write(tmp / "train_state.pt", lambda t: torch.save(train_state, t))
        final = folder / name
        old = None
        if final.exists():  # the same step saved again after a resume: move it aside, never delete first
            old = folder / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            atomic_write_text(folder / LATEST, old.name + "\n")
        os.replace(tmp, final)
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / LATEST, name + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    steps = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (folder / "model.safetensors").is_file() or not (folder / "train_state.pt").is_file():
        raise NanoNLPError(f"checkpoint '{folder}' named by checkpoints/latest is incomplete; delete the pointer to start over.")
    return folder


def load_train_state(folder: Path) -> dict:
    return torch.load(folder / "train_state.pt", map_location="cpu", weights_only=True)


def average_checkpoints(run_dir: str | Path, last: int, out_dir: str | Path) -> list[Path]:
    """Average the weights of the last `last` step checkpoints of a run (Vaswani et al. 2017 average the
    last 5 or 20) into a new run directory: a copy of the run with the averaged model.safetensors.
    Returns the checkpoints averaged."""
    from safetensors.torch import load_file, save_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file():
        raise NanoNLPError(f"'{run_dir}' is not a run directory (it has no config.yaml).")
    steps = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir() and (p / "model.safetensors").is_file())
    if last < 1:
        raise NanoNLPError(f"--last must be at least 1, got {last}.")
    if len(steps) < last:
        raise NanoNLPError(f"'{run_dir}' keeps {len(steps)} step checkpoint(s), fewer than --last {last}; average fewer, "
                           "or train with a larger train.keep_checkpoints.")
    if out_dir.exists():
        raise NanoNLPError(f"'{out_dir}' already exists; choose another --out or delete it.")
    chosen = steps[-last:]
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for folder in chosen:
        for name, tensor in load_file(str(folder / "model.safetensors")).items():
            dtypes[name] = tensor.dtype
            total[name] = total.get(name, 0) + tensor.double()
    averaged = {name: (t / len(chosen)).to(dtypes[name]).contiguous() for name, t in total.items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        for item in run_dir.iterdir():
            # best.json describes the best checkpoint, not the averaged weights
            if item.name in ("checkpoints", "model.safetensors", "best.json") or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        save_file(averaged, str(tmp / "model.safetensors"))
        save_json(tmp / "averaged.json", {"run": str(run_dir), "checkpoints": [p.name for p in chosen]})
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return chosen

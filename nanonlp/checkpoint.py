"""Atomic save and safe load of a run directory.

A run directory is self-sufficient: `load(run_dir)` rebuilds the model from it with no other input.

    config.yaml             the resolved experiment config
    tokenizer.json          the tokenizer
    model.json              the model family and its config
    model.safetensors       the best weights so far (by the task's validation metric)
    best.json               the step and metrics of those weights
    checkpoints/step_N/     the latest steps: model.safetensors + train_state.pt (optimizer, RNG, step)
    checkpoints/latest      the name of the newest complete step directory
    metrics.jsonl, loss.png training log and its plot

Every file is written to a temporary name and renamed into place, and a step directory is complete
before `latest` points at it, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from nanonlp.errors import NanoNLPError

LATEST = "latest"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> None:
    """Call write(tmp_path), then rename the finished file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _first_names(model: torch.nn.Module) -> dict[str, str]:
    """Every name of a parameter or buffer -> the first name the same tensor was registered under
    (GPT's lm_head.weight -> transformer.wte.weight: tied weights are one tensor under two names)."""
    first, names = {}, {}
    for name, tensor in itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        names[name] = first.setdefault(id(tensor), name)
    return names


def _aliases(model: torch.nn.Module) -> set[str]:
    """The second and later names of tied tensors."""
    return {name for name, first in _first_names(model).items() if name != first}


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor that owns its whole storage. On CUDA, cuDNN packs an RNN's weights into one flat
    buffer, each weight a view of it, and safetensors refuses to save such views."""
    tensor = tensor.detach()
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes:
        return tensor
    if tensor.device.type != "cpu":
        return tensor.to("cpu").contiguous()  # a copy of the view alone, and no second copy on the GPU
    return tensor.clone(memory_format=torch.contiguous_format)


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    save_state_dict(model.state_dict(), path, model)


def save_state_dict(weights: dict, path: str | Path, model: torch.nn.Module) -> None:
    """Save a state dict (the model's own, or one gathered from FSDP shards), dropping aliases of tied parameters."""
    from safetensors.torch import save_file

    aliases = _aliases(model)
    tensors = {k: _standalone(v) for k, v in weights.items() if k not in aliases}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp))


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy saved weights into the model's own tensors (so cuDNN's flat RNN buffer stays in place);
    a tied parameter is loaded once, through its first name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise NanoNLPError(f"weights file '{path}' does not exist.")
    device = next(model.parameters()).device
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise NanoNLPError(f"'{path}' is not a readable safetensors file ({err}); train the run again or restore the file.") from None
    # A tied tensor is saved once. Files written before 2026-11-26 (safetensors' save_model) may
    # carry it under another of its names (lm_head.weight for GPT): read it under its first name.
    first = _first_names(model)
    for key in [k for k in state if first.get(k, k) != k]:
        value = state.pop(key)
        state.setdefault(first[key], value)
    expected = {name for name in model.state_dict() if first.get(name, name) == name}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        def listed(kind: str, names: list[str]) -> str:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            return f"{kind} {', '.join(names[:3])}{more}" if names else ""

        detail = "; ".join(part for part in (listed("missing", missing), listed("unexpected", unexpected)) if part)
        raise NanoNLPError(f"weights in '{path}' do not fit the model described by the run's config ({detail}).")
    try:
        model.load_state_dict(state, strict=False)  # the names were checked above; the aliases come with their first name
    except RuntimeError as err:  # a shape that does not fit
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise NanoNLPError(f"weights in '{path}' do not fit the model described by the run's config ({lines[-1] if lines else err}).") from None


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


def read_huggingface_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face model folder: model.safetensors, else pytorch_model.bin (weights only)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise NanoNLPError(f"'{folder}' has neither model.safetensors nor pytorch_model.bin; copy the weights file there.")


def run_task(run_dir: str | Path) -> str:
    """The task a run directory was trained for ("lm" for a Hugging Face GPT-2 folder, which has no config.yaml)."""
    import yaml

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        return "lm"
    return (yaml.safe_load(config.read_text()) or {}).get("task", "lm")


def save_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_model_config(run_dir: Path, family: str, config) -> None:
    save_json(run_dir / "model.json", {"type": family, **dataclasses.asdict(config)})


def write_step_checkpoint(run_dir: Path, step: int, model, train_state: dict, keep: int) -> Path:
    """Write checkpoints/step_N completely, point `latest` at it, then drop all but the newest `keep`.

    `model` is a module, or a function that writes the weights file at the path it is given.
    """
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        if callable(model) and not isinstance(model, torch.nn.Module):
            model(tmp / "model.safetensors")
        else:
            save_weights(model, tmp / "model.safetensors")
        _atomic(tmp / "train_state.pt", lambda t: torch.save(train_state, t))
        final = folder / name
        old = None
        if final.exists():  # the same step saved again after a resume: move it aside, never delete first
            old = folder / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            atomic_write_text(folder / LATEST, old.name + "\n")
        os.replace(tmp, final)
        _fsync_dir(folder)
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

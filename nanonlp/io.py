"""The ground floor: files written atomically, and weight files read and written.

Every file nanonlp writes goes to a temporary name in the same folder and is renamed into place, so a
run killed at any moment leaves either the old file or the new one, never half of one. Data,
models, plots and run directories all write through here.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path

import torch

from nanonlp.errors import NanoNLPError

UMASK = os.umask(0)
os.umask(UMASK)


def fsync_dir(folder: Path) -> None:
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


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename the finished file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


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
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))


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


def read_huggingface_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face model folder: model.safetensors, else pytorch_model.bin (weights only)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise NanoNLPError(f"'{folder}' has neither model.safetensors nor pytorch_model.bin; copy the weights file there.")


def save_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

"""Device and precision: which device to run on, which dtype to compute in, and autocast.

Training and inference both use these; nothing here holds state, so a predictor shared by many
threads can call them freely.
"""

from __future__ import annotations

import contextlib

import torch

from nanonlp.errors import ConfigError


def resolve_device(name: str, local_rank: int | None = None, key: str = "--device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device. Under torchrun (local_rank given) plain cuda is
    this process's GPU. `key` names the setting in errors (train.device, --device)."""
    if not (name in ("auto", "cpu", "cuda") or name.startswith("cuda:")):
        raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N, got '{name}'.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"  # one GPU per process
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is '{name}' but PyTorch sees no CUDA GPU; use auto or cpu.")
    return device


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix units (AVX-512 BF16 or AMX), so autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that have it (else float16), bf16 on CPUs with native bf16 units, else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if name == "float16" and device.type != "cuda":
        raise ConfigError("train.dtype float16 needs a CUDA GPU; on CPU use bfloat16 or float32.")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision: matmuls in dtype, reductions and the loss in float32; weights stay float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""The training loop, one for every task.

`fit(cfg)` runs a task from its config: it prepares the run directory (the task reads and caches its
data), checks a resume against the run's own settings, asks the task for its training job, and hands
that job to `train`. A job is the model and a few callables (a training batch, a loss, an evaluation,
the tokens in a batch; see nanonlp.tasks.TrainingJob). `train` owns everything else: device,
precision, optimizer, learning-rate schedule, clipping, accumulation, evaluation, checkpoints,
resume, logging, and several processes under torchrun (DDP or FSDP). It knows no task by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanonlp import checkpoint, tasks
from nanonlp.config import Config, TrainConfig, dump_yaml, from_dict, read_yaml
from nanonlp.device import autocast, resolve_dtype
from nanonlp.device import resolve_device as _resolve_device
from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.io import atomic_write_text, load_weights, save_json, save_state_dict, save_weights
from nanonlp.tasks import Context, TrainingJob

__all__ = ["fit", "train", "TrainingJob", "TrainResult", "forward_backward", "learning_rate", "make_optimizer"]


# ---------------------------------------------------------------------------------------------------
# device and precision (the stateless parts live in nanonlp.device)


def resolve_device(name: str) -> torch.device:
    """The training device: under torchrun, plain `cuda` is this process's own GPU."""
    return _resolve_device(name, _DIST.local_rank if _DIST.enabled else None, key="train.device")


def compiler_available(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed"
        return True, ""
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return False, "no C++ compiler on PATH"
    return True, ""


def use_compile_cache() -> None:
    """Keep torch.compile's compiled kernels (Inductor's FX graph and code caches) in nanonlp's cache
    directory, so a second run of the same model and shape loads them instead of compiling again
    (Inductor's default is a folder under /tmp, which a reboot empties). A TORCHINDUCTOR_CACHE_DIR
    the user set wins; importing torch._dynamo writes Inductor's default there, which is replaced."""
    from nanonlp.data.catalog import cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(current) != os.path.abspath(default_cache_dir()):
            return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "torchinductor")


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """Measured throughput of a large square matmul in TFLOP/s: the practical peak that MFU is quoted against."""
    # Its own generator: measuring must not shift the global RNG that seeds dropout.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(2):
        a @ b
    repeats = 20 if device.type == "cuda" else 4
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


# ---------------------------------------------------------------------------------------------------
# several processes: torchrun sets RANK, LOCAL_RANK, WORLD_SIZE; one process per GPU (or CPU share)


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_ok(self, ok: bool, device: torch.device) -> bool:
        """True on every rank when `ok` is true on every rank: one rank's failure stops them all."""
        if not self.enabled:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def main_first(self, prepare, device: torch.device) -> None:
        """Run prepare() on rank 0 alone (data, tokenizer, run directory) while the others wait;
        if it fails there, every rank raises, so none is left waiting."""
        error = None
        if self.is_main:
            try:
                prepare()
            except Exception as err:  # not only ours: an OOM or a bug there must not leave the others waiting
                error = err
        if not self.all_ok(error is None, device):
            if error is not None:
                raise error
            raise NanoNLPError("rank 0 could not prepare the run; its message says why.")

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's decision, on every rank (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)], device=device)
        torch.distributed.broadcast(tensor, src=0)
        return bool(tensor.item())

    def from_main(self, value: float, device: torch.device) -> float:
        """Rank 0's number, on every rank (its clock, for a schedule that follows the clock)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.broadcast(tensor, src=0)
        return float(tensor.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            torch.distributed.all_reduce(value)
            value /= self.world_size
        return value


_DIST = Distributed()


def init_distributed(device_name: str) -> Distributed:
    """Join the process group torchrun describes; a plain `nanonlp train` is one process of one."""
    global _DIST
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or _DIST.enabled:
        return _DIST
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        # Processes on one machine share its cores; oversubscribing threads makes every rank slower.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _DIST = Distributed(rank, local_rank, world_size)
    return _DIST


def distributed() -> Distributed:
    return _DIST


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: shard each repeated block (every element of an nn.ModuleList), then the rest of the model.

    Each rank then holds 1/world_size of the parameters, gradients and optimizer state, gathering a
    block's full weights only while that block runs.
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError("train.fsdp needs PyTorch 2.6 or newer (torch.distributed.fsdp.fully_shard).") from None
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)


# ---------------------------------------------------------------------------------------------------
# optimizer and schedule


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights) only, never on biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    # A pretrained body and a new head may learn at different rates (`head_parameters()`, head_learning_rate).
    head_ids = set()
    if cfg.head_learning_rate and hasattr(model, "head_parameters"):
        head_ids = {id(p) for p in model.head_parameters()}
    # Layer-wise decay (Howard and Ruder 2018; Clark et al. 2020): a pretrained body's layer k of L
    # learns at layer_decay ** (L - k) times the rate of its top layer; embeddings count as layer 0.
    depths, top = {}, 0
    if cfg.layer_decay < 1.0 and hasattr(model, "layer_depths"):
        depths, top = model.layer_depths()
    # A model may set its own rates for some parameters (a GAN's critic and generator).
    own = model.learning_rate_scales() if hasattr(model, "learning_rate_scales") else {}
    scales: dict[float, list] = {}
    for p in params:
        if id(p) in head_ids:
            scale = cfg.head_learning_rate / cfg.learning_rate
        else:
            scale = cfg.layer_decay ** (top - depths[id(p)]) if id(p) in depths else 1.0
        scale *= own.get(id(p), 1.0)
        scales.setdefault(scale, []).append(p)
    # Muon takes the hidden layers' matrices (a model names them with `matrix_parameters()`), at its own rate.
    muon = set()
    if cfg.optimizer == "muon":
        if not hasattr(model, "matrix_parameters"):
            raise ConfigError(f"train.optimizer muon needs a model that names its hidden matrices; {type(model).__name__} "
                              "does not: use train.optimizer adamw.")
        muon = {id(p) for p in model.matrix_parameters() if p.requires_grad}
    # Matrices that stack several by rows (a fused q, k, v projection), orthogonalised block by block.
    stacked = {}
    if muon and cfg.muon_split_qkv:
        if not hasattr(model, "stacked_matrices"):
            raise ConfigError(f"train.muon_split_qkv needs a model that names its fused q, k, v matrices; {type(model).__name__} "
                              "does not: set train.muon_split_qkv false.")
        stacked = model.stacked_matrices()
    groups = []
    for scale, part in scales.items():
        rest = [p for p in part if id(p) not in muon]
        muon_scale = scale * cfg.muon_learning_rate / cfg.learning_rate
        for split in sorted({stacked.get(id(p), 1) for p in part if id(p) in muon}):
            groups.append({"params": [p for p in part if id(p) in muon and stacked.get(id(p), 1) == split], "weight_decay": 0.0,
                           "muon": True, "split": split, "lr_scale": muon_scale})
        groups += [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    if muon:
        from nanonlp.optim import MuonAdamW

        precision = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.muon_precision]
        return MuonAdamW(groups, momentum=cfg.muon_momentum, ns_dtype=precision, **kwargs)
    for group in groups:
        group.pop("muon", None)
        group.pop("split", None)
    # The fused kernel updates all parameters in one pass; CUDA and recent CPU builds have it.
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def learning_rate(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr over lr_decay_steps (default max_steps).
    With lr_schedule time, the same shape over the clock: warmup for warmup_share of max_seconds, then
    cosine decay reaching min_lr at max_seconds."""
    if cfg.lr_schedule == "time":
        progress = min(1.0, elapsed / cfg.max_seconds)
        if progress < cfg.warmup_share:
            return cfg.learning_rate * max(progress / cfg.warmup_share, 1e-3)
        rest = (progress - cfg.warmup_share) / max(1e-9, 1.0 - cfg.warmup_share)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * rest)) * (cfg.learning_rate - cfg.min_lr)
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def model_summary(model: torch.nn.Module, device: torch.device, dtype_name: str) -> str:
    """The line printed before training: model family, size, device and precision."""
    n_params = sum(p.numel() for p in model.parameters())
    dtype = str(resolve_dtype(dtype_name, device)).replace("torch.", "")
    return f"model: {type(model).__name__}, {n_params / 1e6:.2f}M parameters; device {device}, {dtype}"


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _trim_metrics(path: Path, step: int) -> None:
    """After a resume, drop log lines a killed run wrote past its last checkpoint."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # half a line from a run killed while writing it
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def peak_tflops(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> float:
    """The matmul peak MFU is quoted against: from config, else measured once per machine and cached."""
    if cfg.peak_tflops:
        return cfg.peak_tflops
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.processor() or platform.machine()}-{torch.get_num_threads()}threads"
    key = f"{name}|{str(dtype).replace('torch.', '')}|torch-{torch.__version__}"
    from nanonlp.data.catalog import cache_dir

    path = cache_dir() / "matmul_peak.json"
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = round(matmul_peak_tflops(device, dtype), 4)
        try:
            save_json(path, known)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    return known[key]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])




# ---------------------------------------------------------------------------------------------------
# the loop: set-up, one optimizer step, evaluation and checkpoint, stopping rules


@dataclass
class TrainResult:
    step: int
    best: dict = field(default_factory=dict)
    last_metrics: dict = field(default_factory=dict)
    stopped_by: str = "max_steps"


def loss_parts(output) -> dict:
    """A job's loss as named parts: a tensor is {"loss": it}; a dict must hold the total under "loss"."""
    if isinstance(output, dict):
        if "loss" not in output:
            raise NanoNLPError(f"a training job's loss returned the parts {', '.join(output)} without the total under 'loss'.")
        return output
    return {"loss": output}


def forward_backward(job: TrainingJob, model, batches: list, device, dtype, scaler=None, step: int = 0) -> dict:
    """Accumulate gradients of the mean loss over equal-sized micro-batches; return the mean of each
    loss part (detached), the total under "loss".

    Under DDP the gradient all-reduce runs once, on the last micro-batch, not on every one.
    """
    totals: dict = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, dtype):
                parts = loss_parts(job.loss(model, batch, step))
                loss = parts["loss"] / len(batches)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for name, value in parts.items():
            part = loss if name == "loss" else value / len(batches)
            totals[name] = totals.get(name, 0) + part.detach().float()
    return totals


def optimizer_step(model, optimizer, grad_clip: float, scaler=None) -> None:
    """Clip the global gradient norm (after unscaling fp16 gradients), step, and clear the gradients.
    With fp16 the scaler skips a step whose gradients overflowed and lowers its scale."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        # A model whose parts train on separate losses (a GAN's autoencoder, critic and generator)
        # names them in `gradient_groups()`: each is clipped alone, so one part's large gradients
        # (a critic's gradient penalty) never shrink another's step.
        for params in model.gradient_groups() if hasattr(model, "gradient_groups") else [model.parameters()]:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def should_stop_early(cfg: TrainConfig, step: int, best: dict) -> bool:
    """train.early_stopping evaluations have passed since the best one."""
    return bool(cfg.early_stopping) and step - best.get("step", step) >= cfg.early_stopping * cfg.eval_interval


def out_of_time(cfg: TrainConfig, elapsed: float) -> bool:
    return bool(cfg.max_seconds) and elapsed >= cfg.max_seconds


def _check_loss_signature(loss) -> None:
    import inspect

    try:
        parameters = inspect.signature(loss).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C callable: trust it
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if len(positional) < 3 and not any(p.kind == p.VAR_POSITIONAL for p in positional):
        raise NanoNLPError("a training job's loss must take (model, batch, step); the step lets a schedule survive a resume.")


class Trainer:
    """One training run's state and its parts. `train` below is the loop that calls them."""

    def __init__(self, job: TrainingJob, cfg: TrainConfig, run_dir: Path, device: torch.device, resume: bool, quiet: bool):
        """Set-up: precision, resume state, sharding, compilation, DDP, optimizer."""
        self.job, self.cfg, self.run_dir, self.device = job, cfg, run_dir, device
        _check_loss_signature(job.loss)
        self.dist = distributed()
        self.quiet = quiet or not self.dist.is_main  # only rank 0 talks, logs and writes
        self.model = job.model
        self.dtype = resolve_dtype(cfg.dtype, device)
        if device.type == "cuda":
            # TF32 tensor cores for whatever runs in fp32 (Ampere and newer): ~10 bits of mantissa, ample for training.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.metrics_path = run_dir / "metrics.jsonl"
        self.peak = peak_tflops(cfg, device, self.dtype) if self.dist.is_main and job.flops_per_token else 0.0
        self.step, self.elapsed_before, self.best = 0, job.spent_seconds, {}
        state = self._restore() if resume else None
        self.resumed = state is not None

        self.sharded = False
        if cfg.fsdp and not self.dist.enabled and not self.quiet:
            print("train.fsdp needs several processes (torchrun); training unsharded", file=sys.stderr)
        if cfg.fsdp and self.dist.enabled:
            if self.dtype == torch.float16:
                raise ConfigError("train.fsdp with train.dtype float16 is not supported (the gradient scaler would see one shard); use bfloat16.")
            shard_model(self.model)
            self.sharded = True
        # train.bf16_weights: forward and backward run on a bf16 copy of the weights, so no autocast
        # casts them on every step and activations stay bf16 end to end; the optimizer updates the
        # fp32 master weights (self.model, also what is evaluated and saved), copied back after each step.
        self.low = None
        if cfg.bf16_weights:
            if self.dtype != torch.bfloat16:
                raise ConfigError(f"train.bf16_weights keeps a bf16 copy of the weights but train.dtype resolves to {self.dtype}; "
                                  "set train.dtype bfloat16 or turn train.bf16_weights off.")
            if self.dist.enabled:
                raise ConfigError("train.bf16_weights trains in one process; under torchrun turn it off (autocast does the same work).")
            import copy

            self.low = copy.deepcopy(self.model).to(torch.bfloat16)
        self.compiled = self.low if self.low is not None else self.model
        if cfg.compile:
            use_compile_cache()  # before anything imports Inductor, which sets its own default
            ok, why = compiler_available(device)
            if ok:
                self.compiled = torch.compile(self.compiled)
            elif not self.quiet:
                print(f"train.compile is on but {why}; training without torch.compile", file=sys.stderr)
        self.wrapped = self.compiled
        if self.dist.enabled and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped = DistributedDataParallel(self.compiled, device_ids=[device.index] if device.type == "cuda" else None)

        self.optimizer = make_optimizer(self.model, cfg, device)  # after sharding: FSDP replaces the parameters
        if state is not None:
            if self.sharded:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        self.start_time = time.perf_counter()

    def _restore(self) -> dict | None:
        """The latest step checkpoint's weights, counters, RNG and sampler state; None without one."""
        latest = checkpoint.latest_checkpoint(self.run_dir)
        if latest is None:
            if self.dist.is_main:
                _trim_metrics(self.metrics_path, 0)  # lines of a run killed before its first checkpoint
            if not self.quiet:
                print(f"no checkpoint in {self.run_dir} yet; starting from step 0", file=sys.stderr)
            return None
        state = checkpoint.load_train_state(latest)
        if state.get("fsdp", False) != (self.cfg.fsdp and self.dist.enabled):
            raise NanoNLPError(f"checkpoint {latest} was written with train.fsdp={state.get('fsdp', False)}; resume with the same setting.")
        load_weights(self.model, latest / checkpoint.WEIGHTS)  # before sharding: every rank reads the full weights
        self.step, self.elapsed_before, self.best = state["step"], state["elapsed_s"], state["best"]
        rng = state["rng"]
        _set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        data = state["data"]
        if isinstance(data, list):  # one sampler state per rank
            data = data[self.dist.rank] if len(data) == self.dist.world_size else data[0]
        self.job.load_data_state(data)
        if self.dist.is_main:
            _trim_metrics(self.metrics_path, self.step)
        if not self.quiet:
            print(f"resuming from {latest} (step {self.step})", file=sys.stderr)
        return state

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    # -- one optimizer step ------------------------------------------------------------------------

    def train_step(self) -> tuple[dict, float, int]:
        """Set the learning rate, accumulate grad_accum_steps micro-batches, clip, step.
        Returns the loss parts, the learning rate and the tokens seen (all ranks)."""
        elapsed = self.dist.from_main(self.elapsed(), self.device) if self.cfg.lr_schedule == "time" else 0.0
        lr = learning_rate(self.step, self.cfg, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batches = [self.job.train_batch() for _ in range(self.cfg.grad_accum_steps)]
        if self.low is None:
            parts = forward_backward(self.job, self.wrapped, batches, self.device, self.dtype, self.scaler, self.step)
            optimizer_step(self.model, self.optimizer, self.cfg.grad_clip, self.scaler)
        else:  # already bf16: no autocast; the fp32 masters take the gradients, step, and are copied back
            parts = forward_backward(self.job, self.wrapped, batches, self.device, torch.float32, None, self.step)
            for master, low in zip(self.model.parameters(), self.low.parameters()):
                master.grad, low.grad = (None if low.grad is None else low.grad.float()), None
            optimizer_step(self.model, self.optimizer, self.cfg.grad_clip)
            with torch.no_grad():
                for master, low in zip(self.model.parameters(), self.low.parameters()):
                    low.copy_(master)
        self.step += 1
        return parts, lr, sum(self.job.batch_tokens(b) for b in batches) * self.dist.world_size

    # -- evaluation and checkpoint -----------------------------------------------------------------

    def _full_state(self) -> tuple[dict | None, dict]:
        """Unsharded model and optimizer state on rank 0 (a collective under FSDP)."""
        if not self.sharded:
            return None, self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options), get_optimizer_state_dict(self.model, self.optimizer, options=options)

    def _save_weights(self, path: Path, weights: dict | None) -> None:
        if weights is None:
            save_weights(self.model, path)
        else:
            save_state_dict(weights, path, self.model)

    def _save_step(self, weights: dict | None, optimizer_state: dict) -> None:
        # Every rank's RNG and sampler state, so a resumed run draws the same dropout masks and
        # batches on each.
        rng, data = [_rng_state()], [self.job.data_state()]
        if self.dist.enabled:
            rng, data = [None] * self.dist.world_size, [None] * self.dist.world_size
            torch.distributed.all_gather_object(rng, _rng_state())
            torch.distributed.all_gather_object(data, self.job.data_state())
        if not self.dist.is_main:
            return
        state = {"step": self.step, "elapsed_s": self.elapsed(), "optimizer": optimizer_state, "rng": rng, "data": data,
                 "best": self.best, "fsdp": self.sharded}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        checkpoint.write_step_checkpoint(self.run_dir, self.step, lambda path: self._save_weights(path, weights), state,
                                         self.cfg.keep_checkpoints)

    def log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate_and_save(self) -> None:
        """Validate, keep the best weights, write the step checkpoint. Rank 0 does it alone, except
        under FSDP, where every rank holds a shard and must take part in the forward passes."""
        from tqdm import tqdm

        metrics = {}
        if self.dist.is_main or self.sharded:
            self.model.eval()
            with torch.no_grad(), autocast(self.device, self.dtype):
                # the fp32 masters where train.bf16_weights keeps a bf16 copy: what is saved is what is scored
                metrics = {k: float(v) for k, v in self.job.evaluate(self.compiled if self.low is None else self.model).items()}
            self.model.train()
        weights, optimizer_state = self._full_state()
        improved = False
        if self.dist.is_main:
            self.log({"step": self.step, **metrics, "elapsed_s": round(self.elapsed(), 3)})
            improved = _better(metrics[self.job.monitor], self.best.get(self.job.monitor), self.job.monitor_mode)
            if improved:
                self.best = {"step": self.step, **metrics}
            if not self.quiet:
                tqdm.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr)
        # The step checkpoint (which records `best`) first, then the best weights: a kill between
        # the two leaves a resumable state whose best.json is at worst one evaluation old.
        self._save_step(weights, optimizer_state)
        if improved:
            self._save_weights(self.run_dir / checkpoint.WEIGHTS, weights)
            save_json(self.run_dir / "best.json", self.best)
        self.dist.barrier()


class _LogWindow:
    """Loss parts, tokens and time since the last log line; one host sync per line, not per step."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict = {}
        self.steps, self.tokens, self.start = 0, 0, time.perf_counter()

    def add(self, parts: dict, tokens: int) -> None:
        for name, value in parts.items():
            self.sums[name] = self.sums.get(name, torch.zeros((), device=self.device)) + value
        self.steps += 1
        self.tokens += tokens


def _log_record(trainer: Trainer, window: _LogWindow, lr: float, last_good_step: int | None) -> tuple[dict, dict]:
    """The metrics.jsonl line of a log window and the progress bar's postfix; stops on a non-finite loss."""
    dist, job = trainer.dist, trainer.job
    means = {name: dist.mean(total).item() / window.steps for name, total in window.sums.items()}  # averaged over ranks
    mean_loss = means.pop("loss")
    if not math.isfinite(mean_loss):
        where = f"step {last_good_step}" if last_good_step is not None else "none was written yet"
        raise NanoNLPError(
            f"the training loss became {mean_loss} at step {trainer.step}; stopped without saving "
            f"(the last good checkpoint, {where}, is untouched). Lower train.learning_rate, "
            "raise train.warmup_steps, or set train.grad_clip."
        )
    seconds = time.perf_counter() - window.start
    tokens_per_s = window.tokens / max(seconds, 1e-9)
    record = {"step": trainer.step, "loss": round(mean_loss, 6), **{f"loss_{k}": round(v, 6) for k, v in means.items()},
              "lr": lr, "tokens_per_s": round(tokens_per_s, 1), "ms_per_step": round(1000 * seconds / window.steps, 2),
              "elapsed_s": round(trainer.elapsed(), 3)}
    postfix = dict(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
    if job.flops_per_token:
        achieved = achieved_tflops(job.flops_per_token, tokens_per_s, dist.world_size)
        record["tflops"] = round(achieved, 4)
        if trainer.peak:
            record["mfu"] = round(achieved / trainer.peak, 4)
            postfix["mfu"] = f"{100 * achieved / trainer.peak:.0f}%"
    return record, postfix


def achieved_tflops(flops_per_token: float, tokens_per_s: float, world_size: int = 1) -> float:
    """Model FLOPs per second of one device, in TFLOP/s: tokens/s over all devices x FLOPs per token / devices.
    MFU is this over the device's peak."""
    return flops_per_token * tokens_per_s / 1e12 / world_size


def train(job: TrainingJob, cfg: TrainConfig, run_dir: Path, device: torch.device, resume: bool = False, quiet: bool = False) -> TrainResult:
    from tqdm import tqdm

    trainer = Trainer(job, cfg, Path(run_dir), device, resume, quiet)
    dist = trainer.dist
    bar = tqdm(total=cfg.max_steps, initial=trainer.step, disable=trainer.quiet or not sys.stderr.isatty(), unit="step", dynamic_ncols=True)
    result = TrainResult(step=trainer.step, best=trainer.best)
    window = _LogWindow(device)
    last_good_step = trainer.step if trainer.resumed else None
    trainer.model.train()
    try:
        while trainer.step < cfg.max_steps:
            if dist.agree(out_of_time(cfg, trainer.elapsed()), device):  # rank 0's clock decides
                result.stopped_by = "max_seconds"
                break
            parts, lr, tokens = trainer.train_step()
            window.add(parts, tokens)

            is_eval = trainer.step % cfg.eval_interval == 0 or trainer.step == cfg.max_steps
            if trainer.step % cfg.log_interval == 0 or is_eval:
                record, postfix = _log_record(trainer, window, lr, last_good_step)
                trainer.log(record)
                result.last_metrics = record
                bar.set_postfix(**postfix)
                window.reset()
            bar.update(1)

            if is_eval:
                trainer.evaluate_and_save()
                last_good_step = trainer.step
                if dist.agree(should_stop_early(cfg, trainer.step, trainer.best), device):  # only rank 0 knows the best step
                    result.stopped_by = "early_stopping"
                    break
    finally:
        bar.close()

    if result.stopped_by == "max_seconds" and last_good_step != trainer.step and trainer.step > 0:
        trainer.evaluate_and_save()  # the budget ran out between evaluations: keep what was learned
    result.step, result.best = trainer.step, trainer.best
    return result


# ---------------------------------------------------------------------------------------------------
# a task's run, from its config


def check_resume(task: tasks.Task, cfg: Config, saved: Config) -> None:
    """The one resume rule: every setting that shapes the model or its data (the task's frozen keys)
    must be as the run was prepared; training settings may change (see the README)."""
    out_dir = cfg.train.out_dir
    if type(cfg.model) is not type(saved.model):
        raise ConfigError(f"cannot resume: the run in '{out_dir}' was trained with model.type={task.model_type(saved.model)!r} "
                          f"but the config now says {task.model_type(cfg.model)!r}; restore it or choose a new train.out_dir.")
    # The new config's frozen keys too: a value it gives that the saved run left to a recipe (model.size auto).
    frozen = task.frozen_keys(saved)
    for key in frozen + [k for k in task.frozen_keys(cfg) if k not in frozen]:
        section, name = key.split(".")
        theirs, ours = getattr(getattr(saved, section), name), getattr(getattr(cfg, section), name)
        if ours != theirs:
            raise ConfigError(f"cannot resume: the run in '{out_dir}' was trained with {key}={theirs!r} "
                              f"but the config now says {ours!r}; restore it or choose a new train.out_dir.")


def resumed_config(saved: Config, cfg: Config) -> Config:
    """A resumed run keeps its own data and model sections (with what preparation derived) and takes
    the train section and the task's sections from the new config."""
    return dataclasses.replace(saved, train=cfg.train, sections=dict(cfg.sections), given=cfg.given)


def prepare_run(task: tasks.Task, cfg: Config, run_dir: Path, resume: bool, overwrite: bool, ctx: Context) -> None:
    """Rank 0 only. A fresh run: the task prepares its data, then config.yaml is written, last, which
    marks the run as prepared. A resumed run: its settings and prepared data are checked, then
    config.yaml is updated with the settings that may change."""
    task.check(cfg, run_dir)
    if checkpoint.claim_run_dir(run_dir, resume, overwrite):
        saved = from_dict(read_yaml(run_dir / checkpoint.CONFIG), allow_derived=True)
        check_resume(task, cfg, saved)
        merged = resumed_config(saved, cfg)
        task.check_prepared(merged, ctx)
        atomic_write_text(run_dir / checkpoint.CONFIG, dump_yaml(merged))
        return
    shutil.rmtree(run_dir / checkpoint.DATA_DIR, ignore_errors=True)  # left by a preparation that stopped
    task.prepare(cfg, ctx)
    atomic_write_text(run_dir / checkpoint.CONFIG, dump_yaml(cfg))


def fit(cfg: Config, resume: bool = False, quiet: bool = False, overwrite: bool = False) -> TrainResult:
    """Train the task of `cfg` in cfg.train.out_dir: prepare (or resume) the run, train, and finish."""
    task = tasks.get(cfg.task)
    run_dir = Path(cfg.train.out_dir)
    dist = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device)
    quiet = quiet or not dist.is_main
    ctx = Context(run_dir, device, quiet, dist.rank, dist.world_size)
    dist.main_first(lambda: prepare_run(task, cfg, run_dir, resume, overwrite, ctx), device)

    # Every rank reads what rank 0 prepared; the same seed gives the same initial weights.
    cfg = resumed_config(from_dict(read_yaml(run_dir / checkpoint.CONFIG), allow_derived=True), cfg)
    ctx.fresh = checkpoint.latest_checkpoint(run_dir) is None
    torch.manual_seed(cfg.train.seed)
    job = task.job(cfg, ctx)
    if dist.rank > 0:
        torch.manual_seed(cfg.train.seed + 1000 * dist.rank)  # different dropout masks on each rank
    if not quiet:
        if dist.enabled:
            print(f"distributed: {dist.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'})", file=sys.stderr)
        print(model_summary(job.model, device, cfg.train.dtype), file=sys.stderr)
    result = train(job, cfg.train, run_dir, device, resume=resume, quiet=quiet)
    if dist.is_main:
        task.finish(cfg, ctx)
        from nanonlp.plots import loss_curve

        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return result


def end_distributed(ok: bool = True) -> None:
    """After a run that ended well, ranks leave together, then the process group goes: a rank tearing
    down gloo while rank 0 still writes its last files can abort the process ("terminate called
    without an active exception"). After a failure there is no barrier: the other ranks may be inside
    another collective, and torchrun ends them when this one exits."""
    if _DIST.enabled:
        if ok:
            _DIST.barrier()
        torch.distributed.destroy_process_group()

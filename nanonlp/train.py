"""The training loop, one for every task.

A task hands the loop its model and four callables (a training batch, a loss, an evaluation, the
number of tokens in a batch); the loop owns everything else: device, precision, optimizer, learning
rate schedule, clipping, accumulation, evaluation, checkpoints, resume and logging. It knows nothing
of any particular task.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from nanonlp import checkpoint
from nanonlp.config import TrainConfig
from nanonlp.errors import ConfigError, NanoNLPError


# ---------------------------------------------------------------------------------------------------
# device and precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and _DIST.enabled:
        name = f"cuda:{_DIST.local_rank}"  # one GPU per process
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but PyTorch sees no CUDA GPU; use auto or cpu.")
    return device


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix units (AVX-512 BF16 or AMX), so autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
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
    scales: dict[float, list] = {}
    for p in params:
        if id(p) in head_ids:
            scale = cfg.head_learning_rate / cfg.learning_rate
        else:
            scale = cfg.layer_decay ** (top - depths[id(p)]) if id(p) in depths else 1.0
        scales.setdefault(scale, []).append(p)
    groups = []
    for scale, part in scales.items():
        groups += [{"params": [p for p in part if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in part if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    # The fused kernel updates all parameters in one pass; CUDA and recent CPU builds have it.
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr over lr_decay_steps (default max_steps)."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def model_summary(model: torch.nn.Module, device: torch.device, dtype_name: str) -> str:
    """The line a task prints before training: model family, size, device and precision."""
    n_params = sum(p.numel() for p in model.parameters())
    dtype = str(resolve_dtype(dtype_name, device)).replace("torch.", "")
    return f"model: {type(model).__name__}, {n_params / 1e6:.2f}M parameters; device {device}, {dtype}"


# ---------------------------------------------------------------------------------------------------
# what a task gives the loop


@dataclass
class TrainingJob:
    model: torch.nn.Module
    train_batch: Callable[[], Any]  # the next training batch, already on the device
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]  # mean loss of a batch
    evaluate: Callable[[torch.nn.Module], dict]  # validation metrics; must hold `monitor`
    batch_tokens: Callable[[Any], int]  # tokens in a batch, for throughput
    data_state: Callable[[], dict]  # RNG state of the batch sampler, saved for resume
    load_data_state: Callable[[dict], None]
    monitor: str = "val_loss"  # the metric that picks the best checkpoint
    monitor_mode: str = "min"  # "min" or "max"
    flops_per_token: float = 0.0


@dataclass
class TrainResult:
    step: int
    best: dict = field(default_factory=dict)
    last_metrics: dict = field(default_factory=dict)
    stopped_by: str = "max_steps"


def forward_backward(job: TrainingJob, model, batches: list, device, dtype, scaler=None) -> torch.Tensor:
    """Accumulate gradients of the mean loss over equal-sized micro-batches; return that loss (detached).

    Under DDP the gradient all-reduce runs once, on the last micro-batch, not on every one.
    """
    total = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, dtype):
                loss = job.loss(model, batch) / len(batches)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    return total


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
    checkpoint.atomic_write_text(path, "".join(line + "\n" for line in kept))


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
            checkpoint.save_json(path, known)
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


def train(job: TrainingJob, cfg: TrainConfig, run_dir: Path, device: torch.device, resume: bool = False, quiet: bool = False) -> TrainResult:
    from tqdm import tqdm

    dist = distributed()
    quiet = quiet or not dist.is_main  # only rank 0 talks, logs and writes
    model = job.model
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cuda":
        # TF32 tensor cores for whatever runs in fp32 (Ampere and newer): ~10 bits of mantissa, ample for training.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    metrics_path = run_dir / "metrics.jsonl"
    peak = peak_tflops(cfg, device, dtype) if dist.is_main and job.flops_per_token else 0.0

    step, elapsed_before, best, state = 0, 0.0, {}, None
    latest = checkpoint.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        state = checkpoint.load_train_state(latest)
        if state.get("fsdp", False) != (cfg.fsdp and dist.enabled):
            raise NanoNLPError(f"checkpoint {latest} was written with train.fsdp={state.get('fsdp', False)}; resume with the same setting.")
        checkpoint.load_weights(model, latest / "model.safetensors")  # before sharding: every rank reads the full weights
        step, elapsed_before, best = state["step"], state["elapsed_s"], state["best"]
        rng = state["rng"]
        _set_rng_state(rng[dist.rank] if len(rng) == dist.world_size else rng[0])
        data = state["data"]
        if isinstance(data, list):  # one sampler state per rank
            data = data[dist.rank] if len(data) == dist.world_size else data[0]
        job.load_data_state(data)
        if dist.is_main:
            _trim_metrics(metrics_path, step)
        if not quiet:
            print(f"resuming from {latest} (step {step})", file=sys.stderr)
    elif resume:
        if dist.is_main:
            _trim_metrics(metrics_path, 0)  # lines of a run killed before its first checkpoint
        if not quiet:
            print(f"no checkpoint in {run_dir} yet; starting from step 0", file=sys.stderr)

    sharded = False
    if cfg.fsdp and not dist.enabled and not quiet:
        print("train.fsdp needs several processes (torchrun); training unsharded", file=sys.stderr)
    if cfg.fsdp and dist.enabled:
        if dtype == torch.float16:
            raise ConfigError("train.fsdp with train.dtype float16 is not supported (the gradient scaler would see one shard); use bfloat16.")
        shard_model(model)
        sharded = True
    compiled = model
    if cfg.compile:
        ok, why = compiler_available(device)
        if ok:
            compiled = torch.compile(model)
        elif not quiet:
            print(f"train.compile is on but {why}; training without torch.compile", file=sys.stderr)
    wrapped = compiled
    if dist.enabled and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(compiled, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = make_optimizer(model, cfg, device)  # after sharding: FSDP replaces the parameters
    if state is not None:
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])

    def full_state() -> tuple[dict | None, dict | None]:
        """Unsharded model and optimizer state on rank 0 (a collective under FSDP)."""
        if not sharded:
            return None, optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)

    def save_weights(path: Path, weights: dict | None) -> None:
        if weights is None:
            checkpoint.save_weights(model, path)
        else:
            checkpoint.save_state_dict(weights, path, model)

    def save(step: int, weights: dict | None, optimizer_state: dict) -> None:
        # Every rank's RNG and sampler state, so a resumed run draws the same dropout masks and
        # batches on each.
        rng, data = [_rng_state()], [job.data_state()]
        if dist.enabled:
            rng, data = [None] * dist.world_size, [None] * dist.world_size
            torch.distributed.all_gather_object(rng, _rng_state())
            torch.distributed.all_gather_object(data, job.data_state())
        if not dist.is_main:
            return
        state = {
            "step": step,
            "elapsed_s": elapsed_before + (time.perf_counter() - start_time),
            "optimizer": optimizer_state,
            "rng": rng,
            "data": data,
            "best": best,
            "fsdp": sharded,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        checkpoint.write_step_checkpoint(run_dir, step, lambda path: save_weights(path, weights), state, cfg.keep_checkpoints)

    def log(record: dict) -> None:
        if dist.is_main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate_and_save(step: int) -> None:
        """Validate, keep the best weights, write the step checkpoint. Rank 0 does it alone, except
        under FSDP, where every rank holds a shard and must take part in the forward passes."""
        nonlocal best
        if dist.is_main or sharded:
            model.eval()
            with torch.no_grad(), autocast(device, dtype):
                metrics = {k: float(v) for k, v in job.evaluate(compiled).items()}
            model.train()
        weights, optimizer_state = full_state()
        improved = False
        if dist.is_main:
            log({"step": step, **metrics, "elapsed_s": round(elapsed_before + time.perf_counter() - start_time, 3)})
            improved = _better(metrics[job.monitor], best.get(job.monitor), job.monitor_mode)
            if improved:
                best = {"step": step, **metrics}
            if not quiet:
                tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr)
        # The step checkpoint (which records `best`) first, then the best weights: a kill between
        # the two leaves a resumable state whose best.json is at worst one evaluation old.
        save(step, weights, optimizer_state)
        if improved:
            save_weights(run_dir / "model.safetensors", weights)
            checkpoint.save_json(run_dir / "best.json", best)
        dist.barrier()

    bar = tqdm(total=cfg.max_steps, initial=step, disable=quiet or not sys.stderr.isatty(), unit="step", dynamic_ncols=True)
    result = TrainResult(step=step, best=best)
    start_time = time.perf_counter()
    window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
    running_loss = torch.zeros((), device=device)
    last_good_step = step if latest is not None else None
    model.train()
    try:
        while step < cfg.max_steps:
            out_of_time = bool(cfg.max_seconds) and elapsed_before + time.perf_counter() - start_time >= cfg.max_seconds
            if dist.agree(out_of_time, device):  # rank 0's clock decides
                result.stopped_by = "max_seconds"
                break
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batches = [job.train_batch() for _ in range(cfg.grad_accum_steps)]
            loss = forward_backward(job, wrapped, batches, device, dtype, scaler)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running_loss += loss
            window_steps += 1
            window_tokens += sum(job.batch_tokens(b) for b in batches) * dist.world_size

            is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
            if step % cfg.log_interval == 0 or is_eval:
                # One host sync per log line, not per step; the loss is averaged over ranks.
                mean_loss = dist.mean(running_loss).item() / window_steps
                if not math.isfinite(mean_loss):
                    where = f"step {last_good_step}" if last_good_step is not None else "none was written yet"
                    raise NanoNLPError(
                        f"the training loss became {mean_loss} at step {step}; stopped without saving "
                        f"(the last good checkpoint, {where}, is untouched). Lower train.learning_rate, "
                        "raise train.warmup_steps, or set train.grad_clip."
                    )
                seconds = time.perf_counter() - window_start
                tokens_per_s = window_tokens / max(seconds, 1e-9)
                record = {"step": step, "loss": round(mean_loss, 6), "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                          "ms_per_step": round(1000 * seconds / window_steps, 2),
                          "elapsed_s": round(elapsed_before + time.perf_counter() - start_time, 3)}
                postfix = dict(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                if job.flops_per_token:
                    achieved = job.flops_per_token * tokens_per_s / 1e12 / dist.world_size  # per device
                    record["tflops"] = round(achieved, 4)
                    if peak:
                        record["mfu"] = round(achieved / peak, 4)
                        postfix["mfu"] = f"{100 * achieved / peak:.0f}%"
                log(record)
                result.last_metrics = record
                bar.set_postfix(**postfix)
                running_loss.zero_()
                window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
            bar.update(1)

            if is_eval:
                evaluate_and_save(step)
                last_good_step = step
                stale = bool(cfg.early_stopping) and step - best.get("step", step) >= cfg.early_stopping * cfg.eval_interval
                if dist.agree(stale, device):  # only rank 0 knows the best step
                    result.stopped_by = "early_stopping"
                    break
    finally:
        bar.close()

    if result.stopped_by == "max_seconds" and last_good_step != step and step > 0:
        evaluate_and_save(step)  # the budget ran out between evaluations: keep what was learned
    result.step, result.best = step, best
    return result

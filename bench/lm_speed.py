"""Training throughput of one GPT shape in one precision on this machine, beside nanoGPT's on the same shape.

    python bench/lm_speed.py                           # nanoGPT's Shakespeare shape (6x384, 6 heads, context 256,
                                                       # batch 64, dropout 0.2) in bf16 where the CPU has bf16 units
    python bench/lm_speed.py --dtype fp32 --nanogpt /tmp/nanoGPT
    python bench/lm_speed.py --profile                 # plus the step's time by operator (markdown table)
    python bench/lm_speed.py --set train.compile=true --set train.bf16_weights=true --set model.loss_chunk=4096
    python bench/lm_speed.py --variant train.bf16_weights=true --variant train.bf16_weights=true,train.compile=true
                                                       # variants against the plain step, their steps interleaved
    python bench/lm_speed.py --speedrun --n-layer 4 --n-embd 256 --n-head 4 --block-size 128 --batch-size 32 --dropout 0
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/lm_speed.py --dtype fp32
                                                       # as on an AVX2-only CPU (the capability used is printed)

Printed: tokens/s, ms a step, achieved TFLOP/s (the model's FLOPs: 6 per parameter per token plus
attention), and MFU against the matmul peak measured here for the dtype in use (the bf16 peak for a
bf16 run). The steps are nanonlp's: its loop's forward_backward, clipping and optimizer step (with
the train.* and model.* switches given by --set), on batches from the memory-mapped corpus; the
first --warmup steps (and any compilation, timed separately) are not counted.

--variant: each a comma-separated list of settings on top of --set, timed against the plain step
with the steps of all of them interleaved (one step of each in turn), so a machine shared with other
work slows them alike; the median step of each is printed.

--nanogpt DIR: a local checkout of karpathy/nanoGPT. Its model.py is imported from there (nothing is
copied into this repository) and trained with its train.py's step on the same shape and batches:
configure_optimizers' fused AdamW, clipping at 1.0, and in bf16 the one-line CPU autocast
(torch.autocast("cpu", torch.bfloat16)) that its train.py applies on CUDA only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nanonlp.config import TrainConfig, build  # noqa: E402
from nanonlp.data.tokenizers import CharTokenizer  # noqa: E402
from nanonlp.models import GPT, GPTConfig  # noqa: E402
from nanonlp.tasks.lm import WindowSampler, lm_loss  # noqa: E402
from nanonlp.train import Trainer, TrainingJob, matmul_peak_tflops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def processor() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown processor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("NANONLP_DATA", str(ROOT.parent / "shared/data")) + "/tiny_shakespeare/input.txt")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 where the CPU has bf16 units, else fp32")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a nanonlp train.* or model.* setting (may be repeated), e.g. train.compile=true")
    parser.add_argument("--speedrun", action="store_true", help="the speedrun's GPT (rotary, QK-norm, ReLU², zero-init, "
                        "untied head, soft-cap 30) trained with Muon, as configs/budget_char_gpt.yaml")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    parser.add_argument("--profile", action="store_true", help="profile one more step: its time by operator")
    parser.add_argument("--nanogpt", help="a local checkout of karpathy/nanoGPT: its figure on the same shape")
    parser.add_argument("--skip-nanonlp", action="store_true", help="measure nanoGPT only")
    parser.add_argument("--variant", action="append", default=[], metavar="K=V,K=V",
                        help="settings to time against the plain step, steps interleaved (may be repeated)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from nanonlp.device import cpu_supports_bf16

    precision = args.dtype or ("bf16" if device.type == "cuda" or cpu_supports_bf16() else "fp32")
    dtype = DTYPES[precision]
    text = Path(args.data).read_text(encoding="utf-8")
    tokenizer = CharTokenizer.train(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.uint16)
    model_raw = dict(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout,
                     bias=False, vocab_size=tokenizer.vocab_size)
    train_raw = {"optimizer": "adamw", "dtype": {"fp32": "float32", "bf16": "bfloat16"}[precision], "grad_clip": 1.0}
    if args.speedrun:
        model_raw.update(position="rotary", qk_norm=True, activation="relu2", zero_init=True, tie_embeddings=False, logit_softcap=30.0)
        train_raw["optimizer"] = "muon"
    config, train_config = configs(model_raw, train_raw, args.set)
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name()
    peak = matmul_peak_tflops(device, dtype)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"processor: {processor()} ({capability}), {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"load average at start {load:.2f}")
    print(f"shape: GPT {args.n_layer}x{args.n_embd}, {args.n_head} heads, context {args.block_size}, batch {args.batch_size}, "
          f"dropout {args.dropout}{', speedrun methods, Muon' if args.speedrun else ''}; {precision}; "
          f"settings: {' '.join(args.set) or 'defaults'}")
    print(f"measured {precision} matmul peak: {peak:.3f} TFLOP/s")
    print(f"{'who':>8} {'tokens/s':>9} {'ms/step':>8} {'TFLOP/s':>8} {'MFU':>6}  notes")
    flops_per_token = GPT(config).flops_per_token()
    if args.variant:
        compare(args, device, dtype, ids, model_raw, train_raw, flops_per_token, peak)
        return
    ours = None
    if not args.skip_nanonlp:
        ours = measure_nanonlp(args, device, dtype, ids, config, train_config)
        report("nanonlp", ours, flops_per_token, peak, args)
    if args.nanogpt:
        theirs = measure_nanogpt(args, device, dtype, ids, tokenizer.vocab_size)
        report("nanoGPT", theirs, flops_per_token, peak, args)
        if ours is not None:
            print(f"nanonlp / nanoGPT: {theirs['seconds'] / ours['seconds']:.2f}x")
    else:
        print("nanoGPT: not measured (give --nanogpt DIR, a local checkout of karpathy/nanoGPT)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def configs(model_raw: dict, train_raw: dict, settings: list[str]):
    """The model and train configs with `settings` (section.key=value) applied."""
    from nanonlp.config import CommandLineValue

    model_raw, train_raw = dict(model_raw), dict(train_raw)
    for item in settings:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        {"model": model_raw, "train": train_raw}[section][name] = value
    typed = lambda raw: {k: CommandLineValue(v) if isinstance(v, str) else v for k, v in raw.items()}  # noqa: E731
    return build(GPTConfig, typed(model_raw), "model", allow_derived=True), build(TrainConfig, typed(train_raw), "train")


def compare(args, device, dtype, ids, model_raw, train_raw, flops_per_token, peak) -> None:
    import statistics
    import tempfile

    variants = [("plain", args.set)] + [(v, args.set + v.split(",")) for v in args.variant]
    trainers, warmups = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        for i, (name, settings) in enumerate(variants):
            config, train_config = configs(model_raw, train_raw, settings)
            torch.manual_seed(0)
            model = GPT(config).to(device).train()
            sampler = WindowSampler(ids, args.block_size, args.batch_size, device, 0, "training")
            job = TrainingJob(model=model, train_batch=sampler, loss=lm_loss, evaluate=lambda m: {},
                              batch_tokens=lambda b: b[0].numel(), data_state=lambda: {}, load_data_state=lambda s: None)
            trainer = Trainer(job, train_config, Path(run_dir) / str(i), device, resume=False, quiet=True)
            start = time.perf_counter()
            for _ in range(args.warmup):
                trainer.train_step()
            warmups.append(time.perf_counter() - start)
            trainers.append(trainer)
        times = [[] for _ in variants]
        for _ in range(args.steps):
            for i, trainer in enumerate(trainers):
                start = time.perf_counter()
                trainer.train_step()
                times[i].append(time.perf_counter() - start)
    base = statistics.median(times[0])
    for (name, _), spent, warm in zip(variants, times, warmups):
        seconds = statistics.median(spent)
        tokens_per_s = args.batch_size * args.block_size / seconds
        tflops = flops_per_token * tokens_per_s / 1e12
        print(f"{'':>8} {tokens_per_s:9,.0f} {1000 * seconds:8.0f} {tflops:8.3f} {100 * tflops / peak:5.1f}%  {name}: "
              f"{base / seconds:.2f}x the plain step; warm-up {warm:.1f} s", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def report(who: str, result: dict, flops_per_token: float, peak: float, args) -> None:
    tokens_per_s = args.batch_size * args.block_size / result["seconds"]
    tflops = flops_per_token * tokens_per_s / 1e12
    print(f"{who:>8} {tokens_per_s:9,.0f} {1000 * result['seconds']:8.0f} {tflops:8.3f} {100 * tflops / peak:5.1f}%  {result['notes']}",
          flush=True)
    if result.get("profile") is not None:
        print(profile_table(result["profile"], result["profiled_seconds"]))


def timed(step, args, device) -> dict:
    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = {"seconds": (time.perf_counter() - start) / args.steps, "warmup_seconds": warmup, "profile": None}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            step()
            result["profiled_seconds"] = time.perf_counter() - start
        result["profile"] = prof
    return result


def measure_nanonlp(args, device, dtype, ids, config, train_config) -> dict:
    import tempfile

    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    sampler = WindowSampler(ids, args.block_size, args.batch_size, device, 0, "training")
    job = TrainingJob(model=model, train_batch=sampler, loss=lm_loss, evaluate=lambda m: {}, batch_tokens=lambda b: b[0].numel(),
                      data_state=lambda: {}, load_data_state=lambda s: None)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(job, train_config, Path(run_dir), device, resume=False, quiet=True)
        result = timed(lambda: trainer.train_step(), args, device)
    result["notes"] = f"warm-up {args.warmup} steps {result['warmup_seconds']:.1f} s (compilation included)"
    return result


def measure_nanogpt(args, device, dtype, ids, vocab_size) -> dict:
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(args.nanogpt).expanduser() / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(block_size=args.block_size, vocab_size=vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                                        n_embd=args.n_embd, dropout=args.dropout, bias=False)).to(device).train()
    with contextlib.redirect_stdout(sys.stderr):  # its parameter counts
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)
    ctx = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device.type, dtype=dtype)
    sampler = WindowSampler(ids, args.block_size, args.batch_size, device, 0, "training")

    def step() -> None:
        x, y = (t.contiguous() for t in sampler())  # its loss views the targets
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = timed(step, args, device)
    result["notes"] = "its model.py and train.py step" + (", bf16 autocast" if dtype != torch.float32 else ", fp32")
    return result


def profile_table(prof, step_seconds: float, rows: int = 14) -> str:
    """The step's time by operator (self time, so nothing is counted twice), as a markdown table."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    lines = [f"profiled step: {step_seconds * 1000:.0f} ms wall, {total * 1000:.0f} ms of operator self time",
             "", "| operator | calls | self ms | share of the step |", "|---|---|---|---|"]
    for e in events[:rows]:
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1000:.0f} | {100 * e.self_cpu_time_total / 1e6 / total:.1f}% |")
    rest = sum(e.self_cpu_time_total for e in events[rows:]) / 1e6
    lines.append(f"| everything else ({len(events) - rows} operators) | | {rest * 1000:.0f} | {100 * rest / total:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

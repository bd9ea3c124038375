"""Training throughput of nanoGPT's character-level Shakespeare GPT on this machine.

    python bench/lm_speed.py                      # 6 layers, 384 wide, 6 heads, context 256, batch 64
    python bench/lm_speed.py --steps 5 --modes bf16-eager fp32-eager --profile
    python bench/lm_speed.py --speedrun --n-layer 4 --n-embd 256 --n-head 4 --block-size 128 --batch-size 32 \
        --dropout 0 --threads 1 2 --modes fp32-eager fp32-compiled     # the speedrun GPT with Muon

On a machine with AVX-512, an AVX2-only machine's fp32 path can be imitated by limiting every kernel
library to AVX2: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
(the script prints the capability PyTorch dispatches to).

For each precision and eager/compiled mode: tokens/s, ms/step and model FLOPs utilisation (MFU)
against the matmul peak measured here for that precision. Steps are the real ones of nanonlp's
loop: a batch from the memory-mapped corpus, forward and backward under autocast, clipping, fused
AdamW. The first steps (and compilation) are excluded from the timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nanonlp.config import TrainConfig  # noqa: E402
from nanonlp.data.tokenizers import CharTokenizer  # noqa: E402
from nanonlp.models import GPT, GPTConfig  # noqa: E402
from nanonlp.tasks.lm import WindowSampler, lm_loss  # noqa: E402
from nanonlp.train import TrainingJob, compiler_available, forward_backward, make_optimizer, matmul_peak_tflops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("NANONLP_DATA", str(ROOT.parent / "shared/data")) + "/tiny_shakespeare/input.txt")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--modes", nargs="+", default=["fp32-eager", "bf16-eager", "fp32-compiled", "bf16-compiled"])
    parser.add_argument("--profile", action="store_true", help="print the top operators of the first mode")
    parser.add_argument("--speedrun", action="store_true", help="the speedrun's GPT (rotary, QK-norm, ReLU², zero-init, "
                        "untied head, soft-cap 30) trained with Muon, as configs/budget_char_gpt.yaml (--dropout stays as given)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="torch threads to measure with (0: the default)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = Path(args.data).read_text(encoding="utf-8")
    tokenizer = CharTokenizer.train(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.uint16)
    speedrun = dict(position="rotary", qk_norm=True, activation="relu2", zero_init=True, tie_embeddings=False,
                    logit_softcap=30.0) if args.speedrun else {}
    config = GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       dropout=args.dropout, bias=False, vocab_size=tokenizer.vocab_size, **speedrun)
    train_config = TrainConfig(optimizer="muon" if args.speedrun else "adamw")
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"model: GPT {args.n_layer}x{args.n_embd}, {args.n_head} heads, context {args.block_size}, batch {args.batch_size}, "
          f"dropout {args.dropout}{', speedrun methods, Muon' if args.speedrun else ''}; device {device} ({capability}), "
          f"torch {torch.__version__}")
    default_threads = torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        measure(args, device, ids, config, train_config)


def measure(args, device, ids, config, train_config) -> None:
    peaks = {name: matmul_peak_tflops(device, dtype) for name, dtype in DTYPES.items()}
    print(f"{torch.get_num_threads()} threads; matmul peak: " + ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in peaks.items()))
    print(f"{'mode':>14} {'tokens/s':>9} {'ms/step':>8} {'TFLOP/s':>8} {'MFU':>6}")
    for mode in args.modes:
        precision, how = mode.split("-")
        if how == "compiled" and not compiler_available(device)[0]:
            print(f"{mode:>14} skipped: {compiler_available(device)[1]}")
            continue
        torch.manual_seed(0)
        model = GPT(config).to(device).train()
        optimizer = make_optimizer(model, train_config, device)
        runner = torch.compile(model) if how == "compiled" else model
        sampler = WindowSampler(ids, args.block_size, args.batch_size, device, 0, "training")
        job = TrainingJob(model=model, train_batch=sampler, loss=lm_loss, evaluate=None, batch_tokens=None,
                          data_state=None, load_data_state=None)

        def step() -> None:
            forward_backward(job, runner, [sampler()], device, DTYPES[precision])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        tokens_per_s = args.batch_size * args.block_size / seconds
        tflops = model.flops_per_token() * tokens_per_s / 1e12
        print(f"{mode:>14} {tokens_per_s:9,.0f} {1000 * seconds:8.0f} {tflops:8.3f} {100 * tflops / peaks[precision]:5.1f}%", flush=True)
        if args.profile and mode == args.modes[0]:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()

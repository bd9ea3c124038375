"""Validation loss against wall time for a character-level GPT on Tiny Shakespeare, on this machine.

    python bench/lm_shakespeare.py                       # the recommended CPU config, 15 minutes
    python bench/lm_shakespeare.py --minutes 5 --config configs/shakespeare_char_gpt.yaml --set model.n_layer=6

Prints every validation loss with the elapsed training seconds, then tokens/s and model FLOPs
utilisation (MFU) against a bf16/fp32 matmul peak measured on this machine just before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nanonlp.config import load_config  # noqa: E402
from nanonlp.train import fit  # noqa: E402
from nanonlp.device import resolve_device, resolve_dtype  # noqa: E402
from nanonlp.train import matmul_peak_tflops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/shakespeare_char_gpt_cpu.yaml"))
    parser.add_argument("--data", default=os.environ.get("NANONLP_DATA", str(ROOT.parent / "shared/data")) + "/tiny_shakespeare/input.txt")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget (train.max_seconds)")
    parser.add_argument("--set", action="append", default=[], help="extra override, e.g. --set model.n_layer=6")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    args = parser.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="nanonlp-bench-")
    overrides = [f"--data.path={args.data}", f"--train.out_dir={out}", f"--train.max_seconds={args.minutes * 60}"]
    overrides += ["--" + s for s in args.set]
    cfg = load_config(args.config, overrides)
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    peak = matmul_peak_tflops(device, dtype)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; device {device}, {str(dtype).replace('torch.', '')}; "
          f"matmul peak {peak:.3f} TFLOP/s", flush=True)
    print(f"config: {args.config} {' '.join(overrides[3:])}", flush=True)
    result = fit(cfg, quiet=True, overwrite=True)

    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    print(f"{'elapsed_s':>10} {'step':>6} {'val_loss':>9}")
    for r in records:
        if "val_loss" in r:
            print(f"{r['elapsed_s']:10.1f} {r['step']:6d} {r['val_loss']:9.4f}")
    tokens_per_s = sum(r["tokens_per_s"] for r in train_records) / len(train_records)
    tflops = sum(r.get("tflops", 0.0) for r in train_records) / len(train_records)
    print(f"tokens/s {tokens_per_s:,.0f}; model {tflops:.3f} TFLOP/s; MFU {100 * tflops / peak:.1f}% of the measured peak")
    for minutes in (5, 15, 30):
        evals = [r["val_loss"] for r in records if "val_loss" in r and r["elapsed_s"] <= minutes * 60 + 1]
        if evals and minutes <= args.minutes:
            print(f"best validation loss within {minutes} minutes: {min(evals):.4f}")
    print(f"stopped at step {result.step} ({result.stopped_by}); run directory {out}")


if __name__ == "__main__":
    main()

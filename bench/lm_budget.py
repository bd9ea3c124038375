"""nanonlp's budget-aware GPT recipe against nanoGPT's README CPU recipe, side by side on one corpus,
at the same wall-clock budgets; and each speedrun method's gain or loss measured alone.

    python bench/lm_budget.py --nanogpt ~/src/nanoGPT                    # budgets 60 s, 120 s, 5 min, 15 min
    python bench/lm_budget.py --nanogpt ~/src/nanoGPT --budgets 60,120
    python bench/lm_budget.py --ablation 120                             # the methods table only (no nanoGPT needed)
    python bench/lm_budget.py --ablation 120 --methods qk,relu,zero      # some methods and the baseline
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python bench/lm_budget.py --nanogpt DIR --budgets 60,120 --set train.dtype=float32   # as on an AVX2-only CPU

(nanoGPT trains in float32 on any CPU: its autocast is for CUDA only.)

--nanogpt is a local checkout of karpathy/nanoGPT; it is run from a scratch copy under --out (never
copied into this repository) with its README's CPU recipe (4 layers, 4 heads, 128 wide, context 64,
batch 12, dropout 0, no compile) and `max_iters` fitted to each budget from its own step time, measured
first over 30 iterations. Its data is prepared as its shakespeare_char/prepare.py does (characters,
first 90% train, last 10% validation), which is nanonlp's split of the same text (data.val_fraction 0.1).

Printed for each budget: each side's final validation loss (nats per character), and the seconds
nanonlp needed to reach nanoGPT's final loss (from its evaluations, so an upper bound), also as a
share of the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NANOGPT_RECIPE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--block_size=64", "--batch_size=12", "--n_layer=4",
                  "--n_head=4", "--n_embd=128", "--dropout=0.0"]
# Each method alone, on top of the GPT-2 layout trained with AdamW, at the budget-aware shape.
METHODS = {
    "baseline (GPT-2 layout, AdamW)": [],
    "Muon": ["--train.optimizer=muon"],
    "rotary": ["--model.position=rotary"],
    "QK-norm": ["--model.qk_norm=true"],
    "ReLU²": ["--model.activation=relu2"],
    "zero-init projections": ["--model.zero_init=true"],
    "untied head": ["--model.tie_embeddings=false"],
    "logit soft-cap 30": ["--model.logit_softcap=30"],
    "all of them": ["--train.optimizer=muon", "--model.position=rotary", "--model.qk_norm=true", "--model.activation=relu2",
                    "--model.zero_init=true", "--model.tie_embeddings=false", "--model.logit_softcap=30"],
}


def processor() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def corpus_text(name: str) -> str:
    from nanonlp.data import catalog
    from nanonlp.data.readers import read_text

    return read_text(catalog.resolve(name))


# ---------------------------------------------------------------------------------------------------
# nanoGPT


def nanogpt_copy(checkout: Path, out: Path, text: str) -> Path:
    """A scratch copy of the checkout's training code with the corpus prepared as its char datasets are."""
    src = out / "nanogpt_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py"):
        if not (checkout / name).is_file():
            raise SystemExit(f"{checkout} is not a nanoGPT checkout: it has no {name}.")
        shutil.copy(checkout / name, src / name)
    shutil.copytree(checkout / "config", src / "config")
    data = src / "data" / "bench"
    data.mkdir(parents=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16).tofile(data / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return src


def run_nanogpt(src: Path, out_dir: Path, iters: int, log_interval: int) -> tuple[str, float]:
    args = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--dataset=bench", f"--out_dir={out_dir}",
            *NANOGPT_RECIPE, f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={iters}",
            f"--log_interval={log_interval}", "--always_save_checkpoint=False"]
    started = time.time()
    result = subprocess.run(args, cwd=src, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{result.stderr[-3000:]}")
    return result.stdout, time.time() - started


def nanogpt_step_seconds(src: Path, out: Path) -> tuple[float, float]:
    """Its seconds per iteration and its fixed cost (start-up, the two evaluations), from the wall
    times of a 20- and a 220-iteration run: the difference cancels everything but the iterations."""
    _, short = run_nanogpt(src, out / "nanogpt_probe", 20, 10)
    _, long = run_nanogpt(src, out / "nanogpt_probe", 220, 10)
    step = (long - short) / 200
    return step, max(0.0, short - 20 * step)


def nanogpt_val_loss(stdout: str) -> float:
    losses = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", stdout)
    return float(losses[-1])


# ---------------------------------------------------------------------------------------------------
# nanonlp


def run_nanonlp(config: str, out_dir: Path, seconds: float, data: str, *overrides: str) -> list[dict]:
    args = [sys.executable, "-m", "nanonlp", "train", config, "--overwrite", "--quiet", f"--train.out_dir={out_dir}",
            f"--train.max_seconds={seconds}", f"--data.path={data}", *overrides]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"nanonlp failed:\n{result.stderr[-3000:]}")
    metrics = out_dir / "metrics.jsonl"
    evals = [json.loads(line) for line in metrics.read_text().splitlines() if '"val_loss"' in line] if metrics.is_file() else []
    if not evals:
        raise SystemExit(f"nanonlp ran no evaluation in {seconds:g} s (see {out_dir}): give it a longer budget.")
    return evals


def first_time_at_or_below(evals: list[dict], target: float) -> float | None:
    hit = next((e for e in evals if e["val_loss"] <= target), None)
    return hit["elapsed_s"] if hit else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="a local checkout of karpathy/nanoGPT")
    parser.add_argument("--data", default="tatoeba_en_sentences", help="the corpus (a file or catalog name)")
    parser.add_argument("--budgets", default="60,120,300,900", help="seconds, comma-separated")
    parser.add_argument("--config", default=str(ROOT / "nanonlp/configs/budget_char_gpt.yaml"), help="nanonlp's budget-aware config")
    parser.add_argument("--ablation", type=float, default=0, help="seconds: also measure each method alone at this budget")
    parser.add_argument("--methods", default="", help="with --ablation: only the methods whose names contain one of these "
                        "comma-separated words (the baseline always runs)")
    parser.add_argument("--set", action="append", default=[], help="an override for every nanonlp run, e.g. --set train.dtype=float32")
    parser.add_argument("--out", default="runs/bench_lm_budget")
    args = parser.parse_args()
    if args.methods and not args.ablation:
        parser.error("--methods chooses among the ablation's methods: give --ablation SECONDS too.")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"processor: {processor()}; {os.cpu_count()} cores; corpus {args.data}", file=sys.stderr)
    results = {"processor": processor(), "data": args.data, "overrides": args.set}
    extra = [f"--{item}" for item in args.set]

    if args.nanogpt:
        text = corpus_text(args.data)
        src = nanogpt_copy(Path(args.nanogpt).expanduser(), out, text)
        step, fixed = nanogpt_step_seconds(src, out)
        print(f"nanoGPT CPU recipe: {1000 * step:.1f} ms a step here, {fixed:.1f} s of start-up and evaluation", file=sys.stderr)
        rows = []
        for budget in [float(b) for b in args.budgets.split(",")]:
            iters = max(1, int(budget / step))  # its iterations fill the budget; start-up and evaluation come on top, as nanonlp's data preparation does
            stdout, wall = run_nanogpt(src, out / f"nanogpt_{budget:g}", iters, 50)
            theirs = nanogpt_val_loss(stdout)
            evals = run_nanonlp(args.config, out / f"nanonlp_{budget:g}", budget, args.data, *extra)
            ours = evals[-1]["val_loss"]
            reach = first_time_at_or_below(evals, theirs)
            rows.append({"budget_s": budget, "nanogpt_iters": iters, "nanogpt_wall_s": wall, "nanogpt_val_loss": theirs,
                         "nanonlp_val_loss": ours, "nanonlp_seconds_to_nanogpt_loss": reach})
            share = f"{reach:.1f} s, {reach / budget:.2f} of the budget" if reach is not None else "never"
            print(f"{budget:6.0f} s: nanoGPT {theirs:.4f} ({iters} iters, {wall:.0f} s wall); nanonlp {ours:.4f}; "
                  f"nanonlp reached {theirs:.4f} at {share}", flush=True)
        results["budgets"] = rows

    if args.ablation:
        rows = {}
        wanted = [w.strip().lower() for w in args.methods.split(",") if w.strip()]
        for name, overrides in METHODS.items():
            if wanted and overrides and not any(w in name.lower() for w in wanted):
                continue
            tag = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            evals = run_nanonlp(args.config, out / f"ablation_{tag}", args.ablation, args.data, "--train.optimizer=adamw",
                                "--model.position=learned", "--model.qk_norm=false", "--model.activation=gelu",
                                "--model.zero_init=false", "--model.tie_embeddings=true", "--model.logit_softcap=0", *overrides, *extra)
            rows[name] = evals[-1]["val_loss"]
            print(f"{name:32s} {rows[name]:.4f}", flush=True)
        results["ablation"] = {"seconds": args.ablation, "val_loss": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

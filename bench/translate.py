"""Machine translation figures on real data, on this machine.

    python bench/translate.py                                   # both families on Multi30k and Tatoeba
    python bench/translate.py --only multi30k_transformer --minutes 30

Each experiment trains one config for a fixed wall-clock budget (train.max_seconds; data preparation
and BPE training come before the clock starts), then prints the validation curve (greedy BLEU on 500
dev sentences at each evaluation, against elapsed training time), the training throughput, and
sacreBLEU BLEU and chrF of beam-5 translations of the test set (Multi30k: test_2016_flickr; Tatoeba:
1,000 held-out pairs) with the best checkpoint, with the decoding time. Data comes from
$NANONLP_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nanonlp.config import load_config  # noqa: E402
from nanonlp import load  # noqa: E402
from nanonlp.tasks.translate import load_splits  # noqa: E402
from nanonlp.train import fit  # noqa: E402

EXPERIMENTS = {
    "multi30k_transformer": "configs/multi30k_en_de_transformer.yaml",
    "multi30k_gru": "configs/multi30k_en_de_gru_attention.yaml",
    "tatoeba_transformer": "configs/tatoeba_en_fr_transformer.yaml",
    "tatoeba_gru": "configs/tatoeba_en_fr_gru_attention.yaml",
}


def run(name: str, config: str, minutes: float, out_root: Path, beam: int) -> dict:
    out_dir = out_root / name
    overrides = [f"--train.out_dir={out_dir}"] + ([f"--train.max_seconds={minutes * 60}"] if minutes else [])
    cfg = load_config(ROOT / config, overrides)
    started = time.perf_counter()
    result = fit(cfg, quiet=False, overwrite=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["elapsed_s"], r["step"], r["val_bleu"], r["val_loss"]) for r in records if "val_bleu" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    translator = load(out_dir)
    _, _, test = load_splits(translator.config.data)
    started = time.perf_counter()
    report, _ = translator.evaluate([p.source for p in test], [p.target for p in test], beam)
    decode_s = time.perf_counter() - started
    greedy, _ = translator.evaluate([p.source for p in test], [p.target for p in test], 1)
    return {"name": name, "budget_s": cfg.train.max_seconds, "steps": result.step, "train_wall_s": wall, "best": result.best, "curve": curve,
            "tokens_per_s": sum(speeds) / max(len(speeds), 1), "test": report, "test_greedy_bleu": greedy["bleu"],
            "test_sentences": len(test), "decode_s": decode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), help="experiments to run (default: all)")
    parser.add_argument("--minutes", type=float, help="training budget per experiment (default: each config's train.max_seconds)")
    parser.add_argument("--beam", type=int, default=5, help="beam width for the test set")
    parser.add_argument("--out", default="runs/bench_translate", help="where the runs are written")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    for name in args.only or list(EXPERIMENTS):
        r = run(name, EXPERIMENTS[name], args.minutes, Path(args.out), args.beam)
        print(f"\n== {name} ({EXPERIMENTS[name]}), {r['budget_s'] / 60:g} min budget: {r['steps']} steps, "
              f"{r['tokens_per_s']:,.0f} target tokens/s", flush=True)
        print(f"{'elapsed s':>10} {'step':>6} {'val BLEU (greedy, 500 dev)':>27} {'val loss':>9}")
        for elapsed, step, bleu, loss in r["curve"]:
            print(f"{elapsed:10.0f} {step:6d} {bleu:27.2f} {loss:9.3f}")
        t = r["test"]
        print(f"test ({r['test_sentences']:,} sentences), best checkpoint (step {r['best'].get('step')}), beam {args.beam}: "
              f"BLEU {t['bleu']:.2f}, chrF {t['chrf']:.2f} (greedy BLEU {r['test_greedy_bleu']:.2f}); decoding {r['decode_s']:.0f} s")
        print(f"  {t['bleu_detail']}\n  {t['bleu_signature']}\n  {t['chrf_signature']}", flush=True)


if __name__ == "__main__":
    main()

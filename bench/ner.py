"""Named-entity tagging figures on real data, on this machine.

    python bench/ner.py                        # WikiANN English (20 min each) and MSRA Chinese (30 min each)
    python bench/ner.py --only wikiann_en_bilstm_crf --minutes 5
    python bench/ner.py --only wikiann_en_minilm --set model.rnn_hidden=128 train.learning_rate=2e-4

For each experiment: training seconds (wall clock of the training, data preparation included), the
steps reached, test entity precision/recall/F1 (seqeval, strict IOB2) per type and micro, and
tagging speed: raw sentences per second through `tagger.tag` on 1,000 test sentences (tokenized,
tagged, spans and their CRF marginal confidences). Data comes from $NANONLP_DATA (default
../shared/data).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nanonlp import load  # noqa: E402
from nanonlp.config import load_config  # noqa: E402
from nanonlp.metrics import entity_report  # noqa: E402
from nanonlp.tasks.tag import as_iob2, cached_split  # noqa: E402
from nanonlp.train import fit  # noqa: E402

EXPERIMENTS = {
    "wikiann_en_bilstm_crf": ("configs/wikiann_en_bilstm_crf.yaml", " "),  # joiner of a sentence's tokens into raw text
    "wikiann_en_minilm": ("configs/wikiann_en_minilm.yaml", " "),
    "msra_bilstm_crf": ("configs/msra_bilstm_crf.yaml", ""),
    "msra_gpt": ("configs/msra_gpt.yaml", ""),  # pretrains its GPT first (--pretrain-minutes)
}


def pretrain_chinese_gpt(out: Path, minutes: float, overrides: list[str]) -> Path:
    """A character GPT pretrained on raw Chinese text: the MSRA training sentences (the tagger's own
    split, so no dev or test sentence is seen) and the ChnSentiCorp and waimai reviews, untagged."""
    import csv

    from nanonlp.tasks.tag import load_splits

    tag_cfg = load_config(ROOT / "configs/msra_gpt.yaml", overrides)  # the tagger's own split, whatever --set changes
    lines = ["".join(s.tokens) for s in load_splits(tag_cfg.data)["train"]]
    zh = Path(os.environ["NANONLP_DATA"]) / "zh"
    for name in ("chnsenticorp_htl_all.csv", "waimai_10k.csv"):
        with open(zh / name, encoding="utf-8", newline="") as f:
            lines += [row["review"].strip() for row in csv.DictReader(f) if row["review"].strip()]
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "zh_raw.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lm_dir = out / "zh_char_gpt"
    cfg = load_config(ROOT / "configs/zh_char_gpt.yaml",
                      [f"--data.path={corpus}", f"--train.out_dir={lm_dir}", f"--train.max_seconds={minutes * 60}",
                       f"--train.max_steps={int(minutes * 130)}", "--train.eval_interval=200"])
    started = time.perf_counter()
    result = fit(cfg, quiet=True)
    print(f"pretraining: {len(corpus.read_text(encoding='utf-8')):,} characters, {time.perf_counter() - started:.0f} s, "
          f"{result.step} steps, val loss {result.best.get('val_loss', float('nan')):.3f}", flush=True)
    return lm_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS))
    parser.add_argument("--minutes", type=float, default=0.0, help="training budget (default: each config's train.max_seconds)")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0, help="msra_gpt: minutes of GPT pretraining")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. model.rnn_hidden=128")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    for name in args.only or EXPERIMENTS:
        config, joiner = EXPERIMENTS[name]
        out = Path(tempfile.mkdtemp(prefix=f"nanonlp-{name}-"))
        overrides = [f"--train.out_dir={out}"] + ([f"--train.max_seconds={args.minutes * 60}"] if args.minutes else [])
        overrides += [f"--{item}" for item in args.set]
        if name == "msra_gpt":
            overrides.append(f"--tag.init_from={pretrain_chinese_gpt(out.parent / (out.name + '-lm'), args.pretrain_minutes, overrides)}")
        cfg = load_config(ROOT / config, overrides)
        started = time.perf_counter()
        result = fit(cfg, quiet=True)
        seconds = time.perf_counter() - started
        tagger = load(out, device="cpu")
        test = cached_split(out, "test")
        predicted = tagger.tag_tokens([s.tokens for s in test], "iob2")
        report = entity_report([as_iob2(s.tags, tagger.config.data.inner_scheme) for s in test], predicted)
        texts = [joiner.join(s.tokens) for s in test[:1000]]
        started = time.perf_counter()
        tagger.tag(texts)
        speed = len(texts) / (time.perf_counter() - started)
        per_type = ", ".join(f"{k} {v['f1'] * 100:.1f}" for k, v in report["per_type"].items())
        print(f"{name}{' ' + ' '.join(args.set) if args.set else ''}: {seconds:.0f} s, {result.step} steps (best dev F1 {result.best.get('val_f1', 0) * 100:.2f} at step "
              f"{result.best.get('step')}); test P {report['micro_precision'] * 100:.2f} R {report['micro_recall'] * 100:.2f} "
              f"F1 {report['micro_f1'] * 100:.2f} ({per_type}); tagging {speed:.0f} sentences/s", flush=True)


if __name__ == "__main__":
    main()

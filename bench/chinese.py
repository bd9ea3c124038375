"""Chinese figures on real data, on this machine: sentiment and translation.

    python bench/chinese.py                                   # everything (about 75 minutes on 2 cores)
    python bench/chinese.py --only chnsenticorp_ngrams chnsenticorp_cnn
    python bench/chinese.py --only tatoeba_en_zh --minutes 15
    python bench/chinese.py --only chnsenticorp_pretrained --encoder /path/to/bert-base-chinese

Sentiment (ChnSentiCorp hotel reviews and waimai_10k delivery reviews, each a seeded 80/10/10
split): every from-scratch classifier, with Chinese read one character a token or cut into words
by jieba; a character GPT that nanonlp pretrains first on raw Chinese text (the MSRA sentences,
the Chinese side of Tatoeba and the training reviews of both sets, never a dev or test review)
and fine-tunes; the packaged English MiniLM for comparison (its vocabulary covers few Chinese
characters, and training says so); and a Chinese BERT-format encoder when --encoder names one on
disk. Printed: training seconds (wall clock, data preparation included) and test accuracy and
macro F1.

Translation (Tatoeba English-Chinese, 1,000 seeded test pairs): en->zh and zh->en Transformers
for a fixed budget each (15 minutes by default); sacreBLEU BLEU with the tokenization chosen from
the target language (zh for Chinese), chrF, and the signatures. Data comes from $NANONLP_DATA
(default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nanonlp.config import load_config  # noqa: E402
from nanonlp import load  # noqa: E402
from nanonlp.tasks.classify import default_eval_examples, load_splits  # noqa: E402
from nanonlp.train import fit  # noqa: E402

JIEBA = ["--data.segmenter=jieba"]
WAIMAI = ["--data.path=waimai_10k"]
CLASSIFY = {
    "chnsenticorp_ngrams": ("configs/chnsenticorp_ngrams.yaml", []),
    "chnsenticorp_ngrams_jieba": ("configs/chnsenticorp_ngrams.yaml", JIEBA),
    "chnsenticorp_cnn": ("configs/chnsenticorp_cnn.yaml", []),
    "chnsenticorp_cnn_jieba": ("configs/chnsenticorp_cnn.yaml", JIEBA),
    "chnsenticorp_bilstm": ("configs/chnsenticorp_bilstm.yaml", []),
    "chnsenticorp_bilstm_jieba": ("configs/chnsenticorp_bilstm.yaml", JIEBA),
    "chnsenticorp_pretrained": ("configs/chnsenticorp_pretrained.yaml", []),
    "chnsenticorp_minilm": ("configs/chnsenticorp_pretrained.yaml", ["--model.type=bert", "--classify.init_from=all-MiniLM-L6-v2",
                                                                     "--train.learning_rate=1e-4", "--data.max_length=128",
                                                                     "--train.max_steps=300"]),
    "chnsenticorp_encoder": ("configs/chnsenticorp_pretrained.yaml", ["--model.type=bert", "--train.learning_rate=3e-5",
                                                                      "--train.head_learning_rate=1e-3", "--data.max_length=256",
                                                                      "--train.max_steps=600"]),
}
CLASSIFY.update({name.replace("chnsenticorp", "waimai"): (config, WAIMAI + overrides) for name, (config, overrides) in list(CLASSIFY.items())})
TRANSLATE = {
    "tatoeba_en_zh": "configs/tatoeba_en_zh_transformer.yaml",
    "tatoeba_zh_en": "configs/tatoeba_zh_en_transformer.yaml",
}
EXPERIMENTS = [*CLASSIFY, *TRANSLATE]


def pretraining_corpus(out: Path) -> Path:
    """Raw Chinese text without a dev or test review of either sentiment set: the MSRA sentences, the
    Chinese side of Tatoeba, and the training reviews (the classifiers' own seeded splits)."""
    from nanonlp.data.catalog import chinese_sentences

    lines = chinese_sentences()
    for overrides in ([], WAIMAI):
        cfg = load_config(ROOT / "configs/chnsenticorp_cnn.yaml", overrides)
        lines += [e.text for e in load_splits(cfg.data)[0]]
    lines = [line.strip() for line in lines if line.strip()]
    random.Random(0).shuffle(lines)  # every source in the language model's last-10% validation split
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "zh_pretrain.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus


def pretrain(out: Path, minutes: float) -> Path:
    lm_dir = out / "zh_char_gpt"
    if (lm_dir / "model.safetensors").is_file():
        return lm_dir  # pretrained by an earlier experiment (chnsenticorp's, reused for waimai)
    corpus = pretraining_corpus(out)
    cfg = load_config(ROOT / "configs/zh_char_gpt.yaml", [f"--data.path={corpus}", f"--train.out_dir={lm_dir}",
                                                          f"--train.max_seconds={minutes * 60}", f"--train.max_steps={int(minutes * 130)}"])
    started = time.perf_counter()
    result = fit(cfg, quiet=True, overwrite=True)
    print(f"pretraining (configs/zh_char_gpt.yaml on {corpus.stat().st_size / 1e6:.1f} MB of text without held-out reviews): "
          f"{time.perf_counter() - started:.0f} s, {result.step} steps, val loss {result.best.get('val_loss', float('nan')):.3f}", flush=True)
    return lm_dir


def classify(name: str, out: Path, args) -> None:
    config, overrides = CLASSIFY[name]
    overrides = [*overrides, f"--train.out_dir={out / name}"]
    pretrain_s = 0.0
    if name.endswith("_pretrained"):
        started = time.perf_counter()
        overrides.append(f"--classify.init_from={pretrain(out, args.pretrain_minutes)}")
        pretrain_s = time.perf_counter() - started
    if name.endswith("_encoder"):
        if not args.encoder:
            print(f"\n== {name}: skipped, no Chinese BERT-format encoder on disk (give its folder with --encoder)", flush=True)
            return
        overrides.append(f"--classify.init_from={args.encoder}")
    cfg = load_config(ROOT / config, overrides)
    started = time.perf_counter()
    fit(cfg, quiet=True, overwrite=True)
    seconds = time.perf_counter() - started
    classifier = load(out / name)
    where, examples, ids = default_eval_examples(classifier)
    report = classifier.evaluate(examples, ids)
    extra = f" (+{pretrain_s:.0f} s pretraining)" if pretrain_s > 1 else ""
    print(f"\n== {name} ({config} {' '.join(o for o in overrides if 'out_dir' not in o and 'init_from=' + str(out) not in o)})\n"
          f"   train {seconds:.0f} s{extra}; {where}, {len(examples):,} reviews: accuracy {report['accuracy']:.2%}, "
          f"macro F1 {report['macro_f1']:.2%}", flush=True)


def translate(name: str, out: Path, args) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_translate", ROOT / "bench" / "translate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    r = module.run(name, TRANSLATE[name], args.minutes, out, args.beam)
    t = r["test"]
    print(f"\n== {name} ({TRANSLATE[name]}), {r['budget_s'] / 60:g} min: {r['steps']} steps; "
          f"test ({r['test_sentences']:,} pairs, beam {args.beam}, best checkpoint step {r['best'].get('step')}): "
          f"BLEU {t['bleu']:.2f}, chrF {t['chrf']:.2f} (greedy BLEU {r['test_greedy_bleu']:.2f})\n"
          f"   {t['bleu_signature']}\n   {t['chrf_signature']}", flush=True)
    print(f"{'elapsed s':>10} {'step':>6} {'val BLEU (greedy, 500 dev)':>27} {'val loss':>9}")
    for elapsed, step, bleu, loss in r["curve"]:
        print(f"{elapsed:10.0f} {step:6d} {bleu:27.2f} {loss:9.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=EXPERIMENTS, help="experiments to run (default: all but *_encoder without --encoder)")
    parser.add_argument("--minutes", type=float, help="translation: training budget (default: each config's 15 minutes)")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0, help="*_pretrained: minutes of Chinese GPT pretraining")
    parser.add_argument("--encoder", help="*_encoder: a Chinese BERT-format folder (bert-base-chinese, chinese-roberta-wwm-ext)")
    parser.add_argument("--beam", type=int, default=5, help="translation: beam width for the test set")
    parser.add_argument("--out", default="runs/bench_chinese", help="where the runs are written")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    out = Path(args.out)
    for name in args.only or EXPERIMENTS:
        if name in TRANSLATE:
            translate(name, out, args)
        else:
            classify(name, out, args)


if __name__ == "__main__":
    main()

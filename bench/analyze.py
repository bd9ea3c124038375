"""Quality figures of the monitoring models (issue 24), on this machine.

    python bench/analyze.py                               # every experiment, one after another
    python bench/analyze.py --only semeval_minilm fpb_minilm

English:
  semeval_minilm   SemEval-2017 Task 5 headlines, seeded 80/20: cosine (and Pearson) of predicted and gold
                   scores on the held-out 20% (target >= 0.75); semeval_ngrams is the n-gram baseline
  fpb_minilm       Financial PhraseBank, all-agree sentences, seeded 80/20: test accuracy (target >= 0.95);
                   fpb_ngrams the baseline. FPB is non-commercial: a benchmark only, no model shipped.
  sentifm_ngrams   SentiFM holdout: micro F1 over the 10 event types (bag of words and word bigrams), against
                   sentifm_rules, hand-written keyword rules (one regular expression per type)
Chinese (each against the character n-gram baseline, *_ngrams: configs/chnsenticorp_ngrams.yaml on that data):
  finfe_cnn        FinFE eval accuracy (3 classes)
  finese_cnn       FinESE eval event-type accuracy (21 types)
  finnsp_cnn       FinNSP eval F1 of the negative class

Training seconds are the wall clock of `nanonlp train` (data preparation included). Dev sets are held
out of the training data (never the test/eval split), and the best checkpoint is chosen on them.
Data comes from $NANONLP_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nanonlp import load  # noqa: E402
from nanonlp.config import load_config  # noqa: E402
from nanonlp.data import catalog  # noqa: E402
from nanonlp.data.readers import read_examples  # noqa: E402
from nanonlp.metrics import multilabel_report  # noqa: E402
from nanonlp.tasks.classify import default_eval_examples  # noqa: E402
from nanonlp.train import fit  # noqa: E402

# The character (and word) n-gram baseline on a financial data set: chnsenticorp_ngrams.yaml with the data swapped.
NGRAMS = ["--data.encoding=", "--data.test_fraction=-1", "--data.max_length=256"]
FPB = ["--data.path=fpb_allagree", "--data.encoding=", "--data.detokenize=false", "--data.test_fraction=-1", "--data.max_length=96",
       "--train.max_steps=500", "--train.eval_interval=50", "--train.warmup_steps=30"]

EXPERIMENTS = {
    "semeval_minilm": ("configs/semeval_minilm.yaml", []),
    "semeval_ngrams": ("configs/chnsenticorp_ngrams.yaml", NGRAMS + ["--data.path=semeval2017_headlines", "--data.target=regression",
                                                                     "--data.ngrams=2", "--data.char_ngrams=4", "--train.max_steps=600"]),
    "fpb_minilm": ("configs/sst2_minilm.yaml", FPB),
    "fpb_ngrams": ("configs/chnsenticorp_ngrams.yaml", NGRAMS + ["--data.path=fpb_allagree", "--data.ngrams=2", "--data.char_ngrams=4",
                                                                 "--train.max_steps=600"]),
    "sentifm_rules": (None, []),
    "sentifm_ngrams": ("configs/sentifm_ngrams.yaml", []),
    "finfe_ngrams": ("configs/finfe_ngrams.yaml", []),  # = chnsenticorp_ngrams.yaml + NGRAMS + --data.path=finfe
    "finfe_cnn": ("configs/finfe_cnn.yaml", []),
    "finese_ngrams": ("configs/chnsenticorp_ngrams.yaml", NGRAMS + ["--data.path=finese"]),
    "finese_cnn": ("configs/finese_cnn.yaml", []),
    "finnsp_ngrams": ("configs/chnsenticorp_ngrams.yaml", NGRAMS + ["--data.path=finnsp", "--data.max_length=512"]),
    "finnsp_cnn": ("configs/finfe_cnn.yaml", ["--data.path=finnsp", "--data.max_length=512", "--train.max_steps=1500"]),
}

# Keyword rules for the SentiFM event types: the baseline a model must beat. One pattern per type,
# written from the type's name and a reading of the guidelines' examples (never tuned on holdout).
SENTIFM_RULES = {
    "BuyRating": r"\b(buy|outperform|overweight|upgrad\w*|accumulate)\b",
    "Debt": r"\b(debts?|borrowings?|loans?|bonds?|credit facilit\w*|refinanc\w*)\b",
    "Dividend": r"\bdividends?\b|\bpayouts?\b",
    "MergerAcquisition": r"\b(mergers?|merge[sd]?|acquisitions?|acquir\w*|takeovers?|bid for|buy[- ]?out)\b",
    "Profit": r"\b(profits?|earnings|net income|pre-tax|ebitda|operating (income|loss)|losses)\b",
    "QuarterlyResults": r"\b(quarter\w*|q[1-4]|first[- ]half|second[- ]half|half[- ]year\w*|interim)\b",
    "SalesVolume": r"\b(sales|sold|volumes?|deliveries|shipments)\b",
    "ShareRepurchase": r"\b(buy[- ]?backs?|repurchas\w*|buy back)\b",
    "TargetPrice": r"\b(target price|price target|target)\b",
    "Turnover": r"\b(turnover|revenues?)\b",
}


def sentifm_rules() -> str:
    holdout = read_examples(catalog.resolve("sentifm"), "sentifm", "test")
    labels = sorted(SENTIFM_RULES)
    index = {label: i for i, label in enumerate(labels)}
    gold = torch.zeros(len(holdout), len(labels), dtype=torch.long)
    predicted = torch.zeros_like(gold)
    for row, example in enumerate(holdout):
        for label in example.labels:
            gold[row, index[label]] = 1
        for label, pattern in SENTIFM_RULES.items():
            if re.search(pattern, example.text, re.IGNORECASE):
                predicted[row, index[label]] = 1
    report = multilabel_report(gold, predicted, labels)
    return f"holdout micro F1 {report['micro_f1']:.4f}, macro F1 {report['macro_f1']:.4f} ({len(holdout)} sentences)"


def figures(name: str, run_dir: str) -> str:
    classifier = load(run_dir)
    source, examples, ids = default_eval_examples(classifier)  # the test split: held out 20%, the holdout, or the eval file
    report = classifier.evaluate(examples, ids)
    where = f"{source}, {len(examples):,} examples"
    if name.startswith("semeval"):
        return f"test cosine {report['cosine']:.4f}, Pearson {report['pearson']:.4f}, MSE {report['mse']:.4f} ({where})"
    if name.startswith("sentifm"):
        return f"holdout micro F1 {report['micro_f1']:.4f}, macro F1 {report['macro_f1']:.4f} ({where})"
    if name.startswith("finnsp"):
        negative = report["per_class"]["negative"]
        return (f"eval negative F1 {negative['f1']:.4f} (P {negative['precision']:.4f}, R {negative['recall']:.4f}), "
                f"accuracy {report['accuracy']:.4f} ({where})")
    return f"accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} ({where})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), help="run these experiments only")
    parser.add_argument("--set", nargs="*", default=[], help="extra --key=value overrides for every trained experiment")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 where other jobs share the cores: two threads "
                                                                 "on a crowded 2-core machine spin against each other)")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'experiment':16s} {'train_s':>8} {'steps':>6}  figures", flush=True)
    for name in args.only or EXPERIMENTS:
        config, overrides = EXPERIMENTS[name]
        if config is None:
            start = time.perf_counter()
            print(f"{name:16s} {time.perf_counter() - start:8.1f} {0:6d}  {sentifm_rules()}", flush=True)
            continue
        out = tempfile.mkdtemp(prefix=f"nanonlp-{name}-")
        cfg = load_config(ROOT / config, overrides + list(args.set) + [f"--train.out_dir={out}"])
        start = time.perf_counter()
        result = fit(cfg, quiet=True, overwrite=True)
        seconds = time.perf_counter() - start
        print(f"{name:16s} {seconds:8.1f} {result.step:6d}  {figures(name, out)}  [{out}]", flush=True)


if __name__ == "__main__":
    main()

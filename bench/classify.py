"""Text classification figures on real data, on this machine.

    python bench/classify.py                          # every family on SST-2, spam F1, CLINC150
    python bench/classify.py --only sst2_ngrams sst2_minilm
    python bench/classify.py --only sst2_minilm_distilled  # trains its teacher (sst2_minilm) first

For each experiment: training seconds (wall clock of `nanonlp train`, data preparation included),
then SST-2 dev accuracy and macro F1; the spam-class F1 on a seeded 80/20 split of SMS Spam; and
for CLINC150, in-scope accuracy on its test split and out-of-scope recall at the abstain threshold
chosen on its validation split. Data comes from $NANONLP_DATA (default ../shared/data).

A distilled student (sst2_*_distilled) needs its teacher, sst2_minilm, which is trained first in the
same call (and printed) whether or not it was asked for. A student's seconds include the teacher
labelling its texts; "in all" adds the teacher's own training, so it is the wall clock from nothing
to the student (with two students, the teacher's time is in both).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nanonlp.config import load_config  # noqa: E402
from nanonlp import load  # noqa: E402
from nanonlp.tasks.classify import default_eval_examples, load_splits  # noqa: E402
from nanonlp.train import fit  # noqa: E402

SMS = ["--data.path=sms_spam", "--data.encoding=utf-8", "--data.detokenize=false", "--data.dev_fraction=0.2", "--data.split_seed=0"]
CLINC = ["--data.path=clinc150", "--data.encoding=utf-8", "--data.detokenize=false", "--data.max_length=48", "--classify.tune_abstain=true",
         "--train.max_steps=1500", "--train.eval_interval=500", "--train.head_learning_rate=3e-3", "--train.learning_rate=1e-4"]

EXPERIMENTS = {
    "sst2_ngrams": ("configs/sst2_ngrams.yaml", []),
    "sst2_cnn": ("configs/sst2_cnn.yaml", []),
    "sst2_bilstm": ("configs/sst2_bilstm.yaml", []),
    "sst2_transformer": ("configs/sst2_transformer.yaml", []),
    "sst2_minilm": ("configs/sst2_minilm.yaml", []),
    "sms_ngrams": ("configs/sst2_ngrams.yaml", SMS),
    "clinc_minilm": ("configs/sst2_minilm.yaml", CLINC),
    # Distilled from the fine-tuned MiniLM of sst2_minilm, which is always trained first in the same call.
    "sst2_bilstm_distilled": ("configs/sst2_bilstm_distilled.yaml", []),
    "sst2_minilm_distilled": ("configs/sst2_minilm_distilled.yaml", []),
}
TEACHERS = {"sst2_bilstm_distilled": "sst2_minilm", "sst2_minilm_distilled": "sst2_minilm"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), help="run these experiments only")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    print(f"{'experiment':22s} {'train_s':>8} {'steps':>6}  figures", flush=True)
    names = list(args.only or EXPERIMENTS)
    for student, teacher in TEACHERS.items():  # a teacher is trained before its students
        if student in names and (teacher not in names or names.index(teacher) > names.index(student)):
            names = [n for n in names if n != teacher]
            names.insert(names.index(student), teacher)
    runs, seconds_of = {}, {}
    for name in names:
        config, overrides = EXPERIMENTS[name]
        out = tempfile.mkdtemp(prefix=f"nanonlp-{name}-")
        if name in TEACHERS:
            overrides = overrides + [f"--classify.teacher={runs[TEACHERS[name]]}"]
        cfg = load_config(ROOT / config, overrides + [f"--train.out_dir={out}"])
        start = time.perf_counter()
        result = fit(cfg, quiet=True, overwrite=True)
        seconds = time.perf_counter() - start
        runs[name], seconds_of[name] = out, seconds
        classifier = load(out)
        if name.startswith("sms"):
            _, dev, _ = load_splits(classifier.config.data)  # the seeded 20% held out from training
            report = classifier.evaluate(dev)
            figures = f"spam F1 {report['per_class']['spam']['f1']:.4f}, accuracy {report['accuracy']:.4f}"
        elif name.startswith("clinc"):
            _, test, _ = default_eval_examples(classifier)
            report = classifier.evaluate(test)
            figures = (f"in-scope accuracy {report['in_scope_accuracy']:.4f}, out-of-scope recall {report['out_of_scope_recall']:.4f} "
                       f"(abstain below {classifier.calibration['abstain_threshold']:.2f})")
        else:
            _, dev, _ = default_eval_examples(classifier)
            report = classifier.evaluate(dev)
            figures = f"dev accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}, ECE {report['ece']:.4f}"
        if name in TEACHERS:  # the student's seconds include the teacher labelling its texts
            figures += f"; with the teacher's training, {seconds + seconds_of[TEACHERS[name]]:.1f} s in all"
        print(f"{name:22s} {seconds:8.1f} {result.step:6d}  {figures}", flush=True)


if __name__ == "__main__":
    main()

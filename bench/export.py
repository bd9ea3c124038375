"""ONNX Runtime against PyTorch: a MiniLM classifier exported by `nanonlp export --format onnx`.

    python bench/export.py                      # a classifier on all-MiniLM-L6-v2, 2 threads
    python bench/export.py --run runs/sst2_minilm --threads 2 --repeats 50

Without --run, the script fine-tunes a classifier on all-MiniLM-L6-v2 for a few steps on the first
1,000 SST-2 training sentences (../shared/data or $NANONLP_DATA; a small built-in set where the data
is absent): its speed is the trained model's, as the weights' values do not change the work. It then
exports the run to ONNX and times the model alone (ids in, logits out; tokenizing is the same for
both) on SST-2 dev sentences, at batch 1 and batch 32 (padded to the batch's longest sentence), with
PyTorch (fp32, inference_mode) and ONNX Runtime (CPUExecutionProvider, all graph optimizations), each
held to --threads threads. It prints the median and 90th-percentile latency per batch, sentences per
second, and the largest difference between the two models' logits over every batch timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nanonlp import load  # noqa: E402
from nanonlp.checkpoint import open_run  # noqa: E402
from nanonlp.config import load_config  # noqa: E402
from nanonlp.export import export  # noqa: E402
from nanonlp.predict import load_model  # noqa: E402
from nanonlp.train import fit  # noqa: E402

FALLBACK = [("pos", "a warm , funny and moving film"), ("neg", "a dull and tedious mess"), ("pos", "the cast is wonderful"),
            ("neg", "nothing here works at all"), ("pos", "a smart , touching story"), ("neg", "bad acting and a worse script")] * 20


def sentences(data: Path, split: str, limit: int) -> list[tuple[str, str]]:
    path = data / "sst2" / f"{split}.txt"
    if not path.is_file():
        return FALLBACK[:limit]
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        label, _, text = line.partition(" ")
        rows.append((label, text))
    return rows


def train_run(folder: Path, data: Path, init_from: str) -> Path:
    train = folder / "train.txt"
    train.write_text("".join(f"{label} {text}\n" for label, text in sentences(data, "train", 1000)), encoding="utf-8")
    config = load_config(ROOT / "configs" / "sst2_minilm.yaml", [
        f"--data.path={train}", "--data.dev_path=", "--data.dev_fraction=0.1", "--train.max_steps=30", "--train.eval_interval=30",
        f"--train.out_dir={folder / 'run'}", "--train.device=cpu", "--train.dtype=float32", "--classify.calibrate=false",
        f"--classify.init_from={init_from}"])
    fit(config, quiet=True)
    return folder / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained classifier run (default: fine-tune one on all-MiniLM-L6-v2 for 30 steps)")
    parser.add_argument("--init-from", default="all-MiniLM-L6-v2", help="the encoder of the classifier trained without --run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50, help="distinct batches timed per batch size and engine")
    args = parser.parse_args()
    import onnxruntime as ort

    data = Path(os.environ.get("NANONLP_DATA", ROOT.parent / "shared" / "data"))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else train_run(tmp, data, args.init_from)
        export(run, "onnx", tmp / "onnx")
        classifier = load(run, device="cpu")
        model = load_model(open_run(run), torch.device("cpu"))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(tmp / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        texts = [text for _, text in sentences(data, "dev", 872)]
        parameters = sum(p.numel() for p in model.parameters())
        print(f"model: {type(model).__name__}, {parameters / 1e6:.1f}M parameters; {args.threads} threads; torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}; {len(texts)} dev sentences")
        print(f"{'batch':>5} {'engine':>12} {'median_ms':>10} {'p90_ms':>8} {'sentences/s':>12}")
        worst = 0.0
        for batch_size in (1, 32):
            batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)][: args.repeats]
            tensors = [classifier.encoder.batch(classifier.encoder.ids_of(b), "cpu") for b in batches]
            for ids, mask in tensors:  # the two engines agree on every batch timed
                with torch.inference_mode():
                    ours = model(ids, mask)[0].numpy()
                theirs = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
                worst = max(worst, float(abs(ours - theirs).max()))
            for engine in ("pytorch", "onnxruntime"):
                def call(ids, mask, engine=engine):
                    if engine == "pytorch":
                        with torch.inference_mode():
                            model(ids, mask)
                    else:
                        session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})

                for ids, mask in tensors[:5]:  # warm-up: first-call allocations and kernel choices
                    call(ids, mask)
                per_batch = []  # one timing per distinct batch of dev sentences
                for ids, mask in tensors:
                    start = time.perf_counter()
                    call(ids, mask)
                    per_batch.append(time.perf_counter() - start)
                median = statistics.median(per_batch)
                p90 = sorted(per_batch)[int(0.9 * (len(per_batch) - 1))]
                rate = sum(len(b) for b in batches) / sum(per_batch)
                print(f"{batch_size:>5} {engine:>12} {median * 1e3:>10.2f} {p90 * 1e3:>8.2f} {rate:>12.1f}", flush=True)
        print(f"largest |logit difference| between PyTorch and ONNX Runtime over every batch timed: {worst:.2e}")


if __name__ == "__main__":
    main()

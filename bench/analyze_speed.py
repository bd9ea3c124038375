"""End-to-end throughput of `nanonlp analyze` (issue 24): documents per second on this machine, and the
Ray engine against the default one on the same input.

    python bench/analyze_speed.py                       # n-gram models, then MiniLM sentiment, then Ray
    python bench/analyze_speed.py --docs 50000 --skip-ray

Input: the first --docs tweets of stocknet (../shared/data/fin/stocknet_tweets.jsonl, MIT), with
docs/analyze/stocknet.yaml's fields, keyword events and weekly alerts. Per document: sentiment from a
classification run, events from a multi-label classification run (SentiFM event types) and the
keyword rules, the entity from the ticker field, a repost check; then the DuckDB history, aggregates,
alerts and the HTML report. Every figure is wall-clock time of one `nanonlp analyze` command,
models loaded and report written, divided into the documents read.

The models are trained here first, for a few steps only (their quality is not what is measured):
sst2_ngrams (a bag of word n-grams) and sentifm_ngrams for the n-gram figure, semeval_minilm
(all-MiniLM-L6-v2, a regression) for the MiniLM figure. Data comes from $NANONLP_DATA (default
../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NANONLP_DATA", ROOT.parent / "shared" / "data"))


def processor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def train(config: str, out: Path, extra: list[str]) -> Path:
    if not (out / "config.yaml").exists():
        run([sys.executable, "-m", "nanonlp", "train", config, f"--train.out_dir={out}", "--quiet", *extra])
    return out


def analyze(inputs: Path, out: Path, sentiment: Path, events: Path | None, engine: str = "local") -> tuple[float, dict]:
    command = [sys.executable, "-m", "nanonlp", "analyze", str(inputs), "--config", "docs/analyze/stocknet.yaml",
               "--sentiment", str(sentiment), "--out", str(out), "--engine", engine, "--quiet"]
    if events is not None:
        command += ["--events", str(events)]
    seconds = run(command)
    return seconds, json.loads((out / "summary.json").read_text())


def records(path: Path) -> list[dict]:
    """documents.jsonl without what depends on the order rows were written in."""
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()), key=lambda r: r["id"])


def agree(a: object, b: object, tolerance: float = 1e-5) -> bool:
    """Equal, numbers within `tolerance`: a batch of other texts pads a text differently, which moves
    a probability in its sixth decimal."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tolerance
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agree(x, y, tolerance) for x, y in zip(a, b))
    return a == b


def compare(local: Path, ray: Path) -> str:
    a, b = records(local), records(ray)
    exact = sum(x == y for x, y in zip(a, b))
    close = len(a) == len(b) and all(agree(x, y) for x, y in zip(a, b))
    return (f"documents.jsonl: {exact:,} of {len(a):,} records identical, "
            + ("the rest within 1e-5 (labels, events, entities and reposts all equal)" if close else "SOME DIFFER beyond 1e-5"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20000, help="documents to analyse (the first N tweets)")
    parser.add_argument("--runs", default=None, help="where the models are trained (reused when there); default a temporary folder")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    tweets = DATA / "fin" / "stocknet_tweets.jsonl"
    if not tweets.is_file():
        sys.exit(f"{tweets} is missing: set NANONLP_DATA to the folder that holds fin/stocknet_tweets.jsonl.")
    work = Path(tempfile.mkdtemp(prefix="nanonlp-analyze-speed-"))
    runs = Path(args.runs) if args.runs else work / "runs"
    inputs = work / "tweets.jsonl"
    with tweets.open(encoding="utf-8") as source, inputs.open("w", encoding="utf-8") as sink:
        for number, line in enumerate(source):
            if number == args.docs:
                break
            sink.write(line)

    print(f"machine: {processor()}, {os.cpu_count()} CPUs; torch threads as nanonlp sets them; {args.docs:,} stocknet tweets")
    sentiment = train("sst2_ngrams", runs / "sst2_ngrams", ["--train.max_steps=50", "--train.eval_interval=50"])
    events = train("sentifm_ngrams", runs / "sentifm_ngrams", ["--train.max_steps=50", "--train.eval_interval=50"])
    rows = []
    seconds, summary = analyze(inputs, work / "ngrams", sentiment, events)
    rows.append(("n-gram sentiment + n-gram events + keyword events + ticker entities", "local", seconds, summary))
    if not args.skip_minilm:
        minilm = train("semeval_minilm", runs / "semeval_minilm", ["--train.max_steps=2", "--train.eval_interval=2"])
        seconds, summary = analyze(inputs, work / "minilm", minilm, events)
        rows.append(("MiniLM sentiment + n-gram events + keyword events + ticker entities", "local", seconds, summary))
    if not args.skip_ray:
        seconds, summary = analyze(inputs, work / "ngrams_ray", sentiment, events, engine="ray")
        rows.append(("n-gram sentiment + n-gram events + keyword events + ticker entities", "ray (local, 2 CPUs)", seconds, summary))
        same = compare(work / "ngrams" / "documents.jsonl", work / "ngrams_ray" / "documents.jsonl")
        alerts_same = json.loads((work / "ngrams" / "summary.json").read_text())["alerts"] == summary["alerts"]
    print()
    print("| models | engine | documents | seconds | documents/s | alerts |")
    print("|---|---|---|---|---|---|")
    for name, engine, seconds, summary in rows:
        print(f"| {name} | {engine} | {summary['documents']:,} | {seconds:.1f} | {summary['documents'] / seconds:,.0f} | {len(summary['alerts'])} |")
    if not args.skip_ray:
        local, ray = rows[0][2], rows[-1][2]
        print(f"\nRay engine against the default: {ray / local:.2f}x the wall time ({ray - local:+.1f} s); "
              f"{same}; alerts {'identical' if alerts_same else 'DIFFERENT'}.")
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()

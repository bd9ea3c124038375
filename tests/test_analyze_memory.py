"""Streaming keeps memory flat: 200,000 documents through keyword events, a word-rule sentiment,
repost marking and the DuckDB history, with the process's resident memory measured as it goes."""

import json
import random

from nanonlp.analyze import analyze
from nanonlp.analyze.config import from_mapping

N = 200_000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class DownIsNegative:
    """The sentiment of a word rule ("down" negative), recording memory each batch it is called for."""

    task, labels, multi_label = "classify", ["negative", "positive"], False

    def __init__(self):
        self.seen, self.samples = 0, []

    def predict(self, texts):
        self.seen += len(texts)
        self.samples.append((self.seen, rss_mb()))
        return [{"label": "negative" if "down" in t else "positive", "probability": 1.0,
                 "probabilities": {"negative": float("down" in t), "positive": float("down" not in t)}} for t in texts]


def test_two_hundred_thousand_documents_stream_in_flat_memory(tmp_path):
    words = "shares stock price demand guidance outlook margin board deal chips cloud cash bonds rating plant orders".split()
    rng = random.Random(0)
    path = tmp_path / "posts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(N):
            body = " ".join(rng.choices(words, k=8))
            mood = "down after a profit warning" if i % 9 == 0 else "up on strong demand"
            f.write(json.dumps({"id": str(i), "time": f"2015-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z", "ticker": f"T{i % 40}",
                                "text": f"$T{i % 40} {mood} {body} #{i}"}) + "\n")
    config = from_mapping({"fields": {"time": "time", "entity": "ticker", "id": "id"}, "batch_size": 2000,
                           "events": {"rules": {"profit_warning": {"words": ["profit warning"]}}},
                           "duplicates": {"window": 20_000}})
    sentiment = DownIsNegative()
    summary = analyze([str(path)], config, tmp_path / "out", models={"sentiment": sentiment}, report=False)
    assert summary["documents"] == N and summary["stored_documents"] == N
    assert summary["overall"] and sum(r["count"] for r in summary["overall"]) + summary["duplicates"] == N
    # after the repost window has filled (40,000 documents), memory stays where it is
    settled = [mb for seen, mb in sentiment.samples if seen >= 40_000]
    growth = max(settled) - settled[0]
    assert growth < 60, f"resident memory grew {growth:.0f} MB over {N - 40_000:,} documents: {sentiment.samples[::10]}"
    lines = sum(1 for _ in open(tmp_path / "out" / "documents.jsonl", encoding="utf-8"))
    assert lines == N

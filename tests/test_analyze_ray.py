"""The Ray Data engine on a local Ray instance (2 CPUs) started here: the same per-document results
and summary as the default in-process engine, from the same files."""

import json

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray Data: pip install 'nanonlp[ray]'")
pytest.importorskip("ray.data")

from nanonlp.analyze import analyze  # noqa: E402
from nanonlp.analyze.config import from_mapping  # noqa: E402

from analyze_fixtures import day_docs, doc, sentiment_run, write_jsonl  # noqa: E402,F401


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_the_ray_engine_equals_the_default_engine(tmp_path, sentiment_run, local_ray):  # noqa: F811
    rows = []
    for day in range(9):
        for k in range(12):
            row = doc("ACME" if k % 2 else "环球科技", day, k, 0.0)
            text = row["text"].split(" score=")[0]
            row["text"] = (f"record loss and layoffs, {text}" if (k < 3 or (day == 8 and k < 9)) else f"strong quarter, {text}")
            rows.append(row)
    rows.append({**rows[4], "id": "repost", "text": rows[4]["text"] + "!! http://t.co/x"})
    rows.append({**rows[7], "id": "zh", "text": "环球科技发布业绩预警，宣布裁员"})
    path = write_jsonl(tmp_path / "posts.jsonl", rows)
    values = {"fields": {"time": "time", "entity": "ticker", "id": "id"}, "sentiment": {"run": str(sentiment_run)}, "batch_size": 16,
              "events": {"rules": {"layoffs": {"words": ["layoffs", "裁员"]}, "profit_warning": {"words": ["业绩预警"], "severe": True}}},
              "alerts": {"min_count": 5, "warmup": 3}}
    local = analyze([path], from_mapping(values), tmp_path / "local")
    distributed = analyze([path], from_mapping(values), tmp_path / "ray", engine="ray", actors=2)
    assert distributed["engine"] == "ray" and local["engine"] == "local"
    documents = [(tmp_path / name / "documents.jsonl").read_text(encoding="utf-8").splitlines() for name in ("local", "ray")]
    assert len(documents[0]) == len(rows) and documents[0] == documents[1]
    assert json.loads(documents[1][-2])["duplicate_of"] == rows[4]["id"]
    assert json.loads(documents[1][-1])["events"] == ["layoffs", "profit_warning"]
    for key in ("documents", "stored_documents", "duplicates", "overall", "alerts", "new_alerts", "days"):
        assert local[key] == distributed[key], key
    assert any(a["kind"] == "event:profit_warning" for a in distributed["alerts"])
    assert (tmp_path / "ray" / "aggregates.csv").read_bytes() == (tmp_path / "local" / "aggregates.csv").read_bytes()

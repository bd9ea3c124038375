"""One analysis, end to end: documents stream in, are annotated (in-process or on Ray), marked as
reposts, written to documents.jsonl and the history store; then the history is aggregated, judged
for alerts, and written out as summary.json, CSV tables and the HTML report."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

from nanonlp.analyze.config import AnalyzeConfig
from nanonlp.analyze.documents import Annotator, Deduplicator
from nanonlp.analyze.inputs import Document, batches, read_documents
from nanonlp.analyze.stats import ALL, debounce, judge
from nanonlp.analyze.store import Store
from nanonlp.errors import NanoNLPError
from nanonlp.io import atomic_write_text, fsync_dir, save_json

REASONS = {  # an alert's reason, in the report's language
    "en": {"negative_share": "negative share {negative_share:.0%} against a baseline of {baseline_share:.0%} (z {z:.1f})",
           "mean_sentiment": "mean sentiment {mean_sentiment:+.2f} against a baseline of {baseline_mean:+.2f} (z {z:.1f})",
           "volume": "{count} documents against a baseline of {baseline_count:.1f} (z {z:.1f})",
           "event": "severe event {event}: {documents} document(s)", "since": ", {n} periods in a row since {first}"},
    "zh": {"negative_share": "负面占比 {negative_share:.0%}，基线 {baseline_share:.0%}（z = {z:.1f}）",
           "mean_sentiment": "平均情感 {mean_sentiment:+.2f}，基线 {baseline_mean:+.2f}（z = {z:.1f}）",
           "volume": "文档 {count} 篇，基线 {baseline_count:.1f} 篇（z = {z:.1f}）",
           "event": "严重事件 {event}：{documents} 篇文档", "since": "，自 {first} 起连续 {n} 个时段"},
}


def record(document: Document, annotation: dict, duplicate_of: str | None) -> dict:
    """A document with its predictions: one line of documents.jsonl, one row of the store."""
    moment = document.time.replace(tzinfo=None).isoformat() + "Z" if document.time else None
    return {"id": document.id, "time": moment, "source": document.source, "text": document.text,
            "entities": annotation["entities"], "sentiment": annotation["sentiment"], "events": annotation["events"],
            "evidence": annotation["evidence"], "event_scores": annotation["event_scores"], "duplicate_of": duplicate_of,
            "file": document.file, "line": document.line}


class LocalEngine:
    """The models in this process, batch after batch."""

    def __init__(self, config: AnalyzeConfig, models: dict | None, device: str):
        self.annotator = Annotator(config, models, device)

    def annotate(self, chunks):
        for batch in chunks:
            yield batch, self.annotator.annotate([d.text for d in batch], [d.entities for d in batch])

    def close(self) -> None:
        pass


def _progress(total_hint, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total_hint, unit="doc", disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, desc="analyze")


def annotate_stream(documents, config: AnalyzeConfig, engine, on_record, quiet: bool = True) -> int:
    """Annotate every document, mark reposts in order, hand each record to `on_record(records)`."""
    dedup = Deduplicator(config.duplicates.threshold, config.duplicates.window)
    bar = _progress(None, quiet)
    seen = 0
    try:
        for batch, annotations in engine.annotate(batches(documents, config.batch_size)):
            records = [record(d, a, dedup(d.id, a["signature"], a["entities"])) for d, a in zip(batch, annotations)]
            on_record(records)
            seen += len(records)
            bar.update(len(records))
    finally:
        bar.close()
    return seen


def alerts_of(store: Store, config: AnalyzeConfig, periods: set | None = None) -> tuple[list[dict], list]:
    """Every alert over the whole history (ranked by severity), and the aggregate cells."""
    settings = config.alerts
    cells = store.cells(settings.period)
    by_entity: dict[str, list] = {}
    for cell in cells:
        by_entity.setdefault(cell.entity, []).append(cell)
    severe = config.severe_events()
    alerts = []
    for entity, series in by_entity.items():
        if entity == ALL:
            continue
        series.sort(key=lambda c: c.period or date.min)
        for cell, check, first in debounce(judge(series, settings, settings.period, severe), settings.consecutive):
            alerts.append(_alert(config, cell, check, first))
    requests = [(a["entity"], a.pop("_period"), a["kind"].split(":", 1)[1] if a["kind"].startswith("event:") else None) for a in alerts]
    for alert, documents in zip(alerts, store.evidence(requests, settings.period, settings.evidence)):
        alert["documents"] = documents
    alerts.sort(key=lambda a: (-a["severity"], a["period"], a["entity"], a["kind"]), reverse=False)
    for rank, alert in enumerate(alerts, 1):
        alert["rank"] = rank
    return alerts, cells


def _alert(config: AnalyzeConfig, cell, check, first) -> dict:
    settings = config.alerts
    period = cell.period.isoformat() if cell.period else "all"
    event = check.kind.split(":", 1)[1] if check.kind.startswith("event:") else None
    numbers = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in check.numbers.items()}
    reason = REASONS[config.language][check.kind.split(":")[0]].format(
        **{**check.numbers, "event": event, "z": check.z or 0.0, "count": cell.count})
    if settings.consecutive > 1 and first is not None:
        reason += REASONS[config.language]["since"].format(n=settings.consecutive, first=first.isoformat())
    key = f"{cell.entity}|{check.kind}|{(first or cell.period or 'all')}"
    return {"key": key, "entity": cell.entity, "kind": check.kind, "period": period,
            "since": first.isoformat() if first else period, "severity": round(check.severity, 4), "reason": reason,
            "numbers": numbers, "documents": [], "_period": cell.period}


class JsonlWriter:
    """documents.jsonl written as it streams, to a temporary name renamed into place at the end."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abandon(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def make_engine(kind: str, config: AnalyzeConfig, models, device: str, address: str | None, actors: int | None):
    if kind == "local":
        if address is not None:
            raise NanoNLPError("--address is for --engine ray; the local engine runs in this process.")
        return LocalEngine(config, models, device)
    if kind == "ray":
        from nanonlp.analyze.ray_engine import RayEngine

        return RayEngine(config, models, device, address, actors)
    raise NanoNLPError(f"--engine must be local or ray, got '{kind}'.")


def analyze(inputs: list[str], config: AnalyzeConfig, out_dir: str | Path, store: str | Path | None = None,
            engine: str = "local", address: str | None = None, actors: int | None = None, on_error: str = "stop",
            models: dict | None = None, device: str = "cpu", quiet: bool = True, report: bool = True) -> dict:
    """Analyse the documents of `inputs` (paths or globs) into `out_dir`; returns the summary."""
    started = time.time()
    out_dir = Path(out_dir)
    store_path = Path(store) if store is not None else out_dir / "history.duckdb"
    errors: list[dict] = []
    documents = read_documents(inputs, config.fields, on_error, errors)
    runner = make_engine(engine, config, models, device, address, actors)
    history = Store(store_path)
    writer = JsonlWriter(out_dir / "documents.jsonl")
    try:
        def take(records):
            writer.write(records)
            history.stage(records)

        count = annotate_stream(documents, config, runner, take, quiet)
        if count == 0:
            raise NanoNLPError(f"no documents in {', '.join(inputs)}" + (" (every row was malformed)" if errors else "") + ".")
        committed = history.commit(replace_days=True)
        writer.finish()
    except BaseException:
        writer.abandon()
        history.close()
        raise
    finally:
        runner.close()
    try:
        summary = finish(history, config, out_dir, committed, count, errors, report)
    finally:
        history.close()
    summary["seconds"] = round(time.time() - started, 3)
    summary["engine"] = engine
    save_json(out_dir / "summary.json", summary)
    return summary


def new_alerts(alerts: list[dict], committed: dict, config: AnalyzeConfig) -> list[dict]:
    """The alerts in the periods this run's documents fall in (for 'all', every alert)."""
    if config.alerts.period == "all" or not committed["days"]:
        return list(alerts)
    days = {date.fromisoformat(d) for d in committed["days"]}
    if config.alerts.period == "week":
        days = {date.fromordinal(d.toordinal() - d.weekday()) for d in days}
    return [a for a in alerts if a["period"] != "all" and date.fromisoformat(a["period"]) in days]


def finish(history: Store, config: AnalyzeConfig, out_dir: Path, committed: dict, count: int, errors: list, report: bool) -> dict:
    alerts, cells = alerts_of(history, config)
    fresh = new_alerts(alerts, committed, config)
    rows = [c.row(config.alerts.min_count) for c in sorted(cells, key=lambda c: (c.entity, c.period or date.min))]
    hook = start_delivery(history, config, fresh)  # posts on its own thread while the files are written
    overall = [r for r in rows if r["entity"] == ALL]
    summary = {
        "documents": count, "stored_documents": history.count(), "days": committed["days"], "replaced": committed["replaced"],
        "duplicates": None, "skipped_rows": errors, "period": config.alerts.period,
        "entities": len({r["entity"] for r in rows} - {ALL}), "overall": overall,
        "alerts": alerts, "new_alerts": [a["key"] for a in fresh], "webhook": None,
        "config": asdict(config),
    }
    summary["duplicates"] = history.con.execute(
        "SELECT count(*) FROM documents WHERE duplicate_of IS NOT NULL AND (day IS NULL OR list_contains(?, CAST(day AS VARCHAR)))",
        [committed["days"]]).fetchone()[0] if committed["days"] else history.con.execute(
        "SELECT count(*) FROM documents WHERE duplicate_of IS NOT NULL").fetchone()[0]
    columns = ["entity", "period", "count", "scored", "mean_sentiment", "mean_low", "mean_high", "negative", "negative_share",
               "negative_low", "negative_high", "top_events", "low_confidence"]
    write_csv(out_dir / "aggregates.csv", rows, columns)
    write_csv(out_dir / "alerts.csv", [{**a, "numbers": a["numbers"], "documents": [d["id"] for d in a["documents"]]} for a in alerts],
              ["rank", "severity", "entity", "kind", "period", "since", "reason", "numbers", "documents", "key"])
    event_rows = event_table(cells)
    write_csv(out_dir / "events.csv", event_rows, ["event", "documents", "entities", "top_entities"])
    if report:
        from nanonlp.analyze.report import write_report

        whole = [c.row(config.alerts.min_count) for c in history.cells("all")]
        write_report(out_dir / "report.html", summary, rows, whole, event_rows, config)
    summary["webhook"] = end_delivery(history, config, hook)
    return summary


def event_table(cells) -> list[dict]:
    """Per event type: documents (reposts left out), entities concerned, the five most concerned."""
    totals: dict[str, dict] = {}
    for cell in cells:
        for event, n in cell.events.items():
            item = totals.setdefault(event, {"event": event, "documents": 0, "per_entity": {}})
            if cell.entity == ALL:
                item["documents"] += n
            else:
                item["per_entity"][cell.entity] = item["per_entity"].get(cell.entity, 0) + n
    out = []
    for item in sorted(totals.values(), key=lambda t: (-t["documents"], t["event"])):
        top = sorted(item["per_entity"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        out.append({"event": item["event"], "documents": item["documents"], "entities": len(item["per_entity"]), "top_entities": dict(top)})
    return out


def start_delivery(history: Store, config: AnalyzeConfig, fresh: list[dict]):
    """Queue the new alerts not posted before (in an earlier run) for the webhook."""
    if not config.alerts.webhook:
        return None
    from nanonlp.analyze.notify import Webhook

    sent = history.already_notified([a["key"] for a in fresh])
    todo = [a for a in fresh if a["key"] not in sent]
    hook = Webhook(config.alerts.webhook, config.alerts.webhook_retries, config.alerts.webhook_timeout)
    for alert in todo:
        hook.send(alert)
    return hook, len(fresh) - len(todo)


def end_delivery(history: Store, config: AnalyzeConfig, started) -> dict | None:
    """Wait for the webhook thread at most as long as its retries take; record what was delivered."""
    if started is None:
        return None
    hook, already = started
    a = config.alerts
    budget = a.webhook_timeout * (a.webhook_retries + 1) + hook.backoff * (2**a.webhook_retries)
    delivered, failed = hook.close(wait=min(budget, 120.0))
    history.mark_notified(delivered)
    return {"url": a.webhook, "delivered": delivered, "failed": failed, "already_sent": already}


def analyze_batch(documents: list[Document], annotator: Annotator, history: Store, config: AnalyzeConfig) -> tuple[list[dict], list[dict]]:
    """A batch of documents (an API request): their records, stored (a document id seen before is
    replaced; other documents of the same days stay), and the alerts of their periods against the
    whole history."""
    dedup = Deduplicator(config.duplicates.threshold, config.duplicates.window)
    records = []
    for batch in batches(documents, config.batch_size):
        annotations = annotator.annotate([d.text for d in batch], [d.entities for d in batch])
        records += [record(d, a, dedup(d.id, a["signature"], a["entities"])) for d, a in zip(batch, annotations)]
    history.stage(records)
    committed = history.commit(replace_days=False)
    alerts, _ = alerts_of(history, config)
    touched = {e for r in records for e in r["entities"]}
    fresh = [a for a in new_alerts(alerts, committed, config) if a["entity"] in touched]
    return records, fresh

"""`nanonlp analyze`: its arguments, and the command. A flag given on the command line wins over
the same setting in the --config YAML; a flag left out leaves the YAML's value (or the default)."""

from __future__ import annotations

import sys

FLAG_KEYS = {  # flag dest -> dotted config key
    "text_field": "fields.text", "time_field": "fields.time", "source_field": "fields.source", "id_field": "fields.id",
    "entity_field": "fields.entity", "sentiment": "sentiment.run", "entities": "entities.run", "events": "events.run",
    "period": "alerts.period", "language": "language", "webhook": "alerts.webhook", "batch_size": "batch_size",
    "consecutive": "alerts.consecutive", "min_count": "alerts.min_count", "warmup": "alerts.warmup",
}


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV, TSV or JSON-lines files, or globs of them (quote the glob)")
    p.add_argument("--config", help="YAML file with fields, models, event rules and alert settings (docs/analyze.md)")
    p.add_argument("--out", default="analysis", help="folder for report.html, documents.jsonl, summary.json and the CSV tables")
    p.add_argument("--store", help="the DuckDB history file (default OUT/history.duckdb); reuse it across daily runs")
    p.add_argument("--text-field", help="the text field (default: text)")
    p.add_argument("--time-field", help="the time field: ISO 8601 or Unix seconds (default: none; then --period all)")
    p.add_argument("--source-field", help="the source field")
    p.add_argument("--id-field", help="the document id field (default: FILE:LINE)")
    p.add_argument("--entity-field", help="the entity field; several entities separated by ';'")
    p.add_argument("--sentiment", metavar="RUN", help="a classification run (negative/neutral/positive labels) or a regression run")
    p.add_argument("--entities", metavar="RUN", help="a tagging run whose entities are aggregated")
    p.add_argument("--events", metavar="RUN", help="a multi-label classification run whose labels are event types")
    p.add_argument("--period", choices=["day", "week", "all"], help="aggregate and alert per day, week, or over all")
    p.add_argument("--language", choices=["en", "zh"], help="the report's language")
    p.add_argument("--webhook", metavar="URL", help="POST each new alert as JSON to URL")
    p.add_argument("--min-count", type=int, help="documents a period needs to be judged (default 10)")
    p.add_argument("--warmup", type=int, help="baseline periods before alerts fire (default 7)")
    p.add_argument("--consecutive", type=int, help="periods a condition must hold before it fires (default 1)")
    p.add_argument("--batch-size", type=int, help="documents per model batch (default 512)")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="a malformed row stops the run (default) or is reported and skipped")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="run the models in this process (default) or on Ray Data")
    p.add_argument("--address", help="the Ray cluster to join (--engine ray; default: a local Ray instance)")
    p.add_argument("--actors", type=int, help="Ray actors, each loading the models once (default: one per 2 CPUs of the cluster)")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    p.add_argument("--no-report", action="store_true", help="write the tables and summary but not report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")


def run(args) -> None:
    from nanonlp.analyze import analyze, load_analyze_config
    from nanonlp.errors import ConfigError

    overrides = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items() if getattr(args, dest) is not None}
    config = load_analyze_config(args.config, overrides)
    if config.fields.time is None and config.alerts.period != "all":
        if "alerts.period" in overrides:
            raise ConfigError(f"--period {config.alerts.period} needs times: name the time field with --time-field, or use --period all.")
        config.alerts.period = "all"  # no time field: the whole set is one period (the default for undated documents)
    if args.actors is not None and args.engine != "ray":
        raise ConfigError("--actors is for --engine ray.")
    summary = analyze(args.inputs, config, args.out, store=args.store, engine=args.engine, address=args.address, actors=args.actors,
                      on_error=args.on_error, device=args.device, quiet=args.quiet, report=not args.no_report)
    if not args.quiet:
        skipped = f", {len(summary['skipped_rows'])} malformed rows skipped" if summary["skipped_rows"] else ""
        print(f"analysed {summary['documents']:,} documents ({summary['duplicates']:,} reposts){skipped}; "
              f"{len(summary['alerts'])} alerts, {len(summary['new_alerts'])} new; "
              f"history {summary['stored_documents']:,} documents; wrote {args.out}/report.html", file=sys.stderr)

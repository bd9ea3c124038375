"""Opinion and risk monitoring: documents in; sentiment, entities, events, reposts, history,
aggregates, alerts and a report out. Built from the project's predictors.

    config.py    the analysis settings (fields, models, event rules, alert settings), YAML in
    inputs.py    CSV / TSV / JSON-lines files streamed as documents, malformed rows named
    documents.py per-document sentiment, entities, events, near-duplicate signatures
    store.py     the history in DuckDB
    stats.py     aggregates, intervals, z-scores, debouncing
    notify.py    the webhook
    report.py    the HTML report
    pipeline.py  one analysis end to end; the in-process engine
    ray_engine.py the Ray Data engine
"""

from nanonlp.analyze.config import AnalyzeConfig, load_analyze_config
from nanonlp.analyze.pipeline import analyze

__all__ = ["AnalyzeConfig", "analyze", "load_analyze_config"]

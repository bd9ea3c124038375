"""History in an embedded DuckDB file: every analysed document with its predictions, so that each
run aggregates and alerts against everything stored before it.

A run writes its documents into a staging table as they stream in, and at the end, in one
transaction, replaces the days it covers (or, for documents without a time, the same ids) with
them: re-running a day replaces that day, never doubles it, and a run that fails part-way changes
nothing.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np

from nanonlp.analyze.stats import ALL, Cell
from nanonlp.errors import NanoNLPError

COLUMNS = ("id VARCHAR, time TIMESTAMP, day DATE, source VARCHAR, text VARCHAR, entities VARCHAR[], label VARCHAR, "
           "score DOUBLE, probability DOUBLE, negative BOOLEAN, events VARCHAR[], evidence VARCHAR, duplicate_of VARCHAR, "
           "file VARCHAR, line INTEGER")
NAMES = [c.split()[0] for c in COLUMNS.split(", ")]


def connect(path: str | Path):
    try:
        import duckdb
    except ImportError:
        raise NanoNLPError("nanonlp analyze keeps its history in DuckDB: pip install duckdb.") from None
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(path)
    except duckdb.Error as err:
        raise NanoNLPError(f"cannot open the history store '{path}' ({err}); is another run using it, or is it not a DuckDB file?") from None
    con.execute("SET memory_limit='1GB'")  # bounded memory on big runs: DuckDB spills to disk past it
    con.execute(f"CREATE TABLE IF NOT EXISTS documents ({COLUMNS})")
    con.execute("CREATE TABLE IF NOT EXISTS notified (key VARCHAR PRIMARY KEY, sent_at TIMESTAMP DEFAULT current_timestamp)")
    return con


class Store:
    def __init__(self, path: str | Path):
        self.path = path
        self.con = connect(path)
        self.con.execute("DROP TABLE IF EXISTS staging")
        self.con.execute(f"CREATE TABLE staging ({COLUMNS})")

    def stage(self, records: list[dict]) -> None:
        """Add a batch of finished documents to the staging table (one columnar insert)."""
        if not records:
            return
        batch = {
            "id": np.array([r["id"] for r in records], dtype=object),
            "time": np.array([r["time"].rstrip("Z") if r["time"] else None for r in records], dtype=object),
            "source": np.array([r["source"] for r in records], dtype=object),
            "text": np.array([r["text"] for r in records], dtype=object),
            "entities": np.array([json.dumps(r["entities"], ensure_ascii=False) for r in records], dtype=object),
            "label": np.array([r["sentiment"]["label"] if r["sentiment"] else None for r in records], dtype=object),
            "score": np.array([r["sentiment"]["score"] if r["sentiment"] else np.nan for r in records], dtype=np.float64),
            "probability": np.array([(r["sentiment"] or {}).get("probability") or np.nan for r in records], dtype=np.float64),
            "events": np.array([json.dumps(r["events"], ensure_ascii=False) for r in records], dtype=object),
            "evidence": np.array([json.dumps(r["evidence"], ensure_ascii=False) for r in records], dtype=object),
            "duplicate_of": np.array([r["duplicate_of"] for r in records], dtype=object),
            "file": np.array([r["file"] for r in records], dtype=object),
            "line": np.array([r["line"] for r in records], dtype=np.int64),
        }
        self.con.register("batch", batch)
        try:
            self.con.execute(
                "INSERT INTO staging SELECT id, CAST(time AS TIMESTAMP), CAST(CAST(time AS TIMESTAMP) AS DATE), source, text, "
                "CAST(entities AS JSON)::VARCHAR[], label, CASE WHEN isnan(score) THEN NULL ELSE score END, "
                "CASE WHEN isnan(probability) THEN NULL ELSE probability END, label = 'negative', "
                "CAST(events AS JSON)::VARCHAR[], evidence, duplicate_of, file, line FROM batch")
        finally:
            self.con.unregister("batch")

    def commit(self, replace_days: bool = True) -> dict:
        """Move the staged documents into the history: the days they cover (replace_days) and their
        ids replace what was stored. Returns what was replaced and added."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            days = [d for (d,) in con.execute("SELECT DISTINCT day FROM staging WHERE day IS NOT NULL ORDER BY day").fetchall()]
            if replace_days:
                replaced = con.execute("SELECT count(*) FROM documents WHERE day IN (SELECT day FROM staging) "
                                       "OR id IN (SELECT id FROM staging)").fetchone()[0]
                con.execute("DELETE FROM documents WHERE day IN (SELECT day FROM staging WHERE day IS NOT NULL) "
                            "OR id IN (SELECT id FROM staging)")
            else:
                replaced = con.execute("SELECT count(*) FROM documents WHERE id IN (SELECT id FROM staging)").fetchone()[0]
                con.execute("DELETE FROM documents WHERE id IN (SELECT id FROM staging)")
            added = con.execute("SELECT count(*) FROM staging").fetchone()[0]
            con.execute("INSERT INTO documents SELECT * FROM staging")
            con.execute("DELETE FROM staging")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return {"days": [d.isoformat() for d in days], "added": added, "replaced": replaced}

    def close(self) -> None:
        try:
            self.con.execute("DROP TABLE IF EXISTS staging")
        finally:
            self.con.close()

    # -- reading back -----------------------------------------------------------------------------

    @staticmethod
    def _period(kind: str) -> str:
        return {"day": "day", "week": "CAST(date_trunc('week', day) AS DATE)", "all": "CAST(NULL AS DATE)"}[kind]

    def cells(self, kind: str) -> list[Cell]:
        """Per entity (and ALL) and period: counts, negatives, mean and sd of sentiment, event counts;
        reposts left out. Documents without a time fall in no day and count only for period 'all'."""
        period = self._period(kind)
        where = "duplicate_of IS NULL" + ("" if kind == "all" else " AND day IS NOT NULL")
        base = (f"SELECT {period} AS period, entities, score, negative, events FROM documents WHERE {where}")
        query = (f"WITH d AS ({base}), e AS (SELECT unnest(entities) AS entity, * EXCLUDE (entities) FROM d "
                 f"UNION ALL SELECT '{ALL}' AS entity, * EXCLUDE (entities) FROM d) "
                 "SELECT entity, period, count(*), count(score), count_if(negative), avg(score), stddev_samp(score) "
                 "FROM e GROUP BY entity, period ORDER BY entity, period")
        cells = {(e, p): Cell(e, p, n, scored, neg, mean, sd) for e, p, n, scored, neg, mean, sd in self.con.execute(query).fetchall()}
        events = (f"WITH d AS ({base}), e AS (SELECT unnest(entities) AS entity, * EXCLUDE (entities) FROM d "
                  f"UNION ALL SELECT '{ALL}' AS entity, * EXCLUDE (entities) FROM d), "
                  "v AS (SELECT entity, period, unnest(events) AS event FROM e) "
                  "SELECT entity, period, event, count(*) FROM v GROUP BY ALL")
        for e, p, event, n in self.con.execute(events).fetchall():
            cells[(e, p)].events[event] = n
        return list(cells.values())

    def evidence(self, requests: list[tuple[str, date | None, str | None]], kind: str, limit: int) -> list[list[dict]]:
        """The documents behind each alert, one query for all: per (entity, period, event) the
        entity's documents of the period (with the event, when one is named), most negative first."""
        if not requests:
            return []
        wanted = {"idx": np.arange(len(requests)), "entity": np.array([r[0] for r in requests], dtype=object),
                  "period": np.array([r[1].isoformat() if r[1] else None for r in requests], dtype=object),
                  "event": np.array([r[2] for r in requests], dtype=object)}
        period = self._period(kind)
        self.con.register("wanted", wanted)
        try:
            rows = self.con.execute(
                f"WITH m AS (SELECT unnest(entities) AS entity, {period} AS period, * EXCLUDE (entities) FROM documents "
                f"WHERE duplicate_of IS NULL UNION ALL SELECT '{ALL}' AS entity, {period} AS period, * EXCLUDE (entities) "
                "FROM documents WHERE duplicate_of IS NULL), "
                "w AS (SELECT idx, entity, CAST(period AS DATE) AS period, event FROM wanted) "
                "SELECT w.idx, m.id, strftime(m.time, '%Y-%m-%dT%H:%M:%SZ'), m.source, m.text, m.label, m.score, m.events, m.evidence "
                "FROM w JOIN m ON m.entity = w.entity AND m.period IS NOT DISTINCT FROM w.period "
                "WHERE w.event IS NULL OR list_contains(m.events, w.event) "
                f"QUALIFY row_number() OVER (PARTITION BY w.idx ORDER BY m.score ASC NULLS LAST, m.id) <= {int(limit)} "
                "ORDER BY w.idx, m.score ASC NULLS LAST, m.id").fetchall()
        finally:
            self.con.unregister("wanted")
        out: list[list[dict]] = [[] for _ in requests]
        for idx, i, t, source, text, label, score, events, evidence in rows:
            out[idx].append({"id": i, "time": t, "source": source, "text": text, "label": label, "score": score,
                             "events": list(events or []), "evidence": json.loads(evidence or "{}")})
        return out

    def count(self) -> int:
        return self.con.execute("SELECT count(*) FROM documents").fetchone()[0]

    def already_notified(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        rows = self.con.execute("SELECT key FROM notified WHERE list_contains(?, key)", [keys]).fetchall()
        return {k for (k,) in rows}

    def mark_notified(self, keys: list[str]) -> None:
        for key in keys:
            self.con.execute("INSERT INTO notified (key) VALUES (?) ON CONFLICT DO NOTHING", [key])

"""nanonlp analyze: aggregates, intervals and z-scores against hand computation; alerts on a
constructed turn (not on noise of the same volume, not during warm-up); debouncing; history across
daily runs; streaming; malformed rows; reposts; sentiment label mapping; the CLI; the webhook; the API."""

import json
import math
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import nanonlp
from nanonlp.analyze import analyze, load_analyze_config
from nanonlp.analyze.config import from_mapping
from nanonlp.analyze.documents import KeywordEvents, SentimentModel, sentiment_values, signatures, Deduplicator
from nanonlp.analyze.stats import Cell, debounce, judge, mean_interval, t_quantile, wilson
from nanonlp.cli import main
from nanonlp.errors import ConfigError, NanoNLPError

from analyze_fixtures import (BASELINE_NEGATIVES, ScoreInText, config, day_docs, doc, history_rows, sentiment_run,  # noqa: F401
                              write_jsonl)

SCORES = {"sentiment": ScoreInText()}


def run(tmp_path, rows, name="out", cfg=None, store=None, **options):
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    return analyze([path], cfg or config(), tmp_path / name, store=store or tmp_path / "history.duckdb", models=SCORES, **options)


def cell_of(summary_dir, entity, period):
    import csv

    with open(summary_dir / "aggregates.csv", encoding="utf-8") as f:
        return next(r for r in csv.DictReader(f) if r["entity"] == entity and r["period"] == period)


# -- intervals and aggregates against hand computation ---------------------------------------------


def test_wilson_and_t_intervals_match_hand_computation():
    # Wilson 2/10 at 95%: centre (0.2 + z²/20) / (1 + z²/10), half z·sqrt(0.016 + z²/400) / (1 + z²/10)
    low, high = wilson(2, 10)
    assert (low, high) == (pytest.approx(0.056682, abs=1e-5), pytest.approx(0.509843, abs=1e-5))
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0  # stays inside [0, 1]
    assert t_quantile(4) == 2.776 and t_quantile(9) == 2.262
    assert t_quantile(60) == pytest.approx(2.000, abs=1e-3) and t_quantile(10_000) == pytest.approx(1.960, abs=1e-3)
    low, high = mean_interval(0.32, 0.590292, 10)  # half 2.262 * 0.590292 / sqrt(10) = 0.422236
    assert (low, high) == (pytest.approx(-0.102236, abs=1e-5), pytest.approx(0.742236, abs=1e-5))


def test_daily_and_weekly_aggregates_equal_hand_computation(tmp_path):
    summary = run(tmp_path, history_rows(turn_negatives=None))
    day0 = cell_of(tmp_path / "out", "ACME", "2024-03-01")
    # 2 documents at -0.8, 8 at +0.6: mean 0.32, sample sd sqrt(3.136 / 9) = 0.590292
    assert int(day0["count"]) == 10 and int(day0["negative"]) == 2
    assert float(day0["mean_sentiment"]) == pytest.approx(0.32)
    assert float(day0["mean_low"]) == pytest.approx(-0.102236, abs=1e-5)
    assert float(day0["negative_low"]) == pytest.approx(0.056682, abs=1e-5)
    assert float(day0["negative_high"]) == pytest.approx(0.509843, abs=1e-5)
    assert day0["low_confidence"] == "False"
    assert summary["documents"] == 70 and summary["stored_documents"] == 70 and summary["alerts"] == []

    weekly = run(tmp_path, history_rows(turn_negatives=None), name="weekly", cfg=config(period="week"), store=tmp_path / "w.duckdb")
    first = cell_of(tmp_path / "weekly", "ACME", "2024-02-26")  # Fri 1, Sat 2, Sun 3 March: the ISO week of Monday 26 February
    assert int(first["count"]) == 30 and int(first["negative"]) == 2 + 3 + 2
    assert float(first["negative_share"]) == pytest.approx(7 / 30, abs=1e-6)
    assert weekly["period"] == "week"
    assert int(cell_of(tmp_path / "weekly", "ACME", "2024-03-04")["count"]) == 40


def test_low_confidence_flag_below_min_count(tmp_path):
    run(tmp_path, day_docs("TINY", 0, 1, 4))
    row = cell_of(tmp_path / "out", "TINY", "2024-03-01")
    assert row["low_confidence"] == "True" and int(row["count"]) == 4


# -- z-scores and alerts ---------------------------------------------------------------------------


def _series(negatives, total=10, entity="ACME"):
    """Cells as the store gives them: `total` documents a day, negatives at -0.8, the rest at +0.6."""
    out = []
    for day, n in enumerate(negatives):
        values = [-0.8] * n + [0.6] * (total - n)
        mean = sum(values) / total
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (total - 1))
        out.append(Cell(entity, date(2024, 3, 1 + day), total, total, n, mean, sd))
    return out


def test_z_scores_equal_hand_computation():
    settings = config().alerts
    judged = judge(_series(BASELINE_NEGATIVES + [8]), settings, "day", set())
    checks = {c.kind: c for c in judged[-1][1]}
    shares = [n / 10 for n in BASELINE_NEGATIVES]
    base = sum(shares) / 7
    sd = math.sqrt(sum((s - base) ** 2 for s in shares) / 6)  # 0.069007
    pooled = (sum(BASELINE_NEGATIVES) + 1) / (70 + 2)  # 16 / 72
    spread = max(sd, math.sqrt(pooled * (1 - pooled) / 10))  # the sampling error 0.131468 is the larger
    assert checks["negative_share"].z == pytest.approx((0.8 - base) / spread) == pytest.approx(4.4552, abs=1e-3)
    # mean sentiment: baseline means 0.6 - 0.14 n average 0.3; the day's mean -0.52 with standard error 0.590292 / sqrt(10)
    assert checks["mean_sentiment"].z == pytest.approx((0.3 - -0.52) / (0.590292 / math.sqrt(10)), abs=1e-4)
    # volume: ten a day, sd 0, so the floor sqrt(10) and z 0
    assert checks["volume"].z == 0.0 and not checks["volume"].holds
    assert checks["negative_share"].holds and checks["mean_sentiment"].holds


def test_an_alert_fires_on_a_turn_not_on_noise_of_the_same_volume(tmp_path):
    turned = run(tmp_path, history_rows(turn_negatives=8), name="turn", store=tmp_path / "a.duckdb")
    kinds = {(a["entity"], a["kind"], a["period"]) for a in turned["alerts"]}
    assert ("ACME", "negative_share", "2024-03-08") in kinds and ("ACME", "mean_sentiment", "2024-03-08") in kinds
    share = next(a for a in turned["alerts"] if a["kind"] == "negative_share")
    assert share["numbers"]["z"] == pytest.approx(4.4552, abs=1e-3)
    assert len(share["documents"]) == 5 and all(d["score"] == -0.8 for d in share["documents"])  # the documents behind it
    assert share["documents"][0]["evidence"] == {"layoffs": ["layoffs"]}
    assert [a["rank"] for a in turned["alerts"]] == list(range(1, len(turned["alerts"]) + 1))
    assert turned["alerts"][0]["severity"] >= turned["alerts"][-1]["severity"]

    noise = run(tmp_path, history_rows(turn_negatives=3), name="noise", store=tmp_path / "b.duckdb")
    assert noise["alerts"] == []  # 3 of 10: within the entity's own day-to-day variation


def test_nothing_fires_during_warm_up_but_a_severe_event_does(tmp_path):
    rows = [r for day, n in enumerate([2, 3, 2]) for r in day_docs("ACME", day, n, 10)]
    rows += day_docs("ACME", 3, 9, 10)  # a sharp turn after only three baseline days (warm-up is 5)
    rows.append(doc("ACME", 1, 99, -0.9, "ACME issues a profit warning"))
    summary = run(tmp_path, rows)
    assert [(a["kind"], a["period"]) for a in summary["alerts"]] == [("event:profit_warning", "2024-03-02")]
    assert summary["alerts"][0]["documents"][0]["evidence"] == {"profit_warning": ["profit warning"]}


def test_a_volume_burst_fires():
    settings = config().alerts
    series = _series(BASELINE_NEGATIVES) + _series([8], total=40)[:1]
    series[-1].period = date(2024, 3, 8)
    fired = debounce(judge(series, settings, "day", set()), 1)
    burst = [check for _, check, _ in fired if check.kind == "volume"]
    assert len(burst) == 1 and burst[0].z == pytest.approx((40 - 10) / math.sqrt(10))


def test_debouncing_needs_consecutive_periods_and_notifies_once_until_it_subsides():
    # turn on days 7, 8, 9; normal on 10; turn on 11 and 12; with consecutive=2
    negatives = BASELINE_NEGATIVES + [8, 8, 8, 2, 8, 8]
    settings = from_mapping({"alerts": {"min_count": 10, "warmup": 5, "baseline": 10, "consecutive": 2}}).alerts
    fired = [(cell.period.day, first.day) for cell, check, first in debounce(judge(_series(negatives), settings, "day", set()), 2)
             if check.kind == "negative_share"]
    assert fired == [(9, 8), (13, 12)]  # at the second period of each run (1 March is day 0), once per run
    once = [cell.period.day for cell, check, _ in debounce(judge(_series(negatives), settings, "day", set()), 1)
            if check.kind == "negative_share"]
    assert once == [8, 12]
    single = BASELINE_NEGATIVES + [8, 2]  # one bad day alone never fires with consecutive=2
    assert not [c for c in debounce(judge(_series(single), settings, "day", set()), 2) if c[1].kind == "negative_share"]


# -- history across runs ---------------------------------------------------------------------------


def test_day_two_alerts_against_day_one_history_and_rerunning_a_day_does_not_double_it(tmp_path):
    store = tmp_path / "history.duckdb"
    first = run(tmp_path, history_rows(turn_negatives=None), name="days0-6", store=store)
    assert first["alerts"] == [] and first["stored_documents"] == 70
    second = run(tmp_path, day_docs("ACME", 7, 8, 10), name="day7", store=store)  # the turn day alone
    assert second["documents"] == 10 and second["stored_documents"] == 80
    assert {"ACME|negative_share|2024-03-08", "ACME|mean_sentiment|2024-03-08"} <= set(second["new_alerts"])
    again = run(tmp_path, day_docs("ACME", 7, 8, 10), name="day7-again", store=store)
    assert again["stored_documents"] == 80 and again["replaced"] == 10
    assert int(cell_of(tmp_path / "day7-again", "ACME", "2024-03-08")["count"]) == 10
    assert again["alerts"] == second["alerts"]
    # a corrected re-run of the day replaces it: the turn disappears
    fixed = run(tmp_path, day_docs("ACME", 7, 2, 10), name="day7-fixed", store=store)
    assert fixed["stored_documents"] == 80 and fixed["alerts"] == []


def test_streaming_in_small_batches_equals_one_batch(tmp_path):
    rows = history_rows(turn_negatives=8) + [doc("OTHER", d, k, 0.1 * (k % 5) - 0.2) for d in range(8) for k in range(12)]
    rows.append({**rows[5], "id": "repost", "text": "RT: " + rows[5]["text"].replace(" ", "  ") + " http://t.co/x"})
    path = write_jsonl(tmp_path / "posts.jsonl", rows)
    one = analyze([path], from_mapping({**_plain(config()), "batch_size": 10_000}), tmp_path / "one", store=tmp_path / "1.duckdb", models=SCORES)
    small = analyze([path], from_mapping({**_plain(config()), "batch_size": 3}), tmp_path / "small", store=tmp_path / "2.duckdb", models=SCORES)
    assert (tmp_path / "one" / "documents.jsonl").read_bytes() == (tmp_path / "small" / "documents.jsonl").read_bytes()
    assert one["alerts"] == small["alerts"] and one["overall"] == small["overall"] and one["duplicates"] == small["duplicates"] == 1


def _plain(cfg):
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items()}


# -- input -----------------------------------------------------------------------------------------


def test_a_malformed_row_stops_the_run_or_is_skipped(tmp_path):
    path = tmp_path / "posts.jsonl"
    good = [doc("ACME", 0, k, 0.5) for k in range(3)]
    lines = [json.dumps(good[0]), json.dumps(good[1]), "{not json", json.dumps({**good[2], "time": "yesterday"}),
             json.dumps({"id": "x", "time": good[0]["time"]}), json.dumps(good[2])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(NanoNLPError, match=r"posts\.jsonl, line 3: not JSON"):
        analyze([str(path)], config(), tmp_path / "stop", models=SCORES)
    assert not (tmp_path / "stop" / "documents.jsonl").exists()  # nothing half-written
    summary = analyze([str(path)], config(), tmp_path / "skip", models=SCORES, on_error="skip")
    assert [(e["line"], e["problem"].split(" ")[0]) for e in summary["skipped_rows"]] == [(3, "not"), (4, "time"), (5, "no")]
    assert summary["documents"] == 3


def test_csv_and_tsv_rows_with_wrong_field_counts_and_bad_bytes(tmp_path):
    csv_path = tmp_path / "posts.csv"
    csv_path.write_text("id,time,ticker,text\n1,2024-03-01,ACME,score=0.5 fine\n2,2024-03-01,ACME\n3,2024-03-01,ACME,\"score=-0.5, bad\"\n",
                        encoding="utf-8")
    with pytest.raises(NanoNLPError, match=r"posts\.csv, line 3: 3 fields where the header has 4"):
        analyze([str(csv_path)], config(), tmp_path / "a", models=SCORES)
    summary = analyze([str(csv_path)], config(), tmp_path / "b", models=SCORES, on_error="skip")
    assert summary["documents"] == 2
    tsv = tmp_path / "posts.tsv"
    tsv.write_bytes(b"id\ttime\tticker\ttext\n1\t2024-03-01\tACME\tscore=0.5 ok\n2\t2024-03-01\tACME\tscore=0.5 \xff\xfe\n")
    with pytest.raises(NanoNLPError, match=r"posts\.tsv, line 3: bytes that are not UTF-8"):
        analyze([str(tsv)], config(), tmp_path / "c", models=SCORES)


def test_globs_and_missing_inputs(tmp_path):
    for day in range(2):
        write_jsonl(tmp_path / f"day{day}.jsonl", day_docs("ACME", day, 1, 10))
    summary = analyze([str(tmp_path / "day*.jsonl")], config(), tmp_path / "out", models=SCORES)
    assert summary["documents"] == 20
    with pytest.raises(NanoNLPError, match="no file matches"):
        analyze([str(tmp_path / "nothing*.jsonl")], config(), tmp_path / "x", models=SCORES)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(NanoNLPError, match="no documents"):
        analyze([str(tmp_path / "empty.jsonl")], config(), tmp_path / "y", models=SCORES)


# -- per document ----------------------------------------------------------------------------------


def test_near_duplicates_in_english_and_chinese_count_once_per_entity():
    texts = ["招商银行发布业绩预警，净利润下降50%！", "招商银行发布业绩预警 净利润下降50% http://t.cn/abc", "招商银行宣布裁员计划，涉及三个分行",
             "Shares of ACME fell 10% after the profit warning.", "shares of ACME fell 10 % after the profit-warning!! https://t.co/z",
             "Shares of ACME rose 10% after the strong quarter."]
    sigs = signatures(texts, 5)
    dedup = Deduplicator(0.8, 100)
    marks = [dedup(str(i), sigs[i], ["X"]) for i in range(len(texts))]
    assert marks == [None, "0", None, None, "3", None]
    assert dedup("again", sigs[3], ["Y"]) is None  # the same post about another company counts for that one


def test_keyword_events_keep_the_matched_words():
    rules = config().events.rules
    events = KeywordEvents(rules)
    assert events("ACME announces LAYOFFS and job cuts") == {"layoffs": ["LAYOFFS", "job cuts"]}
    assert events("某公司宣布裁员，并发布业绩预警") == {"layoffs": ["裁员"], "profit_warning": ["业绩预警"]}
    assert events("the playoffs were fun") == {}  # whole words in Latin script


def test_sentiment_labels_map_by_name_and_unknown_sets_are_refused():
    assert sentiment_values(["Negative", "Neutral", "Positive"]) == {"Negative": -1.0, "Neutral": 0.0, "Positive": 1.0}
    assert sentiment_values(["负面", "中性", "正面"]) == {"负面": -1.0, "中性": 0.0, "正面": 1.0}
    assert sentiment_values(["0", "1", "2"]) == {"0": -1.0, "1": 0.0, "2": 1.0}
    assert sentiment_values(["0", "1"]) == {"0": -1.0, "1": 1.0}
    # a negative-or-not detector (FinNSP's names): not negative counts as neutral
    assert sentiment_values(["not negative", "negative"]) == {"not negative": 0.0, "negative": -1.0}
    assert sentiment_values(["非负面", "负面"]) == {"非负面": 0.0, "负面": -1.0}
    with pytest.raises(ConfigError, match="name no sentiment"):
        sentiment_values(["spam", "ham"])

    class Classifier:
        task, labels, multi_label = "classify", ["negative", "neutral", "positive"], False

        def predict(self, texts):
            return [{"label": "negative", "probability": 0.6, "probabilities": {"negative": 0.6, "neutral": 0.1, "positive": 0.3}}
                    for _ in texts]

    (result,) = SentimentModel(Classifier(), 0.1)(["x"])
    assert result == {"label": "negative", "score": pytest.approx(-0.3), "probability": 0.6}  # -0.6 + 0.3
    assert SentimentModel(ScoreInText(), 0.1)(["score=0.05", "score=-0.5"])[1]["label"] == "negative"
    assert SentimentModel(ScoreInText(), 0.1)(["score=0.05"])[0]["label"] == "neutral"


def test_a_trained_classifier_run_gives_the_sentiment(tmp_path, sentiment_run):  # noqa: F811
    rows = [{"id": str(i), "text": t, "company": "ACME"} for i, t in
            enumerate(["record loss and shares fall", "record profit and shares rise", "利润下降", "利润大增"])]
    path = write_jsonl(tmp_path / "posts.jsonl", rows)
    cfg = from_mapping({"fields": {"entity": "company", "id": "id"}, "sentiment": {"run": str(sentiment_run)}, "alerts": {"period": "all"}})
    summary = analyze([path], cfg, tmp_path / "out")
    documents = [json.loads(line) for line in (tmp_path / "out" / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    predictor = nanonlp.load(sentiment_run)
    expected = predictor.predict([r["text"] for r in rows])
    assert [d["sentiment"]["label"] for d in documents] == [e["label"] for e in expected] == ["negative", "positive", "negative", "positive"]
    for d, e in zip(documents, expected):
        assert d["sentiment"]["score"] == pytest.approx(e["probabilities"]["positive"] - e["probabilities"]["negative"], abs=1e-6)
    assert summary["overall"][0]["negative"] == 2 and summary["overall"][0]["period"] == "all"


# -- config and command line -----------------------------------------------------------------------


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'alerts.treshold'"):
        from_mapping({"alerts": {"treshold": 3}})
    with pytest.raises(ConfigError, match="alerts.period must be day, week or all"):
        from_mapping({"alerts": {"period": "month"}})
    with pytest.raises(ConfigError, match="'alerts.min_count' must be a whole number"):
        from_mapping({"alerts": {"min_count": "ten"}})
    with pytest.raises(ConfigError, match="event rule 'x' has no words"):
        from_mapping({"events": {"rules": {"x": {"words": []}}}})


def test_the_command_line_flags_win_over_the_yaml(tmp_path, capsys):
    write_jsonl(tmp_path / "posts.jsonl", history_rows(turn_negatives=8))
    yaml_path = tmp_path / "analyze.yaml"
    yaml_path.write_text("fields: {text: body, time: time, entity: ticker, id: id}\nalerts: {period: week, warmup: 5, baseline: 10}\n"
                         "events:\n  rules:\n    layoffs: {words: [layoffs], severe: true}\n", encoding="utf-8")
    cfg = load_analyze_config(yaml_path, {"fields.text": "text", "alerts.period": "day"})
    assert cfg.fields.text == "text" and cfg.alerts.period == "day" and cfg.alerts.warmup == 5
    with pytest.raises(SystemExit) as exit_info:  # the YAML's text field 'body' does not exist: a clear error, exit 1
        main(["analyze", str(tmp_path / "posts.jsonl"), "--config", str(yaml_path), "--out", str(tmp_path / "bad"), "--quiet"])
    assert exit_info.value.code == 1 and "no 'body' field" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", str(tmp_path / "posts.jsonl"), "--period", "week", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--time-field" in capsys.readouterr().err


def test_the_command_runs_end_to_end_with_a_trained_run(tmp_path, sentiment_run, capsys):  # noqa: F811
    rows = [doc("ACME", d, k, 0.0) for d in range(3) for k in range(4)]
    for r in rows:
        r["text"] = ("record loss and layoffs: " if r["id"].endswith("-0") else "record profit: ") + r["text"].split(" score=")[0]
    write_jsonl(tmp_path / "posts.jsonl", rows)
    main(["analyze", str(tmp_path / "posts.jsonl"), "--time-field", "time", "--entity-field", "ticker", "--id-field", "id",
          "--sentiment", str(sentiment_run), "--out", str(tmp_path / "out"), "--language", "zh"])
    err = capsys.readouterr().err
    assert "analysed 12 documents" in err
    for name in ("report.html", "documents.jsonl", "summary.json", "aggregates.csv", "alerts.csv", "events.csv", "history.duckdb"):
        assert (tmp_path / "out" / name).is_file(), name
    assert "舆情与风险监测" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    said = nanonlp.load(sentiment_run).predict([r["text"] for r in rows])
    assert summary["documents"] == 12 and sum(day["negative"] for day in summary["overall"]) == sum(s["label"] == "negative" for s in said)
    assert sum(s["label"] == "negative" for s in said) >= 1


# -- webhook ---------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    failures = 2
    received: list = []
    attempts = 0

    def do_POST(self):  # noqa: N802
        type(self).attempts += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).attempts <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_is_retried_and_an_alert_is_posted_once(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        cfg = from_mapping({**_plain(config()), "alerts": {**_plain(config())["alerts"], "webhook": url, "webhook_retries": 3}})
        store = tmp_path / "h.duckdb"
        summary = run(tmp_path, history_rows(turn_negatives=8), cfg=cfg, store=store)
        posted = sorted(a["key"] for a in _Receiver.received)
        assert posted == sorted(summary["new_alerts"]) and len(posted) == 2
        assert _Receiver.attempts == len(posted) + 2  # two refusals, retried with backoff
        assert sorted(summary["webhook"]["delivered"]) == posted and summary["webhook"]["failed"] == []
        assert _Receiver.received[0]["documents"] and "reason" in _Receiver.received[0]
        again = run(tmp_path, history_rows(turn_negatives=8), name="again", cfg=cfg, store=store)
        assert again["webhook"]["already_sent"] == 2 and len(_Receiver.received) == 2  # not posted twice
    finally:
        server.shutdown()


def test_an_unreachable_webhook_never_fails_the_run(tmp_path):
    cfg = from_mapping({**_plain(config()), "alerts": {**_plain(config())["alerts"], "webhook": "http://127.0.0.1:9/none",
                                                       "webhook_retries": 1, "webhook_timeout": 1.0}})
    summary = run(tmp_path, history_rows(turn_negatives=8), cfg=cfg)
    assert len(summary["webhook"]["failed"]) == 2 and (tmp_path / "out" / "report.html").is_file()


# -- POST /v1/analyze ------------------------------------------------------------------------------


def test_the_api_answers_per_document_and_alerts_against_stored_history(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nanonlp.serve.analyze import AnalysisService
    from nanonlp.serve.app import create_app

    store = tmp_path / "history.duckdb"
    run(tmp_path, history_rows(turn_negatives=None), store=store)
    service = AnalysisService(config(), store, models=SCORES)
    client = TestClient(create_app({}, analysis=service))
    batch = [{"text": r["text"], "time": r["time"], "id": r["id"], "entities": [r["ticker"]]} for r in day_docs("ACME", 7, 8, 10, "layoffs")]
    answer = client.post("/v1/analyze", json={"documents": batch})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["results"]) == 10 and body["results"][0]["sentiment"] == {"label": "negative", "score": -0.8, "probability": None}
    assert body["results"][0]["events"] == ["layoffs"] and body["results"][0]["entities"] == ["ACME"]
    assert {a["kind"] for a in body["alerts"]} == {"negative_share", "mean_sentiment"}
    calm = client.post("/v1/analyze", json={"documents": [{"text": "score=0.5 fine", "time": "2024-03-02T10:00:00Z", "entities": ["ACME"]}]})
    assert calm.status_code == 200 and calm.json()["alerts"] == []
    assert client.post("/v1/analyze", json={"documents": [{"text": "x", "time": "soon"}]}).status_code == 400
    assert client.post("/v1/analyze", json={"documents": []}).status_code == 422
    service.close()


# -- entities from a tagging run, events from a multi-label run ------------------------------------


def test_entities_from_a_tagger_and_events_from_a_multi_label_run(tmp_path):
    from test_tag import chinese_file, tag_config

    from nanonlp.config import load_config
    from nanonlp.train import fit

    fit(tag_config(tmp_path, chinese_file(tmp_path / "zh.txt"), out="ner", data__separator="\t"), quiet=True)
    data = tmp_path / "events.jsonl"
    examples = [("公司宣布裁员", ["layoffs"]), ("公司被起诉", ["lawsuit"]), ("公司宣布裁员并被起诉", ["layoffs", "lawsuit"]),
                ("天气很好", [])] * 6
    data.write_text("".join(json.dumps({"text": t, "label": labels}, ensure_ascii=False) + "\n" for t, labels in examples), encoding="utf-8")
    fit(load_config(None, ["--task=classify", f"--data.path={data}", f"--data.dev_path={data}", "--data.multi_label=true",
                           "--model.type=bag_of_ngrams", f"--train.out_dir={tmp_path / 'events'}",
                           "--train.max_steps=150", "--train.eval_interval=50", "--train.learning_rate=3e-2", "--train.warmup_steps=0",
                           "--train.dtype=float32", "--train.device=cpu", "--train.peak_tflops=1.0"]), quiet=True)
    texts = ["张三在北京工作。公司宣布裁员", "李四在上海工作。公司被起诉", "王五在广州工作。天气很好"]
    path = write_jsonl(tmp_path / "posts.jsonl", [{"text": t, "company": "环球"} for t in texts])
    cfg = from_mapping({"fields": {"entity": "company"}, "entities": {"run": str(tmp_path / "ner"), "types": ["PER"]},
                        "events": {"run": str(tmp_path / "events"), "severe": ["lawsuit"]}, "alerts": {"period": "all"}})
    summary = analyze([path], cfg, tmp_path / "out")
    documents = [json.loads(line) for line in (tmp_path / "out" / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    tagged = nanonlp.load(tmp_path / "ner").tag(texts)
    people = [[e["text"] for e in t["entities"] if e["type"] == "PER"] for t in tagged]
    assert [d["entities"] for d in documents] == [["环球"] + p for p in people]
    assert people[0] == ["张三"]  # the tagger learnt its toy set; LOC entities are filtered out by types
    predicted = nanonlp.load(tmp_path / "events").predict(texts)
    assert [d["events"] for d in documents] == [p["labels"] for p in predicted]
    assert documents[0]["events"] == ["layoffs"] and documents[1]["events"] == ["lawsuit"] and documents[2]["events"] == []
    assert documents[1]["event_scores"]["lawsuit"] > 0.5
    severe = [a for a in summary["alerts"] if a["kind"] == "event:lawsuit"]
    assert {a["entity"] for a in severe} == {"环球", "李四"}


def test_a_run_whose_labels_are_named_gives_the_sentiment_by_name(tmp_path):
    """Raw labels 0/1 named by data.label_names (as catalog runs are, e.g. sst2): the run answers
    `negative`/`positive` (or 负面/正面), and the analysis maps those names, not the raw labels."""
    from nanonlp.config import load_config
    from nanonlp.train import fit

    good, bad = ["shares rise", "record profit", "利润大增"], ["shares fall", "record loss", "利润下降"]
    data = tmp_path / "train.txt"
    data.write_text("".join(f"1 {t}\n" for t in good * 4) + "".join(f"0 {t}\n" for t in bad * 4), encoding="utf-8")
    values = {"data.path": data, "data.dev_path": data, "data.label_names": "0=negative/负面,1=positive/正面", "model.type": "bag_of_ngrams",
              "train.out_dir": tmp_path / "run", "train.max_steps": 60, "train.batch_size": 8, "train.eval_interval": 30,
              "train.learning_rate": 1e-2, "train.warmup_steps": 0, "train.dtype": "float32", "train.device": "cpu",
              "train.peak_tflops": 1.0, "classify.calibration_min_dev": 2}
    fit(load_config(None, ["--task=classify"] + [f"--{k}={v}" for k, v in values.items()]), quiet=True)
    predictor = nanonlp.load(tmp_path / "run")
    assert predictor.predict("shares rise", language="zh")["label"] in ("负面", "正面")
    rows = [{"id": str(i), "text": t, "company": "ACME"} for i, t in enumerate(["shares fall", "record profit", "利润下降"])]
    cfg = from_mapping({"fields": {"entity": "company", "id": "id"}, "sentiment": {"run": str(tmp_path / "run")}, "alerts": {"period": "all"}})
    analyze([write_jsonl(tmp_path / "posts.jsonl", rows)], cfg, tmp_path / "out")
    documents = [json.loads(line) for line in (tmp_path / "out" / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = predictor.predict([r["text"] for r in rows], language="en")
    assert [d["sentiment"]["label"] for d in documents] == [e["label"] for e in expected] == ["negative", "positive", "negative"]
    for d, e in zip(documents, expected):
        assert d["sentiment"]["score"] == pytest.approx(e["probabilities"]["positive"] - e["probabilities"]["negative"], abs=1e-6)


def test_a_regression_run_gives_its_score_as_the_sentiment(tmp_path):
    """A classification-task run with data.target regression answers {"score"}: the analysis takes
    that score (clipped to [-1, 1]) and names it by the neutral band."""
    from nanonlp.config import load_config
    from nanonlp.train import fit

    data = tmp_path / "train.txt"
    data.write_text("".join(f"0.8 {t}\n" for t in ["shares rise", "record profit"] * 6)
                    + "".join(f"-0.8 {t}\n" for t in ["shares fall", "record loss"] * 6), encoding="utf-8")
    values = {"data.path": data, "data.dev_path": data, "data.target": "regression", "model.type": "bag_of_ngrams",
              "train.out_dir": tmp_path / "run", "train.max_steps": 80, "train.batch_size": 8, "train.eval_interval": 40,
              "train.learning_rate": 1e-2, "train.warmup_steps": 0, "train.dtype": "float32", "train.device": "cpu",
              "train.peak_tflops": 1.0}
    fit(load_config(None, ["--task=classify"] + [f"--{k}={v}" for k, v in values.items()]), quiet=True)
    predictor = nanonlp.load(tmp_path / "run")
    rows = [{"id": str(i), "text": t, "company": "ACME"} for i, t in enumerate(["shares fall", "record profit"])]
    cfg = from_mapping({"fields": {"entity": "company", "id": "id"}, "sentiment": {"run": str(tmp_path / "run")}, "alerts": {"period": "all"}})
    analyze([write_jsonl(tmp_path / "posts.jsonl", rows)], cfg, tmp_path / "out")
    documents = [json.loads(line) for line in (tmp_path / "out" / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = [r["score"] for r in predictor.predict([r["text"] for r in rows])]
    assert [d["sentiment"]["score"] for d in documents] == pytest.approx(expected, abs=1e-6)
    assert expected[0] < -0.2 < 0.2 < expected[1]  # learned: the labels follow the band
    assert [d["sentiment"]["label"] for d in documents] == ["negative", "positive"]
    assert all(d["sentiment"]["probability"] is None for d in documents)

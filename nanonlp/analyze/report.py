"""The HTML report an analyst reads: one self-contained file (plots as inline SVG drawn by
matplotlib with text as paths, sparklines as inline SVG; no script, font or image fetched from
anywhere), in English or Chinese."""

from __future__ import annotations

import html
import io
import re
from datetime import date, datetime, timezone

from nanonlp.analyze.stats import ALL
from nanonlp.io import atomic_write_text

TEXT = {
    "en": {"title": "Opinion and risk monitoring", "generated": "Generated", "overview": "Overview", "documents": "documents in this run",
           "stored": "documents in the history", "entities": "entities", "alerts": "alerts", "new_alerts": "new in this run",
           "duplicates": "reposts (not counted)", "skipped": "malformed rows skipped", "days": "days covered",
           "over_time": "Sentiment over time", "over_time_note": "mean sentiment per {period} of the entities with the most documents; red points mark alerts",
           "entity_table": "Entities", "entity": "entity", "count": "documents", "mean": "mean sentiment (95% CI)",
           "negative": "negative share (95% CI)", "trend": "trend (negative share)", "top_events": "top events", "low": "few documents: low confidence",
           "event_table": "Events", "event": "event", "top_entities": "entities most concerned", "alert_list": "Alerts",
           "rank": "#", "severity": "severity", "kind": "kind", "period": "period", "reason": "reason", "evidence": "documents behind it",
           "no_alerts": "No alerts.", "no_events": "No events found.", "all": "all documents", "score": "score",
           "kinds": {"negative_share": "negative share", "mean_sentiment": "mean sentiment", "volume": "volume burst", "event": "severe event"},
           "new": "new", "more": "the {shown} entities with the most documents of {total}; aggregates.csv has them all"},
    "zh": {"title": "舆情与风险监测", "generated": "生成时间", "overview": "概览", "documents": "本次文档数", "stored": "历史文档数",
           "entities": "实体数", "alerts": "预警数", "new_alerts": "本次新增", "duplicates": "转发重复（不计入）", "skipped": "跳过的格式错误行",
           "days": "覆盖天数", "over_time": "情感走势", "over_time_note": "文档最多的实体每{period}的平均情感；红点为预警",
           "entity_table": "实体", "entity": "实体", "count": "文档数", "mean": "平均情感（95% 置信区间）",
           "negative": "负面占比（95% 置信区间）", "trend": "走势（负面占比）", "top_events": "主要事件", "low": "文档少：置信度低",
           "event_table": "事件", "event": "事件", "top_entities": "涉及最多的实体", "alert_list": "预警列表",
           "rank": "#", "severity": "严重度", "kind": "类型", "period": "时段", "reason": "原因", "evidence": "相关文档",
           "no_alerts": "无预警。", "no_events": "未发现事件。", "all": "全部文档", "score": "得分",
           "kinds": {"negative_share": "负面占比", "mean_sentiment": "平均情感", "volume": "声量突增", "event": "严重事件"},
           "new": "新", "more": "仅列出文档最多的 {shown} 个实体（共 {total} 个）；aggregates.csv 含全部实体"},
}
TABLE_ROWS = 60  # entities in the report's table, most documents first; aggregates.csv has them all
PERIOD_WORD = {"en": {"day": "day", "week": "week", "all": "period"}, "zh": {"day": "日", "week": "周", "all": "时段"}}

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC","Microsoft YaHei",sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px} h2{font-size:1.2em;margin:28px 0 10px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.meta{color:#5b6473;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:1.4em}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9em}
th,td{border:1px solid #d8dce3;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#eef0f4} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.low{color:#8a5a00} .neg{color:#b3261e} .pos{color:#1b6e3a}
mark{background:#ffe08a;padding:0 1px}
.sev{font-weight:bold} .doc{margin:3px 0;padding:3px 0;border-top:1px dotted #d8dce3} .doc:first-child{border-top:0}
.docmeta{color:#5b6473;font-size:.85em}
figure{margin:0;background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:6px}
figure svg{width:100%;height:auto}
.badge{display:inline-block;background:#b3261e;color:#fff;border-radius:3px;padding:0 4px;font-size:.8em}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def highlight(text: str, words: list[str]) -> str:
    """The text escaped, with every matched word in <mark> (longest first, case-insensitive)."""
    words = sorted({w for w in words if w}, key=len, reverse=True)
    if not words:
        return _e(text)
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(_e(text[last:match.start()]))
        out.append(f"<mark>{_e(match.group())}</mark>")
        last = match.end()
    out.append(_e(text[last:]))
    return "".join(out)


def sparkline(values: list[float | None], width: int = 120, height: int = 24) -> str:
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return ""
    span = max(len(values) - 1, 1)
    coords = " ".join(f"{i / span * (width - 2) + 1:.1f},{height - 1 - v * (height - 2):.1f}" for i, v in points)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg"><polyline fill="none" stroke="#b3261e" stroke-width="1.2" points="{coords}"/></svg>')


def _interval(value, low, high, percent: bool) -> str:
    if value is None:
        return "–"
    show = (lambda x: f"{x:.0%}") if percent else (lambda x: f"{x:+.2f}")
    if low is None or high is None:
        return show(value)
    return f"{show(value)} <span class=meta>[{show(low)}, {show(high)}]</span>"


def timeline_svg(rows: list[dict], alerts: list[dict], entities: list[str], language: str) -> str:
    """Mean sentiment per period of each entity, one small panel each, alerts as red points; inline SVG."""
    from nanonlp.plots import _fonts

    series = {e: sorted((r for r in rows if r["entity"] == e and r["period"] != "all" and r["mean_sentiment"] is not None),
                        key=lambda r: r["period"]) for e in entities}
    series = {e: s for e, s in series.items() if s}
    if not series:
        return ""
    with _fonts(list(series)) as plt:
        plt.rcParams["svg.fonttype"] = "path"  # text drawn as shapes: no font needed where the report is read
        fig, axes = plt.subplots(len(series), 1, figsize=(10, 1.7 * len(series) + 0.4), sharex=True, squeeze=False)
        for ax, (entity, points) in zip(axes[:, 0], series.items()):
            days = [date.fromisoformat(r["period"]) for r in points]
            ax.plot(days, [r["mean_sentiment"] for r in points], color="#33658a", linewidth=0.9)
            lows = [r["mean_low"] if r["mean_low"] is not None else r["mean_sentiment"] for r in points]
            highs = [r["mean_high"] if r["mean_high"] is not None else r["mean_sentiment"] for r in points]
            ax.fill_between(days, lows, highs, color="#33658a", alpha=0.15, linewidth=0)
            marked = [a for a in alerts if a["entity"] == entity and a["period"] != "all"]
            if marked:
                by_day = {r["period"]: r["mean_sentiment"] for r in points}
                xs = [date.fromisoformat(a["period"]) for a in marked]
                ys = [by_day.get(a["period"], 0.0) or 0.0 for a in marked]
                ax.scatter(xs, ys, color="#b3261e", zorder=3, s=22)
            ax.axhline(0, color="#999", linewidth=0.5)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel(entity if entity != ALL else TEXT[language]["all"], rotation=0, ha="right", va="center", fontsize=9)
            ax.tick_params(labelsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prologue and doctype: the SVG sits inside HTML


def write_report(path, summary: dict, rows: list[dict], whole: list[dict], events: list[dict], config) -> None:
    """`rows`: per entity and period; `whole`: per entity over all the history (the table's figures)."""
    language = config.language
    t = TEXT[language]
    period = config.alerts.period
    alerts = summary["alerts"]
    fresh = set(summary["new_alerts"])
    entire = {r["entity"]: r for r in whole}
    totals = {e: r["count"] for e, r in entire.items()}
    ranked = sorted((e for e in totals if e != ALL), key=lambda e: (-totals[e], e))
    top = [ALL] + ranked[: config.top_entities]
    parts = [f"<!DOCTYPE html>\n<html lang=\"{'zh-CN' if language == 'zh' else 'en'}\"><head><meta charset=\"utf-8\">",
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(t['title'])}</title><style>{STYLE}</style></head><body><main>",
             f"<h1>{_e(t['title'])}</h1>",
             f"<p class=meta>{_e(t['generated'])}: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>",
             f"<section id=overview><h2>{_e(t['overview'])}</h2><div class=cards>"]
    cards = [(t["documents"], summary["documents"]), (t["stored"], summary["stored_documents"]), (t["entities"], summary["entities"]),
             (t["alerts"], len(alerts)), (t["new_alerts"], len(fresh)), (t["duplicates"], summary["duplicates"]),
             (t["skipped"], len(summary["skipped_rows"])), (t["days"], len(summary["days"]))]
    parts += [f"<div class=card><b>{_e(f'{v:,}' if isinstance(v, int) else v)}</b>{_e(k)}</div>" for k, v in cards]
    parts.append("</div></section>")

    if period != "all":
        svg = timeline_svg(rows, alerts, top, language)
        if svg:
            note = t["over_time_note"].format(period=PERIOD_WORD[language][period])
            parts.append(f"<section id=timeline><h2>{_e(t['over_time'])}</h2><p class=meta>{_e(note)}</p><figure>{svg}</figure></section>")

    parts.append(f"<section id=entities><h2>{_e(t['entity_table'])}</h2><table id=entity-table><thead><tr>"
                 f"<th>{_e(t['entity'])}</th><th>{_e(t['count'])}</th><th>{_e(t['mean'])}</th><th>{_e(t['negative'])}</th>"
                 f"<th>{_e(t['trend'])}</th><th>{_e(t['top_events'])}</th></tr></thead><tbody>")
    for entity in [ALL] + ranked[:TABLE_ROWS]:
        own = sorted((r for r in rows if r["entity"] == entity), key=lambda r: r["period"])
        row = entire[entity]
        low = row["low_confidence"]
        name = t["all"] if entity == ALL else entity
        flag = f' <span class=low title="{_e(t["low"])}">⚠</span>' if low else ""
        trend = sparkline([r["negative_share"] for r in own]) if period != "all" else ""
        events_text = ", ".join(f"{_e(k)} ({v})" for k, v in list(row["top_events"].items())[:3])
        parts.append(f"<tr{' class=low' if low else ''}><td>{_e(name)}{flag}</td><td class=num>{row['count']:,}</td>"
                     f"<td class=num>{_interval(row['mean_sentiment'], row['mean_low'], row['mean_high'], False)}</td>"
                     f"<td class=num>{_interval(row['negative_share'], row['negative_low'], row['negative_high'], True)}</td>"
                     f"<td>{trend}</td><td>{events_text}</td></tr>")
    parts.append("</tbody></table>")
    if len(ranked) > TABLE_ROWS:
        parts.append(f"<p class=meta>{_e(t['more'].format(shown=TABLE_ROWS, total=len(ranked)))}</p>")
    parts.append("</section>")

    parts.append(f"<section id=events><h2>{_e(t['event_table'])}</h2>")
    if events:
        parts.append(f"<table id=event-table><thead><tr><th>{_e(t['event'])}</th><th>{_e(t['count'])}</th><th>{_e(t['entities'])}</th>"
                     f"<th>{_e(t['top_entities'])}</th></tr></thead><tbody>")
        for row in events:
            who = ", ".join(f"{_e(k)} ({v})" for k, v in row["top_entities"].items())
            parts.append(f"<tr><td>{_e(row['event'])}</td><td class=num>{row['documents']:,}</td><td class=num>{row['entities']}</td><td>{who}</td></tr>")
        parts.append("</tbody></table>")
    else:
        parts.append(f"<p>{_e(t['no_events'])}</p>")
    parts.append("</section>")

    parts.append(f"<section id=alerts><h2>{_e(t['alert_list'])}</h2>")
    parts.append(f"<table id=alert-table><thead><tr><th>{_e(t['rank'])}</th><th>{_e(t['severity'])}</th><th>{_e(t['entity'])}</th>"
                 f"<th>{_e(t['kind'])}</th><th>{_e(t['period'])}</th><th>{_e(t['reason'])}</th><th>{_e(t['evidence'])}</th></tr></thead><tbody>")
    for alert in alerts:
        kind = alert["kind"]
        kind_name = t["kinds"]["event"] + ": " + kind.split(":", 1)[1] if kind.startswith("event:") else t["kinds"].get(kind, kind)
        docs = []
        for doc in alert["documents"]:
            words = [w for found in doc["evidence"].values() for w in found]
            score = f"{t['score']} {doc['score']:+.2f}" if doc["score"] is not None else ""
            meta = " · ".join(_e(x) for x in (doc["time"], doc["source"], doc["id"], score) if x)
            docs.append(f"<div class=doc>{highlight(doc['text'], words)}<div class=docmeta>{meta}</div></div>")
        new = f" <span class=badge>{_e(t['new'])}</span>" if alert["key"] in fresh else ""
        parts.append(f"<tr data-key=\"{_e(alert['key'])}\"><td class=num>{alert['rank']}</td><td class='num sev'>{alert['severity']:.2f}</td>"
                     f"<td>{_e(alert['entity'])}{new}</td><td>{_e(kind_name)}</td><td class=num>{_e(alert['period'])}</td>"
                     f"<td>{_e(alert['reason'])}</td><td>{''.join(docs)}</td></tr>")
    parts.append("</tbody></table>")
    if not alerts:
        parts.append(f"<p>{_e(t['no_alerts'])}</p>")
    parts.append("</section></main></body></html>\n")
    atomic_write_text(path, "\n".join(parts))

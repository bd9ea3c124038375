"""The HTML report: well formed, self-contained, every alert in its table with the matched words
highlighted, in English and Chinese; and in headless Chromium without console errors."""

import os
import shutil
from html.parser import HTMLParser

import pytest

from nanonlp.analyze import analyze
from nanonlp.analyze.report import highlight

from analyze_fixtures import ScoreInText, config, day_docs, doc, history_rows, write_jsonl

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "area", "base", "embed", "param", "track"}
SVG_SELF_CLOSING_OK = True


class Checker(HTMLParser):
    """Tags balanced (void elements aside), and every URL the page could fetch listed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.urls, self.alert_rows, self.marks = [], [], [], [], []
        self.in_alerts = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith(("#", "data:")):
                self.urls.append(attrs[name])
        if tag == "table" and attrs.get("id") == "alert-table":
            self.in_alerts = True
        if self.in_alerts and tag == "tr" and "data-key" in attrs:
            self.alert_rows.append(attrs["data-key"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <path ... /> inside SVG
        pass

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "table":
            self.in_alerts = False

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "mark":
            self.marks.append(data)


def report_rows():
    rows = history_rows(turn_negatives=8)  # day 7: 8 negative documents with "layoffs announced"
    rows += [r for day in range(8) for r in day_docs("环球科技", day, 2, 10)]
    rows.append(doc("环球科技", 7, 50, -0.9, "环球科技发布业绩预警，并宣布裁员 <script>alert(1)</script>"))
    return rows


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    path = write_jsonl(folder / "posts.jsonl", report_rows())
    out = {}
    for language in ("en", "zh"):
        cfg = config()
        cfg.language = language
        summary = analyze([path], cfg, folder / language, models={"sentiment": ScoreInText()})
        out[language] = (folder / language / "report.html", summary)
    return out


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_report_is_well_formed_self_contained_and_holds_every_alert(reports, language):
    path, summary = reports[language]
    text = path.read_text(encoding="utf-8")
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.problems == [] and checker.stack == []
    assert checker.urls == []  # nothing to fetch: no script, stylesheet, font or image from elsewhere
    import re

    assert "<script" not in text and "@import" not in text and not re.search(r"url\((?!#)", text)  # url(#clip) is in the page
    assert len(summary["alerts"]) >= 3
    assert checker.alert_rows == [a["key"] for a in summary["alerts"]]  # every alert, in rank order
    kinds = {(a["entity"], a["kind"]) for a in summary["alerts"]}
    assert {("ACME", "negative_share"), ("环球科技", "event:profit_warning")} <= kinds
    assert "layoffs" in checker.marks and "业绩预警" in checker.marks and "裁员" in checker.marks  # matched words highlighted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # document text is escaped
    assert text.count("<svg") >= 1 + summary["entities"]  # the timeline and a sparkline per entity
    title = {"en": "Opinion and risk monitoring", "zh": "舆情与风险监测"}[language]
    assert f"<h1>{title}</h1>" in text


def test_highlight_escapes_and_marks_longest_words_first():
    assert highlight("Profit warning & profit", ["profit", "profit warning"]) == \
        "<mark>Profit warning</mark> &amp; <mark>profit</mark>"


sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: pip install playwright")
CHROMIUM = os.environ.get("NANONLP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to drive: apt-get install chromium (or set NANONLP_CHROMIUM)")
@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_report_opens_in_chromium_without_errors(reports, language):
    path, summary = reports[language]
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as err:  # an installed Chromium that cannot start here
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {err}")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, requests = [], []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#alert-table tbody tr")
        assert rows.count() == len(summary["alerts"])
        assert page.locator("#alert-table mark").count() >= 1
        assert page.locator("#timeline svg").first.is_visible()
        shot = path.with_name("report.png")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert requests == [path.as_uri()]  # the page itself, nothing else
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The web page in a real browser: headless Chromium (Debian's package) driven by Playwright."""

import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need Playwright: pip install playwright")
CHROMIUM = os.environ.get("NANONLP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium to drive: apt-get install chromium (or set NANONLP_CHROMIUM)", allow_module_level=True)

from nanonlp.serve.app import create_app  # noqa: E402

from test_serve import runs, tagger_and_translator  # noqa: E402,F401  (module fixtures: tiny trained runs)


@pytest.fixture(scope="module")
def server(runs, tagger_and_translator):  # noqa: F811
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app({**runs, **tagger_and_translator})
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    for _ in range(200):
        if instance.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as err:  # an installed Chromium that cannot start here
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {err}")
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone-sized window
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("section[data-model='verse']")
    yield page
    context.close()


def test_a_prompt_streams_its_continuation_into_the_page(page):
    panel = page.locator("section[data-model='verse']")
    panel.locator("textarea").fill("To be")
    panel.locator("input[aria-label='tokens']").fill("30")
    panel.locator("textarea").press("Control+Enter")  # the keyboard submits
    output = panel.locator(".output")
    page.wait_for_function("document.querySelector(\"section[data-model='verse'] .output\").textContent.length >= 5 + 30")
    text = output.text_content()
    assert text.startswith("To be") and len(text) == len("To be") + 30
    assert panel.locator(".error").is_hidden()


def test_classifying_a_sentence_shows_probability_bars(page):
    panel = page.locator("section[data-model='sentiment']")
    panel.locator("textarea").fill("so good\nso bad")
    panel.locator("button").click()
    page.wait_for_selector("section[data-model='sentiment'] .bar")
    results = panel.locator(".result")
    assert results.count() == 2
    assert results.nth(0).locator(".bar").count() == 2  # one bar per label
    assert results.nth(0).locator(".chosen").get_attribute("data-label") == "pos"
    assert results.nth(1).locator(".chosen").get_attribute("data-label") == "neg"
    width = results.nth(0).locator(".chosen .fill").evaluate("e => e.style.width")
    assert float(width.rstrip("%")) > 50


def test_an_error_from_the_server_appears_in_the_page(page):
    panel = page.locator("section[data-model='verse']")
    panel.locator("input[aria-label='tokens']").fill("100000")  # over the server's generation budget
    panel.locator("textarea").fill("To be")
    panel.locator("button").click()
    error = panel.locator(".error")
    error.wait_for(state="visible")
    assert error.text_content().startswith("422") and "over this server's limit" in error.text_content()


def test_the_page_fits_a_phone_window_and_holds_the_chat_panel(page):
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    assert page.locator("section[data-task='chat']").count() == 1


def test_entities_are_highlighted_and_translations_shown(page, tagger_and_translator):  # noqa: F811
    from test_translate import toy_pairs

    panel = page.locator("section[data-model='ner']")
    panel.locator("textarea").fill("😀 李四在上海工作。")  # an emoji first: offsets count code points, not UTF-16 units
    panel.locator("button").click()
    page.wait_for_selector("section[data-model='ner'] mark")
    marks = {m.get_attribute("data-type"): m.evaluate("e => e.firstChild.textContent") for m in panel.locator("mark").all()}
    assert marks == {"PER": "李四", "LOC": "上海"}
    assert panel.locator(".result").text_content().replace("PER", "").replace("LOC", "") == "😀 李四在上海工作。"
    source = toy_pairs()[0].source
    panel = page.locator("section[data-model='mt']")
    panel.locator("textarea").fill(source)
    panel.locator("button").click()
    page.wait_for_function("document.querySelector(\"section[data-model='mt'] .output\").textContent.length > 0")
    assert panel.locator(".output").text_content() == tagger_and_translator["mt"].translate(source, beam_size=5)


def test_a_new_tasks_panels_are_built_from_its_declaration(browser):
    """The page knows kinds of result, not tasks: a predictor of a task the project does not have gets
    its panels (a text box for its batch, an input per labelled field) from /v1/models alone."""
    from test_serve_chat import live_server
    from test_serve_routes import WordCounter

    with live_server(create_app({"counter": WordCounter()})) as url:
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        page.goto(url + "/")
        count = page.locator("section[data-endpoint='/v1/count']")
        count.wait_for()
        count.locator("textarea").fill("one two\na b c d e")
        count.locator("textarea").press("Control+Enter")
        page.wait_for_function("document.querySelector(\"section[data-endpoint='/v1/count'] .output\").textContent.length > 0")
        assert count.locator(".output").text_content() == "2\n3  (truncated)"
        repeat = page.locator("section[data-endpoint='/v1/repeat']")
        assert repeat.locator("textarea").count() == 0 and repeat.locator("h2").text_content() == "countercount"
        repeat.locator("input[aria-label='text']").fill("hi")
        repeat.locator("input[aria-label='times']").fill("4")
        repeat.locator("button").click()
        page.wait_for_function("document.querySelector(\"section[data-endpoint='/v1/repeat'] .output\").textContent.length > 0")
        assert repeat.locator(".output").text_content() == "hi hi hi hi"
        repeat.locator("input[aria-label='times']").fill("3")  # odd: the field's own check refuses it, and the page says so
        repeat.locator("button").click()
        repeat.locator(".error").wait_for(state="visible")
        assert repeat.locator(".error").text_content().startswith("422: times: Value error, times must be even")
        context.close()

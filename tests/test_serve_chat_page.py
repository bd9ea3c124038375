"""The page's chat panel in headless Chromium (Debian's package, driven by Playwright; the setup and the
`browser` fixture are tests/test_serve_page.py's): a form filled over three turns, angry turns that hand
off to a person (a visible banner, the input closed), the conversation kept over a reload, and Chinese."""

import pytest

from test_serve_page import browser  # noqa: F401  (skips the module, saying why, without Playwright or Chromium)

import nanonlp.dialogue as dialogue  # noqa: E402
from nanonlp.serve.app import create_app  # noqa: E402

from dialogue_runs import trained_run  # noqa: E402
from test_serve_chat import CONFIRM, live_server  # noqa: E402


@pytest.fixture(scope="module")
def assistants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat_page")
    return {"bank": dialogue.load(trained_run("tiny_en"), sessions=tmp / "bank.sqlite"),
            "shop": dialogue.load(trained_run("tiny_zh"), sessions=tmp / "shop.sqlite")}


@pytest.fixture(scope="module")
def server(assistants):
    with live_server(create_app(assistants)) as url:
        yield url


@pytest.fixture
def page(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone-sized window
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("section[data-model='bank'] .chat-form")
    yield page
    context.close()


def replies(panel) -> list[str]:
    return [t.strip() for t in panel.locator(".msg.bot:not(.pending) .text").all_text_contents()]


def send(page, panel, text: str, by_quick_reply: bool = False) -> str:
    """Say `text` (typed and sent with Enter, or by clicking its quick reply); the assistant's answer."""
    before = panel.locator(".msg.bot:not(.pending)").count()
    if by_quick_reply:
        panel.locator("button.quick", has_text=text).click()
    else:
        panel.locator("input.message").fill(text)
        panel.locator("input.message").press("Enter")
    panel.locator(".msg.bot:not(.pending)").nth(before).wait_for(timeout=20000)
    return replies(panel)[-1]


def test_a_form_over_three_turns_then_angry_turns_hand_off(page, assistants, tmp_path):
    panel = page.locator("section[data-model='bank']")
    assert panel.locator("h2").text_content().startswith("tiny bank")
    # before the first turn, the quick replies are what the assistant can do
    assert panel.locator("button.quick").all_text_contents() == ["say hello", "block a lost or stolen card", "talk to a person"]
    assert send(page, panel, "I lost my card") == "Which card is it, visa, mastercard or amex?"
    assert panel.locator("button.quick").all_text_contents() == ["visa", "mastercard", "amex"]  # the reply's suggestions
    assert send(page, panel, "visa", by_quick_reply=True) == "Shall I block your visa card now? (yes or no)"
    assert send(page, panel, CONFIRM) == "Done: your visa card is blocked."
    assert panel.locator(".msg.user .text").all_text_contents() == ["I lost my card", "visa", CONFIRM]
    assert panel.locator(".handoff").is_hidden()

    send(page, panel, "this is terrible")
    assert panel.locator(".handoff").is_hidden() and panel.locator("input.message").is_enabled()  # one negative turn is not enough
    handoff_message = assistants["bank"].spec.settings["handoff"]["message"]
    assert send(page, panel, "you are useless") == handoff_message
    banner = panel.locator(".handoff")
    banner.wait_for(state="visible")
    assert banner.text_content() == "Handed over to a person: they will read this conversation (5 turns) and reply here."
    assert panel.locator("input.message").is_disabled() and panel.locator("button.send").is_disabled()
    assert panel.locator("input.message").get_attribute("placeholder") == "A person will reply here."
    assert panel.locator("button.quick").count() == 0
    shot = tmp_path / "chat-handoff.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000

    # the server holds the same conversation the page shows
    session_id = page.evaluate("JSON.parse(sessionStorage.getItem('nanonlp-chat-bank')).session_id")
    assert [t["assistant"] for t in assistants["bank"].transcript(session_id)] == replies(panel)

    page.reload()  # the page keeps the conversation (sessionStorage) and its handoff state
    page.wait_for_selector("section[data-model='bank'] .msg.bot")
    assert replies(panel)[-1] == handoff_message and len(replies(panel)) == 5
    assert panel.locator(".handoff").is_visible() and panel.locator("input.message").is_disabled()

    panel.locator("button.new-chat").click()  # a new conversation opens the input again, under a new session
    assert panel.locator(".msg").count() == 0 and panel.locator(".handoff").is_hidden()
    assert send(page, panel, "hello") in ("Hello! How can I help?", "Hi! What can I do for you?")
    assert page.evaluate("JSON.parse(sessionStorage.getItem('nanonlp-chat-bank')).session_id") != session_id


def test_chinese_renders_and_an_expired_session_is_said(page, assistants):
    panel = page.locator("section[data-model='shop']")
    assert panel.get_attribute("lang") == "zh-CN" and panel.locator("button.send").text_content() == "发送"
    assert send(page, panel, "我要退货") == "请问您的订单号是多少？"
    box = panel.locator(".msg.bot .text").last.bounding_box()
    assert box["width"] > 50 and box["height"] > 10  # laid out as text, not collapsed
    session_id = page.evaluate("JSON.parse(sessionStorage.getItem('nanonlp-chat-shop')).session_id")
    assistants["shop"].reset(session_id)  # the server forgets it (as expiry would)
    send(page, panel, "你好")
    assert panel.locator(".msg.note").text_content() == "之前的对话已过期，这是一段新的对话。"


def test_an_error_keeps_the_message_and_says_why(page):
    panel = page.locator("section[data-model='bank']")
    page.route("**/v1/chat", lambda route: route.fulfill(status=503, content_type="application/json",
                                                         body='{"detail": "model \'bank\' has a full queue; retry shortly."}'))
    panel.locator("input.message").fill("I lost my card")
    panel.locator("input.message").press("Enter")
    error = panel.locator(".error")
    error.wait_for(state="visible")
    assert error.text_content() == "503: model 'bank' has a full queue; retry shortly."
    assert panel.locator("input.message").input_value() == "I lost my card" and panel.locator(".msg").count() == 0

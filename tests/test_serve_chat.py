"""POST /v1/chat over a tiny trained assistant (tests/fixtures_dialogue, trained once in dialogue_runs.py):
forms over three turns, handoff with the transcript, schema errors as 422s, sessions apart over HTTP and
kept across a new server on the same SQLite file, the API key, /v1/models, and turns off the event loop."""

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="nanonlp serve needs FastAPI: pip install 'nanonlp[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import nanonlp  # noqa: E402
import nanonlp.dialogue as dialogue  # noqa: E402
from nanonlp.dialogue.assistant import Assistant  # noqa: E402
from nanonlp.errors import ConfigError  # noqa: E402
from nanonlp.serve import load_runs  # noqa: E402
from nanonlp.serve.app import ServeSettings, create_app  # noqa: E402

from dialogue_runs import trained_run  # noqa: E402

# The confirmation the tests give: "yes" alone reads as negative to the tiny fixture's sentiment model, and
# two negative turns in a row hand off, so an "amex" then "yes" would hand off instead of finishing the form.
CONFIRM = "yes, block it"
TURN_KEYS = {"model", "session_id", "reply", "intent", "confidence", "entities", "slots", "sentiment", "action", "handoff", "source",
             "suggestions"}


@pytest.fixture(scope="module")
def en_run():
    return trained_run("tiny_en")


@pytest.fixture(scope="module")
def zh_run():
    return trained_run("tiny_zh")


@contextlib.contextmanager
def live_server(app):
    """`app` under a real uvicorn on a free loopback port, in a thread; yields the base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 20 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def bank(en_run, tmp_path):
    return dialogue.load(en_run, sessions=tmp_path / "sessions.sqlite")


@pytest.fixture
def client(bank):
    with TestClient(create_app({"bank": bank})) as c:
        yield c


def chat(client, message, session_id=None, **extra):
    body = {"message": message, **extra}
    if session_id is not None:
        body["session_id"] = session_id
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_form_over_three_turns(client):
    first = chat(client, "I lost my card")
    assert set(first) == TURN_KEYS and first["model"] == "bank"
    assert (first["intent"], first["action"], first["source"], first["handoff"]) == ("block_card", "ask_card_type", "template", False)
    assert first["reply"] == "Which card is it, visa, mastercard or amex?" and first["suggestions"] == ["visa", "mastercard", "amex"]
    second = chat(client, "visa", first["session_id"])
    assert second["session_id"] == first["session_id"] and second["slots"] == {"card_type": "visa"}
    assert second["reply"] == "Shall I block your visa card now? (yes or no)"
    third = chat(client, "yes", first["session_id"])
    assert third["reply"] == "Done: your visa card is blocked." and third["slots"] == {"card_type": "visa", "confirm": "yes"}
    assert "transcript" not in third  # only a handoff carries the transcript


def test_angry_turns_hand_off_with_the_transcript(client, bank):
    first = chat(client, "I lost my card")
    chat(client, "visa", first["session_id"])
    assert chat(client, CONFIRM, first["session_id"])["action"] == "utter_card_blocked"
    calm = chat(client, "this is terrible", first["session_id"])
    assert calm["handoff"] is False and calm["sentiment"]["label"] == "negative"  # the fixture hands off after 2 negative turns
    angry = chat(client, "you are useless", first["session_id"])
    assert angry["handoff"] is True and angry["action"] == "action_handoff"
    assert angry["reply"] == bank.spec.settings["handoff"]["message"]
    assert [t["user"] for t in angry["transcript"]] == ["I lost my card", "visa", CONFIRM, "this is terrible", "you are useless"]
    assert angry["transcript"] == bank.transcript(first["session_id"])  # what the store holds, not a copy of the page's


def test_chinese_turns_come_back_as_text(zh_run, tmp_path):
    with TestClient(create_app({"shop": dialogue.load(zh_run, sessions=tmp_path / "zh.sqlite")})) as c:
        response = c.post("/v1/chat", json={"message": "我要退货"})
        assert "请问您的订单号是多少？" in response.content.decode("utf-8")  # UTF-8 on the wire, not \\u escapes
        first = response.json()
        second = chat(c, "订单号是A54321", first["session_id"])
        assert second["slots"] == {"order_id": "A54321"} and second["action"] == "ask_reason"
        assert c.get("/v1/models").json()["models"][0]["language"] == "zh"


@pytest.mark.parametrize("body, field, says", [
    ({}, "message", "Field required"),
    ({"message": 42}, "message", "string"),  # strict: a number is not read as the text "42"
    ({"message": ["hello"]}, "message", "string"),
    ({"message": ""}, "message", "at least 1 character"),
    ({"message": "   \n"}, "message", "only white space"),
    ({"message": "a" * 2001}, "message", "at most 2000 characters"),
    ({"message": "hi", "session_id": 7}, "session_id", "string"),
    ({"message": "hi", "session_id": "../../etc/passwd"}, "session_id", "pattern"),
    ({"message": "hi", "session_id": "x" * 129}, "session_id", "pattern"),
    ({"message": "hi", "sesion_id": "abc"}, "sesion_id", "Extra inputs"),
])
def test_schema_errors_are_422_naming_the_field(client, body, field, says):
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", field] and says in detail[0]["msg"]


def test_bad_requests_that_are_not_schema_errors(client):
    assert client.post("/v1/chat", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    response = client.post("/v1/chat", json={"model": "nobody", "message": "hi"})
    assert response.status_code == 404 and "no model named 'nobody'" in response.json()["detail"]


def test_a_chat_needs_an_assistant_and_other_endpoints_refuse_it(en_run, bank):
    with TestClient(create_app({})) as c:
        response = c.post("/v1/chat", json={"message": "hi"})
        assert response.status_code == 404 and "assistant run" in response.json()["detail"]
    with TestClient(create_app({"bank": bank})) as c:
        response = c.post("/v1/classify", json={"model": "bank", "texts": ["hi"]})
        assert response.status_code == 400 and "assistant run" in response.json()["detail"]


def test_two_sessions_over_http_never_see_each_other(client):
    alice = chat(client, "I lost my card")
    bob = chat(client, "block my mastercard")
    assert alice["session_id"] != bob["session_id"] and bob["slots"] == {"card_type": "mastercard"}
    assert chat(client, "amex", alice["session_id"])["slots"] == {"card_type": "amex"}
    assert chat(client, CONFIRM, bob["session_id"])["reply"] == "Done: your mastercard card is blocked."
    assert chat(client, CONFIRM, alice["session_id"])["reply"] == "Done: your amex card is blocked."


def test_concurrent_conversations_each_finish_their_form(client):
    cards = ["visa", "mastercard", "amex"] * 3

    def converse(card):
        first = chat(client, "I lost my card")
        chat(client, card, first["session_id"])
        return chat(client, CONFIRM, first["session_id"])["reply"]

    with ThreadPoolExecutor(len(cards)) as pool:
        replies = list(pool.map(converse, cards))
    assert replies == [f"Done: your {card} card is blocked." for card in cards]


def test_an_unknown_session_id_starts_a_new_session(client):
    turn = chat(client, "I lost my card", "made-up-but-well-formed")
    assert turn["session_id"] != "made-up-but-well-formed" and len(turn["session_id"]) >= 22
    assert turn["action"] == "ask_card_type" and turn["slots"] == {}


def test_a_session_continues_on_a_new_server_over_the_same_sqlite_file(en_run, tmp_path):
    path = tmp_path / "kept.sqlite"
    with TestClient(create_app({"bank": dialogue.load(en_run, sessions=path)})) as first_server:
        first = chat(first_server, "I lost my card")
        chat(first_server, "amex", first["session_id"])
    assistant = load_runs({"bank": en_run}, "cpu", str(path))["bank"]  # as `nanonlp serve RUN --sessions PATH` loads it
    assert assistant.store.path == path
    with TestClient(create_app({"bank": assistant})) as second_server:
        done = chat(second_server, CONFIRM, first["session_id"])
    assert done["session_id"] == first["session_id"] and done["reply"] == "Done: your amex card is blocked."
    assert [t["user"] for t in assistant.transcript(first["session_id"])] == ["I lost my card", "amex", CONFIRM]


def test_sessions_option_is_refused_where_it_cannot_apply(en_run, tmp_path):
    with pytest.raises(ConfigError, match="none of the mounted runs is an assistant"):
        load_runs({}, "cpu", str(tmp_path / "s.sqlite"))
    with pytest.raises(ConfigError, match="2 assistants are mounted"):
        load_runs({"a": en_run, "b": en_run}, "cpu", str(tmp_path / "s.sqlite"))
    assert load_runs({"bank": en_run}, "cpu")["bank"].store.path == en_run / "sessions.sqlite"  # the default: RUN/sessions.sqlite


def test_models_describes_the_assistant(client, bank):
    described = {m["name"]: m for m in client.get("/v1/models").json()["models"]}["bank"]
    assert described["task"] == "assistant" and described["language"] == "en" and described["assistant"] == "tiny bank"
    assert described["intents"] == ["greet", "block_card", "inform", "thanks", "human"]  # the fixture's, in its order
    assert described["forms"] == {"block_card_form": ["card_type", "confirm"]} and described["generative"] is False
    assert described["suggestions"] == ["say hello", "block a lost or stolen card", "talk to a person"]
    assert described["max_message_chars"] == 2000
    assert "/v1/chat" in client.get("/openapi.json").json()["paths"]


def test_nanonlp_load_of_an_assistant_run_mounts_on_chat(en_run):
    with TestClient(create_app({"bank": nanonlp.load(en_run)})) as c:
        assert c.get("/v1/models").json()["models"][0]["task"] == "assistant"


def test_the_api_key_guards_chat(bank):
    with TestClient(create_app({"bank": bank}, ServeSettings(api_key="s3cret"))) as c:
        assert c.post("/v1/chat", json={"message": "hello"}).status_code == 401
        wrong = c.post("/v1/chat", json={"message": "hello"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = c.post("/v1/chat", json={"message": "hello"}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["action"] == "utter_greet"


class Held:
    """The real assistant, whose turns wait for `release` first: a slow turn, to see that the server still answers."""

    task = "assistant"
    endpoints, describe = Assistant.endpoints, Assistant.describe  # serves what an assistant serves

    def __init__(self, assistant):
        self.assistant, self.spec = assistant, assistant.spec
        self.entered, self.release = threading.Event(), threading.Event()

    def respond(self, message, session_id=None):
        self.entered.set()
        assert self.release.wait(20)
        return self.assistant.respond(message, session_id)

    def transcript(self, session_id):
        return self.assistant.transcript(session_id)

    def suggestions(self):
        return self.assistant.suggestions()


def test_a_turn_runs_off_the_event_loop(bank):
    held = Held(bank)
    with live_server(create_app({"bank": held})) as url, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, url + "/v1/chat", json={"message": "hello"}, timeout=30)
        assert held.entered.wait(20)
        # the turn is blocked in its thread; a loop-bound server could not answer anything now
        assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
        assert httpx.get(url + "/v1/models", timeout=5).json()["models"][0]["task"] == "assistant"
        held.release.set()
        assert pending.result(timeout=30).json()["action"] == "utter_greet"


def test_a_turn_over_the_time_limit_is_a_504_and_the_server_carries_on(bank):
    held = Held(bank)
    with TestClient(create_app({"bank": held}, ServeSettings(timeout_s=0.3))) as c:
        response = c.post("/v1/chat", json={"message": "hello"})
        assert response.status_code == 504 and "0.3 s" in response.json()["detail"]
        held.release.set()
        assert c.post("/v1/chat", json={"message": "hello"}).status_code == 200



def test_nanonlp_serve_refuses_one_sessions_store_for_two_assistants(en_run, tmp_path, capsys):
    """Through the command, not only load_runs: every mounted run is checked at once, before any loads."""
    from nanonlp.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["serve", f"a={en_run}", f"b={en_run}", "--sessions", str(tmp_path / "s.sqlite")])
    assert caught.value.code == 2 and "2 assistants are mounted" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()  # refused before a store was opened

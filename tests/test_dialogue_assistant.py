"""Trained tiny assistants (tests/fixtures_dialogue, trained once in tests/dialogue_runs.py) answering
whole conversations in English and Chinese: forms over three turns, FAQ and fallback, handoff,
sessions across a restart, isolation and expiry, concurrency, and `nanonlp eval --conversations`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nanonlp
import nanonlp.dialogue as dialogue
from dialogue_runs import FIXTURES, trained_run

KEYS = {"session_id", "reply", "intent", "confidence", "entities", "slots", "sentiment", "action", "handoff", "source", "suggestions"}


@pytest.fixture(scope="module")
def en_run():
    return trained_run("tiny_en")


@pytest.fixture(scope="module")
def zh_run():
    return trained_run("tiny_zh")


def test_english_form_over_three_turns(en_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    first = bot.respond("I lost my card")
    assert set(first) == KEYS
    assert (first["intent"], first["action"], first["source"]) == ("block_card", "ask_card_type", "template")
    assert first["reply"] == "Which card is it, visa, mastercard or amex?" and first["suggestions"] == ["visa", "mastercard", "amex"]
    second = bot.respond("visa", session_id=first["session_id"])
    assert second["session_id"] == first["session_id"]
    assert second["action"] == "ask_confirm" and second["slots"] == {"card_type": "visa"}
    assert second["reply"] == "Shall I block your visa card now? (yes or no)"
    third = bot.respond("yes", session_id=first["session_id"])
    assert third["action"] == "utter_card_blocked" and third["reply"] == "Done: your visa card is blocked."
    assert third["slots"] == {"card_type": "visa", "confirm": "yes"} and third["handoff"] is False
    assert [t["action"] for t in bot.transcript(first["session_id"])] == ["ask_card_type", "ask_confirm", "utter_card_blocked"]


def test_chinese_form_over_three_turns(zh_run, tmp_path):
    bot = dialogue.load(zh_run, sessions=tmp_path / "s.sqlite")
    first = bot.respond("我要退货")
    assert first["intent"] == "return_goods" and first["action"] == "ask_order_id" and first["reply"] == "请问您的订单号是多少？"
    second = bot.respond("订单号是A54321", session_id=first["session_id"])
    assert second["action"] == "ask_reason" and second["slots"] == {"order_id": "A54321"}
    third = bot.respond("质量问题", session_id=first["session_id"])
    assert third["action"] == "utter_return_done" and third["reply"] == "已为订单A54321提交退货申请，原因：质量问题。"


def test_invalid_value_is_asked_again_with_the_reason(en_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    first = bot.respond("please block my card")
    second = bot.respond("diners", session_id=first["session_id"])
    assert second["action"] == "ask_card_type" and second["slots"] == {}
    assert second["reply"] == "Which card is it, visa, mastercard or amex?"  # not a card type the assistant knows: asked again
    third = bot.respond("the master card", session_id=first["session_id"])  # a synonym
    assert third["slots"] == {"card_type": "mastercard"} and third["action"] == "ask_confirm"


def test_faq_and_fallback_when_out_of_scope(en_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    bot.intent_threshold = 1.01  # every turn out of scope: the FAQ or the fallback answers
    faq = bot.respond("when are you open")
    assert (faq["intent"], faq["action"], faq["source"]) == ("out_of_scope", "action_faq", "faq")
    assert faq["reply"] == "We are open 9 to 5, Monday to Friday."
    lost = bot.respond("qwxz vbnm", session_id=faq["session_id"])
    assert lost["source"] == "fallback" and lost["action"] == "action_fallback"
    assert lost["suggestions"] == ["say hello", "block a lost or stolen card", "talk to a person"]
    assert lost["reply"] == "Sorry, I did not understand. Here is what I can do: say hello; block a lost or stolen card; talk to a person"


def test_handoff_on_request_and_on_negative_turns(en_run, zh_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    hello = bot.respond("hello")
    person = bot.respond("connect me to a human", session_id=hello["session_id"])
    assert person["handoff"] is True and person["action"] == "action_handoff"
    assert [t["user"] for t in person["transcript"]] == ["hello", "connect me to a human"]
    one = bot.respond("this is terrible")
    assert one["sentiment"]["label"] == "negative" and one["handoff"] is False  # one negative turn is not enough
    two = bot.respond("you are useless", session_id=one["session_id"])
    assert two["handoff"] is True and two["sentiment"]["negative"] >= 0.6
    zh = dialogue.load(zh_run, sessions=tmp_path / "z.sqlite")
    complaint = zh.respond("我要投诉")
    assert complaint["handoff"] is True and complaint["reply"] == "我为您转接人工客服，他们会看到我们的对话记录。"


def test_sessions_survive_a_restart_and_stay_apart(en_run, tmp_path):
    path = tmp_path / "sessions.sqlite"
    bot = dialogue.load(en_run, sessions=path)
    alice = bot.respond("I lost my card")
    bob = bot.respond("block my mastercard")
    assert alice["session_id"] != bob["session_id"] and bob["slots"] == {"card_type": "mastercard"}
    assert bot.respond("amex", session_id=alice["session_id"])["slots"] == {"card_type": "amex"}
    del bot
    restarted = dialogue.load(en_run, sessions=path)  # a new process object on the same file
    done = restarted.respond("yes", session_id=alice["session_id"])
    assert done["reply"] == "Done: your amex card is blocked."
    assert restarted.state(bob["session_id"]).slots == {"card_type": "mastercard"}  # untouched by alice's turns


def test_unknown_and_expired_sessions_start_afresh(en_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    guess = bot.respond("hello", session_id="made-up-id")
    assert guess["session_id"] != "made-up-id" and len(guess["session_id"]) >= 22
    first = bot.respond("I lost my card")
    state = bot.state(first["session_id"])
    state.updated = time.time() - bot.store.expiry - 1
    bot.store.put(state)
    later = bot.respond("visa", session_id=first["session_id"])
    assert later["session_id"] != first["session_id"] and later["action"] != "ask_confirm"


def test_bad_messages_are_clear_errors(en_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    with pytest.raises(nanonlp.NanoNLPError, match="empty"):
        bot.respond("   ")
    with pytest.raises(nanonlp.NanoNLPError, match="limit is 2000"):
        bot.respond("a" * 2001)


def test_concurrent_sessions_each_finish_their_form(en_run, tmp_path):
    bot = dialogue.load(en_run, sessions=tmp_path / "s.sqlite")
    cards = ["visa", "mastercard", "amex"] * 3
    results, errors = {}, []

    def converse(i: int) -> None:
        try:
            turn = bot.respond("I lost my card")
            bot.respond(cards[i], session_id=turn["session_id"])
            results[i] = bot.respond("yes", session_id=turn["session_id"])["reply"]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=converse, args=(i,)) for i in range(len(cards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {i: f"Done: your {card} card is blocked." for i, card in enumerate(cards)}


def test_nanonlp_load_gives_the_assistant(en_run):
    assistant = nanonlp.load(en_run)
    from nanonlp.dialogue.assistant import Assistant

    assert isinstance(assistant, Assistant)
    assert assistant.respond("hello")["action"] == "utter_greet"
    understood = json.loads((en_run / "understanding.json").read_text())
    assert 0.0 <= understood["intent_threshold"] < 1.0 and understood["tuning"]["held_out"]["in_scope"] > 0


def test_eval_replays_conversations(en_run):
    result = subprocess.run([sys.executable, "-m", "nanonlp", "eval", str(en_run), "--conversations",
                             str(FIXTURES / "tiny_en_conversations.yaml"), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["conversations"] == 2 and report["turns"] == 5
    assert report["intent_accuracy"] == 1.0 and report["slot_f1"] == 1.0
    assert report["action_accuracy"] == pytest.approx(4 / 5) and report["conversation_success"] == 0.5
    assert [c["name"] for c in report["failed"]] == ["a wrong gold action on purpose"]
    text = subprocess.run([sys.executable, "-m", "nanonlp", "eval", str(en_run), "--conversations",
                           str(FIXTURES / "tiny_en_conversations.yaml")], capture_output=True, text=True).stdout
    assert "failed: a wrong gold action on purpose" in text and "action utter_welcome (gold utter_greet)" in text


def test_chat_command_talks_through_stdin(en_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "nanonlp", "chat", str(en_run), "--sessions", str(tmp_path / "c.sqlite")],
                            input="I lost my card\nvisa\nyes\n", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["bot> Which card is it, visa, mastercard or amex?",
                                          "bot> Shall I block your visa card now? (yes or no)", "bot> Done: your visa card is blocked."]

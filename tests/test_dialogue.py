"""The assistant's parts without trained models: the folder checks, the state update and form logic,
the out-of-scope threshold, the FAQ index, the rules, the policy's features and its learning of the
stories, and the SQLite session store."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanonlp.dialogue.faq import FAQIndex
from nanonlp.dialogue.policy import PolicyConfig, PolicyFeatures, PolicyNet, Rules, story_examples
from nanonlp.dialogue.sessions import SQLiteSessionStore, new_session_id, open_store
from nanonlp.dialogue.spec import AssistantFolderError, parse_example, read_assistant, read_conversations
from nanonlp.dialogue.state import DialogueState, missing_slots, record, update
from nanonlp.dialogue.train import split_held_out, tagged_sentences, tune_threshold

FIXTURES = Path(__file__).parent / "fixtures_dialogue"


@pytest.fixture()
def en_spec():
    return read_assistant(FIXTURES / "tiny_en")


@pytest.fixture()
def zh_spec():
    return read_assistant(FIXTURES / "tiny_zh")


# ---------------------------------------------------------------------------------------------------
# the folder


def test_annotations_parse_to_offsets_and_canonical_values():
    text, entities = parse_example("block my [visa card](card_type) and [bj](city=Beijing)")
    assert text == "block my visa card and bj"
    assert entities == [(9, 18, "card_type", "visa card"), (23, 25, "city", "Beijing")]
    assert text[9:18] == "visa card"
    text, entities = parse_example("订单[A12345](order_id)要退货")
    assert text == "订单A12345要退货" and entities == [(2, 8, "order_id", "A12345")]


def test_the_tiny_folders_read(en_spec, zh_spec):
    assert en_spec.language == "en" and zh_spec.language == "zh"
    assert set(en_spec.intents) == {"greet", "block_card", "inform", "thanks", "human"}
    assert en_spec.classifier_intents[-1] == "faq"
    # synonyms give the canonical value: "mc" is a mastercard
    assert en_spec.normalize("card_type", "MC") == "mastercard"
    assert "ask_card_type" in en_spec.actions and "action_faq" in en_spec.actions
    assert en_spec.forms["block_card_form"].slots == ["card_type", "confirm"]


def _folder(tmp_path: Path, files: dict) -> Path:
    folder = tmp_path / "bot"
    shutil.copytree(FIXTURES / "tiny_en", folder)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _error(folder: Path) -> AssistantFolderError:
    with pytest.raises(AssistantFolderError) as info:
        read_assistant(folder)
    return info.value


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if needle in line)


def test_yaml_error_names_file_and_line(tmp_path):
    folder = _folder(tmp_path, {"extra.yaml": "responses:\n  utter_x: [a, b\n  utter_y: c\n"})
    error = _error(folder)
    assert error.path.endswith("extra.yaml") and error.line in (3, 4) and "YAML error" in error.problem


def test_missing_intent_in_a_story_names_its_line(tmp_path):
    folder = _folder(tmp_path, {})
    domain = folder / "domain.yaml"
    domain.write_text(domain.read_text().replace("steps: [{user: thanks}, {action: utter_welcome}]",
                                                 "steps: [{user: say_thanks}, {action: utter_welcome}]"), encoding="utf-8")
    error = _error(folder)
    assert error.path.endswith("domain.yaml")
    assert error.line == _line_of(domain, "say_thanks")
    assert "intent 'say_thanks'" in error.problem and "not defined" in error.problem


def test_form_with_an_undefined_intent(tmp_path):
    folder = _folder(tmp_path, {})
    domain = folder / "domain.yaml"
    domain.write_text(domain.read_text().replace("{intent: block_card,", "{intent: block_cards,"), encoding="utf-8")
    error = _error(folder)
    assert error.line == _line_of(domain, "block_cards") and "block_cards" in error.problem


def test_bad_slot_reference_in_a_form_and_in_a_response(tmp_path):
    folder = _folder(tmp_path, {})
    domain = folder / "domain.yaml"
    original = domain.read_text()
    domain.write_text(original.replace("slots: [card_type, confirm]", "slots: [card_type, confirmation]"), encoding="utf-8")
    error = _error(folder)
    assert error.line == _line_of(domain, "confirmation") and "slot 'confirmation'" in error.problem
    domain.write_text(original.replace("your {card_type} card is blocked", "your {card} card is blocked"), encoding="utf-8")
    error = _error(folder)
    assert error.line == _line_of(domain, "{card}") and "{card}" in error.problem and "not a slot" in error.problem


def test_duplicate_example_names_both_places(tmp_path):
    folder = _folder(tmp_path, {"more.yaml": "intents:\n  goodbye:\n    examples:\n      - bye\n      - Thank  you\n"})
    error = _error(folder)
    assert error.path.endswith("more.yaml") and error.line == 5
    assert "duplicate example" in error.problem and "'thanks'" in error.problem
    assert f"intents.yaml, line {_line_of(folder / 'intents.yaml', 'thank you')}" in error.problem


def test_duplicate_key_and_unknown_key(tmp_path):
    folder = _folder(tmp_path, {"more.yaml": "responses:\n  utter_a: x\n  utter_a: y\n"})
    error = _error(folder)
    assert error.line == 3 and "appears twice" in error.problem
    folder = _folder(tmp_path / "2", {"more.yaml": "responses:\n  utter_a: x\nslot:\n  a: {}\n"})
    error = _error(folder)
    assert error.line == 3 and "unknown key 'slot'" in error.problem


def test_schema_errors_point_at_the_value(tmp_path):
    folder = _folder(tmp_path, {"more.yaml": "handoff_extra: 1\n"})
    assert "unknown key 'handoff_extra'" in _error(folder).problem
    assistant = (FIXTURES / "tiny_en" / "assistant.yaml").read_text()
    folder = _folder(tmp_path / "2", {"assistant.yaml": assistant.replace("language: en", "language: fr")})
    error = _error(folder)
    assert error.line == 1 and "assistant.language" in error.problem


def test_check_command_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "nanonlp", "assistant", "check", str(FIXTURES / "tiny_zh")], capture_output=True, text=True)
    assert ok.returncode == 0 and "5 intents" in ok.stdout
    folder = _folder(tmp_path, {"more.yaml": "intents:\n  x:\n    examples: [hello, other]\n"})
    bad = subprocess.run([sys.executable, "-m", "nanonlp", "assistant", "check", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0  # one sentence, no traceback
    assert "more.yaml, line 3: duplicate example 'hello'" in bad.stderr


# ---------------------------------------------------------------------------------------------------
# state update and form logic, by hand


def _understood(intent, entities=(), negative=0.0):
    return {"intent": intent, "confidence": 1.0, "entities": list(entities), "sentiment": {"label": "x", "negative": negative}}


def test_form_fills_over_turns_and_validates(en_spec):
    state = DialogueState.new("s")
    update(state, en_spec, _understood("block_card"), "I lost my card")
    assert state.active_form == "block_card_form" and missing_slots(state, en_spec) == ["card_type", "confirm"]
    state.requested_slot = "card_type"
    # a value the slot does not allow is rejected, and the form stays
    update(state, en_spec, _understood("inform", [{"type": "card_type", "text": "diners"}]), "diners")
    assert state.slots == {} and state.rejected == {"card_type": "diners"} and state.active_form == "block_card_form"
    state.requested_slot = "card_type"
    # a synonym, with no entity found by the tagger: read from the text for the requested slot
    filled = update(state, en_spec, _understood("out_of_scope"), "the master card please")
    assert filled == {"card_type": "mastercard"} and missing_slots(state, en_spec) == ["confirm"]
    state.requested_slot = "confirm"
    update(state, en_spec, _understood("inform"), "yes")
    assert state.slots == {"card_type": "mastercard", "confirm": "yes"} and missing_slots(state, en_spec) == []


def test_form_starts_afresh_and_is_left_on_a_new_subject(en_spec):
    state = DialogueState.new("s")
    state.slots = {"card_type": "visa", "confirm": "yes"}
    update(state, en_spec, _understood("block_card", [{"type": "card_type", "text": "amex"}]), "block my amex")
    assert state.slots == {"card_type": "amex"}  # the old confirmation is forgotten, the new card kept
    state.requested_slot = "confirm"
    update(state, en_spec, _understood("greet"), "hello")  # nothing for the form, a confident other intent
    assert state.active_form is None and state.slots == {"card_type": "amex"}


def test_pattern_slot_in_chinese(zh_spec):
    state = DialogueState.new("s")
    update(state, zh_spec, _understood("return_goods"), "我要退货")
    state.requested_slot = "order_id"
    update(state, zh_spec, _understood("inform"), "订单号是12345")
    assert "order_id" not in state.slots  # digits alone do not match the pattern
    update(state, zh_spec, _understood("inform", [{"type": "order_id", "text": "B20001"}]), "B20001")
    assert state.slots == {"order_id": "B20001"} and missing_slots(state, zh_spec) == ["reason"]
    state.requested_slot = "reason"
    update(state, zh_spec, _understood("out_of_scope"), "因为尺码不合适")
    assert state.slots["reason"] == "尺码不合适"


def test_history_and_sentiment_are_bounded(en_spec):
    state = DialogueState.new("s")
    for i in range(25):
        update(state, en_spec, _understood("greet", negative=i / 100), f"hello {i}")
        record(state, en_spec, f"hello {i}", "hi", "greet", "utter_greet")
    limit = en_spec.settings["session"]["max_history"]
    assert limit == 10
    assert len(state.history) == limit and state.history[0]["user"] == "hello 15" and len(state.actions) == limit
    assert state.sentiments == [i / 100 for i in range(15, 25)] and state.turns == 25
    assert DialogueState.from_json(state.to_json()).history == state.history


def test_rules(en_spec):
    rules = Rules(en_spec)
    state = DialogueState.new("s")
    assert rules.decide(state, "human", 0.0, [])[0] == "action_handoff"
    state.sentiments = [0.9, 0.3, 0.9]
    assert rules.decide(state, "greet", 0.0, []) is None  # one negative turn is not a streak
    state.sentiments = [0.3, 0.9, 0.95]
    assert rules.decide(state, "greet", 0.0, [])[0] == "action_handoff"
    state.sentiments = []
    state.active_form = "block_card_form"
    assert rules.decide(state, "inform", 0.0, ["confirm"])[0] == "ask_confirm"
    assert rules.decide(state, "inform", 0.0, [])[0] == "utter_card_blocked"
    state.active_form = None
    assert rules.decide(state, "out_of_scope", 0.7, [])[0] == "action_faq"
    assert rules.decide(state, "out_of_scope", 0.2, [])[0] == "action_fallback"
    assert rules.decide(state, "faq", 0.2, [])[0] == "action_fallback"


# ---------------------------------------------------------------------------------------------------
# the out-of-scope threshold against a hand count


def test_threshold_with_out_of_scope_examples_by_hand():
    confidences = [0.95, 0.90, 0.60, 0.85, 0.40, 0.70, 0.30]
    predicted = ["a", "b", "a", "a", "b", "b", "a"]
    gold = ["a", "b", "b", "out_of_scope", "out_of_scope", "out_of_scope", "out_of_scope"]
    # in scope: right at 0.95 and 0.90, wrong at 0.60. Out of scope at 0.85, 0.40, 0.70, 0.30.
    # answers right: t=0: 2+0; 0.30: 2+0; 0.40: 2+1; 0.60: 2+2; 0.70: 2+2; 0.85: 2+3; 0.90: 2+4; 0.95: 1+4
    result = tune_threshold(confidences, predicted, gold)
    assert result["threshold"] == 0.90
    assert result["in_scope_accuracy"] == pytest.approx(2 / 3) and result["out_of_scope_recall"] == 1.0
    # many in-scope examples outweigh few out-of-scope ones: 10 right in scope at 0.5, one out of scope at 0.6
    # t=0: 10+0; t=0.5: 10+0; t=0.6: 0+1 -> 0 keeps the in-scope answers (balanced accuracy would pick 0.6)
    result = tune_threshold([0.5] * 10 + [0.6], ["a"] * 11, ["a"] * 10 + ["out_of_scope"])
    assert result["threshold"] == 0.0 and result["out_of_scope_recall"] == 0.0


def test_threshold_without_out_of_scope_examples_by_hand():
    confidences = [0.99, 0.97, 0.95, 0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20, 0.10, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    predicted = ["a"] * 20
    gold = ["a"] * 19 + ["b"]  # 19 of 20 right with no threshold: 0.95
    # at most 0.05 lost: accuracy >= 0.90, 18 right answers kept. The 19 right confidences sorted:
    # .99 .97 .95 .9 .9 .8 .8 .7 .7 .6 .6 .5 .5 .4 .4 .3 .3 .2 .1 -> the 18th is 0.2 (at 0.3 only 17 stay)
    result = tune_threshold(confidences, predicted, gold, max_in_scope_loss=0.05)
    assert result["threshold"] == 0.2 and result["in_scope_accuracy"] == pytest.approx(18 / 20)
    assert tune_threshold(confidences, predicted, gold, max_in_scope_loss=0.10)["threshold"] == 0.3


def test_held_out_split_is_stratified_and_seeded():
    rows = [(f"a{i}", "a") for i in range(10)] + [(f"b{i}", "b") for i in range(3)] + [("c0", "c"), ("c1", "c")]
    train, held = split_held_out(rows, 0.2, seed=0)
    assert sorted(l for _, l in held) == ["a", "a", "b"]  # 2 of 10, at least 1 of 3, none of 2
    assert len(train) + len(held) == len(rows) and not set(train) & set(held)
    assert split_held_out(rows, 0.2, seed=0) == (train, held)


def test_tagged_sentences_carry_iob2_from_annotations(en_spec, zh_spec):
    sentence = next(s for s in tagged_sentences(en_spec) if s["tokens"] == ["I", "lost", "my", "visa", "card"])
    assert sentence["tags"] == ["O", "O", "O", "B-card_type", "O"]
    sentence = next(s for s in tagged_sentences(zh_spec) if "".join(s["tokens"]) == "订单A12345要退货")
    assert sentence["tokens"] == ["订", "单", "A12345", "要", "退", "货"]
    assert sentence["tags"] == ["O", "O", "B-order_id", "O", "O", "O"]


# ---------------------------------------------------------------------------------------------------
# FAQ index


def test_faq_bm25_finds_paraphrases_in_english_and_chinese(en_spec, zh_spec):
    index = FAQIndex(en_spec.faq)
    entry, score = index.answer("I forgot my PIN")
    assert entry["answer"].startswith("Reset your PIN") and 0.5 < score <= 1.0
    assert index.answer("what are your opening hours")[1] == pytest.approx(1.0)
    assert index.answer("zzzz qqqq")[1] == 0.0
    index = FAQIndex(zh_spec.faq)
    entry, score = index.answer("发票要怎么开")
    assert entry["answer"].startswith("在订单详情页") and score > 0.4
    assert index.search("多久发货", 2)[0][0] == 0


def test_faq_similarity_is_normalized_by_the_query():
    index = FAQIndex([{"question": "reset my pin", "paraphrases": [], "answer": "x"},
                      {"question": "open a savings account", "paraphrases": [], "answer": "y"}])
    (first, score), = index.search("reset my pin", 1)
    assert first == 0 and score == pytest.approx(1.0)
    assert index.search("reset my pin please now", 1)[0][1] < 1.0


# ---------------------------------------------------------------------------------------------------
# the policy


def _policy_config(spec) -> PolicyConfig:
    return PolicyConfig(intents=spec.classifier_intents, slots=list(spec.slots), forms=list(spec.forms), actions=spec.actions,
                        history=2, hidden_size=32, dropout=0.0)


def test_policy_features_are_the_documented_encoding(en_spec):
    config = _policy_config(en_spec)
    features = PolicyFeatures(config)
    n_intents, n_slots, n_forms, n_actions = len(config.intents) + 1, len(config.slots), len(config.forms), len(config.actions)
    assert features.size == n_intents + n_slots + n_forms + 1 + 2 * (n_actions + 1)
    x = features.encode("inform", {"card_type": "visa"}, "block_card_form", ["utter_greet", "ask_card_type"])
    assert x.sum() == 1 + 1 + 1 + 2
    assert x[config.intents.index("inform")] == 1
    assert x[n_intents + config.slots.index("card_type")] == 1
    assert x[n_intents + n_slots + 0] == 1  # the one form
    newest = n_intents + n_slots + n_forms + 1
    assert x[newest + config.actions.index("ask_card_type")] == 1
    assert x[newest + n_actions + 1 + config.actions.index("utter_greet")] == 1
    y = features.encode("no_such_intent", {}, None, [])
    assert y[n_intents - 1] == 1 and y[n_intents + n_slots + n_forms] == 1  # out_of_scope, no form
    assert y[newest + n_actions] == 1 and y[newest + 2 * (n_actions + 1) - 1] == 1  # no previous actions


def test_policy_learns_the_stories(en_spec, zh_spec):
    for spec in (en_spec, zh_spec):
        config = _policy_config(spec)
        examples = story_examples(spec, config)
        assert len(examples) == sum(1 for story in spec.stories for step in story["steps"] if "action" in step)
        x = torch.stack([e[0] for e in examples])
        y = torch.tensor([e[1] for e in examples])
        torch.manual_seed(0)
        net = PolicyNet(config)
        before = (net(x)[0].argmax(1) == y).float().mean().item()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(150):
            logits, loss = net(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert before < 1.0
        assert (net(x)[0].argmax(1) == y).all() and loss.item() < 0.05


def test_story_state_is_rebuilt_turn_by_turn(en_spec):
    config = _policy_config(en_spec)
    examples = [e for e in story_examples(en_spec, config) if e[2]["story"] == "block"]
    features = PolicyFeatures(config)
    # the third turn (confirm given) sees both slots filled, the form active, and the last two actions
    x, action, _ = examples[2]
    assert config.actions[action] == "utter_card_blocked"
    assert torch.equal(x, features.encode("inform", {"card_type", "confirm"}, "block_card_form", ["ask_card_type", "ask_confirm"]))
    x, action, _ = examples[3]  # after the submit the form is over
    assert torch.equal(x, features.encode("thanks", {"card_type", "confirm"}, None, ["ask_confirm", "utter_card_blocked"]))


# ---------------------------------------------------------------------------------------------------
# conversations file


def test_conversations_file_errors(tmp_path, en_spec):
    path = tmp_path / "c.yaml"
    path.write_text("conversations:\n  - name: a\n    turns:\n      - {user: hi, intent: greet}\n      - {user: x, intent: nope}\n")
    with pytest.raises(AssistantFolderError) as info:
        read_conversations(path, en_spec)
    assert info.value.line == 5 and "intent 'nope'" in info.value.problem


# ---------------------------------------------------------------------------------------------------
# SQLite sessions


def test_sqlite_sessions_isolated_persisted_and_expired(tmp_path):
    path = tmp_path / "s.sqlite"
    store = SQLiteSessionStore(path, expiry=60)
    a, b = DialogueState.new(store.new_id()), DialogueState.new(store.new_id())
    assert a.session_id != b.session_id and len(a.session_id) >= 22
    a.slots, b.slots = {"card_type": "visa"}, {"card_type": "amex"}
    store.put(a)
    store.put(b)
    assert store.get(a.session_id).slots == {"card_type": "visa"} and store.get(b.session_id).slots == {"card_type": "amex"}
    assert store.get(new_session_id()) is None
    store.close()
    reopened = SQLiteSessionStore(path, expiry=60)  # a restarted process on the same file
    assert reopened.get(b.session_id).slots == {"card_type": "amex"}
    old = reopened.get(a.session_id)
    old.updated = time.time() - 120
    reopened.put(old)
    assert reopened.get(a.session_id) is None  # expired, and deleted
    assert reopened.get(b.session_id) is not None
    assert reopened.purge_expired() == 0


def test_open_store_by_setting(tmp_path):
    assert isinstance(open_store(None, tmp_path), SQLiteSessionStore)
    assert (tmp_path / "sessions.sqlite").is_file()
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(store, SQLiteSessionStore) and store.path == tmp_path / "x.db"


def test_free_text_slot_takes_the_whole_answer(en_spec):
    from dataclasses import replace

    from nanonlp.dialogue.spec import Slot

    spec = replace(en_spec, slots={**en_spec.slots, "card_type": Slot("card_type", "card_type", "Which card?")})  # no values, no pattern
    state = DialogueState.new("s")
    update(state, spec, _understood("block_card"), "block my card")
    state.requested_slot = "card_type"
    update(state, spec, _understood("out_of_scope"), "  the green one ")
    assert state.slots == {"card_type": "the green one"}
    state = DialogueState.new("s")
    update(state, spec, _understood("block_card"), "block my card")
    state.requested_slot = "card_type"
    update(state, spec, _understood("greet"), "hello")  # another subject: not an answer
    assert state.slots == {} and state.active_form is None

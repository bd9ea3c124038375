"""`nanonlp eval RUN --conversations FILE`: replay test conversations through a trained assistant.

Each conversation runs in a fresh session, turn by turn, as a customer would type it. Figures:
intent accuracy (out_of_scope counts as an intent), out-of-scope recall, slot F1 (seqeval, strict
IOB2 over the tagger's tokens, on turns whose text carries inline annotations), next-action
accuracy (on turns that name their action), and the share of conversations with every turn right
(intent and action). A confusion table of intents, and the failed conversations turn by turn.
"""

from __future__ import annotations

import json
from collections import Counter

from nanonlp.dialogue.spec import OUT_OF_SCOPE, read_conversations


def _iob(text: str, spans, tokenize) -> list[str]:
    tokens = tokenize(text)
    tags = ["O"] * len(tokens)
    for span in spans:
        start, end, kind = span[0], span[1], span[2]
        inside = [i for i, (_, s, e) in enumerate(tokens) if s >= start and e <= end]
        for position, i in enumerate(inside):
            tags[i] = ("B-" if position == 0 else "I-") + kind
    return tags


def evaluate_conversations(assistant, path) -> dict:
    from seqeval.metrics import f1_score

    from nanonlp.predict.tag import tokenize

    conversations = read_conversations(path, assistant.spec)
    intents_right = intents_total = actions_right = actions_total = 0
    oos_right = oos_total = 0
    gold_tags, predicted_tags = [], []
    confusion: Counter = Counter()
    failed, perfect = [], 0
    for conversation in conversations:
        session_id, lines, ok = None, [], True
        for turn in conversation["turns"]:
            answer = assistant.respond(turn["user"], session_id=session_id)
            session_id = answer["session_id"]
            intent_ok = answer["intent"] == turn["intent"]
            intents_right += intent_ok
            intents_total += 1
            confusion[(turn["intent"], answer["intent"])] += 1
            if turn["intent"] == OUT_OF_SCOPE:
                oos_total += 1
                oos_right += answer["intent"] == OUT_OF_SCOPE
            action_ok = True
            if turn["action"] is not None:
                action_ok = answer["action"] == turn["action"]
                actions_right += action_ok
                actions_total += 1
            gold_tags.append(_iob(turn["user"], turn["entities"], tokenize))
            predicted_tags.append(_iob(turn["user"], [(e["start"], e["end"], e["type"]) for e in answer["entities"]], tokenize))
            ok &= intent_ok and action_ok
            lines.append({"user": turn["user"], "gold_intent": turn["intent"], "intent": answer["intent"],
                          "confidence": answer["confidence"], "gold_action": turn["action"], "action": answer["action"],
                          "reply": answer["reply"], "right": intent_ok and action_ok})
        perfect += ok
        if not ok:
            failed.append({"name": conversation["name"], "turns": lines})
    has_entities = any(tag != "O" for tags in gold_tags for tag in tags)
    return {
        "conversations": len(conversations),
        "turns": intents_total,
        "intent_accuracy": intents_right / max(intents_total, 1),
        "out_of_scope_recall": oos_right / oos_total if oos_total else None,
        "slot_f1": f1_score(gold_tags, predicted_tags, mode="strict", scheme=_iob2()) if has_entities else None,
        "action_accuracy": actions_right / actions_total if actions_total else None,
        "conversation_success": perfect / max(len(conversations), 1),
        "confusion": [{"gold": g, "predicted": p, "count": n} for (g, p), n in sorted(confusion.items())],
        "failed": failed,
    }


def _iob2():
    from seqeval.scheme import IOB2

    return IOB2


def print_report(report: dict, as_json: bool = False, show_failed: int = 10) -> None:
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return

    def shown(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(f"conversations {report['conversations']}, turns {report['turns']}")
    for key in ("intent_accuracy", "out_of_scope_recall", "slot_f1", "action_accuracy", "conversation_success"):
        print(f"  {key:<22} {shown(report[key])}")
    wrong = [row for row in report["confusion"] if row["gold"] != row["predicted"]]
    if wrong:
        print("confusions (gold -> predicted: count):")
        for row in sorted(wrong, key=lambda r: -r["count"]):
            print(f"  {row['gold']} -> {row['predicted']}: {row['count']}")
    for conversation in report["failed"][:show_failed]:
        print(f"failed: {conversation['name']}")
        for turn in conversation["turns"]:
            mark = " " if turn["right"] else "x"
            action = f" action {turn['action']}" + (f" (gold {turn['gold_action']})" if turn["gold_action"] not in (None, turn["action"]) else "")
            print(f"  {mark} user: {turn['user']}")
            print(f"      intent {turn['intent']} {turn['confidence']:.2f}" +
                  (f" (gold {turn['gold_intent']})" if turn["intent"] != turn["gold_intent"] else "") + action)
            print(f"      bot: {turn['reply']}")

"""A trained assistant answering turns: understand -> update the state -> policy -> respond.

    assistant = nanonlp.dialogue.load("runs/bank")       # sessions in runs/bank/sessions.sqlite
    turn = assistant.respond("I lost my visa card")      # a new session
    turn = assistant.respond("yes", session_id=turn["session_id"])

Built from inference-only predictors (classifier, tagger), the FAQ index and the policy; nothing
here imports training code. `respond` is thread-safe: the models keep nothing of a call, and the
turns of one session run one at a time (a lock per session), so two requests of the same customer
never both read the old state.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import torch

from nanonlp.dialogue.faq import FAQIndex
from nanonlp.dialogue.policy import Rules
from nanonlp.dialogue.sessions import SessionStore, open_store
from nanonlp.dialogue.spec import (ACTION_FALLBACK, ACTION_FAQ, ACTION_HANDOFF, FAQ_INTENT, OUT_OF_SCOPE, PLACEHOLDER,
                                   AssistantSpec, read_assistant)
from nanonlp.dialogue.state import DialogueState, missing_slots, record, take_action, update
from nanonlp.errors import NanoNLPError
from nanonlp.predict.service import REQUIRED, Call, Endpoint, Param

MAX_MESSAGE_CHARS = 2000
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # what the stores hand out (URL-safe base64), with room to spare


def _not_blank(message: str) -> str:
    if not message.strip():
        raise ValueError("the message is only white space; send some text")
    return message


def chat_endpoint(assistant) -> Endpoint:
    """POST /v1/chat: one turn of a conversation, on the thread pool (the models and the session store block).

        {"message": "I lost my card"}                    -> a new session
        {"session_id": "...", "message": "visa"}         -> the next turn of that session
        -> {session_id, reply, intent, confidence, entities, slots, sentiment, action, handoff,
            source: template|faq|generated|fallback, suggestions}, plus `transcript` when handoff is true

    An unknown or expired session_id starts a new session under a fresh id (the client sees the id
    differ); ids are the store's to make, never the client's. The fields are strict: 123 or true is not
    read as the message "123" or "True". `assistant` is an Assistant, or anything with its `respond` and `transcript`."""

    def turn(request: dict, call: Call) -> dict:
        """One turn: session_id, reply, intent, confidence, entities, slots, sentiment, action, handoff,
        source, suggestions, and the transcript on handoff."""
        answer = assistant.respond(request["message"], request["session_id"])
        if answer["handoff"] and "transcript" not in answer:  # the person taking over reads the conversation so far
            answer["transcript"] = assistant.transcript(answer["session_id"])
        return answer

    return Endpoint("chat", {
        "session_id": Param(str | None, None, "the session to continue (from an earlier reply); none starts a new one",
                            pattern=SESSION_ID_PATTERN, strict=True),
        "message": Param(str, REQUIRED, f"what the customer wrote (1 to {MAX_MESSAGE_CHARS} characters)", min_length=1,
                         max_length=MAX_MESSAGE_CHARS, strict=True, check=_not_blank)},
        turn, runner="thread", title="Send", view={"kind": "chat"})


class Assistant:
    task = "assistant"

    def __init__(self, run_dir: Path, spec: AssistantSpec, classifier, tagger, sentiment, faq: FAQIndex, policy,
                 understanding: dict, store: SessionStore, device):
        self.run_dir, self.spec, self.classifier, self.tagger, self.sentiment = run_dir, spec, classifier, tagger, sentiment
        self.faq, self.policy, self.store, self.device = faq, policy, store, device
        self.intent_threshold = float(understanding["intent_threshold"])
        self.rules = Rules(spec)
        # Actions only the rules take: handing off, a form's questions and its submit. The learned policy
        # never picks them, so a state no story covered cannot hand off or confirm a form that never ran.
        rule_actions = {ACTION_HANDOFF} | {f"ask_{slot}" for form in spec.forms.values() for slot in form.slots} | {
            form.submit for form in spec.forms.values()}
        self._policy_mask = torch.tensor([action in rule_actions for action in policy.actions], device=device)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def language(self) -> str:
        return self.spec.language

    def endpoints(self) -> list[Endpoint]:
        return [chat_endpoint(self)]

    def describe(self) -> dict:
        """What GET /v1/models says of the assistant (and the page's chat panel reads)."""
        spec = self.spec
        return {"assistant": spec.name, "language": spec.language, "intents": list(spec.intents),
                "forms": {name: list(form.slots) for name, form in spec.forms.items()}, "slots": list(spec.slots),
                "faq_answers": len(spec.faq), "suggestions": self.suggestions(), "generative": False,
                "max_message_chars": MAX_MESSAGE_CHARS, "session_expiry_minutes": spec.settings["session"]["expiry_minutes"]}

    # -- understanding ------------------------------------------------------------------------------

    def understand(self, text: str) -> dict:
        """{"intent", "confidence", "intents" (the top 3 with probabilities), "entities", "sentiment"}:
        `intent` is out_of_scope below the tuned threshold."""
        answer = self.classifier.predict(text)
        scores = answer["probabilities"]
        best = max(scores, key=scores.get)
        confidence = scores[best]
        intent = best if confidence >= self.intent_threshold else OUT_OF_SCOPE
        entities = []
        if self.tagger is not None:
            for entity in self.tagger.tag(text)["entities"]:
                entities.append({"type": entity["type"], "text": entity["text"], "start": entity["start"], "end": entity["end"],
                                 "value": self.spec.normalize(entity["type"], entity["text"]), "score": entity["score"]})
        return {"intent": intent, "confidence": round(confidence, 4),
                "intents": dict(sorted(scores.items(), key=lambda kv: -kv[1])[:3]),
                "entities": entities, "sentiment": self.sentiment_of(text)}

    def sentiment_of(self, text: str) -> dict:
        if self.sentiment is None:
            return {"label": "neutral", "negative": 0.0}
        answer = self.sentiment.predict(text)
        scores = answer["probabilities"]
        return {"label": max(scores, key=scores.get), "negative": round(scores.get("negative", 0.0), 4)}

    # -- a turn --------------------------------------------------------------------------------------

    def _lock(self, session_id: str) -> threading.Lock:
        with self._locks_guard:
            if len(self._locks) > 10000:  # forget locks nobody holds
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault(session_id, threading.Lock())

    def respond(self, message: str, session_id: str | None = None) -> dict:
        """One user turn. An unknown or expired session_id starts a new session under a fresh id (never
        under the id given: ids are the store's to make). Returns {session_id, reply, intent, confidence,
        entities, slots, sentiment, action, handoff, source, suggestions}, plus `transcript` on handoff."""
        if not isinstance(message, str):
            raise NanoNLPError(f"a message must be text, got {type(message).__name__}.")
        message = message.strip()
        if not message:
            raise NanoNLPError("the message is empty; send some text.")
        if len(message) > MAX_MESSAGE_CHARS:
            raise NanoNLPError(f"the message has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}.")
        state = self.store.get(session_id) if session_id else None
        if state is None:
            state = DialogueState.new(self.store.new_id())
        with self._lock(state.session_id):
            fresh = self.store.get(state.session_id)  # another thread may have answered a turn meanwhile
            state = fresh or state
            return self._turn(state, message)

    def _turn(self, state: DialogueState, message: str) -> dict:
        understood = self.understand(message)
        intent = understood["intent"]
        update(state, self.spec, understood, message)
        faq_entry, faq_score = self.faq.answer(message) if self.faq.entries else (None, 0.0)
        missing = missing_slots(state, self.spec)
        decided = self.rules.decide(state, intent, faq_score, missing)
        action = decided[0] if decided else self.choose(state, intent)
        reply, source, suggestions = self.render(action, state, faq_entry)
        take_action(state, self.spec, action)
        record(state, self.spec, message, reply, intent, action)
        self.store.put(state)
        out = {"session_id": state.session_id, "reply": reply, "intent": intent, "confidence": understood["confidence"],
               "entities": understood["entities"], "slots": dict(state.slots), "sentiment": understood["sentiment"],
               "action": action, "handoff": action == ACTION_HANDOFF, "source": source, "suggestions": suggestions}
        if action == ACTION_HANDOFF:
            out["transcript"] = list(state.history)
        return out

    @torch.inference_mode()
    def choose(self, state: DialogueState, intent: str) -> str:
        """The learned policy's action for the state (the actions taken so far; this turn's not yet), among
        the actions the rules do not own."""
        features = self.policy.features.encode(intent, state.slots, state.active_form, state.actions)
        logits, _ = self.policy(features.unsqueeze(0).to(self.device))
        logits = logits[0].masked_fill(self._policy_mask, float("-inf"))
        return self.policy.actions[int(logits.argmax())]

    # -- replies -------------------------------------------------------------------------------------

    def render(self, action: str, state: DialogueState, faq_entry: dict | None) -> tuple[str, str, list[str]]:
        """(reply, source, suggestions) for an action."""
        rng = random.Random(f"{state.session_id}:{state.turns}")  # varied, yet the same turn renders the same way
        if action == ACTION_FAQ and faq_entry is not None:
            return faq_entry["answer"], "faq", []
        if action == ACTION_HANDOFF:
            return self.spec.settings["handoff"]["message"], "template", []
        if action.startswith("ask_") and action[4:] in self.spec.slots and action not in self.spec.responses:
            slot = self.spec.slots[action[4:]]
            question = slot.question
            if slot.name in state.rejected:
                invalid = slot.invalid or ("“{value}” is not valid here." if self.language == "en" else "“{value}”无效。")
                question = invalid.replace("{value}", state.rejected[slot.name]) + " " + question
            return self.fill(question, state), "template", list(slot.values[:5])
        if action in self.spec.responses:
            return self.fill(rng.choice(self.spec.responses[action]), state), "template", []
        suggestions = self.suggestions()
        message = self.spec.settings["fallback"]["message"]
        joiner, space = ("; ", " ") if self.language == "en" else ("；", "")
        return message + space + joiner.join(suggestions), "fallback", suggestions

    def fill(self, template: str, state: DialogueState) -> str:
        return PLACEHOLDER.sub(lambda m: str(state.slots.get(m.group(1), "?")), template)

    def suggestions(self) -> list[str]:
        """What the assistant can do, as the fallback offers it: the descriptions of `fallback.suggest`'s
        intents, else of the first intents that have one."""
        settings = self.spec.settings["fallback"]
        chosen = settings["suggest"] or [name for name, text in self.spec.descriptions.items() if text] or list(self.spec.intents)
        return [self.spec.descriptions.get(name) or name.replace("_", " ") for name in chosen][: settings["suggestions"]]

    # -- sessions ------------------------------------------------------------------------------------

    def state(self, session_id: str) -> DialogueState | None:
        return self.store.get(session_id)

    def transcript(self, session_id: str) -> list[dict]:
        state = self.store.get(session_id)
        return list(state.history) if state else []

    def reset(self, session_id: str) -> None:
        self.store.delete(session_id)


def load(run_dir: str | Path, sessions=None, device: str = "cpu") -> Assistant:
    """A trained assistant. sessions: None (RUN/sessions.sqlite), a SQLite path, a SQLAlchemy URL
    (postgresql+psycopg://...) or a SessionStore. A small assistant answers fastest on the CPU."""
    from nanonlp.predict import load_model, open_for_inference
    from nanonlp.predict.classify import load as load_classifier
    from nanonlp.predict.tag import load as load_tagger

    run, torch_device = open_for_inference(run_dir, device)
    run_dir = Path(run.dir)
    path = run_dir / "understanding.json"
    if not path.is_file():
        raise NanoNLPError(f"'{run_dir}' has no understanding.json; the assistant's training did not finish. Train it again.")
    understanding = json.loads(path.read_text(encoding="utf-8"))
    spec = read_assistant(run_dir / "assistant")
    classifier = load_classifier(run_dir / "intent", device)
    tagger = load_tagger(run_dir / "tagger", device) if understanding.get("tagger") else None
    sentiment = load_classifier(run_dir / "sentiment", device) if understanding.get("sentiment", "none") != "none" else None
    policy = load_model(run, torch_device)
    session = spec.settings["session"]
    store = open_store(sessions, run_dir, expiry=float(session["expiry_minutes"]) * 60)
    return Assistant(run_dir, spec, classifier, tagger, sentiment, FAQIndex.load(run_dir / "faq.json"), policy, understanding,
                     store, torch_device)

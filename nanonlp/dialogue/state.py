"""A conversation's state, and how one understood turn changes it (no model here: plain rules).

    state = DialogueState.new(session_id)
    update(state, spec, understood, text)    # slots, active form, requested slot, history, sentiment trend

The state is JSON (`to_json` / `from_json`), so any session store can keep it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from nanonlp.dialogue.spec import ACTION_HANDOFF, OUT_OF_SCOPE, AssistantSpec, Slot


@dataclass
class DialogueState:
    session_id: str
    slots: dict = field(default_factory=dict)  # slot -> canonical value
    active_form: str | None = None
    requested_slot: str | None = None  # the slot the last turn asked for
    history: list = field(default_factory=list)  # [{"user", "assistant", "intent", "action"}], the last max_history
    actions: list = field(default_factory=list)  # every action taken, newest last (bounded like history)
    sentiments: list = field(default_factory=list)  # negative probability per user turn, newest last (bounded)
    handoff: bool = False
    turns: int = 0
    updated: float = field(default_factory=time.time)
    rejected: dict = field(default_factory=dict)  # this turn only: slot -> a value that failed validation

    @classmethod
    def new(cls, session_id: str) -> "DialogueState":
        return cls(session_id=session_id)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("rejected")
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "DialogueState":
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def valid_value(slot: Slot, value: str) -> bool:
    """A slot's validation: one of its values (case-insensitively) and/or a whole match of its pattern."""
    if slot.values and value.lower() not in {v.lower() for v in slot.values}:
        return False
    if slot.pattern and not re.fullmatch(slot.pattern, value):
        return False
    return True


def canonical_value(slot: Slot, value: str) -> str:
    """The value as the slot lists it (its case), else as given."""
    for allowed in slot.values:
        if allowed.lower() == value.lower():
            return allowed
    return value


def lookup_value(spec: AssistantSpec, slot: Slot, text: str) -> str | None:
    """A value for a requested slot read straight from the text: a listed value or synonym it contains
    (the longest), or the first match of the slot's pattern. The tagger may miss a bare answer ("visa")."""
    lowered = text.lower()
    candidates = {v.lower(): v for v in slot.values}
    for variant, canonical in spec.synonyms.get(slot.entity, {}).items():
        if not slot.values or canonical.lower() in candidates:
            candidates[variant] = canonical
    found = [(len(variant), canonical) for variant, canonical in candidates.items() if _contains(lowered, variant)]
    if found:
        return max(found)[1]
    if slot.pattern:
        match = re.search(slot.pattern, text)
        if match:
            return match.group(0)
    return None


def _contains(text: str, word: str) -> bool:
    if re.search(r"[\u3400-\u9fff]", word):  # Chinese: no word boundaries
        return word in text
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def fill_slots(state: DialogueState, spec: AssistantSpec, entities: list[dict], text: str) -> dict:
    """Put the turn's entities into slots: an entity fills the requested slot when its type fits, else
    every slot of its type that is still empty. Values that fail validation are left out (in
    state.rejected, so the reply can say why). Returns the slots set this turn."""
    filled, state.rejected = {}, {}
    requested = spec.slots.get(state.requested_slot) if state.requested_slot else None
    for entity in entities:
        kind, value = entity["type"], spec.normalize(entity["type"], entity.get("value") or entity["text"])
        of_kind = [slot for slot in spec.slots.values() if slot.entity == kind and slot.name not in filled]
        # the requested slot first; else an empty slot of the type; else the first one (a correction: "no, the amex")
        targets = [requested] if requested is not None and requested in of_kind else (
            [slot for slot in of_kind if slot.name not in state.slots] or of_kind)
        for slot in targets[:1]:
            if valid_value(slot, value):
                filled[slot.name] = canonical_value(slot, value)
            else:
                state.rejected[slot.name] = value
    if requested is not None and requested.name not in filled:
        # the tagger found nothing for the requested slot, or something invalid (part of "master card"):
        # read a listed value, synonym or pattern match straight from the text
        value = lookup_value(spec, requested, text)
        if value is not None:
            if valid_value(requested, value):
                filled[requested.name] = canonical_value(requested, value)
                state.rejected.pop(requested.name, None)
            else:
                state.rejected.setdefault(requested.name, value)
    state.slots.update(filled)
    return filled


def update(state: DialogueState, spec: AssistantSpec, understood: dict, text: str) -> dict:
    """Apply one understood user turn: slots, the active form (started by its intent; left when the
    user asks for something else and gives nothing the form asked for), the sentiment
    trend and the turn count. Returns the slots filled this turn."""
    settings = spec.settings["session"]
    intent = understood["intent"]
    form = spec.form_of_intent(intent)
    starts = form is not None and state.active_form != form.name
    if starts:
        # a form starting afresh forgets an earlier run's answers; this very turn may give new ones
        state.active_form = form.name
        for slot in form.slots:
            state.slots.pop(slot, None)
    filled = fill_slots(state, spec, understood.get("entities", []), text)
    requested = spec.slots.get(state.requested_slot) if state.requested_slot else None
    if requested is not None and state.active_form is not None and not starts and not filled and not state.rejected \
            and not requested.values and not requested.pattern and intent in answering_intents(spec, state.active_form):
        # a free-text slot (no value list, no pattern: a name, an address) takes the whole answer
        filled[requested.name] = state.slots[requested.name] = text.strip()
    if not starts and state.active_form is not None and not filled and not state.rejected \
            and intent not in answering_intents(spec, state.active_form):
        state.active_form = None  # the user changed the subject
    state.requested_slot = None
    state.sentiments = (state.sentiments + [round(float(understood.get("sentiment", {}).get("negative", 0.0)), 4)])[-settings["max_history"]:]
    state.turns += 1
    return filled


def answering_intents(spec: AssistantSpec, form_name: str) -> set[str]:
    """The intents that keep a form going when they fill nothing (a malformed answer is asked again):
    out_of_scope, the form's own intent, and every intent whose examples carry an entity the form asks for."""
    form = spec.forms[form_name]
    kinds = {spec.slots[slot].entity for slot in form.slots}
    carrying = {intent for intent, examples in spec.intents.items() if any(e[2] in kinds for ex in examples for e in ex.entities)}
    return {OUT_OF_SCOPE, form.intent} | carrying


def missing_slots(state: DialogueState, spec: AssistantSpec) -> list[str]:
    if state.active_form is None:
        return []
    return [slot for slot in spec.forms[state.active_form].slots if slot not in state.slots]


def take_action(state: DialogueState, spec: AssistantSpec, action: str) -> None:
    """What an action does to the state: a handoff marks it, a form's question is the slot now asked
    for, a form's submit closes the form. (The served assistant and the RL episodes share it.)"""
    if action == ACTION_HANDOFF:
        state.handoff = True
    if action.startswith("ask_"):
        state.requested_slot = action[len("ask_"):]
    elif state.active_form is not None and action == spec.forms[state.active_form].submit:
        state.active_form = None


def record(state: DialogueState, spec: AssistantSpec, text: str, reply: str, intent: str, action: str) -> None:
    """Append the turn to the bounded history and the action list."""
    limit = spec.settings["session"]["max_history"]
    state.history = (state.history + [{"user": text, "assistant": reply, "intent": intent, "action": action}])[-limit:]
    state.actions = (state.actions + [action])[-limit:]
    state.updated = time.time()

"""The dialogue policy: readable rules where they apply, a small learned model everywhere else.

Rules (`Rules.decide`), in order, each winning where it applies:
1. a request for a person (a `handoff.intents` intent), or `handoff.negative_turns` negative turns in a
   row: action_handoff;
2. an active form: ask its first missing slot (ask_<slot>), or submit once all are filled;
3. an out-of-scope turn or an FAQ question (intent `faq`): action_faq when the FAQ answers at or above its threshold, else action_fallback.
Otherwise the learned policy picks the action from the stories.

The learned policy (`PolicyNet`) is a two-layer perceptron over a fixed feature vector
(`PolicyFeatures.encode`), written so that a policy-gradient fine-tune can reuse it as is:

    [ one-hot intent (the intents, then out_of_scope) | one bit per slot filled |
      one-hot active form (the forms, then none) | for each of the last `history` actions a one-hot
      (the actions, then none) ]

`forward(features (B, F), targets=None) -> (logits (B, A), loss)`: cross-entropy when targets are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanonlp.dialogue.spec import ACTION_FALLBACK, ACTION_FAQ, ACTION_HANDOFF, FAQ_INTENT, OUT_OF_SCOPE, AssistantSpec
from nanonlp.io import save_weights


@dataclass
class PolicyConfig:
    intents: list = field(default_factory=list, metadata={"derived": "the assistant's intents"})
    slots: list = field(default_factory=list, metadata={"derived": "the assistant's slots"})
    forms: list = field(default_factory=list, metadata={"derived": "the assistant's forms"})
    actions: list = field(default_factory=list, metadata={"derived": "the assistant's actions"})
    history: int = 2  # previous actions the policy sees
    hidden_size: int = 64
    dropout: float = 0.1

    def validate(self) -> None:
        from nanonlp.errors import ConfigError

        if self.history < 0 or self.hidden_size < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.history must be 0 or more, model.hidden_size at least 1, model.dropout in [0, 1).")


class PolicyFeatures:
    """The feature encoding of a dialogue state (see the module docstring)."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.intents = list(config.intents) + [OUT_OF_SCOPE]
        self.intent_index = {name: i for i, name in enumerate(self.intents)}
        self.slot_index = {name: i for i, name in enumerate(config.slots)}
        self.form_index = {name: i for i, name in enumerate(config.forms)}
        self.action_index = {name: i for i, name in enumerate(config.actions)}

    @property
    def size(self) -> int:
        c = self.config
        return len(self.intents) + len(c.slots) + len(c.forms) + 1 + c.history * (len(c.actions) + 1)

    def encode(self, intent: str, slots_filled, active_form: str | None, previous_actions: list[str]) -> torch.Tensor:
        c = self.config
        x = torch.zeros(self.size)
        x[self.intent_index.get(intent, len(self.intents) - 1)] = 1.0
        offset = len(self.intents)
        for slot in slots_filled:
            if slot in self.slot_index:
                x[offset + self.slot_index[slot]] = 1.0
        offset += len(c.slots)
        x[offset + self.form_index.get(active_form, len(c.forms))] = 1.0
        offset += len(c.forms) + 1
        recent = list(previous_actions)[-c.history:][::-1]  # newest first
        for position in range(c.history):
            action = recent[position] if position < len(recent) else None
            x[offset + self.action_index.get(action, len(c.actions))] = 1.0
            offset += len(c.actions) + 1
        return x


class PolicyNet(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.features = PolicyFeatures(config)
        self.net = nn.Sequential(nn.Linear(self.features.size, config.hidden_size), nn.ReLU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden_size, len(config.actions)))

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.net(features)  # (B, A)
        loss = F.cross_entropy(logits, targets) if targets is not None else None
        return logits, loss

    @property
    def actions(self) -> list[str]:
        return list(self.config.actions)


def story_examples(spec: AssistantSpec, config: PolicyConfig) -> list[tuple[torch.Tensor, int, dict]]:
    """(features, action index, where) for every user turn of every story, the state rebuilt as the
    conversation goes: slots accumulate from the turns' entities, a form is active from its intent to
    its submit, and the previous actions are the story's."""
    features = PolicyFeatures(config)
    out = []
    for story in spec.stories:
        slots, form, actions, intent, entities = set(), None, [], None, {}
        for step in story["steps"]:
            if "intent" in step:
                intent, entities = step["intent"], step["entities"]
                started = spec.form_of_intent(intent)
                if started is not None and form != started.name:
                    form = started.name
                    slots -= set(started.slots)
                slots |= {name for name in entities if name in spec.slots} | {
                    slot.name for slot in spec.slots.values() if slot.entity in entities}
                continue
            action = step["action"]
            out.append((features.encode(intent, slots, form, actions), config.actions.index(action),
                        {"story": story["name"], "intent": intent}))
            actions.append(action)
            if form is not None and action == spec.forms[form].submit:
                form = None
    return out


def save_policy(run_dir: Path, net: PolicyNet) -> None:
    """Write fine-tuned weights over the run's policy (RUN/model.safetensors, atomically); the feature
    encoding and actions stay those of the run's config.yaml (model section)."""
    from nanonlp.checkpoint import WEIGHTS

    save_weights(net, Path(run_dir) / WEIGHTS)


def load_policy(run_dir: Path, device: str = "cpu") -> PolicyNet:
    """The run's learned policy, in eval mode (call .train() to fine-tune it)."""
    from nanonlp.predict import load_model, open_for_inference

    run, torch_device = open_for_inference(run_dir, device)
    return load_model(run, torch_device)


class Rules:
    """The readable rules in front of the learned policy (see the module docstring)."""

    def __init__(self, spec: AssistantSpec):
        self.spec = spec
        self.handoff = spec.settings["handoff"]
        self.faq_threshold = spec.settings["fallback"]["faq_threshold"]

    def negative_streak(self, sentiments: list[float]) -> bool:
        turns = self.handoff["negative_turns"]
        recent = sentiments[-turns:]
        return len(recent) == turns and all(p >= self.handoff["negative_threshold"] for p in recent)

    def decide(self, state, intent: str, faq_score: float, missing: list[str]) -> tuple[str, str] | None:
        """(action, the rule's name), or None to let the learned policy choose."""
        if intent in self.handoff["intents"]:
            return ACTION_HANDOFF, "a request for a person"
        if self.negative_streak(state.sentiments):
            return ACTION_HANDOFF, f"{self.handoff['negative_turns']} negative turns"
        if state.active_form is not None:
            if missing:
                return f"ask_{missing[0]}", "the form's next slot"
            return self.spec.forms[state.active_form].submit, "the form is complete"
        if intent in (OUT_OF_SCOPE, FAQ_INTENT):
            if faq_score >= self.faq_threshold:
                return ACTION_FAQ, "the FAQ answers"
            return ACTION_FALLBACK, "out of scope"
        return None

"""An agenda-based user simulator (Schatzmann et al., 2007, "Agenda-based user simulation for
bootstrapping a POMDP dialogue system") built from an assistant's own folder.

    simulator = UserSimulator(spec)                    # intents, slots, forms and stories of the assistant
    goal = simulator.sample_goal(random.Random(0))     # tasks: an intent, its form's slot values, the action that serves it
    user = simulator.start(goal, random.Random(0))     # the agenda: a stack of user acts
    act = user.next_act()                              # UserAct(intent, {slot: value}) or None when the user has left
    user.observe(action, slots)                        # the system's action and slots: the agenda is updated
    user.success                                       # every task served, a form's with the goal's values

The user talks at the dialogue-act level (intent and entities), which is what the policy sees and
what makes reinforcement learning fast; `text(act, rng)` renders an act as a paraphrase chosen among
the intent's examples, with the goal's values in place, for end-to-end runs through `Assistant.respond`
(`run_text_episode`).

What is read from the folder:
- tasks: every intent that starts a form (served by the form's submit with the goal's values), and
  every other intent the stories answer with a response, other than the opening and closing
  intents, the handoff intents and intents whose examples carry entities (inform, affirm, deny);
- goal values: a slot with a value list takes one of them; any other slot a value its entity has in
  the examples (and, with a pattern, one that matches it);
- how a slot is answered: with the intent whose examples carry the slot's entity with that value
  most often (affirm for yes, deny for no), else the one that carries the entity most often (inform).

Noise (`SimulatorConfig`): an out-of-scope or FAQ turn in between; a slot value dropped (the user
answers without it) or wrong (one its validation rejects, then the right one when asked again); the
paraphrase (text mode); goal values given up front with the request. The user repeats a request the
assistant did not serve, gives up after `patience` repeats, and leaves after `max_turns` turns.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from nanonlp.dialogue.spec import ACTION_FALLBACK, ACTION_HANDOFF, FAQ_INTENT, OUT_OF_SCOPE, AssistantSpec, Slot
from nanonlp.dialogue.state import lookup_value, valid_value
from nanonlp.errors import ConfigError, NanoNLPError

# Said when the folder has no out_of_scope texts (text mode only).
DEFAULT_OUT_OF_SCOPE = {"en": ["what is the weather like tomorrow", "tell me a joke", "play some music"],
                        "zh": ["明天天气怎么样", "给我讲个笑话", "放首歌吧"]}


@dataclass
class SimulatorConfig:
    max_tasks: int = 2  # a goal has 1 to max_tasks tasks, in order
    max_turns: int = 12  # user turns before the user leaves (a failure if a task is still open)
    patience: int = 2  # repeats of a request the assistant did not serve before the user gives up
    p_greet: float = 0.5  # the user opens with a greeting
    p_thanks: float = 0.6  # the user thanks after the tasks
    p_bye: float = 0.6  # the user says goodbye at the end
    p_upfront: float = 0.3  # each slot the request's examples can carry is given with the request
    p_out_of_scope: float = 0.05  # an out-of-scope turn before a user act
    p_faq: float = 0.05  # an FAQ question before a user act
    p_drop: float = 0.1  # a slot answer without its value (the tagger missed it)
    p_wrong: float = 0.1  # a slot answer with a value the slot's validation rejects
    opening_intents: tuple = ("greet", "问候", "打招呼")  # which of these exist is the greeting
    thanks_intents: tuple = ("thanks", "thank", "感谢", "谢谢")
    bye_intents: tuple = ("goodbye", "bye", "再见", "告别")

    def validate(self) -> None:
        for name in ("p_greet", "p_thanks", "p_bye", "p_upfront", "p_out_of_scope", "p_faq", "p_drop", "p_wrong"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"simulator.{name} must be a probability in [0, 1], got {value}.")
        if self.p_drop + self.p_wrong > 1.0:
            raise ConfigError("simulator.p_drop + simulator.p_wrong must be at most 1.")
        if self.max_tasks < 1 or self.max_turns < 2 or self.patience < 0:
            raise ConfigError("simulator.max_tasks must be at least 1, max_turns at least 2 and patience 0 or more.")


@dataclass(frozen=True)
class UserAct:
    intent: str
    slots: dict = field(default_factory=dict)  # slot -> value said (a wrong value is said as it is)

    def entities(self, spec: AssistantSpec) -> list[dict]:
        """The act's entities as the understanding step gives them: [{type, text, value}]."""
        return [{"type": spec.slots[slot].entity if slot in spec.slots else slot, "text": value, "value": value}
                for slot, value in self.slots.items()]


@dataclass
class Task:
    intent: str
    action: str  # the action that serves it (a form's submit, or the stories' answer)
    slots: dict = field(default_factory=dict)  # a form's slot -> the goal's value
    form: str | None = None


@dataclass
class Goal:
    tasks: list
    greet: bool = False
    thanks: bool = False
    bye: bool = False


class UserSimulator:
    """The simulated user's model of one assistant (see the module docstring)."""

    def __init__(self, spec: AssistantSpec, config: SimulatorConfig | None = None):
        self.spec = spec
        self.config = config or SimulatorConfig()
        self.config.validate()
        intents = set(spec.intents)
        self.greet_intent = next((i for i in self.config.opening_intents if i in intents), None)
        self.thanks_intent = next((i for i in self.config.thanks_intents if i in intents), None)
        self.bye_intent = next((i for i in self.config.bye_intents if i in intents), None)
        self.answers = story_answers(spec)
        self.tasks = self._task_intents()
        if not self.tasks:
            raise NanoNLPError(f"assistant '{spec.name}' has no task a simulated user can ask for: no intent starts a form or is "
                               "answered by a response in the stories; add a story such as [{user: X}, {action: utter_X}].")
        self.values = {name: self._goal_values(slot) for name, slot in spec.slots.items()}
        for task in self.tasks:
            form = spec.form_of_intent(task)
            for slot in form.slots if form else []:
                if not self.values[slot]:
                    raise NanoNLPError(f"slot '{slot}' has no value a simulated user can give: give it a value list, or annotate "
                                       f"its entity '{spec.slots[slot].entity}' in an example (e.g. [value]({spec.slots[slot].entity})).")

    # -- what the folder says -----------------------------------------------------------------------

    def _task_intents(self) -> list[str]:
        spec = self.spec
        social = {self.greet_intent, self.thanks_intent, self.bye_intent} | set(spec.settings["handoff"]["intents"])
        out = []
        for intent, examples in spec.intents.items():
            if spec.form_of_intent(intent) is not None:
                out.append(intent)
            elif intent not in social and not any(ex.entities for ex in examples) and self.answers.get(intent) in spec.responses:
                out.append(intent)
        return out

    def _goal_values(self, slot: Slot) -> list[str]:
        if slot.values:
            return list(slot.values)
        seen = sorted({e[3] for examples in self.spec.intents.values() for ex in examples for e in ex.entities if e[2] == slot.entity})
        return [v for v in seen if valid_value(slot, v)]

    def answering_intent(self, slot: str, value: str) -> str:
        """The intent a user answers `slot` with: the one whose examples carry its entity with this
        value most often, else the one carrying the entity most often."""
        entity = self.spec.slots[slot].entity
        with_value, with_entity = Counter(), Counter()
        for intent, examples in self.spec.intents.items():
            if self.spec.form_of_intent(intent) is not None:
                continue  # answering with the form's own intent would restart the form
            for ex in examples:
                for _, _, kind, canonical in ex.entities:
                    if kind == entity:
                        with_entity[intent] += 1
                        if canonical.lower() == value.lower():
                            with_value[intent] += 1
        best = with_value or with_entity
        if not best:  # no example carries the entity (a yes/no slot filled by story turns only): the intent
            # whose examples carry entities of the slot's forms most often (inform)
            kinds = {self.spec.slots[s].entity for f in self.spec.forms.values() if slot in f.slots for s in f.slots}
            for intent, examples in self.spec.intents.items():
                if self.spec.form_of_intent(intent) is None:
                    best[intent] = sum(e[2] in kinds for ex in examples for e in ex.entities)
            best = Counter({k: v for k, v in best.items() if v})
        if not best:
            raise NanoNLPError(f"no intent answers slot '{slot}': annotate its entity '{entity}' in the examples of an intent "
                               "such as inform (e.g. [value](" + entity + ")).")
        return max(sorted(best), key=best.get)

    def wrong_value(self, slot: Slot, value: str, rng: random.Random) -> str | None:
        """A value the slot's validation rejects, or None where every value is accepted."""
        if not slot.values and not slot.pattern:
            return None
        candidates = [value[:-1], value + value[-1:], value[::-1] + "x", "zzz", "?"]
        candidates += [v for values in self.values.values() for v in values]
        # wrong through and through: nothing in it that the assistant could read as a valid value either
        candidates = [c for c in dict.fromkeys(candidates) if c and not valid_value(slot, c)
                      and not valid_value(slot, self.spec.normalize(slot.entity, c)) and lookup_value(self.spec, slot, c) is None]
        return rng.choice(candidates) if candidates else None

    # -- goals and users ----------------------------------------------------------------------------

    def sample_goal(self, rng: random.Random) -> Goal:
        count = rng.randint(1, min(self.config.max_tasks, len(self.tasks)))
        tasks = []
        for intent in rng.sample(self.tasks, count):
            form = self.spec.form_of_intent(intent)
            if form is None:
                tasks.append(Task(intent, self.answers[intent]))
            else:
                tasks.append(Task(intent, form.submit, {slot: rng.choice(self.values[slot]) for slot in form.slots}, form.name))
        c = self.config
        return Goal(tasks, greet=self.greet_intent is not None and rng.random() < c.p_greet,
                    thanks=self.thanks_intent is not None and rng.random() < c.p_thanks,
                    bye=self.bye_intent is not None and rng.random() < c.p_bye)

    def start(self, goal: Goal, rng: random.Random) -> "User":
        return User(self, goal, rng)

    # -- text ---------------------------------------------------------------------------------------

    def text(self, act: UserAct, rng: random.Random) -> str:
        """The act as a user would type it: one of the intent's examples with the act's entity types
        (one that already says the act's values where there is one), the values put in."""
        spec = self.spec
        if act.intent == OUT_OF_SCOPE:
            return rng.choice(spec.out_of_scope or DEFAULT_OUT_OF_SCOPE.get(spec.language, DEFAULT_OUT_OF_SCOPE["en"]))
        if act.intent == FAQ_INTENT:
            entry = rng.choice(spec.faq)
            return rng.choice([entry["question"], *entry["paraphrases"]])
        wanted = {spec.slots[s].entity: v for s, v in act.slots.items()}
        examples = spec.intents[act.intent]
        fitting = [ex for ex in examples if sorted(e[2] for e in ex.entities) == sorted(wanted)]
        saying = [ex for ex in fitting if all(e[3].lower() == wanted[e[2]].lower() for e in ex.entities)]
        if not fitting and act.slots:  # no example says these entities together: the bare values, as a short answer
            return ("" if spec.language == "zh" else " ").join(act.slots.values())
        if not fitting:  # an answer without its value: an example with its entities left out ("[yes] please" -> "please")
            stripped = [" ".join(_without_entities(ex).split()) for ex in examples]
            return rng.choice([t for t in stripped if t] or [ex.text for ex in examples])
        example = rng.choice(saying or fitting)
        out, last, said = [], 0, set()
        for start, end, kind, canonical in example.entities:
            out.append(example.text[last:start])
            if kind in wanted and kind not in said:
                keep = canonical.lower() == wanted[kind].lower()
                out.append(example.text[start:end] if keep else wanted[kind])
                said.add(kind)
            else:
                out.append(example.text[start:end])
            last = end
        out.append(example.text[last:])
        return "".join(out)


def _without_entities(example) -> str:
    out, last = [], 0
    for start, end, _, _ in example.entities:
        out.append(example.text[last:start])
        last = end
    out.append(example.text[last:])
    return "".join(out)


def story_answers(spec: AssistantSpec) -> dict[str, str]:
    """intent -> the action the stories answer it with most often."""
    counts: dict[str, Counter] = {}
    last = None
    for story in spec.stories:
        for step in story["steps"]:
            if "intent" in step:
                last = step["intent"]
            elif last is not None:
                counts.setdefault(last, Counter())[step["action"]] += 1
                last = None
    return {intent: max(sorted(c), key=c.get) for intent, c in counts.items()}


class User:
    """One simulated user: a goal and an agenda (a stack of acts, the next on top)."""

    def __init__(self, simulator: UserSimulator, goal: Goal, rng: random.Random):
        self.simulator, self.spec, self.config, self.goal, self.rng = simulator, simulator.spec, simulator.config, goal, rng
        self.done = [False] * len(goal.tasks)
        self.failed = False  # a form submitted with values other than the goal's
        self.turns = 0
        self.left = False
        self.repeats = 0
        self.last_act: UserAct | None = None
        self.current = None  # index of the task the last act asked for or answered
        agenda: list = []  # built bottom up: the last act first
        if goal.bye:
            agenda.append(("say", UserAct(simulator.bye_intent)))
        if goal.thanks:
            agenda.append(("say", UserAct(simulator.thanks_intent)))
        for index in reversed(range(len(goal.tasks))):
            agenda.append(("request", index))
        if goal.greet:
            agenda.append(("say", UserAct(simulator.greet_intent)))
        self.agenda = agenda

    @property
    def success(self) -> bool:
        return all(self.done) and not self.failed

    def _request(self, index: int) -> UserAct:
        task = self.goal.tasks[index]
        given = {}
        if task.form is not None:
            kinds = {e[2] for ex in self.spec.intents[task.intent] for e in ex.entities}
            given = {slot: value for slot, value in task.slots.items()
                     if self.spec.slots[slot].entity in kinds and self.rng.random() < self.config.p_upfront}
        return UserAct(task.intent, given)

    def _answer(self, slot: str, value: str) -> UserAct:
        intent = self.simulator.answering_intent(slot, value)
        roll = self.rng.random()
        if roll < self.config.p_drop:
            return UserAct(intent)
        if roll < self.config.p_drop + self.config.p_wrong:
            wrong = self.simulator.wrong_value(self.spec.slots[slot], value, self.rng)
            if wrong is not None:
                return UserAct(intent, {slot: wrong})
        return UserAct(intent, {slot: value})

    def next_act(self) -> UserAct | None:
        """The user's next act, or None once the user has left (the agenda is empty, the user gave
        up, or the turn limit is reached)."""
        if self.left or not self.agenda or self.turns >= self.config.max_turns:
            self.left = True
            return None
        roll = self.rng.random()
        if roll < self.config.p_out_of_scope:
            act = UserAct(OUT_OF_SCOPE)
        elif roll < self.config.p_out_of_scope + self.config.p_faq and self.spec.faq:
            act = UserAct(FAQ_INTENT)
        else:
            kind, item = self.agenda.pop()
            if kind == "request":
                self.current = item
                act = self._request(item)
            elif kind == "answer":
                self.current = item[0]
                act = self._answer(item[1], item[2])
            else:
                act = item
        self.turns += 1
        self.last_act = act
        return act

    def observe(self, action: str, slots: dict) -> None:
        """The system answered the last act with `action`; its state holds `slots`."""
        act, tasks = self.last_act, self.goal.tasks
        if action == ACTION_HANDOFF:
            self.left = True  # a person takes over: the simulated conversation ends here
            return
        served = None
        for index, task in enumerate(tasks):
            if not self.done[index] and action == task.action:
                if task.form is not None and any(slots.get(s, "").lower() != v.lower() for s, v in task.slots.items()):
                    self.failed = self.failed or index == self.current
                    continue
                served = index
                break
        if served is not None:
            self.done[served] = True
            self.repeats = 0
            return
        if action.startswith("ask_") and act is not None and act.intent not in (OUT_OF_SCOPE, FAQ_INTENT):
            slot = action[4:]
            owner = next((i for i, t in enumerate(tasks) if not self.done[i] and slot in t.slots), None)
            if owner is not None:
                self._push_once(("answer", (owner, slot, tasks[owner].slots[slot])))
                return
        if act is None or act.intent in (OUT_OF_SCOPE, FAQ_INTENT):
            return
        if action == ACTION_FALLBACK or self._unserved_request(act):
            # not understood, or the request was not served: say it again, up to `patience` times
            if self.repeats >= self.config.patience:
                self.left = True
                return
            self.repeats += 1
            self.agenda.append(("say", act))

    def _unserved_request(self, act: UserAct) -> bool:
        index = self.current
        return index is not None and not self.done[index] and act.intent == self.goal.tasks[index].intent

    def _push_once(self, entry) -> None:
        if not self.agenda or self.agenda[-1] != entry:
            self.agenda.append(entry)


def run_text_episode(assistant, user: User, rng: random.Random) -> dict:
    """One simulated conversation through `Assistant.respond` (understanding included): the user's
    acts rendered as text. Returns {success, turns, transcript}."""
    session_id, transcript = None, []
    while True:
        act = user.next_act()
        if act is None:
            break
        text = user.simulator.text(act, rng)
        turn = assistant.respond(text, session_id=session_id)
        session_id = turn["session_id"]
        transcript.append({"act": act.intent, "slots": dict(act.slots), "user": text, "action": turn["action"],
                           "intent": turn["intent"], "reply": turn["reply"]})
        user.observe(turn["action"], turn["slots"])
    if session_id is not None:
        assistant.reset(session_id)
    return {"success": user.success, "turns": user.turns, "transcript": transcript}


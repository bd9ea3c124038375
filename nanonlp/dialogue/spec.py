"""An assistant folder: YAML files in, one checked `AssistantSpec` out, or one error naming file, line and problem.

Every `*.yaml` / `*.yml` file in the folder is a mapping of sections (schema.json, shipped with the
package, describes them): `assistant` (name, language), `fallback`, `handoff`, `session`, `intents`,
`synonyms`, `slots`, `forms`, `responses`, `faq`, `stories`, `sentiment`. Mapping sections (intents,
synonyms, slots, forms, responses) may be split over files; list sections (faq, stories) concatenate;
the setting sections appear once. Test conversations (`conversations:`) live in their own file,
outside the folder, read by `read_conversations`.

Examples carry their entities inline: "block my [visa](card_type) card", or with the canonical value
"[bj](city=Beijing)". Synonyms map variants to a canonical value per entity type.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from nanonlp.errors import NanoNLPError

OUT_OF_SCOPE = "out_of_scope"
FAQ_INTENT = "faq"  # the classifier's label for every FAQ question; the FAQ index then picks the answer
# Actions the assistant always has, beside the responses' names and the forms' questions.
ACTION_FAQ, ACTION_FALLBACK, ACTION_HANDOFF = "action_faq", "action_fallback", "action_handoff"
BUILTIN_ACTIONS = (ACTION_FAQ, ACTION_FALLBACK, ACTION_HANDOFF)
SETTING_SECTIONS = ("assistant", "fallback", "handoff", "session", "sentiment")
MAPPING_SECTIONS = ("intents", "synonyms", "slots", "forms", "responses")
LIST_SECTIONS = ("faq", "stories", "out_of_scope")

ANNOTATION = re.compile(r"\[([^\[\]]+)\]\(([A-Za-z_][\w-]*)(?:=([^()]+))?\)")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


class AssistantFolderError(NanoNLPError):
    """A problem in an assistant folder: file, line and what to change."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {problem}")


# ---------------------------------------------------------------------------------------------------
# YAML with line numbers


class Located:
    """A file's parsed YAML and the line of every value, by its path of keys and indices."""

    def __init__(self, path: Path, data, lines: dict):
        self.path, self.data, self.lines = path, data, lines

    def line(self, *keys) -> int | None:
        """The line of the value at `keys`, or of its nearest parent that has one."""
        keys = tuple(keys)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys)

    def error(self, keys, problem: str) -> AssistantFolderError:
        return AssistantFolderError(self.path, self.line(*keys), problem)


def read_yaml_located(path: Path) -> Located:
    """Parse one YAML file keeping the line of every value; duplicate keys are errors (YAML allows them silently)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise AssistantFolderError(path, None, f"is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        raise AssistantFolderError(path, line, f"YAML error: {err.problem or err.context}.") from None
    finally:
        loader.dispose()
    lines: dict = {}

    def build(node, keys: tuple):
        lines.setdefault(keys, node.start_mark.line + 1)  # a mapping value keeps its key's line
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)):
                    raise AssistantFolderError(path, key_node.start_mark.line + 1, "a key must be a plain word or number.")
                key = str(key)
                if key in out:
                    raise AssistantFolderError(path, key_node.start_mark.line + 1,
                                               f"'{key}' appears twice in the same mapping (first on line {lines[keys + (key,)]}); "
                                               "merge the two entries.")
                lines[keys + (key,)] = key_node.start_mark.line + 1
                out[key] = build(value_node, keys + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, keys + (i,)) for i, item in enumerate(node.value)]
        return loader.construct_object(node)

    data = build(node, ()) if node is not None else {}
    return Located(path, data, lines)


# ---------------------------------------------------------------------------------------------------
# the checked assistant


@dataclass
class Example:
    """A training utterance with its entities: (start, end, entity type, canonical value)."""

    text: str
    entities: list = field(default_factory=list)


@dataclass
class Slot:
    name: str
    entity: str
    question: str = ""
    values: list = field(default_factory=list)  # allowed canonical values ([] any)
    pattern: str = ""  # a regular expression the value must match whole ("" any)
    invalid: str = ""  # said when a value fails validation


@dataclass
class Form:
    name: str
    intent: str  # the intent that starts it
    slots: list  # asked in this order
    submit: str  # the response said when every slot is filled


@dataclass
class AssistantSpec:
    folder: Path
    name: str = "assistant"
    language: str = "en"
    intents: dict = field(default_factory=dict)  # intent -> [Example]
    descriptions: dict = field(default_factory=dict)  # intent -> what the fallback suggests for it ("" none)
    synonyms: dict = field(default_factory=dict)  # entity -> {variant (lowercased): canonical}
    slots: dict = field(default_factory=dict)  # name -> Slot
    forms: dict = field(default_factory=dict)  # name -> Form
    responses: dict = field(default_factory=dict)  # action -> [template variations]
    faq: list = field(default_factory=list)  # [{"question", "paraphrases", "answer"}]
    stories: list = field(default_factory=list)  # [{"name", "steps": [{"intent", "entities"} | {"action"}]}]
    out_of_scope: list = field(default_factory=list)  # texts no intent covers: they tune the out-of-scope threshold
    settings: dict = field(default_factory=dict)  # fallback, handoff, session, sentiment: defaults filled in

    @property
    def classifier_intents(self) -> list[str]:
        """The intents the classifier tells apart: the folder's, and `faq` where there is an FAQ."""
        return list(self.intents) + ([FAQ_INTENT] if self.faq else [])

    @property
    def entities(self) -> list[str]:
        types = {e[2] for examples in self.intents.values() for ex in examples for e in ex.entities}
        return sorted(types | {slot.entity for slot in self.slots.values()})

    @property
    def actions(self) -> list[str]:
        """Every action the policy may choose: the responses, the forms' questions, the built-in ones."""
        asks = [f"ask_{slot}" for form in self.forms.values() for slot in form.slots]
        return sorted(set(self.responses) | set(asks) | set(BUILTIN_ACTIONS))

    def form_of_intent(self, intent: str) -> Form | None:
        return next((form for form in self.forms.values() if form.intent == intent), None)

    def normalize(self, entity: str, value: str) -> str:
        """The canonical value of an entity's text (its synonym's, else the text as written)."""
        return self.synonyms.get(entity, {}).get(value.strip().lower(), value.strip())


DEFAULTS = {
    "fallback": {"intent_threshold": "auto", "faq_threshold": 0.4, "suggestions": 3, "suggest": [],
                 "message": {"en": "Sorry, I did not understand. Here is what I can do:", "zh": "抱歉，我没有听懂。我可以帮您："}},
    "handoff": {"negative_turns": 2, "negative_threshold": 0.6, "intents": [],
                "message": {"en": "Let me connect you with a colleague; they will see our conversation.",
                            "zh": "我为您转接人工客服，他们会看到我们的对话记录。"}},
    "session": {"max_history": 20, "expiry_minutes": 60},
    "sentiment": {"run": "", "examples": {}},
}


def schema() -> dict:
    """The JSON Schema of one assistant file (schema.json, shipped with the package)."""
    return json.loads(resources.files("nanonlp.dialogue").joinpath("schema.json").read_text(encoding="utf-8"))


def parse_example(text: str) -> tuple[str, list[tuple[int, int, str, str]]]:
    """'block my [visa](card_type) card' -> ('block my visa card', [(9, 13, 'card_type', 'visa')])."""
    out, entities, last = [], [], 0
    length = 0
    for match in ANNOTATION.finditer(text):
        out.append(text[last : match.start()])
        length += match.start() - last
        surface = match.group(1)
        entities.append((length, length + len(surface), match.group(2), (match.group(3) or surface).strip()))
        out.append(surface)
        length += len(surface)
        last = match.end()
    out.append(text[last:])
    return "".join(out), entities


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def read_assistant(folder: str | Path) -> AssistantSpec:
    """Read and check an assistant folder; the first problem found raises AssistantFolderError."""
    import jsonschema

    folder = Path(folder)
    if not folder.is_dir():
        raise AssistantFolderError(folder, None, "is not a folder; pass the folder that holds the assistant's YAML files.")
    files = _files(folder)
    if not files:
        raise AssistantFolderError(folder, None, "holds no .yaml files; write at least intents.yaml (see docs/assistant.md).")
    validator = jsonschema.Draft202012Validator(schema())
    located = [read_yaml_located(path) for path in files]
    where: dict = {}  # (section, key) -> Located, for entries split over files
    merged: dict = {}
    for doc in located:
        if not isinstance(doc.data, dict):
            raise doc.error((), "the file must be a mapping of sections (intents:, slots:, responses: ...).")
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc.data))
        if error is not None:
            keys = tuple(error.absolute_path)
            at = ".".join(str(k) for k in keys) or "the file"
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
                keys += tuple(extra[:1])  # the line of the unknown key itself
            raise doc.error(keys, f"{at}: {_schema_message(error)}")
        for section, value in doc.data.items():
            if section in SETTING_SECTIONS:
                if section in merged:
                    raise doc.error((section,), f"section '{section}' is also in {where[(section, None)].path.name}; keep one.")
                merged[section], where[(section, None)] = value, doc
            elif section in MAPPING_SECTIONS:
                target = merged.setdefault(section, {})
                for key, entry in (value or {}).items():
                    if key in target:
                        raise doc.error((section, key), f"{section[:-1]} '{key}' is also defined in {where[(section, key)].path.name}, "
                                                        f"line {where[(section, key)].line(section, key)}; keep one.")
                    target[key], where[(section, key)] = entry, doc
            elif section in LIST_SECTIONS:
                for index, entry in enumerate(value or []):
                    merged.setdefault(section, []).append((entry, doc, (section, index)))
    return _build(folder, merged, where, files)


def _schema_message(error) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key '{extra[0]}'; the keys here are: {known}."
    if error.validator == "required":
        return f"{error.message.replace(' is a required property', '')} is required here."
    return error.message + "."


def _build(folder: Path, merged: dict, where: dict, files: list[Path]) -> AssistantSpec:
    first = files[0]
    spec = AssistantSpec(folder=folder)
    settings = merged.get("assistant", {}) or {}
    spec.name = settings.get("name", folder.name)
    spec.language = settings.get("language", "en")
    for section, defaults in DEFAULTS.items():
        given = merged.get(section) or {}
        spec.settings[section] = {**defaults, **given}
    for section in ("fallback", "handoff"):
        message = spec.settings[section]["message"]
        if isinstance(message, dict):
            spec.settings[section]["message"] = message.get(spec.language) or next(iter(message.values()))

    # synonyms: entity -> canonical -> variants
    for entity, table in (merged.get("synonyms") or {}).items():
        for canonical, variants in table.items():
            for variant in [canonical] + list(variants):
                spec.synonyms.setdefault(entity, {})[str(variant).strip().lower()] = str(canonical)

    # intents: examples with inline entities, no example twice anywhere
    seen: dict = {}
    if not merged.get("intents"):
        raise AssistantFolderError(first if len(files) == 1 else folder, None,
                                   "no intents: add an 'intents:' section with at least two intents and their examples.")
    for intent, entry in merged["intents"].items():
        doc = where[("intents", intent)]
        if intent in (OUT_OF_SCOPE, FAQ_INTENT):
            raise doc.error(("intents", intent), f"'{intent}' is a name the assistant keeps for itself ({OUT_OF_SCOPE}: what no "
                                                 f"intent covers; {FAQ_INTENT}: the FAQ's questions); rename the intent.")
        examples = []
        for index, raw in enumerate(entry["examples"]):
            keys = ("intents", intent, "examples", index)
            text, entities = parse_example(str(raw))
            if "](" in text or re.search(r"\[[^\]]*\]\(\s*\)", str(raw)):
                raise doc.error(keys, f"the annotation in '{raw}' is malformed; write entities as [text](entity) or [text](entity=value).")
            if not text.strip():
                raise doc.error(keys, "an empty example; remove it.")
            key = " ".join(text.lower().split())
            if key in seen:
                other_intent, other_doc, other_keys = seen[key]
                raise doc.error(keys, f"duplicate example '{text}': it is already an example of intent '{other_intent}' "
                                      f"({other_doc.path.name}, line {other_doc.line(*other_keys)}); keep it once.")
            seen[key] = (intent, doc, keys)
            examples.append(Example(text, [(s, e, kind, spec.normalize(kind, value)) for s, e, kind, value in entities]))
        spec.intents[intent] = examples
        spec.descriptions[intent] = str(entry.get("description", ""))
    if len(spec.intents) < 2:
        raise AssistantFolderError(where[("intents", next(iter(spec.intents)))].path, None,
                                   "an assistant needs at least two intents to tell apart.")

    for name, entry in (merged.get("slots") or {}).items():
        doc = where[("slots", name)]
        slot = Slot(name, entry.get("entity", name), entry.get("question", ""), [str(v) for v in entry.get("values", [])],
                    str(entry.get("pattern", "")), entry.get("invalid", ""))
        if slot.pattern:
            try:
                re.compile(slot.pattern)
            except re.error as err:
                raise doc.error(("slots", name, "pattern"), f"slot '{name}': the pattern is not a regular expression ({err}).") from None
        spec.slots[name] = slot

    for name, entry in (merged.get("responses") or {}).items():
        spec.responses[name] = [str(v) for v in (entry if isinstance(entry, list) else [entry])]

    for name, entry in (merged.get("forms") or {}).items():
        doc = where[("forms", name)]
        if entry["intent"] not in spec.intents:
            raise doc.error(("forms", name, "intent"), f"form '{name}' starts on intent '{entry['intent']}', which is not defined; "
                                                       f"the intents are: {', '.join(spec.intents)}.")
        for index, slot in enumerate(entry["slots"]):
            if slot not in spec.slots:
                raise doc.error(("forms", name, "slots", index), f"form '{name}' needs slot '{slot}', which is not defined under slots:.")
            if not spec.slots[slot].question:
                raise doc.error(("forms", name, "slots", index), f"slot '{slot}' is asked by form '{name}' but has no question:.")
        if entry["submit"] not in spec.responses:
            raise doc.error(("forms", name, "submit"), f"form '{name}' submits with response '{entry['submit']}', which is not "
                                                       "defined under responses:.")
        spec.forms[name] = Form(name, entry["intent"], list(entry["slots"]), entry["submit"])
    owners = {}
    for form in spec.forms.values():
        if form.intent in owners:
            doc = where[("forms", form.name)]
            raise doc.error(("forms", form.name, "intent"), f"forms '{owners[form.intent]}' and '{form.name}' both start on intent "
                                                            f"'{form.intent}'; an intent starts one form.")
        owners[form.intent] = form.name

    # every {placeholder} in a response names a slot
    for name, variations in spec.responses.items():
        doc = where[("responses", name)]
        for index, template in enumerate(variations):
            for placeholder in PLACEHOLDER.findall(template):
                if placeholder not in spec.slots:
                    raise doc.error(("responses", name, index) if isinstance(merged["responses"][name], list) else ("responses", name),
                                    f"response '{name}' uses {{{placeholder}}}, which is not a slot; the slots are: "
                                    f"{', '.join(spec.slots) or 'none'}.")

    # handoff intents exist
    handoff_doc = where.get(("handoff", None))
    for index, intent in enumerate(spec.settings["handoff"]["intents"]):
        if intent not in spec.intents:
            raise handoff_doc.error(("handoff", "intents", index), f"handoff intent '{intent}' is not defined under intents:.")
    for index, intent in enumerate(spec.settings["fallback"]["suggest"]):
        if intent not in spec.intents:
            raise where[("fallback", None)].error(("fallback", "suggest", index), f"fallback.suggest names intent '{intent}', "
                                                                                 "which is not defined under intents:.")
    threshold = spec.settings["fallback"]["intent_threshold"]
    if threshold != "auto" and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise where[("fallback", None)].error(("fallback", "intent_threshold"), "intent_threshold must be 'auto' or a number in [0, 1).")

    for entry, doc, keys in merged.get("faq", []):
        spec.faq.append({"question": str(entry["question"]), "paraphrases": [str(p) for p in entry.get("paraphrases", [])],
                         "answer": str(entry["answer"])})

    for entry, doc, keys in merged.get("out_of_scope", []):
        spec.out_of_scope.append(str(entry))

    actions = set(spec.actions)
    for entry, doc, keys in merged.get("stories", []):
        steps = []
        for index, step in enumerate(entry["steps"]):
            step_keys = keys + ("steps", index)
            if "user" in step:
                intent = step["user"]
                if intent not in spec.classifier_intents and intent != OUT_OF_SCOPE:
                    raise doc.error(step_keys, f"story '{entry['name']}' has the user say intent '{intent}', which is not defined "
                                               "under intents:.")
                entities = {str(k): str(v) for k, v in (step.get("entities") or {}).items()}
                for entity in entities:
                    if entity not in spec.slots and entity not in spec.entities:
                        raise doc.error(step_keys, f"story '{entry['name']}' gives entity '{entity}', which is neither a slot nor "
                                                   "an entity of any example.")
                steps.append({"intent": intent, "entities": entities})
            else:
                action = step["action"]
                if action not in actions:
                    raise doc.error(step_keys, f"story '{entry['name']}' has action '{action}', which is neither a response, a "
                                               f"form's ask_<slot>, nor one of {', '.join(BUILTIN_ACTIONS)}.")
                if not steps or "intent" not in steps[-1]:
                    raise doc.error(step_keys, f"story '{entry['name']}': action '{action}' must follow a user step (one action a turn).")
                steps.append({"action": action})
        if steps and "intent" in steps[-1]:
            raise doc.error(keys, f"story '{entry['name']}' ends on a user step; add the action that answers it.")
        spec.stories.append({"name": entry["name"], "steps": steps})

    sentiment = spec.settings["sentiment"]
    if sentiment["run"] and not Path(sentiment["run"]).is_absolute():
        sentiment["run"] = str((folder / sentiment["run"]).resolve())
    return spec


def check(folder: str | Path) -> AssistantSpec:
    """`nanonlp assistant check DIR`: the checked spec, or AssistantFolderError."""
    return read_assistant(folder)


# ---------------------------------------------------------------------------------------------------
# test conversations


def read_conversations(path: str | Path, spec: AssistantSpec) -> list[dict]:
    """A conversations file: `conversations: [{name, turns: [{user: text, intent, entities: {slot: value}, action}]}]`.
    The user's text may carry inline annotations ([visa](card_type)), which give the gold entity spans for slot F1."""
    path = Path(path)
    if not path.is_file():
        raise NanoNLPError(f"conversations file '{path}' does not exist.")
    doc = read_yaml_located(path)
    conversations = doc.data.get("conversations") if isinstance(doc.data, dict) else None
    if not isinstance(conversations, list) or not conversations:
        raise doc.error((), "expected 'conversations:', a list of {name, turns: [{user, intent, action}]}.")
    out = []
    known_actions = set(spec.actions)
    for c, conversation in enumerate(conversations):
        keys = ("conversations", c)
        if not isinstance(conversation, dict) or not isinstance(conversation.get("turns"), list) or not conversation["turns"]:
            raise doc.error(keys, "a conversation needs 'turns:', a non-empty list.")
        turns = []
        for t, turn in enumerate(conversation["turns"]):
            turn_keys = keys + ("turns", t)
            if not isinstance(turn, dict) or "user" not in turn or "intent" not in turn:
                raise doc.error(turn_keys, "a turn needs 'user' (the text) and 'intent' (the gold intent, or out_of_scope).")
            if turn["intent"] not in spec.classifier_intents and turn["intent"] != OUT_OF_SCOPE:
                raise doc.error(turn_keys, f"intent '{turn['intent']}' is not one of the assistant's intents.")
            if "action" in turn and turn["action"] not in known_actions:
                raise doc.error(turn_keys, f"action '{turn['action']}' is not one of the assistant's actions.")
            text, entities = parse_example(str(turn["user"]))
            turns.append({"user": text, "intent": turn["intent"], "entities": entities, "action": turn.get("action"),
                          "line": doc.line(*turn_keys)})
        out.append({"name": str(conversation.get("name", f"conversation {c + 1}")), "turns": turns})
    return out

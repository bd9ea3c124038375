"""The settings of one analysis: which fields to read, which models to run, the event rules and the
alert settings. Defaults live here, in the dataclasses; a YAML file (`--config`) and the command's
flags fill them in, and an unknown key is an error, never ignored.

    fields:   {text: text, time: time, source: source, id: id, entity: ticker}
    sentiment: {run: runs/fin_sentiment, neutral_band: 0.1}
    entities: {run: runs/ner, types: [ORG]}     # or leave out and use fields.entity
    events:
      run: runs/fin_events                     # optional multi-label classifier
      rules:
        profit_warning: {words: ["profit warning", "业绩预警"], severe: true}
        layoffs: {words: [layoffs, "job cuts", 裁员]}
    alerts: {period: day, z_threshold: 3.0, min_count: 10, warmup: 7, consecutive: 1}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from nanonlp.errors import ConfigError


@dataclass
class Fields:
    text: str = "text"  # the document's text (required in every row)
    time: str | None = None  # ISO 8601 time or date (UTC when it names no zone), or Unix seconds
    source: str | None = None  # where it came from (a site, a feed), kept and shown
    id: str | None = None  # a stable id; default: file name and line number
    entity: str | None = None  # the entity (company) the document is about; several separated by `entity_separator`
    entity_separator: str = ";"


@dataclass
class Sentiment:
    run: str | None = None  # a classification run (labels named negative/neutral/positive) or a regression run
    neutral_band: float = 0.1  # a regression score within +-band counts as neutral, below -band as negative


@dataclass
class Entities:
    run: str | None = None  # a tagging run; its entities join those of fields.entity
    types: list[str] = field(default_factory=list)  # entity types kept from the tagger (empty: all)


@dataclass
class EventRule:
    words: list[str] = field(default_factory=list)  # words or phrases; matched case-insensitively, whole words for Latin script
    severe: bool = False  # one document with this event raises an alert


@dataclass
class Events:
    run: str | None = None  # a multi-label classification run whose labels are event types
    rules: dict[str, EventRule] = field(default_factory=dict)
    severe: list[str] = field(default_factory=list)  # event types (of the run or the rules) that are severe


@dataclass
class Duplicates:
    threshold: float = 0.8  # estimated Jaccard similarity of shingles at or above which a document is a repost
    shingle: int = 5  # characters per shingle of the normalized text
    window: int = 50_000  # how many recent documents a new one is compared with (bounds memory)


@dataclass
class Alerts:
    period: str = "day"  # day, week or all
    z_threshold: float = 3.0  # a z-score at or past this is a turn
    burst_z: float = 4.0  # a volume z-score at or past this is a burst
    min_count: int = 10  # documents a period needs before it is judged (or counts as a baseline period)
    warmup: int = 7  # baseline periods an entity needs before anything but a severe event fires
    baseline: int = 28  # periods in the rolling baseline
    consecutive: int = 1  # periods a condition must hold before it fires (debouncing)
    evidence: int = 5  # documents shown per alert
    webhook: str | None = None  # URL that gets each new alert as a JSON POST
    webhook_retries: int = 4  # further tries after a failed POST, with exponential backoff
    webhook_timeout: float = 10.0  # seconds per try


@dataclass
class AnalyzeConfig:
    fields: Fields = field(default_factory=Fields)
    sentiment: Sentiment = field(default_factory=Sentiment)
    entities: Entities = field(default_factory=Entities)
    events: Events = field(default_factory=Events)
    duplicates: Duplicates = field(default_factory=Duplicates)
    alerts: Alerts = field(default_factory=Alerts)
    batch_size: int = 512  # documents per batch through the models
    language: str = "en"  # the report's language: en or zh
    top_entities: int = 6  # entities drawn over time in the report

    def check(self) -> "AnalyzeConfig":
        a = self.alerts
        if a.period not in ("day", "week", "all"):
            raise ConfigError(f"alerts.period must be day, week or all, got '{a.period}'.")
        if self.language not in ("en", "zh"):
            raise ConfigError(f"language must be en or zh, got '{self.language}'.")
        for name, value in (("alerts.min_count", a.min_count), ("alerts.consecutive", a.consecutive), ("alerts.baseline", a.baseline),
                            ("batch_size", self.batch_size), ("alerts.evidence", a.evidence), ("duplicates.shingle", self.duplicates.shingle),
                            ("duplicates.window", self.duplicates.window)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}.")
        if a.warmup < 0 or a.warmup > a.baseline:
            raise ConfigError(f"alerts.warmup must be between 0 and alerts.baseline ({a.baseline}), got {a.warmup}.")
        if a.z_threshold <= 0 or a.burst_z <= 0:
            raise ConfigError("alerts.z_threshold and alerts.burst_z must be positive.")
        if not 0 < self.duplicates.threshold <= 1:
            raise ConfigError(f"duplicates.threshold must be in (0, 1], got {self.duplicates.threshold}; 1 marks exact reposts only.")
        if not 0 <= self.sentiment.neutral_band < 1:
            raise ConfigError(f"sentiment.neutral_band must be in [0, 1), got {self.sentiment.neutral_band}.")
        for name, rule in self.events.rules.items():
            if not rule.words:
                raise ConfigError(f"event rule '{name}' has no words; give it words: [...] or remove it.")
        return self

    def severe_events(self) -> set[str]:
        return set(self.events.severe) | {name for name, rule in self.events.rules.items() if rule.severe}


def _build(cls, values, where: str):
    """A dataclass from a mapping, refusing unknown keys and wrong types (one sentence naming the key)."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{where or 'the analysis config'}' must be a mapping of keys to values, got {type(values).__name__}.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"unknown key '{dotted}' in the analysis config; known keys here: {', '.join(known)}.")
        kind = known[key].type
        default = getattr(cls(), key) if cls is not EventRule else None
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, dotted)
        elif cls is Events and key == "rules":
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' must map event names to {{words: [...], severe: false}}.")
            kwargs[key] = {str(name): _build(EventRule, rule if isinstance(rule, dict) else {"words": rule}, f"{dotted}.{name}")
                           for name, rule in value.items()}
        else:
            kwargs[key] = _typed(value, kind, dotted)
    return cls(**kwargs)


def _typed(value, kind: str, dotted: str):
    kind = str(kind)
    if value is None and "None" in kind:
        return None
    if kind.startswith("list"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"'{dotted}' must be a list, got {value!r}.")
        return [str(v) for v in value]
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"'{dotted}' must be true or false, got {value!r}.")
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{dotted}' must be a whole number, got {value!r}.")
        return value
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{dotted}' must be a number, got {value!r}.")
        return float(value)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"'{dotted}' must be a string, got {value!r}.")
    return str(value)


def from_mapping(values: dict | None) -> AnalyzeConfig:
    return _build(AnalyzeConfig, values or {}, "").check()


def load_analyze_config(path: str | Path | None, overrides: dict | None = None) -> AnalyzeConfig:
    """The YAML file at `path` (or the defaults), then `overrides` ({"fields.text": "review", ...}) on top."""
    import yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"analysis config '{path}' does not exist.")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"'{path}' is not readable YAML ({err}).") from None
        if not isinstance(values, dict):
            raise ConfigError(f"'{path}' must hold a mapping (fields:, sentiment:, events:, alerts: ...).")
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return from_mapping(values)

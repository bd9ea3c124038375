"""Training an assistant's parts, each into its own sub-run of the assistant's run directory:

    RUN/assistant/     a copy of the assistant folder (the run needs nothing else)
    RUN/intent/        the intent classifier (a `classify` run: fastText-style bag of n-grams)
    RUN/tagger/        the slot tagger (a `tag` run: BiLSTM-CRF; words with a character CNN in
                       English, characters in Chinese), when any example carries an entity
    RUN/sentiment/     the sentiment classifier (a copy of a given run, or one trained on the folder's examples)
    RUN/faq.json       the FAQ index (BM25 over character n-grams)
    RUN/understanding.json   the tuned out-of-scope threshold and how it was chosen
    RUN/model.safetensors    the learned policy (trained by the shared loop: nanonlp.tasks.assistant)

The intent classifier is trained twice: on 1 - holdout of each intent's examples, to tune the
out-of-scope threshold on the held-out rest; then on every example, keeping that threshold.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from nanonlp.dialogue.spec import FAQ_INTENT, OUT_OF_SCOPE, AssistantSpec
from nanonlp.errors import NanoNLPError
from nanonlp.io import atomic_write_text, save_json


def _jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _fit(raw: dict, quiet: bool = True) -> None:
    from nanonlp.config import from_dict
    from nanonlp.train import fit

    fit(from_dict(raw), quiet=quiet, overwrite=True)


def intent_examples(spec: AssistantSpec) -> list[tuple[str, str]]:
    """(text, intent) for every example; FAQ questions and paraphrases are the intent `faq`."""
    rows = [(example.text, intent) for intent, examples in spec.intents.items() for example in examples]
    rows += [(text, FAQ_INTENT) for entry in spec.faq for text in [entry["question"], *entry["paraphrases"]]]
    return rows


def split_held_out(rows: list[tuple[str, str]], share: float, seed: int) -> tuple[list, list]:
    """Per intent, a seeded `share` of its examples held out (at least one where it has three or more)."""
    by_intent: dict[str, list] = {}
    for row in rows:
        by_intent.setdefault(row[1], []).append(row)
    rng = random.Random(seed)
    train, held = [], []
    for intent in sorted(by_intent):
        examples = sorted(by_intent[intent])
        rng.shuffle(examples)
        n = int(round(share * len(examples))) if len(examples) >= 3 else 0
        n = max(n, 1) if len(examples) >= 3 and share > 0 else n
        held += examples[:n]
        train += examples[n:]
    return train, held


def tune_threshold(confidences: list[float], predicted: list[str], gold: list[str], max_in_scope_loss: float = 0.05) -> dict:
    """The out-of-scope threshold from held-out examples (an answer below it is out_of_scope).

    With out-of-scope examples among them: the threshold that answers the most of them right (an
    in-scope example: the right intent at or above the threshold; an out-of-scope one: below it),
    the lowest such threshold on a tie. (Balanced accuracy would let a dozen out-of-scope texts
    outweigh a hundred in-scope ones and push the threshold up until half the customers hear the fallback.) Without: the highest threshold that costs at most
    `max_in_scope_loss` of the in-scope accuracy the model has with no threshold. Candidates are 0
    and the held-out confidences themselves."""
    if not confidences:
        return {"threshold": 0.0, "rule": "no held-out examples", "in_scope_accuracy": None, "out_of_scope_recall": None}
    in_scope = [i for i, g in enumerate(gold) if g != OUT_OF_SCOPE]
    out_scope = [i for i, g in enumerate(gold) if g == OUT_OF_SCOPE]

    def figures(t: float) -> tuple[float, float | None]:
        accuracy = sum(predicted[i] == gold[i] and confidences[i] >= t for i in in_scope) / max(len(in_scope), 1)
        recall = sum(confidences[i] < t for i in out_scope) / len(out_scope) if out_scope else None
        return accuracy, recall

    candidates = sorted({0.0, *confidences})
    if out_scope:
        def right(t: float) -> int:
            return sum(predicted[i] == gold[i] and confidences[i] >= t for i in in_scope) + sum(confidences[i] < t for i in out_scope)

        best = max(candidates, key=lambda t: (right(t), -t))
        rule = "most held-out in-scope and out-of-scope examples answered right"
    else:
        floor = figures(0.0)[0] - max_in_scope_loss
        best = max(t for t in candidates if figures(t)[0] >= floor - 1e-12)
        rule = f"highest threshold losing at most {max_in_scope_loss:g} of held-out in-scope accuracy"
    accuracy, recall = figures(best)
    return {"threshold": best, "rule": rule, "in_scope_accuracy": accuracy, "out_of_scope_recall": recall}


def classify_config(train_path: Path, dev_path: Path, out_dir: Path, language: str, steps: int, width: int, seed: int,
                    device: str) -> dict:
    return {
        "task": "classify",
        "data": {"path": str(train_path), "dev_path": str(dev_path), "format": "jsonl", "text_column": "text",
                 "label_column": "label", "tokenizer": "word", "lowercase": True, "min_freq": 1,
                 # words and word bigrams; in English also each word's character n-grams (typos, inflections);
                 # Chinese is read a character at a time, and the bigrams are character bigrams
                 "ngrams": 2, "char_ngrams": 4 if language == "en" else 0, "ngram_buckets": 20000, "max_length": 64},
        "model": {"type": "bag_of_ngrams", "n_embd": width, "dropout": 0.0},
        "train": {"out_dir": str(out_dir), "max_steps": steps, "batch_size": 32, "learning_rate": 0.02, "min_lr": 1e-3, "peak_tflops": 1.0,
                  "warmup_steps": 10, "weight_decay": 0.0, "eval_interval": steps, "log_interval": max(steps // 10, 1),
                  "keep_checkpoints": 1, "seed": seed, "device": device, "dtype": "float32"},
        "classify": {"calibrate": False},
    }


def train_intents(spec: AssistantSpec, run_dir: Path, options, device: str, say) -> dict:
    """Tune the threshold on held-out examples, then train on all; returns understanding.json's content."""
    from nanonlp.predict.classify import load as load_classifier

    rows = intent_examples(spec)
    train, held = split_held_out(rows, options.holdout, options.seed)
    work = run_dir / "data" / "intent"
    out_of_scope = [(text, OUT_OF_SCOPE) for text in spec.out_of_scope]
    _jsonl(work / "train.jsonl", [{"text": t, "label": l} for t, l in train])
    _jsonl(work / "held_out.jsonl", [{"text": t, "label": l} for t, l in (held or train)])
    _jsonl(work / "all.jsonl", [{"text": t, "label": l} for t, l in rows])
    threshold_setting = spec.settings["fallback"]["intent_threshold"]
    tuning: dict = {"threshold": threshold_setting, "rule": "set in the assistant folder (fallback.intent_threshold)"}
    if threshold_setting == "auto":
        tune_dir = run_dir / "data" / "intent_tune"
        _fit(classify_config(work / "train.jsonl", work / "held_out.jsonl", tune_dir, spec.language, options.intent_steps,
                             options.intent_width, options.seed, device))
        classifier = load_classifier(tune_dir, device)
        texts = [t for t, _ in held] + [t for t, _ in out_of_scope]
        gold = [l for _, l in held] + [l for _, l in out_of_scope]
        answers = classifier.predict(texts) if texts else []
        tuning = tune_threshold([a["probability"] for a in answers], [max(a["probabilities"], key=a["probabilities"].get)
                                                                      for a in answers], gold, options.max_in_scope_loss)
        tuning["held_out"] = {"in_scope": len(held), "out_of_scope": len(out_of_scope)}
        shutil.rmtree(tune_dir, ignore_errors=True)
        say(f"intent threshold {tuning['threshold']:.3f} ({tuning['rule']}; held-out in-scope accuracy "
            f"{tuning['in_scope_accuracy']:.3f}" + (f", out-of-scope recall {tuning['out_of_scope_recall']:.3f})"
                                                   if tuning["out_of_scope_recall"] is not None else ")"))
    _fit(classify_config(work / "all.jsonl", work / "held_out.jsonl", run_dir / "intent", spec.language, options.intent_steps,
                         options.intent_width, options.seed, device))
    say(f"intent classifier: {len(rows)} examples, {len({l for _, l in rows})} intents -> {run_dir / 'intent'}")
    return {"intent_threshold": float(tuning["threshold"]), "tuning": tuning}


def tagged_sentences(spec: AssistantSpec) -> list[dict]:
    """Every intent example as tokens with IOB2 tags from its inline entities (examples without entities teach O)."""
    from nanonlp.predict.tag import tokenize

    out = []
    for intent, examples in spec.intents.items():
        for example in examples:
            tokens = tokenize(example.text)
            tags = ["O"] * len(tokens)
            for start, end, kind, _ in example.entities:
                inside = [i for i, (_, s, e) in enumerate(tokens) if s >= start and e <= end]
                for position, i in enumerate(inside):
                    tags[i] = ("B-" if position == 0 else "I-") + kind
            if tokens:
                out.append({"tokens": [t for t, _, _ in tokens], "tags": tags})
    return out


def train_tagger(spec: AssistantSpec, run_dir: Path, options, device: str, say) -> bool:
    sentences = tagged_sentences(spec)
    if not any(tag != "O" for s in sentences for tag in s["tags"]):
        say("slot tagger: no example carries an entity; none trained")
        return False
    work = run_dir / "data" / "tagger"
    _jsonl(work / "train.jsonl", sentences)
    character_language = spec.language == "zh"
    _fit({
        "task": "tag",
        "data": {"path": str(work / "train.jsonl"), "dev_path": str(work / "train.jsonl"), "test_path": str(work / "train.jsonl"),
                 "format": "jsonl", "scheme": "iob2", "inner_scheme": "bioes", "lowercase": not character_language},
        "model": {"type": "bilstm_crf", "embed_dim": 64, "char_features": "none" if character_language else "cnn",
                  "char_embed_dim": 16, "char_hidden": 32, "hidden_size": options.tagger_hidden, "dropout": 0.2,
                  "word_dropout": 0.1, "crf": True},
        "train": {"out_dir": str(run_dir / "tagger"), "max_steps": options.tagger_steps, "batch_size": 16, "learning_rate": 0.01,
                  "min_lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.0, "grad_clip": 5.0, "eval_interval": options.tagger_steps, "peak_tflops": 1.0,
                  "log_interval": max(options.tagger_steps // 10, 1), "keep_checkpoints": 1, "seed": options.seed, "device": device,
                  "dtype": "float32"},
    })
    say(f"slot tagger: {len(sentences)} sentences, entity types {', '.join(spec.entities)} -> {run_dir / 'tagger'}")
    return True


def train_sentiment(spec: AssistantSpec, run_dir: Path, options, device: str, say) -> str:
    """'run' (a copied classification run), 'trained' (on the folder's examples) or 'none'."""
    settings = spec.settings["sentiment"]
    target = run_dir / "sentiment"
    if settings["run"]:
        from nanonlp.predict.classify import read_labels

        source = Path(settings["run"])
        labels = read_labels(source)
        if "negative" not in labels:
            raise NanoNLPError(f"sentiment.run '{source}' has the labels {', '.join(labels)}; the assistant needs one called "
                               "'negative' (train it on labels negative/neutral/positive).")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("data", "step_*", "latest", "*.png"))
        say(f"sentiment: copied the run '{source}'")
        return "run"
    examples = settings["examples"]
    if not examples:
        say("sentiment: no sentiment.run and no sentiment.examples; handoff on negative turns is off")
        return "none"
    rows = [{"text": str(t), "label": label} for label, texts in examples.items() for t in texts]
    if "negative" not in examples or len(examples) < 2:
        raise NanoNLPError("sentiment.examples needs 'negative' and at least one of 'neutral' or 'positive'.")
    work = run_dir / "data" / "sentiment"
    _jsonl(work / "train.jsonl", rows)
    _fit(classify_config(work / "train.jsonl", work / "train.jsonl", target, spec.language, options.sentiment_steps, 32,
                         options.seed, device))
    say(f"sentiment: {len(rows)} examples -> {target}")
    return "trained"


def prepare_assistant(spec: AssistantSpec, run_dir: Path, options, device: str, quiet: bool) -> dict:
    """Copy the folder, train the intent classifier, tagger and sentiment model, build the FAQ index;
    returns what RUN/understanding.json records."""
    from nanonlp.dialogue.faq import FAQIndex

    def say(message: str) -> None:
        if not quiet:
            import sys

            print(f"assistant: {message}", file=sys.stderr)

    copy = run_dir / "assistant"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(spec.folder, copy, ignore=shutil.ignore_patterns(".*"))
    understanding = train_intents(spec, run_dir, options, device, say)
    understanding["tagger"] = train_tagger(spec, run_dir, options, device, say)
    understanding["sentiment"] = train_sentiment(spec, run_dir, options, device, say)
    FAQIndex(spec.faq).save(run_dir / "faq.json")
    say(f"FAQ index: {len(spec.faq)} answers, BM25 over character n-grams")
    save_json(run_dir / "understanding.json", understanding)
    return understanding

"""A trained text classifier: labels with calibrated probabilities, multi-label sets, or
`out_of_scope` below the abstain threshold; or, for a regression run, a score in [-1, 1]; and its
evaluation figures. Labels are answered by name where the data names them (catalog entries, or
data.label_names), in English or Chinese."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from nanonlp.data.batching import by_length
from nanonlp.data.readers import OUT_OF_SCOPE, Example, join_ptb_tokens
from nanonlp.data.tokenizers import BPETokenizer, load_tokenizer, one_unknown_warning
from nanonlp.errors import NanoNLPError
from nanonlp.metrics import classification_report, expected_calibration_error, multilabel_report, regression_report
from nanonlp.predict import as_batch, load_model, open_for_inference
from nanonlp.predict.service import Endpoint, Param


class Encoder:
    """Texts -> padded id batches with masks, for one tokenizer and a maximum length."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = tokenizer.pad_id

    def read(self, text: str) -> tuple[list[int], bool]:
        """The ids the model reads of `text`, and whether that cut the text (its first max_length tokens,
        or words, are read): one tokenization gives both."""
        if getattr(self.tokenizer, "kind", None) == "word":
            # max_length counts words: the hashed n-grams of the words kept follow them, never cut off
            inner = getattr(self.tokenizer, "inner", self.tokenizer)
            return (self.tokenizer.encode(text, max_words=self.max_length) or [self.pad_id],
                    len(inner.split(text)) > self.max_length)
        ids = self.tokenizer.encode(text)
        cut = len(ids) > self.max_length
        if cut:
            sep = getattr(self.tokenizer, "sep_id", None)
            ids = ids[: self.max_length - 1] + [sep] if sep is not None else ids[: self.max_length]  # WordPiece ends on [SEP]
        return ids or [self.pad_id], cut  # an empty text still needs one position (masked in)

    def ids(self, text: str) -> list[int]:
        return self.read(text)[0]

    def ids_of(self, texts) -> list[list[int]]:
        """The ids of many texts, with one warning for all the characters a character vocabulary never saw."""
        return [ids for ids, _ in self.read_all(texts)]

    def read_all(self, texts) -> list[tuple[list[int], bool]]:
        """`read` of many texts, with one warning for all the characters a character vocabulary never saw."""
        with one_unknown_warning():
            return [self.read(text) for text in texts]

    def batch(self, id_lists: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in id_lists)
        input_ids = torch.full((len(id_lists), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(id_lists), width), dtype=torch.long)
        for row, ids in enumerate(id_lists):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return input_ids.to(device), mask.to(device)


class _Transformed:
    """A tokenizer that transforms each text first: data.lowercase in front of BPE (the word tokenizer
    lowercases itself), data.detokenize in front of any, so it reaches every text the run reads or is asked about."""

    def __init__(self, tokenizer, transform):
        self.inner, self.transform = tokenizer, transform
        self.pad_id = tokenizer.pad_id
        self.sep_id = getattr(tokenizer, "sep_id", None)
        self.kind = getattr(tokenizer, "kind", None)

    def encode(self, text: str, **options) -> list[int]:
        return self.inner.encode(self.transform(text), **options)


def text_encoder(data_cfg, tokenizer) -> Encoder:
    """The encoder of a run's data section: its tokenizer behind lowercasing and detokenizing, and its max_length."""
    if isinstance(tokenizer, BPETokenizer) and data_cfg.lowercase and data_cfg.tokenizer == "bpe":
        tokenizer = _Transformed(tokenizer, str.lower)
    if data_cfg.detokenize:
        tokenizer = _Transformed(tokenizer, join_ptb_tokens)
    return Encoder(tokenizer, data_cfg.max_length)


REGRESSION_LABELS = ("score",)  # labels.json of a regression run: its one output
LANGUAGES = ("en", "zh")


def scores_of(examples: list[Example], what: str = "the data") -> torch.Tensor:
    """The gold scores of regression examples as a float tensor; each must be a number in [-1, 1]."""
    scores = []
    for number, example in enumerate(examples, start=1):
        try:
            score = float(example.label) if len(example.labels) == 1 else float("nan")
        except ValueError:
            score = float("nan")
        if not -1.0 <= score <= 1.0:  # NaN fails too
            raise NanoNLPError(f"{what}, example {number}: the label {'|'.join(example.labels)!r} is not a score in [-1, 1]; "
                               "data.target regression needs one number per text in that range (rescale the scores, "
                               "or set data.target: classification).")
        scores.append(score)
    return torch.tensor(scores, dtype=torch.float32)


def make_targets(examples: list[Example], labels: list[str], multi_label: bool) -> torch.Tensor:
    index = {label: i for i, label in enumerate(labels)}
    if multi_label:
        targets = torch.zeros(len(examples), len(labels))
        for row, example in enumerate(examples):
            for label in example.labels:
                if label in index:
                    targets[row, index[label]] = 1.0
        return targets
    unknown = sorted({e.label for e in examples if e.label not in index})
    if unknown:
        raise NanoNLPError(f"labels {', '.join(unknown[:5])} do not occur in the training data; the model cannot predict them.")
    return torch.tensor([index[e.label] for e in examples], dtype=torch.long)


def predict_logits(model, encoder: Encoder, id_lists: list[list[int]], device, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Logits for every id list, in batches of similar lengths; `progress` shows a bar on a terminal.
    The model must be in eval mode already (this never switches it), and the caller chooses the grad
    mode: a predictor calls it under inference_mode, the training loop's evaluation under no_grad
    (FSDP cannot gather its shards for inference tensors)."""
    from tqdm import tqdm

    if not id_lists:
        raise NanoNLPError("there are no texts to classify.")
    bar = tqdm(total=-(-len(id_lists) // batch_size), disable=not (progress and sys.stderr.isatty()), unit="batch",
               dynamic_ncols=True, leave=False)

    def run(batch: list[list[int]]) -> list[torch.Tensor]:
        input_ids, mask = encoder.batch(batch, device)
        logits, _ = model(input_ids, mask)
        bar.update()
        return list(logits.float().cpu())

    with bar:
        return torch.stack(by_length(id_lists, [len(ids) for ids in id_lists], batch_size, run))


def abstaining_predictions(probs: torch.Tensor, labels: list[str], threshold: float) -> list[str]:
    confidence, index = probs.max(1)
    return [OUT_OF_SCOPE if c < threshold else labels[i] for c, i in zip(confidence.tolist(), index.tolist())]


def scope_metrics(gold: list[str], predicted: list[str]) -> dict:
    """CLINC150's figures: accuracy on in-scope texts (abstaining counts as wrong), recall of out-of-scope ones."""
    in_scope = [(g, p) for g, p in zip(gold, predicted) if g != OUT_OF_SCOPE]
    out_scope = [p for g, p in zip(gold, predicted) if g == OUT_OF_SCOPE]
    return {
        "in_scope_accuracy": sum(g == p for g, p in in_scope) / max(len(in_scope), 1),
        "out_of_scope_recall": sum(p == OUT_OF_SCOPE for p in out_scope) / max(len(out_scope), 1),
    }


def classify_endpoint(classifier) -> Endpoint:
    """POST /v1/classify: per text the label (or the abstention) and the probabilities. Requests to one model
    are batched together; `classifier` is a TextClassifier, or anything with its `predict` and `truncated`."""
    return Endpoint("classify", {"texts": Param(list[str], description="the texts, a batch")}, classifier.predict_read, runner="batch",
                    items="texts",
                    title="Classify", placeholder="One text a line", view={"kind": "labels"})


class TextClassifier:
    """A trained classifier: `predict(texts)`, `evaluate(examples)`; thread-safe."""

    task = "classify"

    def __init__(self, model, encoder: Encoder, labels: list[str], config, calibration: dict, device, run_dir: Path,
                 names: dict[str, dict[str, str]] | None = None, language: str = "en"):
        self.model, self.encoder, self.labels, self.config = model.eval(), encoder, labels, config
        self.calibration, self.device, self.run_dir = calibration, device, run_dir
        self.names = names or {}  # label -> {"en": name, "zh": name}; a label without one is its own name
        self.language = _check_language(language)  # the default language of the names predict answers with

    @property
    def regression(self) -> bool:
        return getattr(self.config.data, "target", "classification") == "regression"

    def label_name(self, label: str, language: str | None = None) -> str:
        """The name of a label (as the training file writes it) in `language` (default: the classifier's)."""
        return self.names.get(label, {}).get(_check_language(language or self.language), label)

    def label_names(self, language: str | None = None) -> list[str]:
        """Every label's name, in the model's output order."""
        return [self.label_name(label, language) for label in self.labels]

    @property
    def multi_label(self) -> bool:
        return self.config.data.multi_label

    @property
    def max_input_length(self) -> int:
        """Tokens read per text; a longer text is truncated to them."""
        return self.encoder.max_length

    def truncated(self, text: str) -> bool:
        """Whether the classifier reads only the start of `text` (its first max_input_length tokens, or words)."""
        return self.encoder.read(text)[1]

    def describe(self) -> dict:
        """What GET /v1/models says of the classifier: its labels, and their names as answered."""
        return {"labels": list(self.labels), "label_names": {language: self.label_names(language) for language in LANGUAGES}}

    def endpoints(self) -> list[Endpoint]:
        return [classify_endpoint(self)]

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        return self.probabilities_of_ids(self.encoder.ids_of(texts))

    @torch.inference_mode()
    def probabilities_of_ids(self, id_lists: list[list[int]]) -> torch.Tensor:
        logits = predict_logits(self.model, self.encoder, id_lists, self.device)
        if self.multi_label:
            return torch.sigmoid(logits)
        return torch.softmax(logits / self.calibration.get("temperature", 1.0), dim=1)

    @torch.inference_mode()
    def scores_of_ids(self, id_lists: list[list[int]]) -> torch.Tensor:
        """A regression run's scores: tanh of its one output, in [-1, 1]."""
        return torch.tanh(predict_logits(self.model, self.encoder, id_lists, self.device)[:, 0])

    def predict(self, texts: str | list[str], language: str | None = None) -> dict | list[dict]:
        """Per text a dict: `label` (or `labels`), its `probability`, and `probabilities` per label,
        labels by name in `language` (en or zh; default the classifier's) where the data names them;
        a regression run answers `{"score": s}`, s in [-1, 1]. One text gives one dict; a list gives a list."""
        texts, single = as_batch(texts)
        language = _check_language(language or self.language)
        if not texts:
            out = []
        elif self.regression:
            out = [{"score": float(s)} for s in self.scores_of_ids(self.encoder.ids_of(texts))]
        else:
            out = self._answers(self.probabilities(texts), language)
        return out[0] if single else out

    def predict_read(self, texts: list[str]) -> list[dict]:
        """`predict` of a batch, each answer with `truncated`: whether the classifier read only the start of
        its text (the server's batch: the texts are tokenized once for both)."""
        read = self.encoder.read_all(texts)
        ids = [i for i, _ in read]
        if self.regression:
            out = [{"score": float(s)} for s in self.scores_of_ids(ids)]
        else:
            out = self._answers(self.probabilities_of_ids(ids), self.language)
        return [{**answer, "truncated": cut} for answer, (_, cut) in zip(out, read)]

    def _answers(self, probs: torch.Tensor, language: str | None = None) -> list[dict]:
        """Answers by name in `language`; None keeps the labels as the training file writes them."""
        name = (lambda label: label) if language is None else (lambda label: self.label_name(label, language))  # noqa: E731
        out = []
        for row in probs:
            scores = {name(label): float(p) for label, p in zip(self.labels, row)}
            if self.multi_label:
                chosen = [label for label, p in scores.items() if p >= self.calibration.get("threshold", 0.5)]
                out.append({"labels": chosen, "probabilities": scores})
                continue
            p, i = row.max(0)
            label = name(self.labels[int(i)])
            if float(p) < self.calibration.get("abstain_threshold", 0.0):
                label = OUT_OF_SCOPE
            out.append({"label": label, "probability": float(p), "probabilities": scores})
        return out

    def evaluate(self, examples: list[Example], id_lists: list[list[int]] | None = None) -> dict:
        """Accuracy, macro and micro P/R/F1, a per-class table and the confusion matrix; ECE; scope
        figures. `id_lists`, when given, are the examples' token ids (a run's cached split)."""
        if id_lists is None:
            id_lists = self.encoder.ids_of(e.text for e in examples)
        if self.regression:
            return regression_report(scores_of(examples, "the evaluation data"), self.scores_of_ids(id_lists))
        probs = self.probabilities_of_ids(id_lists)
        if self.multi_label:
            gold = make_targets(examples, self.labels, True)
            return multilabel_report(gold, (probs >= self.calibration.get("threshold", 0.5)).long(), self.label_names())
        predicted = [p["label"] for p in self._answers(probs)]
        # out_of_scope is a row of its own only where a text is, or is answered, out of scope.
        scoped = OUT_OF_SCOPE not in self.labels and (OUT_OF_SCOPE in predicted or any(e.label == OUT_OF_SCOPE for e in examples))
        names = self.labels + ([OUT_OF_SCOPE] if scoped else [])
        index = {label: i for i, label in enumerate(names)}
        unknown = sorted({e.label for e in examples if e.label not in index})
        if unknown:
            raise NanoNLPError(f"the evaluation data has labels the model does not know: {', '.join(unknown[:5])}.")
        report = classification_report([index[e.label] for e in examples], [index[p] for p in predicted],
                                       [self.label_name(label) for label in names])
        report["labels"] = [self.label_name(label) for label in names]
        known = [i for i, e in enumerate(examples) if e.label in self.labels]
        if known:
            gold = torch.tensor([self.labels.index(examples[i].label) for i in known])
            report["ece"] = expected_calibration_error(probs[known], gold)
        if any(e.label == OUT_OF_SCOPE for e in examples):
            report.update(scope_metrics([e.label for e in examples], predicted))
        return report


def read_labels(run_dir: Path) -> list[str]:
    path = Path(run_dir) / "labels.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(labels, list):
            raise ValueError("not a list of labels")
    except (OSError, ValueError) as error:
        raise NanoNLPError(f"'{run_dir}' has no readable labels.json ({error}); train the run again.") from None
    return labels


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise NanoNLPError(f"label names come in {' and '.join(LANGUAGES)}; got language '{language}'.")
    return language


def read_label_names(run_dir: Path, data_cfg, labels: list[str]) -> dict[str, dict[str, str]]:
    """label -> {"en", "zh"} names: the run's label_names.json, else (a run trained before names were
    saved) its data's names from the configuration (the catalog's), for the labels it has."""
    path = Path(run_dir) / "label_names.json"
    if path.is_file():
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(names, dict) or not all(isinstance(v, dict) for v in names.values()):
                raise ValueError("not an object of label -> {en, zh}")
        except (OSError, ValueError) as error:
            raise NanoNLPError(f"'{path}' is unreadable ({error}); delete it to answer with the raw labels, or train the run again.") from None
        return names
    names = data_cfg.names() if hasattr(data_cfg, "names") else {}
    return {label: name for label, name in names.items() if label in labels}


def read_calibration(run_dir: Path) -> dict:
    path = Path(run_dir) / "calibration.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load(run_dir: str | Path, device: str = "auto", language: str = "en") -> TextClassifier:
    """The run's classifier; `language` (en or zh) is the default language of its label names."""
    run, torch_device = open_for_inference(run_dir, device)
    encoder = text_encoder(run.config.data, load_tokenizer(run.dir))
    labels = read_labels(run.dir)
    return TextClassifier(load_model(run, torch_device), encoder, labels, run.config, read_calibration(run.dir),
                          torch_device, run.dir, read_label_names(run.dir, run.config.data, labels), language)

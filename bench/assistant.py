"""The assistant's understanding figures on real data, on this machine (issue 23's benchmark table).

    python bench/assistant.py                                  # every piece, one after another
    python bench/assistant.py --only clinc snips --runs runs/bench   # some pieces; keep (and reuse) the runs

Pieces (each trains with the shipped configs under nanonlp/configs, then scores):
  clinc     CLINC150 test: in-scope accuracy and out-of-scope recall of the MiniLM intent classifier
            (clinc150_minilm.yaml: 150 intents + out_of_scope trained on oos_train), abstaining below a
            threshold chosen on the val split (150 intents + oos_val) by two rules: the best val
            accuracy (the classify task's tune_abstain) and the best mean of val in-scope accuracy and
            val out-of-scope recall (each side weighs the same, whatever their counts).
  snips     SNIPS test: slot F1 (seqeval, strict IOB2) of snips_slots_minilm.yaml, intent accuracy of
            snips_intent_minilm.yaml.
  cais      CAIS test: slot F1 (BIOES converted to IOB2) of cais_slots_bilstm_crf.yaml, intent accuracy
            of cais_intent_ngrams.yaml.
  smp2017   SMP2017 test domain accuracy of smp2017_ngrams.yaml.
  afqmc     AFQMC dev FAQ retrieval: for each pair labelled the same question, is its second question
            ranked first among all distinct dev questions (the first one itself left out) when the
            first is the query? BM25 over character 1-2-grams (nanonlp.retrieval) against cosine over
            all-MiniLM-L6-v2 sentence embeddings. Pair accuracy: same / not the same by a score
            threshold chosen on 2,000 training pairs.
  sgd       SGD dev: the user's active intent from the turn alone (data.format sgd_intent) and with
            its previous three turns (sgd_intent_context), seen and unseen services apart (a turn is
            unseen when one of its dialogue's services has no training dialogue), and the system's
            next act types (sgd_next_act: the exact set, e.g. INFORM,NOTIFY_SUCCESS) after the user
            turn and its context. The dev split also picked the best checkpoint (a mild optimism).
  crosswoz  CrossWOZ validation dialogues, a seeded 80/10/10 split of the user turns: micro F1 of the
            user's dialogue acts (intent-domain-slot, values left out) from the turn alone and with
            its previous three turns.

Data comes from $NANONLP_DATA (default ../shared/data). Each line printed is one figure, with the
training seconds of its run (wall clock of `nanonlp train`, data preparation included).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nanonlp import load  # noqa: E402
from nanonlp.config import load_config  # noqa: E402
from nanonlp.data import catalog  # noqa: E402
from nanonlp.data.readers import OUT_OF_SCOPE, read_question_pairs, read_sgd_turns  # noqa: E402
from nanonlp.metrics import entity_report  # noqa: E402
from nanonlp.predict.classify import abstaining_predictions, scope_metrics  # noqa: E402
from nanonlp.tasks.classify import cached_splits, tune_abstain_threshold  # noqa: E402
from nanonlp.tasks.tag import _read, as_iob2  # noqa: E402
from nanonlp.train import fit  # noqa: E402

PIECES = ("clinc", "snips", "cais", "smp2017", "afqmc", "sgd", "crosswoz")


class Runs:
    """Trains a shipped config into runs/<name> (or reuses a finished run there) and remembers its seconds."""

    def __init__(self, folder: Path | None):
        self.folder = folder or Path(tempfile.mkdtemp(prefix="nanonlp-assistant-"))
        self.seconds: dict[str, float] = {}
        self.steps: dict[str, str] = {}

    def train(self, name: str, config: str, overrides: list[str] = ()) -> Path:
        out = self.folder / name
        cfg = load_config(ROOT / "configs" / config, list(overrides) + [f"--train.out_dir={out}"])
        if (out / "model.safetensors").is_file():
            self.seconds[name] = float("nan")  # reused: not trained in this call
            self.steps[name] = "reused"
            return out
        start = time.perf_counter()
        result = fit(cfg, quiet=True, overwrite=True)
        self.seconds[name] = time.perf_counter() - start
        # the steps done against those asked for: a wall-clock budget (train.max_seconds) may stop a run early
        self.steps[name] = f"{result.step}/{cfg.train.max_steps}"
        return out

    def line(self, name: str, what: str, figures: str) -> None:
        seconds = self.seconds.get(name, float("nan"))
        print(f"{what:52s} {seconds:8.0f} {self.steps.get(name, '-'):>10}  {figures}", flush=True)


# ---------------------------------------------------------------------------------------------------
# CLINC150


def balanced_threshold(probs: torch.Tensor, gold: list[str], labels: list[str]) -> float:
    """The abstain threshold with the best mean of in-scope accuracy and out-of-scope recall; among
    equal ones the lowest (it keeps more in-scope answers)."""
    best, best_value = 0.0, -1.0
    for threshold in [i / 100 for i in range(100)]:
        scores = scope_metrics(gold, abstaining_predictions(probs, labels, threshold))
        value = (scores["in_scope_accuracy"] + scores["out_of_scope_recall"]) / 2
        if value > best_value + 1e-12:
            best, best_value = threshold, value
    return best


def clinc(runs: Runs) -> None:
    run = runs.train("clinc150_minilm", "clinc150_minilm.yaml")
    classifier = load(run)
    splits = cached_splits(run, classifier.config)
    (val, val_ids), (test, test_ids) = splits["dev"], splits["test"]
    val_probs, test_probs = classifier.probabilities_of_ids(val_ids), classifier.probabilities_of_ids(test_ids)
    val_gold, test_gold = [e.label for e in val], [e.label for e in test]
    for rule, threshold in [("no abstention (argmax; out_of_scope is a class)", 0.0),
                            ("abstain: best val accuracy", tune_abstain_threshold(val_probs, val_gold, classifier.labels)),
                            ("abstain: best val mean(in-scope acc, OOS recall)", balanced_threshold(val_probs, val_gold, classifier.labels))]:
        scores = scope_metrics(test_gold, abstaining_predictions(test_probs, classifier.labels, threshold))
        runs.line("clinc150_minilm", f"CLINC150 test, {rule}",
                  f"threshold {threshold:.2f}: in-scope accuracy {100 * scores['in_scope_accuracy']:.2f}%, "
                  f"out-of-scope recall {100 * scores['out_of_scope_recall']:.2f}%")


# ---------------------------------------------------------------------------------------------------
# slots and intents


def slot_f1(run: Path) -> dict:
    tagger = load(run)
    cfg = tagger.config.data
    test = _read(catalog.split_of(cfg.path, "test", cfg.test_path), cfg)
    predicted = tagger.tag_tokens([s.tokens for s in test], "iob2")
    return entity_report([as_iob2(s.tags, cfg.inner_scheme) for s in test], predicted)


def test_accuracy(run: Path) -> tuple[float, int]:
    """(accuracy on the test split, how many test examples have a label training never saw): those
    count as wrong (CAIS's test split has intents, GetDate, that its training split lacks)."""
    classifier = load(run)
    test, test_ids = cached_splits(run, classifier.config)["test"]
    predicted = classifier.probabilities_of_ids(test_ids).argmax(1).tolist()
    right = sum(classifier.labels[p] == e.label for p, e in zip(predicted, test))
    return right / len(test), sum(e.label not in classifier.labels for e in test)


def accuracy_text(run: Path) -> str:
    accuracy, unknown = test_accuracy(run)
    return f"{100 * accuracy:.2f}%" + (f" ({unknown} test examples have a label training never saw, counted wrong)" if unknown else "")


def slots_and_intents(runs: Runs, data: str, slots_config: str, intent_config: str) -> None:
    slots = runs.train(slots_config.removesuffix(".yaml"), slots_config)
    report = slot_f1(slots)
    runs.line(slots.name, f"{data} test slot F1 ({slots.name})",
              f"{100 * report['micro_f1']:.2f} (P {100 * report['micro_precision']:.2f}, R {100 * report['micro_recall']:.2f})")
    intents = runs.train(intent_config.removesuffix(".yaml"), intent_config)
    runs.line(intents.name, f"{data} test intent accuracy ({intents.name})", accuracy_text(intents))


def smp2017(runs: Runs) -> None:
    run = runs.train("smp2017_ngrams", "smp2017_ngrams.yaml")
    runs.line(run.name, "SMP2017 test domain accuracy (smp2017_ngrams)", accuracy_text(run))


# ---------------------------------------------------------------------------------------------------
# AFQMC: FAQ retrieval


def afqmc(runs: Runs) -> None:
    from nanonlp.retrieval import BM25Index, EmbeddingIndex, SentenceEncoder, top_k

    dev = read_question_pairs(catalog.resolve("afqmc_dev"))
    train = read_question_pairs(catalog.resolve("afqmc"))
    random.Random(0).shuffle(train)
    train = train[:2000]
    questions = list(dict.fromkeys(q for p in dev for q in (p.first, p.second)))
    index_of = {q: i for i, q in enumerate(questions)}
    same = [p for p in dev if p.same and p.first != p.second]

    def retrieval_at_1(best_two) -> float:
        """best_two(query) -> the indices of its two best questions; the query itself is skipped."""
        hits = 0
        for pair in same:
            ranked = [i for i in best_two(pair.first) if i != index_of[pair.first]]
            hits += bool(ranked) and ranked[0] == index_of[pair.second]
        return hits / len(same)

    def pair_accuracy(score) -> tuple[float, float]:
        """(dev accuracy, threshold): same when score(first, second) >= a threshold chosen on the training pairs."""
        train_scores = [(score(p.first, p.second), p.same) for p in train]
        candidates = sorted({s for s, _ in train_scores})
        best, best_correct = 0.0, -1
        for t in candidates[:: max(1, len(candidates) // 400)]:
            correct = sum((s >= t) == y for s, y in train_scores)
            if correct > best_correct:
                best, best_correct = t, correct
        return sum((score(p.first, p.second) >= best) == p.same for p in dev) / len(dev), best

    start = time.perf_counter()
    bm25 = BM25Index(questions, 1, 2)
    at_1 = retrieval_at_1(lambda q: [i for i, _ in bm25.search(q, 2)])

    def bm25_pair(first: str, second: str) -> float:  # BM25 of the second against the first alone, per query length
        return BM25Index([second], 1, 2).scores(first)[0] / max(len(first), 1)

    accuracy, threshold = pair_accuracy(bm25_pair)
    runs.seconds["bm25"] = time.perf_counter() - start
    runs.line("bm25", "AFQMC dev, BM25 over character 1-2-grams",
              f"retrieved first {100 * at_1:.2f}% of {len(same):,} same-question pairs among {len(questions):,} questions; "
              f"pair accuracy {100 * accuracy:.2f}% (threshold {threshold:.3f})")

    start = time.perf_counter()
    encoder = SentenceEncoder("all-MiniLM-L6-v2")
    index = EmbeddingIndex(questions, encoder)
    queries = encoder.encode([p.first for p in same])
    best = top_k(index.vectors, queries, 2)
    hits = 0
    for pair, row in zip(same, best):
        ranked = [i for i, _ in row if i != index_of[pair.first]]
        hits += bool(ranked) and ranked[0] == index_of[pair.second]
    vectors = {q: v for q, v in zip(questions, index.vectors)}
    train_texts = list(dict.fromkeys(q for p in train for q in (p.first, p.second)))
    vectors.update({q: v for q, v in zip(train_texts, encoder.encode(train_texts))})
    accuracy, threshold = pair_accuracy(lambda a, b: float(vectors[a] @ vectors[b]))
    runs.seconds["minilm"] = time.perf_counter() - start
    runs.line("minilm", "AFQMC dev, all-MiniLM-L6-v2 cosine (not fine-tuned)",
              f"retrieved first {100 * hits / len(same):.2f}%; pair accuracy {100 * accuracy:.2f}% (threshold {threshold:.3f}); "
              f"majority class {100 * max(sum(p.same for p in dev), sum(not p.same for p in dev)) / len(dev):.2f}%")


# ---------------------------------------------------------------------------------------------------
# SGD and CrossWOZ: with and without the dialogue context


def sgd(runs: Runs) -> None:
    train_services = {s for d in read_sgd_turns(catalog.resolve("sgd")) for t in d.turns for s in t.services}
    dev_dialogues = read_sgd_turns(catalog.resolve("sgd_dev"))
    # dev user turns, in the order the readers give the examples: seen when every service of the dialogue was trained on
    seen = [all(s in train_services for s in t.services) for d in dev_dialogues for t in d.turns if t.speaker == "user"]
    for name, data_format in [("sgd_intent", "sgd_intent"), ("sgd_intent_context", "sgd_intent_context"), ("sgd_next_act", "sgd_next_act")]:
        run = runs.train(name, "sgd_intent_ngrams.yaml", [f"--data.format={data_format}"])
        classifier = load(run)
        dev, dev_ids = cached_splits(run, classifier.config)["dev"]
        probs = classifier.probabilities_of_ids(dev_ids)
        predicted = [classifier.labels[i] for i in probs.argmax(1).tolist()]
        right = [p == e.label for p, e in zip(predicted, dev)]
        if name == "sgd_next_act":  # the last user turn of a dialogue has no next system turn
            runs.line(name, "SGD dev next system act types (turn + context)", f"exact-set accuracy {100 * sum(right) / len(right):.2f}% "
                      f"of {len(right):,} user turns")
            continue
        if len(right) != len(seen):
            raise RuntimeError(f"{len(right)} dev examples but {len(seen)} dev user turns")
        seen_right = [r for r, s in zip(right, seen) if s]
        unseen_right = [r for r, s in zip(right, seen) if not s]
        known = sum(e.label in classifier.labels for e, s in zip(dev, seen) if not s)
        runs.line(name, f"SGD dev active intent, {'turn + 3 previous turns' if 'context' in name else 'turn alone'}",
                  f"all {100 * sum(right) / len(right):.2f}%, seen services {100 * sum(seen_right) / len(seen_right):.2f}% "
                  f"({len(seen_right):,}), unseen {100 * sum(unseen_right) / len(unseen_right):.2f}% ({len(unseen_right):,}; "
                  f"{100 * known / len(unseen_right):.1f}% of them have an intent name seen in training)")


def crosswoz(runs: Runs) -> None:
    for name, data_format in [("crosswoz_acts", "crosswoz_acts"), ("crosswoz_acts_context", "crosswoz_acts_context")]:
        run = runs.train(name, "crosswoz_acts_ngrams.yaml", [f"--data.format={data_format}"])
        classifier = load(run)
        test, test_ids = cached_splits(run, classifier.config)["test"]
        report = classifier.evaluate(test, test_ids)
        runs.line(name, f"CrossWOZ user acts, {'turn + 3 previous turns' if 'context' in name else 'turn alone'}",
                  f"micro F1 {100 * report['micro_f1']:.2f} (P {100 * report['micro_precision']:.2f}, R {100 * report['micro_recall']:.2f}) "
                  f"on {len(test):,} held-out user turns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PIECES, help="run these pieces only")
    parser.add_argument("--runs", type=Path, help="keep the runs here (a finished run found there is reused, not retrained)")
    args = parser.parse_args()
    os.environ.setdefault("NANONLP_DATA", str(ROOT.parent / "shared" / "data"))
    torch.manual_seed(0)
    runs = Runs(args.runs)
    print(f"{'figure':52s} {'train_s':>8} {'steps':>10}  value", flush=True)
    pieces = {"clinc": lambda: clinc(runs),
              "snips": lambda: slots_and_intents(runs, "SNIPS", "snips_slots_minilm.yaml", "snips_intent_minilm.yaml"),
              "cais": lambda: slots_and_intents(runs, "CAIS", "cais_slots_bilstm_crf.yaml", "cais_intent_ngrams.yaml"),
              "smp2017": lambda: smp2017(runs), "afqmc": lambda: afqmc(runs), "sgd": lambda: sgd(runs), "crosswoz": lambda: crosswoz(runs)}
    for piece in args.only or PIECES:
        pieces[piece]()


if __name__ == "__main__":
    main()

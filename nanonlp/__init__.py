"""nanonlp: the classic neural NLP systems in one small, readable PyTorch codebase."""

from nanonlp.errors import ConfigError, NanoNLPError

__version__ = "0.1.0"


def load(run_dir, device: str = "auto"):
    """Rebuild a trained model from its run directory, ready to use (e.g. `.generate(...)`)."""
    from nanonlp.tasks.lm import load as load_lm

    return load_lm(run_dir, device)


__all__ = ["load", "NanoNLPError", "ConfigError", "__version__"]

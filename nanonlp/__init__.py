"""nanonlp: the classic neural NLP systems in one small, readable PyTorch codebase."""

from nanonlp.errors import ConfigError, NanoNLPError

__version__ = "0.1.0"


def load(run_dir, device: str = "auto"):
    """Rebuild a trained model from its run directory, ready to use: a language model (`.generate`),
    a text classifier (`.predict`) or a translator (`.translate`), as the run's config.yaml says."""
    from nanonlp.checkpoint import run_task

    if run_task(run_dir) == "translate":
        from nanonlp.tasks.translate import load as load_translator

        return load_translator(run_dir, device)
    if run_task(run_dir) == "classify":
        from nanonlp.tasks.classify import load as load_classifier

        return load_classifier(run_dir, device)
    from nanonlp.tasks.lm import load as load_lm

    return load_lm(run_dir, device)


__all__ = ["load", "NanoNLPError", "ConfigError", "__version__"]

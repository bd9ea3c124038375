"""Plots written as PNG files (matplotlib without a display)."""

from __future__ import annotations

import json
from pathlib import Path


def loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Training loss per log step and validation loss per evaluation, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nanonlp.checkpoint import atomic_write_bytes

    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    train, val = [], []
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            train.append((record["step"], record["loss"]))
        if "val_loss" in record:
            val.append((record["step"], record["val_loss"]))
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out_path, buffer.getvalue())
    return Path(out_path)

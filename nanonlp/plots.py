"""Plots written as PNG files (matplotlib without a display)."""

from __future__ import annotations

import json
from pathlib import Path


def _save_png(fig, out_path: str | Path) -> Path:
    """Render, close, and write atomically (a killed run never leaves half a PNG)."""
    import io

    import matplotlib.pyplot as plt

    from nanonlp.io import atomic_write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out_path, buffer.getvalue())
    return Path(out_path)


def loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Training loss per log step and validation loss per evaluation, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    return _save_png(fig, out_path)


def confusion_matrix(matrix: list[list[int]], labels: list[str], out_path: str | Path) -> Path:
    """Rows gold, columns predicted; counts written in the cells when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=100)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 15:
        peak = max(max(row) for row in matrix) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return _save_png(fig, out_path)


def attention_heatmap(weights, source_tokens: list[str], target_tokens: list[str], out_path: str | Path, title: str = "") -> Path:
    """Target tokens (rows) against source tokens (columns), shaded by attention weight. weights: (T, S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, S = len(target_tokens), len(source_tokens)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * S + 2), max(3.0, 0.4 * T + 1.5)), dpi=120)
    image = ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0)
    ax.set_xticks(range(S), source_tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(T), target_tokens, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _save_png(fig, out_path)

"""Plots written as PNG files (matplotlib without a display).

Labels in Chinese, Japanese or Korean need a font with those glyphs. Matplotlib's default, DejaVu
Sans, has none: each label would draw as empty boxes, with one warning per glyph. Every plot here
asks for DejaVu Sans first and then each CJK font of `CJK_FONTS` that is installed, and matplotlib
takes each glyph from the first font that has it. Where none is installed, one warning says which
package to install (Debian and Ubuntu: `apt-get install fonts-noto-cjk`, or the smaller
`fonts-wqy-zenhei`), and the per-glyph warnings are silenced.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from functools import lru_cache
from pathlib import Path

# Fonts with Chinese (and Japanese, Korean) glyphs, in order of preference: Noto Sans CJK / Source Han
# Sans (Debian: fonts-noto-cjk), WenQuanYi (fonts-wqy-zenhei, fonts-wqy-microhei), Droid Sans Fallback
# (fonts-droid-fallback), AR PL (fonts-arphic-uming), and the fonts macOS and Windows ship.
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans SC",
    "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN",
    "AR PL UKai CN", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "SimHei", "Arial Unicode MS",
)
_CJK_TEXT = re.compile("[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]")
_CJK_FONT_FILE = re.compile(r"(?i)cjk|wqy|droidsansfallback|uming|ukai|sourcehan|simhei|msyh|pingfang|hiragino")
_warned_no_font = False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@lru_cache(maxsize=1)
def font_family() -> tuple[str, ...]:
    """DejaVu Sans, then every installed font of CJK_FONTS (only installed ones, so that matplotlib
    never logs 'font family not found')."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    installed = {font.name for font in manager.ttflist}
    if not installed & set(CJK_FONTS):
        # matplotlib's font list is cached from its first run: a CJK font installed since is not in it
        known = {font.fname for font in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known and _CJK_FONT_FILE.search(Path(path).name):
                with contextlib.suppress(Exception):  # an unreadable font file is skipped
                    manager.addfont(path)
        installed = {font.name for font in manager.ttflist}
    return ("DejaVu Sans",) + tuple(name for name in CJK_FONTS if name in installed)


@contextlib.contextmanager
def _fonts(labels):
    """Draw with the CJK fallback fonts; warn once per process when CJK labels have no font to draw them."""
    global _warned_no_font
    family = font_family()
    if len(family) == 1 and not _warned_no_font and any(_CJK_TEXT.search(str(label)) for label in labels):
        _warned_no_font = True
        print("warning: the plot has Chinese, Japanese or Korean labels but no font with their glyphs is installed, so they "
              "draw as boxes; install one (Debian/Ubuntu: apt-get install fonts-noto-cjk, or fonts-wqy-zenhei).", file=sys.stderr)
    plt = _pyplot()
    import logging

    font_log = logging.getLogger("matplotlib.font_manager")  # "findfont: Failed to find font weight ..." per label
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        with plt.rc_context({"font.family": list(family)}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
            yield plt
    finally:
        font_log.setLevel(level)


def _save_png(fig, out_path: str | Path) -> Path:
    """Render, close, and write atomically (a killed run never leaves half a PNG)."""
    import io

    from nanonlp.io import atomic_write_bytes

    plt = _pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out_path, buffer.getvalue())
    return Path(out_path)


def loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Training loss per log step and validation loss per evaluation, against the step."""
    plt = _pyplot()
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


def latent_curve(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """A latent-variable model's training: reconstruction and KL (or, for an ARAE, the critic's
    Wasserstein estimate) per log step, validation points, and the KL weight, against the step. A KL
    that falls to zero while the reconstruction stays at the language model's is posterior collapse."""
    plt = _pyplot()
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    series: dict[str, list] = {}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        for key in ("loss_reconstruction", "loss_kl", "loss_kl_weight", "loss_wasserstein", "val_reconstruction", "val_kl",
                    "val_wasserstein"):
            if key in record:
                series.setdefault(key, []).append((record["step"], record[key]))
    if "loss_reconstruction" not in series:
        return None
    second = "kl" if "loss_kl" in series else "wasserstein"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=100, sharex=True)
    top.plot(*zip(*series["loss_reconstruction"]), linewidth=1, label="train")
    if "val_reconstruction" in series:
        top.plot(*zip(*series["val_reconstruction"]), "o-", markersize=3, label="validation")
    top.set_ylabel("reconstruction (nats per sentence)")
    if f"loss_{second}" in series:
        bottom.plot(*zip(*series[f"loss_{second}"]), linewidth=1, label="train")
    if f"val_{second}" in series:
        bottom.plot(*zip(*series[f"val_{second}"]), "o-", markersize=3, label="validation")
    bottom.set_ylabel("KL (nats per sentence)" if second == "kl" else "critic's Wasserstein estimate")
    if "loss_kl_weight" in series:
        weight = bottom.twinx()
        weight.plot(*zip(*series["loss_kl_weight"]), color="grey", linestyle="--", linewidth=1)
        weight.set_ylabel("KL weight", color="grey")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    return _save_png(fig, out_path)


def confusion_matrix(matrix: list[list[int]], labels: list[str], out_path: str | Path) -> Path:
    """Rows gold, columns predicted; counts written in the cells when there are few classes."""
    with _fonts(labels) as plt:
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
    """Target pieces (rows) against source pieces (columns), shaded by attention weight. weights: (T, S)."""
    with _fonts([*source_tokens, *target_tokens, title]) as plt:
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

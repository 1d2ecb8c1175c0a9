"""Figures the notebooks share: image grids and training curves (matplotlib, nothing fancy)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch


def image_grid(images: torch.Tensor, labels: torch.Tensor | None = None,
               names: Sequence[str] | None = None, n: int = 32, cols: int = 8, title: str | None = None):
    """Show the first ``n`` images (``[N, C, H, W]`` in [0, 1]) with their labels as titles."""
    n = min(n, len(images))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].detach().cpu()
        ax.imshow(image.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(),
                  cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
        if labels is not None:
            label = int(labels[i])
            ax.set_title(names[label] if names is not None else str(label), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves(frame, columns: Sequence[str], title: str | None = None, ylabel: str | None = None,
           ax=None, label_prefix: str = ""):
    """Plot history columns (one line each) against the epoch index of a history frame."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for column in columns:
        ax.plot(frame.index, frame[column], marker="o", label=f"{label_prefix}{column}")
    ax.set_xlabel(frame.index.name or "epoch")
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.figure.tight_layout()
    return ax.figure


def mean_std_lines(table, x: str, y: str, hue: str, title: str | None = None, ylabel: str | None = None,
                   logx: bool = False, ax=None):
    """One line per ``hue`` value: the mean of ``y`` against ``x`` with a ±1 std band.

    ``table`` has one row per (hue, x) with ``<y>_mean`` and ``<y>_std`` columns (see
    :func:`helpers.vision.mean_std`), as a frame indexed by (hue, x) or with those columns.
    """
    frame = table.reset_index() if hue not in table.columns else table
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    for name, part in frame.groupby(hue, sort=False):
        part = part.sort_values(x)
        mean, std = part[f"{y}_mean"], part[f"{y}_std"].fillna(0)
        ax.plot(part[x], mean, marker="o", label=str(name))
        ax.fill_between(part[x], mean - std, mean + std, alpha=0.15)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def confusion_matrix_figure(matrix, names: Sequence[str] | None = None, normalize: bool = True,
                            title: str | None = None, ax=None):
    """A confusion matrix ``C[true, predicted]`` as a heat map; rows normalised to recall by default.

    With ``normalize`` each row sums to 1, so the diagonal is each class's recall and a rare class
    counts as much as a common one; the cells show the values.
    """
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    shown = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalize else counts
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 4.0))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    k = len(shown)
    labels = list(names) if names is not None else [str(i) for i in range(k)]
    ax.set_xticks(range(k), labels, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            value = shown[i, j]
            if value >= (0.005 if normalize else 0.5):
                ax.text(j, i, f"{value:.2f}" if normalize else f"{value:.0f}", ha="center", va="center",
                        fontsize=6, color="white" if value > 0.6 * (shown.max() or 1) else "black")
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.figure.tight_layout()
    return ax.figure

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
    :func:`helpers.metrics.mean_std`), as a frame indexed by (hue, x) or with those columns.
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


def heat_map(values, rows: Sequence[str], columns: Sequence[str], *, xlabel: str, ylabel: str,
             title: str | None = None, vmax: float | None = 1.0, fmt: str = "{:.2f}", min_shown: float = 0.0,
             cmap: str = "Blues", colorbar: bool = True, ax=None):
    """A matrix as a heat map with its values written in the cells (those >= ``min_shown``).

    Used for confusion matrices (:func:`confusion_matrix_figure`) and for the continual-learning
    accuracy matrix ``R[i][j]`` (accuracy on task j after training on task i, notebook 05).
    """
    import numpy as np

    shown = np.asarray(values, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 4.0))
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax)
    ax.set_xticks(range(shown.shape[1]), list(columns), fontsize=8)
    ax.set_yticks(range(shown.shape[0]), list(rows), fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    top = vmax if vmax is not None else (shown.max() or 1)
    small = 6 if shown.shape[0] > 5 else 9
    for i in range(shown.shape[0]):
        for j in range(shown.shape[1]):
            if shown[i, j] >= min_shown:
                ax.text(j, i, fmt.format(shown[i, j]), ha="center", va="center", fontsize=small,
                        color="white" if shown[i, j] > 0.6 * top else "black")
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
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
    labels = list(names) if names is not None else [str(i) for i in range(len(shown))]
    return heat_map(shown, labels, labels, xlabel="predicted", ylabel="true", title=title,
                    vmax=1.0 if normalize else None, fmt="{:.2f}" if normalize else "{:.0f}",
                    min_shown=0.005 if normalize else 0.5, ax=ax)


def learning_vs_forgetting(plane, *, source_before: float | None = None, frontier=None,
                           baselines: Sequence[str] = (), title: str = "learning vs forgetting",
                           xlabel: str = "target accuracy (new task)",
                           ylabel: str = "retained source accuracy (old task, old head)", ax=None):
    """The learning-vs-forgetting plane: one point per method (mean ± std over seeds).

    ``plane`` is indexed by method with ``target_acc_mean/_std`` and ``source_acc_mean/_std``
    columns (:func:`helpers.metrics.mean_std` over runs). Right is better on the new task, up is
    better on the old one. ``baselines`` are drawn as squares; ``frontier`` is ``(xs, ys)``, the
    best retention a baseline reaches at each target accuracy (a dashed staircase);
    ``source_before`` the accuracy before fine-tuning (a dotted line).
    """
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.6))
    for method, row in plane.iterrows():
        ax.errorbar(row.target_acc_mean, row.source_acc_mean, xerr=row.target_acc_std, yerr=row.source_acc_std,
                    fmt="s" if method in baselines else "o", capsize=3, label=method)
        ax.annotate(method, (row.target_acc_mean, row.source_acc_mean), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    if frontier is not None:
        ax.plot(*frontier, color="grey", lw=1, ls="--", label="learning-rate frontier")
    if source_before is not None:
        ax.axhline(source_before, color="black", lw=0.8, ls=":", label="before fine-tuning")
    low = float(np.nanmin(plane.target_acc_mean)) if len(plane) else 0.0
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(max(0.0, low - 0.1), 1.0), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.figure.tight_layout()
    return ax.figure


def plot_lm_curves(history, baselines: dict[str, float]):
    """Language-model loss and perplexity per epoch (train and validation), with the n-gram
    baselines (``helpers.text.ngram_baselines``) for scale."""
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.4))
    curves(history, ["train_loss", "val_loss"], title="next-token loss", ylabel="cross-entropy (nats)", ax=ax_loss)
    curves(history, ["train_ppl", "val_ppl"], title="perplexity vs n-gram baselines", ax=ax_ppl)
    for (name, value), style in zip(baselines.items(), (":", "--", "-.")):
        ax_ppl.axhline(value, color="gray", linestyle=style, label=name)
    ax_ppl.set_yscale("log")
    ax_ppl.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_methods(table, tfidf=None):
    """Text fine-tuning: accuracy (mean and std over seeds) against trainable parameters, one panel per
    budget, from ``helpers.text.runs_table``; ``tfidf`` (mean per budget) draws the baseline."""
    budgets = list(dict.fromkeys(table.index.get_level_values("budget")))
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets), 3.4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        rows = table.xs(budget, level="budget").reset_index()
        for _, row in rows.iterrows():
            ax.errorbar(row["trainable"], row["acc_mean"], yerr=row["acc_std"], marker="o", capsize=3,
                        label=row["method"])
        if tfidf is not None and budget in tfidf.index:
            ax.axhline(tfidf.loc[budget, "mean"], color="gray", linestyle="--", label="TF-IDF + LR")
        ax.set(xscale="log", xlabel="trainable parameters", ylabel="test accuracy",
               title=f"{budget} labels per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mean_std_bars(table, column: str, *, xlabel: str, title: str | None = None, ax=None):
    """One horizontal bar per row of ``table``: ``<column>_mean`` with a ±1 std error bar.

    ``table`` is indexed by what is compared (a cure, a method) and comes from
    :func:`helpers.metrics.mean_std`; its first row is drawn at the top.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.4, 3.4))
    ax.barh(table.index[::-1], table[f"{column}_mean"][::-1], xerr=table[f"{column}_std"][::-1], capsize=3)
    ax.set(xlabel=xlabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    ax.figure.tight_layout()
    return ax.figure


def score_bars(scores: dict[str, float], title: str):
    """A few accuracies side by side (e.g. test and shifted test), on a 0-1 axis: a widget's answer."""
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    ax.barh(list(scores), list(scores.values()), color=["tab:blue", "tab:orange", "tab:green"][:len(scores)])
    ax.set(xlim=(0, 1), xlabel="accuracy", title=title)
    fig.tight_layout()
    return fig

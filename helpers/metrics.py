"""Metrics beyond plain accuracy: the ones that expose what accuracy hides.

* classification: :func:`accuracy`, :func:`balanced_accuracy`, :func:`macro_f1`,
  :func:`per_class_recall`, :func:`confusion_matrix`, and :func:`predict` to get predictions;
* language models: :func:`perplexity`;
* continual learning (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018), from the accuracy matrix
  ``R[i][j]`` = accuracy on task ``j`` after training on task ``i``:
  :func:`average_accuracy`, :func:`backward_transfer`, :func:`average_forgetting`;
* over repeated runs (seeds, splits, folds): :func:`mean_std`, the one aggregator of the notebooks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of every input (eval mode, batched, returned on the CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        logits = logits.logits if hasattr(logits, "logits") else logits
        out.append(logits.argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int | None = None) -> np.ndarray:
    """``C[true, predicted]`` counts."""
    k = num_classes or int(max(labels.max(), predictions.max())) + 1
    return torch.bincount(labels.long() * k + predictions.long(), minlength=k * k).reshape(k, k).numpy()


def accuracy(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    return float((labels == predictions).double().mean())


def per_class_recall(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int | None = None) -> np.ndarray:
    """Recall of each class: the fraction of its examples predicted correctly."""
    matrix = confusion_matrix(labels, predictions, num_classes)
    support = matrix.sum(1)
    return np.divide(np.diag(matrix), support, out=np.zeros(len(matrix)), where=support > 0)


def balanced_accuracy(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present: every class counts the same, large or small."""
    matrix = confusion_matrix(labels, predictions, num_classes)
    present = matrix.sum(1) > 0
    return float((np.diag(matrix)[present] / matrix.sum(1)[present]).mean())


def macro_f1(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 (a class never predicted nor present is skipped)."""
    matrix = confusion_matrix(labels, predictions, num_classes)
    tp = np.diag(matrix).astype(float)
    precision_den, recall_den = matrix.sum(0), matrix.sum(1)
    f1 = []
    for c in range(len(matrix)):
        if precision_den[c] == 0 and recall_den[c] == 0:
            continue
        p = tp[c] / precision_den[c] if precision_den[c] else 0.0
        r = tp[c] / recall_den[c] if recall_den[c] else 0.0
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(f1))


def perplexity(mean_loss: float) -> float:
    """``exp`` of the mean next-token cross-entropy (nats)."""
    return math.exp(min(mean_loss, 50.0))


def _matrix(R: Sequence[Sequence[float]]) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"accuracy matrix must be T x T, got shape {R.shape}")
    return R


def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over all tasks after training on the last: ``mean_j R[T-1][j]``."""
    return float(_matrix(R)[-1].mean())


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """``BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])``: negative when later tasks erase earlier ones."""
    R = _matrix(R)
    if len(R) < 2:
        return 0.0
    return float(np.mean([R[-1, j] - R[j, j] for j in range(len(R) - 1)]))


def average_forgetting(R: Sequence[Sequence[float]]) -> float:
    """``mean_{j<T-1} (max_{i<T-1} R[i][j] - R[T-1][j])``: the drop from each task's best accuracy."""
    R = _matrix(R)
    if len(R) < 2:
        return 0.0
    return float(np.mean([R[:-1, j].max() - R[-1, j] for j in range(len(R) - 1)]))


def _range(values):
    return values.max() - values.min()


_range.__name__ = "range"  # its column is <col>_range


def mean_std(frame, by: Sequence[str], columns: Sequence[str], stats: Sequence[str] = ("mean", "std")):
    """``mean ± std`` over repeated runs (seeds, splits, folds): one row per group of ``by``.

    ``frame`` has one row per run; the result has ``<column>_<stat>`` for every column and statistic
    (``std`` is the sample standard deviation: NaN for a single run) and ``seeds``, how many runs
    each row aggregates. ``stats`` may add any pandas aggregation (``"min"``, ``"max"``, ...) and
    ``"range"`` (max - min)::

        mean_std(runs, ["method", "budget"], ["test_acc"])   # test_acc_mean, test_acc_std, seeds
    """
    grouped = frame.groupby(list(by), sort=False)
    out = grouped[list(columns)].agg([_range if stat == "range" else stat for stat in stats])
    out.columns = [f"{col}_{stat}" for col, stat in out.columns]
    out["seeds"] = grouped.size()
    return out

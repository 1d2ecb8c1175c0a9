"""Long-tailed data, and the usual ways to fight it (notebook 07).

Real labelled data is rarely balanced: a few *head* classes have most of the examples, many *tail*
classes have few. This module builds such data from a balanced pool and implements the standard
remedies, each as one small piece that plugs into the one training loop (the names are the
``imbalance_methods`` knob's choices):

=====================  ============================================================================
``plain``              fine-tune on the long-tailed data as it is (the baseline)
``oversample``         resample the data with weights ``1 / count(class)`` (what
                       ``torch.utils.data.WeightedRandomSampler`` does): every class equally often
``undersample``        keep only as many examples of each class as the rarest class has
``class_weighted``     cross-entropy with per-class weights ``N / (K * count(class))``
``focal``              focal loss (Lin et al. 2017) with gamma = 2 and no alpha: down-weights examples
                       the model already gets right, whatever their class
``focal_alpha``        the paper's alpha-balanced form: the same focal loss, each class's terms
                       weighted by alpha_c = ``N / (K * count(class))`` (inverse frequency; Lin et al.
                       tuned one alpha for a binary detector, Cui et al. 2019 set it per class)
``minority_augment``   add augmented copies of the rarer classes' examples until every class has as
                       many as the largest (new variations instead of exact repeats)
``logit_adjust``       no retraining: subtract ``tau * log(prior)`` from the plain model's logits
                       (post-hoc logit adjustment, Menon et al. 2021; threshold moving)
=====================  ============================================================================

Resampling methods change *which examples* :func:`helpers.train.train` sees (an index list or an
expanded dataset, drawn once, deterministically from the seed); loss methods are ``loss_fn``
arguments of :func:`helpers.train.train`; logit adjustment wraps the trained model. Everything is
fine-tuned with :func:`helpers.finetuning.finetune` under the same budget of optimisation steps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import metrics
from .config import check_knob
from .train import Data, _forward

LossFn = Callable[[nn.Module, Data, str], tuple[torch.Tensor, torch.Tensor, int]]
FOCAL_GAMMA = 2.0


# --- long-tailed data ----------------------------------------------------------------------------

def long_tail_counts(num_classes: int, max_per_class: int, ratio: float) -> list[int]:
    """Examples per class of an exponential long tail: class ``c`` keeps
    ``max_per_class * ratio ** (-c / (num_classes - 1))`` (at least 1).

    Class 0 is the head (``max_per_class``), the last class the tail (``max_per_class / ratio``);
    ``ratio`` is the *imbalance ratio* largest/smallest (Cui et al. 2019; Cao et al. 2019).
    """
    if ratio < 1 or not math.isfinite(ratio):
        raise ValueError(f"imbalance ratio={ratio!r} is not allowed: expected a number >= 1")
    if max_per_class < 1:
        raise ValueError(f"max_per_class={max_per_class!r} is not allowed: expected an int >= 1")
    steps = max(1, num_classes - 1)
    return [max(1, round(max_per_class * ratio ** (-c / steps))) for c in range(num_classes)]


def head_size(labels: torch.Tensor, requested: int) -> int:
    """The head class's size a long tail drawn from ``labels`` can have: ``requested``
    (the ``imbalance_max_per_class`` knob), capped at the smallest class's count in the pool.

    The rule makes one setting work on every target dataset: every class must be able to supply the
    head's examples, since which class is the head is a choice (class 0 here). On a pool whose
    smallest class has 104 examples, a request of 200 gives a head of 104; the notebook prints it.
    """
    if requested < 1:
        raise ValueError(f"parameter 'imbalance_max_per_class'={requested!r} is not allowed: expected an int >= 1")
    smallest = int(torch.bincount(torch.as_tensor(labels, dtype=torch.long)).min())
    return min(int(requested), smallest)


def long_tailed(labels: torch.Tensor, max_per_class: int, ratio: float, seed: int) -> torch.Tensor:
    """Indices of a long-tailed subset of ``labels`` (see :func:`long_tail_counts`).

    Each class's examples are shuffled with ``seed`` and the first ``count`` kept, so with one seed
    a more imbalanced subset is contained in a less imbalanced one (only tail examples go).
    Returns sorted int64 indices.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    available = torch.bincount(labels, minlength=num_classes)
    if max_per_class > int(available.min()):
        raise ValueError(f"parameter 'imbalance_max_per_class'={max_per_class} is not allowed: the "
                         f"smallest class has {int(available.min())} examples, so the maximum allowed "
                         f"is {int(available.min())}")
    counts = long_tail_counts(num_classes, max_per_class, ratio)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, count in enumerate(counts):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:count]])
    return torch.sort(torch.cat(chosen)).values


def class_counts(labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Examples per class (a float tensor, zeros for absent classes)."""
    return torch.bincount(torch.as_tensor(labels).long(), minlength=num_classes or 0).float()


# --- resampling ----------------------------------------------------------------------------------

def oversample(labels: torch.Tensor, seed: int, num_samples: int | None = None) -> torch.Tensor:
    """Random oversampling: indices drawn with replacement, each with weight ``1 / count(class)``.

    This is exactly ``torch.utils.data.WeightedRandomSampler(weights, num_samples,
    replacement=True)``, drawn once with a seeded generator so that the resampled training set is
    fixed and :func:`helpers.train.train` can shuffle it like any other data. Every class is drawn
    equally often in expectation; ``num_samples`` defaults to ``K x`` the largest class (the size of
    the data if every class were as large as the head).
    """
    from torch.utils.data import WeightedRandomSampler

    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = class_counts(labels)
    weights = (1.0 / counts)[labels]
    num_samples = num_samples or int((counts > 0).sum() * counts.max())
    sampler = WeightedRandomSampler(weights.double(), num_samples, replacement=True,
                                    generator=torch.Generator().manual_seed(seed))
    return torch.tensor(list(sampler), dtype=torch.long)


def undersample(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Random undersampling: every class keeps as many (random) examples as the rarest class has."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = class_counts(labels)
    return data_mod.label_budget(labels, int(counts[counts > 0].min()), seed)


def minority_augment(images: torch.Tensor, labels: torch.Tensor, seed: int,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow every class to the size of the largest with *augmented* copies of its own examples.

    All originals are kept; each added example is a random example of that class passed through
    ``augment`` (default :func:`helpers.vision.augment`: small rotation, shift and noise), so a
    rare class gets new variations rather than exact repeats. Deterministic for ``seed`` (torch's
    global RNG, which ``augment`` uses, is forked and restored).
    """
    if augment is None:
        from .vision import augment
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = class_counts(labels)
    largest = int(counts.max())
    gen = torch.Generator().manual_seed(seed)
    sources = []
    for cls in torch.nonzero(counts).flatten().tolist():
        missing = largest - int(counts[cls])
        members = torch.nonzero(labels == cls).flatten()
        sources.append(members[torch.randint(len(members), (missing,), generator=gen)])
    extra = torch.cat(sources)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_images = augment(images[extra]) if len(extra) else images[:0]
    return torch.cat([images, new_images]), torch.cat([labels, labels[extra]])


# --- losses (``train(loss_fn=...)``) --------------------------------------------------------------

def class_weights(labels: torch.Tensor, num_classes: int | None = None, power: float = 1.0) -> torch.Tensor:
    """``N / (K * count(class))`` (scikit-learn's "balanced"), raised to ``power``.

    With ``power=1`` every class carries the same total weight; an average example still weighs 1,
    so the learning rate means what it did. ``power=0.5`` is a milder, square-root reweighting.
    Classes without examples get weight 0.
    """
    counts = class_counts(labels, num_classes)
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    return weights


def weighted_cross_entropy(weights: torch.Tensor) -> LossFn:
    """A ``loss_fn`` for :func:`helpers.train.train`: cross-entropy with per-class ``weights``.

    (PyTorch averages a weighted loss by the sum of the batch's weights, so a rare example counts
    ``weights[rare] / weights[common]`` times as much as a common one in the same batch.)
    """
    def loss_fn(model: nn.Module, batch: Data, task: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs, labels = batch
        logits = _forward(model, inputs).float()
        loss = F.cross_entropy(logits, labels, weight=weights.to(logits.device))
        return loss, (logits.argmax(-1) == labels).sum(), labels.numel()

    return loss_fn


def focal_loss(gamma: float = FOCAL_GAMMA, weights: torch.Tensor | None = None) -> LossFn:
    """A ``loss_fn``: focal loss ``-(1 - p_t)**gamma * log p_t`` (Lin et al. 2017).

    Examples the model already classifies confidently (``p_t`` near 1: mostly the plentiful head
    classes) contribute almost nothing, so the hard, rare ones dominate the gradient. ``gamma=0``
    is plain cross-entropy; optional per-class ``weights`` (the paper's alpha) multiply each term.
    """
    def loss_fn(model: nn.Module, batch: Data, task: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs, labels = batch
        logits = _forward(model, inputs).float()
        log_p = F.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
        terms = -((1 - log_p.exp()) ** gamma) * log_p
        if weights is not None:
            terms = terms * weights.to(logits.device)[labels]
        return terms.mean(), (logits.argmax(-1) == labels).sum(), labels.numel()

    return loss_fn


# --- post-hoc logit adjustment --------------------------------------------------------------------

def adjust_logits(logits: torch.Tensor, train_counts: Sequence[float] | torch.Tensor,
                  tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment of a batch of ``logits`` ``[N, K]``: subtract ``tau * log(prior)``.

    The prior is the training set's class distribution, ``train_counts / sum(train_counts)``. A
    rare class has a very negative log-prior, so subtracting it *raises* that class's logits: the
    decision threshold moves towards the tail. This is what :class:`LogitAdjusted` does to a model.
    """
    counts = torch.as_tensor(train_counts, dtype=torch.float32, device=logits.device)
    if counts.ndim != 1 or counts.numel() != logits.shape[-1]:
        raise ValueError(f"train_counts has shape {tuple(counts.shape)}: expected one count per class "
                         f"({logits.shape[-1]}, the logits' last dimension)")
    return logits - tau * torch.log((counts / counts.sum()).clamp_min(1e-12))


class LogitAdjusted(nn.Module):
    """``model``'s logits minus ``tau * log(prior)``: post-hoc logit adjustment (threshold moving).

    A model trained on long-tailed data has learned the training prior ``p(y)`` into its logits;
    subtracting ``log p(y)`` turns its scores into ones suited to a *balanced* test distribution
    (Menon et al. 2021). It needs no retraining: the same weights, a different decision threshold
    per class (:func:`adjust_logits` on every batch). Works with :func:`helpers.metrics.predict`
    and :func:`helpers.train.evaluate`.
    """

    def __init__(self, model: nn.Module, prior: torch.Tensor, tau: float = 1.0):
        super().__init__()
        self.model = model
        prior = torch.as_tensor(prior, dtype=torch.float32)
        self.register_buffer("offset", tau * torch.log((prior / prior.sum()).clamp_min(1e-12)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self.model, x) - self.offset.to(x.device)


# --- one method, one model ------------------------------------------------------------------------

def rebalanced_data(method: str, images: torch.Tensor, labels: torch.Tensor, seed: int
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor], LossFn | None]:
    """The training data and ``loss_fn`` a method uses (``logit_adjust`` trains like ``plain``)."""
    check_knob("imbalance_methods", [method])
    if method == "oversample":
        index = oversample(labels, seed)
        return (images[index], labels[index]), None
    if method == "undersample":
        index = undersample(labels, seed)
        return (images[index], labels[index]), None
    if method == "minority_augment":
        return minority_augment(images, labels, seed), None
    if method == "class_weighted":
        return (images, labels), weighted_cross_entropy(class_weights(labels))
    if method == "focal":
        return (images, labels), focal_loss()
    if method == "focal_alpha":
        return (images, labels), focal_loss(weights=class_weights(labels))
    return (images, labels), None


def train_rebalanced(method: str, pretrained: nn.Module, train_data: tuple[torch.Tensor, torch.Tensor], *,
                     num_classes: int, steps: int, lr: float, batch_size: int, seed: int,
                     plain_model: nn.Module | None = None, **finetune_kw: Any) -> tuple[nn.Module, int]:
    """Fully fine-tune ``pretrained`` on long-tailed ``train_data`` with one of the ``imbalance_methods``.

    Every method gets about ``steps`` optimisation steps (:func:`helpers.finetuning.finetune` with
    ``"full_ft"``), whatever size its resampled data has. ``logit_adjust`` wraps ``plain_model``
    (the plain model of the same data and seed) when given, instead of training it again.
    Returns the model and the number of training examples the method used (after resampling).
    """
    from .finetuning import finetune

    images, labels = train_data
    if method == "logit_adjust" and plain_model is not None:
        return LogitAdjusted(plain_model, class_counts(labels, num_classes)), len(labels)
    data, loss_fn = rebalanced_data(method, images, labels, seed)
    tuned = finetune("full_ft", pretrained, data, num_classes=num_classes, steps=steps, lr=lr,
                     batch_size=batch_size, seed=seed, loss_fn=loss_fn, **finetune_kw)
    if method == "logit_adjust":
        return LogitAdjusted(tuned.model, class_counts(labels, num_classes)), len(labels)
    return tuned.model, len(data[1])


# --- what to measure ------------------------------------------------------------------------------

def imbalance_metrics(labels: torch.Tensor, predictions: torch.Tensor, train_counts: Sequence[float],
                      tail_fraction: float = 0.3) -> dict[str, Any]:
    """Everything notebook 07 reports for one model on a (balanced) test set.

    * ``balanced_acc``, ``macro_f1``, ``recall`` (per class) from :mod:`helpers.metrics`;
    * ``head_recall`` / ``tail_recall``: mean recall of the ``tail_fraction`` most / least frequent
      training classes;
    * ``acc``: plain accuracy on this test set, and ``acc_as_trained``: the accuracy one would measure
      on a test set distributed like the training data (``sum_c prior_c * recall_c``, the expected
      accuracy on such data) -- what a held-out split of the long-tailed data would report.
    """
    counts = np.asarray(train_counts, dtype=float)
    k = len(counts)
    recall = metrics.per_class_recall(labels, predictions, k)
    order = np.argsort(-counts, kind="stable")
    n_edge = max(1, round(tail_fraction * k))
    return {"acc": metrics.accuracy(labels, predictions),
            "acc_as_trained": float((counts / counts.sum()) @ recall),
            "balanced_acc": metrics.balanced_accuracy(labels, predictions, k),
            "macro_f1": metrics.macro_f1(labels, predictions, k),
            "head_recall": float(recall[order[:n_edge]].mean()),
            "tail_recall": float(recall[order[-n_edge:]].mean()),
            "recall": recall.tolist(),
            "confusion": metrics.confusion_matrix(labels, predictions, k).tolist()}


def rebalancing_grid(task, pretrained: nn.Module | Mapping[int, nn.Module], runs: Sequence[tuple[str, float]], seeds: Sequence[int], *,
                     max_per_class: int, steps: int, lr: float, batch_size: int, progress: bool = True,
                     **finetune_kw: Any):
    """Fine-tune every ``(method, imbalance ratio)`` in ``runs`` once per seed; one row per run.

    For each seed and ratio the long-tailed training set is drawn from ``task.pool`` with
    :func:`long_tailed` (the seed changes which examples, not the class sizes) and every method sees
    the same one. The model is scored on the balanced ``task.test`` with :func:`imbalance_metrics`.
    A ``logit_adjust`` run reuses the ``plain`` model of the same ratio and seed when there is one.
    ``pretrained``: one model, or one per seed (``{seed: model}``, see
    :func:`helpers.transfer.model_for_seed`) so the spread over seeds covers pretraining too.
    Each row: method, ratio, seed, ``long_tail_size`` (the long-tailed set), ``train_size`` (what
    the method trained on, after resampling), the metrics (``recall``/``confusion`` as lists).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .transfer import model_for_seed

    check_knob("imbalance_methods", [m for m, _ in runs])
    runs = list(dict.fromkeys(runs))
    # plain before logit_adjust, so the latter can reuse the former's model
    runs.sort(key=lambda r: (r[1], r[0] != "plain"))
    rows = []
    jobs = [(seed, method, ratio) for seed in seeds for method, ratio in runs]
    plain_models: dict[tuple[int, float], nn.Module] = {}
    for seed, method, ratio in tqdm(jobs, desc="rebalancing runs", disable=not progress):
        index = long_tailed(task.pool[1], max_per_class, ratio, seed)
        images, labels = task.pool[0][index], task.pool[1][index]
        model, train_size = train_rebalanced(method, model_for_seed(pretrained, seed), (images, labels),
                                 num_classes=task.num_classes,
                                 steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                                 plain_model=plain_models.get((seed, ratio)), **finetune_kw)
        if method == "plain":
            plain_models[(seed, ratio)] = model
        predictions = metrics.predict(model, task.test[0])
        counts = class_counts(labels, task.num_classes).tolist()
        rows.append({"method": method, "ratio": ratio, "seed": seed, "long_tail_size": len(labels),
                     "train_size": train_size,
                     **imbalance_metrics(task.test[1], predictions, counts)})
    return pd.DataFrame(rows)


def recall_figure(recall: Sequence[float], train_counts: Sequence[float], acc_as_trained: float,
                  balanced_acc: float, title: str = ""):
    """One model on a long tail in one picture: each class's test recall over its training count.

    Bars: recall per class (head on the left); under each bar, the number of training examples it
    had. Two lines: the accuracy one would report on data distributed like the training set, and
    balanced accuracy. When the two lines agree the tail is fine; when the first stays high while
    the right-hand bars collapse, plain accuracy is hiding failed classes.
    """
    import matplotlib.pyplot as plt

    recall, counts = np.asarray(recall, dtype=float), np.asarray(train_counts, dtype=float)
    if recall.shape != counts.shape:
        raise ValueError(f"recall has {recall.size} classes but train_counts {counts.size}")
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    colours = plt.cm.viridis(np.log(counts) / max(np.log(counts.max()), 1e-9) * 0.85)
    ax.bar(range(len(recall)), recall, color=colours)
    ax.axhline(acc_as_trained, color="tab:red", ls="--", label=f"accuracy as trained {acc_as_trained:.2f}")
    ax.axhline(balanced_acc, color="black", ls=":", label=f"balanced accuracy {balanced_acc:.2f}")
    ax.set_xticks(range(len(recall)), [f"{c}\n({n:.0f})" for c, n in enumerate(counts)])
    ax.set(ylim=(0, 1.05), ylabel="test recall", xlabel="class (training examples)", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: bars fill any corner
    fig.tight_layout()
    return fig

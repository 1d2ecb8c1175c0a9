"""Is this model over-fitting? Read the training history, and check with honest validation.

* :func:`diagnose` reads a :class:`helpers.train.History` (or its frame, or its rows) and says in
  words whether it looks like **under-fitting**, **over-fitting** or **healthy**, and which numbers
  led it there: the final train/validation accuracy and their gap, the epoch where validation was
  best (the one early stopping would pick), how far validation fell after it, whether training was
  still improving when it stopped. Any notebook can print it under a curve.
* :func:`generalisation_gap` measures a trained model the same way for every variant: accuracy on
  its own (clean, un-augmented) training set in eval mode, accuracy on held-out data, and the gap.
* :func:`shuffled_labels` and :func:`noisy_labels` make the memorisation experiments of Zhang et
  al. 2017 ("Understanding deep learning requires rethinking generalization"): a network big
  enough to fit the data can fit *random* labels too, so fitting the training set proves nothing;
  :func:`memorised_fraction` counts the wrong labels a network learnt by heart.
* :func:`kfold_scores` and :func:`random_split_scores`: the validation estimate of a small data set
  depends on which examples land in the validation split. k-fold cross-validation (scikit-learn's
  ``StratifiedKFold``) uses every example for validation once and shows that spread (summarise
  the scores with :func:`helpers.metrics.mean_std`).

The thresholds are rules of thumb, not laws: they are parameters, and the diagnosis prints the
numbers so a reader can disagree with it. Notebook 06's experiments, built on these, live in
:mod:`helpers.overfitting`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

VERDICTS = ("under-fitting", "over-fitting", "healthy")


@dataclass
class Diagnosis:
    """A verdict from :data:`VERDICTS`, the reasons in words, and the numbers behind them."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.verdict}: " + "; ".join(self.reasons)

    def _repr_markdown_(self) -> str:  # how Jupyter shows it when it is a cell's last value
        return f"**{self.verdict}**: " + "; ".join(self.reasons)


def history_rows(history: Any) -> list[dict[str, Any]]:
    """Rows (one dict per epoch) from a History, a DataFrame (epoch index or column) or a list."""
    if hasattr(history, "rows"):
        return list(history.rows)
    if hasattr(history, "to_dict") and hasattr(history, "columns"):
        frame = history if "epoch" in history.columns else history.reset_index()
        return frame.to_dict("records")
    return [dict(row) for row in history]


def diagnose(history: Any, *, gap_tolerance: float = 0.10, min_train_acc: float = 0.90,
             drop_tolerance: float = 0.02, loss_gap_tolerance: float = 1.0,
             loss_rise_tolerance: float = 0.10, still_learning: float = 0.05) -> Diagnosis:
    """Say whether a training history looks like under-fitting, over-fitting or healthy.

    With accuracies (``train_acc`` and ``val_acc`` columns):

    * **over-fitting** when the final gap ``train_acc - val_acc`` exceeds ``gap_tolerance``, or when
      validation accuracy fell more than ``drop_tolerance`` below its best while training went on;
    * otherwise **under-fitting** when the model does not even fit its training data
      (``train_acc < min_train_acc``) or was still learning fast when training stopped (train
      accuracy rose by more than ``still_learning`` over the last quarter of the epochs);
    * otherwise **healthy**.

    With losses only (a language model, or no accuracies): **over-fitting** when ``val_loss`` ends
    more than ``loss_gap_tolerance`` (relative: 1.0 = twice) above ``train_loss``, or rose more
    than ``loss_rise_tolerance`` (relative) above its minimum; **under-fitting** when the train loss
    fell by more than ``still_learning`` (relative) over the last quarter of the epochs.
    """
    rows = history_rows(history)
    if not rows:
        raise ValueError("diagnose: the history has no epochs")
    if "train_loss" not in rows[0]:
        raise ValueError(f"diagnose: the history needs a 'train_loss' column, it has {sorted(rows[0])}")
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    train_loss = np.array([r["train_loss"] for r in rows], dtype=float)
    has_val = "val_loss" in rows[0]
    use_acc = "train_acc" in rows[0] and "val_acc" in rows[0]
    reasons: list[str] = []
    numbers: dict[str, float] = {"epochs": float(len(rows)), "train_loss": float(train_loss[-1])}

    # Was training still improving when it stopped? (compare the last quarter's start and end)
    quarter = min(max(1, len(rows) // 4), len(rows) - 1)
    learning, progress = False, ""
    if len(rows) >= 2 and use_acc:
        rise = float(rows[-1]["train_acc"] - rows[-1 - quarter]["train_acc"])
        numbers["train_acc_rise_last_quarter"] = rise
        learning, progress = rise > still_learning, f"train accuracy was still rising (+{rise:.3f}"
    elif len(rows) >= 2:
        before = train_loss[-1 - quarter]
        fall = float((before - train_loss[-1]) / max(abs(before), 1e-12))
        numbers["train_loss_fall_last_quarter"] = fall
        learning, progress = fall > still_learning, f"train loss was still falling ({fall:.0%}"

    overfit = underfit = False
    if use_acc:
        train_acc = np.array([r["train_acc"] for r in rows], dtype=float)
        val_acc = np.array([r["val_acc"] for r in rows], dtype=float)
        best = int(np.argmax(val_acc))
        gap = float(train_acc[-1] - val_acc[-1])
        drop = float(val_acc[best] - val_acc[-1])
        numbers.update(train_acc=float(train_acc[-1]), val_acc=float(val_acc[-1]), gap=gap,
                       best_val_acc=float(val_acc[best]), best_epoch=float(epochs[best]), val_drop=drop)
        if gap > gap_tolerance:
            overfit = True
            reasons.append(f"train accuracy {train_acc[-1]:.3f} vs validation {val_acc[-1]:.3f}: "
                           f"a gap of {gap:.3f} > {gap_tolerance:g}")
        if drop > drop_tolerance and best < len(rows) - 1:
            overfit = True
            reasons.append(f"validation accuracy peaked at epoch {epochs[best]} ({val_acc[best]:.3f}) and "
                           f"fell {drop:.3f} by epoch {epochs[-1]}; early stopping would keep epoch {epochs[best]}")
        if not overfit:
            if train_acc[-1] < min_train_acc:
                underfit = True
                reasons.append(f"train accuracy is only {train_acc[-1]:.3f} (< {min_train_acc:g}): the model "
                               f"does not fit even its training data")
            else:
                reasons.append(f"train {train_acc[-1]:.3f} and validation {val_acc[-1]:.3f} accuracy are "
                               f"within {gap_tolerance:g} (gap {gap:.3f})")
    elif has_val:
        val_loss = np.array([r["val_loss"] for r in rows], dtype=float)
        best = int(np.argmin(val_loss))
        rel_gap = float((val_loss[-1] - train_loss[-1]) / max(abs(train_loss[-1]), 1e-12))
        rise = float((val_loss[-1] - val_loss[best]) / max(abs(val_loss[best]), 1e-12))
        numbers.update(val_loss=float(val_loss[-1]), loss_gap=rel_gap, best_val_loss=float(val_loss[best]),
                       best_epoch=float(epochs[best]), val_loss_rise=rise)
        if rise > loss_rise_tolerance:
            overfit = True
            reasons.append(f"validation loss rose {rise:.0%} above its minimum ({val_loss[best]:.3g} at epoch "
                           f"{epochs[best]}) while training went on")
        if rel_gap > loss_gap_tolerance:
            overfit = True
            reasons.append(f"validation loss {val_loss[-1]:.3g} is {rel_gap:.0%} above train loss "
                           f"{train_loss[-1]:.3g}")
        if not overfit:
            reasons.append(f"validation loss {val_loss[-1]:.3g} stays close to train loss {train_loss[-1]:.3g}")
    else:
        reasons.append("no validation columns: only under-fitting can be judged")

    if not overfit and learning:
        underfit = True
        reasons.append(f"{progress} over the last {quarter} epoch(s)): more epochs, capacity or a higher "
                       f"learning rate may help")
    verdict = "over-fitting" if overfit else "under-fitting" if underfit else "healthy"
    return Diagnosis(verdict, reasons, numbers)


@torch.no_grad()
def generalisation_gap(model: torch.nn.Module, train_set: tuple[torch.Tensor, torch.Tensor],
                       held_out: tuple[torch.Tensor, torch.Tensor], bf16: bool = False) -> dict[str, float]:
    """Accuracy and loss on the training set and on held-out data, and the gaps between them.

    Returns ``train_acc``, ``held_out_acc``, ``gap`` (= train_acc - held_out_acc), ``train_loss``,
    ``held_out_loss`` and ``loss_gap`` (= held_out_loss - train_loss, the generalisation gap of
    learning theory). The training accuracy in a History is averaged during the epoch, in train
    mode (dropout on, augmented inputs); this measures every variant the same way, after training,
    in eval mode on the clean training set.
    """
    from .train import evaluate

    seen = evaluate(model, train_set, bf16=bf16)
    unseen = evaluate(model, held_out, bf16=bf16)
    return {"train_acc": seen["acc"], "held_out_acc": unseen["acc"], "gap": seen["acc"] - unseen["acc"],
            "train_loss": seen["loss"], "held_out_loss": unseen["loss"], "loss_gap": unseen["loss"] - seen["loss"]}


def fit_and_measure(model: torch.nn.Module, train_set: tuple[torch.Tensor, torch.Tensor],
                    val: tuple[torch.Tensor, torch.Tensor] | None, held_out: tuple[torch.Tensor, torch.Tensor],
                    **train_options: Any):
    """Train ``model`` with :func:`helpers.train.train`, then measure it with :func:`generalisation_gap`.

    ``val`` is scored after every epoch (the curves, early stopping); ``held_out`` only once, at the
    end, so no decision is ever taken on it. Returns ``(history, measurements)``; the measurements
    also hold ``epochs`` (how many ran), ``best_epoch`` and the :func:`diagnose` ``verdict`` (when
    there is a ``val``).
    """
    from .train import train

    history = train(model, train_set, val, **train_options)
    measured = generalisation_gap(model, train_set, held_out, bf16=train_options.get("bf16", False))
    measured.update(epochs=len(history.rows), best_epoch=history.best_epoch,
                    verdict=diagnose(history).verdict if val is not None else None)
    return history, measured


def shuffled_labels(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """The same labels in a random order: every class keeps its count, no label means anything."""
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def noisy_labels(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``fraction`` of the labels by a *different* random class; returns (labels, flipped mask).

    Exactly ``round(fraction * N)`` labels are wrong, so the noise level is what it says.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"noisy_labels: fraction={fraction!r} is not allowed: expected a number in [0, 1]")
    if num_classes < 2:
        raise ValueError(f"noisy_labels: num_classes={num_classes!r} is not allowed: expected >= 2")
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.zeros(len(labels), dtype=torch.bool)
    flipped[torch.randperm(len(labels), generator=gen)[:round(fraction * len(labels))]] = True
    offset = torch.randint(1, num_classes, (len(labels),), generator=gen)  # never 0: always a new class
    noisy = torch.where(flipped, (labels + offset) % num_classes, labels)
    return noisy, flipped


@torch.no_grad()
def memorised_fraction(model: torch.nn.Module, images: torch.Tensor, noisy: torch.Tensor,
                       flipped: torch.Tensor) -> float:
    """The share of the *wrong* labels (``flipped``, from :func:`noisy_labels`) a trained model
    predicts on its own training images: how many of them it learnt by heart."""
    from .metrics import predict

    guesses = predict(model, images[flipped])
    return float((guesses == noisy[flipped]).float().mean())


FitScore = Callable[[np.ndarray, np.ndarray], float]


def stratified_folds(labels: torch.Tensor | Sequence[int], k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """The validation indices of each of the ``k`` folds of a stratified k-fold split.

    Every example lands in exactly one fold, and every fold holds each class's share of it: a class
    with ``n`` examples puts ``n // k`` or ``n // k + 1`` of them in each fold (scikit-learn's
    ``StratifiedKFold``, shuffled with ``seed``). Fold ``i`` validates a model trained on the others.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [val for _, val in folds.split(np.zeros(len(labels)), labels)]


def fold_summary(folds: Sequence[Any], labels: torch.Tensor | Sequence[int]) -> dict[str, np.ndarray]:
    """What makes a split a stratified k-fold split, whichever examples went where.

    ``times_validated``: for each example, in how many folds it is validated (1 for all, in a
    k-fold split); ``class_counts``: for each class (rows), its number of examples in each fold,
    sorted (columns: one per fold) -- the same for every stratified split of these labels, so two
    splits can be compared without being equal.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    times = np.zeros(len(labels), dtype=np.int64)
    counts = np.zeros((len(classes), len(folds)), dtype=np.int64)
    for column, fold in enumerate(folds):
        index = np.asarray(fold, dtype=np.int64).reshape(-1)
        np.add.at(times, index, 1)
        counts[:, column] = [(labels[index] == c).sum() for c in classes]
    return {"times_validated": times, "class_counts": np.sort(counts, axis=1)}


def kfold_scores(labels: torch.Tensor | Sequence[int], fit_score: FitScore, k: int = 5, seed: int = 0) -> np.ndarray:
    """k-fold cross-validation: ``fit_score(train_index, val_index)`` once per fold; the k scores.

    Stratified (every fold has the class mix of the whole set, :func:`stratified_folds`) and
    shuffled with ``seed``; every example is validated on exactly once. Report ``mean ± std`` of
    the scores.
    """
    everything = np.arange(len(np.asarray(labels)))
    return np.array([fit_score(np.setdiff1d(everything, val), val) for val in stratified_folds(labels, k, seed)])


def random_split_scores(labels: torch.Tensor | Sequence[int], fit_score: FitScore, val_fraction: float = 0.2,
                        repeats: int = 10, seed: int = 0) -> np.ndarray:
    """``repeats`` independent single train/validation splits (stratified); one score each.

    What you would get from *one* validation split, depending on luck: compare their spread with
    the k-fold estimate.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    labels = np.asarray(labels)
    splits = StratifiedShuffleSplit(n_splits=repeats, test_size=val_fraction, random_state=seed)
    return np.array([fit_score(train, val) for train, val in splits.split(np.zeros(len(labels)), labels)])


def logistic_fit_score(features: torch.Tensor | np.ndarray, labels: torch.Tensor | Sequence[int]) -> FitScore:
    """A ``fit_score`` for :func:`kfold_scores`: logistic regression on fixed features (a linear probe).

    Features are computed once (e.g. :func:`helpers.finetuning.extract_features` of a pretrained
    backbone); each call standardises on the training part only, fits, and returns validation accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)

    def fit_score(train: np.ndarray, val: np.ndarray) -> float:
        with threadpool_limits(1):  # a tiny problem: BLAS threads only add overhead (3-5x on 2 busy cores)
            scaler = StandardScaler().fit(x[train])
            probe = LogisticRegression(max_iter=500).fit(scaler.transform(x[train]), y[train])
            return float(np.mean(probe.predict(scaler.transform(x[val])) == y[val]))

    return fit_score


def per_seed(runs: Any, column: str, **match: Any) -> np.ndarray:
    """One number per seed, in seed order: the side of a paired claim (:mod:`helpers.claims`).

    ``runs`` is a table with one row per run and a ``seed`` column; ``match`` picks the rows (e.g.
    ``per_seed(runs, "gap", set="small")``), and exactly one row per seed must remain, so two
    sides read with the same seeds pair seed by seed. Fails, naming what it looked for, otherwise.
    """
    chosen = runs
    for name, value in match.items():
        chosen = chosen[chosen[name] == value]
    if len(chosen) == 0 or chosen["seed"].duplicated().any():
        raise ValueError(f"per_seed: expected one row per seed with {match}, found {len(chosen)} rows "
                         f"for seeds {sorted(chosen['seed'].tolist())}")
    return chosen.sort_values("seed")[column].to_numpy(dtype=float)

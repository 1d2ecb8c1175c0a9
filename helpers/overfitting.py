"""The overfitting experiments of notebook 06: see it, change one thing, validate honestly.

Every run is one :func:`helpers.diagnostics.fit_and_measure` call made through an
:class:`Experiment`, which holds what all runs share: the small labelled set, the validation set
scored after every epoch, the test set scored once at the end (no decision ever looks at it), the
*plain recipe* (no weight decay, no dropout, no augmentation) and the pretrained network a run may
start from. Each experiment below changes one thing and returns its runs, or their table
(:func:`helpers.metrics.mean_std` over seeds):

* :func:`same_steps_runs`: the same network on sets of different sizes, each for a number of
  optimisation steps you choose -- the same steps (every set gets as many updates, a larger set
  fewer epochs) or the same epochs (every example seen as often, a larger set more updates); the
  train/validation curves diverge on the small one;
* :func:`capacity_table`: networks of growing width on the same small set;
* :func:`memorisation_table`: true, noisy and shuffled labels (Zhang et al. 2017);
* :func:`cure_recipes`, :func:`cure_runs`, :func:`cure_table`: one cure at a time, each compared
  with the plain recipe on the same split and seeds;
* :func:`split_estimates`, :func:`spread_by_seed`: k-fold cross-validation versus single validation
  splits.

The figures of these experiments live next to them (``*_figure``); figures several notebooks draw
live in :mod:`helpers.plots`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from .diagnostics import (fit_and_measure, kfold_scores, logistic_fit_score, memorised_fraction, noisy_labels,
                          random_split_scores, shuffled_labels)
from .finetuning import epochs_for
from .metrics import mean_std
from .models import SmallResNet, count_parameters, new_head, set_trainable
from .plots import mean_std_bars, mean_std_lines, score_bars
from .train import History

Split = tuple[torch.Tensor, torch.Tensor]
BASELINE = "plain (baseline)"   # the cure table's row of the plain recipe
MEASURED = ["train_acc", "held_out_acc", "gap", "loss_gap"]   # what every run's table aggregates


@dataclass
class Experiment:
    """What every overfitting run shares: the data, the plain recipe, and where a network starts.

    ``small`` is the labelled training set (the same split for every seed), ``val`` is scored after
    every epoch (curves, early stopping), ``test`` once at the end. ``plain`` holds the
    :func:`helpers.train.train` options of the plain recipe; a run changes some of them.
    ``pretrained`` is one pretrained network, or one per seed (seed -> network: each seed then
    starts from its own pretraining run, so the error bars cover pretraining's variance too).
    """

    small: Split
    val: Split
    test: Split
    num_classes: int
    plain: dict[str, Any]
    width: int = 16
    pretrained: SmallResNet | Mapping[int, SmallResNet] | None = None

    def plain_steps(self, labelled: Split | None = None) -> int:
        """Optimisation steps of the plain recipe's epochs on ``labelled`` (default: the small set):
        epochs x batches per epoch."""
        size = len((self.small if labelled is None else labelled)[1])
        return self.plain["epochs"] * -(-size // min(self.plain["batch_size"], size))

    def pretrained_for(self, seed: int) -> SmallResNet:
        """The pretrained network seed ``seed`` starts from (its own, when there is one per seed)."""
        if self.pretrained is None:
            raise ValueError("network: init='pretrained' needs the Experiment's pretrained network")
        if isinstance(self.pretrained, Mapping):
            if seed not in self.pretrained:
                raise ValueError(f"network: no pretrained network for seed {seed} (have {sorted(self.pretrained)})")
            return self.pretrained[seed]
        return self.pretrained

    def network(self, seed: int, init: str = "scratch", width: int | None = None, dropout: float = 0.0,
                freeze: bool = False) -> nn.Module:
        """A fresh SmallResNet, or the pretrained one with a new head (its backbone frozen or not),
        with ``dropout`` before the head either way."""
        if init not in ("scratch", "pretrained"):
            raise ValueError(f"network: init={init!r} is not allowed: expected 'scratch' or 'pretrained'")
        source = self.pretrained_for(seed) if init == "pretrained" else None
        torch.manual_seed(seed)
        if init == "scratch":
            return SmallResNet(self.num_classes, width=self.width if width is None else width, dropout=dropout)
        model = new_head(copy.deepcopy(source), self.num_classes, seed=seed)
        set_trainable(model.backbone, not freeze)
        for layer in model.modules():   # the pretrained network's dropout layer before the head
            if isinstance(layer, nn.Dropout):
                layer.p = dropout
        return model

    def fit(self, model: nn.Module, seed: int, labelled: Split | None = None, validate: bool = True,
            **changes: Any) -> tuple[History, dict[str, Any]]:
        """Train ``model`` with the plain recipe and ``changes`` to it (e.g. ``weight_decay=0.1``) on
        ``labelled`` (default: the small set); returns the history and the measured gaps."""
        return fit_and_measure(model, self.small if labelled is None else labelled, self.val if validate else None,
                               self.test, **{**self.plain, **changes}, seed=seed)


def dash_validation(ax: plt.Axes) -> None:
    """Draw training curves solid and validation curves dashed (a curve's label says which)."""
    for line in ax.get_lines():
        line.set_linestyle("--" if "val" in line.get_label() else "-")


# --------------------------------------------------------------------------------------------
# 1 · see it: a small and a larger set, the same steps or the same epochs
# --------------------------------------------------------------------------------------------

def same_steps_runs(experiment: Experiment, sets: Mapping[str, Split], seeds: Sequence[int],
                    steps: int | Mapping[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train a fresh network on each labelled set for about ``steps`` optimisation steps, per seed.

    ``steps`` is one number for every set (the same steps: a small set is then seen many times and
    can be learnt by heart, a larger one only a few times, so data size and epochs change together)
    or one per set name (e.g. :meth:`Experiment.plain_steps` of each set: the same *epochs*, every
    example seen as often, so only the data size differs). Returns the runs (one row per set and seed: the measured gaps, and the ``history``) and the
    curves (mean and std over seeds of accuracy and loss per curve ``"<set> · train|val"`` and step).
    """
    runs, curve_rows = [], []
    for seed in seeds:
        for name, labelled in sets.items():
            wanted = steps[name] if isinstance(steps, Mapping) else steps
            epochs, batch = epochs_for(len(labelled[1]), experiment.plain["batch_size"], wanted)
            history, measured = experiment.fit(experiment.network(seed), seed, labelled, epochs=epochs,
                                               batch_size=batch)
            runs.append({"set": name, "seed": seed, **measured, "history": history})
            per_epoch = -(-len(labelled[1]) // batch)
            curve_rows += [{"curve": f"{name} · {split}", "step": row["epoch"] * per_epoch,
                            "acc": row[f"{split}_acc"], "loss": row[f"{split}_loss"]}
                           for row in history.rows for split in ("train", "val")]
    return pd.DataFrame(runs), mean_std(pd.DataFrame(curve_rows), ["curve", "step"], ["acc", "loss"])


def curves_figure(curves: pd.DataFrame, title: str) -> plt.Figure:
    """Accuracy and loss against steps from :func:`same_steps_runs`: training solid, validation dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    mean_std_lines(curves, x="step", y="acc", hue="curve", ylabel="accuracy", ax=axes[0], title=title)
    mean_std_lines(curves, x="step", y="loss", hue="curve", ylabel="cross-entropy", ax=axes[1], title="loss")
    for ax in axes:
        dash_validation(ax)
        ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# 2 · capacity
# --------------------------------------------------------------------------------------------

def capacity_table(experiment: Experiment, widths: Sequence[int], seeds: Sequence[int],
                   measured: pd.DataFrame) -> pd.DataFrame:
    """Networks of each width trained from scratch on the small set (no validation), per seed.

    ``measured`` holds the runs already made at the experiment's own width (reused, not retrained).
    One row per width, narrowest first: parameters, train and test accuracy, both gaps (mean and
    std over seeds of :func:`capacity_runs`).
    """
    return capacity_summary(capacity_runs(experiment, widths, seeds, measured))


def capacity_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`capacity_runs` averaged over seeds: one row per width, narrowest first."""
    return mean_std(runs, ["width"], ["params", *MEASURED])


def capacity_runs(experiment: Experiment, widths: Sequence[int], seeds: Sequence[int],
                  measured: pd.DataFrame) -> pd.DataFrame:
    """The runs of :func:`capacity_table`, one row per width and seed (the sides of a paired claim)."""
    widths = sorted(widths)
    rows = [{"width": experiment.width, "params": count_parameters(experiment.network(0)), **run}
            for run in measured.to_dict("records")]
    for width in [w for w in widths if w != experiment.width]:
        for seed in seeds:
            model = experiment.network(seed, width=width)
            _, gaps = experiment.fit(model, seed, validate=False)
            rows.append({"width": width, "params": count_parameters(model), "seed": seed, **gaps})
    frame = pd.DataFrame(rows)
    return frame[frame.width.isin(widths)].sort_values(["width", "seed"]).reset_index(drop=True)


def capacity_figure(capacity: pd.DataFrame, title: str) -> plt.Figure:
    """The gap, test and train accuracy of :func:`capacity_table` against parameters (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for column, label in (("gap", "accuracy gap"), ("held_out_acc", "test accuracy"), ("train_acc", "train accuracy")):
        ax.errorbar(capacity["params_mean"], capacity[f"{column}_mean"], yerr=capacity[f"{column}_std"],
                    marker="o", capsize=3, label=label)
    ax.set(xscale="log", xlabel="width / parameters", ylabel="accuracy / gap", title=title)
    ax.set_xticks(capacity["params_mean"], [f"{w}\n{n:,.0f}" for w, n in zip(capacity.index, capacity["params_mean"])])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# 3 · memorisation
# --------------------------------------------------------------------------------------------

MEMORISATION = ["train_acc (own labels)", "val_acc", "test_acc", "wrong labels memorised"]


def memorisation_table(experiment: Experiment, seeds: Sequence[int], label_noise: float,
                       true_runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The small set's images with true, ``label_noise`` noisy, and shuffled labels, per seed.

    ``true_runs`` are the runs already made on the true labels (with their ``history``), one per
    seed. Returns the table (accuracy on the labels trained on, validation and test accuracy, the
    share of wrong labels learnt by heart; :func:`memorisation_runs` averaged over seeds) and the
    accuracy curves (``"<labels> · train|val"``).
    """
    runs, curves = memorisation_runs(experiment, seeds, label_noise, true_runs)
    return mean_std(runs, ["labels"], MEMORISATION), curves


def memorisation_runs(experiment: Experiment, seeds: Sequence[int], label_noise: float,
                      true_runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs of :func:`memorisation_table`, one row per kind of labels and seed, and the curves."""
    images, labels = experiment.small
    true = {run["seed"]: run for run in true_runs.to_dict("records")}
    rows, curve_rows = [], []
    for seed in seeds:
        noisy, flipped = noisy_labels(labels, label_noise, experiment.num_classes, seed)
        label_sets = {"true labels": labels, f"{label_noise:.0%} noisy labels": noisy,
                      "random labels": shuffled_labels(labels, seed)}
        for kind, targets in label_sets.items():
            if kind == "true labels":
                model, measured = None, true[seed]
                history = measured["history"]
            else:
                model = experiment.network(seed)
                history, measured = experiment.fit(model, seed, (images, targets))
            row = {"labels": kind, "seed": seed, "train_acc (own labels)": measured["train_acc"],
                   "val_acc": history.last("val_acc"), "test_acc": measured["held_out_acc"]}
            if model is not None and kind.endswith("noisy labels"):
                row["wrong labels memorised"] = memorised_fraction(model, images, noisy, flipped)
            rows.append(row)
            curve_rows += [{"curve": f"{kind} · {split}", "epoch": r["epoch"], "acc": r[f"{split}_acc"]}
                           for r in history.rows for split in ("train", "val")]
    return pd.DataFrame(rows), mean_std(pd.DataFrame(curve_rows), ["curve", "epoch"], ["acc"])


def memorisation_figure(curves: pd.DataFrame, chance: float) -> plt.Figure:
    """Training (solid) and validation (dashed) accuracy per kind of labels, with chance in grey."""
    fig = mean_std_lines(curves, x="epoch", y="acc", hue="curve", ylabel="accuracy",
                         title="fitting true, noisy and random labels")
    dash_validation(fig.axes[0])
    fig.axes[0].axhline(chance, color="grey", lw=0.8)
    fig.axes[0].legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------------------------
# 4 · cures
# --------------------------------------------------------------------------------------------

def cure_recipes(*, patience: int, weight_decay: float, dropout: float, lower_lr: float) -> dict[str, dict[str, Any]]:
    """Each cure is one change to the plain recipe: ``net`` changes the network it starts from
    (:meth:`Experiment.network`), ``options`` how it trains (:func:`helpers.train.train`)."""
    from .vision import augment

    return {
        "early stopping": {"options": {"patience": patience}},   # stop, restore the best epoch
        "weight decay": {"options": {"weight_decay": weight_decay}},   # AdamW, decoupled
        "dropout": {"net": {"dropout": dropout}},   # before the classifier head
        "augmentation": {"options": {"augment": augment}},   # every batch rotated, shifted, noised
        "lower learning rate": {"options": {"lr": lower_lr}},
        "pretrained init": {"net": {"init": "pretrained"}},   # a new head, everything trains
        "pretrained, frozen": {"net": {"init": "pretrained", "freeze": True}},   # only the head trains
    }


def cure_runs(experiment: Experiment, cures: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
              baseline: pd.DataFrame) -> pd.DataFrame:
    """Every cure of :func:`cure_recipes` on the small set, per seed; one row per run.

    ``baseline`` holds the plain recipe's runs already made (they become the ``BASELINE`` rows).
    """
    rows = [{"cure": BASELINE, **run} for run in baseline.to_dict("records")]
    for seed in seeds:
        for name, cure in cures.items():
            _, measured = experiment.fit(experiment.network(seed, **cure.get("net", {})), seed,
                                         **cure.get("options", {}))
            rows.append({"cure": name, "seed": seed, **measured})
    return pd.DataFrame(rows)


def cure_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per cure, its most frequent ``verdict``, and how far each cure moved
    the accuracy gap, the loss gap and test accuracy from the plain recipe (``BASELINE``)."""
    table = mean_std(runs, ["cure"], [*MEASURED, "epochs"])
    table["verdict"] = runs.groupby("cure", sort=False)["verdict"].agg(lambda v: v.mode().iloc[0])
    base = table.loc[BASELINE]
    table["gap change"] = table["gap_mean"] - base["gap_mean"]
    table["loss gap change"] = table["loss_gap_mean"] - base["loss_gap_mean"]
    table["test acc change"] = table["held_out_acc_mean"] - base["held_out_acc_mean"]
    return table


def cures_figure(table: pd.DataFrame, title: str) -> plt.Figure:
    """Both gaps and test accuracy per cure (bars: mean ± std); the dashed line is the plain recipe."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, column, label in zip(axes, ("gap", "loss_gap", "held_out_acc"),
                                 ("accuracy gap (train − test)", "loss gap (test − train)", "test accuracy")):
        mean_std_bars(table, column, xlabel=label, ax=ax)
        ax.axvline(table.loc[BASELINE, f"{column}_mean"], color="grey", ls="--", lw=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def train_test_bars(measured: Mapping[str, Any], title: str) -> plt.Figure:
    """One run's train and test accuracy as two bars: the distance between them is the gap."""
    fig = score_bars({"train": measured["train_acc"], "test": measured["held_out_acc"]},
                     title=f"{title}: gap {measured['gap']:.2f} ({measured['verdict']})")
    plt.close(fig)   # explore() shows it once
    return fig


# --------------------------------------------------------------------------------------------
# 5 · honest validation
# --------------------------------------------------------------------------------------------

@dataclass
class SplitEstimates:
    """Validation estimates of one model on one small set, made ``shuffles`` times each way.

    ``single`` holds one score per shuffle from a single stratified split (``1/k`` validation);
    ``folds`` the ``k`` fold scores of a k-fold cross-validation per shuffle.
    """

    k: int
    single: np.ndarray
    folds: list[np.ndarray] = field(default_factory=list)

    @property
    def kfold_means(self) -> np.ndarray:
        """The k-fold estimate of each shuffle: the mean of its folds."""
        return np.array([scores.mean() for scores in self.folds])

    def table(self, reference: float) -> pd.DataFrame:
        """Mean, std, min, max and range of each kind of estimate, and its mean's error against
        ``reference`` (the accuracy measured on the large test set)."""
        k = self.k
        estimates = pd.DataFrame([{"estimate": estimate, "acc": acc} for estimate, scores in (
            (f"one random split ({1 / k:.0%} validation)", self.single), (f"{k}-fold CV mean", self.kfold_means),
            (f"folds within one {k}-fold run", self.folds[0])) for acc in scores])
        table = mean_std(estimates, ["estimate"], ["acc"], stats=("mean", "std", "min", "max", "range"))
        table = table.drop(columns="seeds")
        table["mean error vs test"] = table["acc_mean"] - reference
        return table

    def figure(self, reference: float, test_size: int, title: str) -> plt.Figure:
        """Each shuffle's single-split and k-fold estimate as a dot, the test accuracy dashed."""
        fig, ax = plt.subplots(figsize=(7, 3.2))
        jitter = np.random.default_rng(0)
        shuffles = len(self.single)
        for i, (label, values) in enumerate(((f"one split ({shuffles} shuffles)", self.single),
                                             (f"{self.k}-fold mean ({shuffles} shuffles)", self.kfold_means))):
            ax.scatter(values, i + jitter.uniform(-0.12, 0.12, len(values)), alpha=0.6, label=label)
        ax.axvline(reference, color="k", ls="--", lw=1, label=f"test accuracy ({test_size} images)")
        ax.set(yticks=[0, 1], yticklabels=["one split", "k-fold mean"], xlabel="estimated accuracy", title=title)
        ax.set_ylim(-0.5, 1.5)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
        fig.tight_layout()
        return fig


def split_estimates(features: torch.Tensor | np.ndarray, labels: torch.Tensor, k: int, shuffles: int) -> SplitEstimates:
    """A logistic-regression probe on fixed ``features``, validated ``shuffles`` times by a single
    stratified split (``1/k`` held out) and by k-fold cross-validation (each shuffle a new seed)."""
    fit_score = logistic_fit_score(features, labels)
    single = np.array([random_split_scores(labels, fit_score, 1 / k, repeats=1, seed=r)[0] for r in range(shuffles)])
    return SplitEstimates(k, single, [kfold_scores(labels, fit_score, k=k, seed=r) for r in range(shuffles)])


def spread_by_seed(features_of: Any, labelled: Mapping[int, Split], k: int, shuffles: int) -> pd.DataFrame:
    """How much each kind of estimate moves, on one small set per seed: the paired sides of a claim.

    For each seed's labelled set (``labelled``: seed -> images and labels), the probe's features
    (``features_of(images)``) are validated ``shuffles`` times both ways (:func:`split_estimates`).
    One row per seed: the std and range across shuffles of the single-split estimate and of the
    k-fold mean, and the number of validation examples of one split (its resolution is one over it).
    """
    rows = []
    for seed, (images, labels) in labelled.items():
        estimates = split_estimates(features_of(images), labels, k, shuffles)
        rows.append({"seed": seed, "single_std": float(estimates.single.std(ddof=1)),
                     "kfold_std": float(estimates.kfold_means.std(ddof=1)),
                     "single_range": float(np.ptp(estimates.single)),
                     "kfold_range": float(np.ptp(estimates.kfold_means)),
                     "validation_examples": int(round(len(labels) / k))})
    return pd.DataFrame(rows)

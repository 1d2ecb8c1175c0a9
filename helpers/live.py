"""Watching a run: training curves that update live, and a diagnosis of what they show.

The articles advise to "monitor performance closely: track training and validation loss". Any
notebook can do it with one hook of the training loop (:func:`helpers.train.train`'s
``on_epoch_end``)::

    live = LiveCurves(title="full fine-tuning")
    history = train(model, data, val, epochs=8, patience=2, on_epoch_end=[live])
    fig = live.finish(history)            # the final figure, early-stopping point marked

* :class:`LiveCurves` redraws loss and accuracy (train and validation) after every epoch in one
  output area of the notebook. Under papermill, in a test or in a terminal nobody watches
  (:func:`helpers.widgets.is_static`), it draws nothing per epoch and :meth:`LiveCurves.finish`
  shows one static figure instead -- the same figure, so executed notebooks keep it.
* :func:`curves_figure` draws such a figure from any history (a :class:`helpers.train.History`,
  its frame or its rows), marking the best validation epoch, or the epoch early stopping kept.
* :func:`diagnose_run` says which pattern a history shows: **divergence** (the loss becomes
  non-finite or explodes), a **learning rate too high** (the training loss jumps above the loss of
  a uniform guess, or goes up and down instead of down), or else what
  :func:`helpers.diagnostics.diagnose` reads in it (over-fitting, under-fitting, healthy).
* :func:`pattern_run` makes a tiny run that shows one pattern on purpose (:data:`RECIPES`), to
  check the diagnosis on runs whose answer is known.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from . import diagnostics
from .diagnostics import Diagnosis
from .train import History

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from .models import SmallResNet
    from .vision import TargetTask

PATTERNS = ("divergence", "learning rate too high", *diagnostics.VERDICTS)


# --- the figure ------------------------------------------------------------------------------------

def _best_epoch(rows: list[dict[str, Any]], monitor: str) -> int | None:
    values = [r.get(monitor) for r in rows]
    if not rows or any(v is None or not math.isfinite(v) for v in values):
        return None
    pick = np.argmax(values) if monitor.endswith("acc") else np.argmin(values)
    return int(rows[int(pick)]["epoch"])


def curves_figure(history: Any, *, best_epoch: int | None = None, stopped_early: bool = False,
                  monitor: str = "val_acc", title: str | None = None, total_epochs: int | None = None):
    """Loss (left) and accuracy (right) per epoch, train and validation, with the best epoch marked.

    ``best_epoch`` defaults to the history's own (a :class:`History` knows it), else the epoch of
    the best ``monitor``; with ``stopped_early`` the mark says early stopping kept that epoch.
    ``total_epochs`` fixes the x axis while a run is still going.
    """
    import matplotlib.pyplot as plt

    if isinstance(history, History):
        best_epoch = best_epoch or history.best_epoch
        stopped_early = stopped_early or history.stopped_early
        monitor = history.monitor
    rows = diagnostics.history_rows(history)
    best_epoch = best_epoch or _best_epoch(rows, monitor)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [r["epoch"] for r in rows]
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, style in (("train", "-o"), ("val", "--s")):
            key = f"{split}_{metric}"
            if rows and key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], style, markersize=4, label=key)
        if best_epoch is not None:
            label = f"early stopping kept epoch {best_epoch}" if stopped_early else f"best epoch {best_epoch}"
            ax.axvline(best_epoch, color="grey", linestyle=":", label=label)
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "loss")
        if total_epochs:
            ax.set_xlim(0.5, total_epochs + 0.5)
        if metric == "acc":
            ax.set_ylim(0, 1.02)
        elif rows and all(r["train_loss"] > 0 and math.isfinite(r["train_loss"]) for r in rows) \
                and max(r["train_loss"] for r in rows) > 20 * min(r["train_loss"] for r in rows):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class LiveCurves:
    """An ``on_epoch_end`` hook that redraws the training curves after every epoch.

    Interactive (a person watches a live kernel): one output area is updated in place each epoch.
    Static (:func:`helpers.widgets.is_static`, or ``static=True``): nothing is drawn until
    :meth:`finish`, which shows the final figure once. ``total_epochs`` fixes the x axis.
    """

    def __init__(self, title: str | None = None, *, total_epochs: int | None = None,
                 monitor: str = "val_acc", static: bool | None = None):
        from .widgets import is_static

        self.title, self.total_epochs, self.monitor = title, total_epochs, monitor
        self.static = is_static() if static is None else static
        self.rows: list[dict[str, Any]] = []
        self.redraws = 0
        self._handle = None

    def __call__(self, epoch: int, model: torch.nn.Module, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        if not self.static:
            self._show(curves_figure(self.rows, monitor=self.monitor, title=self.title,
                                     total_epochs=self.total_epochs))

    def _show(self, fig) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        self.redraws += 1
        plt.close(fig)

    def finish(self, history: History | None = None):
        """Draw the final figure (best or early-stopping epoch marked), show it once, return it."""
        fig = curves_figure(history if history is not None else self.rows, monitor=self.monitor,
                            title=self.title, total_epochs=self.total_epochs)
        self._show(fig)
        return fig


# --- the diagnosis ---------------------------------------------------------------------------------

def diagnose_run(history: Any, *, num_classes: int | None = None, explode_factor: float = 10.0,
                 divergence_factor: float = 1.5, spike_factor: float = 1.5, rise_tolerance: float = 0.05,
                 rising_share: float = 0.3, **thresholds: float) -> Diagnosis:
    """Which pattern does this run show? One of :data:`PATTERNS`, with the reasons and numbers.

    The reference loss is ln(``num_classes``), the loss of a uniform guess (without
    ``num_classes``: the first epoch's loss). Checked in this order, the first that fits wins:

    1. **divergence**: a loss became NaN/inf, or the training loss exploded (an epoch above
       ``explode_factor`` x the reference), or it ends above ``divergence_factor`` x the reference.
    2. **learning rate too high**: the training loss went *above* ``spike_factor`` x a uniform
       guess's loss (the first steps overshot and wrecked what the network knew; it then has to
       relearn from worse than chance), or it rose (by more than ``rise_tolerance``, relative) in at
       least ``rising_share`` of the epoch-to-epoch steps. With a sane rate the loss of a fresh head
       starts near the reference and only falls.
    3. otherwise :func:`helpers.diagnostics.diagnose` (``thresholds`` go to it): over-fitting,
       under-fitting or healthy, read from the train/validation gap and the trend.
    """
    rows = diagnostics.history_rows(history)
    if not rows or "train_loss" not in rows[0]:
        raise ValueError("diagnose_run: expected a history with a 'train_loss' column and at least one epoch")
    loss = np.array([r["train_loss"] for r in rows], dtype=float)
    val_loss = np.array([r.get("val_loss", 0.0) for r in rows], dtype=float)
    numbers: dict[str, float] = {"first_train_loss": float(loss[0]), "final_train_loss": float(loss[-1])}
    bad = np.flatnonzero(~np.isfinite(loss) | ~np.isfinite(val_loss))
    if len(bad):
        epoch = rows[int(bad[0])].get("epoch", int(bad[0]) + 1)
        return Diagnosis("divergence", [f"the loss became non-finite at epoch {epoch}"], numbers)
    reference = math.log(num_classes) if num_classes else float(loss[0])
    what = f"ln({num_classes}) = {reference:.3g}, the loss of a uniform guess" if num_classes \
        else f"the first epoch's loss {reference:.3g}"
    peak = int(np.argmax(loss))
    numbers.update(reference_loss=reference, max_train_loss=float(loss[peak]))
    if loss[peak] > explode_factor * reference or loss[-1] > divergence_factor * reference:
        return Diagnosis("divergence", [
            f"the training loss reached {loss[peak]:.3g} (epoch {rows[peak].get('epoch', peak + 1)}) and ends at "
            f"{loss[-1]:.3g}, against {what}: the run left every solution behind; lower the learning rate "
            f"by 10x or more"], numbers)
    steps = np.diff(loss) / np.maximum(np.abs(loss[:-1]), 1e-12)
    rises = int(np.sum(steps > rise_tolerance))
    share = rises / max(len(steps), 1)
    numbers.update(loss_rises=float(rises), rising_share=share)
    spiked = num_classes is not None and loss[peak] > spike_factor * reference
    if spiked or (len(steps) >= 2 and rises >= 2 and share >= rising_share):
        why = (f"the training loss went up to {loss[peak]:.3g}, above {spike_factor:g} x {what}: the first steps "
               f"overshot and wrecked the pretrained features" if spiked else
               f"the training loss rose in {rises} of {len(steps)} epochs (by > {rise_tolerance:.0%})")
        return Diagnosis("learning rate too high", [why + "; lower the learning rate (3-10x) or warm it up"],
                         numbers)
    found = diagnostics.diagnose(history, **thresholds)
    found.numbers = {**numbers, **found.numbers}
    return found


# --- runs that show each pattern on purpose ---------------------------------------------------------

RECIPES: dict[str, dict[str, Any]] = {
    # a learning rate 300x too small for a few epochs: the model barely moves
    "under-fitting": {"lr_factor": 1 / 300, "epochs": 5, "per_class": 20, "schedule": "constant", "batch_size": 32},
    # one label per class, many epochs at a good rate: the training set is learnt by heart. (With three per
    # class the stride-2 CNN's features reached ~0.9 validation accuracy on digits_sklearn: a gap of 0.1, no demo.)
    "over-fitting": {"lr_factor": 1.0, "epochs": 12, "per_class": 1, "schedule": "constant", "batch_size": 10},
    # a rate 30x too high, held constant: the first steps overshoot, the loss jumps above chance
    "learning rate too high": {"lr_factor": 30.0, "epochs": 8, "per_class": 20, "schedule": "constant",
                               "batch_size": 32},
    # a rate 1000x too high, no gradient clipping: the loss explodes
    "divergence": {"lr_factor": 1000.0, "epochs": 4, "per_class": 20, "schedule": "constant", "batch_size": 32,
                   "grad_clip": None},
}


def subset(data: tuple[torch.Tensor, torch.Tensor], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random examples of ``data`` (all of it if smaller): a cheaper validation set for a
    run evaluated after every epoch."""
    if size >= len(data[1]):
        return data
    index = torch.randperm(len(data[1]), generator=torch.Generator().manual_seed(seed))[:size]
    return data[0][index], data[1][index]


def pattern_run(pattern: str, task: TargetTask, pretrained: SmallResNet, *, lr: float, seed: int,
                bf16: bool = False, device: torch.device | str = "cpu", on_epoch_end=(),
                recipe: Mapping[str, Any] | None = None, val_size: int = 300) -> History:
    """Fine-tune a copy of ``pretrained`` with :data:`RECIPES` [``pattern``] (``lr`` x its factor)
    and return the history: a run made to show ``pattern``, validated after every epoch on
    ``val_size`` examples of the validation split. ``recipe`` overrides the recipe."""
    from .models import new_head
    from .train import train

    if pattern not in RECIPES and recipe is None:
        raise ValueError(f"pattern_run: pattern={pattern!r} is not allowed: expected one of {list(RECIPES)}")
    spec = {**RECIPES.get(pattern, {}), **(recipe or {})}
    data = task.budget(min(spec["per_class"], task.max_budget), seed)
    torch.manual_seed(seed)
    model = new_head(copy.deepcopy(pretrained), task.num_classes, seed=seed)
    return train(model, data, subset(task.val, val_size, seed), epochs=spec["epochs"], lr=lr * spec["lr_factor"],
                 batch_size=spec["batch_size"], schedule=spec["schedule"], seed=seed, bf16=bf16,
                 grad_clip=spec.get("grad_clip", 1.0), device=device, progress=False, on_epoch_end=on_epoch_end)

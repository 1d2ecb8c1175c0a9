"""Multi-task learning: train the old and the new task *together* (notebook 05).

Fine-tuning learns the new task alone and forgets the old one; every mitigation of
:mod:`helpers.forgetting` tries to forget less while still training on the new data only (or on a
small memory of the old). **Multi-task learning** removes the problem instead of mitigating it: one
shared backbone, one head per task, and at every step a batch of each task, the losses mixed by a
ratio::

    loss = CE(target head, target batch) + ratio * CE(source head, source batch)

It is the *upper bound* a continual method is judged against -- and it costs what fine-tuning
usually does not have: **all of the old data** at fine-tuning time (plus twice the compute per
step). Nothing here copies the training loop:

* on the learning-vs-forgetting plane it is the ``multitask`` method of
  :func:`helpers.forgetting.mitigation`, whose options come from :func:`joint_options`: the source
  task's loss is a ``penalty`` of :func:`helpers.train.train` (a :class:`~helpers.forgetting.Replay`
  over the whole source set, through a *trainable* source head);
* in a stream of tasks the reference is one model trained on the union of every task at once
  (:func:`joint_stream_runs`, a joint dataset handed to the same loop); :func:`gap_closed` says how
  much of the way from naive sequential fine-tuning to that reference each method goes;
* :func:`old_data_needed` and :func:`cost_table` put the price next to the accuracy.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .finetuning import epochs_for
from .forgetting import Replay, replay_memory
from .models import SmallResNet, new_head, set_trainable
from .train import default_param_groups, evaluate, train

if TYPE_CHECKING:
    from .vision import TargetTask

Labelled = tuple[torch.Tensor, torch.Tensor]  # images and their labels

#: How many source examples EWC's Fisher is estimated from (``forgetting.fisher_diagonal``'s default).
FISHER_EXAMPLES = 256


def joint_options(model: nn.Module, source_head: nn.Module | None, source: Labelled, *, ratio: float, lr: float,
                  weight_decay: float, batch_size: int, seed: int) -> dict[str, Any]:
    """The keyword arguments of :func:`helpers.train.train` that train ``model`` on its data *and* ``source``.

    Each step adds ``ratio * CE(source_head(features(x_s)), y_s)`` on a fresh batch of
    ``batch_size`` source examples (drawn from all of ``source``, with its own seeded generator).
    ``source_head`` becomes trainable and joins the optimizer beside ``model``'s parameters (two
    heads, one shared backbone); with ``source_head=None`` both tasks share ``model.head`` (a
    stream of tasks with one head: then this is joint training on everything seen so far).
    ``ratio=1`` weighs both tasks alike; ``ratio=0`` is plain fine-tuning.
    """
    if ratio < 0:
        raise ValueError(f"parameter 'multitask_ratio'={ratio!r} is not allowed: expected a number >= 0")
    groups = default_param_groups(model, lr, weight_decay)
    if source_head is not None:
        set_trainable(source_head, True)
        groups += default_param_groups(source_head, lr, weight_decay)
    return {"lr": lr, "param_groups": groups,
            "penalties": [Replay(source, batch_size, weight=ratio, head=source_head, seed=seed)]}


def joint_reference(pretrained: SmallResNet, tasks: Sequence[Labelled], tests: Sequence[Labelled], *,
                    num_classes: int, steps: int, lr: float, batch_size: int, seed: int, weight_decay: float = 1e-4,
                    bf16: bool = False, device: torch.device | str = "cpu", **_: Any) -> np.ndarray:
    """Accuracy on each of ``tests`` of one model trained on *all* ``tasks`` at once.

    A copy of ``pretrained`` with a new ``num_classes`` head is trained on the union of the tasks
    for ``steps * len(tasks)`` steps -- the compute the sequential stream spends -- with the same
    loop and settings. Returns one accuracy per test set: the row the accuracy matrix's last row
    is compared with (other keyword arguments, e.g. mitigation strengths, are ignored).
    """
    model = new_head(copy.deepcopy(pretrained), num_classes, seed=seed).to(device)
    union = tuple(torch.cat(parts) for parts in zip(*tasks))
    epochs, batch = epochs_for(len(union[0]), batch_size, steps * len(tasks))
    train(model, union, epochs=epochs, batch_size=batch, lr=lr, seed=seed, bf16=bf16, device=device,
          weight_decay=weight_decay, progress=False)
    return np.array([evaluate(model, test, bf16=bf16)["acc"] for test in tests])


def joint_stream_runs(pretrained: SmallResNet | Mapping[int, Any], task: TargetTask, *, seeds: Sequence[int],
                      budget: int, groups: list[list[int]], steps: int, **options: Any) -> pd.DataFrame:
    """The stream's reference, one row per seed: :func:`joint_reference` on the stream's tasks.

    The tasks are cut exactly as :func:`helpers.continual.stream_runs` cuts them (same budget,
    seed, ``groups`` and pretrained model: one, or one per seed); columns ``acc_task_j`` (one per task) and ``avg_acc``, their mean -- the
    same average the stream's ``avg_acc`` takes over the last row of ``R``.
    """
    from .continual import _model, class_split_tasks

    tests = class_split_tasks(task.test, groups)
    rows = []
    for seed in seeds:
        accs = joint_reference(_model(pretrained, seed), class_split_tasks(task.budget(budget, seed), groups), tests,
                               steps=steps, seed=seed, **options)
        rows.append({"seed": seed, **{f"acc_task_{j}": a for j, a in enumerate(accs)}, "avg_acc": float(accs.mean())})
    return pd.DataFrame(rows)


def gap_closed(stream_table: pd.DataFrame, joint_avg_acc: float) -> pd.Series:
    """For each method of a stream table: the share of the way from ``naive`` to joint training it goes.

    ``(avg_acc - naive's avg_acc) / (joint avg_acc - naive's avg_acc)``: 0 is no better than
    naive sequential fine-tuning, 1 matches training on every task at once (the upper bound).
    ``stream_table`` is :func:`helpers.continual.stream_runs`'s (with ``avg_acc_mean``, a ``naive``
    row); the result is NaN when joint training is no better than naive.
    """
    if "naive" not in stream_table.index:
        raise ValueError("gap_closed needs the 'naive' row of the stream table")
    naive = stream_table.loc["naive", "avg_acc_mean"]
    gap = joint_avg_acc - naive
    if gap <= 0:
        return pd.Series(np.nan, index=stream_table.index, name="gap_closed")
    return ((stream_table["avg_acc_mean"] - naive) / gap).rename("gap_closed")


def old_data_needed(method: str, source_size: int, replay_size: int) -> int:
    """How many *old-task* examples ``method`` needs at fine-tuning time (0: none, the usual case).

    EWC needs a few to estimate its Fisher (then only the Fisher), replay keeps a small memory
    (``replay_size``), multi-task learning needs all ``source_size`` of them; the others need none
    (LwF's targets come from the *new* images).
    """
    if method == "multitask":
        return source_size
    if method == "replay":
        return replay_size
    if method == "ewc":
        return min(FISHER_EXAMPLES, source_size)
    return 0


def cost_table(plane: pd.DataFrame, source: Labelled, replay_fraction: float, seed: int = 0) -> pd.DataFrame:
    """What each method of the plane costs: old data needed, and fine-tuning time against ``naive``.

    ``plane`` is :func:`helpers.continual.plane_table`'s (``seconds_mean``, ``target_acc_mean``,
    ``source_acc_mean``); ``source`` the old task's training set and ``replay_fraction`` the
    replay memory's share of it. Columns: ``old examples needed`` (:func:`old_data_needed`),
    ``old data share`` (of the source set), ``seconds`` and ``x naive time``.
    """
    size = len(source[0])
    replay_size = len(replay_memory(source, replay_fraction, seed)[0])
    rows = {m: {"old examples needed": old_data_needed(m, size, replay_size)} for m in plane.index}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["old data share"] = table["old examples needed"] / size
    table["seconds"] = plane["seconds_mean"]
    if "naive" in plane.index:
        table["x naive time"] = plane["seconds_mean"] / plane.loc["naive", "seconds_mean"]
    table["target_acc"] = plane["target_acc_mean"]
    table["source_acc"] = plane["source_acc_mean"]
    table.index.name = "method"
    return table


def keeps_and_learns(plane: pd.DataFrame, source_before: float | None = None) -> Mapping[str, float]:
    """The two numbers the multi-task paragraph reads from the plane: the share of the source accuracy
    that ``multitask`` keeps (``1 - forgotten``, each run against its own pretraining, or against
    ``source_before`` when given), and its target accuracy minus naive fine-tuning's (negative: it
    learns less)."""
    kept = (plane.loc["multitask", "source_acc_mean"] / source_before if source_before is not None
            else 1 - plane.loc["multitask", "forgotten"])
    return {"kept": float(kept),
            "target_vs_naive": float(plane.loc["multitask", "target_acc_mean"]
                                     - plane.loc["naive", "target_acc_mean"])}

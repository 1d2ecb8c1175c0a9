"""Compute to reach an accuracy: what pretraining saves, and when it pays for itself.

He et al. (2019, *Rethinking ImageNet Pre-training*) asked the question the articles skip: not
"which method ends higher after N steps?" but "how much compute does each need to *reach* a given
accuracy?" A method trained from scratch on a schedule long enough to converge is then a fair
baseline: pretraining mostly *speeds up* convergence, and its own cost is paid once, so it pays
off only over enough downstream tasks. This module turns learning curves into those numbers:

* :func:`checkpoint_epochs` -- the epochs at which a run is evaluated (geometric: each about
  ``2**(1/per_doubling)`` times the previous, so the cost of watching stays small);
* :func:`curve_frame` -- the learning curves recorded by :func:`helpers.vision.finetune_grid`
  (``curve_budget=``) as one row per (method, seed, checkpoint): steps, images, FLOPs, seconds,
  validation accuracy;
* :func:`first_reaching` -- the first checkpoint of one curve at or above a target accuracy;
* :func:`to_target` -- per method and seed, the compute each needs to reach a target defined from
  the measured scratch curves (a fraction of the accuracy converged scratch ends at);
* :func:`tasks_to_amortise` -- how many downstream tasks make pretraining's one-off cost cheaper
  than training each from scratch;
* :func:`compute_to_accuracy` -- the table notebook 03 records (and notebook 11 reads): one row
  per (method, target).

FLOPs are training FLOPs: 3 x the forward FLOPs of one image x images through the trained part
(backward costs about twice the forward), as everywhere in the workbook.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd

CURVE_COLUMNS = ("step", "images", "flops", "seconds", "val_acc")
TABLE_COLUMNS = ("method", "target_fraction", "target_acc", "reached", "seeds_reached", "steps_to_target",
                 "flops_to_target", "seconds_to_target", "pretraining_flops", "flops_with_pretraining",
                 "flops_vs_scratch", "tasks_to_amortise")


def checkpoint_epochs(total: int, per_doubling: int = 2) -> list[int]:
    """Epochs 1..``total`` at which to evaluate, about ``per_doubling`` per doubling, always ``total``.

    >>> checkpoint_epochs(20)
    [1, 2, 3, 4, 6, 8, 11, 16, 20]

    A target is then located within a factor ``2**(1/per_doubling)`` of compute, which is what a
    log-scale comparison needs, at a fraction of the cost of evaluating after every epoch.
    """
    if total < 1 or per_doubling < 1:
        raise ValueError(f"checkpoint_epochs: total={total!r} and per_doubling={per_doubling!r} must be >= 1")
    epochs, k = set(), 0
    while (epoch := round(2 ** (k / per_doubling))) < total:
        epochs.add(epoch)
        k += 1
    return sorted(epochs | {total})


def curve_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The learning curves in ``runs`` (:func:`helpers.vision.finetune_grid` rows with a ``curve``
    column) as one row per (method, budget, seed, checkpoint), with :data:`CURVE_COLUMNS`."""
    import pandas as pd

    if "curve" not in runs:
        raise ValueError("curve_frame: these runs recorded no learning curve (finetune_grid(..., curve_budget=...))")
    rows = [{"method": run.method, "budget": run.budget, "seed": run.seed, **point}
            for run in runs.itertuples() if isinstance(run.curve, list) for point in run.curve]
    return pd.DataFrame(rows, columns=["method", "budget", "seed", *CURVE_COLUMNS])


def first_reaching(curve: pd.DataFrame, target: float) -> pd.Series | None:
    """The first row of one run's ``curve`` (ordered by step) whose ``val_acc`` reaches ``target``;
    ``None`` if it never does."""
    reached = curve[curve.val_acc >= target]
    return None if reached.empty else reached.sort_values("step").iloc[0]


def tasks_to_amortise(pretraining_flops: float, finetune_flops: float, scratch_flops: float) -> float:
    """The number of downstream tasks ``n`` from which pretraining once plus ``n`` fine-tunings cost
    fewer FLOPs than ``n`` trainings from scratch: ``pretraining / (scratch - finetune)``, rounded up.

    ``inf`` when fine-tuning needs at least as much compute as scratch (it never pays off)."""
    saved = scratch_flops - finetune_flops
    if saved <= 0:
        return math.inf
    return float(math.ceil(pretraining_flops / saved))


def to_target(curves: pd.DataFrame, fraction: float, pretraining_flops: Mapping[int, float],
              reference: str = "scratch") -> pd.DataFrame:
    """Per method and seed: the compute to reach ``fraction`` of the accuracy ``reference`` ends at.

    ``curves`` is :func:`curve_frame` of one budget. For each seed the target is ``fraction`` x the
    final validation accuracy of that seed's ``reference`` run (so the reference reaches it by
    construction; the question is when, and whether the others do). ``pretraining_flops`` maps each
    seed to the FLOPs of the pretraining its fine-tuning started from (0 for scratch). One row per
    (method, seed): target_acc, reached, step, flops, seconds (NaN where not reached),
    pretraining_flops, flops_with_pretraining.
    """
    import pandas as pd

    if not 0 < fraction <= 1:
        raise ValueError(f"to_target: fraction={fraction!r} is not allowed: expected a number in (0, 1]")
    if reference not in set(curves.method):
        raise ValueError(f"to_target: the curves hold no {reference!r} run to define the target")
    rows = []
    for (method, seed), curve in curves.groupby(["method", "seed"], sort=False):
        ref = curves[(curves.method == reference) & (curves.seed == seed)].sort_values("step")
        target = fraction * float(ref.val_acc.iloc[-1])
        hit = first_reaching(curve, target)
        pre = 0.0 if method == reference else float(pretraining_flops[seed])
        row = {"method": method, "seed": seed, "target_fraction": fraction, "target_acc": target,
               "reached": hit is not None, "pretraining_flops": pre}
        for column in ("step", "images", "flops", "seconds"):
            row[column] = math.nan if hit is None else float(hit[column])
        row["flops_with_pretraining"] = row["flops"] + pre
        rows.append(row)
    return pd.DataFrame(rows)


def compute_to_accuracy(curves: pd.DataFrame, fractions: Sequence[float], pretraining_flops: Mapping[int, float],
                        reference: str = "scratch") -> pd.DataFrame:
    """The table of He et al.'s question, one row per (method, target fraction), means over seeds.

    Columns (:data:`TABLE_COLUMNS`): ``target_acc`` (mean over seeds), ``reached`` (every seed
    reached it), ``seeds_reached``, ``steps_to_target``/``flops_to_target``/``seconds_to_target``
    (fine-tuning or training only, means over the seeds that reached it), ``pretraining_flops``,
    ``flops_with_pretraining``, ``flops_vs_scratch`` (``flops_to_target`` over the reference's) and
    ``tasks_to_amortise`` (:func:`tasks_to_amortise`; NaN for the reference itself).
    """
    import pandas as pd

    rows = []
    for fraction in fractions:
        per_seed = to_target(curves, fraction, pretraining_flops, reference)
        ref_flops = per_seed[per_seed.method == reference].flops.mean()
        for method, part in per_seed.groupby("method", sort=False):
            done = part[part.reached]
            flops = done.flops.mean() if len(done) else math.nan
            pre = part.pretraining_flops.mean()
            amortise = (math.nan if method == reference or not len(done)
                        else tasks_to_amortise(pre, flops, ref_flops))
            rows.append({"method": method, "target_fraction": fraction, "target_acc": part.target_acc.mean(),
                         "reached": bool(part.reached.all()), "seeds_reached": int(part.reached.sum()),
                         "steps_to_target": done.step.mean() if len(done) else math.nan,
                         "flops_to_target": flops,
                         "seconds_to_target": done.seconds.mean() if len(done) else math.nan,
                         "pretraining_flops": pre, "flops_with_pretraining": flops + pre,
                         "flops_vs_scratch": flops / ref_flops, "tasks_to_amortise": amortise})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def curve_figure(curves: pd.DataFrame, targets: Mapping[str, float] | None = None, title: str = "") -> Any:
    """Validation accuracy against training FLOPs (log x), one line per method (mean over seeds at
    each checkpoint), with horizontal lines at the ``targets`` ({label: accuracy})."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for method, part in curves.groupby("method", sort=False):
        mean = part.groupby("step")[["flops", "val_acc"]].mean()
        ax.plot(mean.flops, mean.val_acc, marker="o", markersize=3, label=method)
    for label, accuracy in (targets or {}).items():
        ax.axhline(accuracy, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(label, (ax.get_xlim()[0], accuracy), fontsize=7, color="gray", va="bottom")
    ax.set(xscale="log", xlabel="training FLOPs (fine-tuning only)", ylabel="validation accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def equal_compute_steps(total_flops: float, forward_flops: float, batch_size: int, n_examples: int) -> int:
    """Steps over ``n_examples`` labelled images in batches of ``batch_size`` that cost about
    ``total_flops`` training FLOPs (3 x forward per image): the schedule of a scratch run given as
    much compute as pretraining and fine-tuning together.

    Whole epochs (what :func:`helpers.finetuning.epochs_for` makes of a step count): an epoch of
    ``n_examples`` images takes ``ceil(n_examples / batch_size)`` steps, its last batch smaller."""
    if forward_flops <= 0 or batch_size < 1 or n_examples < 1:
        raise ValueError(f"equal_compute_steps: forward_flops={forward_flops!r}, batch_size={batch_size!r} and "
                         f"n_examples={n_examples!r} must be positive")
    epochs = max(1, round(total_flops / (3 * forward_flops * n_examples)))
    return epochs * math.ceil(n_examples / min(batch_size, n_examples))

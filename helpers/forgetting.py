"""Forgetting, and the mitigations that limit it (notebook 05).

Fine-tuning changes the weights the *source* task (pretraining, or the earlier tasks of a stream)
relied on. Each mitigation below is one option of :func:`helpers.train.train`, never a copy of it;
the allowed names are the ``forgetting_methods`` (and ``stream_methods``) knob's choices:

=================  ===============================================================================
``naive``          full fine-tuning at ``lr`` (the baseline that forgets)
``naive_high_lr``  the same at ``lr * HIGH_LR_FACTOR``: forgetting made fast
``lower_lr``       the same at ``lr / LOWER_LR_FACTOR``: small steps stay near the start
``freeze_lower``   only the head and the last stage train (:func:`freeze_lower`)
``l2sp``           ``penalties=[L2SP(...)]``: pull every weight back toward its pretrained value
``ewc``            ``penalties=[EWC(...)]``: the same pull, weighted by how much the source task
                   cares about each weight (the diagonal Fisher information on source data)
``replay``         ``penalties=[Replay(...)]``: rehearse a small memory of source examples
``lwf``            ``loss_fn=LwF(...)``: Learning without Forgetting, distil the old head's
                   answers on the *new* images (no source data needed)
=================  ===============================================================================

:func:`mitigation` turns a method name into those options; :func:`finetune_remembering` fine-tunes
with one and keeps the old head to score the source task; :func:`learn_sequence` runs a stream of
tasks (:func:`class_split_tasks`) and returns its accuracy matrix.

Notebook 05's experiments are here too, so the notebook only calls them: the learning-vs-forgetting
plane (:func:`plane_runs`, :func:`plane_table`, the learning-rate frontier :func:`lr_frontier`), the
old head against a re-fitted probe (:func:`old_head_vs_probe`) and the stream of tasks
(:func:`stream_runs`, :func:`accuracy_matrices_figure`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import check
from .finetuning import HIGH_LR_FACTOR, epochs_for, units_top_down
from .models import SmallResNet, new_head, set_trainable
from .train import Data, History, default_param_groups, train

if TYPE_CHECKING:
    from .vision import TargetTask

Labelled = tuple[torch.Tensor, torch.Tensor]  # images and their labels

LOWER_LR_FACTOR = 3.0
LWF_TEMPERATURE = 2.0


def with_head(model: SmallResNet, head: nn.Module) -> nn.Module:
    """``model``'s backbone (shared, not copied) under another head: how the *old* task is scored."""
    return nn.Sequential(model.backbone, head)


def frontier_margin(target: float, source: float, baselines: list[tuple[float, float]]) -> float:
    """How far a point (target accuracy, source accuracy) sits *above* a set of baseline points.

    The baselines' frontier at ``target`` is the best source accuracy any baseline keeps while
    reaching at least that target accuracy (if none does, the baseline with the best target
    accuracy). A positive margin means: no baseline (e.g. plain fine-tuning at any learning rate
    tried) is as good on both axes.
    """
    if not baselines:
        raise ValueError("frontier_margin needs at least one baseline point")
    reaching = [s for t, s in baselines if t >= target]
    best = max(reaching) if reaching else max(baselines)[1]
    return source - best


def freeze_lower(model: SmallResNet, trainable_units: int = 2) -> SmallResNet:
    """Freeze all but the top ``trainable_units`` of :func:`units_top_down` (head, last stage, ...).

    Frozen layers cannot forget; their BatchNorm statistics stay put too (see ``train_mode``).
    """
    set_trainable(model, False)
    set_trainable([m for unit in units_top_down(model)[:trainable_units] for m in unit], True)
    return model


class L2SP:
    """A penalty ``strength/2 * sum_i w_i (theta_i - theta*_i)^2`` toward reference weights theta*.

    L2-SP (Li et al. 2018) uses ``w_i = 1``: plain weight decay, but toward the *pretrained* weights
    instead of toward zero. Only parameters whose name and shape exist in ``reference`` are pulled
    (so a new head of another size is free); names starting with one of ``skip`` are left out.
    """

    def __init__(self, reference: nn.Module, strength: float, skip: tuple[str, ...] = ("head.",),
                 importance: dict[str, torch.Tensor] | None = None):
        self.strength = strength
        self.anchor = {name: p.detach().clone() for name, p in reference.named_parameters()
                       if not name.startswith(skip)}
        self.importance = importance

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = None
        for name, param in model.named_parameters():
            anchor = self.anchor.get(name)
            if anchor is None or anchor.shape != param.shape or not param.requires_grad:
                continue
            if anchor.device != param.device:
                anchor = self.anchor[name] = anchor.to(param.device)
            squared = (param - anchor).pow(2)
            if self.importance is not None:
                weight = self.importance[name]
                if weight.device != param.device:
                    weight = self.importance[name] = weight.to(param.device)
                squared = weight * squared
            total = squared.sum() if total is None else total + squared.sum()
        if total is None:
            return torch.zeros((), device=next(model.parameters()).device)
        return 0.5 * self.strength * total


def fisher_diagonal(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], *, examples: int = 256,
                    chunk: int = 64, seed: int = 0, sampled_labels: bool = True) -> dict[str, torch.Tensor]:
    """The diagonal of the Fisher information of ``model`` on ``data``: how much each weight matters.

    ``F_i = E_x E_{y ~ p(y|x)} [ (d log p(y|x) / d theta_i)^2 ]``, estimated from ``examples``
    inputs with *per-example* gradients (``torch.func``: the square of a batch-mean gradient would
    be a different, smaller number). Labels are drawn from the model's own prediction
    (``sampled_labels``, the Fisher EWC uses) or taken from ``data`` (the "empirical" Fisher).
    BatchNorm uses its running statistics (eval mode). ``model`` must score the *source* task
    (backbone + old head). Returns one tensor per parameter name, on the model's device.
    """
    from torch.func import functional_call, grad, vmap

    images, labels = data
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=gen)[:examples]

    def nll(weights, x, y):
        logits = functional_call(model, (weights, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits.float(), y.unsqueeze(0))

    per_example_grads = vmap(grad(nll), in_dims=(None, 0, 0))
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    for index in chosen.split(chunk):
        x = images[index].to(device)
        if sampled_labels:
            with torch.no_grad():
                probs = model(x).float().softmax(-1).cpu()
            y = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
        else:
            y = labels[index].to(device)
        for name, g in per_example_grads(params, x, y).items():
            fisher[name] += g.pow(2).sum(0)
    model.train(was_training)
    return {name: f / len(chosen) for name, f in fisher.items()}


class EWC(L2SP):
    """Elastic Weight Consolidation (Kirkpatrick et al. 2017): L2-SP weighted by the Fisher.

    ``strength/2 * sum_i F_i (theta_i - theta*_i)^2``: weights the source task relies on (large
    ``F_i``) are held firmly, the others are free to move. The Fisher is rescaled to mean 1 over
    the pulled weights, so ``strength`` means the same *total* pull as :class:`L2SP`'s -- EWC only
    redistributes it by importance.
    """

    def __init__(self, reference: nn.Module, fisher: dict[str, torch.Tensor], strength: float,
                 skip: tuple[str, ...] = ("head.",)):
        super().__init__(reference, strength, skip)
        kept = {name: fisher[name].detach() for name in self.anchor}
        mean = torch.cat([f.flatten() for f in kept.values()]).mean().clamp(min=1e-12)
        self.importance = {name: f / mean for name, f in kept.items()}


def replay_memory(data: tuple[torch.Tensor, torch.Tensor], fraction: float,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small, class-balanced memory: about ``fraction`` of every class of ``data`` (at least 1 each)."""
    from .data import label_budget

    if not 0 < fraction <= 1:
        raise ValueError(f"parameter 'replay_fraction'={fraction!r} is not allowed: expected a number in (0, 1]")
    images, labels = data
    counts = torch.bincount(labels)
    per_class = max(1, round(fraction * int(counts[counts > 0].min())))
    index = label_budget(labels, per_class, seed)
    return images[index], labels[index]


class Replay:
    """Rehearsal as a penalty: each step also trains on a batch drawn from a small ``memory``.

    Adds ``weight * cross_entropy(head(features(x_mem)), y_mem)`` to the loss, with a fresh memory
    batch every step (its own seeded generator: the training's random stream is untouched). With
    ``head=None`` the memory is scored by the model itself (a shared head, as in a stream of
    tasks); with the *old* head it keeps the backbone useful for the source task.
    """

    def __init__(self, memory: tuple[torch.Tensor, torch.Tensor], batch_size: int, weight: float = 1.0,
                 head: nn.Module | None = None, seed: int = 0):
        if len(memory[0]) == 0:
            raise ValueError("Replay needs a non-empty memory")
        self.memory, self.batch_size, self.weight, self.head = memory, batch_size, weight, head
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        index = torch.randint(len(self.memory[0]), (min(self.batch_size, len(self.memory[0])),),
                              generator=self.generator)
        x, y = self.memory[0][index].to(device), self.memory[1][index].to(device)
        logits = model(x) if self.head is None else self.head(model.features(x))
        return self.weight * F.cross_entropy(logits.float(), y)


class LwF:
    """Learning without Forgetting (Li & Hoiem 2016) as a ``loss_fn`` of :func:`helpers.train.train`.

    Before fine-tuning, the old model's answers on the *new* images become targets for the old
    head: ``loss = CE(new head) + strength * T^2 * KL(softmax(teacher / T) || softmax(old head / T))``.
    No source data is needed. ``teacher`` is a frozen copy of the model before fine-tuning (its
    output is what the old head said then); ``old_head`` maps the *current* features to the old
    task (kept frozen here, so the source task is later scored with exactly the pretrained head).
    With ``old_head=None`` the model's own head is distilled (a head shared by all tasks).
    """

    def __init__(self, teacher: nn.Module, old_head: nn.Module | None, strength: float = 1.0,
                 temperature: float = LWF_TEMPERATURE):
        self.teacher = copy.deepcopy(teacher).eval()
        set_trainable(self.teacher, False)
        self.old_head, self.strength, self.temperature = old_head, strength, temperature

    def __call__(self, model: nn.Module, batch: Data, task: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs, labels = batch
        features = model.features(inputs)
        logits = model.head(features)
        old = logits if self.old_head is None else self.old_head(features)
        with torch.no_grad():
            target = self.teacher(inputs).float()
        t = self.temperature
        distill = F.kl_div(F.log_softmax(old.float() / t, -1), F.softmax(target / t, -1),
                           reduction="batchmean") * t * t
        loss = F.cross_entropy(logits.float(), labels) + self.strength * distill
        return loss, (logits.argmax(-1) == labels).sum(), labels.numel()


def mitigation(method: str, model: SmallResNet, reference: SmallResNet, *, lr: float, weight_decay: float,
               batch_size: int, seed: int, source: tuple[torch.Tensor, torch.Tensor] | None = None,
               old_head: nn.Module | None = None, l2sp_strength: float = 1.0, ewc_strength: float = 1.0,
               lwf_strength: float = 1.0, replay_fraction: float = 0.02,
               fisher: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`helpers.train.train` that turn fine-tuning into ``method``.

    Usage: ``train(model, data, epochs=..., **mitigation("ewc", model, reference, ...))``.

    * ``model`` is about to be fine-tuned (``freeze_lower`` freezes part of it here);
    * ``reference`` is the model before fine-tuning: the weights to stay close to, and (with its
      own head) the scorer of the old task, for EWC's Fisher and LwF's targets;
    * ``old_head``: the old task's head, applied to ``model``'s features -- a separate, frozen head
      (forgetting of pretraining), or ``None`` when old and new tasks share ``model.head`` (a stream
      of tasks; then the head is pulled toward its old weights too);
    * ``source``: old-task training data (EWC estimates its Fisher there unless ``fisher`` is
      given; replay draws ``replay_fraction`` of it as its memory).
    """
    check("forgetting_methods", [method])
    skip = ("head.",) if old_head is not None else ()
    options: dict[str, Any] = {"lr": lr}
    if method == "naive_high_lr":
        options["lr"] = lr * HIGH_LR_FACTOR
    elif method == "lower_lr":
        options["lr"] = lr / LOWER_LR_FACTOR
    elif method == "freeze_lower":
        freeze_lower(model)
    elif method == "l2sp":
        options["penalties"] = [L2SP(reference, l2sp_strength, skip=skip)]
    elif method == "ewc":
        if fisher is None:
            if source is None:
                raise ValueError("method 'ewc' needs old-task data to estimate the Fisher (or a fisher)")
            fisher = fisher_diagonal(reference, source, seed=seed)
        options["penalties"] = [EWC(reference, fisher, ewc_strength, skip=skip)]
    elif method == "replay":
        if source is None:
            raise ValueError("method 'replay' needs old-task data to draw its memory from")
        memory = replay_memory(source, replay_fraction, seed)
        options["penalties"] = [Replay(memory, batch_size, head=old_head, seed=seed)]
    elif method == "lwf":
        options["loss_fn"] = LwF(reference, old_head, lwf_strength)
    options["param_groups"] = default_param_groups(model, options["lr"], weight_decay)
    return options


def finetune_remembering(method: str, pretrained: SmallResNet, data: tuple[torch.Tensor, torch.Tensor], *,
                         source: tuple[torch.Tensor, torch.Tensor] | None, num_classes: int, steps: int,
                         lr: float, batch_size: int, seed: int, weight_decay: float = 1e-4,
                         bf16: bool = False, device: torch.device | str = "cpu",
                         **strengths: Any) -> tuple[SmallResNet, nn.Module, History]:
    """Fine-tune a copy of ``pretrained`` on ``data`` with a new head, by ``method``.

    Returns the fine-tuned model, the *old* head (a frozen copy of ``pretrained.head``: score the
    pretraining task with ``with_head(model, old_head)``) and the history. ``strengths`` are
    passed to :func:`mitigation` (``l2sp_strength``, ``ewc_strength``, ``lwf_strength``,
    ``replay_fraction``, ``fisher``).
    """
    old_head = copy.deepcopy(pretrained.head).to(device)
    set_trainable(old_head, False)
    model = new_head(copy.deepcopy(pretrained), num_classes, seed=seed).to(device)
    epochs, batch = epochs_for(len(data[0]), batch_size, steps)
    options = mitigation(method, model, pretrained, lr=lr, weight_decay=weight_decay, batch_size=batch,
                         seed=seed, source=source, old_head=old_head, **strengths)
    history = train(model, data, epochs=epochs, batch_size=batch, seed=seed, bf16=bf16, device=device,
                    weight_decay=weight_decay, progress=False, **options)
    set_trainable(model, True)
    return model, old_head, history


def class_split_tasks(data: tuple[torch.Tensor, torch.Tensor],
                      groups: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut a labelled set into tasks by class: ``groups=[[0, 1, 2], [3, 4, 5], ...]``.

    Labels keep their original values (one head shared by all tasks: *class-incremental*).
    """
    images, labels = data
    tasks = []
    for group in groups:
        chosen = torch.isin(labels, torch.tensor(group))
        if not chosen.any():
            raise ValueError(f"task classes {group} have no examples")
        tasks.append((images[chosen], labels[chosen]))
    return tasks


def learn_sequence(method: str, pretrained: SmallResNet, tasks: list[tuple[torch.Tensor, torch.Tensor]],
                   tests: list[tuple[torch.Tensor, torch.Tensor]], *, num_classes: int, steps: int, lr: float,
                   batch_size: int, seed: int, weight_decay: float = 1e-4, bf16: bool = False,
                   device: torch.device | str = "cpu", **strengths: Any):
    """Learn ``tasks`` one after another with one shared head; return the accuracy matrix ``R``.

    ``R[i][j]`` = accuracy on ``tests[j]`` after training on task ``i`` (prediction over all
    ``num_classes``: the model is not told which task an image belongs to). The first task is
    plain fine-tuning (nothing to forget yet); from the second on, ``method`` protects the tasks
    before it: the reference is the model after the previous task, the old-task data the
    previous tasks' training sets (replay keeps ``replay_fraction`` of each).
    """
    from .train import evaluate

    check("stream_methods", [method])
    model = new_head(copy.deepcopy(pretrained), num_classes, seed=seed).to(device)
    R = np.zeros((len(tasks), len(tests)))
    for i, data in enumerate(tasks):
        epochs, batch = epochs_for(len(data[0]), batch_size, steps)
        reference = copy.deepcopy(model).eval()
        seen = None if i == 0 else tuple(torch.cat(parts) for parts in zip(*tasks[:i]))
        options = mitigation("naive" if i == 0 else method, model, reference, lr=lr, weight_decay=weight_decay,
                             batch_size=batch, seed=seed + i, source=seen, old_head=None, **strengths)
        train(model, data, epochs=epochs, batch_size=batch, seed=seed + i, bf16=bf16, device=device,
              weight_decay=weight_decay, progress=False, **options)
        for j, test in enumerate(tests):
            R[i, j] = evaluate(model, test, bf16=bf16)["acc"]
    return R


# --- notebook 05's experiments: the learning-vs-forgetting plane and the stream of tasks ------------

#: Plain fine-tuning at the three learning rates tried: the baselines of the learning-rate frontier.
NAIVE_LRS: tuple[str, ...] = ("naive", "naive_high_lr", "lower_lr")


def run_options(params: Mapping[str, Any], num_classes: int, device: torch.device | str) -> dict[str, Any]:
    """The keyword arguments every fine-tuning run of notebook 05 shares, read from the profile
    ``params``: the optimiser's settings and every mitigation's strength (each method takes its own)."""
    return dict(num_classes=num_classes, lr=params["lr"], batch_size=params["finetune_batch_size"],
                weight_decay=params["weight_decay"], bf16=params["bf16"], device=device,
                l2sp_strength=params["l2sp_strength"], ewc_strength=params["ewc_strength"],
                lwf_strength=params["lwf_strength"], replay_fraction=params["replay_fraction"])


def pretraining_glyphs(params: Mapping[str, Any]) -> tuple[Labelled, Labelled]:
    """The generated glyphs the CNN was pretrained on, split exactly as pretraining split them.

    Returns ``(seen, held_out)``: the 90% pretraining trained on (EWC's Fisher and replay's memory
    come from there) and the 10% it never trained on, which measure what it still knows.
    """
    from . import data

    images, labels = data.glyph_dataset(params["glyph_classes"], params["glyphs_per_class"], seed=params["seed"])
    seen, held_out = data.stratified_split(labels, (0.9, 0.1), seed=params["seed"])
    return (images[seen], labels[seen]), (images[held_out], labels[held_out])


def plane_runs(methods: Sequence[str], pretrained: SmallResNet, task: TargetTask, *, seeds: Sequence[int],
               budget: int, source: Labelled, source_test: Labelled, steps: int,
               keep: Sequence[str] = ("naive", "naive_high_lr"), progress: bool = True,
               **options: Any) -> tuple[pd.DataFrame, dict[tuple[str, int], SmallResNet]]:
    """Every method x seed of the learning-vs-forgetting plane: one fine-tuning run each.

    Each run fine-tunes a copy of ``pretrained`` on ``budget`` labelled examples per class of
    ``task`` (:func:`finetune_remembering`, same ``steps`` for all) and scores it twice: on the new
    task (``target_acc``: its test set, the new head) and on the old one (``source_acc``: the
    held-out ``source_test`` through the fine-tuned backbone and the *old* head). ``options`` go to
    :func:`finetune_remembering` (see :func:`run_options`). Returns one row per run (with its
    ``seconds``) and the fine-tuned models of the methods in ``keep``, by ``(method, seed)``.
    """
    import time

    from tqdm.auto import tqdm

    from .train import evaluate

    bf16 = options.get("bf16", False)
    rows, kept = [], {}
    jobs = [(seed, method) for seed in seeds for method in methods]
    for seed, method in tqdm(jobs, desc="fine-tuning runs", disable=not progress):
        start = time.perf_counter()
        model, old_head, _ = finetune_remembering(method, pretrained, task.budget(budget, seed), source=source,
                                                  steps=steps, seed=seed, **options)
        rows.append({"method": method, "seed": seed, "seconds": time.perf_counter() - start,
                     "target_acc": evaluate(model, task.test, bf16=bf16)["acc"],
                     "source_acc": evaluate(with_head(model, old_head), source_test, bf16=bf16)["acc"]})
        if method in keep:
            kept[(method, seed)] = model
    return pd.DataFrame(rows), kept


def plane_table(runs: pd.DataFrame, source_before: float) -> pd.DataFrame:
    """The learning-vs-forgetting plane: one row per method, mean and std over seeds.

    Next to ``target_acc``, ``source_acc`` and ``seconds`` (:func:`helpers.metrics.mean_std`):

    * ``forgotten`` -- the share of the source accuracy lost, ``1 - source_acc / source_before``;
    * ``target_cost`` -- the target accuracy given up against ``naive`` (if it ran);
    * ``above_lr_frontier`` -- for every method but the :data:`NAIVE_LRS`, how far it sits above
      their frontier (:func:`frontier_margin`): retention no learning rate alone buys (if any ran).
    """
    from .metrics import mean_std

    plane = mean_std(runs, ["method"], ["target_acc", "source_acc", "seconds"])
    plane["forgotten"] = 1 - plane["source_acc_mean"] / source_before
    if "naive" in plane.index:
        plane["target_cost"] = plane.loc["naive", "target_acc_mean"] - plane["target_acc_mean"]
    baselines = _lr_points(plane)
    if baselines:
        plane["above_lr_frontier"] = [frontier_margin(t, s, baselines) if m not in NAIVE_LRS else np.nan
                                      for m, t, s in zip(plane.index, plane.target_acc_mean, plane.source_acc_mean)]
    return plane


def lr_baselines(plane: pd.DataFrame) -> list[str]:
    """The :data:`NAIVE_LRS` methods that ran, in that order: the points the frontier is made of."""
    return [m for m in NAIVE_LRS if m in plane.index]


def _lr_points(plane: pd.DataFrame) -> list[tuple[float, float]]:
    return [(plane.loc[m, "target_acc_mean"], plane.loc[m, "source_acc_mean"]) for m in lr_baselines(plane)]


def lr_frontier(plane: pd.DataFrame, points: int = 201) -> tuple[np.ndarray, list[float]] | None:
    """The learning-rate frontier as a line to draw: at each target accuracy ``x`` in [0, 1], the
    best retention plain fine-tuning reached at any learning rate tried while reaching at least
    ``x`` (a staircase). ``None`` when no :data:`NAIVE_LRS` method ran."""
    baselines = _lr_points(plane)
    if not baselines:
        return None
    xs = np.linspace(0, 1, points)
    return xs, [-frontier_margin(x, 0.0, baselines) for x in xs]


def per_class(data: Labelled, count: int, seed: int) -> Labelled:
    """``count`` examples of every class of ``data`` (fewer if a class has fewer), drawn with ``seed``."""
    from .data import label_budget

    index = label_budget(data[1], min(count, int(torch.bincount(data[1]).min())), seed)
    return data[0][index], data[1][index]


def old_head_vs_probe(pretrained: SmallResNet, models: Mapping[tuple[str, int], SmallResNet], source: Labelled,
                      source_test: Labelled, *, seed: int, train_per_class: int = 10,
                      test_per_class: int = 25) -> pd.DataFrame:
    """Forgotten, or only misaligned? The old head next to a linear probe re-fitted on the same features.

    For ``pretrained`` and each fine-tuned model (``models`` by ``(method, seed)``, from
    :func:`plane_runs`): the accuracy of the old glyph head (``pretrained.head``) on
    ``test_per_class`` held-out glyphs per class, and of a logistic regression fitted on
    ``train_per_class`` seen glyphs per class (:func:`helpers.vision.linear_probe`). If the probe
    reads much more than the old head, the information is still there, only moved. One row per
    model: mean and std over seeds.
    """
    from .metrics import mean_std
    from .train import evaluate
    from .vision import linear_probe

    probe_train, probe_test = per_class(source, train_per_class, seed), per_class(source_test, test_per_class, seed)
    rows = [{"model": "pretrained", "seed": seed, "old head": evaluate(pretrained, probe_test)["acc"],
             "re-fitted probe": linear_probe(pretrained, probe_train, probe_test)}]
    for (method, run_seed), model in models.items():
        rows.append({"model": f"after {method}", "seed": run_seed,
                     "old head": evaluate(with_head(model, copy.deepcopy(pretrained.head)), probe_test)["acc"],
                     "re-fitted probe": linear_probe(model, probe_train, probe_test)})
    return mean_std(pd.DataFrame(rows), ["model"], ["old head", "re-fitted probe"])


def stream_runs(methods: Sequence[str], pretrained: SmallResNet, task: TargetTask, *, seeds: Sequence[int],
                budget: int, groups: list[list[int]], steps: int, progress: bool = True,
                **options: Any) -> tuple[dict[str, list[np.ndarray]], pd.DataFrame]:
    """Every method x seed on the stream of tasks ``groups`` (digit classes of each task, in order).

    For each seed, ``budget`` examples per class of ``task`` are cut into tasks by class
    (:func:`class_split_tasks`) and learnt one after another (:func:`learn_sequence`, ``steps`` per
    task); its test set is cut the same way. Returns each method's accuracy matrices (one per
    seed) and a table, one row per method, of the continual-learning metrics (mean and std over
    seeds): ``avg_acc``, ``bwt``, ``forgetting`` (:mod:`helpers.metrics`) and ``last_task_acc``,
    ``R[-1, -1]``: how well the last task was learnt.
    """
    from tqdm.auto import tqdm

    from . import metrics

    tests = class_split_tasks(task.test, groups)
    matrices, rows = {}, []
    for seed, method in tqdm([(s, m) for s in seeds for m in methods], desc="task streams", disable=not progress):
        stream = class_split_tasks(task.budget(budget, seed), groups)
        R = learn_sequence(method, pretrained, stream, tests, steps=steps, seed=seed, **options)
        matrices.setdefault(method, []).append(R)
        rows.append({"method": method, "seed": seed, "avg_acc": metrics.average_accuracy(R),
                     "bwt": metrics.backward_transfer(R), "forgetting": metrics.average_forgetting(R),
                     "last_task_acc": R[-1, -1]})
    table = metrics.mean_std(pd.DataFrame(rows), ["method"], ["avg_acc", "bwt", "forgetting", "last_task_acc"])
    return matrices, table


def best_mitigation(stream_table: pd.DataFrame) -> str | None:
    """The method of :func:`stream_runs`'s table, ``naive`` aside, with the highest mean average
    accuracy (``None`` if only ``naive`` ran)."""
    mitigations = [m for m in stream_table.index if m != "naive"]
    return stream_table.loc[mitigations, "avg_acc_mean"].idxmax() if mitigations else None


def accuracy_matrices_figure(matrices: Mapping[str, list[np.ndarray]], groups: list[list[int]],
                             shown: Sequence[str | None] | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """Accuracy matrices ``R[i][j]``, averaged over seeds, side by side as heat maps.

    ``matrices`` maps a method to its matrices (one per seed, from :func:`stream_runs`), ``groups``
    names the tasks; ``shown`` picks the methods to draw, in order (those that did not run are left
    out; default: all). Returns the figure and the mean matrices it shows, by method.
    """
    import matplotlib.pyplot as plt

    from .metrics import average_accuracy
    from .plots import heat_map

    methods = [m for m in (matrices if shown is None else shown) if m in matrices]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    names = ["{" + ",".join(map(str, group)) + "}" for group in groups]
    means = {}
    for ax, method in zip(axes[0], methods):
        means[method] = np.mean(matrices[method], axis=0)
        acc = np.mean([average_accuracy(R) for R in matrices[method]])
        heat_map(means[method], names, names, xlabel="tested on task j", ylabel="after training on task i",
                 title=f"{method}: ACC {acc:.2f}", colorbar=False, ax=ax)
    seeds = len(matrices[methods[0]]) if methods else 0
    fig.suptitle(f"accuracy matrix R[i][j], mean of {seeds} seeds")
    return fig, means

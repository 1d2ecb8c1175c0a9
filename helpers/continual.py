"""Measuring forgetting (notebook 05): the learning-vs-forgetting plane and a stream of tasks.

The mitigations themselves are :mod:`helpers.forgetting`; this module runs and scores them:

* **the pretrained models** -- fine-tuning seed *i* starts from CNN pretraining run *i* (mod
  ``pretrain_seeds``, :func:`helpers.config.pretrain_params`) and is scored on *that* run's
  held-out glyphs (:func:`pretrainings`), so the error bars cover pretraining's variance too;
* **the plane** -- fine-tune the pretrained CNN on the target with each method and seed
  (:func:`plane_runs`), score the new task and the *old* task through the old head, average the
  seeds (:func:`plane_table`) and compare each method with plain fine-tuning at three learning
  rates, the learning-rate frontier (:func:`lr_frontier`, :func:`frontier_margin`, per seed
  :func:`frontier_by_seed`); re-fit a probe to tell forgotten features from misaligned ones, with
  a randomly initialised network as the control (:func:`old_head_vs_probe`, :func:`random_like`);
* **a stream of tasks** -- learn disjoint groups of classes one after another with one shared head
  (:func:`class_split_tasks`, :func:`learn_sequence`), which gives the accuracy matrix ``R[i][j]``
  and its continual-learning metrics (:func:`stream_runs`, :func:`accuracy_matrices_figure`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .config import check_knob
from .finetuning import epochs_for
from .forgetting import finetune_remembering, mitigation, with_head
from .models import SmallResNet, new_head
from .train import train

if TYPE_CHECKING:
    from .vision import TargetTask

Labelled = tuple[torch.Tensor, torch.Tensor]  # images and their labels


@dataclass
class Pretraining:
    """One CNN pretraining run as notebook 05 reads it.

    ``model`` was pretrained on generated glyphs with pretraining seed ``seed``; ``seen`` are the
    glyphs it trained on (EWC's Fisher, replay's memory and multi-task training draw from them),
    ``held_out`` the glyphs it never saw, on which it scored ``acc_before`` before any fine-tuning.
    """

    model: SmallResNet
    seen: Labelled
    held_out: Labelled
    acc_before: float
    seed: int
    trained: bool = False


def pretrainings(params: Mapping[str, Any], device: torch.device | str = "cpu",
                 progress: bool = True) -> dict[int, Pretraining]:
    """Fine-tuning seed -> the pretraining run it starts from, for every seed of ``params``.

    Fine-tuning seed number ``i`` (of :func:`helpers.config.seed_list`) starts from the CNN
    pretrained with :func:`helpers.config.pretrain_params` ``(params, i)`` (loaded from the store,
    or trained now) and is scored on that run's own held-out glyphs. Seeds that share a pretraining
    run share one object.
    """
    from .config import pretrain_params, seed_list
    from .train import evaluate
    from .vision import pretrained_cnn, pretraining_glyphs

    runs: dict[int, Pretraining] = {}
    by_seed = {}
    for index, seed in enumerate(seed_list(params)):
        pretrain = pretrain_params(params, index)
        if pretrain["seed"] not in runs:
            model, summary = pretrained_cnn(pretrain, "supervised", device=device, progress=progress)
            seen, held_out = pretraining_glyphs(pretrain)
            runs[pretrain["seed"]] = Pretraining(model, seen, held_out, evaluate(model, held_out, bf16=params["bf16"])["acc"],
                                                 pretrain["seed"], bool(summary["trained"]))
        by_seed[seed] = runs[pretrain["seed"]]
    return by_seed


def pretraining_table(sources: Mapping[int, Pretraining]) -> pd.DataFrame:
    """One row per fine-tuning seed: its pretraining seed, whether that run was trained now, and its
    held-out glyph accuracy before fine-tuning."""
    return pd.DataFrame([{"seed": seed, "pretraining seed": src.seed, "trained now": src.trained,
                          "held-out glyphs": len(src.held_out[1]), "source_acc_before": src.acc_before}
                         for seed, src in sources.items()]).set_index("seed")


def _model(pretrained: SmallResNet | Mapping[int, Any], seed: int) -> SmallResNet:
    """The pretrained model fine-tuning seed ``seed`` starts from: ``pretrained`` itself, or its entry
    for ``seed`` (a model or a :class:`Pretraining`)."""
    if isinstance(pretrained, Mapping):
        chosen = pretrained[seed]
        return chosen.model if isinstance(chosen, Pretraining) else chosen
    return pretrained


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

    check_knob("stream_methods", [method])
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
                lwf_strength=params["lwf_strength"], replay_fraction=params["replay_fraction"],
                multitask_ratio=params["multitask_ratio"])


def plane_runs(methods: Sequence[str], sources: Mapping[int, Pretraining], task: TargetTask, *,
               seeds: Sequence[int], budget: int, steps: int, keep: Sequence[str] = ("naive", "naive_high_lr"),
               progress: bool = True, **options: Any) -> tuple[pd.DataFrame, dict[tuple[str, int], SmallResNet]]:
    """Every method x seed of the learning-vs-forgetting plane: one fine-tuning run each.

    Seed ``s`` fine-tunes a copy of ``sources[s].model`` (its own pretraining run,
    :func:`pretrainings`) on ``budget`` labelled examples per class of ``task``
    (:func:`finetune_remembering`, same ``steps`` for all) and scores it twice: on the new task
    (``target_acc``: its test set, the new head) and on the old one (``source_acc``: that
    pretraining's held-out glyphs through the fine-tuned backbone and the *old* head);
    ``forgotten`` is the share of that run's ``source_before`` lost. ``options`` go to
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
        src = sources[seed]
        start = time.perf_counter()
        model, old_head, _ = finetune_remembering(method, src.model, task.budget(budget, seed), source=src.seen,
                                                  steps=steps, seed=seed, **options)
        source_acc = evaluate(with_head(model, old_head), src.held_out, bf16=bf16)["acc"]
        rows.append({"method": method, "seed": seed, "pretraining_seed": src.seed,
                     "seconds": time.perf_counter() - start,
                     "target_acc": evaluate(model, task.test, bf16=bf16)["acc"], "source_acc": source_acc,
                     "source_before": src.acc_before, "forgotten": 1 - source_acc / src.acc_before})
        if method in keep:
            kept[(method, seed)] = model
    return pd.DataFrame(rows), kept


def plane_table(runs: pd.DataFrame, source_before: float | None = None) -> pd.DataFrame:
    """The learning-vs-forgetting plane: one row per method, mean and std over seeds.

    Next to ``target_acc``, ``source_acc`` and ``seconds`` (:func:`helpers.metrics.mean_std`):

    * ``forgotten`` -- the share of the source accuracy lost, ``1 - source_acc / source_before``,
      averaged over runs (each against its own pretraining's accuracy when ``runs`` has a
      ``forgotten`` column, as :func:`plane_runs` makes; else against ``source_before``);
    * ``target_cost`` -- the target accuracy given up against ``naive`` (if it ran);
    * ``above_lr_frontier`` -- for every method but the :data:`NAIVE_LRS`, how far it sits above
      their frontier (:func:`frontier_margin`), the mean over seeds of :func:`frontier_by_seed`:
      retention no learning rate alone buys (if any ran).
    """
    from .metrics import mean_std

    plane = mean_std(runs, ["method"], ["target_acc", "source_acc", "seconds"])
    if "forgotten" in runs.columns:
        plane["forgotten"] = runs.groupby("method")["forgotten"].mean()
    elif source_before is not None:
        plane["forgotten"] = 1 - plane["source_acc_mean"] / source_before
    if "naive" in plane.index:
        plane["target_cost"] = plane.loc["naive", "target_acc_mean"] - plane["target_acc_mean"]
    if any(m in plane.index for m in NAIVE_LRS):
        margins = frontier_by_seed(runs).groupby("method")["margin"].mean()
        plane["above_lr_frontier"] = [margins.get(m, np.nan) if m not in NAIVE_LRS else np.nan for m in plane.index]
    return plane


def frontier_by_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """Each method's distance above the learning-rate frontier, seed by seed (paired claims read this).

    For every seed and every method of ``runs`` (:func:`plane_runs`) but the :data:`NAIVE_LRS`:
    ``frontier``, the best source accuracy plain fine-tuning reached *in that seed* at any learning
    rate tried while reaching at least the method's target accuracy (:func:`frontier_margin`), and
    ``margin``, the method's source accuracy minus it. Seeds without a naive run are left out.
    """
    rows = []
    for seed, group in runs.groupby("seed", sort=True):
        baselines = [(t, s) for m, t, s in zip(group.method, group.target_acc, group.source_acc) if m in NAIVE_LRS]
        if not baselines:
            continue
        for method, target, source in zip(group.method, group.target_acc, group.source_acc):
            if method not in NAIVE_LRS:
                margin = frontier_margin(target, source, baselines)
                rows.append({"method": method, "seed": seed, "frontier": source - margin, "margin": margin})
    return pd.DataFrame(rows, columns=["method", "seed", "frontier", "margin"])


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


def plane_figure(plane: pd.DataFrame, source_before: float, *, title: str,
                 point: Mapping[str, float] | None = None, point_label: str = "this run") -> Any:
    """The learning-vs-forgetting plane of :func:`plane_table` with its learning-rate frontier (the
    digits-vs-glyphs axes of notebook 05), and optionally one more ``point`` (``target_acc``,
    ``source_acc``: one run of :func:`plane_runs`) drawn as a star -- what the widget adds."""
    from .plots import learning_vs_forgetting

    fig = learning_vs_forgetting(plane, source_before=source_before, frontier=lr_frontier(plane),
                                 baselines=lr_baselines(plane), title=title,
                                 xlabel="target accuracy (digits, new head)",
                                 ylabel="retained source accuracy (glyphs, old head)")
    if point is not None:
        ax = fig.axes[0]
        ax.plot(point["target_acc"], point["source_acc"], marker="*", markersize=16, color="crimson", ls="none",
                label=point_label)
        ax.set_xlim(min(ax.get_xlim()[0], point["target_acc"] - 0.05), 1.0)
        ax.legend(fontsize=7, loc="lower left")
    return fig


def per_class(data: Labelled, count: int, seed: int) -> Labelled:
    """``count`` examples of every class of ``data`` (fewer if a class has fewer), drawn with ``seed``."""
    from .data import label_budget

    index = label_budget(data[1], min(count, int(torch.bincount(data[1]).min())), seed)
    return data[0][index], data[1][index]


def random_like(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture, freshly initialised: every weight random, BatchNorm statistics reset.

    The control of the probe experiment: what a linear probe reads from features that never
    learnt anything (random convolutional features are far from useless).
    """
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh.eval()


#: The control row of :func:`old_head_vs_probe`: a randomly initialised network.
RANDOM_CONTROL = "random init (control)"


def old_head_vs_probe(sources: Mapping[int, Pretraining], models: Mapping[tuple[str, int], SmallResNet], *,
                      train_per_class: int = 10, test_per_class: int = 25) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Forgotten, or only misaligned? The old head next to a linear probe re-fitted on the same features.

    For each fine-tuned model (``models`` by ``(method, seed)``, from :func:`plane_runs`), for the
    model ``sources[seed]`` it started from (``pretrained``), and for the control, a randomly
    initialised copy of that architecture (:data:`RANDOM_CONTROL`, :func:`random_like`): the
    accuracy of the old glyph head (the pretrained model's head) on ``test_per_class`` held-out
    glyphs per class of that pretraining, and of a logistic regression fitted on ``train_per_class``
    seen glyphs per class (:func:`helpers.vision.linear_probe`). If the probe reads much more than
    the old head, *and* much more than from random features, the information is still there, only
    moved. Returns the runs (one row per model and seed) and their table (mean and std over seeds).
    """
    from .metrics import mean_std
    from .train import evaluate
    from .vision import linear_probe

    from threadpoolctl import threadpool_limits

    rows = []
    for seed in sorted({s for _, s in models}):
        src = sources[seed]
        probe_train, probe_test = per_class(src.seen, train_per_class, seed), per_class(src.held_out, test_per_class, seed)
        control = random_like(src.model, seed)
        scored = [("pretrained", src.model), (RANDOM_CONTROL, control),
                  *((f"after {m}", model) for (m, s), model in models.items() if s == seed)]
        for name, model in scored:
            with threadpool_limits(1):  # small logistic regressions: BLAS threads only add overhead on busy cores
                probe = linear_probe(model, probe_train, probe_test)
            rows.append({"model": name, "seed": seed, "re-fitted probe": probe,
                         "old head": evaluate(with_head(model, copy.deepcopy(src.model.head)), probe_test)["acc"]})
    runs = pd.DataFrame(rows)
    return runs, mean_std(runs, ["model"], ["old head", "re-fitted probe"])


def stream_runs(methods: Sequence[str], pretrained: SmallResNet | Mapping[int, Any], task: TargetTask, *,
                seeds: Sequence[int],
                budget: int, groups: list[list[int]], steps: int, progress: bool = True,
                **options: Any) -> tuple[dict[str, list[np.ndarray]], pd.DataFrame]:
    """Every method x seed on the stream of tasks ``groups`` (digit classes of each task, in order).

    For each seed, ``budget`` examples per class of ``task`` are cut into tasks by class
    (:func:`class_split_tasks`) and learnt one after another (:func:`learn_sequence`, ``steps`` per
    task) from ``pretrained`` (one model, or one per seed: a mapping to models or
    :class:`Pretraining` runs); its test set is cut the same way. Returns each method's accuracy matrices (one per
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
        R = learn_sequence(method, _model(pretrained, seed), stream, tests, steps=steps, seed=seed, **options)
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

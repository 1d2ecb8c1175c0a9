"""Fine-tuning strategies: how much of a pretrained network to change, and how fast.

Every strategy here is an option of the one training loop (:func:`helpers.train.train`): it chooses
which parameters train, at which learning rate, and in which order. None copies the loop.

=====================  ============================================================================
``scratch``            same architecture, random weights, everything trains (the baseline)
``linear_probe``       feature extraction: the pretrained backbone is frozen; a linear head is
                       trained on its features (computed once: the cheapest method by far)
``full_ft``            start from the pretrained weights, new head, everything trains
``lp_ft``              linear probe first, then full fine-tuning from that head (Kumar et al. 2022:
                       a trained head distorts the features less than a random one)
``discriminative_lr``  lower layers get smaller learning rates (ULMFiT: ``lr / 2.6**depth``)
``gradual_unfreezing`` train the head first, then unfreeze one stage more per phase, top down
``full_ft_high_lr``    full fine-tuning with a learning rate 10x too high: watch pretrained
                       features being destroyed
=====================  ============================================================================

The end of the module holds the *forgetting mitigations* of notebook 05 (lower learning rate,
freezing, L2-SP, EWC, replay, Learning without Forgetting, LoRA for the language model): penalties,
a loss function and options of the same loop (:data:`FORGETTING_METHODS`, :func:`mitigation`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import check
from .models import SmallResNet, count_parameters, new_head, set_trainable
from .train import Data, History, default_param_groups, train, train_mode

METHODS = ("scratch", "linear_probe", "full_ft", "lp_ft", "discriminative_lr", "gradual_unfreezing",
           "full_ft_high_lr")
HIGH_LR_FACTOR = 10.0
DISCRIMINATIVE_DECAY = 2.6


def check_methods(methods: list[str]) -> list[str]:
    """Fail early, with the allowed names, on an unknown method."""
    return check("methods", list(methods))


def units_top_down(model: SmallResNet) -> list[list[nn.Module]]:
    """The network as trainable units from the head down: head, last stage, ..., the stem."""
    blocks = [m for m in model.backbone if any(True for _ in m.parameters())]
    stem, stages = blocks[:2], blocks[2:]  # conv + BN, then the residual stages
    return [[model.head]] + [[stage] for stage in reversed(stages)] + [stem]


def discriminative_param_groups(model: SmallResNet, lr: float, weight_decay: float,
                                decay: float = DISCRIMINATIVE_DECAY) -> list[dict[str, Any]]:
    """Optimizer groups with ``lr / decay**depth``: the head learns fastest, the stem slowest."""
    groups = []
    for depth, unit in enumerate(units_top_down(model)):
        wrapper = nn.ModuleList(unit)
        for group in default_param_groups(wrapper, lr / decay**depth, weight_decay):
            groups.append(group)
    return groups


class GradualUnfreezing:
    """An ``on_epoch_end`` hook: start with only the head trainable, unfreeze one unit per phase."""

    def __init__(self, model: SmallResNet, epochs: int):
        self.units = units_top_down(model)
        self.phase_epochs = max(1, math.ceil(epochs / len(self.units)))
        set_trainable(model, False)
        set_trainable(self.units[0], True)

    def __call__(self, epoch: int, model: nn.Module, row: dict[str, Any]) -> None:
        unfrozen = min(len(self.units), 1 + epoch // self.phase_epochs)
        for unit in self.units[:unfrozen]:
            set_trainable(unit, True)
        train_mode(model)  # newly unfrozen BatchNorm layers start updating their statistics
        row["unfrozen_units"] = unfrozen


@torch.no_grad()
def extract_features(model: SmallResNet, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Backbone features in eval mode (BatchNorm uses its pretrained statistics)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model.features(images[i:i + batch_size].to(device)).float().cpu()
                     for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def epochs_for(n_examples: int, batch_size: int, steps: int) -> tuple[int, int]:
    """(epochs, batch) so that a budget of any size gets about ``steps`` optimisation steps."""
    batch = min(batch_size, n_examples)
    per_epoch = math.ceil(n_examples / batch)
    return max(1, round(steps / per_epoch)), batch


@dataclass
class FineTuned:
    """A fine-tuned model and what it cost."""

    model: SmallResNet
    history: History
    method: str
    seconds: float
    images_seen: int
    trainable_params: int
    total_params: int
    flops: float  # training FLOPs (forward + backward ~ 3x forward where gradients flow)


def _train_head(model: SmallResNet, data: tuple[torch.Tensor, torch.Tensor], *, steps: int,
                lr: float, batch_size: int, seed: int, weight_decay: float) -> tuple[History, int]:
    """Feature extraction: fit ``model.head`` on frozen features computed once."""
    set_trainable(model.backbone, False)
    features = extract_features(model, data[0])
    epochs, batch = epochs_for(len(features), batch_size, steps)
    history = train(model.head, (features.to(next(model.parameters()).device), data[1]), epochs=epochs,
                    lr=lr, batch_size=batch, seed=seed, weight_decay=weight_decay, progress=False)
    return history, len(features)


def finetune(method: str, pretrained: SmallResNet | None, data: tuple[torch.Tensor, torch.Tensor], *,
             num_classes: int, steps: int, lr: float, batch_size: int, seed: int,
             width: int = 16, weight_decay: float = 1e-4, bf16: bool = False,
             val_data: Data | None = None, device: torch.device | str = "cpu",
             forward_flops: float = 0.0, loss_fn: Callable[..., Any] | None = None) -> FineTuned:
    """Adapt ``pretrained`` (unchanged: it is copied) to ``data`` with one of :data:`METHODS`.

    Every method gets the same budget of about ``steps`` optimisation steps, so their costs and
    accuracies compare fairly. ``forward_flops`` (FLOPs of one image through the whole network) is
    used for the cost estimate. ``loss_fn`` replaces cross-entropy when the network trains (see
    :func:`helpers.train.train`; class weights, focal loss); a linear probe's head fit keeps it.
    """
    check_methods([method])
    if method != "scratch" and pretrained is None:
        raise ValueError(f"method {method!r} needs a pretrained model (got None)")
    torch.manual_seed(seed)
    if method == "scratch":
        model = SmallResNet(num_classes, in_channels=data[0].shape[1], width=width)
    else:
        model = new_head(copy.deepcopy(pretrained), num_classes, seed=seed)
    model.to(device)
    start = time.perf_counter()
    epochs, batch = epochs_for(len(data[0]), batch_size, steps)
    common = dict(batch_size=batch, seed=seed, weight_decay=weight_decay, bf16=bf16, device=device,
                  val_data=val_data, progress=False, loss_fn=loss_fn)
    head_flops = 3 * 2 * model.head.in_features * num_classes
    images_seen = 0

    if method == "linear_probe":
        history, n = _train_head(model, data, steps=steps, lr=lr * 3, batch_size=batch_size, seed=seed,
                                 weight_decay=weight_decay)
        set_trainable(model, True)
        return FineTuned(model, history, method, time.perf_counter() - start, n * epochs,
                         count_parameters(model.head), count_parameters(model),
                         n * forward_flops + head_flops * n * epochs)
    if method == "lp_ft":
        _, n = _train_head(model, data, steps=steps, lr=lr * 3, batch_size=batch_size, seed=seed,
                           weight_decay=weight_decay)
        set_trainable(model, True)
        images_seen += n  # the features pass
        history = train(model, data, epochs=epochs, lr=lr / 2, **common)
    elif method == "discriminative_lr":
        history = train(model, data, epochs=epochs, lr=lr,
                        param_groups=discriminative_param_groups(model, lr, weight_decay), **common)
    elif method == "gradual_unfreezing":
        hook = GradualUnfreezing(model, epochs)
        history = train(model, data, epochs=epochs, lr=lr, on_epoch_end=[hook],
                        param_groups=default_param_groups(model, lr, weight_decay, include_frozen=True), **common)
    else:
        factor = HIGH_LR_FACTOR if method == "full_ft_high_lr" else 1.0
        history = train(model, data, epochs=epochs, lr=lr * factor, **common)
    seen = history.examples_seen
    set_trainable(model, True)
    return FineTuned(model, history, method, time.perf_counter() - start, images_seen + seen,
                     count_parameters(model, trainable_only=True), count_parameters(model),
                     3 * forward_flops * seen + images_seen * forward_flops)


# =================================================================================================
# Forgetting and its mitigations (notebook 05)
# =================================================================================================
#
# Fine-tuning changes the weights the *source* task (pretraining) relied on. Each mitigation below
# is one option of :func:`helpers.train.train`, never a copy of it:
#
# =================  ===============================================================================
# ``naive``          full fine-tuning at ``lr`` (the baseline that forgets)
# ``naive_high_lr``  the same at ``lr * HIGH_LR_FACTOR``: forgetting made fast
# ``lower_lr``       the same at ``lr / LOWER_LR_FACTOR``: small steps stay near the start
# ``freeze_lower``   only the head and the last stage train (:func:`freeze_lower`)
# ``l2sp``           ``penalties=[L2SP(...)]``: pull every weight back toward its pretrained value
# ``ewc``            ``penalties=[EWC(...)]``: the same pull, weighted by how much the source task
#                    cares about each weight (the diagonal Fisher information on source data)
# ``replay``         ``penalties=[Replay(...)]``: rehearse a small memory of source examples
# ``lwf``            ``loss_fn=LwF(...)``: Learning without Forgetting, distil the old head's
#                    answers on the *new* images (no source data needed)
# =================  ===============================================================================

FORGETTING_METHODS = ("naive", "naive_high_lr", "lower_lr", "freeze_lower", "l2sp", "ewc", "replay", "lwf")
LOWER_LR_FACTOR = 3.0
LWF_TEMPERATURE = 2.0


def check_forgetting_methods(methods: list[str], name: str = "forgetting_methods") -> list[str]:
    """Fail early, naming the parameter ``name`` and the allowed values, on an unknown mitigation."""
    return check(name, list(methods))


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
    check_forgetting_methods([method])
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
    import numpy as np

    from .train import evaluate

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


# --- the transformer: specialising a language model, fully or with LoRA ---------------------------

SPECIALISE_METHODS = ("full", "lora")


def lora_lm(model: nn.Module, rank: int, alpha: float | None = None,
            targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")):
    """Wrap a GPT-2 language model with LoRA (``peft``): the pretrained weights freeze, and each
    targeted projection ``W`` becomes ``W + (alpha / rank) B A`` with small trainable ``A``, ``B``.

    ``B`` starts at zero, so the wrapped model starts exactly as the pretrained one; whatever it
    learns lives in ``rank``-dimensional updates, which limits how far it can drift. Default
    targets: attention (``c_attn``, ``c_proj``) and MLP (``c_fc``, ``c_proj``) projections.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0,
                        target_modules=list(targets), fan_in_fan_out=True)
    with warnings.catch_warnings():  # peft asks transformers a question it has renamed (a FutureWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def specialise_lm(method: str, pretrained: nn.Module, blocks: torch.Tensor, *, steps: int, lr: float,
                  batch_size: int, seed: int, rank: int = 8, weight_decay: float = 0.0, bf16: bool = False,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, History]:
    """Continue next-token training of a copy of ``pretrained`` on ``blocks`` (``[N, seq_len + 1]``),
    fully (``"full"``) or with LoRA (``"lora"``: :func:`lora_lm`; pass it the larger learning rate
    LoRA needs), for ``steps`` steps of ``batch_size`` blocks (fewer if there are not enough blocks).
    A lower learning rate is just a smaller ``lr``: notebook 05 sweeps it for both methods.

    Returns the adapted model (LoRA merged back into plain weights) and its history.
    """
    if method not in SPECIALISE_METHODS:
        raise ValueError(f"parameter 'method'={method!r} is not allowed: expected one of {list(SPECIALISE_METHODS)}")
    torch.manual_seed(seed)
    model = copy.deepcopy(pretrained).to(device)
    if method == "lora":
        model = lora_lm(model, rank)
    # one pass over ``steps * batch_size`` blocks drawn for this seed: exactly ``steps`` steps
    chosen = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:steps * batch_size]
    history = train(model, blocks[chosen], task="lm", epochs=1, lr=lr, batch_size=batch_size, seed=seed,
                    weight_decay=weight_decay, warmup_steps=max(1, steps // 10), bf16=bf16, device=device,
                    progress=False)
    if method == "lora":
        model = model.merge_and_unload()
    return model.eval(), history

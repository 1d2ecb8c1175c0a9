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
``multitask``      train both tasks jointly: every step adds the source task's loss on a batch of
                   *all* its data, through its own (trainable) head -- the upper bound a continual
                   method is judged against (:mod:`helpers.multitask`)
=================  ===============================================================================

:func:`mitigation` turns a method name into those options; :func:`finetune_remembering` fine-tunes
with one and keeps the old head to score the source task (:func:`with_head`). How much is forgotten
is measured in :mod:`helpers.continual` (the learning-vs-forgetting plane, a stream of tasks).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_knob
from .finetuning import HIGH_LR_FACTOR, epochs_for, units_top_down
from .models import SmallResNet, for_inference, new_head, set_trainable
from .train import Data, History, default_param_groups, train

Labelled = tuple[torch.Tensor, torch.Tensor]  # images and their labels

LOWER_LR_FACTOR = 3.0
LWF_TEMPERATURE = 2.0


def with_head(model: SmallResNet, head: nn.Module) -> nn.Module:
    """``model``'s backbone (shared, not copied) under another head: how the *old* task is scored."""
    return nn.Sequential(model.backbone, head)


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
        self.teacher = for_inference(copy.deepcopy(teacher).eval())  # BatchNorm folded: it only infers
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
               lwf_strength: float = 1.0, replay_fraction: float = 0.02, multitask_ratio: float = 1.0,
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
      given; replay draws ``replay_fraction`` of it as its memory; multitask trains on all of it,
      through ``old_head``, which it makes trainable, at ``multitask_ratio`` of the target's loss).
    """
    check_knob("forgetting_methods", [method])
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
    elif method == "multitask":
        from .multitask import joint_options

        if source is None:
            raise ValueError("method 'multitask' needs old-task data to train on jointly")
        return {**options, **joint_options(model, old_head, source, ratio=multitask_ratio, lr=lr,
                                           weight_decay=weight_decay, batch_size=batch_size, seed=seed)}
    options["param_groups"] = default_param_groups(model, options["lr"], weight_decay)
    return options


def finetune_remembering(method: str, pretrained: SmallResNet, data: tuple[torch.Tensor, torch.Tensor], *,
                         source: tuple[torch.Tensor, torch.Tensor] | None, num_classes: int, steps: int,
                         lr: float, batch_size: int, seed: int, weight_decay: float = 1e-4,
                         bf16: bool = False, device: torch.device | str = "cpu",
                         **strengths: Any) -> tuple[SmallResNet, nn.Module, History]:
    """Fine-tune a copy of ``pretrained`` on ``data`` with a new head, by ``method``.

    Returns the fine-tuned model, the *old* head (a frozen copy of ``pretrained.head``, trained
    alongside only by ``multitask``: score the pretraining task with ``with_head(model, old_head)``)
    and the history. ``strengths`` are passed to :func:`mitigation` (``l2sp_strength``,
    ``ewc_strength``, ``lwf_strength``, ``replay_fraction``, ``multitask_ratio``, ``fisher``).
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
    set_trainable(old_head, False)
    return model, old_head, history

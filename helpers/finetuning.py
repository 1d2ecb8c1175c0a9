"""Fine-tuning strategies: how much of a pretrained network to change, and how fast.

Every strategy here is an option of the one training loop (:func:`helpers.train.train`): it chooses
which parameters train, at which learning rate, and in which order. None copies the loop. The
allowed names are the ``methods`` knob's choices (``config.KNOBS["methods"].choices``):

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

What fine-tuning makes a network forget, and how to limit it, is :mod:`helpers.forgetting`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .config import check_knob
from .models import SmallResNet, count_parameters, for_inference, new_head, set_trainable
from .train import Data, History, default_param_groups, train, train_mode

if TYPE_CHECKING:
    import pandas as pd

HIGH_LR_FACTOR = 10.0
DISCRIMINATIVE_DECAY = 2.6


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


def learning_rates(model: nn.Module, groups: list[dict[str, Any]]) -> dict[str, float]:
    """The learning rate each named parameter of ``model`` gets from optimizer ``groups``.

    Two sets of groups that give every parameter the same rate train the same way, however the
    parameters are grouped (per layer, per stage, with or without a weight-decay split); this is
    what compares them. A parameter in no group is left out (it does not train); one in two groups
    is an error, as it is for ``torch.optim``.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    rates: dict[str, float] = {}
    for index, group in enumerate(groups):
        if "lr" not in group:
            raise ValueError(f"optimizer group {index} has no 'lr': each group needs its learning rate")
        for param in group["params"]:
            if id(param) not in names:
                raise ValueError(f"optimizer group {index} holds a parameter that is not the model's")
            name = names[id(param)]
            if name in rates:
                raise ValueError(f"parameter {name!r} is in two optimizer groups")
            rates[name] = float(group["lr"])
    return rates


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
def extract_features(model: SmallResNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Backbone features in eval mode (BatchNorm uses its pretrained statistics)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    folded = for_inference(model)  # a SmallResNet: a copy with BatchNorm folded into its convolutions
    out = torch.cat([folded.features(images[i:i + batch_size].to(device)).float().cpu()
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
    curve: list[dict[str, float]] | None = None  # validation accuracy at checkpoints (``curve_data=``)


class _Checkpoints:
    """An ``on_epoch_end`` hook: at the epochs of :func:`helpers.compute.checkpoint_epochs`, the
    full network's accuracy on ``data`` next to the compute spent so far (steps, images, FLOPs and
    training seconds, i.e. without the evaluations themselves)."""

    def __init__(self, model: nn.Module, data: Data, total_epochs: int, steps_per_epoch: int,
                 images_per_epoch: int, flops_per_image: float, flops_before: float, seconds_before: float,
                 bf16: bool):
        from .compute import checkpoint_epochs

        self.model, self.data, self.bf16 = model, data, bf16
        self.epochs = set(checkpoint_epochs(total_epochs))
        self.steps_per_epoch, self.images_per_epoch = steps_per_epoch, images_per_epoch
        self.flops_per_image, self.flops_before = flops_per_image, flops_before
        self.seconds = seconds_before
        self.points: list[dict[str, float]] = []

    def __call__(self, epoch: int, _trained: nn.Module, row: dict[str, Any]) -> None:
        from .train import evaluate

        self.seconds += row["seconds"]
        if epoch in self.epochs:
            images = epoch * self.images_per_epoch
            with torch.inference_mode():
                acc = evaluate(self.model, self.data, batch_size=1024, bf16=self.bf16)["acc"]
            self.points.append({"step": epoch * self.steps_per_epoch, "images": images,
                                "flops": self.flops_before + self.flops_per_image * images,
                                "seconds": self.seconds, "val_acc": acc})


def _train_head(model: SmallResNet, data: tuple[torch.Tensor, torch.Tensor], *, steps: int,
                lr: float, batch_size: int, seed: int, weight_decay: float,
                on_epoch_end: Sequence[Callable[..., None]] = ()) -> tuple[History, int]:
    """Feature extraction: fit ``model.head`` on frozen features computed once.

    ``on_epoch_end`` hooks are called with the *whole* ``model`` (not the head alone)."""
    set_trainable(model.backbone, False)
    features = extract_features(model, data[0])
    epochs, batch = epochs_for(len(features), batch_size, steps)
    hooks = [lambda epoch, _head, row, hook=hook: hook(epoch, model, row) for hook in on_epoch_end]
    history = train(model.head, (features.to(next(model.parameters()).device), data[1]), epochs=epochs,
                    lr=lr, batch_size=batch, seed=seed, weight_decay=weight_decay, progress=False,
                    on_epoch_end=hooks)
    return history, len(features)


def finetune(method: str, pretrained: SmallResNet | None, data: tuple[torch.Tensor, torch.Tensor], *,
             num_classes: int, steps: int, lr: float, batch_size: int, seed: int,
             width: int = 16, weight_decay: float = 1e-4, bf16: bool = False,
             val_data: Data | None = None, device: torch.device | str = "cpu",
             forward_flops: float = 0.0, loss_fn: Callable[..., Any] | None = None,
             curve_data: Data | None = None) -> FineTuned:
    """Adapt ``pretrained`` (unchanged: it is copied) to ``data`` with one of the ``methods`` knob's choices.

    The run makes about ``steps`` optimisation steps of the method (a caller gives ``scratch`` its
    own, longer schedule: see :func:`helpers.vision.finetune_grid`). ``lp_ft`` makes them *after*
    a head fit on frozen features (another ``steps`` steps of the head alone, whose FLOPs are
    counted). ``forward_flops`` (FLOPs of one image through the whole network) is used for the cost
    estimate. ``loss_fn`` replaces cross-entropy when the network trains (see
    :func:`helpers.train.train`; class weights, focal loss); a linear probe's head fit keeps it.
    ``curve_data``: also record the accuracy on it at a few checkpoints along training
    (:func:`helpers.compute.checkpoint_epochs`), with the compute spent so far (``FineTuned.curve``).
    """
    check_knob("methods", [method])
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
    n_data = len(data[0])

    def checkpoints(flops_per_image: float, flops_before: float = 0.0) -> list[_Checkpoints]:
        if curve_data is None:
            return []
        watch = _Checkpoints(model, curve_data, epochs, math.ceil(n_data / batch), n_data, flops_per_image,
                             flops_before, time.perf_counter() - start, bf16)
        watchers.append(watch)
        return [watch]

    watchers: list[_Checkpoints] = []
    if method == "linear_probe":
        history, n = _train_head(model, data, steps=steps, lr=lr * 3, batch_size=batch_size, seed=seed,
                                 weight_decay=weight_decay, on_epoch_end=checkpoints(head_flops, n_data * forward_flops))
        set_trainable(model, True)
        return FineTuned(model, history, method, time.perf_counter() - start, n * epochs,
                         count_parameters(model.head), count_parameters(model),
                         n * forward_flops + head_flops * n * epochs, watchers[0].points if watchers else None)
    if method == "lp_ft":
        _, n = _train_head(model, data, steps=steps, lr=lr * 3, batch_size=batch_size, seed=seed,
                           weight_decay=weight_decay)
        set_trainable(model, True)
        images_seen += n  # the features pass
        hooks = checkpoints(3 * forward_flops, n * forward_flops + head_flops * n * epochs)
        history = train(model, data, epochs=epochs, lr=lr / 2, on_epoch_end=hooks, **common)
    elif method == "discriminative_lr":
        history = train(model, data, epochs=epochs, lr=lr, on_epoch_end=checkpoints(3 * forward_flops),
                        param_groups=discriminative_param_groups(model, lr, weight_decay), **common)
    elif method == "gradual_unfreezing":
        hook = GradualUnfreezing(model, epochs)
        history = train(model, data, epochs=epochs, lr=lr, on_epoch_end=[hook, *checkpoints(3 * forward_flops)],
                        param_groups=default_param_groups(model, lr, weight_decay, include_frozen=True), **common)
    else:
        factor = HIGH_LR_FACTOR if method == "full_ft_high_lr" else 1.0
        history = train(model, data, epochs=epochs, lr=lr * factor, on_epoch_end=checkpoints(3 * forward_flops),
                        **common)
    seen = history.examples_seen
    set_trainable(model, True)
    flops = 3 * forward_flops * seen + images_seen * forward_flops
    if method == "lp_ft":
        flops += head_flops * images_seen * epochs  # the head fit before it
    return FineTuned(model, history, method, time.perf_counter() - start, images_seen + seen,
                     count_parameters(model, trainable_only=True), count_parameters(model),
                     flops, watchers[0].points if watchers else None)


# --- reading a grid of fine-tuning runs (helpers.vision.finetune_grid's rows) ----------------------

PRETRAINING_STAGE = "pretraining (01, supervised)"


def methods_at_budget(runs: pd.DataFrame, budget: int, methods: list[str]) -> pd.DataFrame:
    """Every method at one label budget: mean and std over seeds, in the order ``methods`` lists them.

    ``runs`` has :func:`helpers.vision.finetune_grid`'s columns. The columns compared are the
    accuracy in and out of distribution and what the run cost (seconds, FLOPs, trainable
    parameters); a method that did not run at ``budget`` is left out.
    """
    from .metrics import mean_std

    at_budget = runs[(runs.budget == budget) & runs.method.isin(methods)]
    table = mean_std(at_budget, ["method"], ["test_acc", "shifted_acc", "seconds", "flops", "trainable_params"])
    return table.loc[[m for m in methods if m in table.index]]


def cost_table(pretraining: Mapping[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """The articles' cost comparison: one row for pretraining, one per fine-tuning method.

    ``pretraining`` is :func:`helpers.vision.pretrained_cnn`'s summary (pretraining is supervised,
    so every image seen is a label used); ``runs`` are :func:`helpers.vision.finetune_grid` rows at
    *one* label budget, averaged over seeds per method. The last column puts each stage's training
    FLOPs over pretraining's: the question "how much cheaper is fine-tuning?" in one number.
    """
    import pandas as pd

    rows = [{"stage": PRETRAINING_STAGE, "data used (images)": pretraining["images_seen"],
             "labels used": pretraining["images_seen"], "wall time (s)": pretraining["wall_time"],
             "training FLOPs": pretraining["flops"], "parameters updated": pretraining["params"]}]
    for method, part in runs.groupby("method", sort=False):
        rows.append({"stage": f"fine-tuning: {method}", "data used (images)": part.images_seen.mean(),
                     "labels used": part.labels_used.mean(), "wall time (s)": part.seconds.mean(),
                     "training FLOPs": part.flops.mean(), "parameters updated": part.trainable_params.mean()})
    cost = pd.DataFrame(rows).set_index("stage")
    cost["FLOPs vs pretraining"] = cost["training FLOPs"] / pretraining["flops"]
    return cost


def first_epoch_reaching(curve: pd.Series, target: float) -> int | None:
    """The first epoch at which a validation curve (a Series indexed by epoch) reaches ``target``;
    ``None`` if it never does. With ``target`` = scratch's final accuracy this is "how many epochs
    does fine-tuning need to get where scratch ends"."""
    reached = curve[curve >= target]
    return int(reached.index.min()) if len(reached) else None


def per_seed(runs: pd.DataFrame, method: str, budget: int, column: str = "test_acc") -> list[float]:
    """``column`` of ``method``'s runs at ``budget``, one value per seed in seed order: one side of a
    paired claim (:func:`helpers.claims.claim.greater` pairs seed *i* of one side with seed *i* of
    the other, so both sides must come from the same seeds)."""
    part = runs[(runs.method == method) & (runs.budget == budget)].sort_values("seed")
    if part.empty:
        raise ValueError(f"per_seed: no {method!r} run at budget {budget} in these runs")
    return [float(v) for v in part[column]]

"""Many small fine-tuning runs at once: N copies of the small ResNet trained by one step.

A grid of fine-tuning runs (methods x label budgets x seeds) trains the same small network many
times. Each run alone keeps the CPU busy with tiny convolutions and Python overhead; trained
*together*, N networks become one wider network whose convolutions are *grouped* (model ``n`` owns
channel group ``n`` and never sees another model's channels), so one forward/backward pass and one
optimizer step update all N of them.

Why grouped convolutions rather than ``torch.func.vmap``: vmap's batching rule turns a convolution
into the same grouped convolution anyway, but BatchNorm in train mode is awkward under vmap
(``replace_all_batch_norm_modules_`` drops the running statistics, which changes evaluation). In the
grouped layout BatchNorm over ``N x C`` channels *is* N independent BatchNorms: per-model batch
statistics while training, per-model running statistics kept exactly as ``nn.BatchNorm2d`` keeps them.

What stays exactly as in :func:`helpers.finetuning.finetune` (one run at a time):

* the initial weights (built by the same calls under the same ``torch.manual_seed``);
* the data: each run draws its minibatches from its own labelled set in the order
  :func:`helpers.train.train` uses (``randperm`` seeded by ``seed * 100_003 + epoch``);
* the optimisation: AdamW per parameter with each run's learning rate per parameter group
  (discriminative rates included), weight decay on weights but not on biases and norms, the cosine
  schedule of :func:`helpers.train.make_schedule`, gradient clipping at norm 1 *per model*;
* what a :class:`~helpers.finetuning.FineTuned` reports (history rows, images seen, FLOPs,
  trainable parameters). ``seconds`` is the run's share of its group's wall time (the group's time
  divided by its size): what the run cost when trained alongside the others.

Only the summation order of the arithmetic differs (a grouped kernel instead of a dense one), so
weights agree to float32 rounding after a few steps and drift apart like two runs on two machines
after many; accuracies agree in distribution (tests/test_batched.py measures both).

Runs train together when they share shapes: the same number of labelled examples (hence the same
batches per epoch and the same number of epochs), classes, input channels and width. The methods
that train the whole network from its first step qualify (:data:`GROUPED_METHODS`); ``lp_ft``
qualifies after its head is fitted; ``linear_probe`` fits only a head on frozen features, which are
computed once per (pretrained model, labelled set) and shared with ``lp_ft``; ``gradual_unfreezing``
changes which layers train during the run and falls back to :func:`helpers.finetuning.finetune`.

Does it pay? Measure it: ``python -m helpers.bench_batched --threads 1`` (notebook 03's grid, both
ways, one process). On a 2-core CPU it mostly does not: a fine-tuning step of this ResNet on 28 x 28
images at batch 32 is arithmetic (convolutions), not Python overhead, and oneDNN's grouped
convolution is no faster than N dense ones (evaluation neither: 15 models on 1,000 images took
longer grouped than one by one). The forward+backward step alone wins only where the work per step
is small (batch 10: about 1.3x at one thread); launching many small kernels, where grouping should
pay, is a GPU's cost (not measured here). ``helpers.vision.finetune_grid`` keeps its loop.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_knob
from .finetuning import (HIGH_LR_FACTOR, FineTuned, GradualUnfreezing, discriminative_param_groups,
                         epochs_for, extract_features, finetune)
from .models import BasicBlock, SmallResNet, count_parameters, new_head, set_trainable
from .train import History, default_param_groups, make_schedule, train, use_bf16

GROUPED_METHODS = ("scratch", "full_ft", "full_ft_high_lr", "discriminative_lr", "lp_ft")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which train() uses
GRAD_CLIP = 1.0  # train()'s default, which finetune() keeps
MAX_EVAL_ACTIVATIONS = 8192  # images x models per evaluation batch (bounds memory, not results)


@dataclass
class Run:
    """One fine-tuning run of a batch: what :func:`helpers.finetuning.finetune` takes per call."""

    method: str
    data: tuple[torch.Tensor, torch.Tensor]
    seed: int
    pretrained: SmallResNet | None = None
    lr: float = 1e-3
    steps: int | None = None  # this run's own budget of steps (e.g. scratch's longer schedule)


# --- N models as one grouped network -----------------------------------------------------------------

class Stack:
    """N networks of one architecture as stacked tensors: ``params[name]`` is ``[N, *shape]``.

    ``template`` (any of the N) gives the structure :func:`grouped_forward` walks. Buffers (BatchNorm
    running statistics) are stacked too and updated in place while training, per model.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device | str = "cpu"):
        shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("Stack: every model must have the same parameter names and shapes")
        self.template = models[0]
        self.size = len(models)
        self.params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).to(device)
                       for name, _ in models[0].named_parameters()}
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models]).to(device)
                        for name, _ in models[0].named_buffers()}

    def model(self, index: int) -> nn.Module:
        """Model ``index`` as an ordinary network (a copy of the template with its own weights)."""
        model = copy.deepcopy(self.template)
        state = {**{k: v[index] for k, v in self.params.items()}, **{k: v[index] for k, v in self.buffers.items()}}
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return model


def _grouped(module: nn.Module, h: torch.Tensor, stack: Stack, prefix: str, training: bool) -> torch.Tensor:
    """``module`` applied to all N models at once; ``h`` is ``[batch, N * channels, ...]``, model-major."""
    p, b, n = stack.params, stack.buffers, stack.size
    if isinstance(module, nn.Conv2d):
        w = p[prefix + "weight"]
        bias = p[prefix + "bias"].reshape(-1) if module.bias is not None else None
        return F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias, module.stride, module.padding, module.dilation,
                        n * module.groups)
    if isinstance(module, nn.BatchNorm2d):  # over N x C channels: N independent BatchNorms
        if module.momentum is None or not module.track_running_stats:
            raise ValueError(f"batched: BatchNorm at {prefix!r} needs a momentum and running statistics")
        if training:
            b[prefix + "num_batches_tracked"].add_(1)
        return F.batch_norm(h, b[prefix + "running_mean"].view(-1), b[prefix + "running_var"].view(-1),
                            p[prefix + "weight"].reshape(-1), p[prefix + "bias"].reshape(-1),
                            training, module.momentum, module.eps)
    if isinstance(module, BasicBlock):
        out = torch.relu(_grouped(module.bn1, _grouped(module.conv1, h, stack, prefix + "conv1.", training),
                                  stack, prefix + "bn1.", training))
        out = _grouped(module.bn2, _grouped(module.conv2, out, stack, prefix + "conv2.", training),
                       stack, prefix + "bn2.", training)
        return torch.relu(out + _grouped(module.skip, h, stack, prefix + "skip.", training))
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            h = _grouped(child, h, stack, f"{prefix}{name}.", training)
        return h
    if isinstance(module, nn.ReLU):
        return torch.relu(h)
    if isinstance(module, nn.Identity):
        return h
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return F.adaptive_avg_pool2d(h, module.output_size)
    if isinstance(module, nn.Flatten):
        return h.flatten(module.start_dim, module.end_dim)
    if isinstance(module, nn.Dropout):
        if training and module.p > 0:
            raise ValueError("batched training does not support dropout (its random masks would differ "
                             "from the one-at-a-time path); use helpers.finetuning.finetune")
        return h
    raise TypeError(f"batched: no grouped form for {type(module).__name__} at {prefix or 'the top'}")


def grouped_forward(stack: Stack, inputs: torch.Tensor, training: bool) -> torch.Tensor:
    """Logits ``[N, batch, classes]`` of the N stacked :class:`SmallResNet` models.

    ``inputs`` is ``[N, batch, C, H, W]`` (each model its own images) or ``[batch, C, H, W]`` (the
    same images for every model, as in evaluation).
    """
    n = stack.size
    if inputs.dim() == 4:
        inputs = inputs.unsqueeze(0).expand(n, *inputs.shape)
    batch = inputs.shape[1]
    h = inputs.transpose(0, 1).reshape(batch, n * inputs.shape[2], *inputs.shape[3:])
    features = _grouped(stack.template.backbone, h, stack, "backbone.", training).view(batch, n, -1)
    weight, bias = stack.params["head.weight"], stack.params["head.bias"]
    return torch.einsum("bnf,nof->nbo", features, weight) + bias[:, None, :]


@torch.inference_mode()
def evaluate_many(models: Sequence[nn.Module] | Stack, data: tuple[torch.Tensor, torch.Tensor],
                  bf16: bool = False, batch_size: int = 1024) -> list[dict[str, float]]:
    """:func:`helpers.train.evaluate` for N models on the same data, in one grouped pass per batch.

    Eval mode (BatchNorm uses each model's running statistics), large batches, no autograd. Returns
    one ``{"loss", "acc"}`` per model, in order.
    """
    stack = models if isinstance(models, Stack) else Stack(models, next(models[0].parameters()).device)
    device = stack.params["head.weight"].device
    bf16 = use_bf16(bf16, device)
    batch_size = max(1, min(batch_size, MAX_EVAL_ACTIVATIONS // stack.size))
    loss_sum = torch.zeros(stack.size, device=device)
    correct = torch.zeros(stack.size, device=device)
    images, labels = data
    for start in range(0, len(labels), batch_size):
        x, y = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = grouped_forward(stack, x, training=False).float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.repeat(stack.size), reduction="none").view(
            stack.size, -1).sum(1)
        correct += (logits.argmax(-1) == y).sum(1)
    count = max(len(labels), 1)
    return [{"loss": float(l) / count, "acc": float(c) / count} for l, c in zip(loss_sum.tolist(), correct.tolist())]


# --- the optimizer, per model ----------------------------------------------------------------------

class StackedAdamW:
    """AdamW on stacked tensors with a learning rate and weight decay per model and per parameter.

    The same update as ``torch.optim.AdamW`` (single-tensor path) applied to slice ``n`` of every
    tensor with model ``n``'s rates; gradients are clipped first to norm ``clip`` per model, as
    ``clip_grad_norm_`` clips one model's parameters together.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], lrs: Mapping[str, Sequence[float]],
                 decays: Mapping[str, Sequence[float]], clip: float | None = GRAD_CLIP):
        self.params, self.lrs, self.decays, self.clip = params, lrs, decays, clip
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = 0

    def clip_gradients(self) -> torch.Tensor:
        """Scale each model's gradients so their joint norm is at most ``clip``; returns the norms."""
        grads = [p.grad for p in self.params.values()]
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, 2, dim=0)
        if self.clip:
            scale = (self.clip / (total + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        return total

    @torch.no_grad()
    def step(self, factor: float) -> None:
        """One update with every base rate multiplied by the schedule's ``factor``."""
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        correction1, correction2 = 1 - beta1 ** self.steps, (1 - beta2 ** self.steps) ** 0.5
        for name, param in self.params.items():
            grad, shape = param.grad, (-1,) + (1,) * (param.dim() - 1)
            lr = [rate * factor for rate in self.lrs[name]]
            keep = torch.tensor([1 - r * d for r, d in zip(lr, self.decays[name])], dtype=param.dtype)
            param.mul_(keep.to(param.device).view(shape))
            self.exp_avg[name].lerp_(grad, 1 - beta1)
            self.exp_avg_sq[name].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (self.exp_avg_sq[name].sqrt() / correction2).add_(ADAM_EPS)
            step_size = torch.tensor([r / correction1 for r in lr], dtype=param.dtype, device=param.device)
            param.sub_(self.exp_avg[name] / denom * step_size.view(shape))
            param.grad = None


def _rates(model: nn.Module, groups: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """(learning rate, weight decay) of each named parameter under optimizer ``groups``."""
    names = {id(p): name for name, p in model.named_parameters()}
    rates = {names[id(p)]: (float(g["lr"]), float(g.get("weight_decay", 0.0))) for g in groups for p in g["params"]}
    missing = set(names.values()) - set(rates)
    if missing:
        raise ValueError(f"batched training needs every parameter in an optimizer group; missing {sorted(missing)}")
    return rates


# --- training a group ------------------------------------------------------------------------------

@dataclass
class _Prepared:
    """A run made ready for grouped training: its initial model, rates and what it has cost so far."""

    index: int
    run: Run
    model: SmallResNet
    rates: dict[str, tuple[float, float]]
    history_lr: float      # the learning rate train() would log (its first optimizer group's)
    extra_images: int      # images seen before grouped training (lp_ft's feature pass)
    extra_flops: float     # and their FLOPs (lp_ft: the feature pass and the head fit)
    seconds: float


def train_group(models: Sequence[nn.Module], datasets: Sequence[tuple[torch.Tensor, torch.Tensor]],
                seeds: Sequence[int], rates: Sequence[Mapping[str, tuple[float, float]]], *, epochs: int,
                batch_size: int, bf16: bool = False, device: torch.device | str = "cpu",
                val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                history_lrs: Sequence[float] | None = None) -> tuple[Stack, list[History]]:
    """Train N same-shaped networks together, each as :func:`helpers.train.train` would alone.

    ``datasets[n]``, ``seeds[n]`` and ``rates[n]`` (name -> (lr, weight decay)) belong to model
    ``n``; every dataset has the same size, so every model takes ``epochs x ceil(size / batch_size)``
    steps on batches of the same sizes. Returns the trained :class:`Stack` and one history per model.
    """
    device = torch.device(device)
    bf16 = use_bf16(bf16, device)
    n_examples = len(datasets[0][1])
    if any(len(d[1]) != n_examples for d in datasets):
        raise ValueError("train_group: every run of a group needs the same number of examples")
    stack = Stack(models, device)
    for value in stack.params.values():
        value.requires_grad_(True)
    names = list(stack.params)
    optimizer = StackedAdamW(stack.params, {k: [r[k][0] for r in rates] for k in names},
                             {k: [r[k][1] for r in rates] for k in names})
    per_epoch = -(-n_examples // batch_size)
    # train()'s schedule: the same function of the step, so every rate is the same float
    factor = make_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                           epochs * per_epoch, "cosine").lr_lambdas[0]
    global_step = 0
    images = [d[0].to(device) for d in datasets]
    labels = torch.stack([d[1] for d in datasets]).to(device)
    histories = [History(monitor="val_acc" if val_data is not None else "train_acc") for _ in models]
    history_lrs = list(history_lrs) if history_lrs is not None else [next(iter(r.values()))[0] for r in rates]
    best = [None] * len(models)
    clock = time.perf_counter()
    for epoch in range(epochs):
        orders = torch.stack([torch.randperm(n_examples, generator=torch.Generator().manual_seed(s * 100_003 + epoch))
                              for s in seeds]).to(device)
        epoch_clock = time.perf_counter()
        loss_sum = torch.zeros(len(models), device=device)
        correct = torch.zeros(len(models), device=device)
        for step in range(per_epoch):
            index = orders[:, step * batch_size:(step + 1) * batch_size]
            x = torch.stack([imgs[i] for imgs, i in zip(images, index)])
            y = torch.gather(labels, 1, index)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = grouped_forward(stack, x, training=True).float()
                losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
            losses.sum().backward()  # model n's parameters get exactly the gradient of its own mean loss
            optimizer.clip_gradients()
            optimizer.step(factor(global_step))
            global_step += 1
            loss_sum += losses.detach() * y.shape[1]
            correct += (logits.detach().argmax(-1) == y).sum(1)
        seconds = (time.perf_counter() - epoch_clock) / len(models)
        val = evaluate_many(stack, val_data, bf16=bf16) if val_data is not None else None
        for n, (history, loss, right) in enumerate(zip(histories, loss_sum.tolist(), correct.tolist())):
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss / n_examples,
                                   "train_acc": right / n_examples,
                                   "lr": history_lrs[n] * factor(global_step), "seconds": seconds}
            if val is not None:
                row.update({f"val_{k}": v for k, v in val[n].items()})
            history.rows.append(row)
            history.examples_seen += n_examples
            value = row[history.monitor]
            if best[n] is None or value > best[n]:
                best[n], history.best_epoch = value, epoch + 1
    for value in stack.params.values():
        value.requires_grad_(False)
    for history in histories:
        history.wall_time = (time.perf_counter() - clock) / len(models)
    return stack, histories


# --- the public entry point ------------------------------------------------------------------------

class _FeatureCache:
    """Frozen backbone features, computed once per (pretrained model, labelled images)."""

    def __init__(self) -> None:
        self.entries: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def get(self, pretrained: SmallResNet, model: SmallResNet, images: torch.Tensor) -> torch.Tensor:
        for source, seen, features in self.entries:
            if source is pretrained and seen.shape == images.shape and torch.equal(seen, images):
                return features
        features = extract_features(model, images)
        self.entries.append((pretrained, images, features))
        return features


def _fit_head(model: SmallResNet, features: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float,
              batch_size: int, seed: int, weight_decay: float) -> History:
    """:func:`helpers.finetuning._train_head` on features already computed."""
    set_trainable(model.backbone, False)
    epochs, batch = epochs_for(len(features), batch_size, steps)
    return train(model.head, (features.to(next(model.parameters()).device), labels), epochs=epochs, lr=lr,
                 batch_size=batch, seed=seed, weight_decay=weight_decay, progress=False)


def _initial_model(run: Run, num_classes: int, width: int, device: torch.device | str) -> SmallResNet:
    """The weights :func:`helpers.finetuning.finetune` starts ``run`` from (same calls, same seed)."""
    torch.manual_seed(run.seed)
    if run.method == "scratch":
        model = SmallResNet(num_classes, in_channels=run.data[0].shape[1], width=width)
    else:
        model = new_head(copy.deepcopy(run.pretrained), num_classes, seed=run.seed)
    return model.to(device)


def _chunks(items: list[_Prepared], size: int) -> Iterator[list[_Prepared]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def finetune_many(runs: Sequence[Run], *, num_classes: int, steps: int, batch_size: int, width: int = 16,
                  weight_decay: float = 1e-4, bf16: bool = False, val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                  device: torch.device | str = "cpu", forward_flops: float = 0.0,
                  max_group: int = 16) -> list[FineTuned]:
    """:func:`helpers.finetuning.finetune` for every run in ``runs``, training same-shaped runs together.

    Returns one :class:`~helpers.finetuning.FineTuned` per run, in order, with the meaning
    ``finetune`` gives each field (``seconds``: the run's share of its group's time). Runs of
    :data:`GROUPED_METHODS` whose labelled sets have the same size train as one group (at most
    ``max_group`` models per step; memory grows with it); ``linear_probe`` and ``lp_ft`` share
    frozen features; anything else runs through ``finetune`` one at a time.
    """
    check_knob("methods", sorted({run.method for run in runs}))
    for run in runs:
        if run.method != "scratch" and run.pretrained is None:
            raise ValueError(f"method {run.method!r} needs a pretrained model (got None)")
    if max_group < 1:
        raise ValueError(f"finetune_many: max_group={max_group!r} is not allowed: expected an integer >= 1")
    results: list[FineTuned | None] = [None] * len(runs)
    features = _FeatureCache()
    groups: dict[tuple[Any, ...], list[_Prepared]] = {}
    for index, run in enumerate(runs):
        start = time.perf_counter()
        run_steps = run.steps or steps
        if run.method == "gradual_unfreezing":
            results[index] = finetune(run.method, run.pretrained, run.data, num_classes=num_classes, steps=run_steps,
                                      lr=run.lr, batch_size=batch_size, seed=run.seed, width=width,
                                      weight_decay=weight_decay, bf16=bf16, val_data=val_data, device=device,
                                      forward_flops=forward_flops)
            continue
        model = _initial_model(run, num_classes, width, device)
        extra, extra_flops = 0, 0.0
        if run.method in ("linear_probe", "lp_ft"):
            cached = features.get(run.pretrained, model, run.data[0])
            history = _fit_head(model, cached, run.data[1], steps=run_steps, lr=run.lr * 3, batch_size=batch_size,
                                seed=run.seed, weight_decay=weight_decay)
            set_trainable(model, True)
            n = len(cached)
            if run.method == "linear_probe":
                epochs, _ = epochs_for(n, batch_size, run_steps)
                head_flops = 3 * 2 * model.head.in_features * num_classes
                results[index] = FineTuned(model, history, run.method, time.perf_counter() - start, n * epochs,
                                           count_parameters(model.head), count_parameters(model),
                                           n * forward_flops + head_flops * n * epochs)
                continue
            extra = n
            extra_flops = n * forward_flops + 3 * 2 * model.head.in_features * num_classes * n * epochs_for(
                n, batch_size, run_steps)[0]
        lr = {"lp_ft": run.lr / 2, "full_ft_high_lr": run.lr * HIGH_LR_FACTOR}.get(run.method, run.lr)
        groups_ = (discriminative_param_groups(model, lr, weight_decay) if run.method == "discriminative_lr"
                   else default_param_groups(model, lr, weight_decay))
        prepared = _Prepared(index, run, model, _rates(model, groups_), float(groups_[0]["lr"]), extra, extra_flops,
                             time.perf_counter() - start)
        shape = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
        epochs, batch = epochs_for(len(run.data[1]), batch_size, run_steps)
        groups.setdefault((len(run.data[1]), epochs, batch, shape), []).append(prepared)

    for (_, epochs, batch, _), members in groups.items():
        for chunk in _chunks(members, max_group):
            stack, histories = train_group([p.model for p in chunk], [p.run.data for p in chunk],
                                           [p.run.seed for p in chunk], [p.rates for p in chunk], epochs=epochs,
                                           batch_size=batch, bf16=bf16, device=device, val_data=val_data,
                                           history_lrs=[p.history_lr for p in chunk])
            for position, (prepared, history) in enumerate(zip(chunk, histories)):
                model = stack.model(position)
                set_trainable(model, True)
                seen = history.examples_seen
                results[prepared.index] = FineTuned(
                    model, history, prepared.run.method, prepared.seconds + history.wall_time,
                    prepared.extra_images + seen, count_parameters(model, trainable_only=True),
                    count_parameters(model), 3 * forward_flops * seen + prepared.extra_flops)
    return [r for r in results if r is not None]

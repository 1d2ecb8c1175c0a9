"""One training loop for every experiment in the workbook.

``train(model, train_data, val_data, ...)`` trains a classifier (``task="classify"``: data is
``(inputs, labels)``; labels ``[N]``, or ``[N, T]`` with one label per token and ``IGNORE`` where
there is nothing to predict, as in masked language modelling) or a language model
(``task="lm"``: data is a LongTensor of token blocks ``[N, seq_len + 1]``) and returns a
:class:`History` with one row per epoch.

What it does for you, so notebooks stay short:

* a tqdm progress bar (a widget in Jupyter, text in a terminal);
* per-epoch train/validation loss and accuracy (or perplexity) in a pandas table;
* learning-rate schedules (constant / cosine / linear, with warm-up), AdamW weight decay,
  gradient clipping, optional bf16 autocast (about 1.6x faster for a small CNN on CPU);
* early stopping with patience that restores the best weights;
* checkpoint/resume: with ``checkpoint=path`` the full training state is saved atomically every
  ``checkpoint_every`` steps and on Ctrl-C; calling ``train`` again with the same path continues
  where it stopped and ends with exactly the weights an uninterrupted run would have;
* hooks: ``penalties`` add terms to the loss (L2-SP, EWC, ...), ``on_epoch_end`` adds columns to
  the history (a linear probe's accuracy, forgetting, ...). Mitigations plug in here instead of
  copying the loop.

It avoids host syncs it does not need: losses are summed on the device and read once per epoch.
And it uses the fast kernels where they compute the same thing: fused AdamW (:func:`fused_adam`),
a next-token loss that shares its passes over the logits with the accuracy
(:func:`next_token_loss`), and evaluation of the small CNN with BatchNorm folded into its
convolutions (:func:`helpers.models.for_inference`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CorruptArtifact, atomic_write_bytes, atomic_write_json, sha256_file
from .models import for_inference

Data = tuple[torch.Tensor, torch.Tensor] | torch.Tensor
Penalty = Callable[[nn.Module], torch.Tensor]
EpochHook = Callable[[int, nn.Module, dict[str, Any]], None]
SCHEDULES = ("constant", "cosine", "linear")
TASKS = ("classify", "lm")
IGNORE = -100  # a token label that is not scored (PyTorch's and transformers' convention)
TENSORBOARD_ENV = "WORKBOOK_TENSORBOARD"  # a folder: every train() call logs a run below it
_RUNS = itertools.count(1)  # numbers the TensorBoard runs of one process in order


@dataclass
class History:
    """Per-epoch measurements of one training run (``.frame()`` gives a DataFrame)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    monitor: str = "val_loss"
    wall_time: float = 0.0
    examples_seen: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()

    def last(self, key: str) -> float:
        return self.rows[-1][key]

    def best(self, key: str | None = None) -> float:
        """The value of ``key`` (default: the monitored metric) at the best epoch."""
        row = next(r for r in self.rows if r["epoch"] == self.best_epoch) if self.best_epoch else self.rows[-1]
        return row[key or self.monitor]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "monitor": self.monitor, "wall_time": self.wall_time,
                "examples_seen": self.examples_seen, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        return cls(**data)


# --- losses and evaluation -----------------------------------------------------------------------

def _forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    out = model(inputs)
    return out.logits if hasattr(out, "logits") else out


class _NextTokenLoss(torch.autograd.Function):
    """Mean cross-entropy of ``logits`` (N x V, float32) against ``targets``, and each row's
    prediction, in fewer passes over the N x V logits than ``F.cross_entropy`` + ``argmax``.

    On a CPU a small GPT's loss is memory passes over the logits, not arithmetic: for the quick GPT
    (2,048 tokens x 2,000 words) the loss and the accuracy are about a fifth of a training step.
    ``F.cross_entropy`` writes the N x V log-probabilities, fills an N x V zero tensor in backward
    and runs the log-softmax backward over both, and the accuracy needs a ``max`` of its own. Here
    one ``max`` gives both the prediction and the softmax's shift; the forward keeps
    ``exp(logits - max)`` and its row sums, so the backward is one in-place scale
    (``softmax = exp / sum``, times the incoming gradient over N) and a scatter at the targets.
    Against the previous version of this function (a log-sum-exp forward, its own ``max`` for the
    accuracy, a three-pass backward): 5 passes instead of 8, a quick GPT step 41.4 -> 40.1 ms. The
    same loss and gradient to float rounding (``tests/test_train.py`` checks both). Backward runs
    once: the saved buffer is overwritten, and autograd refuses a second pass on its own.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, predicted = logits.max(-1)
        exp = torch.sub(logits, shift[:, None]).exp_()
        total = exp.sum(-1)
        loss = (shift + total.log() - logits.gather(1, targets[:, None]).squeeze(1)).mean()
        ctx.save_for_backward(exp, total, targets)
        ctx.mark_non_differentiable(predicted)
        return loss, predicted

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: Any) -> tuple[torch.Tensor, None]:
        exp, total, targets = ctx.saved_tensors
        scale = grad / len(targets)
        out = exp.mul_((scale / total)[:, None])  # softmax x grad / N, in place
        out.scatter_add_(1, targets[:, None], (-scale).expand(len(targets), 1))
        return out, None


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(logits, targets)`` for next-token prediction (every target counted) and
    ``logits.argmax(-1)`` (ties may resolve to another maximal index), together and faster
    (:class:`_NextTokenLoss`)."""
    return _NextTokenLoss.apply(logits, targets)


def batch_loss(model: nn.Module, batch: Data, task: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean loss, number of correct predictions (a tensor, no sync) and batch size."""
    if task == "lm":
        inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)
        logits = _forward(model, inputs)
        flat = logits.reshape(-1, logits.size(-1)).float()  # a no-op in fp32; under bf16 the loss
        loss, predicted = next_token_loss(flat, targets)  # and the prediction read the same fp32 copy
        return loss, (predicted == targets).sum(), targets.numel()
    inputs, labels = batch
    logits = _forward(model, inputs)
    if labels.dim() > 1:  # one label per token (masked LM, tagging); IGNORE marks unlabelled tokens
        logits, labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)
        labelled = labels != IGNORE
        size = int(labelled.sum())  # varies per batch; a batch without labels adds nothing
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum") / max(size, 1)
        return loss, (labelled & (logits.argmax(-1) == labels)).sum(), size
    loss = F.cross_entropy(logits.float(), labels)
    return loss, (logits.argmax(-1) == labels).sum(), labels.numel()


def _size(data: Data) -> int:
    return len(data) if isinstance(data, torch.Tensor) else len(data[0])


def _take(data: Data, index: torch.Tensor, device: torch.device) -> Data:
    if isinstance(data, torch.Tensor):
        return data[index].to(device, non_blocking=True)
    return tuple(t[index].to(device, non_blocking=True) for t in data)  # type: ignore[return-value]


@torch.inference_mode()
def evaluate(model: nn.Module, data: Data, task: str = "classify", batch_size: int = 512,
             device: torch.device | str | None = None, bf16: bool = False) -> dict[str, float]:
    """Loss and accuracy (classify) or loss, perplexity and next-token accuracy (lm) on ``data``.

    Runs under ``torch.inference_mode`` (no autograd bookkeeping at all, cheaper than ``no_grad``)
    in batches of ``batch_size``; losses and counts are summed on the device and read once.
    """
    device = torch.device(device) if device else next(model.parameters()).device
    bf16 = bf16 and bf16_supported(device)
    was_training, original = model.training, model
    model.eval()
    model = for_inference(model)  # a small CNN: BatchNorm folded into its convolutions (about 1.4x faster)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    n = _size(data)
    for start in range(0, n, batch_size):
        batch = _take(data, torch.arange(start, min(start + batch_size, n)), device)
        with attention_kernels(device, bf16), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, right, size = batch_loss(model, batch, task)
        loss_sum += loss.float() * size
        correct += right
        count += size
    if was_training:
        train_mode(original)
    loss = (loss_sum / max(count, 1)).item()
    metrics = {"loss": loss, "acc": correct.item() / max(count, 1)}
    if task == "lm":
        metrics["ppl"] = math.exp(min(loss, 50.0))
    return metrics


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that frozen BatchNorm layers keep using their running statistics.

    A frozen backbone must not drift: in train mode BatchNorm would overwrite the pretrained
    running mean/variance with the new data's, even though no weight is updated.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


# --- optimisation ----------------------------------------------------------------------------------

def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str = "cosine",
                  warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A multiplicative LR schedule: linear warm-up, then constant / cosine / linear decay to 0."""
    if schedule not in SCHEDULES:
        raise ValueError(f"make_schedule: schedule={schedule!r} is not allowed: expected one of {SCHEDULES}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def default_param_groups(model: nn.Module, lr: float, weight_decay: float,
                         include_frozen: bool = False) -> list[dict[str, Any]]:
    """Trainable parameters; no weight decay on biases and norm weights (1-D tensors).

    ``include_frozen`` also hands frozen parameters to the optimizer (they are skipped while they
    have no gradient), for strategies that unfreeze layers during training.
    """
    params = [p for p in model.parameters() if p.requires_grad or include_frozen]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay},
                        {"params": no_decay, "lr": lr, "weight_decay": 0.0}) if g["params"]]


# --- devices ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is supported natively on ``device``: always on a CPU; on a CUDA GPU
    with bf16 arithmetic (compute capability 8.0+, Ampere and newer; older ones would emulate it,
    slowly); on an Apple GPU when a bf16 tensor can be made there (macOS 14+)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch before 2.4 has no including_emulation
            return bool(torch.cuda.is_bf16_supported())
    try:
        torch.ones(1, dtype=torch.bfloat16, device=device) * 2
        return True
    except (RuntimeError, TypeError):
        return False


def attention_kernels(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """Which ``F.scaled_dot_product_attention`` kernels a forward pass may use (a context manager).

    On a CPU under bf16 autocast: the *math* kernel (attention as two matmuls and a softmax, so
    it runs on the fast bf16 matrix units like every other layer), because PyTorch's fused CPU
    "flash" kernel is slow in bf16, its backward above all: measured on the bench GPT (width 128,
    4 layers, 128 tokens) it took 40% of a bf16 training step, making bf16 barely faster than fp32;
    with the math kernel bf16 is about 1.6x faster (``python -m helpers.bench``). Both kernels
    compute the same attention (up to rounding). Elsewhere (fp32, GPUs): PyTorch's own choice.
    """
    if device.type == "cpu" and bf16:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def fused_adam(device: torch.device | str) -> dict[str, bool]:
    """``torch.optim.AdamW``'s ``fused=True`` where torch has that kernel (CPU, CUDA): one pass over
    all parameters instead of a dozen small ops per tensor -- the same update, about 3x cheaper
    (0.31 vs 0.97 ms per step for the small CNN at one thread), which matters when a step is a few ms."""
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}


def use_bf16(requested: bool, device: torch.device) -> bool:
    """``requested`` where the device supports bf16 (:func:`bf16_supported`); a request it cannot
    honour falls back to fp32 with a warning rather than failing or emulating."""
    if requested and not bf16_supported(device):
        warnings.warn(f"bf16 is not supported natively on {device}; training in fp32", stacklevel=3)
        return False
    return requested


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The random generators a resumed run must continue: the CPU's and, when training on a CUDA
    GPU, that GPU's (dropout masks and random augmentations drawn on the GPU use it)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_state(saved: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (a CUDA state only onto a CUDA device)."""
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


# --- TensorBoard -----------------------------------------------------------------------------------

def tensorboard_writer(folder: str | Path | None, desc: str) -> Any:
    """A ``SummaryWriter`` logging to ``folder`` (given to :func:`train`), or to a new run
    ``<$WORKBOOK_TENSORBOARD>/<NNN>-<desc>`` when that variable is set (``python -m helpers.run
    --tensorboard`` sets it per notebook execution); ``None`` when neither asks for logging."""
    if folder is None:
        parent = os.environ.get(TENSORBOARD_ENV)
        if not parent:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in desc) or "train"
        folder = Path(parent) / f"{next(_RUNS):03d}-{safe}"
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(f"TensorBoard logging needs the tensorboard package ({err}); install it "
                          f"with pip install -e '.[tensorboard]' (make does)") from None
    return SummaryWriter(log_dir=str(folder))


def log_epoch(writer: Any, row: dict[str, Any], examples: int) -> None:
    """Write one epoch's scalars: losses and accuracies (``train/loss``, ``val/acc``...), the
    learning rate and the throughput in examples (or target tokens) per second."""
    step = row["epoch"]
    for key, value in row.items():
        if key in ("epoch", "seconds") or not isinstance(value, (int, float)):
            continue
        split, _, metric = key.partition("_")
        writer.add_scalar(f"{split}/{metric}" if metric else key, value, step)
    if row.get("seconds"):
        writer.add_scalar("throughput/examples_per_s", examples / row["seconds"], step)
    writer.flush()


# --- checkpoint state ------------------------------------------------------------------------------

def _save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_json(path.with_suffix(path.suffix + ".sha256"), {"sha256": sha256_file(path)})


def _load_state(path: Path) -> dict[str, Any] | None:
    """The saved training state, or ``None`` if there is none; a corrupt one is reported and ignored."""
    sidecar = path.with_suffix(path.suffix + ".sha256")
    if not path.exists():
        return None
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
        if sha256_file(path) != expected:
            raise CorruptArtifact(f"{path}: sha256 does not match {sidecar.name}")
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, KeyError, ValueError, RuntimeError, CorruptArtifact) as err:
        warnings.warn(f"ignoring unusable training checkpoint, starting afresh: {err}", stacklevel=3)
        return None


# --- the loop --------------------------------------------------------------------------------------

def train(model: nn.Module, train_data: Data, val_data: Data | None = None, *,
          task: str = "classify", epochs: int = 1, lr: float = 1e-3, batch_size: int = 64,
          weight_decay: float = 0.0, param_groups: Sequence[dict[str, Any]] | None = None,
          schedule: str = "cosine", warmup_steps: int = 0, grad_clip: float | None = 1.0,
          bf16: bool = False, device: torch.device | str | None = None, seed: int = 0,
          patience: int | None = None, monitor: str | None = None,
          penalties: Sequence[Penalty] = (), on_epoch_end: Sequence[EpochHook] = (),
          augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
          loss_fn: Callable[[nn.Module, Data, str], tuple[torch.Tensor, torch.Tensor, int]] | None = None,
          on_step: Callable[[int], None] | None = None,
          checkpoint: str | Path | None = None, checkpoint_every: int = 200,
          progress: bool = True, desc: str = "train",
          tensorboard: str | Path | None = None) -> History:
    """Train ``model`` in place and return its :class:`History`.

    ``patience``: stop after that many epochs without improvement of ``monitor`` (default
    ``val_acc`` for classify, ``val_loss`` for lm) and restore the best weights.
    ``param_groups``: optimizer groups (e.g. discriminative learning rates); default: every
    trainable parameter at ``lr``. ``on_step(global_step)`` is called after each step (tests use it
    to simulate an interruption). ``augment(inputs)`` transforms each training batch's inputs (data
    augmentation; it may use torch's global RNG, which checkpoints save). ``loss_fn(model, batch,
    task)`` replaces the default cross-entropy (class weights, focal loss, ...) and returns
    ``(mean loss, correct predictions, batch size)`` like :func:`batch_loss`.
    ``bf16`` autocast is used only where the device supports it (:func:`use_bf16`).
    ``tensorboard``: a folder to log each epoch's scalars to as TensorBoard event files (loss,
    accuracy, learning rate, throughput; see :func:`tensorboard_writer`, which also honours
    ``$WORKBOOK_TENSORBOARD``); off by default. Logging reads only what the epoch row already holds,
    so it changes no number.
    """
    if task not in TASKS:
        raise ValueError(f"train: task={task!r} is not allowed: expected one of {TASKS}")
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"parameter 'lr'={lr!r} is not allowed: expected a finite number > 0")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"'epochs'={epochs!r} and 'batch_size'={batch_size!r} must be >= 1")
    device = torch.device(device) if device else next(model.parameters()).device
    bf16 = use_bf16(bf16, device)
    model.to(device)
    train_mode(model)
    monitor = monitor or ("val_acc" if task == "classify" else "val_loss")
    higher_is_better = monitor.endswith("acc")
    if val_data is None and (patience is not None or monitor.startswith("val_")):
        monitor = "train_loss" if not higher_is_better else "train_acc"

    groups = list(param_groups) if param_groups is not None else default_param_groups(model, lr, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fused_adam(device))
    clipped = [p for g in optimizer.param_groups for p in g["params"]]  # what clipping sees, listed once
    n = _size(train_data)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = make_schedule(optimizer, epochs * steps_per_epoch, schedule, warmup_steps)
    history = History(monitor=monitor)
    start_epoch, start_step, best_value, best_state, bad_epochs = 0, 0, None, None, 0
    sums = torch.zeros(2, device=device)  # loss*size, correct
    count = 0

    checkpoint = Path(checkpoint) if checkpoint else None
    saved = _load_state(checkpoint) if checkpoint else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved, device)
        history = History.from_dict(json.loads(saved["history"]))
        start_epoch, start_step = saved["epoch"], saved["step_in_epoch"]
        best_value, best_state, bad_epochs = saved["best_value"], saved["best_state"], saved["bad_epochs"]
        sums, count = saved["sums"].to(device), saved["count"]
        if saved.get("done"):
            model.load_state_dict(saved["model"])
            return history

    def snapshot(epoch: int, step_in_epoch: int, done: bool = False) -> None:
        if checkpoint is None:
            return
        _save_state(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), **rng_state(device),
            "history": json.dumps(history.to_dict()), "epoch": epoch, "step_in_epoch": step_in_epoch,
            "best_value": best_value, "best_state": best_state, "bad_epochs": bad_epochs,
            "sums": sums.cpu(), "count": count, "done": done})

    from tqdm.auto import tqdm

    writer = tensorboard_writer(tensorboard, desc)
    bar = tqdm(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch + start_step,
               desc=desc, disable=not progress, leave=False)
    clock = time.perf_counter()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            # The data order depends only on (seed, epoch): a resumed run sees the same batches.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            epoch_clock = time.perf_counter()
            for step in range(start_step if epoch == start_epoch else 0, steps_per_epoch):
                batch = _take(train_data, order[step * batch_size:(step + 1) * batch_size], device)
                if augment is not None:
                    batch = (augment(batch[0]), *batch[1:]) if isinstance(batch, tuple) else augment(batch)
                with attention_kernels(device, bf16), \
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, correct, size = (loss_fn or batch_loss)(model, batch, task)
                    total = loss
                    for penalty in penalties:
                        total = total + penalty(model)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(clipped, grad_clip)
                optimizer.step()
                scheduler.step()
                sums += torch.stack([loss.detach().float() * size, correct.float()])
                count += size
                bar.update(1)
                global_step = epoch * steps_per_epoch + step + 1
                if checkpoint is not None and global_step % checkpoint_every == 0:
                    snapshot(epoch, step + 1)
                if on_step is not None:
                    on_step(global_step)

            loss_sum, correct_sum = sums.tolist()  # the one host sync per epoch
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / count,
                                   "train_acc": correct_sum / count, "lr": scheduler.get_last_lr()[0],
                                   "seconds": time.perf_counter() - epoch_clock}
            history.examples_seen += count  # images, or target tokens for lm
            examples = count
            sums.zero_()
            count = 0
            if val_data is not None:
                metrics = evaluate(model, val_data, task, batch_size=max(batch_size, 256), device=device, bf16=bf16)
                row.update({f"val_{k}": v for k, v in metrics.items()})
            if task == "lm":
                row["train_ppl"] = math.exp(min(row["train_loss"], 50.0))
            for hook in on_epoch_end:
                hook(epoch + 1, model, row)
            history.rows.append(row)
            if writer is not None:
                log_epoch(writer, row, examples)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("train_loss", monitor)})

            value = row[monitor]
            improved = best_value is None or (value > best_value if higher_is_better else value < best_value)
            if improved:
                best_value, bad_epochs, history.best_epoch = value, 0, epoch + 1
                if patience is not None:
                    best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            snapshot(epoch + 1, 0)
            if patience is not None and bad_epochs > patience:
                history.stopped_early = True
                break
    except KeyboardInterrupt:
        if checkpoint is not None and checkpoint.exists():
            print(f"\ninterrupted: the last saved state is in {checkpoint}; call train() again to resume")
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        history.wall_time += time.perf_counter() - clock

    if patience is not None and best_state is not None:
        model.load_state_dict(best_state)  # early stopping keeps the best epoch's weights
    snapshot(epoch + 1, 0, done=True)
    return history

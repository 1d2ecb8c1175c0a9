"""The hyperparameters of fine-tuning, measured (notebook 09).

Fine-tuning recipes read "AdamW, learning rate 3e-3, cosine schedule, weight decay 1e-4" as if the
numbers were facts. They are choices, and how much they matter depends on *what* trains. Here:

* :class:`Sweep` -- fine-tune the pretrained CNN many times on one task and remember every run:
  ``full_ft`` (every weight trains) and ``linear_probe`` (a linear head on frozen features, which
  are computed once per seed and reused by every probe run). One :class:`Trial` is a learning rate,
  a batch size, a schedule (:data:`SCHEDULES`: ``constant``, ``cosine``, ``warmup_cosine`` = a
  linear warm-up over :data:`WARMUP_FRACTION` of the steps, then cosine decay) and an AdamW weight
  decay; the sweep is a *coarse* grid (learning rate x schedule, plus batch-size and weight-decay
  slices around the best rate), not the full product, so it fits two CPU cores. Runs are memoised:
  asking for the same trial twice trains once.
* :func:`sensitivity` -- how wide is the good region? The number of grid learning rates whose mean
  accuracy is within ``tolerance`` of the best, and the span they cover in decades.
* :func:`lr_range_test` -- Smith's learning-rate range test ("LR finder", Smith 2015/2017): one
  short run whose learning rate grows exponentially every step; the loss first does not move (too
  small), then falls fastest, then blows up (too large). :func:`suggest_lr` reads a rate off the
  smoothed loss curve: the steepest descent, or the minimum's rate divided by 10.
* :func:`methods_lr_table` -- notebook 03's methods, each at its own best learning rate from a small
  sweep, next to their accuracy at the profile's one rate: does the ranking survive?

Selection always uses the validation split; test accuracy is only reported.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .config import check_knob
from .finetuning import epochs_for, extract_features, finetune
from .models import SmallResNet, new_head, set_trainable
from .train import batch_loss, evaluate, train, train_mode

if TYPE_CHECKING:
    import pandas as pd

    from .vision import TargetTask

SCHEDULES = ("constant", "cosine", "warmup_cosine")
SWEEP_METHODS = ("full_ft", "linear_probe")
WARMUP_FRACTION = 0.1  # warmup_cosine warms up linearly over this share of the steps


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: which method, and the four hyperparameters it trains with."""

    method: str
    lr: float
    batch_size: int
    schedule: str
    weight_decay: float
    seed: int

    def __post_init__(self) -> None:
        if self.method not in SWEEP_METHODS:
            raise ValueError(f"Trial: method={self.method!r} is not allowed: expected one of {SWEEP_METHODS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Trial: schedule={self.schedule!r} is not allowed: expected one of {SCHEDULES}")


def train_schedule(schedule: str, total_steps: int) -> dict[str, Any]:
    """The :func:`helpers.train.train` arguments of a sweep schedule name."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not allowed: expected one of {SCHEDULES}")
    if schedule == "warmup_cosine":
        return {"schedule": "cosine", "warmup_steps": max(1, round(WARMUP_FRACTION * total_steps))}
    return {"schedule": schedule, "warmup_steps": 0}


def check_factors(name: str, factors: Sequence[float]) -> list[float]:
    """A list of learning-rate multiples (knob ``name``) that includes 1, the profile's rate."""
    factors = check_knob(name, list(factors))
    if not factors or not any(math.isclose(f, 1.0) for f in factors):
        raise ValueError(f"parameter {name!r}={factors!r} is not allowed: expected a list of multiples of lr "
                         f"that includes 1 (the profile's learning rate, the reference)")
    return sorted(set(factors))


class Sweep:
    """Fine-tuning runs of one task from one pretrained model, memoised by :class:`Trial`.

    ``steps`` optimisation steps per run whatever the batch size (as in notebook 03), on
    ``budget`` labelled examples per class drawn with each trial's seed. Each run records the
    validation accuracy (what selection uses; the test set is left for :func:`methods_lr_grid`) and
    the final train loss.
    """

    def __init__(self, task: TargetTask, pretrained: SmallResNet, *, budget: int, steps: int,
                 bf16: bool = False, device: torch.device | str = "cpu"):
        self.task, self.pretrained, self.budget, self.steps = task, pretrained, budget, steps
        self.bf16, self.device = bf16, device
        self._runs: dict[Trial, dict[str, Any]] = {}
        self._features: dict[int, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def _probe_features(self, seed: int) -> tuple[torch.Tensor, ...]:
        """(train features, labels, val features) of ``seed``, computed once."""
        if seed not in self._features:
            images, labels = self.task.budget(self.budget, seed)
            model = self.pretrained.to(self.device)
            self._features[seed] = (extract_features(model, images), labels,
                                    extract_features(model, self.task.val[0]))
        return self._features[seed]

    def run(self, trial: Trial) -> dict[str, Any]:
        """Train ``trial`` (or return its memoised row): the trial's fields plus accuracies and loss."""
        if trial in self._runs:
            return self._runs[trial]
        torch.manual_seed(trial.seed)
        model = new_head(copy.deepcopy(self.pretrained), self.task.num_classes, seed=trial.seed).to(self.device)
        if trial.method == "linear_probe":
            train_x, train_y, val_x = self._probe_features(trial.seed)
            epochs, batch = epochs_for(len(train_x), trial.batch_size, self.steps)
            head = model.head
            history = train(head, (train_x, train_y), epochs=epochs, lr=trial.lr, batch_size=batch,
                            weight_decay=trial.weight_decay, seed=trial.seed, progress=False, device=self.device,
                            **train_schedule(trial.schedule, epochs * math.ceil(len(train_x) / batch)))
            val = evaluate(head, (val_x, self.task.val[1]))["acc"]
        else:
            data = self.task.budget(self.budget, trial.seed)
            epochs, batch = epochs_for(len(data[0]), trial.batch_size, self.steps)
            history = train(model, data, epochs=epochs, lr=trial.lr, batch_size=batch,
                            weight_decay=trial.weight_decay, seed=trial.seed, bf16=self.bf16, progress=False,
                            device=self.device, **train_schedule(trial.schedule, epochs * math.ceil(len(data[0]) / batch)))
            val = evaluate(model, self.task.val, bf16=self.bf16)["acc"]
        loss = history.last("train_loss")
        row = {**asdict(trial), "val_acc": val,
               "train_loss": loss if math.isfinite(loss) else float("nan"), "seconds": history.wall_time}
        self._runs[trial] = row
        return row

    def grid(self, methods: Iterable[str], lrs: Iterable[float], batch_sizes: Iterable[int],
             schedules: Iterable[str], weight_decays: Iterable[float], seeds: Iterable[int]) -> pd.DataFrame:
        """Every combination of the given values (keep each list short: this is a product), one row per run."""
        import itertools

        import pandas as pd

        rows = [self.run(Trial(m, float(lr), int(b), s, float(wd), int(seed)))
                for m, lr, b, s, wd, seed in itertools.product(methods, lrs, batch_sizes, schedules,
                                                               weight_decays, seeds)]
        return pd.DataFrame(rows)

    def frame(self) -> pd.DataFrame:
        """Every run made so far."""
        import pandas as pd

        return pd.DataFrame(list(self._runs.values()))


def mean_over_seeds(runs: pd.DataFrame, by: Sequence[str], column: str = "val_acc") -> pd.DataFrame:
    """``runs`` averaged over seeds: one row per combination of ``by``, with ``<column>_mean``/``_std``."""
    from .metrics import mean_std

    return mean_std(runs, list(by), [column]).reset_index()


def pivot(runs: pd.DataFrame, rows: str, columns: str = "lr", value: str = "val_acc") -> pd.DataFrame:
    """Mean over seeds of ``value`` as a matrix (``rows`` x ``columns``): a heat map's numbers."""
    return runs.groupby([rows, columns])[value].mean().unstack(columns).sort_index(axis=1)


def sensitivity(curve: pd.Series, tolerance: float) -> dict[str, float]:
    """How forgiving is a method about its learning rate?

    ``curve``: mean accuracy indexed by learning rate (one row of :func:`pivot`). The *good region*
    is every learning rate within ``tolerance`` of the best accuracy. Returns the best rate and
    accuracy, the number of good grid points, and the good region's lowest and highest rate and its
    span in decades (log10 of their ratio; 0 when only one rate is good).
    """
    curve = curve.dropna().sort_index()
    if curve.empty:
        raise ValueError("sensitivity: the curve has no finite accuracies")
    best = float(curve.max())
    good = curve[curve >= best - tolerance]
    low, high = float(good.index.min()), float(good.index.max())
    return {"best_lr": float(curve.idxmax()), "best_acc": best, "good_points": int(len(good)),
            "good_low": low, "good_high": high, "span_decades": math.log10(high / low)}


def in_good_region(lr: float, region: Mapping[str, float], grid: Sequence[float], reach: float = 0.5) -> bool:
    """Does ``lr`` fall within the good region, widened by ``reach`` grid steps (in log space)?

    A sweep only knows the rates it tried: a rate between a good grid point and its worse neighbour
    is unknown territory. ``reach=0.5`` widens the region by half the grid's spacing on each side;
    anything below 1 stays short of the neighbouring rates the sweep found worse.
    """
    if not 0 <= reach < 1:
        raise ValueError(f"'reach'={reach!r} is not allowed: expected a fraction of a grid step in [0, 1)")
    logs = np.log10(sorted(grid))
    widen = reach * (float(np.min(np.diff(logs))) if len(logs) > 1 else 0.5)
    x = math.log10(lr)
    return math.log10(region["good_low"]) - widen <= x <= math.log10(region["good_high"]) + widen


# --- the learning-rate range test -----------------------------------------------------------------

def lr_range_test(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], *, start_lr: float = 1e-6,
                  end_lr: float = 10.0, steps: int = 100, batch_size: int = 32, seed: int = 0,
                  weight_decay: float = 0.0, stop_factor: float = 4.0, beta: float = 0.9,
                  device: torch.device | str = "cpu") -> pd.DataFrame:
    """Smith's learning-rate range test: one short run whose rate grows by the same factor each step.

    The rate goes from ``start_lr`` to ``end_lr`` in ``steps`` AdamW steps (``lr_k = start_lr *
    (end_lr / start_lr) ** (k / (steps - 1))``), one batch each. The loss of every step is smoothed
    with an exponential moving average (``beta``, bias-corrected, as fastai does) and the run stops
    early once the smoothed loss exceeds ``stop_factor`` x its minimum: the rate is then far too
    high. ``model`` is trained in place (pass a copy). Returns one row per step: ``lr``, ``loss``,
    ``smoothed``. ``end_lr=10`` is fastai's default: a range that ends at 1 stopped a frozen backbone's
    linear head (which tolerates high rates) before its loss turned up, so its minimum was the range's
    end (see :func:`ran_past_minimum`).
    """
    import pandas as pd

    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_range_test: expected 0 < start_lr < end_lr, got {start_lr!r}, {end_lr!r}")
    if steps < 5:
        raise ValueError(f"parameter 'lr_finder_steps'={steps!r} is not allowed: expected at least 5 steps")
    model.to(device)
    train_mode(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=start_lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(data[0])
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    rows, average, best = [], 0.0, math.inf
    order = torch.randperm(n, generator=gen)
    position = 0
    for step in range(steps):
        lr = start_lr * growth**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=gen), 0
        index = order[position:position + batch_size]
        position += batch_size
        loss, _, _ = batch_loss(model, (data[0][index].to(device), data[1][index].to(device)), "classify")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = beta * average + (1 - beta) * value
        smoothed = average / (1 - beta ** (step + 1))
        rows.append({"step": step, "lr": lr, "loss": value, "smoothed": smoothed})
        best = min(best, smoothed)
        if step > 0 and smoothed > stop_factor * best:
            break
    return pd.DataFrame(rows)


def suggest_lr(curve: pd.DataFrame, skip_start: int = 5) -> dict[str, float]:
    """Two classic readings of an LR range test's smoothed loss (``curve`` from :func:`lr_range_test`).

    * ``steepest``: the rate where the smoothed loss falls fastest per decade of learning rate
      (the most negative slope of loss against log10(lr), ignoring the first ``skip_start`` steps,
      where the moving average is still warming up);
    * ``min_over_10``: the rate of the lowest smoothed loss, divided by 10 (at the minimum the rate is
      already at the edge of instability).
    """
    curve = curve.reset_index(drop=True)
    if len(curve) < skip_start + 3:
        raise ValueError(f"suggest_lr: the range test has only {len(curve)} steps; expected at least "
                         f"{skip_start + 3} (raise lr_finder_steps)")
    part = curve.iloc[skip_start:]
    slope = np.gradient(part["smoothed"].to_numpy(), np.log10(part["lr"].to_numpy()))
    return {"steepest": float(part["lr"].iloc[int(np.argmin(slope))]),
            "min_over_10": float(curve["lr"].iloc[int(curve["smoothed"].idxmin())] / 10)}


def ran_past_minimum(curve: pd.DataFrame) -> bool:
    """Did the range test's smoothed loss turn up before the test ended?

    If its lowest loss is at the last step, the rate never got high enough to hurt: the minimum (and
    ``min_over_10``) is only the range's end, a lower bound. Raise ``end_lr`` then.
    """
    curve = curve.reset_index(drop=True)
    return int(curve["smoothed"].idxmin()) < len(curve) - 1


def range_test_model(pretrained: SmallResNet, method: str, num_classes: int, seed: int) -> nn.Module:
    """The model a method's range test trains: the whole network (full_ft) or only its new head
    on frozen features (linear_probe; BatchNorm statistics stay pretrained)."""
    if method not in SWEEP_METHODS:
        raise ValueError(f"range_test_model: method={method!r} is not allowed: expected one of {SWEEP_METHODS}")
    torch.manual_seed(seed)
    model = new_head(copy.deepcopy(pretrained), num_classes, seed=seed)
    if method == "linear_probe":
        set_trainable(model.backbone, False)
    return model


def lr_finder(sweep: Sweep, method: str, seed: int, *, steps: int, batch_size: int,
              start_lr: float = 1e-6, end_lr: float = 10.0) -> tuple[pd.DataFrame, dict[str, float]]:
    """The range test of ``method`` on the sweep's data for ``seed``: its curve and suggestions."""
    data = sweep.task.budget(sweep.budget, seed)
    model = range_test_model(sweep.pretrained, method, sweep.task.num_classes, seed)
    curve = lr_range_test(model, data, start_lr=start_lr, end_lr=end_lr, steps=steps, batch_size=batch_size,
                          seed=seed, device=sweep.device)
    return curve, suggest_lr(curve)


# --- notebook 03's methods, each at its own learning rate -----------------------------------------

COMPARED_METHODS = ("scratch", "linear_probe", "full_ft", "lp_ft", "discriminative_lr")


def methods_lr_grid(task: TargetTask, pretrained: SmallResNet | Mapping[int, SmallResNet], methods: Sequence[str], factors: Sequence[float],
                    seeds: Sequence[int], *, lr: float, budget: int, steps: int, batch_size: int, width: int,
                    weight_decay: float, bf16: bool, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Each of notebook 03's methods (:func:`helpers.finetuning.finetune`) at ``lr * factor`` for every
    factor and seed: one row each with the validation and test accuracy.

    The factor multiplies the rate ``finetune`` is given; its own conventions stay (the linear probe's
    head trains at 3x, LP-FT's second phase at 1/2, discriminative rates divide it per layer), so
    factor 1 is exactly notebook 03's run. ``pretrained``: one model, or one per seed (``{seed: model}``,
    :func:`helpers.transfer.model_for_seed`), so a gap to scratch is measured over pretraining seeds too.
    """
    from .transfer import model_for_seed

    import pandas as pd

    check_knob("methods", list(methods))
    factors = check_factors("method_lr_factors", factors)
    rows = []
    for seed in seeds:
        labelled = task.budget(budget, seed)
        for method in methods:
            for factor in factors:
                tuned = finetune(method, model_for_seed(pretrained, seed), labelled, num_classes=task.num_classes, steps=steps,
                                 lr=lr * factor, batch_size=batch_size, seed=seed, width=width,
                                 weight_decay=weight_decay, bf16=bf16, device=device)
                rows.append({"method": method, "factor": factor, "lr": lr * factor, "seed": seed,
                             "val_acc": evaluate(tuned.model, task.val, bf16=bf16)["acc"],
                             "test_acc": evaluate(tuned.model, task.test, bf16=bf16)["acc"]})
    return pd.DataFrame(rows)


def methods_lr_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: test accuracy at the profile's rate (factor 1) and at its own best factor (chosen
    on validation accuracy, mean over seeds), with the rank of each (1 = best)."""
    mean = runs.groupby(["method", "factor"], sort=False)[["val_acc", "test_acc"]].mean().reset_index()
    rows = []
    for method, part in mean.groupby("method", sort=False):
        at_one = part[np.isclose(part["factor"], 1.0)].iloc[0]
        best = part.loc[part["val_acc"].idxmax()]
        rows.append({"method": method, "test_acc_at_profile_lr": at_one["test_acc"],
                     "best_factor": best["factor"], "test_acc_at_own_best_lr": best["test_acc"],
                     "gain": best["test_acc"] - at_one["test_acc"]})
    import pandas as pd

    table = pd.DataFrame(rows).set_index("method")
    table["rank_at_profile_lr"] = table["test_acc_at_profile_lr"].rank(ascending=False, method="min").astype(int)
    table["rank_at_own_best_lr"] = table["test_acc_at_own_best_lr"].rank(ascending=False, method="min").astype(int)
    return table

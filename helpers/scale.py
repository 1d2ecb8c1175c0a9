"""The scale of pretraining: what more (and more varied) pretraining data buys downstream (notebook 10).

The articles say pretraining *needs massive, diverse data*. Here that sentence is measured, not
assumed, on both tracks:

* **images** -- :func:`pretrain_glyphs` pretrains the small ResNet on a growing number of
  *distinct* generated glyph images (or, at a fixed number, a growing number of glyph classes),
  always for the **same number of images processed** (``scale_pretrain_images``): a small set is
  simply repeated more often. So every model costs the same compute, and a difference downstream
  is what the *data* bought, not extra training. :func:`cnn_downstream` then fine-tunes each model
  (and a from-scratch baseline) at a few label budgets and fits a linear probe on its frozen
  features;
* **text** -- :func:`pretrain_gpt_on` pretrains the tiny GPT on a fraction of the pretraining
  blocks for some passes: fractions read once grow data *and* compute together (the scaling-law
  axis, tokens), while the same token count read from a k-times smaller set repeated k times
  separates *distinct text* from *more steps* (:func:`gpt_runs`). Validation perplexity is scored on
  the same held-out blocks for every model; the downstream number is 04's docstring task, with a
  linear head on the frozen GPT.

Every pretraining run goes through :func:`helpers.checkpoints.load_or_train` (or
:func:`helpers.text.load_or_pretrain`), keyed by everything that determines it, so a rerun loads
them and two processes build each once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from . import config, data
from .checkpoints import load_or_train
from .models import RESNET_VERSION, SmallResNet, count_parameters

if TYPE_CHECKING:
    import pandas as pd

SCALE_VERSION = 1  # bump when anything here changes what is cached: old checkpoints are then not used
DATA_ORDER_SEED = 0  # the one fixed order the token fractions are cut from (nested: 1/8 is inside 1/4)


# --- images ----------------------------------------------------------------------------------------

def diversity_sizes(images: int, classes: Sequence[int]) -> list[tuple[int, int]]:
    """``(glyph_classes, glyphs_per_class)`` holding about ``images`` images at each number of classes.

    >>> diversity_sizes(2400, [10, 20, 40])
    [(10, 240), (20, 120), (40, 60)]
    """
    sizes = []
    for n in classes:
        per_class = images // n
        if per_class < 1:
            raise ValueError(f"parameter 'scale_diversity_images'={images} is not allowed with "
                             f"scale_glyph_classes={list(classes)}: each class needs at least one image")
        sizes.append((int(n), int(per_class)))
    return sizes


def epochs_for_images(train_images: int, images: int) -> int:
    """Passes over ``train_images`` that process about ``images`` images (at least one pass).

    >>> epochs_for_images(360, 6400), epochs_for_images(5760, 6400)
    (18, 1)
    """
    if train_images < 1 or images < 1:
        raise ValueError(f"epochs_for_images: train_images={train_images} and images={images} must be >= 1")
    return max(1, round(images / train_images))


def glyph_pretrain_config(params: Mapping[str, Any], glyph_classes: int, glyphs_per_class: int,
                          seed: int) -> dict[str, Any]:
    """Everything that determines one scale-study pretraining's weights (its checkpoint's key)."""
    return {"version": SCALE_VERSION, "objective": "supervised", "resnet": RESNET_VERSION,
            "glyph_classes": glyph_classes, "glyphs_per_class": glyphs_per_class,
            "images_processed": params["scale_pretrain_images"], "seed": seed,
            "batch_size": params["scale_batch_size"],
            **{k: params[k] for k in ("width", "lr", "bf16", "weight_decay")}}


def pretrain_glyphs(params: Mapping[str, Any], glyph_classes: int, glyphs_per_class: int, seed: int,
                    device: torch.device | str = "cpu", progress: bool = False) -> tuple[SmallResNet, dict[str, Any]]:
    """The small ResNet pretrained (supervised) on ``glyph_classes x glyphs_per_class`` generated glyphs.

    Whatever the size, it processes about ``params["scale_pretrain_images"]`` images (a small set
    is read for more epochs: :func:`epochs_for_images`) in steps of ``scale_batch_size`` images, at
    the profile's ``width``, ``lr``, ``bf16`` and ``weight_decay``; 10% of the glyphs are held out
    (:data:`helpers.vision.PRETRAIN_SPLIT`). Loaded when a verified checkpoint exists, else trained
    and saved (kind ``cnn-scale``). Returns the model and a summary: ``images`` (distinct),
    ``epochs``, ``images_seen``, ``glyph_val_acc``, ``wall_time``, ``flops``, ``trained``.
    """
    from .train import train
    from .vision import PRETRAIN_SPLIT, forward_flops

    budget = params["scale_pretrain_images"]
    key = glyph_pretrain_config(params, glyph_classes, glyphs_per_class, seed)
    images, labels = data.glyph_dataset(glyph_classes, glyphs_per_class, seed=seed)
    seen, held_out = data.stratified_split(labels, PRETRAIN_SPLIT, seed=seed)
    epochs = epochs_for_images(len(seen), budget)
    torch.manual_seed(seed)
    model = SmallResNet(glyph_classes, width=params["width"])
    flops = forward_flops(model, images[:1])

    def train_fn(net: torch.nn.Module) -> dict[str, Any]:
        history = train(net.to(device), (images[seen], labels[seen]), (images[held_out], labels[held_out]),
                        epochs=epochs, lr=params["lr"], batch_size=params["scale_batch_size"], bf16=params["bf16"],
                        device=device, seed=seed, weight_decay=params["weight_decay"], progress=progress,
                        desc=f"pretrain {glyph_classes}x{glyphs_per_class} glyphs")
        return {"images": len(labels), "epochs": epochs, "images_seen": history.examples_seen,
                "glyph_val_acc": history.last("val_acc"), "wall_time": history.wall_time,
                "flops": 3 * flops * history.examples_seen, "params": count_parameters(net)}

    summary = load_or_train("cnn-scale", key, model, train_fn)
    return model.to(device), summary


def cnn_downstream(task, pretrained: SmallResNet | None, budgets: Sequence[int], seed: int, *, steps: int,
                   lr: float, batch_size: int, width: int, bf16: bool,
                   device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """What one pretrained model (or ``None``: training from scratch) is worth on the real digits.

    For each label budget (examples per class, drawn with ``seed``): full fine-tuning's test
    accuracy (``finetune_acc``; from scratch when ``pretrained`` is None) and the test accuracy of a
    logistic-regression probe on the frozen features (``probe_acc``; NaN for scratch, which has no
    features worth probing). One row per budget.
    """
    from .finetuning import finetune
    from .train import evaluate
    from .vision import linear_probe

    config.check_budgets("scale_budgets", list(budgets), task.max_budget, f"{task.name} pool")
    rows = []
    for budget in budgets:
        labelled = task.budget(budget, seed)
        method = "scratch" if pretrained is None else "full_ft"
        tuned = finetune(method, pretrained, labelled, num_classes=task.num_classes, steps=steps, lr=lr,
                         batch_size=batch_size, seed=seed, width=width, bf16=bf16, device=device)
        rows.append({"budget": budget, "seed": seed,
                     "finetune_acc": evaluate(tuned.model, task.test, bf16=bf16)["acc"],
                     "probe_acc": math.nan if pretrained is None else linear_probe(pretrained, labelled, task.test)})
    return rows


def paired(table: "pd.DataFrame", column: str, **where: Any) -> list[float]:
    """``column`` of the rows matching ``where``, one value per seed in seed order (for paired claims).

    Raises ``ValueError`` when a seed has no row or several, so a claim never pairs the wrong runs.
    """
    rows = table
    for name, value in where.items():
        rows = rows[rows[name] == value]
    if rows["seed"].duplicated().any() or rows.empty:
        raise ValueError(f"paired: expected one row per seed for {where}, got {len(rows)} rows "
                         f"(seeds {rows['seed'].tolist()})")
    return rows.sort_values("seed")[column].astype(float).tolist()


# --- text ------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _scaled_corpus_class():
    """Built on first use, so importing this module does not import the text track."""
    from .text.lm import LMCorpus

    @dataclass
    class ScaledCorpus(LMCorpus):
        """An :class:`~helpers.text.lm.LMCorpus` whose training blocks are a subset of another's.

        Its ``sha256`` (the GPT checkpoint's data key) names the parent text *and* the subset, so
        a model pretrained on 1/8 of the blocks is never mistaken for one pretrained on all of them.
        """

        subset: str = ""

        @property
        def sha256(self) -> str:
            return hashlib.sha256(f"{super().sha256}|{self.subset}".encode()).hexdigest()

    return ScaledCorpus


def token_subset(corpus, fraction: float):
    """``corpus`` with the first ``fraction`` of its training blocks in one fixed random order.

    The order (:data:`DATA_ORDER_SEED`) is the same for every fraction and every seed, so the
    subsets are nested and a seed changes only the model's initialisation and batch order. The
    validation blocks are kept whole: every model is scored on the same held-out text.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"parameter 'scale_token_fractions' holds {fraction!r}: expected fractions in (0, 1]")
    n = max(1, round(fraction * len(corpus.train)))
    order = torch.randperm(len(corpus.train), generator=torch.Generator().manual_seed(DATA_ORDER_SEED))
    blocks = corpus.train[order[:n]]
    return _scaled_corpus_class()(corpus.text, corpus.tokenizer, blocks, corpus.val,
                                  subset=f"scale v{SCALE_VERSION}: first {n} of {len(corpus.train)} blocks, "
                                         f"order seed {DATA_ORDER_SEED}")


def pretrain_gpt_on(params: Mapping[str, Any], corpus, fraction: float, passes: int, seed: int,
                    device: torch.device | str = "cpu", progress: bool = False):
    """The profile's GPT pretrained on ``fraction`` of ``corpus``'s training blocks, read ``passes`` times.

    Uses :func:`helpers.text.pretrain_gpt` (same architecture, recipe and checkpoint store) with the
    subset as its corpus and ``lm_epochs = passes``.
    """
    from .text import pretrain_gpt

    settings = config.Params(params)
    settings["seed"], settings["lm_epochs"] = seed, passes
    return pretrain_gpt(settings, device, corpus=token_subset(corpus, fraction), progress=progress)


def gpt_runs(fractions: Sequence[float], passes: int, repeats: int) -> list[dict[str, Any]]:
    """The GPT pretraining runs of the notebook: what each reads and how often.

    * ``ladder``: every fraction, read ``passes`` times (tokens grow with the fraction);
    * ``repeated``: the largest fraction's token count read from a ``repeats``-times smaller
      fraction, ``repeats x passes`` times -- the same tokens and steps as the ladder's top, from
      less distinct text.

    >>> [(r["kind"], r["fraction"], r["passes"]) for r in gpt_runs([0.25, 0.5], 1, 2)]
    [('ladder', 0.25, 1), ('ladder', 0.5, 1), ('repeated', 0.25, 2)]
    """
    fractions = sorted(set(fractions))
    if repeats < 2:
        raise ValueError(f"parameter 'scale_repeats'={repeats} is not allowed: expected at least 2 (a text read "
                         f"once is not repeated)")
    runs = [{"kind": "ladder", "fraction": f, "passes": passes} for f in fractions]
    runs.append({"kind": "repeated", "fraction": fractions[-1] / repeats, "passes": passes * repeats})
    return runs


def frozen_text_accuracy(base, task, pool: torch.Tensor, test: torch.Tensor, budget: int, seed: int, *,
                         task_len: int, steps: int, lr: float, batch_size: int, bf16: bool,
                         device: torch.device | str = "cpu") -> float:
    """Test accuracy of a linear head on the frozen pretrained GPT (04's ``frozen`` method).

    The head sees ``budget`` labelled docstrings per class drawn with ``seed`` from ``pool``; only
    the representation differs between pretrained models, so this reads what pretraining put there.
    """
    from .text import encode_texts, finetune_text

    ids = encode_texts(base.tokenizer, task.texts, task_len)
    chosen = data.label_budget(task.labels, budget, seed=seed, indices=pool)
    run = finetune_text("frozen", base, (ids[chosen], task.labels[chosen]), (ids[test], task.labels[test]),
                        num_classes=len(task.classes), steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                        bf16=bf16, device=device, measure=False)
    return float(run.accuracy)


def log_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``y`` against ``log2(x)``: the change per doubling of ``x``.

    >>> round(log_slope([1, 2, 4, 8], [0.5, 0.6, 0.7, 0.8]), 3)
    0.1
    """
    x, y = np.log2(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("log_slope: needs at least two different x values")
    return float(np.polyfit(x, y, 1)[0])


def scale_figure(table: "pd.DataFrame", x: str, columns: Sequence[tuple[str, str]], *, xlabel: str,
                 ylabel: str, title: str, baseline: Mapping[str, float] | None = None, logy: bool = False):
    """Curves of ``table``'s columns against ``x`` (log scale), mean over seeds with a band of +-1 std.

    ``columns``: ``(column, label)`` pairs; ``table`` needs a ``seed`` column. ``baseline``: labels
    and values drawn as horizontal dashed lines (e.g. training from scratch).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for column, label in columns:
        stats = table.groupby(x)[column].agg(["mean", "std"]).fillna(0.0)
        line, = ax.plot(stats.index, stats["mean"], marker="o", label=label)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=line.get_color(), alpha=0.2)
    for label, value in (baseline or {}).items():
        ax.axhline(value, linestyle="--", color="grey", linewidth=1)
        ax.annotate(label, (ax.get_xlim()[0], value), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

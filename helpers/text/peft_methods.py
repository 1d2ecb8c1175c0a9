"""Parameter-efficient fine-tuning (PEFT) of the pretrained GPT classifier, as the articles name it
(notebook 04): which weights each method trains, what it must store, and what it forgets.

Each method freezes the pretrained body and trains something small beside the head:

==========  =====================================================================================
``bitfit``   only the biases and LayerNorm weights of the body (Ben Zaken et al., 2022); the base
             weights themselves change, so the method cannot be removed afterwards
``lora``     low-rank updates ``W + B A`` of chosen layers (Hu et al., 2021; ``peft.LoraConfig``)
``ia3``      learned rescaling vectors of keys, values and MLP inputs (Liu et al., 2022; ``peft``)
``adapter``  a small bottleneck MLP after each attention and MLP output (Houlsby et al., 2019):
             :class:`Bottleneck`, inserted by :func:`add_adapters` (the ``adapters`` library
             would downgrade ``transformers``, so these twenty lines stand in for it)
``prefix``   learned keys and values prepended in every layer (Li & Liang, 2021; ``peft``)
``prompt``   learned input embeddings prepended to the text (Lester et al., 2021; ``peft``)
==========  =====================================================================================

:func:`prepare` wraps a :class:`~helpers.text.finetune.GPTClassifier` for one method and returns
what saving its per-task checkpoint takes; :func:`english_perplexity` reads the pretraining domain
back through the tuned body (the forgetting column of notebook 04's table).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import save_tensors
from ..models import set_trainable
from .lm import quiet_transformers

if TYPE_CHECKING:
    import pandas as pd

    from .finetune import GPTClassifier

#: The PEFT methods :func:`prepare` builds.
PEFT_METHODS: tuple[str, ...] = ("bitfit", "lora", "ia3", "adapter", "prefix", "prompt")
#: Methods whose per-task state sits *beside* the pretrained weights, which they leave untouched:
#: removing it gives back the pretrained model exactly, so it forgets nothing once removed.
REMOVABLE: tuple[str, ...] = ("frozen", "lora", "ia3", "adapter", "prefix", "prompt")
#: Virtual tokens of prefix and prompt tuning; they take positions from the text (GPT-2 has ``n_positions``).
VIRTUAL_TOKENS = 8
#: Hidden width of each bottleneck adapter.
ADAPTER_SIZE = 16

#: The GPT-2 layers LoRA adapts: the attention's query/key/value projection (as in the LoRA paper)
#: and the token embeddings. On a model this small, whose features are far from the task, which
#: *words* matter has to be learned; LoRA on attention alone cannot change that (measured in the quick
#: profile while choosing these targets: about 13 accuracy points below full fine-tuning at 32 labels per
#: class, against about 5 with embeddings; ``lora_ablation(..., target_sets=...)`` measures it again).
LORA_TARGETS: tuple[str, ...] = ("wte", "c_attn")
#: Target sets of notebook 04's LoRA ablation (``c_proj`` names both the attention output and the
#: MLP output projection; ``c_fc`` is the MLP input).
LORA_TARGET_SETS: dict[str, tuple[str, ...]] = {"emb+attention": LORA_TARGETS,
                                                "emb+attention+MLP": ("wte", "c_attn", "c_proj", "c_fc")}


def lora_config(rank: int, targets: Sequence[str] = LORA_TARGETS, alpha: float | None = None, **extra: Any):
    """The text track's one LoRA configuration (``peft.LoraConfig``) for GPT-2 layers ``targets``.

    Each targeted weight ``W`` becomes ``W + (alpha / rank) B A`` with small trainable ``A`` and
    ``B`` (``alpha`` defaults to ``2 x rank``, no dropout); ``B`` starts at zero, so the wrapped
    model starts exactly as the pretrained one. ``fan_in_fan_out`` because GPT-2 stores its
    projections as ``Conv1D`` (input x output). ``extra`` goes to ``LoraConfig``.
    """
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=list(targets),
                      fan_in_fan_out=True, **extra)


def wrap(model: nn.Module, config) -> nn.Module:
    """``peft.get_peft_model`` without the FutureWarnings peft provokes from ``transformers``."""
    from peft import get_peft_model

    with quiet_transformers():
        return get_peft_model(model, config)


def peft_lora_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """What ``peft`` itself computes for a linear layer (``weight``: out x in, ``bias``) wrapped by
    LoRA with factors ``A`` (rank x in) and ``B`` (out x rank) and scaling ``alpha``: the reference
    an exercise's hand-written LoRA forward pass is checked against (notebook 04)."""
    from collections import OrderedDict

    from peft import LoraConfig

    rank, (out_features, in_features) = A.shape[0], weight.shape
    layer = nn.Sequential(OrderedDict(fc=nn.Linear(in_features, out_features)))
    wrapped = wrap(layer, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["fc"], lora_dropout=0.0))
    fc = wrapped.base_model.model.fc
    with torch.no_grad():
        fc.base_layer.weight.copy_(weight)
        fc.base_layer.bias.copy_(bias)
        fc.lora_A["default"].weight.copy_(A)
        fc.lora_B["default"].weight.copy_(B)
        return wrapped(x)


class Bottleneck(nn.Module):
    """A Houlsby adapter: ``h + up(gelu(down(h)))``, ``width -> size -> width``.

    ``up`` starts at zero, so an inserted adapter leaves the model exactly as it was until it trains.
    """

    def __init__(self, width: int, size: int = ADAPTER_SIZE):
        super().__init__()
        self.down, self.up = nn.Linear(width, size), nn.Linear(size, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(F.gelu(self.down(hidden)))


class Adapted(nn.Module):
    """``layer`` followed by a :class:`Bottleneck` (what :func:`add_adapters` puts in its place)."""

    def __init__(self, layer: nn.Module, width: int, size: int = ADAPTER_SIZE):
        super().__init__()
        self.layer, self.adapter = layer, Bottleneck(width, size)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.layer(*args, **kwargs))


def add_adapters(body: nn.Module, size: int = ADAPTER_SIZE) -> nn.Module:
    """Freeze a ``GPT2Model`` and put a trainable bottleneck after each block's attention output
    projection and MLP output projection (before the residual sum, as Houlsby et al. place them)."""
    set_trainable(body, False)
    width = body.config.n_embd
    for block in body.h:
        block.attn.c_proj = Adapted(block.attn.c_proj, width, size)
        block.mlp.c_proj = Adapted(block.mlp.c_proj, width, size)
    return body


def remove_adapters(body: nn.Module) -> nn.Module:
    """Undo :func:`add_adapters`: the original projections back in place (the pretrained body)."""
    for block in body.h:
        for parent in (block.attn, block.mlp):
            if isinstance(parent.c_proj, Adapted):
                parent.c_proj = parent.c_proj.layer
    return body


def bitfit(model: "GPTClassifier") -> "GPTClassifier":
    """Train only the body's biases and LayerNorm weights (and the head): BitFit, with LayerNorm."""
    set_trainable(model.transformer, False)
    for name, param in model.transformer.named_parameters():
        if name.endswith(".bias") or ".ln_" in f".{name}":
            param.requires_grad_(True)
    return model


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def prepare(model: "GPTClassifier", method: str, *, lora_rank: int = 8,
            lora_targets: Sequence[str] = LORA_TARGETS) -> tuple[nn.Module, Callable[[Path], None]]:
    """Set ``model`` up for one of :data:`PEFT_METHODS`: returns the model to train (possibly a
    ``peft`` wrapper around it) and ``save(folder)``, which writes what the method stores per task.

    The head always trains. Prefix and prompt tuning take :data:`VIRTUAL_TOKENS` positions, so the
    classifier reads that many fewer tokens of text (``model.reserved``).
    """
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, TaskType

    if method not in PEFT_METHODS:
        raise ValueError(f"prepare: method={method!r} is not allowed: expected one of {list(PEFT_METHODS)}")
    if method == "lora":
        wrapped = wrap(model, lora_config(lora_rank, lora_targets, modules_to_save=["head"]))
        return wrapped, wrapped.save_pretrained
    if method == "ia3":
        wrapped = wrap(model, IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                        fan_in_fan_out=True, modules_to_save=["head"]))
        return wrapped, wrapped.save_pretrained
    if method in ("bitfit", "adapter"):
        bitfit(model) if method == "bitfit" else add_adapters(model.transformer)
        return model, lambda folder: save_tensors(folder, _trainable_state(model))
    config = (PrefixTuningConfig if method == "prefix" else PromptTuningConfig)(
        task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=VIRTUAL_TOKENS)
    model.transformer = wrap(model.transformer, config)   # the body reads learned virtual tokens first
    model.reserved = VIRTUAL_TOKENS

    def save(folder: Path) -> None:
        model.transformer.save_pretrained(folder)
        save_tensors(folder, model.head.state_dict(), "head.safetensors")

    return model, save


def forgetting_blocks(blocks: torch.Tensor, n_positions: int) -> torch.Tensor:
    """``blocks`` cut to what every method can read: :data:`VIRTUAL_TOKENS` fewer than GPT-2's
    ``n_positions`` (prefix and prompt tuning take those), plus the next token to predict."""
    return blocks[:, :n_positions - VIRTUAL_TOKENS + 1]


@torch.no_grad()
def english_perplexity(model: nn.Module, lm_head: nn.Module, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Next-token perplexity on ``blocks`` (``[N, L + 1]`` held-out pretraining text) of the body of
    ``model`` (a classifier, tuned or not, with whatever a method added still on) read through the
    pretrained language model's output layer ``lm_head``.

    Every method reads the same ``L`` tokens, so cut ``blocks`` to fit the method that reads
    fewest (:func:`forgetting_blocks`).
    """
    model.eval()
    device = next(lm_head.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size].to(device)
        hidden = model.hidden(batch[:, :-1])
        targets = batch[:, 1:hidden.shape[1] + 1]
        logits = lm_head(hidden).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count)


# --- notebook 04's tables -------------------------------------------------------------------------

def peft_table(runs: Sequence[Any], budget: int):
    """The PEFT table: one row per method at ``budget`` labels per class, fewest trainable first:
    accuracy (mean ± std over seeds), trainable parameters, seconds, training memory, checkpoint
    size and forgetting (with the method on, and once removed), from
    :func:`~helpers.text.finetune.runs_table`."""
    from .finetune import runs_table

    table = runs_table([r for r in runs if r.budget == budget]).xs(budget, level="budget")
    table = table.droplevel("backbone") if table.index.nlevels > 1 else table
    return table.sort_values("trainable").drop(columns="about")


def lora_ablation(base: Any, task: Any, pool: torch.Tensor, test: torch.Tensor, *, ranks: Sequence[int],
                  target_sets: dict[str, Sequence[str]] | None = None, budget: int, seeds: Sequence[int],
                  reuse: Sequence[Any] = (), reuse_rank: int | None = None, progress: bool = True,
                  return_runs: bool = False, **finetune_kw: Any):
    """LoRA at every rank x target set (default :data:`LORA_TARGET_SETS`), ``budget`` labels per
    class, every seed: one row per (targets, rank) with accuracy mean and std, trainable parameters,
    seconds and forgetting (with LoRA on; NaN unless ``forget_blocks`` is among ``finetune_kw``).
    ``base``: the pretrained model, or one per pretraining seed (as in
    :func:`~helpers.text.finetune.compare_methods`). ``reuse``: LoRA runs already made at
    ``reuse_rank`` with the default targets (:data:`LORA_TARGETS`) on the same budget and seeds,
    counted instead of run again. ``return_runs``: also return the per-seed rows (targets, rank,
    seed, accuracy, forgetting_%), the sides of paired claims."""
    import pandas as pd

    from .finetune import compare_methods

    target_sets = target_sets or LORA_TARGET_SETS
    finetune_kw = {k: v for k, v in finetune_kw.items() if k not in ("lora_rank", "lora_targets")}
    rows = []
    for name, targets in target_sets.items():
        for rank in ranks:
            done = [r for r in reuse if r.method == "lora" and r.budget == budget and r.seed in seeds]
            if rank == reuse_rank and tuple(targets) == LORA_TARGETS and len(done) == len(seeds):
                runs = done
            else:
                runs = compare_methods({"pretrained": base}, task, pool, test, methods=["lora"], budgets=[budget],
                                       seeds=seeds, lora_rank=rank, lora_targets=targets, progress=progress,
                                       **finetune_kw)
            rows += [{"targets": name, "rank": rank, "seed": r.seed, "accuracy": r.accuracy,
                      "trainable": r.trainable_params, "trainable_%": 100 * r.trainable_params / r.total_params,
                      "seconds": r.seconds, "forgetting_%": 100 * r.forgetting} for r in runs]
    frame = pd.DataFrame(rows)
    table = frame.groupby(["targets", "rank"], sort=False).agg(
        acc_mean=("accuracy", "mean"), acc_std=("accuracy", "std"), seeds=("seed", "count"),
        trainable=("trainable", "first"), trainable_pct=("trainable_%", "first"), seconds=("seconds", "mean"),
        forgetting_mean=("forgetting_%", "mean"))
    table = table.rename(columns={"trainable_pct": "trainable_%"}).fillna({"acc_std": 0.0})
    return (table, frame.sort_values(["targets", "rank", "seed"], kind="stable")) if return_runs else table


def learning_forgetting_figure(points: "pd.DataFrame", title: str = ""):
    """Methods on the learning-vs-forgetting plane: accuracy on the task (learnt, x) against the rise
    of English perplexity with the method on (forgotten, y), one point per row of ``points`` (columns
    ``label``, ``family``, ``acc_mean``, ``forgetting_mean`` in %, optional ``acc_std`` and
    ``forgetting_std``); rows of one family (e.g. LoRA at growing rank) are joined by a line, in
    ``points``' order. Biderman et al. (2024) put LoRA and full fine-tuning on one such curve: LoRA
    learns less and forgets less. Right is better, up is worse."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    for family, rows in points.groupby("family", sort=False):
        ax.errorbar(100 * rows["acc_mean"], rows["forgetting_mean"],
                    xerr=100 * rows["acc_std"] if "acc_std" in rows else None,
                    yerr=rows["forgetting_std"] if "forgetting_std" in rows else None,
                    marker="o", capsize=3, label=family, linestyle="-" if len(rows) > 1 else "none")
        for _, row in rows.iterrows():
            ax.annotate(row["label"], (100 * row["acc_mean"], row["forgetting_mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set(xlabel="test accuracy (%): learnt", ylabel="English perplexity rise while on (%): forgotten",
           title=title or "learning vs forgetting")
    ax.set_yscale("symlog", linthresh=10)   # linear below 10%, logarithmic above
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

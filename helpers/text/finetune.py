"""Adapting the pretrained GPT: classification fine-tuning with five methods, and language-model
specialisation (notebooks 04, 05, 08, 10).

* **Fine-tuning** -- the ways to adapt the pretrained model to a text task (:data:`FT_METHODS`,
  defined once as the choices of the ``text_methods`` knob): scratch, frozen features, full
  fine-tuning, LoRA and (IA)^3 (:func:`finetune_text`, every combination: :func:`compare_methods`,
  summarised by :func:`runs_table`).
* **Specialisation** -- more next-token training of the whole language model on a new domain,
  fully or with LoRA (:func:`specialise_lm`): what it learns and what it forgets (notebook 05: every
  method x learning rate x seed, :func:`specialisation_sweep`, drawn by :func:`specialisation_figure`).

Both LoRA uses are built by one function, :func:`lora_config`; only the layers they adapt differ.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .. import data
from ..checkpoints import save_tensors
from ..config import KNOBS, check_budgets, check_knob
from ..finetuning import epochs_for
from ..models import count_parameters, set_trainable
from ..train import History, evaluate, train
from .corpora import PAD, TextTask, code_corpus, encode_texts
from .lm import LMCorpus, quiet_transformers, right_padding_is_safe, split_blocks
from .peft_methods import LORA_TARGETS, REMOVABLE, english_perplexity, forgetting_blocks, lora_config, prepare, wrap
from .pretrain import Pretrained
from .speed import training_memory

if TYPE_CHECKING:
    import pandas as pd

#: The ways to adapt a pretrained model, cheapest first in what they store (the knob's choices).
FT_METHODS: tuple[str, ...] = KNOBS["text_methods"].choices
_ABOUT = {
    "scratch": "same architecture, random weights, all trained",
    "frozen": "pretrained features fixed (computed once); a linear head trained on them",
    "full": "pretrained weights, new head, all trained",
    "lora": "pretrained weights frozen; low-rank updates of token embeddings and attention + head",
    "ia3": "pretrained weights frozen; learned rescaling of keys, values and MLP inputs + head",
    "bitfit": "only the body's biases and LayerNorm weights + head",
    "adapter": "pretrained weights frozen; a bottleneck MLP after each attention and MLP output + head",
    "prefix": "pretrained weights frozen; learned keys and values prepended in every layer + head",
    "prompt": "pretrained weights frozen; learned input embeddings prepended to the text + head",
}
#: Learning rate of each method relative to ``ft_lr``: fewer trainable parameters tolerate (and
#: need) larger steps -- LoRA's product of two small matrices, (IA)^3's scaling vectors and a
#: linear head on fixed features all move slowly at a full fine-tuning learning rate.
LR_FACTOR = {"scratch": 1.0, "frozen": 10.0, "full": 1.0, "lora": 10.0, "ia3": 20.0, "bitfit": 20.0,
             "adapter": 10.0, "prefix": 30.0, "prompt": 30.0}


class GPTClassifier(nn.Module):
    """A pretrained GPT body (``transformer``: a ``GPT2Model``) + mean pooling + a linear ``head``.

    The text is summarised by the average of the last layer's hidden states over its real tokens
    (the padding after the text is ignored), then one linear layer gives the class scores. On
    this small a model, averaging every token works much better than reading only the last one
    (what ``GPT2ForSequenceClassification`` does).
    """

    def __init__(self, transformer: nn.Module, num_classes: int):
        super().__init__()
        self.transformer = transformer
        self.head = nn.Linear(transformer.config.n_embd, num_classes)
        self.reserved = 0  # positions taken by virtual tokens (prefix and prompt tuning)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden states of the text's tokens (the first ``n_positions - reserved``)."""
        ids = ids[:, :self.transformer.config.n_positions - self.reserved]
        with warnings.catch_warnings():   # peft's prefix tuning passes GPT-2 the keyword it is renaming
            warnings.filterwarnings("ignore", ".*past_key_values.*", FutureWarning)
            return self.transformer(ids).last_hidden_state[:, -ids.shape[1]:]   # virtual tokens dropped

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(ids)
        ids = ids[:, :hidden.shape[1]]
        real = (ids != PAD).unsqueeze(-1).to(hidden.dtype)
        return (hidden * real).sum(1) / real.sum(1).clamp(min=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


def classifier(base: Pretrained, num_classes: int, pretrained: bool = True) -> GPTClassifier:
    """A :class:`GPTClassifier` with ``base``'s architecture: its weights copied, or random ones."""
    from transformers import GPT2Model

    config = copy.deepcopy(base.model.config)
    config.architectures = None
    with quiet_transformers():
        body = GPT2Model(config)
    if pretrained:
        body.load_state_dict(base.model.transformer.state_dict())
    return GPTClassifier(body, num_classes)


@torch.no_grad()
def _features(model: GPTClassifier, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(ids[i:i + batch_size]).float() for i in range(0, len(ids), batch_size)])


def _checkpoint_bytes(save: Callable[[Path], None]) -> int:
    """Bytes of the ``.safetensors`` files a method has to store (configs of ~1 KB not counted)."""
    with tempfile.TemporaryDirectory() as folder, quiet_transformers():
        save(Path(folder))
        return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


@dataclass
class TextRun:
    """One fine-tuning run and what it cost; ``forgetting``: how much worse the tuned body predicts
    held-out pretraining text (perplexity after / before - 1, NaN where not measured or meaningless)."""

    method: str
    backbone: str
    budget: int
    seed: int
    accuracy: float
    trainable_params: int
    total_params: int
    seconds: float
    memory_bytes: int
    checkpoint_bytes: int
    history: History = field(repr=False)
    forgetting: float = math.nan

    @property
    def forgetting_removed(self) -> float:
        """Forgetting once the method's per-task state is removed: 0 for :data:`REMOVABLE` methods
        (the pretrained weights were never changed), the measured value for full and BitFit."""
        if math.isnan(self.forgetting):
            return math.nan
        return 0.0 if self.method in REMOVABLE else self.forgetting

    def row(self) -> dict[str, Any]:
        return {"method": self.method, "backbone": self.backbone, "budget": self.budget, "seed": self.seed,
                "accuracy": self.accuracy, "trainable": self.trainable_params, "total": self.total_params,
                "seconds": self.seconds, "memory_MB": self.memory_bytes / 1e6,
                "checkpoint_KB": self.checkpoint_bytes / 1e3, "forgetting_%": 100 * self.forgetting,
                "forgetting_removed_%": 100 * self.forgetting_removed}


_PRETRAINED_PPL: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _forgetting(model: nn.Module, base: Pretrained, blocks: torch.Tensor, device: torch.device | str) -> float:
    """Perplexity rise on held-out pretraining text, tuned body vs pretrained body (same blocks)."""
    blocks = forgetting_blocks(blocks, base.model.config.n_positions)
    measured = _PRETRAINED_PPL.setdefault(base.model, {})   # the pretrained body's, once per model and blocks
    key = (blocks.data_ptr(), tuple(blocks.shape), int(blocks.sum()), str(device))
    if key not in measured:
        measured[key] = english_perplexity(classifier(base, 1).to(device), base.model.lm_head, blocks)
    return english_perplexity(model, base.model.lm_head, blocks) / measured[key] - 1


@right_padding_is_safe()  # right-padded texts in a causal model need no attention mask
def finetune_text(method: str, base: Pretrained, train_data: tuple[torch.Tensor, torch.Tensor],
                  test_data: tuple[torch.Tensor, torch.Tensor], *, num_classes: int, steps: int, lr: float,
                  batch_size: int, seed: int, lora_rank: int = 8, lora_targets: Sequence[str] = LORA_TARGETS,
                  bf16: bool = False, device: torch.device | str = "cpu", measure: bool = True,
                  backbone: str = "pretrained", budget: int = 0,
                  forget_blocks: torch.Tensor | None = None) -> TextRun:
    """Adapt ``base`` (left unchanged) to a classification task with one of :data:`FT_METHODS`.

    Every method gets about ``steps`` optimisation steps of ``batch_size`` examples at
    ``lr x LR_FACTOR[method]``, trained by :func:`helpers.train.train`. With ``measure`` it also
    counts the training memory and the size of what the method must save. With ``forget_blocks``
    (held-out blocks of the pretraining text) it measures forgetting: the perplexity of the tuned
    body, with whatever the method added still on, read through the pretrained output layer
    (:func:`~helpers.text.peft_methods.english_perplexity`), relative to the pretrained body's.
    """
    check_knob("text_methods", [method])
    torch.manual_seed(seed)
    start = time.perf_counter()
    x, y = train_data
    epochs, batch = epochs_for(len(x), batch_size, steps)
    common = dict(epochs=epochs, lr=lr * LR_FACTOR[method], batch_size=batch, weight_decay=0.01, seed=seed,
                  bf16=bf16, device=device, progress=False, warmup_steps=max(1, steps // 10))
    model = classifier(base, num_classes, pretrained=method != "scratch").to(device)
    total = count_parameters(model)
    measures_forgetting = forget_blocks is not None and method != "scratch"   # scratch read no English
    if method == "frozen":  # features computed once; only the head trains, on them
        set_trainable(model.transformer, False)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            features, test_features = _features(model, x.to(device)), _features(model, test_data[0].to(device))
        history = train(model.head, (features, y), **common)
        seconds = time.perf_counter() - start
        accuracy = evaluate(model.head, (test_features, test_data[1]), device=device, bf16=bf16)["acc"]
        body_bytes = sum(p.numel() * p.element_size() for p in model.transformer.parameters())
        memory = training_memory(model.head, (features[:batch], y[:batch].to(device)), body_bytes) if measure else 0
        ckpt = _checkpoint_bytes(lambda f: save_tensors(f, model.head.state_dict())) if measure else 0
        forgetting = _forgetting(model, base, forget_blocks, device) if measures_forgetting else math.nan
        return TextRun(method, backbone, budget, seed, accuracy, count_parameters(model.head), total, seconds,
                       memory, ckpt, history, forgetting)

    save = lambda folder: save_tensors(folder, model.state_dict())  # noqa: E731  (scratch, full)
    if method not in ("scratch", "full"):
        model, save = prepare(model, method, lora_rank=lora_rank, lora_targets=lora_targets)
    history = train(model, train_data, **common)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test_data, device=device, bf16=bf16)["acc"]
    trainable = count_parameters(model, trainable_only=True)
    memory = training_memory(model, (x[:batch].to(device), y[:batch].to(device))) if measure else 0
    ckpt = _checkpoint_bytes(save) if measure else 0
    forgetting = _forgetting(model, base, forget_blocks, device) if measures_forgetting else math.nan
    return TextRun(method, backbone, budget, seed, accuracy, trainable, total, seconds, memory, ckpt, history,
                   forgetting)


def compare_methods(backbones: Mapping[str, Pretrained | Sequence[Pretrained]], task: TextTask, pool: torch.Tensor,
                    test: torch.Tensor, *, methods: Sequence[str], budgets: Sequence[int],
                    seeds: Iterable[int], seq_len: int, progress: bool = True, budget_knob: str = "text_budgets",
                    forget_budgets: Sequence[int] | None = None, **finetune_kw: Any) -> list[TextRun]:
    """Every method x backbone x label budget x seed, on one fixed test set.

    For each seed and budget the labelled examples are drawn from ``pool`` with
    :func:`helpers.data.label_budget` (a smaller budget is a subset of a larger one); all methods see
    the same examples. A backbone is one pretrained model, or a list of them, one per pretraining
    seed (:func:`~helpers.text.pretrain.pretrain_gpts`): fine-tuning seed number ``i`` (its position
    in ``seeds``) then starts from entry ``i mod len``, so the spread over seeds includes the spread
    over pretraining runs. ``finetune_kw`` goes to :func:`finetune_text`; its ``forget_blocks``
    are used only at ``forget_budgets`` (None: every budget), since measuring forgetting costs an
    evaluation per run. Methods and budgets are checked before any training; a budget too big names
    the knob it came from, ``budget_knob``.
    """
    from tqdm.auto import tqdm

    check_knob("text_methods", list(methods))
    seeds = list(seeds)
    check_budgets(budget_knob, budgets, task.max_budget(pool), f"{task.kind} task pool")
    models = {name: list(b) if isinstance(b, (list, tuple)) else [b] for name, b in backbones.items()}
    if any(not m for m in models.values()):
        raise ValueError("compare_methods: every backbone needs at least one pretrained model")
    first = next(iter(models.values()))[0]
    ids = encode_texts(first.tokenizer, task.texts, seq_len)
    test_data = (ids[test], task.labels[test])
    jobs = [(name, budget, index, method) for name in models for budget in budgets for index in range(len(seeds))
            for method in methods]
    runs, measured = [], set()
    for name, budget, index, method in tqdm(jobs, desc="fine-tune", disable=not progress, leave=False):
        seed = seeds[index]
        chosen = data.label_budget(task.labels, budget, seed=seed, indices=pool)
        measure = (method, name, budget) not in measured  # memory and size do not depend on the seed
        measured.add((method, name, budget))
        kw = dict(finetune_kw)
        if forget_budgets is not None and budget not in forget_budgets:
            kw.pop("forget_blocks", None)
        base = models[name][index % len(models[name])]
        runs.append(finetune_text(method, base, (ids[chosen], task.labels[chosen]), test_data,
                                  num_classes=len(task.classes), seed=seed, measure=measure, backbone=name,
                                  budget=budget, **kw))
    return runs


def per_seed(runs: Sequence[TextRun], method: str, budget: int, value: str = "accuracy",
             backbone: str | None = None) -> list[float]:
    """``value`` (a :class:`TextRun` field: ``accuracy``, ``forgetting``, ...) of ``method``'s runs at
    ``budget``, one per seed in seed order -- the sides of a paired claim (``claim.greater``):
    position ``i`` of two methods' lists is the same seed, the same examples, the same pretraining."""
    chosen = sorted((r for r in runs if r.method == method and r.budget == budget
                     and (backbone is None or r.backbone == backbone)), key=lambda r: r.seed)
    if not chosen:
        where = f" on {backbone!r}" if backbone else ""
        raise ValueError(f"per_seed: no {method!r} runs at budget {budget}{where}")
    if len({r.seed for r in chosen}) != len(chosen):
        raise ValueError(f"per_seed: {method!r} at budget {budget} has several runs per seed: name the backbone")
    return [float(getattr(r, value)) for r in chosen]


def runs_table(runs: Sequence[TextRun]):
    """One row per (backbone, budget, method): accuracy mean and std over seeds, and the costs."""
    import pandas as pd

    frame = pd.DataFrame([r.row() for r in runs])
    keys = ["backbone", "budget", "method"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped.agg(acc_mean=("accuracy", "mean"), acc_std=("accuracy", "std"), seeds=("seed", "count"),
                        trainable=("trainable", "first"), total=("total", "first"),
                        seconds=("seconds", "mean"), forgetting_mean=("forgetting_%", "mean"),
                        forgetting_std=("forgetting_%", "std"), forgetting_removed=("forgetting_removed_%", "mean"))
    firsts = frame.groupby(keys, sort=False)[["memory_MB", "checkpoint_KB"]].max()
    table = table.join(firsts)
    table["acc_std"] = table["acc_std"].fillna(0.0)
    table["trainable_%"] = 100 * table["trainable"] / table["total"]
    table["accuracy"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["acc_mean"], table["acc_std"])]
    table["about"] = [_ABOUT[m] for m in table.index.get_level_values("method")]
    table["forgetting_std"] = table["forgetting_std"].mask(table["forgetting_mean"].notna() & table["forgetting_std"].isna(), 0.0)
    return table[["accuracy", "acc_mean", "acc_std", "seeds", "trainable", "trainable_%", "seconds",
                  "memory_MB", "checkpoint_KB", "forgetting_mean", "forgetting_std", "forgetting_removed", "about"]]


# --- specialising a language model on a new domain, fully or with LoRA ----------------------------

SPECIALISE_METHODS = ("full", "lora")
#: The layers LoRA adapts when the whole language model specialises: attention (``c_attn``,
#: ``c_proj``) and MLP (``c_fc``, ``c_proj``) projections.
LM_LORA_TARGETS: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")


def lora_lm(model: nn.Module, rank: int, alpha: float | None = None, targets: Sequence[str] = LM_LORA_TARGETS):
    """Wrap a GPT-2 language model with LoRA (:func:`lora_config`): the pretrained weights freeze, and
    only the ``rank``-dimensional updates of ``targets`` train, which limits how far it can drift."""
    from peft import TaskType

    return wrap(model, lora_config(rank, targets, alpha, task_type=TaskType.CAUSAL_LM))


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
        raise ValueError(f"specialise_lm: method={method!r} is not allowed: expected one of {list(SPECIALISE_METHODS)}")
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


def specialisation_data(corpus: LMCorpus, code_chars: int, seq_len: int,
                        eval_blocks: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """What specialising a GPT pretrained on ``corpus`` (English) to Python source trains and is scored on.

    Returns the training blocks of Python source (``code_chars`` characters of it, encoded with the
    pretraining tokenizer, in blocks of ``seq_len + 1``) and the held-out blocks of each domain,
    ``eval_blocks`` each: ``{"general": English (what may be forgotten), "code": Python (what should
    be learnt)}``, for :func:`lm_perplexities`.
    """
    code_blocks = data.lm_blocks(data.encode_corpus(corpus.tokenizer, code_corpus(code_chars)), seq_len)
    code_train, code_val = split_blocks(code_blocks)
    return code_train, {"general": corpus.val[:eval_blocks], "code": code_val[:eval_blocks]}


def lm_perplexities(model: nn.Module, held_out: Mapping[str, torch.Tensor], bf16: bool = False) -> dict[str, float]:
    """Perplexity of a language model on each domain's held-out blocks: ``{"<domain>_ppl": ...}``."""
    return {f"{name}_ppl": evaluate(model, blocks, task="lm", bf16=bf16)["ppl"] for name, blocks in held_out.items()}


def specialisation_sweep(pretrained: nn.Module, code_train: torch.Tensor, held_out: Mapping[str, torch.Tensor], *,
                         seeds: Sequence[int], lr_factors: Sequence[float], lr: float, steps: int, batch_size: int,
                         rank: int, methods: Sequence[str] = SPECIALISE_METHODS, bf16: bool = False,
                         device: torch.device | str = "cpu",
                         progress: bool = True) -> tuple[dict[str, float], "pd.DataFrame"]:
    """Specialise ``pretrained`` on Python source by every method at every learning rate, and measure
    what it learnt and what it forgot.

    Each seed x method x factor of ``lr_factors`` is one :func:`specialise_lm` run at
    ``factor x lr``; before and after, :func:`lm_perplexities` on ``held_out``
    (:func:`specialisation_data`). Returns the perplexities before, and one row per (method,
    factor), mean and std over seeds, of the perplexities after and of

    * ``general_rise`` = ``general_ppl_after / general_ppl_before - 1``: English forgotten;
    * ``code_drop`` = ``1 - code_ppl_after / code_ppl_before``: Python learnt.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from ..metrics import mean_std

    before = lm_perplexities(pretrained, held_out, bf16)
    rows = []
    jobs = [(seed, method, factor) for seed in seeds for method in methods for factor in lr_factors]
    for seed, method, factor in tqdm(jobs, desc="specialising the GPT", disable=not progress):
        tuned, _ = specialise_lm(method, pretrained, code_train, steps=steps, lr=factor * lr, batch_size=batch_size,
                                 seed=seed, rank=rank, bf16=bf16, device=device)
        after = lm_perplexities(tuned, held_out, bf16)
        rows.append({"method": method, "lr_factor": factor, "seed": seed, **after,
                     "general_rise": after["general_ppl"] / before["general_ppl"] - 1,
                     "code_drop": 1 - after["code_ppl"] / before["code_ppl"]})
    columns = ["general_ppl", "code_ppl", "general_rise", "code_drop"]
    return before, mean_std(pd.DataFrame(rows), ["method", "lr_factor"], columns)


def specialisation_figure(table: "pd.DataFrame"):
    """The sweep of :func:`specialisation_sweep` on the learning-vs-forgetting plane: one curve per
    method, one point per learning rate (mean ± std over seeds), code learnt against English
    forgotten. Up is worse, right is better."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 3.9))
    for method, rows in table.groupby(level="method"):
        rows = rows.droplevel("method")
        ax.errorbar(100 * rows.code_drop_mean, 100 * rows.general_rise_mean, xerr=100 * rows.code_drop_std,
                    yerr=100 * rows.general_rise_std, marker="o", capsize=3, label=method)
        for factor, row in rows.iterrows():
            ax.annotate(f"{factor:g}x", (100 * row.code_drop_mean, 100 * row.general_rise_mean),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="code perplexity drop (%): learnt", ylabel="English perplexity rise (%): forgotten",
           title="specialising the GPT on Python source\n(labels: learning rate, x text_ft_lr)")
    ax.set_yscale("symlog", linthresh=10)   # linear below 10%, logarithmic above: a diverging run fits too
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def lora_learns_less_and_forgets_less(table: "pd.DataFrame", factors: Sequence[float]) -> bool:
    """At every learning-rate factor, LoRA raises English perplexity less than full fine-tuning, and
    at full fine-tuning's usual rate (1x, if tried) it also learns less code (a smaller drop)."""
    rise, drop = table["general_rise_mean"], table["code_drop_mean"]
    return (all(rise["lora", f] < rise["full", f] for f in factors)
            and (1.0 not in factors or drop["lora", 1.0] < drop["full", 1.0]))


def full_matching_lora(table: "pd.DataFrame", factors: Sequence[float], lora_factor: float,
                       tolerance: float = 0.03) -> float | None:
    """Full fine-tuning's best trade against LoRA at ``lora_factor``: among the factors at which full
    fine-tuning learns as much code (a code drop within ``tolerance`` of LoRA's, or more), the one
    that forgets least (smallest English rise). ``None`` if no factor learns as much."""
    rise, drop = table["general_rise_mean"], table["code_drop_mean"]
    matching = [f for f in factors if drop["full", f] >= drop["lora", lora_factor] - tolerance]
    return min(matching, key=lambda f: rise["full", f]) if matching else None

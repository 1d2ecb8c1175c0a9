"""The articles' table, measured (notebook 11): its rows, their numbers and their verdicts.

The articles about pretraining vs fine-tuning compare the two along a few aspects (data
requirement, training time, computational cost, purpose, risks). Each function here turns the cost
tables of a run (:func:`helpers.finetuning.cost_table` for the CNN, :func:`helpers.text.cost_table`
for the GPT) into those rows: what the articles say, what was measured, and a verdict:

* ``confirmed`` -- the measurement agrees, clearly;
* ``nuanced`` -- it agrees, but by less than the articles suggest;
* ``contradicted`` -- it does not hold at this scale.

Notebook 11 takes its numbers from the other notebooks of the same batch when they ran
(:func:`from_batch`), else measures a few rows itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .finetuning import PRETRAINING_STAGE
from .text.speed import PRETRAINING_STAGE as TEXT_PRETRAINING_STAGE

if TYPE_CHECKING:
    import pandas as pd


def verdict(holds: bool, nuance: bool = False) -> str:
    """``confirmed`` when the articles' statement holds, ``nuanced`` when it holds only weakly
    (``nuance``), ``contradicted`` when it does not."""
    return "confirmed" if holds and not nuance else ("nuanced" if holds else "contradicted")


def from_batch(recorded: Mapping[str, Any] | None, name: str, profile: str | None = None,
               index: str | None = None) -> pd.DataFrame | None:
    """The table ``name`` another notebook of this batch recorded (``recorded``: its
    :func:`helpers.results.sibling`), or ``None`` when that notebook did not run, did not record it,
    or (when ``profile`` is given) ran at another profile, whose numbers would not compare.
    ``index`` names the column to index the table by."""
    from . import results

    if not recorded or name not in recorded["tables"] or (profile is not None and recorded["profile"] != profile):
        return None
    table = results.table(recorded, name)
    return table.set_index(index) if index else table


def vision_measures(cost: pd.DataFrame, accuracy: pd.Series) -> dict[str, float]:
    """The CNN's headline ratios: pretraining's labels, wall time over full fine-tuning's, full
    fine-tuning's share of pretraining's FLOPs, and its accuracy gain over scratch (``accuracy``:
    mean test accuracy per method at the comparison budget)."""
    pre, ft = cost.loc[PRETRAINING_STAGE], cost.loc["fine-tuning: full_ft"]
    return {"data_ratio": pre["labels used"] / ft["labels used"],
            "time_ratio": pre["wall time (s)"] / ft["wall time (s)"],
            "flops_share": ft["training FLOPs"] / pre["training FLOPs"],
            "ft_gain_over_scratch": accuracy["full_ft"] - accuracy["scratch"]}


def _forgetting_row(forgetting: Mapping[str, Any] | None) -> tuple[str, str]:
    """What notebook 05 measured of forgetting, and its verdict (or where to look when it did not run)."""
    plane = from_batch(forgetting, "learning_vs_forgetting", index="method")
    if plane is not None and {"naive", "replay"} <= set(plane.index):
        measured = (f"naive fine-tuning kept {plane.loc['naive', 'source_acc_mean']:.0%} of the glyph accuracy "
                    f"({forgetting['metrics']['source_acc_before']:.0%} before); replay kept "
                    f"{plane.loc['replay', 'source_acc_mean']:.0%} (notebook 05)")
    else:
        measured = "run notebooks 05 (forgetting) and 06 (overfitting) in the same batch"
    return measured, "confirmed" if plane is not None and "naive" in plane.index else "see 05-08"


def vision_rows(cost: pd.DataFrame, accuracy: pd.Series, budget: int,
                forgetting: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The articles' table for the CNN, one row per aspect: what they say, what was measured, the verdict.

    ``cost`` is :func:`helpers.finetuning.cost_table`; ``accuracy`` the mean test accuracy per
    method at ``budget`` labels per class; ``forgetting`` what notebook 05 recorded, if it ran.
    The thresholds are the claims': 10x the data, 5x the time, under 10% of the FLOPs, and more
    than 5 points of accuracy over scratch (under 15 is ``nuanced``).
    """
    import pandas as pd

    pre, ft = cost.loc[PRETRAINING_STAGE], cost.loc["fine-tuning: full_ft"]
    probe_share = cost.loc["fine-tuning: linear_probe", "training FLOPs"] / pre["training FLOPs"]
    m = vision_measures(cost, accuracy)
    gain = m["ft_gain_over_scratch"]
    risks, risks_verdict = _forgetting_row(forgetting)
    rows = [
        ("definition", "pretraining: learn general features from a large dataset; fine-tuning: adapt them to a specific task",
         f"pretrained on {pre['data used (images)']:,.0f} generated glyphs; fine-tuned on {ft['labels used']:,.0f} real digits",
         "confirmed"),
        ("data requirement", "pretraining: large; fine-tuning: small, task-specific",
         f"{m['data_ratio']:,.0f}x more labelled images for pretraining than for fine-tuning", verdict(m["data_ratio"] >= 10)),
        ("training time", "pretraining: long; fine-tuning: short",
         f"pretraining {pre['wall time (s)']:.0f} s vs fine-tuning {ft['wall time (s)']:.1f} s ({m['time_ratio']:,.0f}x)",
         verdict(m["time_ratio"] >= 5)),
        ("computational cost", "pretraining: high; fine-tuning: low",
         f"full fine-tuning used {m['flops_share']:.2%} of pretraining's FLOPs; a linear probe {probe_share:.2%}",
         verdict(m["flops_share"] < 0.1)),
        ("purpose / output", "pretraining: a general model; fine-tuning: a specialised, more accurate one",
         f"at {budget} labels/class, fine-tuning {accuracy['full_ft']:.1%} vs scratch {accuracy['scratch']:.1%} test accuracy",
         verdict(gain > 0.05, nuance=gain < 0.15)),
        ("use cases / risks", "fine-tuning may forget pretraining knowledge; needs care with small data", risks, risks_verdict),
    ]
    return pd.DataFrame(rows, columns=["aspect", "articles say", "measured here", "verdict"]).set_index("aspect")


def text_measures(text_cost: pd.DataFrame, accuracy: pd.Series) -> dict[str, float]:
    """The GPT's headline numbers: full fine-tuning's share of pretraining's FLOPs and its accuracy
    gain over scratch (``accuracy``: mean test accuracy per method)."""
    pre, full = text_cost.loc[TEXT_PRETRAINING_STAGE], text_cost.loc["fine-tuning: full"]
    return {"text_flops_share": full["training FLOPs"] / pre["training FLOPs"],
            "text_ft_gain_over_scratch": accuracy["full"] - accuracy["scratch"]}


def text_rows(text_cost: pd.DataFrame, accuracy: pd.Series, budget: int) -> pd.DataFrame:
    """The articles' table for the tiny GPT: data, compute, purpose, and (when LoRA ran) parameter
    efficiency. ``text_cost`` is :func:`helpers.text.cost_table`; ``accuracy`` the mean test
    accuracy per method at ``budget`` labels per class. LoRA is ``confirmed`` within 8 points of full
    fine-tuning; the gain over scratch is ``nuanced`` under 10 points."""
    import pandas as pd

    pre, full = text_cost.loc[TEXT_PRETRAINING_STAGE], text_cost.loc["fine-tuning: full"]
    m = text_measures(text_cost, accuracy)
    gain = m["text_ft_gain_over_scratch"]
    rows = [
        ("data requirement (text)", "pretraining: large, unlabelled; fine-tuning: small, labelled",
         f"pretraining read {pre['tokens read']:,.0f} tokens and no label; fine-tuning used "
         f"{full['labels used']:,.0f} labelled docstrings ({full['tokens read']:,.0f} tokens)",
         verdict(pre["tokens read"] >= 10 * full["tokens read"])),
        ("computational cost (text)", "pretraining: high; fine-tuning: low",
         f"full fine-tuning used {m['text_flops_share']:.2%} of pretraining's FLOPs "
         f"({full['wall time (s)']:.1f} s vs {pre['wall time (s)']:.0f} s)", verdict(m["text_flops_share"] < 0.1)),
        ("purpose / output (text)", "fine-tuning a pretrained model gives a better specialised model",
         f"{budget} labels/class: full fine-tuning {accuracy['full']:.1%} vs scratch {accuracy['scratch']:.1%}"
         f" test accuracy ({100 * gain:+.0f} points)", verdict(gain > 0, nuance=gain < 0.10)),
    ]
    if "lora" in accuracy.index:
        lora = text_cost.loc["fine-tuning: lora"]
        rows.append(("parameter-efficient fine-tuning (text)", "fine-tuning can update only a small part of the model",
                     f"LoRA updated {lora['parameters updated'] / pre['parameters updated']:.1%} "
                     f"of the weights: {accuracy['lora']:.1%} vs full {accuracy['full']:.1%}",
                     verdict(accuracy["lora"] >= accuracy["full"] - 0.08)))
    return pd.DataFrame(rows, columns=["aspect", "articles say", "measured here", "verdict"]).set_index("aspect")

"""The articles' table, measured (notebook 11): its rows, their numbers and their verdicts.

The articles about pretraining vs fine-tuning compare the two along a few aspects (definition, data,
training time, computational cost, purpose, risks). Each function here turns what the notebooks of
a run measured into rows of that table: what the articles say, what was measured, the rule that
gives the verdict, and the verdict. Every verdict comes from one rule, :func:`graded`: a measured
number against two thresholds written in the row,

* ``confirmed`` -- the number clears the first threshold: the articles' statement holds, clearly;
* ``nuanced`` -- it clears only the second: the statement holds, by less than they suggest;
* ``contradicted`` -- it clears neither: at this scale the statement does not hold;
* ``not measured`` -- the number was not measured in this run (the row says which notebook
  measures it), or it follows from sizes the profile chose (a *definition*, not a finding).

Notebook 11 takes its numbers from the other notebooks of the same batch when they ran
(:func:`from_batch`), else measures the key rows itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .text.speed import PRETRAINING_STAGE as TEXT_PRETRAINING_STAGE

if TYPE_CHECKING:
    import pandas as pd

VERDICTS = ("confirmed", "nuanced", "contradicted", "not measured")
COLUMNS = ["aspect", "articles say", "measured here", "verdict rule", "verdict"]


def graded(value: float | None, confirmed: float, nuanced: float) -> str:
    """The verdict rule of every row: ``confirmed`` when ``value > confirmed``, ``nuanced`` when only
    ``value > nuanced``, else ``contradicted``; ``not measured`` when ``value`` is ``None`` or NaN.

    Each row chooses its measured ``value`` so that larger means "the articles are right" (a gain
    in accuracy, a factor of compute saved) and states both thresholds in its ``verdict rule``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    return "confirmed" if value > confirmed else ("nuanced" if value > nuanced else "contradicted")


def _mean(values: Any) -> float:
    """The mean of one number or of one number per seed."""
    if isinstance(values, (int, float)):
        return float(values)
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


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


def _row(aspect: str, articles: str, measured: str, rule: str, verdict: str) -> dict[str, str]:
    return dict(zip(COLUMNS, (aspect, articles, measured, rule, verdict)))


def frame(rows: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    """Rows (:data:`COLUMNS`) as the table notebook 11 shows, indexed by aspect."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=COLUMNS).set_index("aspect")


# --------------------------------------------------------------------------- the CNN (vision)

def definition_row(probe_pretrained: Any, probe_random: Any, per_class: int) -> dict[str, str]:
    """A1/A4: pretraining learns *general* features. Measured: a linear probe on the frozen features
    of the pretrained CNN vs of a randomly initialised one, both fitted on ``per_class`` real digits
    per class (features learnt on glyphs, never on digits). Values: one per seed, or means."""
    gain = _mean(probe_pretrained) - _mean(probe_random)
    return _row("definition (A1, A4)",
                "pretraining learns general features from large data; fine-tuning adapts them to one task",
                f"a linear probe on frozen glyph-pretrained features reads real digits at {_mean(probe_pretrained):.1%}"
                f" vs {_mean(probe_random):.1%} on random features ({per_class} digits/class; {100 * gain:+.1f} points)",
                "confirmed: probe gain > 10 points; nuanced: > 0", graded(gain, 0.10, 0.0))


def purpose_row(finetuned: Any, scratch: Any, budget: int) -> dict[str, str]:
    """Purpose / output: a fine-tuned pretrained model is the better specialised one. Measured: test
    accuracy of full fine-tuning vs scratch (trained to convergence) at ``budget`` labels per class."""
    gain = _mean(finetuned) - _mean(scratch)
    return _row("purpose / output", "pretraining: a general model; fine-tuning: a specialised, more accurate one",
                f"at {budget} labels/class, full fine-tuning {_mean(finetuned):.1%} vs scratch {_mean(scratch):.1%}"
                f" test accuracy ({100 * gain:+.1f} points)",
                "confirmed: gain > 5 points; nuanced: > 0", graded(gain, 0.05, 0.0))


def hardest_target(c2a: pd.DataFrame, method: str = "full_ft") -> pd.Series | None:
    """The row of ``compute_to_accuracy`` (:func:`helpers.compute.compute_to_accuracy`) with the
    highest target that ``method`` reached on every seed (``None`` if it reached none)."""
    rows = c2a[(c2a.method == method) & c2a.reached.astype(bool)]
    return None if rows.empty else rows.sort_values("target_fraction").iloc[-1]


def compute_rows(c2a: pd.DataFrame | None, pretraining: Mapping[str, Any], method: str = "full_ft",
                 budget: int | None = None) -> list[dict[str, str]]:
    """A3, A5 and B2 from the compute needed to *reach* an accuracy (He et al. 2019), not from the
    step counts a profile chose.

    ``c2a`` is the table ``compute_to_accuracy`` (one row per method and target fraction of the
    accuracy converged scratch ends at); ``pretraining`` the CNN's pretraining summary (``flops``,
    ``wall_time``). Rows: training time (fine-tuning's seconds to the target against pretraining's),
    computational cost (fine-tuning's FLOPs to the target against pretraining's), and what
    pretraining saves a task (scratch's FLOPs to the same target over fine-tuning's, and the number
    of tasks that pay pretraining back). The hardest target ``method`` reached is used; ``budget``
    (labels per class of the runs behind ``c2a``) is named in the rows.
    """
    articles_time = ("time (A3)", "pretraining is long and resource-intensive; fine-tuning is short")
    articles_cost = ("computational cost (A5)", "pretraining's compute is high; fine-tuning's low to moderate")
    articles_saves = ("compute a task needs (B2)", "pretraining reduces the training a new task needs")
    rules = ("confirmed: pretraining takes > 10x fine-tuning's time to the target; nuanced: > 1x",
             "confirmed: pretraining's FLOPs > 10x fine-tuning's to the target; nuanced: > 1x",
             "confirmed: scratch needs > 2x fine-tuning's FLOPs to the same target; nuanced: > 1x")
    hit = hardest_target(c2a, method) if c2a is not None else None
    if hit is None:
        why = ("run notebook 03 (compute to reach an accuracy) in this batch" if c2a is None
               else f"{method} reached no target accuracy on every seed")
        return [_row(*a, why, r, "not measured") for a, r in zip((articles_time, articles_cost, articles_saves), rules)]
    scratch = c2a[(c2a.method == "scratch") & (c2a.target_fraction == hit.target_fraction)].iloc[0]
    target = (f"{hit.target_fraction:.0%} of converged scratch's accuracy ({hit.target_acc:.1%}"
              + (f" at {budget} labels/class)" if budget else ")"))
    time_ratio = pretraining["wall_time"] / hit.seconds_to_target
    flops_ratio = pretraining["flops"] / hit.flops_to_target
    saved = scratch.flops_to_target / hit.flops_to_target
    amortise = hit.tasks_to_amortise
    pays = ("never pays back (fine-tuning needs no less than scratch)" if not math.isfinite(amortise)
            else f"pretraining pays for itself from {amortise:,.0f} tasks on")
    return [
        _row(*articles_time, f"to reach {target}: fine-tuning {hit.seconds_to_target:.2f} s, pretraining took "
             f"{pretraining['wall_time']:.0f} s ({time_ratio:,.0f}x), scratch {scratch.seconds_to_target:.2f} s",
             rules[0], graded(time_ratio, 10, 1)),
        _row(*articles_cost, f"to reach {target}: fine-tuning {hit.flops_to_target:.2e} FLOPs, pretraining "
             f"{pretraining['flops']:.2e} ({flops_ratio:,.0f}x)", rules[1], graded(flops_ratio, 10, 1)),
        _row(*articles_saves, f"to reach {target}: scratch {scratch.flops_to_target:.2e} FLOPs vs fine-tuning "
             f"{hit.flops_to_target:.2e} ({saved:,.1f}x); counting pretraining's cost, {pays}",
             rules[2], graded(saved, 2, 1)),
    ]


def data_rows(pretraining_labels: int, finetuning_labels: int, scale: pd.DataFrame | None = None, *,
              x: str = "images", y: str = "finetune_acc", budget_column: str = "budget",
              diversity: pd.DataFrame | None = None, diversity_x: str = "glyph_classes") -> list[dict[str, str]]:
    """A2: pretraining needs massive, *diverse* data. Measured by notebook 10: downstream accuracy
    (``y``) against the amount of pretraining data (``scale``, column ``x``) and, at a fixed amount,
    its diversity (``diversity``, column ``diversity_x``), at the smallest label budget.

    The labelled examples each stage used are *distinct* examples (an image seen in several epochs
    counts once): ``pretraining_labels`` glyphs, ``finetuning_labels`` digits. Their ratio is set by
    the profile -- a definition, shown but not judged."""
    sizes = (f"distinct labelled examples: pretraining {pretraining_labels:,} glyphs, fine-tuning "
             f"{finetuning_labels:,} digits ({pretraining_labels / max(finetuning_labels, 1):,.0f}x; the profile sets both)")
    rows = []
    for aspect, table, column, what in (("data: amount (A2)", scale, x, "distinct pretraining images"),
                                        ("data: diversity (A2)", diversity, diversity_x, "glyph classes")):
        articles = ("pretraining needs massive data; fine-tuning a small task-specific set" if column == x
                    else "pretraining needs diverse data")
        rule = "confirmed: accuracy gain from the least to the most > 2 points; nuanced: > 0"
        trend = scale_trend(table, column, y, budget_column) if table is not None else None
        if trend is None:
            rows.append(_row(aspect, articles, "run notebook 10 (scale of pretraining) in this batch"
                             + ("; " + sizes if column == x else ""), rule, "not measured"))
            continue
        lo, hi, acc_lo, acc_hi, budget = trend
        rows.append(_row(aspect, articles, f"at {budget:g} labels/class, fine-tuning reaches {acc_lo:.1%} after pretraining "
                         f"on {lo:,.0f} {what}, {acc_hi:.1%} after {hi:,.0f} ({100 * (acc_hi - acc_lo):+.1f} points)"
                         + ("; " + sizes if column == x else ""), rule, graded(acc_hi - acc_lo, 0.02, 0.0)))
    return rows


def scale_trend(table: pd.DataFrame, x: str, y: str, budget_column: str | None = "budget"
                ) -> tuple[float, float, float, float, float] | None:
    """``(smallest x, largest x, mean y there, mean y there, budget)`` of a scaling table, at its
    smallest label budget (``budget_column``; NaN when the table has none). ``None`` when the table
    lacks the columns or holds fewer than two values of ``x``."""
    if table is None or x not in table or y not in table:
        return None
    budget = math.nan
    if budget_column and budget_column in table:
        budget = float(table[budget_column].min())
        table = table[table[budget_column] == budget]
    means = table.groupby(x)[y].mean().sort_index()
    if len(means) < 2:
        return None
    return float(means.index[0]), float(means.index[-1]), float(means.iloc[0]), float(means.iloc[-1]), budget


def risks_row(forgetting: Mapping[str, Any] | None) -> dict[str, str]:
    """C1 (risks): fine-tuning forgets what pretraining learnt. Measured by notebook 05: the glyph
    accuracy the pretrained network's old head keeps after naive fine-tuning on digits, against
    before; the best mitigation next to it."""
    articles = "fine-tuning may forget what pretraining learnt (catastrophic forgetting); mitigations help"
    rule = "confirmed: naive fine-tuning loses > 10 points of the pretraining task; nuanced: > 0"
    plane = from_batch(forgetting, "learning_vs_forgetting", index="method")
    before = (forgetting or {}).get("metrics", {}).get("source_acc_before")
    if plane is None or "naive" not in plane.index or "source_acc_mean" not in plane or before is None:
        return _row("risks: forgetting (C1)", articles, "run notebook 05 (forgetting) in this batch", rule, "not measured")
    kept = plane["source_acc_mean"]
    best = kept.drop("naive").idxmax() if len(kept) > 1 else None
    lost = before - kept["naive"]
    measured = (f"naive fine-tuning kept {kept['naive']:.0%} of the glyph accuracy ({before:.0%} before)"
                + (f"; {best} kept {kept[best]:.0%} (notebook 05)" if best else " (notebook 05)"))
    return _row("risks: forgetting (C1)", articles, measured, rule, graded(lost, 0.10, 0.0))


def multitask_row(forgetting: Mapping[str, Any] | None) -> dict[str, str]:
    """B6: transfer also means multi-task learning. Measured by notebook 05: training on the digits
    *and* the old glyphs together against naive fine-tuning -- the glyph accuracy it keeps, the digit
    accuracy it reaches and what it costs (old examples, time)."""
    articles = "transfer also means multi-task learning: one model learns the new task and keeps the old"
    rule = "confirmed: multi-task keeps > 10 points more glyph accuracy than naive fine-tuning; nuanced: > 0"
    plane = from_batch(forgetting, "learning_vs_forgetting", index="method")
    needed = {"source_acc_mean", "target_acc_mean"}
    if plane is None or not {"naive", "multitask"} <= set(plane.index) or not needed <= set(plane.columns):
        return _row("multi-task learning (B6)", articles, "run notebook 05 (forgetting, multi-task) in this batch",
                    rule, "not measured")
    kept = plane.loc["multitask", "source_acc_mean"] - plane.loc["naive", "source_acc_mean"]
    target = plane.loc["multitask", "target_acc_mean"] - plane.loc["naive", "target_acc_mean"]
    costs = from_batch(forgetting, "multitask_costs")
    cost = ""
    if costs is not None and "x naive time" in costs:
        costs = costs.set_index("method" if "method" in costs else costs.columns[0])
        if "multitask" in costs.index:
            cost = f", at {costs.loc['multitask', 'x naive time']:.1f}x naive fine-tuning's time"
    return _row("multi-task learning (B6)", articles,
                f"multi-task kept {100 * kept:+.1f} points more glyph accuracy than naive fine-tuning, with digit accuracy "
                f"{100 * target:+.1f} points from naive's{cost} (notebook 05)", rule, graded(kept, 0.10, 0.0))


# --------------------------------------------------------------------------- the tiny GPT (text)

def text_rows(text_cost: pd.DataFrame, accuracy: pd.Series, budget: int,
              gpt_scale: pd.DataFrame | None = None, *, tokens: str = "tokens_seen",
              y: str = "val_ppl") -> list[dict[str, str]]:
    """The articles' table for the tiny GPT: data (from notebook 10's ``gpt_scale`` when it ran:
    validation perplexity, column ``y``, against pretraining tokens, column ``tokens``), compute
    (a share fixed by the step counts: shown, not judged), purpose, and (when LoRA ran) parameter
    efficiency. ``text_cost`` is :func:`helpers.text.cost_table`; ``accuracy`` the mean test
    accuracy per method at ``budget`` labels per class."""
    pre, full = text_cost.loc[TEXT_PRETRAINING_STAGE], text_cost.loc["fine-tuning: full"]
    share = full["training FLOPs"] / pre["training FLOPs"]
    gain = accuracy["full"] - accuracy["scratch"]
    read = (f"pretraining read {pre['tokens read']:,.0f} tokens and no label; fine-tuning "
            f"{full['labels used']:,.0f} labelled docstrings ({full['tokens read']:,.0f} tokens; the profile sets both)")
    trend = scale_trend(gpt_scale, tokens, y, None) if gpt_scale is not None else None
    data_rule = "confirmed: perplexity falls by > 10% from the fewest to the most tokens; nuanced: falls"
    if trend is None:
        data_row = _row("data (text)", "pretraining: large, unlabelled; fine-tuning: small, labelled",
                        "run notebook 10 (scale of pretraining) in this batch; " + read, data_rule, "not measured")
    else:
        lo, hi, ppl_lo, ppl_hi, _ = trend
        fall = 1 - ppl_hi / ppl_lo
        data_row = _row("data (text)", "pretraining: large, unlabelled; fine-tuning: small, labelled",
                        f"validation perplexity {ppl_lo:.1f} after {lo:,.0f} pretraining tokens, {ppl_hi:.1f} after "
                        f"{hi:,.0f} ({fall:+.0%}); " + read, data_rule, graded(fall, 0.10, 0.0))
    rows = [data_row,
            _row("computational cost (text)", "pretraining: high; fine-tuning: low",
                 f"full fine-tuning used {share:.2%} of pretraining's FLOPs ({full['wall time (s)']:.1f} s vs "
                 f"{pre['wall time (s)']:.0f} s); both follow from the step counts the profile chose",
                 "a definition here: compute to reach an accuracy is measured for the CNN (notebook 03)", "not measured"),
            _row("purpose / output (text)", "fine-tuning a pretrained model gives a better specialised model",
                 f"{budget} labels/class: full fine-tuning {accuracy['full']:.1%} vs scratch {accuracy['scratch']:.1%}"
                 f" test accuracy ({100 * gain:+.1f} points)", "confirmed: gain > 10 points; nuanced: > 0",
                 graded(gain, 0.10, 0.0))]
    if "lora" in accuracy.index:
        lora = text_cost.loc["fine-tuning: lora"]
        rows.append(_row("parameter-efficient fine-tuning (text)", "fine-tuning can update only a small part of the model",
                         f"LoRA updated {lora['parameters updated'] / pre['parameters updated']:.1%} of the weights: "
                         f"{accuracy['lora']:.1%} vs full {accuracy['full']:.1%}",
                         "confirmed: LoRA within 8 points of full fine-tuning; nuanced: within 15",
                         graded(-(accuracy["full"] - accuracy["lora"]), -0.08, -0.15)))
    return rows

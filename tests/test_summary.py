"""Notebook 11's rows of the articles' table: numbers, verdicts, and reading the batch's tables."""

import json

import pandas as pd
import pytest

from helpers import finetuning, results, summary, text
from helpers.config import resolve


def _vision_cost(gain_runs=(0.1, 0.4)):
    """A cost table as finetuning.cost_table builds it: pretraining 1000 labels, fine-tuning 20."""
    pretraining = {"images_seen": 1000, "wall_time": 60.0, "flops": 1e9, "params": 70}
    runs = pd.DataFrame([{"method": m, "budget": 2, "seed": 0, "test_acc": acc, "shifted_acc": acc,
                          "seconds": 2.0, "images_seen": 200, "labels_used": 20, "flops": f, "trainable_params": 70}
                         for m, acc, f in (("scratch", gain_runs[0], 3e7), ("linear_probe", 0.3, 1e6),
                                           ("full_ft", gain_runs[1], 3e7))])
    return finetuning.cost_table(pretraining, runs), runs.set_index("method")["test_acc"]


def test_verdicts():
    assert summary.verdict(True) == "confirmed"
    assert summary.verdict(True, nuance=True) == "nuanced"
    assert summary.verdict(False) == summary.verdict(False, nuance=True) == "contradicted"


def test_vision_measures_and_rows():
    cost, accuracy = _vision_cost()
    measures = summary.vision_measures(cost, accuracy)
    assert measures == pytest.approx({"data_ratio": 50, "time_ratio": 30, "flops_share": 0.03,
                                      "ft_gain_over_scratch": 0.3})
    rows = summary.vision_rows(cost, accuracy, budget=2)
    assert list(rows.columns) == ["articles say", "measured here", "verdict"]
    assert rows.loc["data requirement", "measured here"].startswith("50x more labelled images")
    assert rows.loc["computational cost", "measured here"].endswith("a linear probe 0.10%")
    assert rows.loc["purpose / output", "verdict"] == "confirmed"  # 30 points: clearly better
    assert rows.loc["use cases / risks", "verdict"] == "see 05-08"  # notebook 05 did not run
    small_gain = summary.vision_rows(*_vision_cost((0.3, 0.4)), budget=2)
    assert small_gain.loc["purpose / output", "verdict"] == "nuanced"  # 10 points: better, not by much


def test_the_risks_row_reads_notebook_05():
    forgetting = {"profile": "smoke", "metrics": {"source_acc_before": 0.9},
                  "tables": {"learning_vs_forgetting": {"columns": ["method", "source_acc_mean"],
                                                        "rows": [["naive", 0.25], ["replay", 0.75]]}}}
    rows = summary.vision_rows(*_vision_cost(), budget=2, forgetting=forgetting)
    assert rows.loc["use cases / risks", "measured here"] == (
        "naive fine-tuning kept 25% of the glyph accuracy (90% before); replay kept 75% (notebook 05)")
    assert rows.loc["use cases / risks", "verdict"] == "confirmed"


def test_from_batch_reads_a_sibling_table_only_when_it_compares(tmp_path):
    resolve("smoke")
    results.record_table("cost", pd.DataFrame({"stage": ["a"], "flops": [1.0]}))
    recorded = json.loads((tmp_path / "test.results.json").read_text())
    assert summary.from_batch(recorded, "cost", index="stage").loc["a", "flops"] == 1.0
    assert summary.from_batch(recorded, "cost", profile="smoke") is not None
    assert summary.from_batch(recorded, "cost", profile="quick") is None  # other profile: not comparable
    assert summary.from_batch(recorded, "cures") is None and summary.from_batch(None, "cost") is None


def _text_cost(lora=True):
    """A text cost table: a 100-parameter GPT pretrained on a million tokens; LoRA trains 5% of it."""
    methods = pd.DataFrame({"method": ["scratch", "full", "lora"], "trainable": [100, 100, 5],
                            "trainable_%": [100.0, 100.0, 5.0], "seconds": [1.0, 1.0, 1.0],
                            "accuracy": ["0.300 ± 0.000", "0.600 ± 0.000", "0.550 ± 0.000"],
                            "acc_mean": [0.3, 0.6, 0.55]})
    methods = methods if lora else methods[methods.method != "lora"]
    gpt = {"tokens_seen": 1_000_000, "wall_time": 100.0, "flops": 6 * 100 * 1_000_000, "params": 100,
           "history": {"rows": [{"val_ppl": 12.34}]}}
    return text.cost_table(gpt, methods, labels=40, tokens=1000), methods.set_index("method")["acc_mean"]


def test_text_measures_and_rows():
    cost, accuracy = _text_cost()
    assert summary.text_measures(cost, accuracy) == pytest.approx({"text_flops_share": 0.001,
                                                                   "text_ft_gain_over_scratch": 0.3})
    rows = summary.text_rows(cost, accuracy, budget=10)
    assert list(rows.verdict) == ["confirmed", "confirmed", "confirmed", "confirmed"]
    assert rows.loc["parameter-efficient fine-tuning (text)", "measured here"].startswith("LoRA updated 5.0%")
    assert "+30 points" in rows.loc["purpose / output (text)", "measured here"]
    assert len(summary.text_rows(*_text_cost(lora=False), budget=10)) == 3  # no LoRA row without LoRA

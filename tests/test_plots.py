"""The shared figures draw what they are given (checked on the artists, not by eye)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helpers import plots  # noqa: E402


def test_heat_map_writes_each_value_and_confusion_matrix_normalises_rows():
    fig = plots.heat_map([[0.9, 0.1], [0.3, 0.7]], ["a", "b"], ["x", "y"], xlabel="j", ylabel="i")
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0.10", "0.30", "0.70", "0.90"]
    fig = plots.confusion_matrix_figure(np.array([[3, 1], [0, 4]]))
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0.25", "0.75", "1.00"]  # the 0 is not written
    plt.close("all")


def test_learning_vs_forgetting_draws_each_method_and_the_references():
    plane = pd.DataFrame({"target_acc_mean": [0.9, 0.8], "target_acc_std": [0.01, 0.02],
                          "source_acc_mean": [0.2, 0.6], "source_acc_std": [0.05, 0.02]}, index=["naive", "replay"])
    fig = plots.learning_vs_forgetting(plane, source_before=0.95, frontier=([0, 1], [0.5, 0.1]), baselines=["naive"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["naive", "replay"]
    labels = ax.get_legend_handles_labels()[1]
    assert {"naive", "replay", "learning-rate frontier", "before fine-tuning"} <= set(labels)
    plt.close("all")


def test_mean_std_bars_draw_the_first_row_on_top_with_its_error():
    table = pd.DataFrame({"gap_mean": [0.4, 0.1], "gap_std": [0.05, 0.02]}, index=["plain", "dropout"])
    ax = plots.mean_std_bars(table, "gap", xlabel="gap", title="cures").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dropout", "plain"]  # bottom to top
    assert [round(p.get_width(), 2) for p in ax.patches] == [0.1, 0.4] and ax.get_title() == "cures"
    plt.close("all")


def test_score_bars_one_bar_per_score_on_a_unit_axis():
    ax = plots.score_bars({"test": 0.8, "shifted": 0.5}, title="full_ft").axes[0]
    assert [p.get_width() for p in ax.patches] == [0.8, 0.5] and ax.get_xlim() == (0, 1)
    plt.close("all")

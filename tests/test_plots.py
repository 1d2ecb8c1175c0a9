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

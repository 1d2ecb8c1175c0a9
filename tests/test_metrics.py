import math

import numpy as np
import pytest
import torch

from helpers import metrics


def test_imbalanced_predictions_expose_the_minority():
    labels = torch.tensor([0] * 90 + [1] * 10)
    always_majority = torch.zeros(100, dtype=torch.long)
    assert metrics.accuracy(labels, always_majority) == 0.9
    assert metrics.balanced_accuracy(labels, always_majority) == 0.5
    assert metrics.per_class_recall(labels, always_majority).tolist() == [1.0, 0.0]
    assert metrics.macro_f1(labels, always_majority) == pytest.approx((2 * 0.9 / 1.9 + 0) / 2)
    assert metrics.confusion_matrix(labels, always_majority).tolist() == [[90, 0], [10, 0]]


def test_predict_batches_and_restores_mode():
    model = torch.nn.Linear(3, 2)
    model.train()
    x = torch.randn(10, 3)
    assert torch.equal(metrics.predict(model, x, batch_size=3), model(x).argmax(-1))
    assert model.training


def test_continual_learning_metrics():
    R = [[0.9, 0.1, 0.1],
         [0.5, 0.8, 0.1],
         [0.3, 0.6, 0.7]]
    assert metrics.average_accuracy(R) == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    assert metrics.backward_transfer(R) == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)
    assert metrics.average_forgetting(R) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    with pytest.raises(ValueError, match="T x T"):
        metrics.average_accuracy(np.ones((2, 3)))


def test_perplexity():
    assert metrics.perplexity(math.log(7)) == pytest.approx(7)


def test_mean_std_aggregates_runs_per_group_in_first_seen_order():
    import pandas as pd

    runs = pd.DataFrame({"method": ["b", "a", "b", "a", "b"], "seed": [0, 0, 1, 1, 2],
                         "acc": [0.5, 0.9, 0.7, 0.7, 0.6], "loss": [1.0, 2.0, 3.0, 4.0, 5.0]})
    table = metrics.mean_std(runs, ["method"], ["acc", "loss"])
    assert list(table.index) == ["b", "a"]
    assert list(table.columns) == ["acc_mean", "acc_std", "loss_mean", "loss_std", "seeds"]
    assert table.loc["b", "acc_mean"] == pytest.approx(0.6) and table.loc["a", "loss_std"] == pytest.approx(2 ** 0.5)
    assert table.loc["b", "seeds"] == 3 and table.loc["a", "seeds"] == 2
    spread = metrics.mean_std(runs, ["method"], ["acc"], stats=("mean", "std", "min", "max", "range"))
    scores = np.array([0.5, 0.7, 0.6])
    assert spread.loc["b", "acc_std"] == pytest.approx(scores.std(ddof=1))
    assert (spread.loc["b", "acc_min"], spread.loc["b", "acc_max"]) == (0.5, 0.7)
    assert spread.loc["b", "acc_range"] == pytest.approx(0.2)
    two_keys = metrics.mean_std(runs.assign(budget=10), ["method", "budget"], ["acc"])
    assert two_keys.index.names == ["method", "budget"] and two_keys.loc[("a", 10), "seeds"] == 2

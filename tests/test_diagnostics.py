import numpy as np
import pytest
import torch

from helpers.diagnostics import (Diagnosis, diagnose, fit_and_measure, fold_summary, generalisation_gap,
                                 kfold_scores, logistic_fit_score, memorised_fraction, noisy_labels,
                                 random_split_scores, shuffled_labels, stratified_folds)
from helpers.models import SmallResNet
from helpers.train import History


def rows(train_acc, val_acc, train_loss=None, val_loss=None):
    n = len(train_acc)
    train_loss = train_loss or list(np.linspace(2.0, 1.0, n))
    val_loss = val_loss or list(np.linspace(2.0, 1.2, n))
    return [{"epoch": i + 1, "train_acc": a, "val_acc": b, "train_loss": c, "val_loss": d}
            for i, (a, b, c, d) in enumerate(zip(train_acc, val_acc, train_loss, val_loss))]


def test_overfitting_by_gap_names_the_numbers():
    d = diagnose(rows([0.5, 0.9, 1.0, 1.0], [0.4, 0.6, 0.65, 0.66]))
    assert d.verdict == "over-fitting"
    assert d.numbers["gap"] == pytest.approx(0.34)
    assert "gap of 0.340" in str(d) and d.numbers["best_epoch"] == 4


def test_overfitting_by_falling_validation_reports_the_early_stopping_epoch():
    d = diagnose(rows([0.6, 0.8, 0.9, 0.95], [0.6, 0.85, 0.82, 0.80]), gap_tolerance=0.2)
    assert d.verdict == "over-fitting"
    assert d.numbers["best_epoch"] == 2 and d.numbers["val_drop"] == pytest.approx(0.05)
    assert "early stopping would keep epoch 2" in str(d)


def test_underfitting_when_even_training_data_is_not_fit():
    flat = [2.0, 1.9, 1.85, 1.84]
    d = diagnose(rows([0.3, 0.4, 0.45, 0.46], [0.3, 0.4, 0.44, 0.45], train_loss=flat))
    assert d.verdict == "under-fitting" and "does not fit even its training data" in str(d)


def test_underfitting_when_still_learning_fast():
    d = diagnose(rows([0.5, 0.8, 0.90, 0.97], [0.5, 0.8, 0.9, 0.93]))
    assert d.verdict == "under-fitting" and "still rising (+0.070" in str(d)
    lm = [{"epoch": i + 1, "train_loss": t, "val_loss": t + 0.1} for i, t in enumerate([4.0, 3.0, 2.5, 2.0])]
    d = diagnose(lm)
    assert d.verdict == "under-fitting" and "still falling (20%" in str(d)


def test_healthy():
    flat = [1.0, 0.5, 0.31, 0.30]
    d = diagnose(rows([0.6, 0.9, 0.95, 0.96], [0.6, 0.88, 0.92, 0.93], train_loss=flat))
    assert d.verdict == "healthy" and isinstance(d, Diagnosis)
    assert d._repr_markdown_().startswith("**healthy**")


def test_loss_only_histories_and_input_forms():
    lm = [{"epoch": i + 1, "train_loss": t, "val_loss": v}
          for i, (t, v) in enumerate(zip([3.0, 2.0, 1.5, 1.2], [3.0, 2.2, 2.3, 2.6]))]
    d = diagnose(History(rows=lm))
    assert d.verdict == "over-fitting" and d.numbers["best_epoch"] == 2 and "rose" in str(d)
    frame = History(rows=rows([0.5, 1.0], [0.4, 0.5])).frame()  # epoch as the index
    assert diagnose(frame).verdict == "over-fitting"
    with pytest.raises(ValueError, match="no epochs"):
        diagnose([])


def test_noisy_labels_flip_exactly_the_fraction_to_a_different_class():
    labels = torch.arange(200) % 10
    noisy, flipped = noisy_labels(labels, 0.3, 10, seed=1)
    assert int(flipped.sum()) == 60
    assert bool((noisy[flipped] != labels[flipped]).all()) and bool((noisy[~flipped] == labels[~flipped]).all())
    assert noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(noisy, noisy_labels(labels, 0.3, 10, seed=1)[0])
    with pytest.raises(ValueError, match="fraction=1.5"):
        noisy_labels(labels, 1.5, 10, 0)


def test_shuffled_labels_keep_class_counts():
    labels = torch.arange(100) % 10
    shuffled = shuffled_labels(labels, 0)
    assert torch.equal(torch.bincount(shuffled), torch.bincount(labels)) and not torch.equal(shuffled, labels)


def test_kfold_validates_every_example_once_and_single_splits_vary():
    labels = np.arange(50) % 5
    seen = []

    def fit_score(train, val):
        assert not set(train) & set(val)
        seen.extend(val)
        return float(len(val))

    scores = kfold_scores(labels, fit_score, k=5, seed=0)
    assert list(scores) == [10.0] * 5 and sorted(seen) == list(range(50))
    features = torch.randn(50, 4) + torch.nn.functional.one_hot(torch.as_tensor(labels), 5)[:, :4] * 3
    fit = logistic_fit_score(features, labels)
    single = random_split_scores(labels, fit, val_fraction=0.2, repeats=6, seed=0)
    assert len(single) == 6 and ((0 <= single) & (single <= 1)).all()


def test_stratified_folds_and_the_summary_that_compares_splits():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, k=3, seed=1)
    assert len(folds) == 3 and sorted(np.concatenate(folds)) == list(range(15))
    summary = fold_summary(folds, labels)
    assert summary["times_validated"].tolist() == [1] * 15
    assert summary["class_counts"].tolist() == [[2, 2, 3], [1, 2, 2], [1, 1, 1]]
    by_hand = [np.array([0, 1, 2, 7, 8, 12]), np.array([3, 4, 9, 10, 13]), np.array([5, 6, 11, 14])]
    other = fold_summary(by_hand, labels)  # another stratified split: a different one, the same summary
    assert all(np.array_equal(other[key], summary[key]) for key in summary)
    unstratified = fold_summary([np.arange(0, 5), np.arange(5, 10), np.arange(10, 15)], labels)
    assert not np.array_equal(unstratified["class_counts"], summary["class_counts"])
    assert fold_summary([np.arange(10), np.arange(5, 15)], labels)["times_validated"].max() == 2


def test_fit_and_measure_reports_gaps_and_a_verdict():
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 28, 28), torch.arange(40) % 4
    model = SmallResNet(4, width=4)
    history, measured = fit_and_measure(model, (x, y), (x[:8], y[:8]), (x[8:], y[8:]), epochs=2,
                                        batch_size=20, progress=False)
    assert len(history.rows) == 2 and measured["epochs"] == 2
    assert measured["gap"] == pytest.approx(measured["train_acc"] - measured["held_out_acc"])
    assert measured["loss_gap"] == pytest.approx(measured["held_out_loss"] - measured["train_loss"])
    assert measured["verdict"] in ("under-fitting", "over-fitting", "healthy")
    assert set(generalisation_gap(model, (x, y), (x, y))) >= {"train_acc", "held_out_acc", "gap"}


def test_memorised_fraction_counts_the_wrong_labels_a_model_predicts():
    class Echo(torch.nn.Module):  # "predicts" the class stored in the image's first pixel
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.nn.functional.one_hot(x.flatten(1)[:, 0].long(), 4).float() * self.scale

    labels = torch.arange(8) % 4
    noisy, flipped = noisy_labels(labels, 0.5, 4, seed=0)
    images = labels.float().view(-1, 1, 1, 1).clone()
    images[flipped.nonzero()[0]] = noisy[flipped.nonzero()[0]].float()   # learnt one wrong label by heart
    assert memorised_fraction(Echo(), images, noisy, flipped) == pytest.approx(1 / 4)


def test_per_seed_reads_one_number_per_seed_in_seed_order():
    import pandas as pd

    runs = pd.DataFrame({"method": ["a", "b", "a", "b"], "seed": [1, 1, 0, 0], "acc": [0.1, 0.2, 0.3, 0.4]})
    from helpers import diagnostics

    assert diagnostics.per_seed(runs, "acc", method="a").tolist() == [0.3, 0.1]   # seed 0 first: pairs by seed
    with pytest.raises(ValueError, match="one row per seed"):
        diagnostics.per_seed(runs, "acc")   # two rows per seed: which one is the side?
    with pytest.raises(ValueError, match="found 0 rows"):
        diagnostics.per_seed(runs, "acc", method="c")

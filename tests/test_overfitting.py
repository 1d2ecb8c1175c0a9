import numpy as np
import pandas as pd
import pytest
import torch

from helpers import overfitting
from helpers.models import SmallResNet, count_parameters


def tiny_experiment(pretrained=True, n_per_class=4, classes=3):
    torch.manual_seed(0)
    images = torch.rand(n_per_class * classes * 3, 1, 28, 28)
    labels = torch.arange(len(images)) % classes
    part = n_per_class * classes
    split = lambda i: (images[i * part:(i + 1) * part], labels[i * part:(i + 1) * part])  # noqa: E731
    plain = dict(epochs=2, lr=1e-2, batch_size=6, weight_decay=0.0, progress=False)
    source = SmallResNet(5, width=2) if pretrained else None
    return overfitting.Experiment(split(0), split(1), split(2), classes, plain, width=2, pretrained=source)


def test_network_starts_from_scratch_or_from_the_pretrained_backbone():
    experiment = tiny_experiment()
    assert experiment.plain_steps() == 2 * 2  # 12 images in batches of 6, 2 epochs
    scratch = experiment.network(0, width=4, dropout=0.3)
    assert isinstance(scratch, SmallResNet) and scratch.feature_dim == 16 and scratch.head.out_features == 3
    frozen = experiment.network(1, init="pretrained", dropout=0.5, freeze=True)
    assert frozen.head.out_features == 3 and frozen is not experiment.pretrained
    assert count_parameters(frozen, trainable_only=True) == count_parameters(frozen.head)
    assert all(layer.p == 0.5 for layer in frozen.modules() if isinstance(layer, torch.nn.Dropout))
    assert experiment.pretrained.head.out_features == 5   # the source network is untouched
    same = experiment.network(0, width=4, dropout=0.3)
    assert all(torch.equal(a, b) for a, b in zip(scratch.parameters(), same.parameters()))
    with pytest.raises(ValueError, match="init='imagenet'"):
        experiment.network(0, init="imagenet")
    with pytest.raises(ValueError, match="pretrained network"):
        tiny_experiment(pretrained=False).network(0, init="pretrained")


def test_same_steps_runs_measure_every_set_and_seed_and_draw_dashed_validation():
    experiment = tiny_experiment()
    larger = (torch.cat([experiment.small[0]] * 2), torch.cat([experiment.small[1]] * 2))
    runs, curves = overfitting.same_steps_runs(experiment, {"small": experiment.small, "large": larger},
                                               [0, 1], steps=4)
    assert list(zip(runs.set, runs.seed)) == [("small", 0), ("large", 0), ("small", 1), ("large", 1)]
    assert list(runs.epochs) == [2, 1, 2, 1]   # the same steps: half the epochs on twice the data
    assert {"gap", "loss_gap", "verdict", "history"} <= set(runs.columns)
    assert set(curves.index.get_level_values("curve")) == {"small · train", "small · val", "large · train",
                                                           "large · val"}
    assert set(curves.index.get_level_values("step")) == {2, 4}
    fig = overfitting.curves_figure(curves, title="t")
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles["small · val"] == "--" and styles["small · train"] == "-"


def test_capacity_table_reuses_the_measured_width_and_sorts_by_width():
    experiment = tiny_experiment()
    runs, _ = overfitting.same_steps_runs(experiment, {"small": experiment.small}, [0], steps=4)
    capacity = overfitting.capacity_table(experiment, [4, 2], [0], runs)
    assert list(capacity.index) == [2, 4] and (capacity["seeds"] == 1).all()
    assert capacity.loc[2, "gap_mean"] == pytest.approx(runs.gap.iloc[0])   # reused, not retrained
    assert capacity.loc[4, "params_mean"] > capacity.loc[2, "params_mean"]
    assert overfitting.capacity_figure(capacity, title="t").axes[0].get_xscale() == "log"


def test_memorisation_table_has_true_noisy_and_random_labels():
    experiment = tiny_experiment()
    runs, _ = overfitting.same_steps_runs(experiment, {"small": experiment.small}, [0], steps=4)
    table, curves = overfitting.memorisation_table(experiment, [0], 0.5, runs)
    assert list(table.index) == ["true labels", "50% noisy labels", "random labels"]
    assert table.loc["true labels", "val_acc_mean"] == runs.history.iloc[0].last("val_acc")
    memorised = table.loc["50% noisy labels", "wrong labels memorised_mean"]
    assert 0.0 <= memorised <= 1.0 and np.isnan(table.loc["random labels", "wrong labels memorised_mean"])
    assert len(curves) == 3 * 2 * 2   # 3 kinds of labels x train/val x 2 epochs
    assert overfitting.memorisation_figure(curves, chance=1 / 3).axes[0].get_legend() is not None


def test_cures_change_one_thing_and_are_compared_with_the_plain_recipe():
    experiment = tiny_experiment()
    cures = overfitting.cure_recipes(patience=1, weight_decay=0.5, dropout=0.5, lower_lr=1e-3)
    assert cures["pretrained, frozen"] == {"net": {"init": "pretrained", "freeze": True}}
    assert cures["lower learning rate"] == {"options": {"lr": 1e-3}}
    runs, _ = overfitting.same_steps_runs(experiment, {"small": experiment.small}, [0], steps=4)
    chosen = {name: cures[name] for name in ("dropout", "pretrained, frozen")}
    table = overfitting.cure_table(overfitting.cure_runs(experiment, chosen, [0], baseline=runs))
    assert list(table.index) == [overfitting.BASELINE, "dropout", "pretrained, frozen"]
    assert table.loc[overfitting.BASELINE, ["gap change", "loss gap change", "test acc change"]].eq(0).all()
    assert table.loc["dropout", "gap change"] == pytest.approx(
        table.loc["dropout", "gap_mean"] - table.loc[overfitting.BASELINE, "gap_mean"])
    assert set(table["verdict"]) <= {"under-fitting", "over-fitting", "healthy"}
    fig = overfitting.cures_figure(table, title="t")
    assert len(fig.axes) == 3 and len(fig.axes[0].patches) == 3
    bars = overfitting.train_test_bars({"train_acc": 1.0, "held_out_acc": 0.4, "gap": 0.6, "verdict": "over-fitting"},
                                       title="scratch")
    assert "gap 0.60 (over-fitting)" in bars.axes[0].get_title()


def test_split_estimates_compare_single_splits_with_kfold():
    labels = torch.arange(60) % 3
    features = torch.randn(60, 4) + torch.nn.functional.one_hot(labels, 4) * 2
    estimates = overfitting.split_estimates(features, labels, k=3, shuffles=4)
    assert len(estimates.single) == 4 and len(estimates.folds) == 4 and len(estimates.folds[0]) == 3
    assert np.allclose(estimates.kfold_means, [f.mean() for f in estimates.folds])
    table = estimates.table(reference=0.5)
    assert list(table.index) == ["one random split (33% validation)", "3-fold CV mean", "folds within one 3-fold run"]
    assert table["mean error vs test"].tolist() == pytest.approx((table["acc_mean"] - 0.5).tolist())
    assert table.loc["3-fold CV mean", "acc_range"] == pytest.approx(np.ptp(estimates.kfold_means))
    assert len(estimates.figure(0.5, 100, title="t").axes[0].collections) == 2
    assert isinstance(table, pd.DataFrame)


def test_pretrained_per_seed_and_steps_per_set():
    experiment = tiny_experiment()
    other = SmallResNet(5, width=2)
    experiment.pretrained = {0: experiment.pretrained, 1: other}
    first, second = experiment.network(0, init="pretrained"), experiment.network(1, init="pretrained")
    assert torch.equal(second.backbone[0].weight, other.backbone[0].weight)
    assert not torch.equal(first.backbone[0].weight, second.backbone[0].weight)
    with pytest.raises(ValueError, match="no pretrained network for seed 2"):
        experiment.network(2, init="pretrained")
    larger = (torch.cat([experiment.small[0]] * 2), torch.cat([experiment.small[1]] * 2))
    assert experiment.plain_steps(larger) == 2 * experiment.plain_steps()   # the same epochs: twice the steps
    runs, _ = overfitting.same_steps_runs(experiment, {"small": experiment.small, "large": larger}, [0],
                                          steps={"small": experiment.plain_steps(), "large": experiment.plain_steps(larger)})
    assert list(runs.epochs) == [2, 2]   # the same epochs on both sets


def test_per_seed_runs_of_capacity_and_memorisation():
    experiment = tiny_experiment()
    runs, _ = overfitting.same_steps_runs(experiment, {"small": experiment.small}, [0, 1], steps=2)
    capacity = overfitting.capacity_runs(experiment, [2, 4], [0, 1], runs)
    assert capacity[["width", "seed"]].values.tolist() == [[2, 0], [2, 1], [4, 0], [4, 1]]
    assert overfitting.capacity_summary(capacity)["seeds"].tolist() == [2, 2]
    memo, _ = overfitting.memorisation_runs(experiment, [0, 1], 0.5, runs)
    assert sorted(set(memo["labels"])) == ["50% noisy labels", "random labels", "true labels"]
    assert (memo.groupby("labels").size() == 2).all()


def test_spread_by_seed_measures_both_estimates_on_every_seeds_set():
    rng = np.random.default_rng(0)
    sets = {seed: (torch.tensor(rng.normal(size=(30, 4))), torch.arange(30) % 3) for seed in (0, 1)}
    spread = overfitting.spread_by_seed(lambda x: x, sets, k=3, shuffles=4)
    assert spread["seed"].tolist() == [0, 1] and (spread["validation_examples"] == 10).all()
    assert (spread[["single_std", "kfold_std", "single_range", "kfold_range"]] >= 0).all().all()

"""helpers.transfer: harmful sources, the transfer grid, recovery from a domain shift, crossover."""

import pandas as pd
import pytest
import torch

from helpers import transfer
from helpers.config import resolve
from helpers.vision import TargetTask


def test_shuffled_source_keeps_images_and_class_sizes_but_breaks_labels(store):
    images, labels = transfer.harmful_source("shuffled_labels", 4, per_class=6, glyphs_per_class=10, seed=0)
    assert images.shape == (24, 1, 28, 28) and torch.bincount(labels).tolist() == [6] * 4
    noise, noise_labels = transfer.harmful_source("noise", 4, per_class=6, glyphs_per_class=10, seed=0)
    assert noise.shape == images.shape and noise_labels.max() < 4
    again = transfer.harmful_source("shuffled_labels", 4, per_class=6, glyphs_per_class=10, seed=0)
    assert torch.equal(again[1], labels)
    with pytest.raises(ValueError, match="'harmful_source'='textures' is not allowed"):
        transfer.harmful_source("textures", 4, 6, 10, 0)
    with pytest.raises(ValueError, match="'harmful_per_class'=11 is not allowed: expected at most glyphs_per_class=10"):
        transfer.harmful_source("noise", 4, 11, 10, 0)


def test_the_control_source_is_the_same_images_with_their_true_labels(store):
    images, labels = transfer.harmful_source("shuffled_labels", 4, per_class=6, glyphs_per_class=10, seed=0)
    control, true_labels = transfer.harmful_source("glyph_labels", 4, per_class=6, glyphs_per_class=10, seed=0)
    assert torch.equal(control, images) and not torch.equal(true_labels, labels)
    assert sorted(true_labels.tolist()) == sorted(labels.tolist())  # a permutation: the same class sizes
    with pytest.raises(ValueError, match=r"'harmful_source'='textures' is not allowed: .*'glyph_labels'"):
        transfer.harmful_source("textures", 4, 6, 10, 0)


def test_model_for_seed_and_per_seed_pair_runs_by_seed():
    net = torch.nn.Linear(1, 1)
    assert transfer.model_for_seed(net, 5) is net and transfer.model_for_seed(None, 5) is None
    assert transfer.model_for_seed({3: net}, 3) is net
    with pytest.raises(KeyError, match=r"no starting model for seed 4: models are given for seeds \[3\]"):
        transfer.model_for_seed({3: net}, 4)
    grid = pd.DataFrame({"init": ["a", "a", "b", "b"], "seed": [1, 0, 0, 1], "acc": [0.1, 0.2, 0.3, 0.4]})
    assert transfer.per_seed(grid, "acc", [0, 1], init="a") == [0.2, 0.1]  # in the order of the seeds given
    with pytest.raises(ValueError, match="0 rows for seed 2"):
        transfer.per_seed(grid, "acc", [2], init="a")


def test_harmful_cnn_trains_once_then_loads(store):
    P = resolve("smoke", glyph_classes=4, glyphs_per_class=10, harmful_per_class=5, _record=False)
    first, summary = transfer.harmful_cnn(P, "shuffled_labels", progress=False)
    assert summary["trained"] and summary["images_seen"] == 20
    second, again = transfer.harmful_cnn(P, "shuffled_labels", progress=False)
    assert not again["trained"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other, _ = transfer.harmful_cnn(P, "noise", progress=False)  # its own key: a different checkpoint
    assert not torch.equal(other.head.weight, first.head.weight)


def test_steps_for_gives_enough_steps_and_epochs():
    assert transfer.steps_for(100, 32, min_steps=60, epochs=3) == 60
    assert transfer.steps_for(3000, 32, min_steps=60, epochs=2) == 188
    assert transfer.steps_for(10, 32, min_steps=1, epochs=2) == 2  # the batch is the whole set


def _toy_task(per_class=12):
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(per_class)
    images = torch.rand(len(labels), 1, 28, 28) * 0.2
    for c in range(3):
        images[labels == c, :, 4 + 7 * c: 10 + 7 * c, 8:20] = 1.0  # a bar whose height is the class
    split = (images, labels)
    return TargetTask("toy", split, split, split, split, 3)


def test_transfer_grid_and_shift_recovery_return_one_row_per_run():
    from helpers.models import SmallResNet

    task = _toy_task()
    pretrained = SmallResNet(5, width=4, stages=1)
    common = dict(lr=3e-3, batch_size=8, width=4, bf16=False, progress=False)
    grid = transfer.transfer_grid(task, {"scratch": None, "related": pretrained},
                                  [("scratch", 2), ("related", 2), ("related", 4)], [0, 1],
                                  min_steps=2, epochs=1, **common)
    assert len(grid) == 6 and set(grid.init) == {"scratch", "related"}
    assert set(grid[grid.init == "scratch"].method) == {"scratch"} and grid.test_acc.between(0, 1).all()
    with pytest.raises(ValueError, match="unknown starting points"):
        transfer.transfer_grid(task, {"scratch": None}, [("harmful", 2)], [0], min_steps=1, epochs=1, **common)
    by_seed = transfer.transfer_grid(task, {"related": {0: pretrained, 1: SmallResNet(5, width=4, stages=1)}},
                                     [("related", 2)], [0, 1], min_steps=2, epochs=1, **common)
    same = grid[(grid.init == "related") & (grid.budget == 2) & (grid.seed == 0)].test_acc.iloc[0]
    assert by_seed[by_seed.seed == 0].test_acc.iloc[0] == same  # seed 0 started from the model it was given
    recovery = transfer.shift_recovery(task, pretrained, 2, [2], [0.0, 1.0], [0], steps=2, **common)
    assert len(recovery) == 4 and set(recovery.extra_per_class) == {0, 2}
    with pytest.raises(ValueError, match=r"'transfer_budgets'=\[13\] is not allowed: .* in \[1, 12\]"):
        transfer.transfer_grid(task, {"scratch": None}, [("scratch", 13)], [0], min_steps=1, epochs=1, **common)
    with pytest.raises(ValueError, match=r"'shift_budget'=\[13\] is not allowed"):
        transfer.shift_recovery(task, pretrained, 13, [], [0.0], [0], steps=1, **common)
    with pytest.raises(ValueError, match=r"'shift_extra'=\[11\] is not allowed: .* in \[1, 10\]"):
        transfer.shift_recovery(task, pretrained, 2, [0, 11], [0.0], [0], steps=1, **common)


def test_crossover_finds_the_first_budget_where_scratch_catches_up():
    index = pd.MultiIndex.from_product([["scratch", "related"], [10, 100, 300]], names=["init", "budget"])
    table = pd.DataFrame({"test_acc_mean": [0.5, 0.8, 0.97, 0.9, 0.95, 0.975]}, index=index)
    assert transfer.crossover(table) is None
    assert transfer.crossover(table, tolerance=0.01) == 300
    assert transfer.crossover(table, tolerance=0.2) == 100


def test_fit_budgets_caps_at_the_pool_so_one_setting_runs_everywhere():
    assert transfer.fit_budgets([10, 30, 100, 300], 104) == [10, 30, 100, 104]
    assert transfer.fit_budgets([300, 10, 10], 1000) == [10, 300]
    assert transfer.fit_budgets([200, 300], 104) == [104]  # two budgets over the pool become one


def test_check_plan_sorts_and_checks_every_budget_before_training():
    task = _toy_task()  # 12 examples per class
    plan = {"transfer_budgets": [5, 2, 5], "shift_budget": 4, "shift_extra": [3, 8],
            "shift_severities": [1.0, 0.0, 0.5]}
    assert transfer.check_plan(plan, task) == ([2, 5], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"'transfer_budgets'=\[2, 13\] is not allowed"):
        transfer.check_plan({**plan, "transfer_budgets": [13, 2]}, task)
    with pytest.raises(ValueError, match=r"'shift_extra'=\[7, 13\] is not allowed: .* on top of shift_budget=4"):
        transfer.check_plan({**plan, "shift_extra": [3, 9]}, task)


def _grid_table():
    index = pd.MultiIndex.from_product([["harmful", "related", "scratch"], [10, 100]], names=["init", "budget"])
    table = pd.DataFrame({"test_acc_mean": [0.4, None, 0.8, 0.9, 0.5, 0.88],
                          "test_acc_std": [0.01, None, 0.03, 0.0, 0.04, 0.02]}, index=index)
    return table.dropna()  # the harmful source skipped the largest budget


def test_vs_scratch_adds_one_gain_row_per_source():
    accuracy = transfer.vs_scratch(_grid_table())
    assert list(accuracy.index) == ["harmful", "related", "scratch", "harmful - scratch", "related - scratch"]
    assert accuracy.loc["related - scratch"].tolist() == pytest.approx([0.3, 0.02])
    assert accuracy.loc["harmful - scratch", 10] == pytest.approx(-0.1)
    assert pd.isna(accuracy.loc["harmful - scratch", 100])


def test_gap_figure_draws_the_gap_with_combined_error_bars():
    fig = transfer.gap_figure(_grid_table())
    ax = fig.axes[0]
    line = ax.lines[0]
    assert line.get_ydata().tolist() == pytest.approx([0.3, 0.02]) and ax.get_xscale() == "log"
    bars = ax.containers[0].lines[2][0].get_segments()  # one vertical segment per budget
    assert [seg[1][1] - seg[0][1] for seg in bars] == pytest.approx([2 * 0.05, 2 * 0.02])
    assert "related - scratch" in ax.get_ylabel()


def test_with_shifted_examples_adds_other_pool_examples_from_the_new_domain():
    task = _toy_task()
    clean = torch.tensor([0, 1, 2, 3, 4, 5])  # two per class (labels cycle 0, 1, 2)
    images, labels = transfer.with_shifted_examples(task.pool, clean, 0, 1.0, seed=0)
    assert torch.equal(images, task.pool[0][clean]) and torch.equal(labels, task.pool[1][clean])
    images, labels = transfer.with_shifted_examples(task.pool, clean, 3, 0.0, seed=0)  # severity 0: unshifted copies
    assert len(labels) == 15 and torch.bincount(labels[6:]).tolist() == [3, 3, 3]
    added = [int(torch.nonzero((task.pool[0] == image).flatten(1).all(1))[0]) for image in images[6:]]
    assert not set(added) & set(clean.tolist()) and task.pool[1][added].tolist() == labels[6:].tolist()
    shifted, _ = transfer.with_shifted_examples(task.pool, clean, 3, 1.0, seed=0)
    assert torch.equal(shifted[:6], images[:6]) and not torch.equal(shifted[6:], images[6:])


def test_shift_figures_show_every_severity_and_training_set():
    fig = transfer.shift_examples(_toy_task(), [0.0, 1.0], classes=3)
    assert sum(1 for ax in fig.axes if ax.images) == 6
    index = pd.MultiIndex.from_product([[0, 3], [0.0, 1.0]], names=["extra_per_class", "severity"])
    table = pd.DataFrame({"acc_mean": [0.9, 0.3, 0.88, 0.7], "acc_std": [0.0] * 4}, index=index)
    fig = transfer.shift_figure(table, budget=30)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["clean only", "+ 3 shifted / class"]
    assert "30 clean labels" in fig.axes[0].get_title()


def test_falls_and_recovered_fraction():
    assert transfer.falls_at_every_step([0.9, 0.5, 0.2]) and not transfer.falls_at_every_step([0.9, 0.9, 0.2])
    index = pd.MultiIndex.from_product([[0, 3, 10], [0.0, 1.0]], names=["extra_per_class", "severity"])
    acc = pd.Series([0.9, 0.3, 0.88, 0.6, 0.89, 0.75], index=index)
    assert transfer.recovered_fraction(acc, [3, 10], 1.0) == pytest.approx({3: 0.5, 10: 0.75})

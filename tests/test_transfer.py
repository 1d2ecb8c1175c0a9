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

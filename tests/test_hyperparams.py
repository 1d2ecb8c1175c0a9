"""The fine-tuning hyperparameter sweep, the LR range test and the per-method learning rates (notebook 09)."""

import math

import pandas as pd
import pytest
import torch

from helpers import hyperparams as hp
from helpers.models import SmallResNet
from helpers.vision import TargetTask


@pytest.fixture(scope="module")
def tiny():
    """A 2-class task a tiny CNN can learn (bright left half vs bright right half) and a 'pretrained' net."""
    gen = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 2
        images = torch.rand(n, 1, 12, 12, generator=gen) * 0.2
        images[labels == 0, :, :, :6] += 0.8
        images[labels == 1, :, :, 6:] += 0.8
        return images, labels

    task = TargetTask("toy", split(40), split(40), split(40), split(40), num_classes=2)
    torch.manual_seed(0)
    return task, SmallResNet(2, width=4)


def test_schedules_map_onto_the_training_loop():
    assert hp.train_schedule("constant", 100) == {"schedule": "constant", "warmup_steps": 0}
    assert hp.train_schedule("warmup_cosine", 100) == {"schedule": "cosine", "warmup_steps": 10}
    with pytest.raises(ValueError, match="schedule='linear_warmup' is not allowed"):
        hp.train_schedule("linear_warmup", 10)
    with pytest.raises(ValueError, match="method='lora'"):
        hp.Trial("lora", 1e-3, 8, "cosine", 0.0, 0)


def test_factors_must_include_the_profile_rate():
    assert hp.check_factors("sweep_lr_factors", [3, 1, 0.1, 1]) == [0.1, 1.0, 3.0]
    with pytest.raises(ValueError, match="'sweep_lr_factors'.*includes 1"):
        hp.check_factors("sweep_lr_factors", [0.1, 3])
    with pytest.raises(ValueError, match="'method_lr_factors'"):
        hp.check_factors("method_lr_factors", [-1.0, 1.0])


def test_sweep_runs_both_methods_and_memoises(tiny):
    task, net = tiny
    sweep = hp.Sweep(task, net, budget=5, steps=4)
    runs = sweep.grid(hp.SWEEP_METHODS, [1e-3, 1e-2], [4], ["constant", "warmup_cosine"], [0.0], [0, 1])
    assert len(runs) == len(sweep) == 2 * 2 * 2 * 2
    assert runs["val_acc"].between(0, 1).all() and set(runs.method) == set(hp.SWEEP_METHODS)
    again = sweep.grid(["full_ft"], [1e-3], [4], ["constant"], [0.0], [0])
    assert len(sweep) == 16  # nothing retrained
    assert again.iloc[0].to_dict() == runs[(runs.method == "full_ft") & (runs.lr == 1e-3)
                                           & (runs.schedule == "constant") & (runs.seed == 0)].iloc[0].to_dict()
    matrix = hp.pivot(runs[runs.method == "linear_probe"], "schedule")
    assert list(matrix.columns) == [1e-3, 1e-2] and matrix.shape == (2, 2)
    assert all(p.requires_grad for p in net.parameters())  # the pretrained net is not touched


def test_sensitivity_counts_the_good_region():
    curve = pd.Series([0.5, 0.80, 0.82, 0.81, 0.3], index=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    s = hp.sensitivity(curve, tolerance=0.02)
    assert s["best_lr"] == 1e-3 and s["good_points"] == 3
    assert (s["good_low"], s["good_high"]) == (3e-4, 3e-3)
    assert s["span_decades"] == pytest.approx(1.0)
    assert hp.sensitivity(curve, tolerance=0.0)["good_points"] == 1
    grid = list(curve.index)
    assert hp.in_good_region(1e-3, s, grid) and hp.in_good_region(4e-3, s, grid)  # within half a step
    assert not hp.in_good_region(1e-2, s, grid) and not hp.in_good_region(1e-4, s, grid)
    assert not hp.in_good_region(7e-3, s, grid) and hp.in_good_region(7e-3, s, grid, reach=0.9)
    assert not hp.in_good_region(1e-2, s, grid, reach=0.9)  # a rate the sweep found worse never counts
    with pytest.raises(ValueError, match="'reach'=1"):
        hp.in_good_region(1e-3, s, grid, reach=1)


def test_suggest_lr_reads_a_synthetic_range_test():
    lrs = [1e-6 * 10 ** (6 * k / 99) for k in range(100)]
    # the loss is flat, falls fastest around 1e-3, bottoms out at 1e-2, then rises
    loss = [2.3 - 2.0 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + (max(0.0, math.log10(lr) + 2)) ** 2
            for lr in lrs]
    picks = hp.suggest_lr(pd.DataFrame({"lr": lrs, "smoothed": loss}))
    assert 5e-4 <= picks["steepest"] <= 2e-3
    assert 5e-4 <= picks["min_over_10"] <= 2e-3
    with pytest.raises(ValueError, match="lr_finder_steps"):
        hp.suggest_lr(pd.DataFrame({"lr": lrs[:5], "smoothed": loss[:5]}))
    assert hp.ran_past_minimum(pd.DataFrame({"lr": lrs, "smoothed": loss}))
    # cut where the loss still falls: the lowest loss is the range's end, and min_over_10 only a lower bound
    assert not hp.ran_past_minimum(pd.DataFrame({"lr": lrs[:60], "smoothed": loss[:60]}))


def test_lr_range_test_grows_the_rate_and_stops_when_the_loss_explodes(tiny):
    task, net = tiny
    model = hp.range_test_model(net, "full_ft", 2, seed=0)
    curve = hp.lr_range_test(model, task.pool, steps=60, batch_size=8, start_lr=1e-5, end_lr=1e3)
    ratios = (curve["lr"].iloc[1:].to_numpy() / curve["lr"].iloc[:-1].to_numpy())
    assert ratios == pytest.approx([(1e8) ** (1 / 59)] * len(ratios))
    assert len(curve) <= 60 and curve["lr"].iloc[0] == pytest.approx(1e-5)
    probe = hp.range_test_model(net, "linear_probe", 2, seed=0)
    assert not any(p.requires_grad for p in probe.backbone.parameters())
    with pytest.raises(ValueError, match="lr_finder_steps"):
        hp.lr_range_test(model, task.pool, steps=3)
    sweep = hp.Sweep(task, net, budget=5, steps=4)
    curve, picks = hp.lr_finder(sweep, "linear_probe", 0, steps=20, batch_size=4)
    assert set(picks) == {"steepest", "min_over_10"} and all(p > 0 for p in picks.values())


def test_methods_lr_table_ranks_at_both_rates():
    runs = pd.DataFrame([
        {"method": "a", "factor": 1.0, "seed": 0, "val_acc": 0.9, "test_acc": 0.90},
        {"method": "a", "factor": 3.0, "seed": 0, "val_acc": 0.8, "test_acc": 0.80},
        {"method": "b", "factor": 1.0, "seed": 0, "val_acc": 0.5, "test_acc": 0.50},
        {"method": "b", "factor": 3.0, "seed": 0, "val_acc": 0.95, "test_acc": 0.93},
    ])
    table = hp.methods_lr_table(runs)
    assert table.loc["a", "best_factor"] == 1.0 and table.loc["b", "best_factor"] == 3.0
    assert table.loc["b", "gain"] == pytest.approx(0.43)
    assert table["rank_at_profile_lr"].to_dict() == {"a": 1, "b": 2}
    assert table["rank_at_own_best_lr"].to_dict() == {"a": 2, "b": 1}


def test_methods_lr_grid_runs_notebook_03s_methods(tiny):
    task, net = tiny
    runs = hp.methods_lr_grid(task, net, ["scratch", "linear_probe"], [1, 3], [0], lr=1e-3, budget=5, steps=3,
                              batch_size=4, width=4, weight_decay=0.0, bf16=False)
    assert len(runs) == 4 and set(runs.factor) == {1.0, 3.0}
    assert runs["lr"].tolist() == pytest.approx([1e-3, 3e-3, 1e-3, 3e-3])
    per_seed = hp.methods_lr_grid(task, {0: net, 1: SmallResNet(2, width=4)}, ["linear_probe"], [1], [0, 1], lr=1e-3,
                                  budget=5, steps=3, batch_size=4, width=4, weight_decay=0.0, bf16=False)
    assert per_seed.loc[per_seed.seed == 0, "val_acc"].iloc[0] == runs[(runs.method == "linear_probe") & (runs.factor == 1)
                                                                       ].val_acc.iloc[0]  # seed 0: the net it was given
    with pytest.raises(ValueError, match="'methods'"):
        hp.methods_lr_grid(task, net, ["nope"], [1], [0], lr=1e-3, budget=5, steps=3, batch_size=4, width=4,
                           weight_decay=0.0, bf16=False)

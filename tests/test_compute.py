"""Compute to reach an accuracy: checkpoints, first crossing, per-seed targets, amortisation, the table."""

import math

import pandas as pd
import pytest
import torch

from helpers import compute, finetuning, vision
from helpers.models import SmallResNet


def test_checkpoint_epochs_are_geometric_and_end_at_the_last_epoch():
    assert compute.checkpoint_epochs(20) == [1, 2, 3, 4, 6, 8, 11, 16, 20]
    assert compute.checkpoint_epochs(1) == [1]
    assert compute.checkpoint_epochs(5, per_doubling=1) == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="total=0"):
        compute.checkpoint_epochs(0)


def test_tasks_to_amortise_is_pretraining_over_the_saving_per_task():
    assert compute.tasks_to_amortise(1000.0, 10.0, 110.0) == 10  # 1000 / 100 saved per task
    assert compute.tasks_to_amortise(1001.0, 10.0, 110.0) == 11  # rounded up: whole tasks
    assert compute.tasks_to_amortise(1000.0, 120.0, 110.0) == math.inf  # fine-tuning costs more: never


def _curves():
    """Two seeds; scratch ends at 0.8 / 0.6 and crosses late, full_ft crosses early, probe never."""
    rows = []
    for seed, final in ((0, 0.8), (1, 0.6)):
        for step, acc in ((10, 0.2 * final), (20, 0.7 * final), (40, 0.95 * final), (80, final)):
            rows.append({"method": "scratch", "budget": 5, "seed": seed, "step": step, "images": 10 * step,
                         "flops": 100.0 * step, "seconds": step / 10, "val_acc": acc})
        for step, acc in ((5, 0.5 * final), (10, final), (20, final)):
            rows.append({"method": "full_ft", "budget": 5, "seed": seed, "step": step, "images": 10 * step,
                         "flops": 100.0 * step, "seconds": step / 20, "val_acc": acc})
        rows.append({"method": "linear_probe", "budget": 5, "seed": seed, "step": 5, "images": 50,
                     "flops": 7.0, "seconds": 0.01, "val_acc": 0.1})
    return pd.DataFrame(rows)


def test_first_reaching_takes_the_earliest_checkpoint_at_or_above():
    curve = _curves().query("method == 'scratch' and seed == 0")
    assert compute.first_reaching(curve, 0.5).step == 20  # 0.16, 0.56, ...: the second checkpoint
    assert compute.first_reaching(curve, 0.76).step == 40  # exactly the accuracy there: reached
    assert compute.first_reaching(curve, 0.9) is None


def test_to_target_defines_each_seeds_target_from_its_own_scratch_run():
    per_seed = compute.to_target(_curves(), 0.9, {0: 1e4, 1: 2e4}).set_index(["method", "seed"])
    assert per_seed.loc[("scratch", 0), "target_acc"] == pytest.approx(0.72)
    assert per_seed.loc[("scratch", 1), "target_acc"] == pytest.approx(0.54)
    assert per_seed.loc[("scratch", 0), "step"] == 40 and per_seed.loc[("full_ft", 1), "step"] == 10
    assert per_seed.loc[("scratch", 0), "pretraining_flops"] == 0  # scratch pays no pretraining
    assert per_seed.loc[("full_ft", 1), "flops_with_pretraining"] == 1000 + 2e4
    assert not per_seed.loc[("linear_probe", 0), "reached"] and math.isnan(per_seed.loc[("linear_probe", 0), "flops"])
    with pytest.raises(ValueError, match="fraction=1.5"):
        compute.to_target(_curves(), 1.5, {0: 0, 1: 0})
    with pytest.raises(ValueError, match="no 'scratch' run"):
        compute.to_target(_curves().query("method != 'scratch'"), 0.9, {0: 0, 1: 0})


def test_compute_to_accuracy_table_has_the_columns_notebook_11_reads():
    table = compute.compute_to_accuracy(_curves(), [0.9, 1.0], {0: 1e4, 1: 2e4})
    assert tuple(table.columns) == compute.TABLE_COLUMNS
    row = table.set_index(["method", "target_fraction"]).loc[("full_ft", 0.9)]
    assert row.reached and row.steps_to_target == 10 and row.flops_to_target == 1000
    assert row.flops_vs_scratch == pytest.approx(0.25)  # scratch needs 4000 FLOPs at both seeds
    assert row.tasks_to_amortise == math.ceil(1.5e4 / 3000)  # mean pretraining / saving per task
    probe = table.set_index(["method", "target_fraction"]).loc[("linear_probe", 0.9)]
    assert not probe.reached and probe.seeds_reached == 0 and math.isnan(probe.tasks_to_amortise)
    assert math.isnan(table.set_index("method").loc["scratch"].tasks_to_amortise.iloc[0])


def test_finetune_records_a_curve_whose_compute_adds_up():
    torch.manual_seed(0)
    images, labels = torch.rand(24, 1, 12, 12), torch.arange(24) % 3
    pretrained = SmallResNet(5, width=4)
    for method in ("scratch", "full_ft", "linear_probe", "lp_ft"):
        tuned = finetuning.finetune(method, pretrained, (images, labels), num_classes=3, steps=12, lr=1e-3,
                                    batch_size=8, seed=0, width=4, forward_flops=100.0, curve_data=(images, labels))
        steps = [point["step"] for point in tuned.curve]
        assert steps == sorted(steps) and steps[-1] == 12  # 24 images, batch 8: 3 steps x 4 epochs
        assert tuned.curve[-1]["flops"] == pytest.approx(tuned.flops)  # the last checkpoint is the whole run
        assert all(0 <= point["val_acc"] <= 1 for point in tuned.curve)
    assert finetuning.finetune("full_ft", pretrained, (images, labels), num_classes=3, steps=12, lr=1e-3,
                               batch_size=8, seed=0, width=4).curve is None


def test_finetune_grid_takes_a_pretrained_network_per_seed_and_scratchs_own_schedule():
    task = vision.target_task("digits_sklearn", seed=0)
    torch.manual_seed(0)
    networks = [SmallResNet(7, width=4), SmallResNet(7, width=4)]
    asked = []

    def pretrained(index):
        asked.append(index)
        return networks[index]

    rows = vision.finetune_grid(task, pretrained, [("scratch", 1), ("full_ft", 1)], [3, 4], steps=2, lr=1e-3,
                                batch_size=8, width=4, bf16=False, progress=False, scratch_steps=4,
                                curve_budget=1, pretraining_flops=lambda i: 10.0 * (i + 1))
    assert asked == [0, 1]  # scratch never asks for a pretrained network
    assert rows.set_index(["method", "seed"]).loc[("scratch", 3), "steps"] == 4
    assert rows.set_index(["method", "seed"]).loc[("full_ft", 4), "steps"] == 2
    assert rows.pretraining_flops.tolist() == [0.0, 10.0, 0.0, 20.0]
    assert rows.pretrain_index.tolist() == [0, 0, 1, 1]
    curves = compute.curve_frame(rows)
    assert set(curves.method) == {"scratch", "full_ft"} and curves.groupby("seed").size().tolist() == [3, 3]  # 2 + 1 epochs
    same = vision.finetune_grid(task, networks[0], [("full_ft", 1)], [3], steps=2, lr=1e-3, batch_size=8,
                                width=4, bf16=False, progress=False)
    assert same.test_acc.iloc[0] == rows.test_acc.iloc[1]  # one network = the old call, unchanged


def test_equal_compute_steps_spend_the_flops_given_in_whole_epochs():
    assert compute.equal_compute_steps(3 * 10.0 * 8 * 5, forward_flops=10.0, batch_size=8, n_examples=8) == 5
    # 100 images in batches of 32: 4 steps an epoch (the last of 4 images); 6 epochs = 600 images
    assert compute.equal_compute_steps(3 * 10.0 * 600, forward_flops=10.0, batch_size=32, n_examples=100) == 24
    assert finetuning.epochs_for(100, 32, 24) == (6, 32)  # what finetune makes of those steps
    assert compute.equal_compute_steps(1.0, forward_flops=10.0, batch_size=8, n_examples=8) == 1
    with pytest.raises(ValueError, match="forward_flops=0"):
        compute.equal_compute_steps(1.0, forward_flops=0, batch_size=8, n_examples=8)


def test_per_seed_gives_one_side_of_a_paired_claim_in_seed_order():
    runs = pd.DataFrame([{"method": "full_ft", "budget": 2, "seed": s, "test_acc": a} for s, a in ((1, 0.5), (0, 0.4))])
    assert finetuning.per_seed(runs, "full_ft", 2) == [0.4, 0.5]
    with pytest.raises(ValueError, match="no 'scratch' run at budget 2"):
        finetuning.per_seed(runs, "scratch", 2)

"""Multi-task learning: the source task's loss as a penalty of the one loop, the stream's joint reference."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import forgetting, multitask
from helpers.config import resolve
from helpers.models import SmallResNet, new_head
from helpers.train import evaluate, train


def tiny(num_classes: int = 4, seed: int = 0) -> SmallResNet:
    torch.manual_seed(seed)
    return SmallResNet(num_classes, width=4, stages=2).eval()


def toy_data(n: int = 48, classes: int = 4, seed: int = 0, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright quadrant per class (learnable in a few steps); ``offset`` shifts the labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.rand(n, 1, 8, 8, generator=gen) * 0.3
    for c in range(classes):
        brighten_quadrant(images, labels == c, c)
    return images, labels + offset


def brighten_quadrant(images: torch.Tensor, rows: torch.Tensor, quadrant: int) -> None:
    """Add 0.7 to one 4x4 quadrant (0-3, row-major) of the chosen 8x8 images, in place."""
    top, left = (quadrant // 2) * 4, (quadrant % 2) * 4
    images[rows, :, top:top + 4, left:left + 4] += 0.7


def test_the_joint_loss_is_target_loss_plus_ratio_times_source_loss():
    model, source_head = new_head(tiny(), 3, seed=1), copy.deepcopy(tiny().head)
    source = toy_data(8)
    options = multitask.joint_options(model, source_head, source, ratio=0.5, lr=1e-2, weight_decay=0.0,
                                      batch_size=8, seed=0)
    (penalty,) = options["penalties"]
    # a batch of source examples drawn with the penalty's own seeded generator
    index = torch.randint(8, (8,), generator=torch.Generator().manual_seed(0))
    expected = 0.5 * F.cross_entropy(source_head(model.features(source[0][index])), source[1][index])
    assert penalty(model).item() == pytest.approx(expected.item(), rel=1e-5)
    in_optimizer = {id(p) for g in options["param_groups"] for p in g["params"]}
    assert {id(p) for p in source_head.parameters()} <= in_optimizer  # two heads, both trained
    assert {id(p) for p in model.parameters()} <= in_optimizer
    with pytest.raises(ValueError, match="'multitask_ratio'=-1"):
        multitask.joint_options(model, source_head, source, ratio=-1, lr=1e-2, weight_decay=0.0, batch_size=8,
                                seed=0)


def stripes(n: int = 64, classes: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A target that needs new features: the label is which pair of columns is bright, and a bright quadrant
    (the source's cue) is drawn at random, unrelated to the label."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.rand(n, 1, 8, 8, generator=gen) * 0.3
    quadrant = torch.randint(4, (n,), generator=gen)
    for q in range(4):
        brighten_quadrant(images, quadrant == q, q)
    for c in range(classes):
        images[labels == c, :, :, 2 * c:2 * c + 2] += 0.7
    return images, labels


def test_multitask_keeps_the_source_task_that_naive_fine_tuning_forgets():
    reference = tiny(num_classes=4)
    source = toy_data(64, classes=4)
    train(reference, source, epochs=15, batch_size=16, lr=3e-2, seed=0, progress=False)
    assert evaluate(reference, source)["acc"] >= 0.9
    # Not the source's quadrants mirrored: the source's quadrant features already separate those, so a new head
    # learns them without moving the backbone (with the stride-2 stem naive fine-tuning kept 1.0 of the source).
    # Stripes need features the source never learnt: measured at seed 0, naive kept 0.50, multitask 0.91.
    target = stripes()
    kept = {}
    for method in ("naive", "multitask"):
        model, old_head, _ = forgetting.finetune_remembering(method, reference, target, source=source, num_classes=4,
                                                             steps=40, lr=3e-2, batch_size=16, seed=0)
        kept[method] = evaluate(forgetting.with_head(model, old_head), source)["acc"]
        assert evaluate(model, target)["acc"] >= 0.7  # both learn the new task
    assert kept["multitask"] >= 0.8 and kept["multitask"] >= kept["naive"] + 0.3


def test_ratio_zero_is_plain_fine_tuning():
    reference, target, source = tiny(), toy_data(32, seed=1), toy_data(32)
    heads = {}
    for ratio in (0.0, None):
        common = dict(source=source, num_classes=4, steps=4, lr=1e-2, batch_size=8, seed=0)
        if ratio is None:
            model, _, _ = forgetting.finetune_remembering("naive", reference, target, **common)
        else:
            model, _, _ = forgetting.finetune_remembering("multitask", reference, target, multitask_ratio=ratio,
                                                          **common)
        heads[ratio] = model.head.weight.detach()
    assert torch.allclose(heads[0.0], heads[None], atol=1e-6)


class FakeTask:
    """A target task with ``pool``/``test`` and ``budget`` like :class:`helpers.vision.TargetTask`."""

    num_classes = 6

    def __init__(self):
        pool = toy_data(60, classes=4)
        self.pool = (torch.cat([pool[0], pool[0].flip(-1)]), torch.cat([pool[1], pool[1] + 2]).clamp(max=5))
        self.test = self.pool

    def budget(self, per_class: int, seed: int):
        from helpers.data import label_budget

        index = label_budget(self.pool[1], per_class, seed)
        return self.pool[0][index], self.pool[1][index]


def test_joint_stream_reference_and_the_gap_it_defines():
    table = multitask.joint_stream_runs(tiny(), FakeTask(), seeds=[0, 1], budget=5, groups=[[0, 1, 2], [3, 4, 5]],
                                        steps=3, num_classes=6, lr=1e-2, batch_size=8, ewc_strength=1.0)
    assert list(table.columns) == ["seed", "acc_task_0", "acc_task_1", "avg_acc"]
    assert len(table) == 2 and table["avg_acc"].between(0, 1).all()
    assert np.allclose(table["avg_acc"], table[["acc_task_0", "acc_task_1"]].mean(axis=1))

    stream = pd.DataFrame({"avg_acc_mean": [0.3, 0.5, 0.7]}, index=["naive", "ewc", "replay"])
    closed = multitask.gap_closed(stream, joint_avg_acc=0.7)
    assert closed.to_dict() == pytest.approx({"naive": 0.0, "ewc": 0.5, "replay": 1.0})
    assert multitask.gap_closed(stream, joint_avg_acc=0.2).isna().all()  # no gap to close
    with pytest.raises(ValueError, match="'naive' row"):
        multitask.gap_closed(stream.drop(index="naive"), 0.7)


def test_the_cost_table_says_which_methods_need_old_data():
    source = toy_data(200, classes=4)
    plane = pd.DataFrame({"seconds_mean": [1.0, 2.0, 1.1, 1.5, 1.2], "target_acc_mean": [0.9, 0.88, 0.85, 0.87, 0.86],
                          "source_acc_mean": [0.2, 0.8, 0.5, 0.6, 0.4]},
                         index=["naive", "multitask", "replay", "ewc", "lwf"])
    costs = multitask.cost_table(plane, source, replay_fraction=0.05)
    assert costs.loc["multitask", "old examples needed"] == 200 and costs.loc["multitask", "old data share"] == 1.0
    assert costs.loc["replay", "old examples needed"] == 4 * round(0.05 * 50)
    assert costs.loc["ewc", "old examples needed"] == 200  # the Fisher's 256, capped at what there is
    assert costs.loc["naive", "old examples needed"] == costs.loc["lwf", "old examples needed"] == 0
    assert costs.loc["multitask", "x naive time"] == pytest.approx(2.0)
    kept = multitask.keeps_and_learns(plane, source_before=0.9)
    assert kept == pytest.approx({"kept": 0.8 / 0.9, "target_vs_naive": -0.02})
    own = multitask.keeps_and_learns(plane.assign(forgotten=[0.7, 0.15, 0.4, 0.3, 0.5]))  # each run's own before
    assert own == pytest.approx({"kept": 0.85, "target_vs_naive": -0.02})


def test_the_ratio_is_a_knob_with_a_clear_error():
    assert resolve("smoke").multitask_ratio == 1.0
    with pytest.raises(ValueError, match="multitask_ratio"):
        resolve("smoke", multitask_ratio=-0.5)

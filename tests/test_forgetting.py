"""Forgetting mitigations: each is a penalty, a loss function or an option of the one training loop."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import continual, finetuning, forgetting, vision
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
    tasks = continual.class_split_tasks(toy_data(16), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"'stream_methods'=\['ewk'\] is not allowed"):
        continual.learn_sequence("ewk", reference, tasks, tasks, num_classes=4, steps=1, lr=1e-2, batch_size=4,
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
    if method == "multitask":  # the one method that trains the old task's head too (test_multitask)
        assert not torch.equal(old_head.weight, reference.head.weight)
    else:
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
    for method in ("ewc", "replay", "multitask"):
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
    assert continual.frontier_margin(0.93, 0.70, naive_lrs) == pytest.approx(0.55)  # only 0.95 reaches 0.93
    assert continual.frontier_margin(0.90, 0.70, naive_lrs) == pytest.approx(0.37)  # best of 0.95 and 0.92
    assert continual.frontier_margin(0.99, 0.10, naive_lrs) == pytest.approx(-0.05)  # beyond all: vs best target
    assert continual.frontier_margin(0.50, 0.20, naive_lrs) < 0  # dominated


def test_learn_sequence_gives_the_accuracy_matrix():
    images, labels = toy_data(96, classes=4)
    tasks = continual.class_split_tasks((images, labels), [[0, 1], [2, 3]])
    assert [sorted(t[1].unique().tolist()) for t in tasks] == [[0, 1], [2, 3]]
    for method in ("naive", "ewc", "lwf", "replay"):
        R = continual.learn_sequence(method, tiny(), tasks, tasks, num_classes=4, steps=4, lr=1e-2, batch_size=16,
                                      seed=0)
        assert R.shape == (2, 2) and ((0 <= R) & (R <= 1)).all()
    with pytest.raises(ValueError, match=r"task classes \[7\] have no examples"):
        continual.class_split_tasks((images, labels), [[7]])


def test_train_loop_is_not_copied():
    """Mitigations call helpers.train.train: the loop exists once."""
    import inspect

    for module in (finetuning, forgetting):
        source = inspect.getsource(module)
        assert source.count("optimizer.step()") == 0 and source.count(".backward()") == 0
    assert train.__module__ == "helpers.train"


# --- notebook 05's experiments -----------------------------------------------------------------------

def toy_task(seed: int = 0):
    from helpers.vision import TargetTask

    pool, test = toy_data(64, seed=seed), toy_data(32, seed=seed + 1)
    return TargetTask("toy", pool, test, test, test, num_classes=4)


def test_run_options_are_the_profiles_values():
    from helpers.config import resolve

    P = resolve("smoke", _record=False, ewc_strength=3.0)
    options = continual.run_options(P, num_classes=4, device="cpu")
    assert options["ewc_strength"] == 3.0 and options["batch_size"] == P.finetune_batch_size
    assert options["num_classes"] == 4 and options["lr"] == P.lr and options["bf16"] == P.bf16


def test_pretraining_glyphs_hold_out_a_tenth_of_every_class():
    params = {"glyph_classes": 3, "glyphs_per_class": 20, "seed": 0}
    (seen_x, seen_y), (held_x, held_y) = vision.pretraining_glyphs(params)
    assert torch.bincount(held_y).tolist() == [2, 2, 2] and torch.bincount(seen_y).tolist() == [18, 18, 18]
    assert not any(torch.equal(h, s) for h in held_x for s in seen_x)  # no glyph in both
    again = vision.pretraining_glyphs(params)
    assert torch.equal(again[1][0], held_x)  # the same split every time: the one pretraining used


def toy_sources(seeds=(0, 1), classes: int = 5) -> dict:
    """One toy pretraining run per seed: a different model and different glyphs for each."""
    sources = {}
    for seed in seeds:
        model, glyphs = tiny(num_classes=classes, seed=seed), toy_data(20, classes=classes, seed=10 + seed)
        sources[seed] = continual.Pretraining(model, glyphs, glyphs, evaluate(model, glyphs)["acc"] + 0.5, seed=10 + seed)
    return sources


def test_pretrainings_gives_each_seed_its_own_pretraining_run(monkeypatch):
    from helpers.config import resolve

    built = []

    def fake_pretrained_cnn(params, objective, device="cpu", progress=True):
        built.append(params["seed"])
        return tiny(num_classes=3, seed=params["seed"]), {"trained": params["seed"] == 5}

    monkeypatch.setattr(vision, "pretrained_cnn", fake_pretrained_cnn)
    monkeypatch.setattr(vision, "pretraining_glyphs", lambda params: (toy_data(12, classes=3, seed=params["seed"]),) * 2)
    P = resolve("smoke", _record=False, seed=3, seeds=3, pretrain_seeds=2)
    sources = continual.pretrainings(P)
    assert list(sources) == [3, 4, 5] and built == [3, 4]   # seed 5 reuses pretraining run 3 (5 = 3 + 2 mod 2)
    assert sources[5] is sources[3] and sources[4].seed == 4 and sources[3].model is not sources[4].model
    table = continual.pretraining_table(sources)
    assert table["pretraining seed"].tolist() == [3, 4, 3] and table["source_acc_before"].between(0, 1).all()


def test_plane_runs_scores_both_tasks_on_each_seeds_own_pretraining():
    task, sources = toy_task(), toy_sources()
    runs, kept = continual.plane_runs(["naive", "l2sp"], sources, task, seeds=[0, 1], budget=4, steps=2,
                                       progress=False, num_classes=4, lr=1e-2, batch_size=8)
    assert runs[["method", "seed"]].values.tolist() == [["naive", 0], ["l2sp", 0], ["naive", 1], ["l2sp", 1]]
    assert runs[["target_acc", "source_acc"]].stack().between(0, 1).all() and (runs["seconds"] > 0).all()
    assert runs["pretraining_seed"].tolist() == [10, 10, 11, 11]
    assert runs["forgotten"].tolist() == pytest.approx((1 - runs.source_acc / runs.source_before).tolist())
    assert sorted(kept) == [("naive", 0), ("naive", 1)]
    assert runs.loc[0, "target_acc"] == evaluate(kept[("naive", 0)], task.test)["acc"]
    # seed 1 started from its own pretrained backbone, not seed 0's
    assert not torch.equal(kept[("naive", 1)].backbone[0].weight, kept[("naive", 0)].backbone[0].weight)


def test_plane_table_adds_forgetting_cost_and_the_lr_frontier():
    import pandas as pd

    runs = pd.DataFrame({"method": ["naive", "naive", "naive_high_lr", "lower_lr", "ewc"], "seed": [0, 1, 0, 0, 0],
                         "seconds": [1.0] * 5, "target_acc": [0.90, 0.94, 0.95, 0.88, 0.90],
                         "source_acc": [0.10, 0.20, 0.05, 0.30, 0.60]})
    plane = continual.plane_table(runs, source_before=0.8)
    assert plane.loc["naive", "target_acc_mean"] == pytest.approx(0.92) and plane.loc["naive", "seeds"] == 2
    assert plane.loc["ewc", "forgotten"] == pytest.approx(0.25)  # 1 - 0.6 / 0.8
    assert plane.loc["ewc", "target_cost"] == pytest.approx(0.02) and plane.loc["naive", "target_cost"] == 0
    # per seed: in seed 0, at 0.90 target accuracy naive (0.90) keeps 0.10 and naive_high_lr (0.95) 0.05: 0.6 - 0.10
    assert plane.loc["ewc", "above_lr_frontier"] == pytest.approx(0.50)
    frontier = continual.frontier_by_seed(runs)
    assert frontier[["method", "seed"]].values.tolist() == [["ewc", 0]]
    assert frontier.loc[0, "frontier"] == pytest.approx(0.10) and frontier.loc[0, "margin"] == pytest.approx(0.50)
    own = continual.plane_table(runs.assign(forgotten=[0.5, 0.7, 0.9, 0.1, 0.2]))  # each run against its own before
    assert own.loc["naive", "forgotten"] == pytest.approx(0.6) and own.loc["ewc", "forgotten"] == pytest.approx(0.2)
    assert plane.loc[list(continual.NAIVE_LRS), "above_lr_frontier"].isna().all()
    assert continual.lr_baselines(plane) == ["naive", "naive_high_lr", "lower_lr"]
    xs, ys = continual.lr_frontier(plane, points=5)  # x = 0, 0.25, 0.5, 0.75, 1
    assert list(xs) == [0, 0.25, 0.5, 0.75, 1] and ys[:4] == pytest.approx([0.3] * 4) and ys[4] == 0.05
    alone = continual.plane_table(runs[runs.method == "ewc"], source_before=0.8)
    assert "above_lr_frontier" not in alone and "target_cost" not in alone
    assert continual.lr_frontier(alone) is None and continual.lr_baselines(alone) == []


def test_old_head_vs_probe_scores_the_pretrained_the_fine_tuned_and_a_random_network():
    pretrained = tiny(num_classes=4)
    source = toy_data(48, seed=3)
    small = continual.per_class(source, 3, seed=0)
    assert torch.bincount(small[1]).tolist() == [3, 3, 3, 3]
    assert torch.bincount(continual.per_class(source, 99, seed=0)[1]).tolist() == [12] * 4  # all there is
    sources = {0: continual.Pretraining(pretrained, source, source, 1.0, seed=0)}
    models = {("naive", 0): new_head(copy.deepcopy(pretrained), 4, seed=1)}
    runs, probes = continual.old_head_vs_probe(sources, models, train_per_class=3, test_per_class=5)
    assert runs[["model", "seed"]].values.tolist() == [["pretrained", 0], [continual.RANDOM_CONTROL, 0],
                                                       ["after naive", 0]]
    assert probes.loc["pretrained", "old head_mean"] == evaluate(pretrained, continual.per_class(source, 5, 0))["acc"]
    # the new head is never used: the backbone is read through the pretrained head
    assert probes.loc["after naive", "old head_mean"] == probes.loc["pretrained", "old head_mean"]
    assert probes[["old head_mean", "re-fitted probe_mean"]].stack().between(0, 1).all()


def test_random_like_is_the_same_architecture_freshly_initialised():
    pretrained = tiny(num_classes=4)
    with torch.no_grad():
        pretrained.backbone[1].running_mean.fill_(3.0)   # statistics pretraining left behind
    fresh = continual.random_like(pretrained, seed=7)
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in pretrained.named_parameters()]
    assert not torch.equal(fresh.backbone[0].weight, pretrained.backbone[0].weight)
    assert (fresh.backbone[1].running_mean == 0).all() and not fresh.training
    again = continual.random_like(pretrained, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), again.parameters()))   # seeded
    assert (pretrained.backbone[1].running_mean == 3.0).all()   # the original is untouched


def test_notebook_05_claims_cells_can_be_rerun():
    """A claims cell that re-assigned a name an earlier cell made would change what re-running reads."""
    import ast
    import json
    from pathlib import Path

    for name in ("05_forgetting", "06_overfitting"):
        cells = json.loads((Path(__file__).parents[1] / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                     and "## Claims, checked on the numbers above" in "".join(c["source"]))

        def assigned(cell):
            tree = ast.parse("".join(cell["source"]))
            return {t.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AugAssign, ast.For))
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    for t in ast.walk(target) if isinstance(t, ast.Name)}

        before = set().union(*(assigned(c) for c in cells[:start] if c["cell_type"] == "code"))
        after = set().union(*(assigned(c) for c in cells[start:] if c["cell_type"] == "code"))
        assert not before & after, f"{name}: claims cells re-assign {sorted(before & after)}"


def test_stream_runs_give_matrices_and_the_continual_metrics():
    from helpers import metrics

    matrices, table = continual.stream_runs(["naive", "replay"], {0: tiny()}, toy_task(), seeds=[0], budget=8,
                                             groups=[[0, 1], [2, 3]], steps=2, progress=False, num_classes=4,
                                             lr=1e-2, batch_size=8)
    assert list(matrices) == ["naive", "replay"] and matrices["naive"][0].shape == (2, 2)
    R = matrices["replay"][0]
    assert table.loc["replay", "avg_acc_mean"] == metrics.average_accuracy(R)
    assert table.loc["replay", "last_task_acc_mean"] == R[-1, -1] and table.loc["replay", "seeds"] == 1
    assert continual.best_mitigation(table) == "replay"
    assert continual.best_mitigation(table.loc[["naive"]]) is None


def test_accuracy_matrices_figure_averages_the_seeds():
    matrices = {"naive": [np.eye(2), np.zeros((2, 2))], "ewc": [np.ones((2, 2))] * 2}
    fig, means = continual.accuracy_matrices_figure(matrices, [[0, 1], [2, 3]], shown=("naive", "lwf", None))
    assert list(means) == ["naive"] and means["naive"].tolist() == [[0.5, 0], [0, 0.5]]
    assert [ax.get_title() for ax in fig.axes] == ["naive: ACC 0.25"]
    assert "mean of 2 seeds" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["{0,1}", "{2,3}"]
    fig, means = continual.accuracy_matrices_figure(matrices, [[0, 1], [2, 3]])
    assert list(means) == ["naive", "ewc"] and len(fig.axes) == 2

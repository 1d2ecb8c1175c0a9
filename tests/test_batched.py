"""helpers.batched: N fine-tuning runs trained together must be the runs finetune() makes one at a time.

Tolerances: the grouped convolution sums in another order than the dense one (about 1e-7 relative
per operation in float32), and Adam divides by sqrt(v), so a difference grows a little each step.
After a few steps weights agree to 1e-4 (absolute, weights of order 0.1-1); with bf16 autocast each
operation rounds to 3 significant digits, so only predictions are compared there.
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import batched
from helpers.finetuning import finetune
from helpers.models import SmallResNet
from helpers.train import evaluate, train

WIDTH, CLASSES = 4, 5
STEPS, BATCH = 6, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and a shared machine stays usable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is a brightness pattern (learnable in a few steps), 12 x 12 to stay fast."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.rand(n, 1, 12, 12, generator=gen) * 0.5
    for c in range(CLASSES):
        images[labels == c, :, c * 2:(c + 1) * 2, :] += 0.5
    return images, labels


@pytest.fixture(scope="module")
def pretrained() -> SmallResNet:
    """A small ResNet trained a little on other classes, so BatchNorm statistics are not the defaults."""
    torch.manual_seed(0)
    model = SmallResNet(7, width=WIDTH)
    images, labels = _data(70, seed=99)
    train(model, (images, labels % 7), epochs=2, lr=3e-3, batch_size=16, progress=False)
    return model


FLOPS = 1000.0  # a made-up cost of one forward pass: the FLOP counts must follow finetune()'s formulas


def _one_at_a_time(run: batched.Run, **kw):
    return finetune(run.method, run.pretrained, run.data, num_classes=CLASSES, steps=run.steps or STEPS, lr=run.lr,
                    batch_size=BATCH, seed=run.seed, width=WIDTH, forward_flops=FLOPS, **kw)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def test_every_method_matches_the_one_at_a_time_path(pretrained):
    # 20 examples in batches of 8: 2 epochs of 3 steps, the last batch of each smaller, as in finetune()
    runs = [batched.Run(method, _data(20, seed), seed, pretrained, lr=3e-3)
            for seed, method in enumerate(["scratch", "full_ft", "discriminative_lr", "full_ft_high_lr",
                                           "lp_ft", "linear_probe", "gradual_unfreezing", "full_ft"])]
    runs.append(batched.Run("linear_probe", runs[4].data, 4, pretrained, lr=3e-3))  # shares lp_ft's features
    val = _data(20, seed=50)
    together = batched.finetune_many(runs, num_classes=CLASSES, steps=STEPS, batch_size=BATCH, width=WIDTH,
                                     val_data=val, forward_flops=FLOPS)
    assert [t.method for t in together] == [r.method for r in runs]
    for run, mine in zip(runs, together):
        alone = _one_at_a_time(run, val_data=val)
        assert _max_diff(mine.model, alone.model) < 1e-4, run.method
        assert mine.images_seen == alone.images_seen and mine.flops == alone.flops
        assert (mine.trainable_params, mine.total_params) == (alone.trainable_params, alone.total_params)
        mine_rows, alone_rows = mine.history.rows, alone.history.rows
        assert [r["epoch"] for r in mine_rows] == [r["epoch"] for r in alone_rows]
        assert mine.history.examples_seen == alone.history.examples_seen
        for key in ("train_loss", "train_acc", "lr", "val_loss", "val_acc"):
            if key in alone_rows[-1]:
                assert mine_rows[-1][key] == pytest.approx(alone_rows[-1][key], abs=1e-4), (run.method, key)
        assert all(p.requires_grad for p in mine.model.parameters())
    assert _max_diff(together[-1].model, together[5].model) > 0  # different seeds, different heads


def test_runs_of_different_sizes_train_in_separate_groups(pretrained):
    runs = [batched.Run("full_ft", _data(n, seed), seed, pretrained) for seed, n in enumerate([10, 24, 10, 24])]
    runs.append(batched.Run("scratch", _data(10, 7), 7, steps=2 * STEPS))  # its own, longer schedule
    together = batched.finetune_many(runs, num_classes=CLASSES, steps=STEPS, batch_size=BATCH, width=WIDTH,
                                     max_group=1 + len(runs) // 3, forward_flops=FLOPS)
    for run, mine in zip(runs, together):
        alone = _one_at_a_time(run)
        assert _max_diff(mine.model, alone.model) < 1e-4
        assert mine.history.examples_seen == alone.history.examples_seen
        assert len(mine.history.rows) == len(alone.history.rows)


def test_bf16_runs_agree_in_what_they_predict(pretrained):
    runs = [batched.Run(m, _data(24, s), s, pretrained, lr=3e-3) for s, m in enumerate(["scratch", "full_ft"])]
    test = _data(200, seed=77)
    together = batched.finetune_many(runs, num_classes=CLASSES, steps=STEPS, batch_size=BATCH, width=WIDTH, bf16=True)
    mine = batched.evaluate_many([t.model for t in together], test, bf16=True)
    for run, metrics in zip(runs, mine):
        alone = evaluate(_one_at_a_time(run, bf16=True).model, test, bf16=True)
        assert metrics["acc"] == pytest.approx(alone["acc"], abs=0.05), run.method
        assert metrics["loss"] == pytest.approx(alone["loss"], rel=0.05), run.method


def test_evaluate_many_is_evaluate_for_each_model(pretrained):
    models = [copy.deepcopy(pretrained) for _ in range(3)]
    for i, model in enumerate(models[1:], 1):
        torch.manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    test = _data(50, seed=3)
    test = (test[0], test[1] % 7)
    for model, metrics in zip(models, batched.evaluate_many(models, test, batch_size=16)):
        expected = evaluate(model, test)
        assert metrics["acc"] == expected["acc"]
        assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert len({m["loss"] for m in batched.evaluate_many(models, test)}) == 3


def test_per_model_clipping_and_rates_match_torch():
    """StackedAdamW on slice n is torch.optim.AdamW + clip_grad_norm_ on model n alone."""
    torch.manual_seed(0)
    weights = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    biases = [torch.randn(3, requires_grad=True) for _ in range(2)]
    grads = [(torch.randn(3, 4) * s, torch.randn(3) * s) for s in (0.1, 10.0)]  # one clipped, one not
    stacked = {"w": torch.stack(weights).detach().clone(), "b": torch.stack(biases).detach().clone()}
    rates = {"w": [1e-2, 3e-2], "b": [2e-2, 5e-3]}
    optimizer = batched.StackedAdamW(stacked, rates, {"w": [0.1, 0.5], "b": [0.0, 0.0]})
    for _ in range(3):
        stacked["w"].grad = torch.stack([g[0] for g in grads])
        stacked["b"].grad = torch.stack([g[1] for g in grads])
        norms = optimizer.clip_gradients()
        optimizer.step(0.5)
    assert float(norms[0]) < 1 < float(norms[1])
    for n in range(2):
        reference = torch.optim.AdamW([{"params": [weights[n]], "lr": rates["w"][n] * 0.5, "weight_decay": [0.1, 0.5][n]},
                                       {"params": [biases[n]], "lr": rates["b"][n] * 0.5, "weight_decay": 0.0}])
        for _ in range(3):
            weights[n].grad, biases[n].grad = grads[n][0].clone(), grads[n][1].clone()
            torch.nn.utils.clip_grad_norm_([weights[n], biases[n]], 1.0)
            reference.step()
        assert torch.allclose(stacked["w"][n], weights[n].detach(), atol=1e-6)
        assert torch.allclose(stacked["b"][n], biases[n].detach(), atol=1e-6)


def test_bad_input_fails_before_training(pretrained):
    data = _data(10, 0)
    with pytest.raises(ValueError, match="needs a pretrained model"):
        batched.finetune_many([batched.Run("full_ft", data, 0)], num_classes=CLASSES, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="methods"):
        batched.finetune_many([batched.Run("fine_tune_everything", data, 0, pretrained)], num_classes=CLASSES,
                              steps=1, batch_size=4)
    with pytest.raises(ValueError, match="max_group"):
        batched.finetune_many([batched.Run("scratch", data, 0)], num_classes=CLASSES, steps=1, batch_size=4,
                              max_group=0)
    with pytest.raises(ValueError, match="same parameter names and shapes"):
        batched.Stack([SmallResNet(3, width=4), SmallResNet(3, width=8)])
    dropping = SmallResNet(CLASSES, width=WIDTH, dropout=0.5)
    with pytest.raises(ValueError, match="dropout"):
        batched.grouped_forward(batched.Stack([dropping, dropping]), data[0], training=True)


def test_the_benchmark_times_03s_grid():
    """helpers.bench_batched times the runs notebook 03 makes (running it takes minutes: by hand)."""
    from helpers import bench_batched
    from helpers.config import resolve

    params = resolve("smoke", _record=False)
    pairs = bench_batched.grid(params)
    assert ("full_ft", params["compare_budget"]) in pairs and len(pairs) == len(set(pairs))
    assert {b for _, b in pairs} == {*params["budgets"], params["compare_budget"]}
    assert {b for _, b in bench_batched.grid(params, [params["budgets"][0]])} == {params["budgets"][0]}

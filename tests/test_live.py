"""Watching a run: live curves as a training hook, the static figure, and the run diagnosis (notebook 09)."""


import matplotlib
import pytest
import torch

from helpers import live
from helpers.models import SmallResNet
from helpers.train import History, train
from helpers.vision import TargetTask

matplotlib.use("Agg")


def rows(train_loss, train_acc=None, val_acc=None):
    n = len(train_loss)
    train_acc = train_acc or [0.5] * n
    val_acc = val_acc or train_acc
    return [{"epoch": i + 1, "train_loss": loss, "val_loss": loss * 1.1, "train_acc": a, "val_acc": b}
            for i, (loss, a, b) in enumerate(zip(train_loss, train_acc, val_acc))]


def test_divergence_non_finite_exploded_or_above_a_uniform_guess():
    assert live.diagnose_run(rows([2.0, float("nan")]), num_classes=10).verdict == "divergence"
    exploded = live.diagnose_run(rows([90.0, 5.0, 3.2, 3.0]), num_classes=10)
    assert exploded.verdict == "divergence" and "reached 90" in str(exploded)
    assert live.diagnose_run(rows([2.3, 3.0, 3.6]), num_classes=10).verdict == "divergence"  # 3.6 > 1.5 ln 10


def test_learning_rate_too_high_spike_or_bouncing_loss():
    spiked = live.diagnose_run(rows([4.6, 2.1, 1.6, 1.2, 0.8]), num_classes=10)
    assert spiked.verdict == "learning rate too high" and "above 1.5 x ln(10)" in str(spiked)
    bouncing = live.diagnose_run(rows([1.0, 1.3, 0.9, 1.2, 0.8, 1.1]))
    assert bouncing.verdict == "learning rate too high" and bouncing.numbers["loss_rises"] == 3
    # the same first-epoch spike is no evidence without the number of classes (no reference)
    assert live.diagnose_run(rows([4.6, 2.1, 1.6, 1.2, 0.8])).verdict != "learning rate too high"


def test_falls_back_to_the_over_and_under_fitting_diagnosis():
    over = live.diagnose_run(rows([2.2, 1.0, 0.3, 0.1], [0.5, 0.9, 1.0, 1.0], [0.4, 0.6, 0.62, 0.6]), num_classes=10)
    assert over.verdict == "over-fitting" and over.numbers["gap"] == pytest.approx(0.4)
    under = live.diagnose_run(rows([2.3, 2.28, 2.25, 2.2], [0.1, 0.12, 0.15, 0.2], [0.1, 0.12, 0.15, 0.2]),
                              num_classes=10)
    assert under.verdict == "under-fitting"
    healthy = live.diagnose_run(rows([2.0, 0.5, 0.3, 0.3], [0.6, 0.95, 0.96, 0.96], [0.6, 0.93, 0.94, 0.94]),
                                num_classes=10)
    assert healthy.verdict == "healthy"
    assert set(live.PATTERNS) >= {over.verdict, under.verdict, healthy.verdict, "divergence"}
    with pytest.raises(ValueError, match="train_loss"):
        live.diagnose_run([])


def test_curves_figure_marks_the_early_stopping_epoch():
    history = History(rows=rows([2.0, 1.0, 0.8, 0.9], [0.5, 0.8, 0.9, 0.9], [0.5, 0.8, 0.85, 0.8]),
                      best_epoch=3, stopped_early=True)
    fig = live.curves_figure(history, title="t")
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "early stopping kept epoch 3" in labels and "val_acc" in labels and "train_loss" in labels
    plain = live.curves_figure(history.rows)  # rows alone: the best validation epoch
    assert "best epoch 3" in [t.get_text() for t in plain.axes[1].get_legend().get_texts()]


def test_live_curves_hook_static_draws_once_and_live_redraws(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 2
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, display_id=None: shown.append(obj) or _Handle(shown))
    static = live.LiveCurves(static=True, total_epochs=3)
    history = train(SmallResNet(2, width=4), (x, y), (x, y), epochs=3, lr=1e-2, batch_size=16, progress=False,
                    on_epoch_end=[static])
    assert len(static.rows) == 3 and static.redraws == 0 and not shown
    fig = static.finish(history)
    assert static.redraws == 1 and len(shown) == 1 and len(fig.axes) == 2
    watched = live.LiveCurves(static=False)
    train(SmallResNet(2, width=4), (x, y), (x, y), epochs=2, lr=1e-2, batch_size=16, progress=False,
          on_epoch_end=[watched])
    assert watched.redraws == 2  # one output, updated in place each epoch


class _Handle:
    def __init__(self, shown):
        self.shown = shown

    def update(self, obj):
        self.shown.append(obj)


def test_pattern_run_uses_the_recipe():
    gen = torch.Generator().manual_seed(0)
    split = (torch.rand(20, 1, 8, 8, generator=gen), torch.arange(20) % 2)
    task = TargetTask("toy", split, split, split, split, num_classes=2)
    history = live.pattern_run("divergence", task, SmallResNet(2, width=4), lr=1e-3, seed=0)
    assert len(history.rows) == live.RECIPES["divergence"]["epochs"]
    assert history.rows[0]["lr"] == pytest.approx(1.0)  # 1000 x lr, constant
    with pytest.raises(ValueError, match="pattern='wobbly'"):
        live.pattern_run("wobbly", task, SmallResNet(2, width=4), lr=1e-3, seed=0)


def test_subset_is_a_seeded_random_part():
    data = (torch.arange(50).float().view(50, 1), torch.arange(50))
    part = live.subset(data, 10, seed=1)
    assert len(part[1]) == 10 and torch.equal(part[0].view(-1).long(), part[1])
    assert torch.equal(live.subset(data, 10, seed=1)[1], part[1]) and not torch.equal(live.subset(data, 10, 2)[1], part[1])
    assert live.subset(data, 99, seed=0) is data

"""helpers.imbalance: long tails, resampling, rebalancing losses, logit adjustment, metrics."""

import math

import pytest
import torch

from helpers import imbalance
from helpers.config import KNOBS
from helpers.models import SmallResNet


def test_long_tail_counts_follow_an_exponential_profile():
    counts = imbalance.long_tail_counts(10, 200, 50)
    assert counts[0] == 200 and counts[-1] == 4
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[4] == round(200 * 50 ** (-4 / 9))  # geometric in between
    assert imbalance.long_tail_counts(10, 20, 1) == [20] * 10
    with pytest.raises(ValueError, match="imbalance ratio=0.5 is not allowed"):
        imbalance.long_tail_counts(10, 20, 0.5)


def test_long_tailed_subsets_are_nested_and_sized():
    labels = torch.arange(10).repeat(30)
    mild = imbalance.long_tailed(labels, 20, 10, seed=3)
    steep = imbalance.long_tailed(labels, 20, 50, seed=3)
    assert torch.bincount(labels[steep]).tolist() == imbalance.long_tail_counts(10, 20, 50)
    assert set(steep.tolist()) <= set(mild.tolist())  # one seed: only tail examples go
    assert not torch.equal(steep, imbalance.long_tailed(labels, 20, 50, seed=4))
    with pytest.raises(ValueError, match="'imbalance_max_per_class'=31 is not allowed.*maximum allowed is 30"):
        imbalance.long_tailed(labels, 31, 10, seed=0)


def test_oversampling_balances_classes_like_a_weighted_sampler():
    labels = torch.tensor([0] * 90 + [1] * 10)
    index = imbalance.oversample(labels, seed=0)
    assert len(index) == 180  # K x the largest class
    share = (labels[index] == 1).float().mean().item()
    assert 0.4 < share < 0.6
    assert torch.equal(index, imbalance.oversample(labels, seed=0))
    assert not torch.equal(index, imbalance.oversample(labels, seed=1))


def test_undersampling_keeps_the_rarest_count_per_class():
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 5)
    index = imbalance.undersample(labels, seed=0)
    assert torch.bincount(labels[index]).tolist() == [5, 5, 5]
    assert len(set(index.tolist())) == 15  # no repeats


def test_minority_augment_adds_new_variations_of_the_rare_classes():
    images = torch.rand(13, 1, 28, 28)
    labels = torch.tensor([0] * 10 + [1] * 3)
    new_images, new_labels = imbalance.minority_augment(images, labels, seed=0)
    assert torch.bincount(new_labels).tolist() == [10, 10]
    assert torch.equal(new_images[:13], images)  # the originals are kept
    added = new_images[13:]
    assert not any(torch.equal(a, b) for a in added for b in images[10:])  # not exact repeats
    again, _ = imbalance.minority_augment(images, labels, seed=0)
    assert torch.equal(again, new_images)


def test_class_weights_are_balanced_and_average_one():
    labels = torch.tensor([0] * 80 + [1] * 20)
    weights = imbalance.class_weights(labels)
    assert weights.tolist() == pytest.approx([100 / (2 * 80), 100 / (2 * 20)])
    assert (weights[labels]).mean().item() == pytest.approx(1.0)
    assert imbalance.class_weights(labels, num_classes=3)[2] == 0


def _linear_model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    return model, (x, y)


def test_weighted_cross_entropy_with_equal_weights_is_cross_entropy():
    model, batch = _linear_model_and_batch()
    loss, correct, size = imbalance.weighted_cross_entropy(torch.ones(3))(model, batch, "classify")
    expected = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and size == 16
    assert correct.item() == (model(batch[0]).argmax(-1) == batch[1]).sum().item()


def test_focal_loss_reduces_to_cross_entropy_and_downweights_easy_examples():
    model, batch = _linear_model_and_batch()
    ce = torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).item()
    assert imbalance.focal_loss(0.0)(model, batch, "classify")[0].item() == pytest.approx(ce, rel=1e-5)
    assert imbalance.focal_loss(2.0)(model, batch, "classify")[0].item() < ce
    # a confident correct prediction costs almost nothing under focal loss
    easy = (torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([0]))
    identity = torch.nn.Identity()
    assert imbalance.focal_loss(2.0)(identity, easy, "classify")[0].item() < 1e-8


def test_logit_adjustment_moves_decisions_towards_rare_classes():
    identity = torch.nn.Identity()
    logits = torch.tensor([[2.0, 1.0]])  # the head class wins by 1 nat
    prior = torch.tensor([90.0, 10.0])   # log(90/10) = 2.2 nats of prior in favour of the head
    adjusted = imbalance.LogitAdjusted(identity, prior, tau=1.0)
    assert adjusted(logits).argmax(-1).item() == 1
    assert torch.allclose(adjusted(logits) - logits, -torch.log(prior / prior.sum()))
    assert imbalance.LogitAdjusted(identity, prior, tau=0.0)(logits).argmax(-1).item() == 0


def test_imbalance_metrics_expose_the_tail():
    labels = torch.arange(4).repeat_interleave(10)
    predictions = labels.clone()
    predictions[30:] = 0  # the rarest class is never recognised
    out = imbalance.imbalance_metrics(labels, predictions, train_counts=[100, 50, 20, 5], tail_fraction=0.25)
    assert out["balanced_acc"] == pytest.approx(0.75) and out["tail_recall"] == 0.0
    assert out["head_recall"] == 1.0 and out["recall"] == [1.0, 1.0, 1.0, 0.0]
    assert out["acc_as_trained"] == pytest.approx(170 / 175)  # the prior hides the tail
    assert out["acc_as_trained"] > out["balanced_acc"]
    assert out["confusion"][3][0] == 10


def test_an_unknown_method_names_the_knob_and_the_allowed_ones():
    images, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"'imbalance_methods'=\['smote'\] is not allowed: .*'focal'"):
        imbalance.rebalanced_data("smote", images, labels, seed=0)


@pytest.mark.parametrize("method", KNOBS["imbalance_methods"].choices)
def test_every_method_trains_a_working_model(method):
    torch.manual_seed(0)
    pretrained = SmallResNet(5, width=4, stages=1)
    images = torch.rand(30, 1, 28, 28)
    labels = torch.tensor([0] * 20 + [1] * 7 + [2] * 3)
    model, size = imbalance.train_rebalanced(method, pretrained, (images, labels), num_classes=3, steps=3,
                                             lr=1e-3, batch_size=8, seed=0, width=4)
    assert size == {"oversample": 60, "minority_augment": 60, "undersample": 9}.get(method, 30)
    out = model(images[:4])
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    assert isinstance(model, imbalance.LogitAdjusted) == (method == "logit_adjust")


def test_logit_adjust_reuses_the_plain_model():
    plain = SmallResNet(3, width=4, stages=1)
    labels = torch.tensor([0] * 8 + [1] * 2 + [2] * 2)
    wrapped, _ = imbalance.train_rebalanced("logit_adjust", None, (torch.rand(12, 1, 8, 8), labels), num_classes=3,
                                         steps=1, lr=1e-3, batch_size=4, seed=0, plain_model=plain)
    assert wrapped.model is plain
    assert wrapped.offset.tolist() == pytest.approx([math.log(8 / 12), math.log(2 / 12), math.log(2 / 12)])


def test_adjust_logits_is_what_the_wrapped_model_does():
    logits, counts = torch.randn(5, 4), torch.tensor([100.0, 30.0, 5.0, 1.0])
    wrapped = imbalance.LogitAdjusted(torch.nn.Identity(), counts, tau=0.7)
    assert torch.allclose(imbalance.adjust_logits(logits, counts, tau=0.7), wrapped(logits))
    assert torch.equal(imbalance.adjust_logits(logits, [1, 1, 1, 1]).argmax(-1), logits.argmax(-1))  # balanced: no change
    with pytest.raises(ValueError, match="one count per class"):
        imbalance.adjust_logits(logits, counts[:3])


def test_recall_figure_draws_a_bar_per_class_and_both_accuracies():
    import matplotlib.pyplot as plt

    counts = imbalance.long_tail_counts(10, 100, 50)
    fig = imbalance.recall_figure([0.9] * 7 + [0.1] * 3, counts, 0.88, 0.66, title="ratio 50")
    ax = fig.axes[0]
    assert len(ax.patches) == 10 and len(ax.get_lines()) == 2
    assert "(100)" in ax.get_xticklabels()[0].get_text()
    plt.close(fig)
    with pytest.raises(ValueError, match="10 classes but train_counts 9"):
        imbalance.recall_figure([0.5] * 10, counts[:9], 0.5, 0.5)


def test_head_size_caps_the_request_at_the_smallest_class():
    labels = torch.tensor([0] * 9 + [1] * 5 + [2] * 7)
    assert imbalance.head_size(labels, 4) == 4
    assert imbalance.head_size(labels, 200) == 5  # class 1 has only 5: every class must be able to be the head
    assert len(imbalance.long_tailed(labels, imbalance.head_size(labels, 200), 5, seed=0)) == 5 + 2 + 1
    with pytest.raises(ValueError, match="'imbalance_max_per_class'=0 is not allowed"):
        imbalance.head_size(labels, 0)


def test_focal_alpha_is_focal_loss_weighted_by_inverse_frequency():
    images, labels = torch.rand(8, 1, 8, 8), torch.tensor([0] * 6 + [1] * 2)
    data, loss_fn = imbalance.rebalanced_data("focal_alpha", images, labels, seed=0)
    assert data[0] is images
    logits = torch.tensor([[2.0, 0.0]] * 6 + [[0.0, 0.5]] * 2)
    model = lambda x: logits  # noqa: E731 -- fixed logits, whatever the input
    expected = imbalance.focal_loss(weights=imbalance.class_weights(labels))(model, (images, labels), "classify")[0]
    got = loss_fn(model, (images, labels), "classify")[0]
    plain = imbalance.focal_loss()(model, (images, labels), "classify")[0]
    assert got.item() == pytest.approx(expected.item()) and got.item() > plain.item()  # the rare class weighs more


def test_rebalancing_grid_starts_each_seed_from_its_own_model():
    from helpers.vision import TargetTask

    torch.manual_seed(0)
    labels = torch.arange(3).repeat(6)
    images = torch.rand(len(labels), 1, 28, 28)
    task = TargetTask("toy", (images, labels), (images, labels), (images, labels), (images, labels), 3)
    common = dict(max_per_class=4, steps=2, lr=1e-3, batch_size=4, progress=False, width=4)
    nets = {s: SmallResNet(5, width=4, stages=1) for s in (0, 1)}
    by_seed = imbalance.rebalancing_grid(task, nets, [("plain", 2)], [0, 1], **common)
    one = imbalance.rebalancing_grid(task, nets[0], [("plain", 2)], [0], **common)
    assert by_seed.iloc[0]["recall"] == one.iloc[0]["recall"]  # seed 0 started from nets[0], as given alone
    with pytest.raises(KeyError, match="no starting model for seed 2"):
        imbalance.rebalancing_grid(task, nets, [("plain", 2)], [2], **common)

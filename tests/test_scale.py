"""helpers.scale: the pretraining ladders of notebook 10, at tiny sizes."""

import math

import pandas as pd
import pytest
import torch

from helpers import scale
from helpers.config import Params, resolve
from helpers.text.lm import LMCorpus
from helpers.vision import TargetTask


def test_diversity_sizes_hold_the_number_of_images_and_refuse_empty_classes():
    assert scale.diversity_sizes(2400, [10, 20, 40]) == [(10, 240), (20, 120), (40, 60)]
    assert scale.diversity_sizes(100, [3]) == [(3, 33)]  # rounded down: never more images than asked
    with pytest.raises(ValueError, match="'scale_diversity_images'=5 is not allowed .* at least one image"):
        scale.diversity_sizes(5, [2, 10])


def test_equal_compute_reads_a_small_set_more_often():
    assert scale.epochs_for_images(360, 6400) == 18
    assert scale.epochs_for_images(5760, 6400) == 1
    assert scale.epochs_for_images(10_000, 100) == 1  # never zero passes
    with pytest.raises(ValueError, match="must be >= 1"):
        scale.epochs_for_images(0, 100)


def test_gpt_runs_match_the_repeated_run_to_the_top_of_the_ladder():
    runs = scale.gpt_runs([0.5, 0.125, 0.25, 0.125], passes=2, repeats=4)
    ladder = [r for r in runs if r["kind"] == "ladder"]
    assert [r["fraction"] for r in ladder] == [0.125, 0.25, 0.5]          # sorted, duplicates dropped
    repeated = [r for r in runs if r["kind"] == "repeated"]
    assert repeated == [{"kind": "repeated", "fraction": 0.125, "passes": 8}]
    # the same tokens as the ladder's top: fraction x passes
    assert repeated[0]["fraction"] * repeated[0]["passes"] == ladder[-1]["fraction"] * ladder[-1]["passes"]
    with pytest.raises(ValueError, match="'scale_repeats'=1 is not allowed"):
        scale.gpt_runs([0.5], 1, 1)


def _corpus(blocks: int = 40) -> LMCorpus:
    train = torch.arange(blocks * 5).reshape(blocks, 5)
    return LMCorpus("some text", tokenizer=None, train=train, val=torch.zeros(3, 5, dtype=torch.long))


def test_token_subsets_are_nested_keep_the_validation_blocks_and_have_their_own_key():
    corpus = _corpus()
    quarter, half, whole = (scale.token_subset(corpus, f) for f in (0.25, 0.5, 1.0))
    assert len(quarter.train) == 10 and len(half.train) == 20 and len(whole.train) == 40
    assert torch.equal(half.train[:10], quarter.train)                    # nested: one fixed order
    assert all(torch.equal(c.val, corpus.val) for c in (quarter, half, whole))
    keys = {quarter.sha256, half.sha256, whole.sha256, corpus.sha256}
    assert len(keys) == 4                      # a checkpoint on 1/4 of the text is never loaded for 1/2
    assert scale.token_subset(corpus, 0.25).sha256 == quarter.sha256     # and the key is stable
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="'scale_token_fractions'"):
            scale.token_subset(corpus, bad)


def test_paired_reads_one_value_per_seed_in_seed_order():
    table = pd.DataFrame({"images": [10, 10, 40, 40], "seed": [1, 0, 0, 1], "acc": [0.2, 0.1, 0.5, 0.6]})
    assert scale.paired(table, "acc", images=10) == [0.1, 0.2]
    assert scale.paired(table, "acc", images=40) == [0.5, 0.6]
    with pytest.raises(ValueError, match="one row per seed"):
        scale.paired(table, "acc")                       # two rows for each seed
    with pytest.raises(ValueError, match="one row per seed"):
        scale.paired(table, "acc", images=20)            # none


def test_log_slope_is_the_change_per_doubling():
    assert scale.log_slope([1, 2, 4, 8], [0.5, 0.6, 0.7, 0.8]) == pytest.approx(0.1)
    assert scale.log_slope([10, 40], [1.0, 0.0]) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="two different x values"):
        scale.log_slope([4, 4], [0.1, 0.2])


def _tiny_params(**changes) -> Params:
    P = resolve("smoke", _record=False)
    P.update({"width": 4, "scale_pretrain_images": 48, "scale_batch_size": 16, "bf16": False, **changes})
    return P


def test_pretrain_glyphs_processes_the_same_images_at_every_size_and_is_stored(store):
    P = _tiny_params()
    small, small_summary = scale.pretrain_glyphs(P, 3, 4, seed=0)
    large, large_summary = scale.pretrain_glyphs(P, 3, 20, seed=0)
    assert small_summary["trained"] and small_summary["images"] == 12 and large_summary["images"] == 60
    assert small_summary["epochs"] > large_summary["epochs"] == 1
    for summary in (small_summary, large_summary):           # about the budget, within one pass
        assert abs(summary["images_seen"] - 48) <= 0.9 * summary["images"]
    again, again_summary = scale.pretrain_glyphs(P, 3, 4, seed=0)
    assert not again_summary["trained"]                      # loaded from the store, same weights
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), small.state_dict().values()))
    _, other_seed = scale.pretrain_glyphs(P, 3, 4, seed=1)
    assert other_seed["trained"]                             # the seed is part of the key


def _toy_task() -> TargetTask:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(12)
    images = torch.rand(len(labels), 1, 28, 28, generator=gen) * 0.2
    for c in range(3):
        images[labels == c, :, c * 8: c * 8 + 6] += 0.8      # each class lights up its own rows
    images = images.clamp(0, 1)
    part = (images[:18], labels[:18])
    return TargetTask("toy", part, (images[18:], labels[18:]), (images[18:], labels[18:]),
                      (images[18:], labels[18:]), 3)


def test_cnn_downstream_fine_tunes_and_probes_each_budget(store):
    task = _toy_task()
    model, _ = scale.pretrain_glyphs(_tiny_params(), 3, 4, seed=0)
    settings = dict(steps=3, lr=3e-3, batch_size=8, width=4, bf16=False)
    rows = scale.cnn_downstream(task, model, [1, 2], seed=0, **settings)
    assert [r["budget"] for r in rows] == [1, 2]
    assert all(0 <= r["finetune_acc"] <= 1 and 0 <= r["probe_acc"] <= 1 for r in rows)
    scratch = scale.cnn_downstream(task, None, [1], seed=0, **settings)
    assert math.isnan(scratch[0]["probe_acc"]) and 0 <= scratch[0]["finetune_acc"] <= 1
    with pytest.raises(ValueError, match=r"'scale_budgets'=\[1, 99\] is not allowed"):
        scale.cnn_downstream(task, model, [1, 99], seed=0, **settings)   # fails before any training


def test_scale_knobs_are_validated_with_the_knob_name():
    with pytest.raises(ValueError, match="'scale_glyph_classes'=\\[1, 10\\] is not allowed"):
        resolve("smoke", _record=False, scale_glyph_classes=[1, 10])
    with pytest.raises(ValueError, match="'scale_token_fractions'=\\[0.0, 0.5\\] is not allowed"):
        resolve("smoke", _record=False, scale_token_fractions=[0.0, 0.5])
    with pytest.raises(ValueError, match="'scale_repeats'=1 is not allowed"):
        resolve("smoke", _record=False, scale_repeats=1)
    for profile in ("smoke", "quick", "full"):
        P = resolve(profile, _record=False)
        assert max(P.scale_glyphs_per_class) >= 16 * min(P.scale_glyphs_per_class)   # the ladder spans >= 16x
        assert max(P.scale_token_fractions) >= 8 * min(P.scale_token_fractions)      # and >= 8x in tokens
        assert len(P.scale_glyphs_per_class) >= 4


def test_scale_figure_draws_one_band_per_column():
    table = pd.DataFrame({"images": [10, 10, 40, 40], "seed": [0, 1, 0, 1], "acc": [0.2, 0.3, 0.5, 0.6],
                          "probe": [0.1, 0.1, 0.4, 0.5]})
    fig = scale.scale_figure(table, "images", [("acc", "fine-tuned"), ("probe", "probe")], xlabel="images",
                             ylabel="accuracy", title="t", baseline={"scratch": 0.15})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 3          # two curves and the baseline
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.25, 0.55])

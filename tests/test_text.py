"""Tests for helpers.text: corpora, baselines, masking, save/reload, tasks, fine-tuning methods and
language-model specialisation."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch

from helpers import text
from helpers.config import check_budgets, resolve
from helpers.models import count_parameters, tiny_gpt
from helpers.train import IGNORE, evaluate
from test_checkpoints import race  # two processes started at the same moment

TINY = {"text_chars": 6_000, "vocab_size": 300, "seq_len": 32, "gpt_width": 16, "gpt_layers": 1,
        "gpt_heads": 2, "lm_epochs": 1, "text_batch_size": 16, "mlm_epochs": 1, "dapt_chars": 4_000,
        "task_len": 16, "text_ft_steps": 2, "lora_rank": 2, "bf16": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny pretrained GPT in a store of its own (trained once for the module)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBOOK_STORE", str(tmp_path_factory.mktemp("store")))
    P = resolve("smoke", _record=False, **TINY)
    yield P, text.pretrain_gpt(P, progress=False)
    mp.undo()


# --- corpora and tokens ---------------------------------------------------------------------------

def test_test_examples_are_held_out_of_the_pretraining_corpora(store):
    prose, code = text.pretraining_corpus(), text.code_corpus(2_000_000)
    task = text.package_task("docstring")
    assert len(task) >= 1000 and len(task.classes) >= 4
    pool, test = text.task_split(task)
    long_test = [task.texts[i] for i in test.tolist() if len(task.texts[i]) > 200]
    long_pool = [task.texts[i] for i in pool.tolist() if len(task.texts[i]) > 200]
    assert long_test and not any(t in prose for t in long_test)      # never a test text ...
    assert sum(t in prose for t in long_pool) > 0.9 * len(long_pool)  # ... but the task's domain, yes
    assert "class Misc:" not in code and "import tkinter" not in code  # whole task packages held out of code
    assert text.pretraining_corpus(5_000) == prose[:len(text.pretraining_corpus(5_000))]


def test_show_tokens_marks_every_boundary(tiny):
    P, gpt = tiny
    shown = text.show_tokens(gpt.tokenizer.backend_tokenizer, "The list is long.")
    assert shown.replace("|", "").replace("·", " ") == "The list is long."
    assert text.vocab_ladder(2000) == [259, 500, 1000, 2000, 4000, 8000]


# --- language-model data and baselines ------------------------------------------------------------

def test_split_blocks_is_disjoint_covering_and_fixed():
    blocks = torch.arange(200 * 5).view(200, 5)
    train, val = text.split_blocks(blocks, val_fraction=0.1, group=8)
    assert len(train) + len(val) == 200 and 16 <= len(val) <= 32
    assert not set(train[:, 0].tolist()) & set(val[:, 0].tolist())
    again = text.split_blocks(blocks, val_fraction=0.1, group=8)
    assert torch.equal(val, again[1])
    few = text.split_blocks(blocks[:3])
    assert len(few[0]) == 2 and len(few[1]) == 1


def test_ngram_baselines_match_hand_computed_values():
    V = 4
    train = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 2]])  # after 0: 1 three times, 2 once
    val = torch.tensor([[0, 1, 0, 2]])
    got = text.ngram_baselines(train, val, V)
    # unigram over train targets [1,0,1,0,1,0,2] with add-one: p = (c+1)/(7+4)
    uni = {0: 4 / 11, 1: 4 / 11, 2: 2 / 11, 3: 1 / 11}
    expect_uni = math.exp(-(math.log(uni[1]) + math.log(uni[0]) + math.log(uni[2])) / 3)
    assert got["unigram (add-one)"] == pytest.approx(expect_uni)
    # bigram add-one: c(0)=4, c(0,1)=3, c(0,2)=1, c(1)=3, c(1,0)=3
    p01, p10, p02 = (3 + 1) / (4 + V), (3 + 1) / (3 + V), (1 + 1) / (4 + V)
    assert got["bigram (add-one)"] == pytest.approx(math.exp(-(math.log(p01 * p10 * p02)) / 3))
    # Witten-Bell: T(0)=2 followers, T(1)=1
    wb01, wb10, wb02 = (3 + 2 * uni[1]) / 6, (3 + 1 * uni[0]) / 4, (1 + 2 * uni[2]) / 6
    assert got["bigram (Witten-Bell)"] == pytest.approx(math.exp(-(math.log(wb01 * wb10 * wb02)) / 3))


def test_mask_tokens_follows_bert_recipe():
    blocks = torch.randint(3, 500, (200, 64), generator=torch.Generator().manual_seed(0))
    inputs, labels = text.mask_tokens(blocks, 500, rate=0.15, seed=1)
    chosen = labels != IGNORE
    assert 0.13 < chosen.float().mean() < 0.17
    assert torch.equal(labels[chosen], blocks[chosen])
    assert torch.equal(inputs[~chosen], blocks[~chosen])           # only chosen tokens change
    masked = (inputs == text.MASK)[chosen].float().mean()
    assert 0.75 < masked < 0.85
    assert int((inputs[chosen & (inputs != text.MASK)] < 3).sum()) == 0  # no special token inserted
    assert torch.equal(inputs, text.mask_tokens(blocks, 500, rate=0.15, seed=1)[0])


# --- models ---------------------------------------------------------------------------------------

def test_fast_gpt_settings_change_speed_not_results():
    torch.manual_seed(0)
    default = tiny_gpt(50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    fast = text.gpt_for(50, 16, 16, 2, 2)
    fast.load_state_dict(default.state_dict())
    ids = torch.randint(0, 50, (3, 16))
    default.eval(), fast.eval()
    assert torch.allclose(default(ids).logits, fast(ids).logits, atol=1e-5)
    assert fast.config.use_cache is False and fast.generation_config.use_cache is True
    hand = text.HandGPT(50, 16, 16, 2, 2)
    assert hand(ids).shape == (3, 16, 50)
    assert abs(sum(p.numel() for p in hand.parameters()) - count_parameters(fast)) < 200


def test_shapes_that_do_not_fit_fail_when_the_profile_resolves():
    with pytest.raises(ValueError, match="'gpt_width'=30 is not allowed with gpt_heads=4"):
        resolve("smoke", _record=False, gpt_width=30, gpt_heads=4)
    with pytest.raises(ValueError, match="'task_len'=64 is not allowed"):
        resolve("smoke", _record=False, task_len=64, seq_len=32)
    with pytest.raises(ValueError, match="text_methods"):
        resolve("smoke", _record=False, text_methods=["lora", "houlsby"])
    with pytest.raises(ValueError, match="'peft_methods'=\\['lora', 'houlsby'\\].*prefix"):
        resolve("smoke", _record=False, peft_methods=["lora", "houlsby"])
    with pytest.raises(ValueError, match="lora_ranks"):
        resolve("smoke", _record=False, lora_ranks=[0, 4])


# --- save_pretrained in a verified folder ---------------------------------------------------------

def test_pretrain_saves_a_verified_folder_and_reloads_it(tiny):
    P, gpt = tiny
    assert gpt.trained and (gpt.folder / "model.safetensors").exists() and (gpt.folder / "tokenizer.json").exists()
    again = text.pretrain_gpt(P, progress=False)
    assert not again.trained and again.folder == gpt.folder
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert torch.equal(gpt.model.eval()(ids).logits, again.model(ids).logits)
        assert torch.equal(gpt.model(ids).logits, text.reload(gpt.folder)(ids).logits)
    assert len(gpt.summary["samples"]) == len(text.SAMPLE_PROMPTS)
    assert gpt.summary["tokens_seen"] > 0 and gpt.summary["flops"] == 6 * gpt.summary["params"] * gpt.summary["tokens_seen"]


def test_a_damaged_pretrained_folder_is_retrained(tiny):
    P, gpt = tiny
    weights = gpt.folder / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-10])
        with pytest.warns(UserWarning, match="retraining gpt-pretrain"):
            again = text.pretrain_gpt(P, progress=False)
        assert again.trained and weights.read_bytes() == original  # same seed: the same weights again
    finally:
        weights.write_bytes(original)


# --- tasks ----------------------------------------------------------------------------------------

def test_package_tasks_are_real_balanced_and_deterministic(store):
    for kind in text.TASK_KINDS:
        task = text.package_task(kind)
        counts = torch.bincount(task.labels).tolist()
        assert len(counts) == len(text.TASK_PACKAGES) and min(counts) >= 100 and max(counts) <= text.MAX_PER_CLASS
        assert len(set(task.texts)) == len(task.texts)
        assert text.package_task(kind).texts == task.texts
    code = text.package_task("code")
    assert all(t.startswith(("def ", "async def ", "@")) for t in code.texts[:50])
    with pytest.raises(ValueError, match="kind='html'"):
        text.package_task("html")


def test_task_split_and_budget_check(store):
    task = text.package_task("docstring")
    pool, test = text.task_split(task)
    assert not set(pool.tolist()) & set(test.tolist()) and len(pool) + len(test) == len(task)
    assert torch.bincount(task.labels[test]).tolist() == [text.TEST_PER_CLASS] * len(task.classes)
    most = task.max_budget(pool)
    assert most == min(torch.bincount(task.labels[pool]).tolist()) > 32
    check_budgets("text_budgets", [8, 32], most, "the docstring task's pool")
    with pytest.raises(ValueError, match=rf"'text_budgets'=\[8, 5000\] is not allowed.*\[1, {most}\]"):
        check_budgets("text_budgets", [8, 5000], most, "the docstring task's pool")


def test_encode_texts_right_pads_and_truncates(tiny):
    _, gpt = tiny
    ids = text.encode_texts(gpt.tokenizer, ["a", "the list of all the things in a long sentence here", ""], 8)
    assert ids.shape == (3, 8)
    assert ids[0, 1:].eq(text.PAD).all() and not ids[1].eq(text.PAD).any()
    assert ids[2, 0] == text.EOS  # an empty text still has one real token


def test_tfidf_baseline_learns_a_word_signal():
    texts = [f"{w} item number {i}" for i in range(40) for w in ("apple", "pear")]
    task = text.TextTask("toy", texts, torch.tensor([0, 1] * 40), ["apple", "pear"])
    idx = torch.arange(80)
    assert text.tfidf_accuracy(task, idx[:60], idx[60:]) == 1.0


# --- fine-tuning methods --------------------------------------------------------------------------

def test_every_method_fine_tunes_and_reports_its_costs(tiny):
    P, gpt = tiny
    before = {k: v.clone() for k, v in gpt.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(3, 300, (24, 16), generator=g), torch.randint(0, 3, (24,), generator=g)
    results = {m: text.finetune_text(m, gpt, (x, y), (x, y), num_classes=3, steps=2, lr=1e-3, batch_size=8,
                                     seed=0, lora_rank=2) for m in text.FT_METHODS}
    assert all(torch.equal(v, gpt.model.state_dict()[k]) for k, v in before.items())  # base untouched
    full, lora, ia3, frozen = results["full"], results["lora"], results["ia3"], results["frozen"]
    assert full.trainable_params == full.total_params
    assert lora.trainable_params < full.trainable_params and ia3.trainable_params < lora.trainable_params
    assert frozen.trainable_params == 16 * 3 + 3
    assert lora.checkpoint_bytes < full.checkpoint_bytes and frozen.checkpoint_bytes < lora.checkpoint_bytes
    assert lora.memory_bytes < full.memory_bytes and frozen.memory_bytes < full.memory_bytes
    assert all(0 <= r.accuracy <= 1 and r.seconds > 0 for r in results.values())
    for method in text.PEFT_METHODS:  # each PEFT method trains more than the head, far less than everything
        run = results[method]
        assert frozen.trainable_params < run.trainable_params < full.trainable_params / 2, method
        assert 0 < run.checkpoint_bytes < full.checkpoint_bytes / 2, method
    with pytest.raises(ValueError, match="'text_methods'=\\['houlsby'\\]"):
        text.finetune_text("houlsby", gpt, (x, y), (x, y), num_classes=3, steps=1, lr=1e-3, batch_size=8, seed=0)


def test_forgetting_is_zero_for_an_untouched_body_and_measured_for_the_others(tiny):
    P, gpt = tiny
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(3, 300, (16, 16), generator=g), torch.randint(0, 2, (16,), generator=g)
    blocks = torch.randint(3, 300, (6, P.seq_len + 1), generator=g)
    runs = {m: text.finetune_text(m, gpt, (x, y), (x, y), num_classes=2, steps=3, lr=1e-2, batch_size=8, seed=0,
                                  lora_rank=2, forget_blocks=blocks, measure=False)
            for m in ("scratch", "frozen", "full", "bitfit", "prefix")}
    assert math.isnan(runs["scratch"].forgetting) and math.isnan(runs["scratch"].row()["forgetting_removed_%"])
    assert runs["frozen"].forgetting == pytest.approx(0.0, abs=1e-9)   # the same body reads the same text
    for method in ("full", "bitfit", "prefix"):   # trained bodies (or inputs) change the predictions
        assert runs[method].forgetting != pytest.approx(0.0, abs=1e-6), method
    assert runs["full"].forgetting_removed == runs["full"].forgetting   # nothing to remove
    assert runs["prefix"].forgetting_removed == 0.0                     # the pretrained weights are intact
    table = text.runs_table(list(runs.values()))
    assert {"forgetting_mean", "forgetting_std", "forgetting_removed"} <= set(table.columns)


def test_bottleneck_adapters_start_as_identity_train_alone_and_come_out(tiny):
    P, gpt = tiny
    model = text.classifier(gpt, 3)
    ids = torch.randint(3, 300, (4, 12))
    before = model(ids)
    text.add_adapters(model.transformer, size=4)
    assert torch.allclose(model(ids), before)        # ``up`` starts at zero: nothing changes yet
    trainable = [n for n, p in model.transformer.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in n for n in trainable)
    assert len(trainable) == 4 * 2 * P.gpt_layers     # down and up, weight and bias, two per block
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_proj.adapter.up.weight.normal_()   # (a constant would be undone by LayerNorm)
    assert not torch.allclose(model(ids), before)
    text.remove_adapters(model.transformer)
    assert torch.allclose(model(ids), before)


def test_bitfit_trains_only_biases_and_layernorms(tiny):
    P, gpt = tiny
    model = text.bitfit(text.classifier(gpt, 3))
    names = [n for n, p in model.transformer.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") or ".ln_" in f".{n}" for n in names)
    assert any(n.startswith("ln_f.") for n in names) and all(p.requires_grad for p in model.head.parameters())


def test_prefix_and_prompt_tuning_leave_room_for_their_virtual_tokens(tiny):
    """A text as long as GPT-2's positions still fits: the classifier reads VIRTUAL_TOKENS fewer."""
    P, gpt = tiny
    for method in ("prefix", "prompt"):
        model, save = text.prepare(text.classifier(gpt, 3), method)
        ids = torch.randint(3, 300, (2, P.seq_len))
        assert model(ids).shape == (2, 3)
        assert model.hidden(ids).shape[1] == P.seq_len - text.VIRTUAL_TOKENS
    with pytest.raises(ValueError, match="method='full'.*expected one of"):
        text.prepare(text.classifier(gpt, 3), "full")


def test_hand_written_lora_matches_peft():
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    A, B = torch.randn(2, 5, generator=g), torch.randn(4, 2, generator=g)
    assert torch.allclose(text.peft_lora_output(x, W, b, A, B, alpha=6.0), x @ W.T + b + 3.0 * (x @ A.T @ B.T),
                          atol=1e-5)
    assert not torch.allclose(text.peft_lora_output(x, W, b, A, B, alpha=2.0), x @ W.T + b + 3.0 * (x @ A.T @ B.T))


def test_peft_table_and_lora_ablation(tiny):
    P, gpt = tiny
    task = text.TextTask("toy", [f"{w} thing {i}" for i in range(40) for w in ("apple", "pear")],
                         torch.tensor([0, 1] * 40), ["apple", "pear"])
    pool, test = torch.arange(60), torch.arange(60, 80)
    kw = dict(seq_len=8, steps=1, lr=1e-3, batch_size=8, progress=False)
    runs = text.compare_methods({"pretrained": gpt}, task, pool, test, methods=["full", "lora", "prompt"],
                                budgets=[4], seeds=[0, 1], lora_rank=2, **kw)
    table = text.peft_table(runs, 4)
    assert list(table.index) == ["prompt", "lora", "full"]   # fewest trainable first
    ablation = text.lora_ablation(gpt, task, pool, test, ranks=[1, 2], budget=4, seeds=[0, 1], reuse=runs, lora_rank=9,
                                  reuse_rank=2, **kw)
    assert list(ablation.index) == [(t, r) for t in text.LORA_TARGET_SETS for r in (1, 2)]
    assert (ablation["seeds"] == 2).all()
    trainable = ablation["trainable"]
    assert trainable["emb+attention", 1] < trainable["emb+attention", 2] < trainable["emb+attention+MLP", 2]
    reused = [r.accuracy for r in runs if r.method == "lora"]
    assert ablation.loc[("emb+attention", 2), "acc_mean"] == pytest.approx(sum(reused) / 2)
    again, per_seed = text.lora_ablation(gpt, task, pool, test, ranks=[2], budget=4, seeds=[0, 1], reuse=runs,
                                         reuse_rank=2, target_sets={"emb+attention": text.LORA_TARGETS},
                                         return_runs=True, **kw)
    assert per_seed["seed"].tolist() == [0, 1]   # the sides of a paired claim, in seed order
    assert per_seed["accuracy"].tolist() == [r.accuracy for r in sorted(runs, key=lambda r: r.seed) if r.method == "lora"]
    assert again.loc[("emb+attention", 2), "acc_mean"] == pytest.approx(per_seed["accuracy"].mean())


def test_each_finetuning_seed_starts_from_its_own_pretraining_run(tiny, monkeypatch):
    """Fine-tuning seed number i starts from pretraining run i mod n (``pretrain_gpts``), so the spread
    over seeds covers pretraining too; forgetting is measured only where it is asked for."""
    from helpers.text import finetune

    P, gpt = tiny
    P2 = resolve("smoke", _record=False, **{**TINY, "seeds": 3, "lm_pretrain_seeds": 2})
    gpts = text.pretrain_gpts(P2, progress=False)
    assert [g.config_key["seed"] for g in gpts] == [P2.seed, P2.seed + 1]
    assert gpts[0].folder == gpt.folder                       # run 0 is the base model every notebook shares
    assert gpts[0].model is not gpts[1].model and not torch.equal(
        gpts[0].model.transformer.wte.weight, gpts[1].model.transformer.wte.weight)
    calls = []

    def recorder(method, base, *args, seed, budget, **kw):
        calls.append((seed, budget, base.config_key["seed"], "forget_blocks" in kw))
        return finetune.TextRun(method, "pretrained", budget, seed, 0.5 + seed / 100, 1, 2, 0.0, 0, 0, None)

    monkeypatch.setattr(finetune, "finetune_text", recorder)
    task = text.TextTask("toy", [f"{w} thing {i}" for i in range(40) for w in ("apple", "pear")],
                         torch.tensor([0, 1] * 40), ["apple", "pear"])
    runs = text.compare_methods({"pretrained": gpts}, task, torch.arange(60), torch.arange(60, 80), methods=["full"],
                                budgets=[2, 4], seeds=[7, 8, 9], seq_len=8, progress=False, forget_budgets=[4],
                                forget_blocks=torch.zeros(2, 9, dtype=torch.long))
    assert [(s, b, pre) for s, b, pre, _ in calls] == [(s, b, pre) for b in (2, 4) for s, pre in
                                                       zip((7, 8, 9), (P2.seed, P2.seed + 1, P2.seed))]
    assert [forget for *_, forget in calls] == [False] * 3 + [True] * 3
    assert text.per_seed(runs, "full", 4) == pytest.approx([0.57, 0.58, 0.59])
    with pytest.raises(ValueError, match="no 'lora' runs at budget 4"):
        text.per_seed(runs, "lora", 4)
    with pytest.raises(ValueError, match="several runs per seed"):
        text.per_seed(runs + [runs[-1]], "full", 4)
    with pytest.raises(ValueError, match="at least one pretrained model"):
        text.compare_methods({"pretrained": []}, task, torch.arange(60), torch.arange(60, 80), methods=["full"],
                             budgets=[2], seeds=[0], seq_len=8, progress=False)


def test_learning_forgetting_figure_joins_only_a_family():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    points = pd.DataFrame({"label": ["", "r1", "r4"], "family": ["full", "LoRA", "LoRA"], "acc_mean": [0.6, 0.5, 0.55],
                           "acc_std": [0.01, 0.02, 0.01], "forgetting_mean": [100.0, 150.0, 400.0]})
    fig = text.learning_forgetting_figure(points, "toy")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["full", "LoRA"]
    assert ax.get_yscale() == "symlog" and "forgotten" in ax.get_ylabel() and "learnt" in ax.get_xlabel()
    styles = [line.get_linestyle() for line in ax.get_lines() if len(line.get_xdata()) > 0]
    assert "None" in styles and "-" in styles   # a lone method is a point, a family a line


def test_compare_methods_and_summary_table(tiny):
    P, gpt = tiny
    task = text.TextTask("toy", [f"{w} thing {i}" for i in range(60) for w in ("apple", "pear")],
                         torch.tensor([0, 1] * 60), ["apple", "pear"])
    pool, test = torch.arange(100), torch.arange(100, 120)
    runs = text.compare_methods({"pretrained": gpt}, task, pool, test, methods=["full", "lora"], budgets=[4, 8],
                                seeds=[0, 1], seq_len=8, steps=2, lr=1e-3, batch_size=8, progress=False)
    assert len(runs) == 2 * 2 * 2
    table = text.runs_table(runs)
    assert list(table.index) == [("pretrained", b, m) for b in (4, 8) for m in ("full", "lora")]
    assert (table["seeds"] == 2).all() and (table["checkpoint_KB"] > 0).all()
    with pytest.raises(ValueError, match=r"'text_budgets'=\[51\] is not allowed.*\[1, 50\].*toy task pool"):
        text.compare_methods({"pretrained": gpt}, task, pool, test, methods=["full"], budgets=[51], seeds=[0],
                             seq_len=8, steps=1, lr=1e-3, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"'compare_budget'=\[51\]"):  # the knob the caller's budgets come from
        text.compare_methods({"pretrained": gpt}, task, pool, test, methods=["full"], budgets=[51], seeds=[0],
                             seq_len=8, steps=1, lr=1e-3, batch_size=8, progress=False, budget_knob="compare_budget")


def test_importing_text_leaves_transformers_logging_alone(tiny):
    """The right-padding warning is dropped only while text fine-tunes, never as an import side effect."""
    P, gpt = tiny
    logger = logging.getLogger("transformers.modeling_utils")
    assert not logger.filters
    x, y = torch.randint(3, 300, (8, 16)), torch.randint(0, 2, (8,))
    x[:, -4:] = text.PAD
    text.finetune_text("full", gpt, (x, y), (x, y), num_classes=2, steps=1, lr=1e-3, batch_size=8, seed=0,
                       measure=False)
    assert not logger.filters
    with text.right_padding_is_safe():
        assert len(logger.filters) == 1
    assert not logger.filters


def test_one_lora_builder_for_classification_and_specialisation():
    classifier = text.lora_config(4, modules_to_save=["head"])
    lm = text.lora_config(4, text.LM_LORA_TARGETS)
    assert set(classifier.target_modules) == set(text.LORA_TARGETS) and classifier.modules_to_save == ["head"]
    assert set(lm.target_modules) == set(text.LM_LORA_TARGETS)
    assert classifier.lora_alpha == lm.lora_alpha == 8 and classifier.fan_in_fan_out and lm.fan_in_fan_out


# --- persistence under concurrency ----------------------------------------------------------------

_PRETRAINER = r"""
import hashlib, json, sys, time
from pathlib import Path
from helpers import text
from helpers.config import resolve

go, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
P = resolve("smoke", _record=False, **overrides)
while not go.exists():  # both processes ask at the same moment
    time.sleep(0.01)
gpt = text.pretrain_gpt(P, progress=False)
weights = b"".join(v.numpy().tobytes() for _, v in sorted(gpt.model.state_dict().items()))
print(json.dumps({"trained": gpt.trained, "folder": str(gpt.folder), "weights": hashlib.sha256(weights).hexdigest()}))
"""


def test_two_processes_pretrain_the_same_gpt_once(store, tmp_path):
    """Two notebooks under `helpers.run --jobs 2` that need the same missing GPT: one trains it, the
    other waits on the build lock and loads the verified folder."""
    outs = race(_PRETRAINER, json.dumps(TINY), store=store, go=tmp_path / "go")
    assert sorted(o["trained"] for o in outs) == [False, True]  # trained exactly once
    assert outs[0]["folder"] == outs[1]["folder"] and outs[0]["weights"] == outs[1]["weights"]
    assert len(list((store / "gpt-pretrain").iterdir())) == 1


# --- specialising the language model (notebook 05) ------------------------------------------------

def test_lora_starts_as_the_base_model_and_trains_few_parameters():
    torch.manual_seed(0)
    base = tiny_gpt(50, n_positions=16, n_embd=16, n_layer=1, n_head=2, use_cache=False).eval()
    blocks = torch.randint(0, 50, (24, 9))
    wrapped = text.lora_lm(copy.deepcopy(base), rank=2)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(blocks[:2, :-1]).logits, base(blocks[:2, :-1]).logits)
    assert 0 < count_parameters(wrapped, trainable_only=True) < 0.2 * count_parameters(base)

    before = evaluate(base, blocks, task="lm")["loss"]
    changes = {}
    for name, method, lr in (("full", "full", 1e-2), ("lower_lr", "full", 1e-2 / 3), ("lora", "lora", 1e-2)):
        tuned, history = text.specialise_lm(method, base, blocks, steps=3, lr=lr, batch_size=8, seed=0, rank=2)
        assert type(tuned) is type(base) and history.examples_seen == 3 * 8 * 8
        changes[name] = sum((a - b).abs().sum().item() for a, b in zip(tuned.parameters(), base.parameters()))
        assert evaluate(tuned, blocks, task="lm")["loss"] < before  # it learnt the blocks a little
    assert changes["lower_lr"] < changes["full"]
    embedding = dict(base.named_parameters())["transformer.wte.weight"]
    tuned, _ = text.specialise_lm("lora", base, blocks, steps=2, lr=1e-2, batch_size=8, seed=0, rank=2)
    assert torch.equal(dict(tuned.named_parameters())["transformer.wte.weight"], embedding)  # frozen under LoRA
    with pytest.raises(ValueError, match="specialise_lm: method='adapter' is not allowed"):
        text.specialise_lm("adapter", base, blocks, steps=1, lr=1e-2, batch_size=8, seed=0)


def test_specialisation_data_holds_out_both_domains(tiny):
    from helpers.text.finetune import specialisation_data

    P, _ = tiny
    corpus = text.lm_corpus(P.text_chars, P.vocab_size, P.seq_len)
    code_train, held_out = specialisation_data(corpus, P.dapt_chars, P.seq_len, eval_blocks=3)
    assert list(held_out) == ["general", "code"] and torch.equal(held_out["general"], corpus.val[:3])
    assert code_train.shape[1] == held_out["code"].shape[1] == P.seq_len + 1 and len(held_out["code"]) == 3
    trained = {tuple(block.tolist()) for block in code_train}
    assert not any(tuple(block.tolist()) in trained for block in held_out["code"])


def test_specialisation_sweep_measures_what_is_learnt_and_forgotten():
    from helpers.text.finetune import lm_perplexities, specialisation_figure, specialisation_sweep

    torch.manual_seed(0)
    base = tiny_gpt(50, n_positions=16, n_embd=16, n_layer=1, n_head=2, use_cache=False).eval()
    code = torch.randint(0, 25, (40, 9))  # the new domain uses half the vocabulary
    held_out = {"general": torch.randint(0, 50, (8, 9)), "code": code[-8:]}
    before, table = specialisation_sweep(base, code[:-8], held_out, seeds=[0], lr_factors=[0.5, 2.0], lr=1e-2,
                                         steps=2, batch_size=8, rank=2, progress=False)
    assert before == lm_perplexities(base, held_out) and list(before) == ["general_ppl", "code_ppl"]
    assert table.index.tolist() == [("full", 0.5), ("full", 2.0), ("lora", 0.5), ("lora", 2.0)]
    row = table.loc[("full", 2.0)]
    assert row.general_rise_mean == pytest.approx(row.general_ppl_mean / before["general_ppl"] - 1)
    assert row.code_drop_mean == pytest.approx(1 - row.code_ppl_mean / before["code_ppl"]) and row.code_drop_mean > 0
    fig = specialisation_figure(table)
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog" and [t.get_text() for t in ax.get_legend().get_texts()] == ["full", "lora"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.5x", "0.5x", "2x", "2x"]


def test_lora_versus_full_predicates():
    import pandas as pd

    from helpers.text.finetune import full_matching_lora, lora_learns_less_and_forgets_less

    index = pd.MultiIndex.from_product([["full", "lora"], [0.3, 1.0, 10.0]], names=["method", "lr_factor"])
    table = pd.DataFrame({"general_rise_mean": [0.02, 0.10, 2.0, 0.01, 0.05, 0.40],
                          "code_drop_mean": [0.20, 0.40, 0.50, 0.10, 0.25, 0.38]}, index=index)
    factors = [0.3, 1.0, 10.0]
    assert lora_learns_less_and_forgets_less(table, factors)
    table.loc[("lora", 1.0), "code_drop_mean"] = 0.45  # learns more code than full at 1x: no longer "learns less"
    assert not lora_learns_less_and_forgets_less(table, factors)
    assert lora_learns_less_and_forgets_less(table, [0.3, 10.0])  # 1x not tried: only the rises count
    # LoRA at 10x drops code by 0.38: full at 1x (0.40) and 10x (0.50) learn as much; 1x forgets less
    assert full_matching_lora(table, factors, 10.0) == 1.0
    assert full_matching_lora(table, factors, 10.0, tolerance=-0.2) is None  # needs a drop >= 0.58


def test_finetuning_flops_count_the_backward_pass_only_where_gradients_flow():
    assert text.finetuning_flops("full", 100, 10) == 6 * 100 * 10  # like pretraining's 6 x N x tokens
    assert text.finetuning_flops("lora", 100, 10) == 4 * 100 * 10  # frozen weights, gradient flows through
    assert text.finetuning_flops("frozen", 100, 10) == 2 * 100 * 10  # features once: forward only


def test_cost_table_rows_pretraining_then_each_method():
    import pandas as pd

    methods = pd.DataFrame({"method": ["full", "lora"], "trainable": [200, 10], "trainable_%": [100.0, 5.0],
                            "seconds": [2.0, 1.5], "accuracy": ["0.500 ± 0.010", "0.450 ± 0.020"]})
    gpt = {"tokens_seen": 50_000, "wall_time": 30.0, "flops": 6 * 200 * 50_000, "params": 200,
           "history": {"rows": [{"val_ppl": 80.0}, {"val_ppl": 41.26}]}}
    cost = text.cost_table(gpt, methods, labels=20, tokens=500)
    assert list(cost.index) == ["pretraining (02, next token)", "fine-tuning: full", "fine-tuning: lora"]
    assert cost.loc["pretraining (02, next token)", "result"] == "validation perplexity 41.3"
    assert cost.loc["pretraining (02, next token)", "labels used"] == 0
    assert cost.loc["fine-tuning: lora", "training FLOPs"] == 4 * 200 * 500  # all 200 parameters, not 10
    assert cost.loc["fine-tuning: full", "FLOPs vs pretraining"] == pytest.approx(0.01)
    assert cost.loc["fine-tuning: lora", "result"] == "test accuracy 0.450 ± 0.020"

"""Tests for helpers.text: corpora, baselines, masking, save/reload, tasks and fine-tuning methods."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import text
from helpers.config import resolve
from helpers.models import count_parameters, tiny_gpt
from helpers.train import IGNORE

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


def test_check_params_rejects_shapes_that_do_not_fit():
    P = resolve("smoke", _record=False)
    with pytest.raises(ValueError, match="'gpt_width'=30 is not allowed with gpt_heads=4"):
        text.check_params({**P, "gpt_width": 30, "gpt_heads": 4})
    with pytest.raises(ValueError, match="'task_len'=64 is not allowed"):
        text.check_params({**P, "task_len": 64, "seq_len": 32})
    with pytest.raises(ValueError, match="text_methods"):
        resolve("smoke", _record=False, text_methods=["lora", "prompt"])


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
    text.check_budgets([8, 32], task, pool)
    with pytest.raises(ValueError, match=r"'label_budgets'=\[8, 5000\] is not allowed.*maximum allowed budget is"):
        text.check_budgets([8, 5000], task, pool)


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
    results = {m: text.finetune(m, gpt, (x, y), (x, y), num_classes=3, steps=2, lr=1e-3, batch_size=8, seed=0,
                                lora_rank=2) for m in text.FT_METHODS}
    assert all(torch.equal(v, gpt.model.state_dict()[k]) for k, v in before.items())  # base untouched
    full, lora, ia3, frozen = results["full"], results["lora"], results["ia3"], results["frozen"]
    assert full.trainable_params == full.total_params
    assert lora.trainable_params < full.trainable_params and ia3.trainable_params < lora.trainable_params
    assert frozen.trainable_params == 16 * 3 + 3
    assert lora.checkpoint_bytes < full.checkpoint_bytes and frozen.checkpoint_bytes < lora.checkpoint_bytes
    assert lora.memory_bytes < full.memory_bytes and frozen.memory_bytes < full.memory_bytes
    assert all(0 <= r.accuracy <= 1 and r.seconds > 0 for r in results.values())
    with pytest.raises(ValueError, match="'text_methods'=\\['prompt'\\]"):
        text.finetune("prompt", gpt, (x, y), (x, y), num_classes=3, steps=1, lr=1e-3, batch_size=8, seed=0)


def test_compare_methods_and_summary_table(tiny):
    P, gpt = tiny
    task = text.TextTask("toy", [f"{w} thing {i}" for i in range(60) for w in ("apple", "pear")],
                         torch.tensor([0, 1] * 60), ["apple", "pear"])
    pool, test = torch.arange(100), torch.arange(100, 120)
    runs = text.compare_methods({"pretrained": gpt}, task, pool, test, methods=["full", "lora"], budgets=[4, 8],
                                seeds=[0, 1], seq_len=8, steps=2, lr=1e-3, batch_size=8, progress=False)
    assert len(runs) == 2 * 2 * 2
    table = text.summarize_runs(runs)
    assert list(table.index) == [("pretrained", b, m) for b in (4, 8) for m in ("full", "lora")]
    assert (table["seeds"] == 2).all() and (table["checkpoint_KB"] > 0).all()
    with pytest.raises(ValueError, match="maximum allowed budget is 50"):
        text.compare_methods({"pretrained": gpt}, task, pool, test, methods=["full"], budgets=[51], seeds=[0],
                             seq_len=8, steps=1, lr=1e-3, batch_size=8, progress=False)

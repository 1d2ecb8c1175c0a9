import pytest
import torch

from helpers import config
from helpers.config import KNOBS, PROFILES, resolve


def test_every_profile_sets_every_knob_validly():
    for name, profile in PROFILES.items():
        assert set(profile) == set(KNOBS), name
        config.validate(profile)


def test_overrides_apply_and_none_keeps_default():
    P = resolve("smoke", lr=0.5, seed=None)
    assert P.lr == 0.5 and P.seed == PROFILES["smoke"]["seed"] and P.profile == "smoke"
    assert isinstance(resolve("smoke", lr=1).lr, float)  # an int is a fine float


@pytest.mark.parametrize("profile, overrides, expected", [
    ("fast", {}, "unknown profile 'fast'; allowed profiles: smoke, quick, full"),
    ("quick", {"lr": -0.1}, "parameter 'lr'=-0.1 is not allowed: expected float in [1e-08, 10.0]"),
    ("quick", {"lr": float("nan")}, "parameter 'lr'=nan is not allowed"),
    ("quick", {"lrr": 0.1}, "unknown parameter 'lrr' (did you mean 'lr'?)"),
    ("quick", {"epochs": 2.5}, "parameter 'epochs'=2.5 is not allowed: expected int in [1, 10000]"),
    ("quick", {"epochs": True}, "parameter 'epochs'=True is not allowed"),
    ("quick", {"bf16": "yes"}, "parameter 'bf16'='yes' is not allowed: expected bool"),
    ("quick", {"device": "tpu"}, "parameter 'device'='tpu' is not allowed: expected str from"),
    ("quick", {"glyph_classes": 1}, "parameter 'glyph_classes'=1 is not allowed"),
])
def test_bad_parameters_get_clear_errors(profile, overrides, expected):
    with pytest.raises(ValueError) as err:
        resolve(profile, **overrides)
    assert expected in str(err.value)


def test_seeding_is_reproducible():
    config.seed_everything(3)
    a = torch.rand(3)
    config.seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_device_selection():
    assert config.pick_device("cpu").type == "cpu"
    assert config.pick_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'device'='cuda': that device is not available"):
            config.pick_device("cuda")


def test_threads_and_setup():
    before = torch.get_num_threads()
    try:
        assert config.set_threads(1) == 1
    finally:
        torch.set_num_threads(before)
    assert config.setup(resolve("smoke")).type in ("cpu", "cuda", "mps")


def test_resolve_starts_a_results_record(tmp_path):
    from helpers import results
    resolve("smoke", seed=4)
    assert results.current().profile == "smoke"
    assert results.current().data["params"]["seed"] == 4


@pytest.mark.parametrize("overrides, expected", [
    ({"stream_tasks": [[0, 1], []]}, "parameter 'stream_tasks'=[[0, 1], []] is not allowed: expected a list of lists"),
    ({"stream_tasks": [[0, 10]]}, "parameter 'stream_tasks'=[[0, 10]] is not allowed: expected a list of lists of int in [0, 9]"),
    ({"stream_tasks": [0, 1]}, "parameter 'stream_tasks'=[0, 1] is not allowed"),
    ({"methods": []}, "parameter 'methods'=[] is not allowed: expected a non-empty list from"),
    ({"methods": ["fine_tune"]}, "parameter 'methods'=['fine_tune'] is not allowed: expected a list of str from"),
    ({"shift_severities": [0.5, 1.5]}, "parameter 'shift_severities'=[0.5, 1.5] is not allowed"),
    ({"gpt_width": 30, "gpt_heads": 4}, "parameter 'gpt_width'=30 is not allowed with gpt_heads=4"),
    ({"task_len": 64, "seq_len": 32}, "parameter 'task_len'=64 is not allowed: the pretrained model reads at most"),
    ({"stream_tasks": [[0, 1], [1, 2]]}, "parameter 'stream_tasks'=[[0, 1], [1, 2]] is not allowed: expected two or more disjoint"),
    ({"stream_tasks": [[0, 1, 2]]}, "parameter 'stream_tasks'=[[0, 1, 2]] is not allowed"),
    ({"small_budget": 6, "large_budget": 6}, "parameter 'large_budget'=6 is not allowed: expected more than small_budget=6"),
    ({"shift_severities": [0.5, 1.0]}, "parameter 'shift_severities'=[0.5, 1.0] is not allowed: expected severities in [0, 1] that include 0"),
    ({"harmful_per_class": 50}, "parameter 'harmful_per_class'=50 is not allowed: expected at most glyphs_per_class=20"),
    ({"shift_extra": [0]}, "parameter 'shift_extra'=[0] is not allowed"),
])
def test_lists_nested_lists_and_knobs_that_must_fit_together(overrides, expected):
    with pytest.raises(ValueError) as err:
        resolve("smoke", **overrides)
    assert expected in str(err.value)


def test_nested_knob_keeps_its_shape():
    assert resolve("smoke", stream_tasks=[[0], [1, 2]]).stream_tasks == [[0], [1, 2]]


def test_check_validates_one_knob_and_budgets_name_theirs():
    assert config.check_knob("text_lr_factors", [1, 3]) == [1.0, 3.0]
    with pytest.raises(ValueError, match="unknown parameter 'methodz'"):
        config.check_knob("methodz", ["scratch"])
    assert config.check_budgets("transfer_budgets", [1, 30], 30, "pool") == [1, 30]
    with pytest.raises(ValueError, match=r"parameter 'transfer_budgets'=\[1, 31\] is not allowed: each label "
                                         r"budget must be in \[1, 30\] examples per class \(pool\)"):
        config.check_budgets("transfer_budgets", [1, 31], 30, "pool")


def test_seed_list_counts_from_the_seed():
    assert config.seed_list(resolve("quick", seed=3)) == [3, 4, 5]


# --- your own data and the full profile -------------------------------------------------------------

def test_text_corpus_knob_is_checked_resolved_and_feeds_the_text_track(store, tmp_path):
    from owndata import write_text_file

    from helpers import data, plan, text

    book = write_text_file(tmp_path / "book.txt", 30_000)
    assert resolve("smoke").text_corpus is None and data.active_text_corpus() is None
    P = resolve("smoke", text_corpus=str(book))
    assert P.text_corpus == str(book) and data.active_text_corpus() == book
    assert text.pretraining_corpus(P.text_chars) == data.user_corpus(book, P.text_chars)
    resolve("smoke")  # the next notebook without the knob: the shipped prose again
    assert data.active_text_corpus() is None
    resolve("smoke", text_corpus=str(book), _record=False)  # a look, not a notebook's own resolve
    assert data.active_text_corpus() is None
    assert config.check_knob("text_corpus", None) is None
    assert config.check_knob("text_corpus", "helpers/config.py") == str(config.__file__)  # from the repo root
    assert plan.parse_params([f"text_corpus={book}"]) == {"text_corpus": str(book)}
    assert plan.parse_params(["text_corpus=None"]) == {"text_corpus": None}
    with pytest.raises(plan.UsageError, match=f"-p text_corpus={tmp_path}/gone.txt: parameter 'text_corpus'="):
        plan.parse_params([f"text_corpus={tmp_path}/gone.txt"])


def test_a_corpus_smaller_than_text_chars_fails_at_resolve_naming_knob_value_and_size(store, tmp_path):
    from owndata import write_text_file

    from helpers import data

    book = write_text_file(tmp_path / "book.txt", 5_000)
    size = len(data.user_corpus(book))
    with pytest.raises(ValueError, match=f"parameter 'text_chars'=20000 is not allowed: the corpus "
                                         f"text_corpus='{book}' has only {size:,} characters; set text_chars "
                                         f"to at most {size} or give a larger corpus"):
        resolve("smoke", text_corpus=str(book))  # smoke asks for 20,000 characters
    assert resolve("smoke", text_corpus=str(book), text_chars=size).text_chars == size
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt holds no text"):
        resolve("smoke", text_corpus=str(tmp_path / "empty.txt"))


def test_target_dataset_may_be_an_image_folder_checked_before_training(store, tmp_path):
    from owndata import write_image_folder

    folder = write_image_folder(tmp_path / "digits", classes=3, per_class=20)
    P = resolve("smoke", target_dataset=str(folder))  # smoke: budgets [1, 5], probe_per_class 10
    assert P.target_dataset == str(folder)
    with pytest.raises(ValueError, match=r"parameter 'budgets'=\[1, 13\] is not allowed: class 'class_0' of the "
                                         r"image folder .* has 20 images, so its labelled pool \(60%\) holds 12"):
        resolve("smoke", target_dataset=str(folder), budgets=[1, 13])
    with pytest.raises(ValueError, match="parameter 'probe_per_class'=13 is not allowed"):
        resolve("smoke", target_dataset=str(folder), probe_per_class=13)
    with pytest.raises(ValueError, match="no folder at .*missing; expected str from"):
        resolve("smoke", target_dataset=str(tmp_path / "missing"))
    (folder / "class_2" / "000.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the image .*class_2/000.png"):
        resolve("smoke", target_dataset=str(folder))


def test_full_is_sized_for_the_data_that_exists():
    """`full` asks for no more text than ships (else it would fail before training) and its label budgets
    fit the text tasks; its GPT (about 7 M parameters) and CNNs fit one GPU many times over."""
    from helpers import data, text

    P = PROFILES["full"]
    prose, code = text.pretraining_corpus(None), text.code_corpus(None)
    assert P["text_chars"] <= len(prose) and P["dapt_chars"] <= len(code)
    assert len(text.pretraining_corpus(P["text_chars"])) > 0.99 * P["text_chars"]
    with pytest.raises(data.CorpusTooSmall, match=f"parameter 'text_chars'={len(prose) + 1} is not allowed: the "
                                                  f"shipped prose corpus .* has only {len(prose):,} characters"):
        text.pretraining_corpus(len(prose) + 1)  # what lm_corpus, hence pretrain_gpt, asks before training
    for kind in text.TASK_KINDS:
        task = text.package_task(kind)
        assert max(P["text_budgets"]) <= task.max_budget(text.task_split(task)[0]), kind
    assert P["gpt_width"] % P["gpt_heads"] == 0 and P["task_len"] <= P["seq_len"]


def test_pretraining_seeds_cycle_under_the_fine_tuning_seeds():
    from helpers.config import pretrain_params, pretrain_seed, resolve

    params = resolve("quick", seed=3, _record=False)
    assert [pretrain_seed(params, i) for i in range(params["seeds"])] == [3, 4, 5]
    assert [pretrain_seed(params, i, "lm") for i in range(params["seeds"])] == [3, 4, 3]
    assert pretrain_params(params, 1)["seed"] == 4 and params["seed"] == 3
    with pytest.raises(ValueError, match="'pretrain_seeds'=4 is not allowed: expected at most seeds=3"):
        resolve("quick", pretrain_seeds=4, _record=False)

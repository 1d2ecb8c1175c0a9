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

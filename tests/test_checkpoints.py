import json

import pytest
import torch

from helpers import checkpoints as ck


def _build(folder):
    ck.save_tensors(folder, {"x": torch.arange(5.0)})


def test_cached_builds_once_and_verifies(store):
    calls = []
    config = {"a": 1}
    folder = ck.cached("thing", config, lambda f: (calls.append(1), _build(f)), verbose=False)
    again = ck.cached("thing", config, lambda f: (calls.append(1), _build(f)), verbose=False)
    assert folder == again and calls == [1]
    assert torch.equal(ck.load_tensors(folder)["x"], torch.arange(5.0))
    manifest = json.loads((folder / ck.MANIFEST).read_text())
    assert manifest["config"] == config and ck.WEIGHTS in manifest["files"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_artifact_is_detected_and_rebuilt(store, damage):
    config = {"a": 2}
    folder = ck.cached("thing", config, _build, verbose=False)
    weights = folder / ck.WEIGHTS
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(weights.read_bytes()); data[-1] ^= 0xFF; weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    else:
        (folder / ck.MANIFEST).write_text("{not json")
    with pytest.raises(ck.CorruptArtifact):
        ck.verify("thing", config)
    with pytest.warns(UserWarning, match="rebuilding thing"):
        ck.cached("thing", config, _build, verbose=False)
    assert torch.equal(ck.load_tensors(ck.verify("thing", config))["x"], torch.arange(5.0))


def test_failed_build_leaves_nothing_behind(store):
    def broken(folder):
        _build(folder)
        raise RuntimeError("power cut")
    with pytest.raises(RuntimeError):
        ck.cached("thing", {"a": 3}, broken, verbose=False)
    with pytest.raises(FileNotFoundError):
        ck.verify("thing", {"a": 3})
    assert not any(p.name.endswith(".tmp") for p in (store / "thing").iterdir())


def test_config_hash_ignores_key_order():
    assert ck.config_hash({"a": 1, "b": 2}) == ck.config_hash({"b": 2, "a": 1})
    assert ck.config_hash({"a": 1}) != ck.config_hash({"a": 2})


def test_load_or_train_trains_then_loads(store):
    from helpers.models import tiny_gpt

    calls = []

    def train_fn(model):
        calls.append(1)
        with torch.no_grad():
            model.transformer.wte.weight.add_(1.0)
        return {"cost": 42}

    torch.manual_seed(0)
    first = tiny_gpt(50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    out = ck.load_or_train("gpt", {"v": 1}, first, train_fn)
    assert out["trained"] and out["cost"] == 42
    torch.manual_seed(1)
    second = tiny_gpt(50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    out2 = ck.load_or_train("gpt", {"v": 1}, second, train_fn)
    assert not out2["trained"] and out2["cost"] == 42 and calls == [1]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert second.lm_head.weight is second.transformer.wte.weight  # tied weights survive


def test_load_or_train_retrains_a_tampered_checkpoint(store):
    model = torch.nn.Linear(3, 2)
    ck.load_or_train("lin", {"v": 1}, model, lambda m: None)
    weights = ck.artifact_dir("lin", {"v": 1}) / ck.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.warns(UserWarning, match="retraining lin"):
        out = ck.load_or_train("lin", {"v": 1}, torch.nn.Linear(3, 2), lambda m: None)
    assert out["trained"]


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.json"
    ck.atomic_write_json(target, {"a": 1})
    ck.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]

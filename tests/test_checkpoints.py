import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_load_or_build_is_the_one_store_path(store):
    """Any artefact with its own save/load (a transformers folder, a JSON table) gets the same
    manifest, verification, lock and atomic write as cached() and load_or_train()."""
    builds = []

    def build():
        builds.append(1)
        return {"rows": [1, 2, 3]}

    def save(value, folder):
        ck.atomic_write_json(folder / "table.json", value)

    def load(folder):
        return json.loads((folder / "table.json").read_text())

    first = ck.load_or_build("table", {"v": 1}, build, save, load)
    again = ck.load_or_build("table", {"v": 1}, build, save, load)
    assert first.built and not again.built and builds == [1]
    assert first.value == again.value == {"rows": [1, 2, 3]} and first.folder == again.folder
    assert ck.verify("table", {"v": 1}) == first.folder
    (first.folder / "table.json").write_text('{"rows": []}')
    with pytest.warns(UserWarning, match="redoing table"):
        redone = ck.load_or_build("table", {"v": 1}, build, save, load, rebuilding="redoing")
    assert redone.built and builds == [1, 1] and load(redone.folder) == {"rows": [1, 2, 3]}


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.json"
    ck.atomic_write_json(target, {"a": 1})
    ck.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


_RACER = r"""
import json, os, sys, time
from pathlib import Path
import torch
from helpers import checkpoints as ck

go, log = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():  # both processes start building at the same moment
    time.sleep(0.01)

def build(folder):
    with open(log, "a") as f:
        f.write(f"cached {os.getpid()}\n")
    time.sleep(1.0)  # a slow build: the other process arrives while it runs
    ck.save_tensors(folder, {"x": torch.arange(3.0)})

def train_fn(model):
    with open(log, "a") as f:
        f.write(f"trained {os.getpid()}\n")
    time.sleep(1.0)
    with torch.no_grad():
        model.weight.fill_(float(os.getpid()))
    return {"by": os.getpid()}

folder = ck.cached("race", {"v": 1}, build, verbose=False)
out = ck.load_or_train("race-model", {"v": 1}, torch.nn.Linear(2, 2, bias=False), train_fn)
print(json.dumps({"folder": str(folder), "trained": out["trained"], "by": out["by"]}))
"""


def race(code: str, *args: str, store: Path, go: Path, n: int = 2, timeout: float = 300) -> list[dict]:
    """Run ``code`` in ``n`` processes at once (``python -c code go *args``, sharing ``store``): they
    wait for the file ``go``, created once all have started. Returns each one's last stdout line, as JSON."""
    env = {**os.environ, "WORKBOOK_STORE": str(store), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go), *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    go.touch()
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def test_two_processes_build_a_shared_artefact_once(store, tmp_path):
    """Two processes (two notebooks under `helpers.run --jobs 2`) asking for the same missing
    artefact: one builds it, the other waits on the lock and loads the result."""
    log = tmp_path / "builds.log"
    outs = race(_RACER, str(log), store=store, go=tmp_path / "go", timeout=120)
    lines = log.read_text().split()
    assert lines.count("cached") == 1 and lines.count("trained") == 1, lines
    assert outs[0]["folder"] == outs[1]["folder"]
    assert sorted(o["trained"] for o in outs) == [False, True]
    assert outs[0]["by"] == outs[1]["by"]  # the waiter loaded the builder's checkpoint
    assert (store / ".locks" / "race" / (ck.config_hash({"v": 1}) + ".lock")).exists()
    assert [p.name for p in (store / "race").iterdir()] == [ck.config_hash({"v": 1})]  # artefacts only
    ck.verify("race", {"v": 1}) and ck.verify("race-model", {"v": 1})


def test_threads_of_one_process_build_once_and_nesting_does_not_deadlock(store):
    """POSIX record locks belong to a process, so threads queue in front of them: two threads
    asking for the same artefact build it once; a build may take the same lock again inside."""
    import threading
    import time

    builds = []

    def build(folder):
        builds.append(threading.get_ident())
        time.sleep(0.3)
        with ck.build_lock("nested", {"v": 1}, verbose=False):  # same thread, same lock: no deadlock
            with ck.build_lock("nested", {"v": 1}, verbose=False):
                pass
        ck.save_tensors(folder, {"x": torch.arange(2.0)})

    threads = [threading.Thread(target=ck.cached, args=("threads", {"v": 1}, build),
                                kwargs={"verbose": False}) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(builds) == 1
    ck.verify("threads", {"v": 1})


_HOLD_CHECK = r"""
import fcntl, sys
with open(sys.argv[1], "a+b") as handle:
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("held")
    else:
        print("free")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks")
def test_build_lock_is_a_posix_record_lock_other_processes_see(store):
    """The lock is the POSIX record lock (fcntl.lockf) that NFS and cluster file systems implement,
    so a process on another machine sharing the store sees it as another process here does."""
    path = store / ".locks" / "posix" / (ck.config_hash({"v": 2}) + ".lock")

    def probe() -> str:
        return subprocess.run([sys.executable, "-c", _HOLD_CHECK, str(path)], capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()

    with ck.build_lock("posix", {"v": 2}, verbose=False):
        assert probe() == "held"
    assert probe() == "free"  # released when the block ends

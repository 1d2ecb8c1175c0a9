"""Sweeps on Dask distributed (``python -m helpers.run --cluster local:N``): a real ``LocalCluster``
(worker processes, TCP on 127.0.0.1) runs tiny notebooks; the same sweep with ``--jobs 2`` records
the same metrics; a worker killed mid-notebook is reported and the batch goes on; GPUs are handed
out round-robin (checked with a pretend list of GPUs, as this runs on CPUs).

Kernel starts: 4 on the cluster (two of them kill their worker), 2 with ``--jobs 2``, 1 on a
cluster started apart and joined with ``--scheduler``. One test,
also marked ``notebooks``, runs the real ``03 04 --sweep seed=0,1`` in smoke both ways (8 notebook
executions: a few minutes on 2 cores; about 9 minutes with an empty store on a busy machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import executors, run
from test_run import GOOD, _cli, _notebook

pytestmark = pytest.mark.cluster

RECORD_ENV = GOOD + """\
import os
record("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
record("omp_num_threads", os.environ.get("OMP_NUM_THREADS"))
"""

# The kernel's parent is the worker process: kill it mid-notebook, then leave.
KILL_WORKER = """\
import os, signal, time
time.sleep(0.5)
os.kill(os.getppid(), signal.SIGKILL)
os._exit(0)
"""


@pytest.fixture
def nbdir(tmp_path: Path) -> Path:
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "00_good.ipynb", RECORD_ENV)
    _notebook(folder / "01_kill.ipynb", KILL_WORKER)
    return folder


def _metrics(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.results.json").read_text())["metrics"]


def test_cluster_sweep_matches_jobs_and_survives_a_killed_worker(nbdir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(executors, "visible_gpus", lambda: ["0", "1"])  # pretend: two GPUs
    on_dask, local = tmp_path / "dask", tmp_path / "jobs"

    # the killers first: the good ones then go to restarted workers, none waits behind a killer
    code = run.main(_cli(nbdir, on_dask, "01", "00", "--sweep", "seed=0,1", "-p", "lr=1e-3",
                         "--cluster", "local:2"))
    out = capsys.readouterr().out
    assert code == 1  # the two killed executions failed ...
    batch = json.loads((on_dask / "batch.json").read_text())
    status = {r["name"]: r["status"] for r in batch["runs"]}
    assert status == {"00_good__seed=0": "ok", "00_good__seed=1": "ok",  # ... the rest ran
                      "01_kill__seed=0": "failed", "01_kill__seed=1": "failed"}
    errors = {r["name"]: r["error"] for r in batch["runs"] if r["error"]}
    assert {e["name"] for e in errors.values()} == {"WorkerDied"}
    assert "01_kill__seed=0: WorkerDied" in out and "worker" in errors["01_kill__seed=0"]["message"]
    assert batch["engine"] == "dask local:2" and batch["jobs"] == 2
    assert (on_dask / "report.html").is_file() and "01_kill__seed=1" in (on_dask / "summary.md").read_text()

    assert run.main(_cli(nbdir, local, "00", "--sweep", "seed=0,1", "-p", "lr=1e-3", "--jobs", "2")) == 0
    for seed in (0, 1):
        name = f"00_good__seed={seed}"
        on_cluster, in_processes = _metrics(on_dask, name), _metrics(local, name)
        gpus = {m.pop("cuda_visible_devices") for m in (on_cluster, in_processes)}
        assert gpus <= {"0", "1"}  # each worker was pinned to one of the two GPUs
        assert on_cluster == in_processes and on_cluster["x"] == seed and on_cluster["lr_used"] == 1e-3
        assert on_cluster["omp_num_threads"] == str(executors._threads(2))
    # --jobs 2 starts both at once: slots 0 and 1, one GPU each
    assert {_metrics(local, f"00_good__seed={s}")["cuda_visible_devices"] for s in (0, 1)} == {"0", "1"}
    aggregated = [json.loads((folder / "aggregate.json").read_text()) for folder in (on_dask, local)]
    groups = [[g for g in groups if g["notebook"] == "00_good"] for groups in aggregated]
    assert groups[0] == groups[1] and groups[0][0]["metrics"]["x"]["mean"] == 0.5  # same mean ± std


@pytest.mark.parametrize("args, expected", [
    (["--cluster", "local"], ["--cluster 'local'", "local:N"]),
    (["--cluster", "local:0"], ["N >= 1"]),
    (["--cluster", "slurm:4"], ["expected local:N", "--scheduler"]),
    (["--cluster", "local:2", "--jobs", "2"], ["--jobs 2 and --cluster"]),
    (["--cluster", "local:2", "--scheduler", "tcp://127.0.0.1:8786"], ["both given"]),
    (["--scheduler", "nowhere"], ["expected a scheduler address"]),
])
def test_bad_engine_options_are_reported_before_any_work(nbdir, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    assert run.main(_cli(nbdir, out, "00", *args)) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not out.exists()


def test_unreachable_scheduler_is_an_engine_error(nbdir, tmp_path):
    with pytest.raises(executors.EngineError, match="cannot reach a Dask scheduler"):
        executors.DaskExecutor(scheduler="tcp://127.0.0.1:9", connect_timeout=1)


def test_gpus_are_handed_out_round_robin(monkeypatch):
    assert [executors.gpu_for(slot, ["0", "1", "2"]) for slot in range(5)] == ["0", "1", "2", "0", "1"]
    assert executors.gpu_for(3, ["0"]) is None and executors.gpu_for(0, []) is None  # nothing to pin
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")  # a job given GPUs 2 and 5 shares those
    assert executors.visible_gpus() == ["2", "5"]
    assert executors.gpu_for(1, executors.visible_gpus()) == "5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executors.visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch
    assert len(executors.visible_gpus()) == torch.cuda.device_count()


def test_threads_per_kernel(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(executors.os, "cpu_count", lambda: 16)
    assert executors._threads(4) == 4 and executors._threads(32) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert executors._threads(4) == 3


def _varies_between_batches(column: str) -> bool:
    """Columns that differ between two batches on one store by design: timings, and whether a
    checkpoint was trained now or loaded (the second batch loads what the first trained)."""
    return "second" in column or "time" in column or column in ("status", "trained_now", "trained")


@pytest.mark.notebooks
def test_real_sweep_on_the_cluster_writes_the_same_report_as_jobs(tmp_path, shared_store, monkeypatch, capsys):
    """The issue's check: ``03 04 --sweep seed=0,1 --cluster local:2 --profile smoke`` records the
    same metrics, claims and tables (timings aside) as the same sweep with ``--jobs 2``."""
    monkeypatch.setenv("WORKBOOK_STORE", str(shared_store))
    folders = {}
    for engine in (["--jobs", "2"], ["--cluster", "local:2"]):
        out = folders[engine[0]] = tmp_path / engine[0].strip("-")
        args = ["03", "04", "--sweep", "seed=0,1", "--profile", "smoke", "-p", "threads=1", "--out", str(out)]
        assert run.main([*args, *engine]) == 0, capsys.readouterr().out[-3000:]
    local, on_dask = folders["--jobs"], folders["--cluster"]
    names = [r["name"] for r in json.loads((local / "batch.json").read_text())["runs"]]
    assert len(names) == 4
    for name in names:
        a, b = (json.loads((f / f"{name}.results.json").read_text()) for f in (local, on_dask))
        assert a["metrics"] == b["metrics"], name
        assert [(c["name"], c["holds"]) for c in a["claims"]] == [(c["name"], c["holds"]) for c in b["claims"]]
        assert a["tables"].keys() == b["tables"].keys()
        for table, ta in a["tables"].items():
            tb = b["tables"][table]
            keep = [i for i, column in enumerate(ta["columns"]) if not _varies_between_batches(column)]
            assert [[row[i] for i in keep] for row in ta["rows"]] == \
                   [[row[i] for i in keep] for row in tb["rows"]], (name, table)


def test_joining_a_running_cluster_leaves_it_running(nbdir, tmp_path):
    """``--scheduler tcp://host:port`` runs on a cluster someone else started, and only disconnects."""
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        out = tmp_path / "joined"
        assert run.main(_cli(nbdir, out, "00", "--scheduler", cluster.scheduler_address)) == 0
        batch = json.loads((out / "batch.json").read_text())
        assert batch["engine"] == f"dask {cluster.scheduler_address}" and batch["runs"][0]["status"] == "ok"
        assert _metrics(out, "00_good")["x"] == 0
        with Client(cluster) as client:  # still there, with its worker
            assert len(client.scheduler_info()["workers"]) == 1

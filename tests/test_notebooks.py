"""Every notebook executes: in `smoke` (papermill, and nbval-lax), and its claims hold in `quick`.

The notebooks share one store per test session, so a checkpoint pretrained by notebook 01 is reused
by 03, exactly as for a learner; a notebook run alone would train it through `load_or_train`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SMOKE_SECONDS = 60  # the budget per notebook in smoke (DESIGN: tests stay fast)


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


def _execute(notebook: Path, profile: str, out_dir: Path, store: Path, monkeypatch) -> dict:
    monkeypatch.setenv("WORKBOOK_STORE", str(store))
    results = out_dir / f"{notebook.stem}.results.json"
    monkeypatch.setenv("WORKBOOK_RESULTS", str(results))
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook), str(out_dir / notebook.name), parameters={"PROFILE": profile},
                            kernel_name="python3", progress_bar=False, cwd=str(notebook.parent))
    except pm.PapermillExecutionError as err:
        recorded = json.loads(results.read_text()) if results.exists() else {}
        failed = [c for c in recorded.get("claims", []) if not c["holds"]]
        pytest.fail(f"{notebook.name} failed in {profile}: {err.ename}: {err.evalue}\n"
                    f"failed claims: {json.dumps(failed, indent=1)}", pytrace=False)
    recorded = json.loads(results.read_text())
    recorded["seconds"] = time.perf_counter() - start
    return recorded


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke(notebook, tmp_path, shared_store, monkeypatch):
    recorded = _execute(notebook, "smoke", tmp_path, shared_store, monkeypatch)
    assert recorded["profile"] == "smoke"
    assert recorded["claims"], f"{notebook.name} checks no claims"
    assert recorded["seconds"] < SMOKE_SECONDS * 2, f"{notebook.name}: {recorded['seconds']:.0f} s in smoke"


def test_nbval_lax_over_smoke_notebooks(tmp_path, shared_store):
    """nbval runs each notebook as a test (cells must not raise); parameters prepared as smoke."""
    for notebook in NOTEBOOKS:
        pm.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters={"PROFILE": "smoke"},
                            prepare_only=True, kernel_name="python3")
    env = {**os.environ, "WORKBOOK_STORE": str(shared_store), "WORKBOOK_RESULTS": str(tmp_path / "nbval.results.json")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=ROOT / "notebooks", env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.claims
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_claims_hold_in_quick(notebook, tmp_path, shared_store, monkeypatch):
    recorded = _execute(notebook, "quick", tmp_path, shared_store, monkeypatch)
    claims = recorded["claims"]
    assert claims and all(c["asserted"] and c["holds"] for c in claims), json.dumps(claims, indent=1)
    print(f"{notebook.stem}: {len(claims)} claims hold in quick, {recorded['seconds']:.0f} s")


EXERCISE_NOTEBOOKS = [p for p in NOTEBOOKS if '"solution"' in p.read_text()]


@pytest.mark.parametrize("notebook", EXERCISE_NOTEBOOKS, ids=lambda p: p.stem)
def test_student_version_stops_at_its_first_exercise(notebook, tmp_path, shared_store, monkeypatch):
    """The handout runs up to the first exercise and fails there, with the stub's message."""
    from helpers.classroom import write_student_versions

    [(student, exercises)] = write_student_versions(tmp_path / "student", [notebook])
    assert exercises >= 1
    monkeypatch.setenv("WORKBOOK_STORE", str(shared_store))
    monkeypatch.setenv("WORKBOOK_RESULTS", str(tmp_path / "student.results.json"))
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(student), str(tmp_path / "out.ipynb"), parameters={"PROFILE": "smoke"},
                            kernel_name="python3", progress_bar=False, cwd=str(notebook.parent))
    assert err.value.ename == "NotImplementedError" and "Exercise" in err.value.evalue

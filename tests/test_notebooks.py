"""Every notebook executes once in `smoke` (under nbval), and its claims hold in `quick`.

* **smoke** (marker ``notebooks``): papermill prepares each notebook with *every knob its
  parameters cell declares* set to the smoke profile's value, through the batch runner's own
  parameter mapping (so a parameter the runner cannot pass fails here), and nbval executes it: each
  cell is a test, run once. The recorded parameters must equal the smoke profile: every declared
  knob reached ``resolve`` under its own name.
* **quick** (marker ``claims``): the claims each notebook asserts, on the numbers it measures.

The notebooks share one store per test session (``shared_store`` in conftest), so a checkpoint
pretrained by notebook 01 is reused by 03, exactly as for a learner; a notebook run alone would
train it through ``load_or_train``.
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

from helpers.config import KNOBS, PROFILES
from helpers.plan import SPECIAL_PARAMETERS, check_declared, notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SMOKE_SECONDS = 60  # the budget per notebook in smoke (DESIGN: tests stay fast)


def declared_knobs(notebook: Path) -> dict[str, object]:
    """The knobs a notebook's parameters cell declares (lower-case), after the runner's own check."""
    declared = pm.inspect_notebook(str(notebook))
    check_declared(notebook, declared)
    return {name.lower(): declared[name] for name in declared if name not in SPECIAL_PARAMETERS}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_a_knob_with_a_value_in_every_profile(notebook):
    knobs = declared_knobs(notebook)
    assert "seed" in knobs, f"{notebook.name} declares no SEED"
    for name in knobs:
        assert name in KNOBS and all(name in profile for profile in PROFILES.values()), name


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


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_under_nbval(notebook, tmp_path, shared_store):
    smoke = PROFILES["smoke"]
    values = {name: smoke[name] for name in declared_knobs(notebook)}
    parameters = notebook_parameters(notebook, "smoke", values, pm.inspect_notebook(str(notebook)))
    prepared = tmp_path / notebook.name
    pm.execute_notebook(str(notebook), str(prepared), parameters=parameters, prepare_only=True,
                        kernel_name="python3")
    results = tmp_path / f"{notebook.stem}.results.json"
    env = {**os.environ, "WORKBOOK_STORE": str(shared_store), "WORKBOOK_RESULTS": str(results)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(prepared)],
                          cwd=notebook.parent, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    first_failure = proc.stdout[proc.stdout.find("=== FAILURES ==="):][:6000]  # the first cell that failed
    assert proc.returncode == 0, first_failure + proc.stdout[-1500:] + proc.stderr[-2000:]
    recorded = json.loads(results.read_text())
    assert recorded["profile"] == "smoke"
    assert recorded["claims"], f"{notebook.name} checks no claims"
    for name, value in values.items():  # each declared knob arrived under its own name
        assert recorded["params"][name] == value, (name, recorded["params"][name], value)
    assert seconds < SMOKE_SECONDS * 2, f"{notebook.name}: {seconds:.0f} s in smoke"


@pytest.mark.claims
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_claims_hold_in_quick(notebook, tmp_path, shared_store, monkeypatch):
    recorded = _execute(notebook, "quick", tmp_path, shared_store, monkeypatch)
    claims = recorded["claims"]
    assert claims and all(c["asserted"] and c["holds"] for c in claims), json.dumps(claims, indent=1)
    print(f"{notebook.stem}: {len(claims)} claims hold in quick, {recorded['seconds']:.0f} s")


EXERCISE_NOTEBOOKS = [p for p in NOTEBOOKS if '"solution"' in p.read_text()]


@pytest.mark.notebooks
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

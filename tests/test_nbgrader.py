"""The workbook's exercises through nbgrader, the grading tool courses already run.

A course is made from two notebooks (prepared in the smoke profile, as a teacher would set the
parameters cell): ``nbgrader generate_assignment`` writes the student version, and ``nbgrader
autograde`` grades two submissions -- the instructor notebooks (full points) and the untouched
student version (zero points, and no error but the stubs' ``NotImplementedError``). Every exercise
cell (solution or check) runs within nbgrader's default per-cell limit (``Execute.timeout``, 30 s);
the course raises the limit only for the cells that pretrain a model when its checkpoint is not
built yet (a teacher builds them once beforehand, docs/teaching.md).

nbgrader comes with the ``classroom`` extra (``pip install -e ".[classroom]"``, which ``make`` installs).
It runs ``alembic`` from ``PATH`` to create its database, so the commands run with this Python's
``bin/`` first on ``PATH``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from helpers.classroom import CHECK, SOLUTION
from helpers.config import PROFILES
from helpers.plan import SPECIAL_PARAMETERS, notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
COURSE_NOTEBOOKS = ["01_pretrain_cnn", "02_pretrain_transformer"]  # short in smoke, three exercises between them or more
ASSIGNMENT = "workbook"
STUB_ERRORS = {"NotImplementedError", "ExerciseNotDone"}  # ExerciseNotDone is a NotImplementedError
EXERCISE_SECONDS = 30  # nbgrader's default Execute.timeout: every exercise cell stays under it
CELL_TIMEOUT = 300  # for the pretraining cells when the store is cold (a fresh clone's first run)


def nbgrader(course: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def exercise_seconds(notebook: Path) -> dict[str, float]:
    """How long each exercise cell (solution or check) of an autograded notebook ran, by grade_id."""
    from datetime import datetime

    nb = nbformat.read(notebook, as_version=4)
    seconds = {}
    for cell in nb.cells:
        grading, timing = cell.metadata.get("nbgrader", {}), cell.metadata.get("execution", {})
        if (grading.get("solution") or grading.get("grade")) and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds[grading["grade_id"]] = (end - start).total_seconds()
    return seconds


def errors(notebook: Path) -> list[tuple[str, str]]:
    """(ename, evalue) of every error an autograded notebook shows."""
    nb = nbformat.read(notebook, as_version=4)
    return [(o.ename, o.evalue) for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]


@pytest.mark.notebooks
def test_nbgrader_round_trip_full_points_for_solutions_zero_for_the_untouched_handout(tmp_path, shared_store):
    if shutil.which("nbgrader", path=str(Path(sys.executable).parent)) is None:
        pytest.fail('nbgrader is not installed: pip install -e ".[classroom]" (make installs it)')
    course = tmp_path / "course"
    source = course / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = 'workbook'\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.Execute.timeout = {CELL_TIMEOUT}\n"
        # after a cell finishes, how long to wait for its last output: nbgrader's 4 s is too short on
        # a busy 2-core machine (a cell then fails with "Timeout waiting for IOPub output")
        f"c.Execute.iopub_timeout = {CELL_TIMEOUT}\n")
    for stem in COURSE_NOTEBOOKS:  # the teacher's copy: the parameters cell set to the smoke profile
        notebook = ROOT / "notebooks" / f"{stem}.ipynb"
        declared = pm.inspect_notebook(str(notebook))
        values = {name.lower(): PROFILES["smoke"][name.lower()] for name in declared
                  if name not in SPECIAL_PARAMETERS}
        pm.execute_notebook(str(notebook), str(source / notebook.name), prepare_only=True, kernel_name="python3",
                            parameters=notebook_parameters(notebook, "smoke", values, declared))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "WORKBOOK_STORE": str(shared_store), "WORKBOOK_RESULTS": str(tmp_path / "results.json")}

    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force", env=env)
    release = course / "release" / ASSIGNMENT
    for stem in COURSE_NOTEBOOKS:
        student = nbformat.read(release / f"{stem}.ipynb", as_version=4)
        original = nbformat.read(source / f"{stem}.ipynb", as_version=4)
        solutions = [c for c in original.cells if SOLUTION in c.metadata.get("tags", [])]
        stubs = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert len(stubs) == len(solutions) >= 2, stem
        assert all("raise NotImplementedError()" in c.source and "BEGIN SOLUTION" not in c.source for c in stubs)
        checks = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(checks) == sum(CHECK in c.metadata.get("tags", []) for c in original.cells)

    for student, notebooks in (("instructor", source), ("untouched", release)):
        submitted = course / "submitted" / student / ASSIGNMENT
        submitted.mkdir(parents=True)
        for stem in COURSE_NOTEBOOKS:
            shutil.copy(notebooks / f"{stem}.ipynb", submitted / f"{stem}.ipynb")
    nbgrader(course, "autograde", ASSIGNMENT, "--force", env=env)
    nbgrader(course, "export", "--to", str(tmp_path / "grades.csv"), env=env)

    grades = {row["student_id"]: row for row in csv.DictReader((tmp_path / "grades.csv").open())}
    max_score = float(grades["instructor"]["max_score"])
    assert max_score >= 4, grades
    assert float(grades["instructor"]["raw_score"]) == max_score, json.dumps(grades, indent=1)
    assert float(grades["untouched"]["raw_score"]) == 0, json.dumps(grades, indent=1)
    for stem in COURSE_NOTEBOOKS:
        autograded = course / "autograded"
        assert errors(autograded / "instructor" / ASSIGNMENT / f"{stem}.ipynb") == [], stem
        timed = exercise_seconds(autograded / "instructor" / ASSIGNMENT / f"{stem}.ipynb")
        assert len(timed) >= 4 and max(timed.values()) < EXERCISE_SECONDS, (stem, timed)
        untouched = errors(autograded / "untouched" / ASSIGNMENT / f"{stem}.ipynb")
        assert untouched and {ename for ename, _ in untouched} <= STUB_ERRORS, (stem, untouched)

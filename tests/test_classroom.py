"""helpers.classroom: student versions stop at the first exercise; instructor versions pass."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from conftest import write_notebook
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import classroom

ROOT = Path(__file__).resolve().parent.parent


def _cell(source: str, *tags: str, markdown: bool = False):
    cell = new_markdown_cell(source) if markdown else new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def tiny_course(path: Path) -> Path:
    """Two exercises: a whole-cell solution, and one with scaffolding kept for the student."""
    nb = new_notebook(cells=[
        _cell("# A tiny course", markdown=True),
        _cell('PROFILE = "quick"', "parameters"),
        _cell("numbers = list(range(5))\nprint('numbers ready')"),
        _cell("## Exercise 1: add up the numbers\nStore the sum of `numbers` in `total`.", markdown=True),
        _cell("total = sum(numbers)", "solution"),
        _cell("from helpers.classroom import check\n"
              "check(total == 10, 'total is the sum of numbers, 0+1+2+3+4 = 10; try sum(numbers)',\n"
              "      success='total = 10')", "check"),
        _cell("### Write `mean`\nReturn the average of a list of numbers.", markdown=True),
        _cell("def mean(xs):\n    # BEGIN SOLUTION\n    return sum(xs) / len(xs)\n    # END SOLUTION",
              "solution"),
        _cell("check(mean([1, 2, 6]) == 3, 'mean([1, 2, 6]) should be 3: the sum divided by the count')",
              "check"),
        _cell("print('the end')"),
    ])
    return write_notebook(nb, path, "cell")


def test_instructor_passes_and_student_stops_at_the_first_exercise(tmp_path):
    course = tmp_path / "notebooks"
    course.mkdir()
    instructor = tiny_course(course / "01_tiny.ipynb")
    executed = tmp_path / "instructor_run.ipynb"
    pm.execute_notebook(str(instructor), str(executed), kernel_name="python3", progress_bar=False)
    ran = nbformat.read(executed, as_version=4)
    said = "".join(o.get("text", "") for c in ran.cells if c.cell_type == "code" for o in c.outputs)
    assert said.count("Correct") == 2 and "the end" in said  # every check passes

    # hand out the *executed* notebook: its outputs (the answers!) must not travel
    assert classroom.main(["student", str(tmp_path / "handout"), str(executed)]) == 0
    student_path = tmp_path / "handout" / executed.name
    student = nbformat.read(student_path, as_version=4)
    code = [c for c in student.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    first, second = [c for c in code if "exercise" in c.metadata.get("tags", [])]
    assert first.source.startswith("# YOUR CODE HERE\nraise NotImplementedError(")
    assert "sum(numbers)" not in first.source and "define total" in first.source
    assert second.source.startswith("def mean(xs):\n    # YOUR CODE HERE\n    raise NotImplementedError(")
    assert "Write mean" in second.source and "len(xs)" not in second.source
    checks = [c.source for c in student.cells if "check" in c.metadata.get("tags", [])]
    assert checks == [c.source for c in ran.cells if "check" in c.metadata.get("tags", [])]

    with pytest.raises(pm.PapermillExecutionError) as failure:
        pm.execute_notebook(str(student_path), str(tmp_path / "student_run.ipynb"),
                            kernel_name="python3", progress_bar=False)
    assert failure.value.ename == "NotImplementedError"
    assert failure.value.evalue.startswith("Exercise 1: add up the numbers (define total). Replace")
    after = nbformat.read(tmp_path / "student_run.ipynb", as_version=4).cells
    counts = [c.execution_count for c in after if c.cell_type == "code"]
    assert counts[:3] == [1, 2, 3] and counts[3:] == [None] * (len(counts) - 3)  # stopped there


def test_check_says_what_is_wrong(capsys):
    with pytest.raises(classroom.CheckFailed, match="Not yet: total is the sum"):
        classroom.check(9 == 10, "total is the sum of numbers")
    classroom.check(True, "unused", success="well done")
    assert capsys.readouterr().out == "Correct: well done\n"
    assert issubclass(classroom.CheckFailed, AssertionError)


def test_task_text_comes_from_metadata_or_the_markdown_above():
    nb = new_notebook(cells=[_cell("**Task:** compute `x`\nmore text", markdown=True),
                             _cell("x = 1", "solution"), _cell("y = 2", "solution")])
    nb.cells[2].metadata["exercise"] = "set y to two"
    student, n = classroom.student_version(nb)
    assert n == 2
    assert "Exercise: Task: compute x more text (define x)." in student.cells[1].source
    assert "Exercise: set y to two (define y)." in student.cells[2].source
    assert nb.cells[1].source == "x = 1"  # the instructor notebook is untouched


def test_bad_input_is_reported_and_nothing_written(tmp_path, capsys):
    course = tmp_path / "notebooks"
    course.mkdir()
    tiny_course(course / "01_tiny.ipynb")
    out = tmp_path / "handout"
    base = ["--notebooks-dir", str(course)]

    assert classroom.main(["student", str(out), "07", *base]) == 2
    assert "unknown notebook '07'" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    assert classroom.main(["student", str(afile), *base]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert classroom.main(["student", str(out), "--notebooks-dir", str(tmp_path / "empty")]) == 2
    assert "no notebooks" in capsys.readouterr().err
    assert classroom.main(["student", str(course), *base]) == 2
    assert "would replace the solutions" in capsys.readouterr().err
    broken = course / "02_broken.ipynb"
    broken.write_text("{not json")
    assert classroom.main(["student", str(out), *base]) == 2
    assert "cannot read notebook" in capsys.readouterr().err
    nb = new_notebook(cells=[_cell("the answer is 42", "solution", markdown=True)])
    nbformat.write(nb, broken)
    assert classroom.main(["student", str(out), *base]) == 2
    assert "only code cells can be solutions" in capsys.readouterr().err
    assert not out.exists()
    assert classroom.main(["student"]) == 2  # argparse: OUT is required


def test_the_workbook_notebooks_make_valid_student_versions(tmp_path):
    """Every exercise in notebooks/ has a task above and a check after it, and the student version
    equals the instructor's up to the first exercise (which the smoke tests execute)."""
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert classroom.main(["student", str(tmp_path / "handout")]) == 0
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        student = nbformat.read(tmp_path / "handout" / path.name, as_version=4)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        solutions = [i for i, t in enumerate(tags) if "solution" in t]
        for i in solutions:
            assert any(c.cell_type == "markdown" for c in nb.cells[:i]), f"{path.name} cell {i}: no task above"
            later = [j for j, t in enumerate(tags) if j > i and "check" in t]
            assert later, f"{path.name}: solution cell {i} has no check cell after it"
            assert "NotImplementedError" in student.cells[i].source
        first = solutions[0] if solutions else len(nb.cells)
        assert [c.source for c in student.cells[:first]] == [c.source for c in nb.cells[:first]]
        assert json.dumps([c.get("outputs", []) for c in student.cells]).count("output_type") == 0


def test_show_source_gives_the_real_code_of_a_helper():
    from helpers import metrics
    from helpers.classroom import show_source

    code = show_source(metrics.backward_transfer)
    assert code.data.startswith("def backward_transfer(") and "return" in code.data


# --------------------------------------------------------------------------------------------
# the checks exercises call
# --------------------------------------------------------------------------------------------

def test_check_value_compares_numbers_arrays_and_tensors_without_naming_the_reference(capsys):
    import numpy as np
    import torch

    classroom.check_value(np.float32(2.5), torch.tensor(2.5), hint="h", success="well done")
    classroom.check_value({"a": [1.0, 2.0]}, {"a": np.array([1.0, 2.0])}, hint="h")
    assert capsys.readouterr().out == "Correct: well done\nCorrect.\n"
    secret = 123.456789
    cases = [(secret + 1, "the value is not the expected one"),
             (np.zeros(3), "has shape (3,), expected shape ()"),
             ("text", "differs"), ({"a": 1}, "expected a number"), (object(), "expected a number")]
    for answer, why in cases:
        with pytest.raises(classroom.CheckFailed) as failed:
            classroom.check_value(answer, secret, hint="exponentiate the loss")
        assert str(failed.value).startswith("Not yet: exponentiate the loss") and why in str(failed.value)
        assert "123.4" not in str(failed.value)
    with pytest.raises(classroom.CheckFailed, match="2 of 4 entries differ"):
        classroom.check_value(torch.tensor([1, 0, 0, 1]), torch.tensor([1, 1, 1, 1]), hint="h")
    with pytest.raises(classroom.CheckFailed, match="expected booleans"):
        classroom.check_value(np.ones(2), np.ones(2, dtype=bool), hint="h")
    with pytest.raises(classroom.CheckFailed, match="missing"):
        classroom.check_value({"a": 1}, {"a": 1, "b": 2}, hint="h")
    pair = (torch.zeros(2, 3), torch.tensor([1, 2]))  # several results compare one by one
    classroom.check_value((torch.zeros(2, 3), np.array([1, 2])), pair, hint="h")
    with pytest.raises(classroom.CheckFailed, match=r"1 of 2 entries in result 1 differ"):
        classroom.check_value([torch.zeros(2, 3), torch.tensor([1, 3])], pair, hint="h")
    with pytest.raises(classroom.CheckFailed, match="expected 2 results, got 1"):
        classroom.check_value((torch.zeros(2, 3),), pair, hint="h")
    with pytest.raises(classroom.CheckFailed, match="expected a tuple of 2, got Tensor"):
        classroom.check_value(torch.zeros(2, 3), pair, hint="h")
    capsys.readouterr()
    for stub in (None, ...):  # the scaffolding's value: "not done", a NotImplementedError
        with pytest.raises(classroom.ExerciseNotDone, match="not done yet"):
            classroom.check_value(stub, 1.0, hint="h")
    assert issubclass(classroom.ExerciseNotDone, NotImplementedError)


def test_check_function_runs_both_on_each_case_and_names_the_failing_case(capsys):
    import torch

    def reference(n):
        return torch.ones(n, n, dtype=torch.bool).tril()

    def right(n):
        return torch.arange(n)[:, None] >= torch.arange(n)[None, :]

    classroom.check_function(right, reference, [1, 2, 5], hint="h")
    assert "agrees with the workbook's implementation on 3 cases" in capsys.readouterr().out
    with pytest.raises(classroom.CheckFailed, match=r"case 2 of 3: 2 of 4 entries differ"):
        classroom.check_function(lambda n: torch.ones(n, n, dtype=torch.bool).triu(), reference,
                                 [1, 2, 5], hint="row i sees columns 0..i")
    with pytest.raises(classroom.CheckFailed, match="raised ZeroDivisionError"):
        classroom.check_function(lambda n: 1 / 0, reference, [1], hint="h")

    def stubbed(n):
        raise NotImplementedError("Exercise 2.1: write the mask")

    with pytest.raises(NotImplementedError, match="Exercise 2.1"):
        classroom.check_function(stubbed, reference, [1], hint="h")
    with pytest.raises(classroom.ExerciseNotDone):
        classroom.check_function(None, reference, [1], hint="h")

    # cases drawn from a seed; keyword cases; each function gets its own copy of the inputs
    def normalise_in_place(x):
        x /= x.sum()
        return x

    classroom.check_function(normalise_in_place, lambda x: x / x.sum(),
                             lambda rng: (rng.random(4) + 0.1,), n_cases=3, hint="h")
    classroom.check_function(lambda a, b: a - b, lambda a, b: a - b, [{"a": 3, "b": 1}], hint="h")
    with pytest.raises(ValueError, match="at least one case"):
        classroom.check_function(right, reference, [], hint="h")


def test_show_prediction_puts_the_prediction_beside_the_measurement(capsys):
    import numpy as np

    row = classroom.show_prediction("speed-up", 2, np.float64(3.0), unit="x")
    assert row["difference"] == 1.0 and row["ratio"] == 1.5
    assert "you predicted 2 x, measured 3 x" in capsys.readouterr().out
    assert classroom.show_prediction("winner", "LoRA", "LoRA")["matched"] is True
    assert classroom.show_prediction("forgets", True, False)["matched"] is False
    with pytest.raises(classroom.CheckFailed, match=r"one of \['LoRA', 'full'\] \(you wrote 'lora'\)"):
        classroom.show_prediction("winner", "lora", "LoRA", choices=["LoRA", "full"])
    for stub in (None, ...):
        with pytest.raises(classroom.ExerciseNotDone, match="record your prediction for 'speed-up'"):
            classroom.show_prediction("speed-up", stub, 3.0)


# --------------------------------------------------------------------------------------------
# nbgrader's markers and metadata
# --------------------------------------------------------------------------------------------

def test_nbgrader_markers_stub_each_region_and_keep_the_scaffolding():
    source = ("import math\nppl = None\n### BEGIN SOLUTION\nppl = math.exp(2.0)\n### END SOLUTION\n"
              "def mask(n):\n    '''docstring stays'''\n    ### BEGIN SOLUTION\n    m = n + 1\n"
              "    return m\n    ### END SOLUTION\nprint('done')")
    out = classroom.stub(source, "Exercise 2.1 (implement): two answers")
    assert "math.exp" not in out and "n + 1" not in out and "return m" not in out
    assert out.startswith("import math\nppl = None\n# YOUR CODE HERE\nraise NotImplementedError(")
    assert "(define ppl)" in out and "(define m)" not in out  # a function's locals are not named
    assert "def mask(n):\n    '''docstring stays'''\n    # YOUR CODE HERE\n    raise Not" in out
    assert out.endswith("print('done')")
    for broken, why in [("### BEGIN SOLUTION\nx = 1", "without its"),
                        ("x = 1\n### END SOLUTION", "without a BEGIN"),
                        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "second")]:
        with pytest.raises(ValueError, match=why):
            classroom.stub(broken, "t")


def test_hidden_tests_leave_the_student_version():
    nb = new_notebook(cells=[
        _cell("**Exercise 1.1 (implement)** — set x", markdown=True),
        _cell("x = None\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "solution"),
        _cell("check_value(x, reference(), hint='h')\n### BEGIN HIDDEN TESTS\nassert x == 2\n"
              "### END HIDDEN TESTS\nprint('visible')", "check")])
    student, n = classroom.student_version(nb)
    assert n == 1
    assert student.cells[2].source == "check_value(x, reference(), hint='h')\nprint('visible')"
    assert "Exercise 1.1 (implement) — set x (define x)" in student.cells[1].source
    assert student.cells[1].source.startswith("x = None\n# YOUR CODE HERE\n")
    nb.cells[2].source = "### BEGIN HIDDEN TESTS\nassert x == 2"
    with pytest.raises(ValueError, match="check cell 2: .*without its"):
        classroom.student_version(nb)


def test_stamp_writes_nbgrader_metadata_from_the_tags_and_nothing_else(tmp_path, capsys):
    course = tmp_path / "notebooks"
    course.mkdir()
    path = tiny_course(course / "01_tiny.ipynb")
    nb = json.loads(path.read_text())
    nb["cells"][2]["metadata"]["nbgrader"] = {"grade": True}  # stale metadata on a plain cell
    nb["cells"].insert(6, {**nb["cells"][5], "id": "second-check"})  # a second check of exercise 1
    for cell in nb["cells"][7:]:
        del cell["id"]  # older notebooks (nbformat < 4.5) have no cell ids: ids by the exercises' order
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    before = json.loads(path.read_text())
    base = ["--notebooks-dir", str(course)]

    assert classroom.main(["stamp", "--check", *base]) == 1
    assert "01_tiny.ipynb: not stamped" in capsys.readouterr().out
    assert json.loads(path.read_text()) == before
    assert classroom.main(["stamp", *base]) == 0
    after = json.loads(path.read_text())
    grading = [(c["metadata"].get("tags"), c["metadata"].get("nbgrader")) for c in after["cells"]]
    stamped = [(t, g["grade_id"], g["solution"], g["grade"], g["locked"], g.get("points"))
               for t, g in grading if g]
    assert stamped == [(["solution"], "cell-4", True, False, False, None),
                       (["check"], "cell-5", False, True, True, 1),
                       (["check"], "second-check", False, True, True, 1),
                       (["solution"], "exercise2", True, False, False, None),
                       (["check"], "exercise2-check", False, True, True, 1)]
    assert all(g["schema_version"] == 3 for _, g in grading if g)
    for old, new in zip(before["cells"], after["cells"]):  # only the metadata changed
        assert {k: v for k, v in old.items() if k != "metadata"} == \
               {k: v for k, v in new.items() if k != "metadata"}
    assert path.read_text().endswith("}\n")
    assert classroom.main(["stamp", "--check", *base]) == 0  # idempotent
    assert classroom.main(["stamp", "99", *base]) == 2



def test_solutions_pasted_back_give_the_instructor_notebook_without_its_hidden_tests():
    """What the paste-back test of tests/test_notebooks.py executes, checked here for every notebook:
    the student version plus the solutions is the instructor version, minus hidden tests."""
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        pasted = classroom.with_solutions(classroom.student_version(nb)[0], nb)
        expected = [classroom.strip_hidden_tests(c.source) if "check" in c.metadata.get("tags", []) else c.source
                    for c in nb.cells]
        assert [c.source for c in pasted.cells] == expected, path.name
    nb = new_notebook(cells=[_cell("x = 1", "solution")])
    with pytest.raises(ValueError, match="does not come from"):
        classroom.with_solutions(classroom.student_version(nb)[0], new_notebook(cells=[]))


def test_exercises_are_listed_with_number_kind_and_task(tmp_path, capsys):
    nb = new_notebook(cells=[
        _cell("**Exercise 2.1 (predict, then measure)** — the GPT's perplexity. Before it trains: guess.",
              markdown=True),
        _cell("P = None\n### BEGIN SOLUTION\nP = 3\n### END SOLUTION", "solution"),
        _cell("### Exercise: a heading task\nwith more text below", markdown=True),
        _cell("y = 2", "solution")])
    assert classroom.exercises(nb) == [
        {"number": "2.1", "kind": "predict", "task": "the GPT's perplexity"},
        {"number": "2", "kind": "", "task": "a heading task"}]
    course = tmp_path / "notebooks"
    course.mkdir()
    write_notebook(nb, course / "02_x.ipynb")
    assert classroom.main(["exercises", "--notebooks-dir", str(course)]) == 0
    assert "| 02 | 2.1 | predict | the GPT's perplexity |" in capsys.readouterr().out
    guide = tmp_path / "teaching.md"
    guide.write_text("## 02\n<!-- exercises 02 -->\nold\n<!-- /exercises -->\n## 03\n<!-- exercises 03 -->\n"
                     "<!-- /exercises -->\n")
    assert classroom.main(["exercises", "--write", str(guide), "--notebooks-dir", str(course)]) == 0
    assert guide.read_text() == ("## 02\n<!-- exercises 02 -->\n- 2.1 *predict*: the GPT's perplexity\n"
                                 "- 2 *exercise*: a heading task\n<!-- /exercises -->\n"
                                 "## 03\n<!-- exercises 03 -->\n- none yet\n<!-- /exercises -->\n")
    assert classroom.main(["exercises", "--write", str(tmp_path / "nope.md"), "--notebooks-dir", str(course)]) == 2


def test_the_colab_cell_installs_the_workbook_on_colab_only(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import types

    source = classroom.colab_cell_source("https://example.org/workbook.git")
    exec(compile(source, "colab", "exec"), {})  # not on Colab: nothing happens
    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    monkeypatch.setattr(os, "chdir", lambda path: calls.append(["cd", path]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(source, "colab", "exec"), {})
    assert calls == [["git", "clone", "--depth", "1", "https://example.org/workbook.git", "/content/workbook"],
                     [sys.executable, "-m", "pip", "install", "--quiet", "-e", "/content/workbook"],
                     ["cd", "/content/workbook/notebooks"]]
    assert sys.path[0] == "/content/workbook"
    with pytest.raises(RuntimeError, match="set WORKBOOK_REPO"):
        exec(compile(classroom.colab_cell_source(""), "colab", "exec"), {})
    with pytest.raises(classroom.UsageError, match="without quotes"):
        classroom.colab_cell_source('x"; import os')


def test_add_colab_cell_puts_it_after_the_title_once_and_keeps_its_url(tmp_path, capsys):
    course = tmp_path / "notebooks"
    course.mkdir()
    path = tiny_course(course / "01_tiny.ipynb")
    base = ["--notebooks-dir", str(course)]
    assert classroom.main(["colab", "--repo", "https://example.org/w.git", *base]) == 0
    assert classroom.main(["colab", *base]) == 0  # again, without --repo: unchanged
    assert "in 0 of 1 notebooks" in capsys.readouterr().out
    nb = nbformat.read(path, as_version=4)
    assert [c.id for c in nb.cells[:2]] == ["cell-0", classroom.COLAB_CELL_ID]
    assert 'WORKBOOK_REPO = "https://example.org/w.git"' in nb.cells[1].source
    assert sum(c.id == classroom.COLAB_CELL_ID for c in nb.cells) == 1
    assert classroom.main(["colab", "--repo", 'bad"url', *base]) == 2


def test_binder_installs_the_dependencies_first_and_the_workbook_after_the_copy():
    """repo2docker installs binder/requirements.txt before the repository is copied in: no `-e .`
    there (it would fail); postBuild, run in the copied repository, installs the workbook."""
    import os
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.strip() for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith(("#", "--"))]
    assert not any(line.startswith("-e") or line in (".", "./") for line in lines)
    assert sorted(requirements) == sorted(project["dependencies"])  # the same names and lower bounds
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK) and post_build.read_text().startswith("#!/bin/bash")
    assert re.search(r"^pip install .*-e \.$", post_build.read_text(), re.M)
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == "python-" + project["requires-python"].removeprefix(">=")


def test_the_teachers_guide_has_a_section_and_an_exercise_list_per_notebook():
    guide = (ROOT / "docs" / "teaching.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        number = path.stem[:2]
        assert f"\n### {number} · " in guide, f"docs/teaching.md has no section for {path.name}"
        assert f"<!-- exercises {number} -->" in guide, f"docs/teaching.md lists no exercises of {path.name}"


def test_student_versions_need_no_nbgrader(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['nbgrader'] = None  # importing it now fails\n"
            "from helpers.classroom import main\n"
            f"sys.exit(main(['student', {str(tmp_path / 'handout')!r}, '02']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "handout" / "02_pretrain_transformer.ipynb").exists()


def test_every_workbook_exercise_carries_consistent_nbgrader_metadata():
    """Run ``python -m helpers.classroom stamp`` after adding or moving an exercise."""
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert not classroom.stamp_notebook(path, write=False), \
            f"{path.name}: nbgrader metadata out of date; run python -m helpers.classroom stamp"
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:  # nbgrader finds "### BEGIN SOLUTION", not the older "# BEGIN SOLUTION"
            lines = [line.strip() for line in cell.source.splitlines()]
            old_spelling = {"# BEGIN SOLUTION", "# END SOLUTION"} & set(lines)
            assert not old_spelling, f"{path.name}: write {sorted(old_spelling)} as nbgrader's '### ...'"
            if "### BEGIN SOLUTION" in lines:
                assert "solution" in cell.metadata.get("tags", []), f"{path.name}: markers in a cell not tagged solution"


def test_every_notebook_opens_on_colab_with_the_same_first_cell():
    """Run ``python -m helpers.classroom colab`` after adding a notebook (``--repo URL`` to set the URL)."""
    import re

    sources = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path.name
        first = nb.cells[1]
        assert first.id == classroom.COLAB_CELL_ID, f"{path.name}: no Colab cell after the title"
        repo = re.search(r'^WORKBOOK_REPO = "([^"]*)"', first.source, re.M).group(1)
        assert first.source == classroom.colab_cell_source(repo), f"{path.name}: Colab cell out of date"
        sources[path.name] = first.source
    assert len(set(sources.values())) == 1, "the notebooks' Colab cells differ"

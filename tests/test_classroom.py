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
    assert "Exercise: Task: compute x (define x)." in student.cells[1].source
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

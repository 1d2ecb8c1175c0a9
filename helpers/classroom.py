"""Exercises in the notebooks, their checks, and the student versions a teacher hands out.

An exercise in a notebook is three cells (the workbook's convention, and nbgrader's):

1. a markdown cell with the task: ``**Exercise 2.1 (implement)** — write the causal mask ...``
   (the kinds: *implement*, *predict* then measure, *design*);
2. a code cell tagged ``solution``; the answer sits between ``### BEGIN SOLUTION`` and
   ``### END SOLUTION`` and the lines around it are scaffolding that stays for the student. The
   scaffolding gives every name the check uses a value first -- ``ppl = None`` before the markers,
   or the ``def`` line of a function whose body is the answer -- so that an untouched student
   notebook fails in the check with "not done yet" (:class:`ExerciseNotDone`, a
   ``NotImplementedError``) rather than a ``NameError``;
3. a code cell tagged ``check`` that compares the answer with a reference it computes itself from
   ``helpers`` and says what to look at when it is wrong, never what the answer is::

       check_function(causal_mask, text.causal_mask, [1, 2, 5], hint="position i sees 0..i")
       check_value(ppl, text.perplexity(gpt.model, corpus.val), hint="exp of the mean loss")

   Lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` in a check cell stay with
   the teacher: they are removed from the student version.

A *predict, then measure* exercise records ``PREDICTION = ...`` in its solution cell before the
cell that measures; a cell after the measurement calls :func:`show_prediction`.

The notebooks in ``notebooks/`` *are* the instructor versions: they run top to bottom and every
check passes (the tests execute them). ``python -m helpers.classroom student OUT/`` writes the
student versions (nbgrader is not needed for that)::

    python -m helpers.classroom student handout/                 # every notebooks/NN_*.ipynb
    python -m helpers.classroom student handout/ 03 05_forgetting

In a student version each solution region becomes ``# YOUR CODE HERE`` and
``raise NotImplementedError("Exercise ...: <the task>")``, so running it stops at the first exercise
with the task in the message; hidden tests are removed; every output is cleared. The stub's message
is the cell's ``exercise`` metadata when set, else the first line of the markdown above. Student
versions have their solution cells tagged ``exercise`` instead.

For nbgrader, ``python -m helpers.classroom stamp`` writes nbgrader's cell metadata from the tags
(solution cells: ``solution``; check cells: ``grade`` with points, ``locked``), so the notebooks are
also nbgrader source notebooks (``nbgrader generate_assignment`` / ``autograde``).
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .plan import UsageError  # the runner's: bad command-line input, one message, exit status 2

SOLUTION, CHECK, EXERCISE = "solution", "check", "exercise"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"  # nbgrader's markers
BEGIN_MARKERS = (BEGIN, "# BEGIN SOLUTION")  # the workbook's older spelling is still accepted
END_MARKERS = (END, "# END SOLUTION")
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = "# YOUR CODE HERE"


class CheckFailed(AssertionError):
    """A check cell found the learner's answer wrong; the message says what to look at."""


def check(condition: Any, hint: str, *, success: str | None = None) -> None:
    """Print "Correct" when ``condition`` holds, else raise :class:`CheckFailed` with ``hint``.

    ``hint`` is written for the learner: what is expected and how to get there, not just "wrong".
    """
    if not condition:
        raise CheckFailed(f"Not yet: {hint}")
    print(f"Correct{': ' + success if success else '.'}")


class ExerciseNotDone(NotImplementedError):
    """A check met an answer that is still the stub (``None`` or ``...``): the exercise is not done.

    A subclass of ``NotImplementedError``, the error the stubbed solution cell itself raises, so an
    untouched student notebook fails only with "not implemented" errors (what nbgrader's autograder
    expects of a blank submission), never with a confusing ``TypeError`` further down.
    """


#: Environment variable naming a file: when set, every check appends the reference values it
#: compared with (scalars only) as one JSON line, so a test can search the student versions for
#: them -- a check that printed its answer, or a task that quoted it, would be found.
REFERENCE_LOG = "WORKBOOK_CHECK_LOG"


def _log_reference(check: str, reference: Any) -> None:
    import json
    import os

    path = os.environ.get(REFERENCE_LOG)
    if not path:
        return
    values: list[float] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif _is_number(value):
            values.append(float(value))
        else:
            array = _as_array(value)
            if array is not None and array.size <= 16 and array.dtype.kind in "iuf":
                values.extend(float(x) for x in array.reshape(-1))

    collect(reference)
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps({"check": check, "values": values}) + "\n")


def _not_done(value: Any) -> bool:
    return value is None or value is Ellipsis


def _fail(hint: str, detail: str = "") -> CheckFailed:
    return CheckFailed(f"Not yet: {hint}" + (f" ({detail})" if detail else ""))


def _as_array(value: Any) -> Any:
    """A NumPy view of a number, array, tensor or nested list (``None`` if it is none of these)."""
    import numpy as np

    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    if hasattr(value, "to_numpy"):  # pandas
        return value.to_numpy()
    try:
        array = np.asarray(value)
    except Exception:
        return None
    return array if array.dtype != object else None


def _difference(answer: Any, reference: Any, rtol: float, atol: float, where: str = "") -> str | None:
    """Why ``answer`` differs from ``reference`` -- in words that never state the reference's values
    (its type, shape and dtype kind may be named) -- or ``None`` when they agree within tolerance."""
    import numpy as np

    at = f" in {where}" if where else ""
    if isinstance(reference, dict):
        if not isinstance(answer, dict):
            return f"expected a dict{at}, got {type(answer).__name__}"
        if set(answer) != set(reference):
            missing, extra = set(reference) - set(answer), set(answer) - set(reference)
            return f"the keys differ{at}: " + "; ".join(
                part for part in (f"missing {sorted(map(str, missing))}" if missing else "",
                                  f"unexpected {sorted(map(str, extra))}" if extra else "") if part)
        for key in reference:
            why = _difference(answer[key], reference[key], rtol, atol, f"{where}[{key!r}]")
            if why:
                return why
        return None
    if isinstance(reference, (tuple, list)) and not all(_is_number(x) for x in reference):
        if not isinstance(answer, (tuple, list)):  # several results: compare them one by one
            return f"expected a {type(reference).__name__} of {len(reference)}{at}, got {type(answer).__name__}"
        if len(answer) != len(reference):
            return f"expected {len(reference)} results{at}, got {len(answer)}"
        for i, (a, r) in enumerate(zip(answer, reference)):
            why = _difference(a, r, rtol, atol, f"{where}[{i}]" if where else f"result {i}")
            if why:
                return why
        return None
    if isinstance(reference, str) or isinstance(answer, str):
        return None if answer == reference else f"the text{at} differs from the expected one"
    ref, ans = _as_array(reference), _as_array(answer)
    if ref is None:  # something else: equality is all we can ask
        return None if answer == reference else f"the value{at} is not the expected one"
    if ans is None:
        return f"expected a number or an array{at}, got {type(answer).__name__}"
    if ans.shape != ref.shape:
        return f"your result{at} has shape {tuple(ans.shape)}, expected shape {tuple(ref.shape)}"
    if ref.dtype == bool or ans.dtype == bool:
        if ref.dtype != ans.dtype:
            return f"your result{at} holds {ans.dtype} values, expected booleans" if ref.dtype == bool \
                else f"your result{at} holds booleans, expected numbers"
        wrong = int(np.sum(ans != ref))
    else:
        if not np.issubdtype(ans.dtype, np.number):
            return f"your result{at} holds {ans.dtype} values, expected numbers"
        a, r = ans.astype(np.float64), ref.astype(np.float64)
        close = np.isclose(a, r, rtol=rtol, atol=atol, equal_nan=True)
        wrong = int(np.sum(~close))
    if not wrong:
        return None
    if ref.ndim == 0:
        return f"the value{at} is not the expected one"
    return f"{wrong} of {ref.size} entries{at} differ from the expected ones"


def check_value(value: Any, reference: Any, *, hint: str, rtol: float = 1e-6, atol: float = 1e-9,
                success: str | None = None) -> None:
    """Check a learner's ``value`` against ``reference``, which the check cell computes with the
    workbook's own helpers (``check_value(ppl, text.perplexity(...), hint=...)``).

    Numbers, arrays, tensors, pandas objects, strings and dicts of these compare, numbers within
    ``rtol``/``atol``. On success prints "Correct" and ``success``; on failure raises
    :class:`CheckFailed` with ``hint`` and what differs (a shape, a count of wrong entries), never
    the reference itself -- the learner has to find it. A ``value`` still ``None`` or ``...`` (the
    exercise's scaffolding) raises :class:`ExerciseNotDone`.
    """
    if _not_done(value):
        raise ExerciseNotDone(f"Exercise not done yet: the answer is still {value!r}; "
                              f"write it in the exercise cell above and run that cell first")
    _log_reference("check_value", reference)
    why = _difference(value, reference, rtol, atol)
    if why:
        raise _fail(hint, why)
    print(f"Correct{': ' + success if success else '.'}")


def _call(fn: Any, case: Any) -> Any:
    if isinstance(case, dict):
        return fn(**copy.deepcopy(case))
    args = case if isinstance(case, tuple) else (case,)
    return fn(*copy.deepcopy(args))


def check_function(student_fn: Any, reference_fn: Any, cases: Any, *, hint: str,
                   rtol: float = 1e-5, atol: float = 1e-6, n_cases: int = 5, seed: int = 0,
                   success: str | None = None) -> None:
    """Check a learner's function against the workbook's own implementation, case by case.

    ``cases`` is a list of inputs -- each a tuple of positional arguments, a dict of keyword
    arguments, or a single argument -- or a function ``make_case(rng)`` that draws one case from a
    ``numpy.random.Generator``; ``n_cases`` cases are then drawn from ``seed``. Both functions get
    their own deep copy of each case (an in-place edit cannot leak from one to the other) and the
    results compare as in :func:`check_value`. A failure names the case and what differs, never the
    reference's output. The student function raising ``NotImplementedError`` (the stub) propagates
    as it is; any other error becomes :class:`CheckFailed` with the hint.
    """
    import numpy as np

    if not callable(student_fn):
        if _not_done(student_fn):
            raise ExerciseNotDone("Exercise not done yet: define the function in the exercise cell")
        raise _fail(hint, f"expected a function, got {type(student_fn).__name__}")
    if callable(cases):
        rng = np.random.default_rng(seed)
        cases = [cases(rng) for _ in range(n_cases)]
    cases = list(cases)
    if not cases:
        raise ValueError("check_function needs at least one case")
    for number, case in enumerate(cases, 1):
        expected = _call(reference_fn, case)
        _log_reference("check_function", expected)
        try:
            answer = _call(student_fn, case)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _fail(hint, f"on case {number} of {len(cases)} your function raised "
                              f"{type(err).__name__}: {err}") from err
        why = _difference(answer, expected, rtol, atol)
        if why:
            raise _fail(hint, f"case {number} of {len(cases)}: {why}")
    print(f"Correct: agrees with the workbook's implementation on {len(cases)} "
          f"case{'s' if len(cases) != 1 else ''}{'; ' + success if success else '.'}")


def show_prediction(name: str, predicted: Any, measured: Any, *, unit: str | None = None,
                    choices: Sequence[Any] | None = None) -> dict:
    """Show what the learner predicted next to what the notebook then measured.

    The prediction is recorded (``PREDICTION = ...`` in an exercise cell) *before* the cell that
    measures; this cell comes after it. Numbers are shown with their difference and ratio; a choice
    (a string or a bool) with whether it matched. A prediction still ``None`` or ``...`` raises
    :class:`ExerciseNotDone`: make a prediction first, then measure. Returns the comparison as a
    dict (``name``, ``predicted``, ``measured``, and ``difference``/``ratio`` or ``matched``).
    With ``choices``, the prediction must be one of them (else :class:`CheckFailed` lists them).
    """
    if _not_done(predicted):
        raise ExerciseNotDone(f"Exercise not done yet: record your prediction for {name!r} in the "
                              f"exercise cell before the measurement (it is still {predicted!r}), "
                              f"run that cell, then the measurement and this cell")
    if choices is not None and predicted not in list(choices):
        raise _fail(f"the prediction for {name!r} is one of {list(choices)!r}",
                    f"you wrote {predicted!r}")
    suffix = f" {unit}" if unit else ""
    row: dict[str, Any] = {"name": name, "predicted": predicted, "measured": measured}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) or _is_number(v)
                  for v in (predicted, measured))
    if numeric:
        p, m = float(predicted), float(measured)
        row["difference"] = m - p
        row["ratio"] = m / p if p else float("nan")
        ratio = f", measured/predicted = {row['ratio']:.2f}" if p else ""
        print(f"{name}: you predicted {p:.4g}{suffix}, measured {m:.4g}{suffix} "
              f"(difference {m - p:+.4g}{suffix}{ratio})")
    else:
        row["matched"] = predicted == measured
        print(f"{name}: you predicted {predicted!r}, measured {measured!r} -- "
              f"{'as you predicted' if row['matched'] else 'not what you predicted'}")
    return row


def _is_number(value: Any) -> bool:
    import numbers

    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    array = _as_array(value)
    return array is not None and array.ndim == 0 and array.dtype != bool and array.dtype.kind in "iuf"


# --------------------------------------------------------------------------------------------
# student versions
# --------------------------------------------------------------------------------------------

def show_source(obj: Any) -> Any:
    """Show the code of a helper a notebook teaches (a function, class or method), highlighted.

    The notebooks call the package for the work; this shows the few lines being taught, so a
    learner reads the real implementation rather than a copy that could drift from it. Returns an
    IPython ``Code`` object (rendered in Jupyter; plain text under papermill).
    """
    import inspect
    import textwrap

    from IPython.display import Code

    return Code(textwrap.dedent(inspect.getsource(obj)), language="python")


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _task_text(cells: Sequence[Any], index: int) -> str:
    """The exercise's task: the solution cell's ``exercise`` metadata, else the first paragraph of
    the nearest markdown cell above it (only its first line when that is a heading), without
    markdown emphasis, at most 160 characters."""
    explicit = cells[index].get("metadata", {}).get(EXERCISE)
    if explicit:
        return " ".join(str(explicit).split())
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            paragraph: list[str] = []
            for line in cell.source.splitlines():
                if not line.strip():
                    if paragraph:
                        break
                    continue
                paragraph.append(line)
                if line.lstrip().startswith("#"):
                    break
            text = " ".join(" ".join(paragraph).split())
            text = re.sub(r"^[#>*\-\s]+", "", re.sub(r"\*\*|__|`", "", text)).strip()
            if text:
                return text if len(text) <= 160 else text[:157] + "..."
            break
    return "see the task above"


def _defined_names(source: str) -> list[str]:
    """Top-level names a solution assigns or defines (what the check cell will look for)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in tree.body:
        targets: list[Any] = []
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name) and sub.id not in names:
                    names.append(sub.id)
    return names


def stub(source: str, task: str) -> str:
    """The student's version of a solution cell's ``source`` for the exercise ``task``.

    Each region between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers; the
    older ``# BEGIN SOLUTION`` works too) becomes ``# YOUR CODE HERE`` and a ``raise
    NotImplementedError`` naming the task, at the marker's indentation; the lines outside the
    markers are scaffolding and stay. A cell without markers is replaced whole.
    """
    lines = source.splitlines()
    out: list[str] = []
    region: list[str] | None = None
    indent = ""
    found = False
    for number, line in enumerate(lines, 1):
        marker = line.strip()
        if region is None:
            if marker in BEGIN_MARKERS:
                region, indent, found = [], line[:len(line) - len(line.lstrip())], True
            elif marker in END_MARKERS:
                raise ValueError(f"line {number}: {marker!r} without a BEGIN SOLUTION before it")
            else:
                out.append(line)
        elif marker in END_MARKERS:
            # names assigned inside an indented region are a function's locals, not what to define
            out.extend(_stub_lines("\n".join(region) if not indent else "", task, indent))
            region = None
        elif marker in BEGIN_MARKERS:
            raise ValueError(f"line {number}: a second {marker!r} before the END SOLUTION")
        else:
            region.append(_dedent_by(line, indent))
    if region is not None:
        raise ValueError(f"{BEGIN!r} without its {END!r}")
    if not found:
        return "\n".join(_stub_lines(source, task, ""))
    return "\n".join(out)


def _dedent_by(line: str, indent: str) -> str:
    return line[len(indent):] if line.startswith(indent) else line.lstrip()


def strip_hidden_tests(source: str) -> str:
    """A check cell's ``source`` without its ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``
    regions (markers included): the tests that stay with the teacher, as nbgrader does."""
    lines, out, hidden = source.splitlines(), [], False
    for number, line in enumerate(lines, 1):
        marker = line.strip()
        if marker == BEGIN_HIDDEN:
            if hidden:
                raise ValueError(f"line {number}: a second {BEGIN_HIDDEN!r} before {END_HIDDEN!r}")
            hidden = True
        elif marker == END_HIDDEN:
            if not hidden:
                raise ValueError(f"line {number}: {END_HIDDEN!r} without {BEGIN_HIDDEN!r} before it")
            hidden = False
        elif not hidden:
            out.append(line)
    if hidden:
        raise ValueError(f"{BEGIN_HIDDEN!r} without its {END_HIDDEN!r}")
    return "\n".join(out)


def _first_sentence(text: str) -> str:
    """``text`` up to its first full stop, question or exclamation mark (without a final full stop)."""
    return re.split(r"(?<=[.?!])\s", text.strip(), maxsplit=1)[0].removesuffix("...").rstrip(".")


def _stub_lines(solution: str, task: str, indent: str) -> list[str]:
    names = _defined_names(solution)
    task = _first_sentence(task)
    message = task if task.lower().startswith("exercise") else f"Exercise: {task}"
    if names:
        message += f" (define {', '.join(names)})"
    message += ". Replace this line with your code, then run the check cell below."
    return [f"{indent}{STUB}", f"{indent}raise NotImplementedError({message!r})"]


def student_version(nb: Any) -> tuple[Any, int]:
    """A student copy of notebook ``nb``: solutions stubbed, checks kept, outputs cleared.

    Returns the copy and its number of exercises.
    """
    student = copy.deepcopy(nb)
    exercises = 0
    for index, cell in enumerate(student.cells):
        tags = _tags(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
            if SOLUTION in tags:
                try:
                    cell.source = stub(cell.source, _task_text(student.cells, index))
                except ValueError as err:
                    raise ValueError(f"solution cell {index}: {err}") from None
                cell.metadata["tags"] = [EXERCISE if t == SOLUTION else t for t in tags]
                exercises += 1
            elif CHECK in tags:
                try:
                    cell.source = strip_hidden_tests(cell.source)
                except ValueError as err:
                    raise ValueError(f"check cell {index}: {err}") from None
        elif SOLUTION in tags:
            raise ValueError(f"cell {index} is a {cell.cell_type} cell tagged {SOLUTION!r}; "
                             f"only code cells can be solutions")
    student.metadata.pop("widgets", None)  # saved widget state is output too
    student.metadata.pop("papermill", None)
    return student, exercises


KINDS = ("implement", "predict", "design")
_EXERCISE_TITLE = re.compile(r"Exercise\s*([\d.]+)?\s*(?:\(([^)]*)\))?\s*[:\u2014\-]*\s*(.*)", re.I)


def exercises(nb: Any) -> list[dict[str, str]]:
    """The exercises of notebook ``nb``, in order: ``number``, ``kind`` (implement / predict /
    design, from "**Exercise 2.1 (predict, then measure)** — ..."; empty when the title names
    none) and ``task`` (the rest of the title line). What the teacher's guide lists."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or SOLUTION not in _tags(cell):
            continue
        title = _task_text(nb.cells, index)
        match = _EXERCISE_TITLE.search(title)
        number, kind, task = match.groups() if match else (None, None, title)
        kind_word = next((k for k in KINDS if kind and k in kind.lower()), "")
        found.append({"number": (number or str(len(found) + 1)).rstrip("."), "kind": kind_word,
                      "task": _first_sentence(task or title)})
    return found


def exercise_table(paths: Sequence[Path]) -> str:
    """A markdown table of every exercise of the notebooks at ``paths`` (notebook, exercise, kind, task)."""
    import nbformat

    rows = ["| notebook | exercise | kind | task |", "|---|---|---|---|"]
    for path in paths:
        for ex in exercises(nbformat.read(path, as_version=4)):
            task = ex["task"].replace("|", "\\|")
            rows.append(f"| {path.stem[:2]} | {ex['number']} | {ex['kind'] or '?'} | {task} |")
    return "\n".join(rows)


_GUIDE_REGION = re.compile(r"(<!-- exercises (\d\d) -->\n)(.*?)(<!-- /exercises -->)", re.S)


def fill_exercise_lists(text: str, paths: Sequence[Path]) -> str:
    """``text`` (the teacher's guide) with every ``<!-- exercises NN -->`` ... ``<!-- /exercises -->``
    region replaced by the list of notebook NN's exercises, one line each (number, kind, task)."""
    import nbformat

    by_number = {path.stem[:2]: path for path in paths}

    def listing(match: re.Match) -> str:
        path = by_number.get(match.group(2))
        found = exercises(nbformat.read(path, as_version=4)) if path else []
        lines = [f"- {ex['number']} *{ex['kind'] or 'exercise'}*: {ex['task']}" for ex in found] or ["- none yet"]
        return match.group(1) + "\n".join(lines) + "\n" + match.group(4)

    return _GUIDE_REGION.sub(listing, text)


def with_solutions(student: Any, instructor: Any) -> Any:
    """The student version ``student`` with the instructor's solutions pasted back into its exercise
    cells: what a learner who solved every exercise hands in (the tests run it: every check passes).
    """
    pasted = copy.deepcopy(student)
    if len(pasted.cells) != len(instructor.cells):
        raise ValueError("the student version does not come from this instructor notebook "
                         f"({len(pasted.cells)} cells against {len(instructor.cells)})")
    for index, (cell, original) in enumerate(zip(pasted.cells, instructor.cells)):
        if EXERCISE in _tags(cell):
            if SOLUTION not in _tags(original):
                raise ValueError(f"cell {index}: an exercise in the student version, no solution here")
            cell.source = original.source
    return pasted


# --------------------------------------------------------------------------------------------
# nbgrader metadata
# --------------------------------------------------------------------------------------------

NBGRADER_SCHEMA = 3


def nbgrader_metadata(cells: Sequence[Any]) -> list[dict | None]:
    """The nbgrader cell metadata each cell of a notebook should carry, from its tags.

    A ``solution`` cell is an autograded answer (``solution: true``, unlocked); a ``check`` cell is
    an autograder test (``grade: true``, ``locked``, 1 point unless the cell already says more);
    other cells get ``None`` (no nbgrader metadata). The ``grade_id`` nbgrader matches submissions
    by is the cell's id (stable when cells move; nbformat keeps ids unique and in nbgrader's
    alphabet), or for a cell without one ``exercise3`` / ``exercise3-check`` (``-check2``, ...)
    after the exercises' order.
    """
    wanted: list[dict | None] = []
    exercise, checks = 0, 0
    for cell in cells:
        tags = _tags(cell)
        old = cell.get("metadata", {}).get("nbgrader", {})
        cell_id = cell.get("id")
        if SOLUTION in tags and cell.get("cell_type") == "code":
            exercise, checks = exercise + 1, 0
            wanted.append({"grade": False, "grade_id": cell_id or f"exercise{exercise}", "locked": False,
                           "schema_version": NBGRADER_SCHEMA, "solution": True, "task": False})
        elif CHECK in tags and cell.get("cell_type") == "code":
            checks += 1
            points = old.get("points") if isinstance(old.get("points"), (int, float)) else 1
            suffix = "-check" if checks == 1 else f"-check{checks}"
            wanted.append({"grade": True, "grade_id": cell_id or f"exercise{exercise}{suffix}", "locked": True,
                           "points": points if points > 0 else 1, "schema_version": NBGRADER_SCHEMA,
                           "solution": False, "task": False})
        else:
            wanted.append(None)
    return wanted


def stamp_notebook(path: Path, *, write: bool = True) -> bool:
    """Give ``path``'s solution and check cells nbgrader's metadata (and take it off other cells).

    Reads and writes the notebook as plain JSON (the repository's layout: one-space indent, a
    trailing newline), so nothing but the metadata changes. Returns whether anything changed
    (with ``write=False``: whether something *would*).
    """
    import json

    nb = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for cell, wanted in zip(nb["cells"], nbgrader_metadata(nb["cells"])):
        meta = cell.setdefault("metadata", {})
        if wanted is None:
            if "nbgrader" in meta:
                del meta["nbgrader"]
                changed = True
        elif meta.get("nbgrader") != wanted:
            meta["nbgrader"] = wanted
            changed = True
    if changed and write:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


# --------------------------------------------------------------------------------------------
# Google Colab
# --------------------------------------------------------------------------------------------

COLAB_CELL_ID = "colab-setup"
COLAB_FOLDER = "/content/workbook"
_COLAB_REPO = re.compile(r'^WORKBOOK_REPO = "([^"]*)"', re.M)


def colab_cell_source(repo: str = "") -> str:
    """The first code cell of every notebook: on Google Colab it clones the workbook from ``repo``
    and installs it (Colab has a notebook, not the repository); anywhere else it does nothing. Its
    names (``WORKBOOK_REPO`` and one function) clash with no notebook's. It runs before the
    parameters cell, so a batch run or the tests pass through it."""
    if '"' in repo or "\\" in repo or "\n" in repo:
        raise UsageError(f"--repo {repo!r}: expected a git URL without quotes or backslashes")
    return f"""# On Google Colab: fetch and install the workbook first (a minute or two). Anywhere else: nothing happens.
WORKBOOK_REPO = "{repo}"  # its git URL: `python -m helpers.classroom colab --repo URL` sets it in every notebook


def _on_colab_install_the_workbook(repo):
    import os
    import subprocess
    import sys

    if "google.colab" not in sys.modules:
        return
    if not repo:
        raise RuntimeError("On Colab this notebook needs the workbook's code: set WORKBOOK_REPO above to "
                           "the workbook's git URL and run this cell again")
    if not os.path.isdir("{COLAB_FOLDER}"):
        subprocess.run(["git", "clone", "--depth", "1", repo, "{COLAB_FOLDER}"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", "{COLAB_FOLDER}"], check=True)
    sys.path.insert(0, "{COLAB_FOLDER}")  # importable now, without restarting the runtime
    os.chdir("{COLAB_FOLDER}/notebooks")


_on_colab_install_the_workbook(WORKBOOK_REPO)"""


def add_colab_cell(path: Path, repo: str | None = None) -> bool:
    """Put the Colab set-up cell (:func:`colab_cell_source`) right after the title of notebook
    ``path``, or bring the one there up to date; ``repo=None`` keeps the URL it already has.
    Writes plain JSON as :func:`stamp_notebook` does; returns whether the notebook changed."""
    import json

    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    existing = [i for i, c in enumerate(cells) if c.get("id") == COLAB_CELL_ID]
    if repo is None:
        found = _COLAB_REPO.search("".join(cells[existing[0]]["source"])) if existing else None
        repo = found.group(1) if found else ""
    text = colab_cell_source(repo)
    cell = {"cell_type": "code", "execution_count": None, "id": COLAB_CELL_ID, "metadata": {}, "outputs": [],
            "source": text.splitlines(keepends=True)}
    for i in reversed(existing):
        del cells[i]
    at = 1 if cells and cells[0]["cell_type"] == "markdown" else 0  # after the title
    cells.insert(at, cell)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new == path.read_text(encoding="utf-8"):
        return False
    path.write_text(new, encoding="utf-8")
    return True


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def _notebooks(names: Sequence[str], folder: Path) -> list[Path]:
    from .plan import available_notebooks, find_notebook

    if not names:
        found = available_notebooks(folder)
        if not found:
            raise UsageError(f"no notebooks NN_*.ipynb found in {folder}")
        return [p.resolve() for p in found]
    return list(dict.fromkeys(find_notebook(name, folder) for name in names))


def write_student_versions(out: Path, notebooks: Sequence[Path]) -> list[tuple[Path, int]]:
    """Write the student version of each notebook into ``out``; return (path, exercises) pairs."""
    import nbformat

    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out}: exists and is not a folder")
    sources = {p.resolve().parent for p in notebooks}
    if out.resolve() in sources:
        raise UsageError(f"OUT {out}: that is where the instructor notebooks are; writing there "
                         f"would replace the solutions. Choose another folder, e.g. handout/")
    prepared = []
    for path in notebooks:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # not JSON, not a notebook
            raise UsageError(f"cannot read notebook {path}: {type(err).__name__}: {err}") from None
        try:
            prepared.append((path, *student_version(nb)))
        except ValueError as err:
            raise UsageError(f"{path.name}: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, student, exercises in prepared:
        target = out / path.name
        nbformat.write(student, target)
        written.append((target, exercises))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.classroom",
        description="Classroom hand-outs. The notebooks themselves are the instructor versions.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    student = commands.add_parser(
        "student", help="write student versions: solutions stubbed, checks kept, outputs cleared",
        description="Write student versions of notebooks into OUT: each cell tagged 'solution' "
                    "becomes a stub that raises NotImplementedError with the task, check cells "
                    "stay, every output is cleared.")
    student.add_argument("out", type=Path, metavar="OUT", help="folder for the student notebooks")
    student.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                         help="by path, file name, stem or number (default: every NN_*.ipynb)")
    student.add_argument("--notebooks-dir", type=Path, default=None,
                         help="where NN_*.ipynb live (default: notebooks/ in the repository)")
    listing = commands.add_parser(
        "exercises", help="list every exercise (notebook, number, kind, task) as a markdown table",
        description="Print a markdown table of the exercises: the list in docs/teaching.md.")
    listing.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                         help="by path, file name, stem or number (default: every NN_*.ipynb)")
    listing.add_argument("--notebooks-dir", type=Path, default=None,
                         help="where NN_*.ipynb live (default: notebooks/ in the repository)")
    listing.add_argument("--write", type=Path, default=None, metavar="GUIDE",
                         help="instead, refill the '<!-- exercises NN -->' lists of GUIDE (docs/teaching.md)")
    colab = commands.add_parser(
        "colab", help="add or update the first cell that installs the workbook on Google Colab",
        description="Put the Colab set-up cell after each notebook's title: on Colab it clones the "
                    "workbook from --repo and installs it; elsewhere it does nothing.")
    colab.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                       help="by path, file name, stem or number (default: every NN_*.ipynb)")
    colab.add_argument("--repo", default=None,
                       help="the workbook's git URL (default: keep the one the cells hold)")
    colab.add_argument("--notebooks-dir", type=Path, default=None,
                       help="where NN_*.ipynb live (default: notebooks/ in the repository)")
    stamp_ = commands.add_parser(
        "stamp", help="write nbgrader's cell metadata from the solution/check tags",
        description="Give every solution cell nbgrader's 'autograded answer' metadata and every "
                    "check cell its 'autograder tests' metadata (locked, points), so the notebooks "
                    "are nbgrader source notebooks. Only the cells' metadata changes.")
    stamp_.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="by path, file name, stem or number (default: every NN_*.ipynb)")
    stamp_.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a notebook is not stamped")
    stamp_.add_argument("--notebooks-dir", type=Path, default=None,
                        help="where NN_*.ipynb live (default: notebooks/ in the repository)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 0 on success, 2 for bad input (nothing written then)."""
    from .checkpoints import repo_root

    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    folder = (args.notebooks_dir or repo_root() / "notebooks").resolve()
    if args.command == "colab":
        try:
            paths = _notebooks(args.notebooks, folder)
            changed = [path for path in paths if add_colab_cell(path, args.repo)]
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"Colab set-up cell added or updated in {len(changed)} of {len(paths)} notebooks")
        return 0
    if args.command == "exercises":
        try:
            paths = _notebooks(args.notebooks, folder)
            if args.write:
                if not args.write.is_file():
                    raise UsageError(f"--write {args.write}: no such file")
                args.write.write_text(fill_exercise_lists(args.write.read_text(), paths))
                print(f"{args.write}: exercise lists refilled")
            else:
                print(exercise_table(paths))
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "stamp":
        try:
            paths = _notebooks(args.notebooks, folder)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        stale = [path for path in paths if stamp_notebook(path, write=not args.check)]
        for path in stale:
            print(f"{path.name}: {'not stamped' if args.check else 'stamped'}")
        print(f"{len(stale)} of {len(paths)} notebooks {'need' if args.check else 'got'} "
              f"nbgrader metadata")
        return 1 if args.check and stale else 0
    try:
        written = write_student_versions(args.out, _notebooks(args.notebooks, folder))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = sum(n for _, n in written)
    for path, exercises in written:
        print(f"{path}: {exercises} exercise{'s' if exercises != 1 else ''}")
    print(f"{len(written)} student notebook{'s' if len(written) != 1 else ''} with {total} "
          f"exercise{'s' if total != 1 else ''} in {args.out}/ (instructor versions: the originals)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

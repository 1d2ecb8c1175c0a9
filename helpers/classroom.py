"""Exercises in the notebooks, and the student versions a teacher hands out.

An exercise in a notebook is three cells:

1. a markdown cell with the task ("Compute the accuracy of ...");
2. a code cell tagged ``solution`` with the instructor's answer;
3. a code cell tagged ``check`` that tests the answer and says what is wrong when it is::

       check(0.0 <= accuracy <= 1.0, "accuracy is a fraction: correct predictions / all predictions")

The notebooks in ``notebooks/`` *are* the instructor versions: they run top to bottom and every
check passes (the tests execute them). ``python -m helpers.classroom student OUT/`` writes the
student versions::

    python -m helpers.classroom student handout/                 # every notebooks/NN_*.ipynb
    python -m helpers.classroom student handout/ 03 05_forgetting

In a student version each ``solution`` cell becomes a stub (``# YOUR CODE HERE`` and
``raise NotImplementedError("Exercise: <the task>")``), so running it stops at the first exercise
with the task in the message; check cells stay; every output is cleared. A solution cell may keep
scaffolding for the student: only the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are
then replaced. The stub's message is the cell's ``exercise`` metadata when set, else the first line
of the markdown above. Student versions have their solution cells tagged ``exercise`` instead.
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
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
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
    """The exercise's task: the solution cell's ``exercise`` metadata, else the first line of the
    nearest markdown cell above it."""
    explicit = cells[index].get("metadata", {}).get(EXERCISE)
    if explicit:
        return " ".join(str(explicit).split())
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                text = re.sub(r"^[#>*\-\s]+|[*_`]+", "", line).strip()
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
    """The student's version of a solution cell's ``source`` for the exercise ``task``."""
    lines = source.splitlines()
    begin = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    end = [i for i, line in enumerate(lines) if line.strip() == END]
    if begin and end and begin[0] < end[-1]:
        inner = "\n".join(lines[begin[0] + 1:end[-1]])
        indent = re.match(r"\s*", lines[begin[0]]).group(0)  # type: ignore[union-attr]
        return "\n".join([*lines[:begin[0]], *_stub_lines(inner, task, indent), *lines[end[-1] + 1:]])
    return "\n".join(_stub_lines(source, task, ""))


def _stub_lines(solution: str, task: str, indent: str) -> list[str]:
    names = _defined_names(solution)
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
                cell.source = stub(cell.source, _task_text(student.cells, index))
                cell.metadata["tags"] = [EXERCISE if t == SOLUTION else t for t in tags]
                exercises += 1
        elif SOLUTION in tags:
            raise ValueError(f"cell {index} is a {cell.cell_type} cell tagged {SOLUTION!r}; "
                             f"only code cells can be solutions")
    student.metadata.pop("widgets", None)  # saved widget state is output too
    student.metadata.pop("papermill", None)
    return student, exercises


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

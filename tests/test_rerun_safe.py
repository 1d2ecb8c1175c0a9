"""Notebook cells that can be rerun: a name read across cells has one cell that defines it.

Issue 14 found 05's claims cell rebinding ``best`` after a stream claim had read it, so rerunning
that claim read the wrong value. The rule checked here: every name that some cell *reads without
defining it first* (a name it takes from another cell) is assigned by exactly one code cell.
"""

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHECKED = ["05_forgetting"]  # the notebooks this rule is asserted on (their owners opt in)


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names the cell assigns, names it reads before assigning them); a function's, a lambda's or a
    comprehension's own names (arguments, loop variables, locals) are theirs, not the cell's."""
    tree = ast.parse(source)
    scoped: set[int] = set()  # ids of Name nodes that belong to an inner scope
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            inner = [sub for sub in ast.walk(node) if sub is not node]
            own = {sub.arg for sub in inner if isinstance(sub, ast.arg)}
            own |= {sub.id for sub in inner if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store)}
            scoped |= {id(sub) for sub in inner if isinstance(sub, ast.Name) and sub.id in own}
    first: dict[str, tuple[int, int, bool]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in scoped:
            where = (node.lineno, node.col_offset, isinstance(node.ctx, ast.Store))
            if node.id not in first or where[:2] < first[node.id][:2]:
                first[node.id] = where
    for node in ast.walk(tree):  # imports, functions and classes define names too
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined = [node.name]
        else:
            continue
        for name in defined:
            if name not in first or (node.lineno, node.col_offset) < first[name][:2]:
                first[name] = (node.lineno, node.col_offset, True)
    assigned = {n.id for n in ast.walk(tree)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and id(n) not in scoped}
    assigned |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assigned |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
    read_first = {name for name, (_, _, stored) in first.items() if not stored}
    return assigned, read_first


def shared_names_assigned_twice(path: Path) -> dict[str, list[str]]:
    """Names read by some cell from another and assigned by more than one code cell: name -> cell ids."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assigned_by: dict[str, list[str]] = {}
    shared: set[str] = set()
    for cell in cells:
        assigned, read_first = _names("".join(cell["source"]))
        for name in assigned:
            assigned_by.setdefault(name, []).append(cell.get("id", "?"))
        shared |= read_first
    return {name: ids for name, ids in assigned_by.items() if name in shared and len(ids) > 1}


def test_the_rule_finds_a_claim_cell_that_rebinds_what_another_read(tmp_path):
    cells = [{"cell_type": "code", "id": i, "source": s} for i, s in
             [("stream", "best = pick(table)\n"), ("claim1", "claim(best, True)\n"),
              ("claim2", "best = min(rates)\nclaim(best, True)\n")]]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    assert shared_names_assigned_twice(path) == {"best": ["stream", "claim2"]}
    cells[2]["source"] = "full = min(rates)\nclaim(full, True)\n"
    path.write_text(json.dumps({"cells": cells}))
    assert shared_names_assigned_twice(path) == {}


@pytest.mark.parametrize("name", CHECKED)
def test_a_name_read_across_cells_is_defined_once(name):
    assert shared_names_assigned_twice(NOTEBOOKS / f"{name}.ipynb") == {}

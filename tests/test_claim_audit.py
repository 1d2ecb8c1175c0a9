"""An audit of every claim the committed notebooks make, read from their source (nothing executed).

A claim must be able to fail on the numbers the notebook measures. The structured API refuses some
claims that cannot (:mod:`helpers.claims`: a side compared with itself, two integer constants), but
only when the cell runs, and never a plain ``claim(name, holds, evidence)``. This test reads each
notebook's code cells with :mod:`ast` and rejects, before anything runs:

* ``same-sides``: ``claim.greater/less/close`` whose two sides are the same expression, or have the
  same label;
* ``no-evidence``: an asserted plain ``claim(...)`` without evidence (none, ``{}`` or ``None``): the
  reader must see the numbers a yes/no rests on;
* ``profile-constant``: an asserted claim that compares against a constant of the profile (``P.steps``,
  ``params["steps"]``, a name computed only from them, or, in ``greater/less/close``, a bare number):
  a number the configuration chose is not a measurement. A fixed threshold goes through
  ``claim.above``/``claim.below(..., threshold_label=...)``, which say where it comes from;
* ``unlabelled-threshold``: ``claim.above``/``claim.below`` without ``threshold_label``;
* ``no-why``: ``asserted=False`` without ``why=``;
* ``margin-not-in-sentence``: a structured claim with a non-zero margin whose sentence (a plain
  string literal) names no number: the margin belongs in the sentence.

Claims the other notebooks still make that break a rule are listed in ``KNOWN`` with the reason
they stay for now; a new violation fails the test, and a listed one that is gone is reported (a
warning) so the list only shrinks.
"""

from __future__ import annotations

import ast
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
STRUCTURED = ("greater", "less", "close", "above", "below")
#: Names that hold the resolved profile (``P = resolve(...)``) or the profiles themselves.
PROFILE_ROOTS = {"P", "params", "PROFILE", "PROFILES", "KNOBS"}
#: Calls that return the profile or a constant of it (the names they are assigned to are roots too).
PROFILE_CALLS = {"resolve", "pretrain_params"}
#: Pure functions: applied to profile constants, they still give a profile constant.
PURE_CALLS = {"len", "min", "max", "int", "float", "abs", "round", "sum", "range", "list", "tuple", "sorted"}

#: (notebook stem, rule, start of the claim's sentence) -> why it stays for now.
KNOWN: dict[tuple[str, str, str], str] = {
    ("06_overfitting", "profile-constant", "validation accuracy never turned down"):
        "a measured gap against a fixed 0.04 through claim.less(gap, 0.04): claim.below(gap, 0.04, "
        "threshold_label=...) says where 0.04 comes from (claim.below is newer than this claim)",
}


@dataclass(frozen=True)
class Violation:
    notebook: str
    rule: str
    claim: str  # the claim's sentence as written (a literal, or the source of an f-string)
    line: str   # the call's first source line

    def __str__(self) -> str:
        return f"{self.notebook}: [{self.rule}] {self.claim!r}  <- {self.line.strip()}"


def _code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        cells.append("".join(cell["source"]))
    return cells


def _python(source: str) -> str:
    """IPython magics and shell escapes blanked (they are not Python), line numbers kept."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def is_profile_constant(node: ast.AST, derived: set[str], literals: bool = True) -> bool:
    """Whether ``node`` is computed from the profile and constants only (nothing measured).

    ``derived``: names known to hold such values. With ``literals=False`` an expression that is
    only literals (``0.5``) does not count: it is a threshold written in the sentence, not a knob."""
    if isinstance(node, ast.Constant):
        return literals and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in PROFILE_ROOTS or node.id in derived
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return is_profile_constant(node.value, derived, literals=True) and (
            not isinstance(node, ast.Subscript) or is_profile_constant(node.slice, derived, True)
            or isinstance(node.slice, ast.Constant))
    if isinstance(node, ast.BinOp):
        left = is_profile_constant(node.left, derived, literals=True)
        right = is_profile_constant(node.right, derived, literals=True)
        return left and right and (literals or bool(_names(node) & (PROFILE_ROOTS | derived)))
    if isinstance(node, ast.UnaryOp):
        return is_profile_constant(node.operand, derived, literals)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PURE_CALLS:
        return bool(node.args) and all(is_profile_constant(a, derived, True) for a in node.args) and (
            literals or bool(_names(node) & (PROFILE_ROOTS | derived)))
    return False


def _profile_names(trees: list[ast.Module]) -> set[str]:
    """Names a notebook assigns from the profile only, e.g. ``chance = 1 / P.glyph_classes``."""
    derived: set[str] = set()
    changed = True
    while changed:  # to a fixed point: a name may be derived from one derived later in the notebook
        changed = False
        for tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                    continue
                name, value = node.targets[0].id, node.value
                from_profile = (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                                and value.func.id in PROFILE_CALLS)
                if name not in derived and (from_profile or is_profile_constant(value, derived, literals=False)):
                    derived.add(name)
                    changed = True
    return derived


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    return call.args[position] if len(call.args) > position else _kwarg(call, name)


def _asserted(call: ast.Call) -> bool:
    """Asserted unless ``asserted=False`` is written (an expression may be true: counted asserted)."""
    value = _kwarg(call, "asserted")
    return not (isinstance(value, ast.Constant) and value.value is False)


def _sentence(node: ast.expr | None) -> tuple[str, bool]:
    """The claim's sentence and whether it may hold a number (an f-string or a literal with a digit)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, any(c.isdigit() for c in node.value)
    return (ast.unparse(node) if node is not None else "?"), True


def _same(a: ast.AST, b: ast.AST) -> bool:
    return ast.dump(a, annotate_fields=False) == ast.dump(b, annotate_fields=False)


def audit_source(cells: list[str], notebook: str = "<source>") -> list[Violation]:
    """Every violation of the rules above in a notebook's code cells."""
    trees, cells = [], [_python(source) for source in cells]
    for source in cells:
        try:
            trees.append(ast.parse(source))
        except SyntaxError:
            continue  # a cell that is not Python (it would fail the notebook tests anyway)
    derived = _profile_names(trees)
    found: list[Violation] = []
    for tree, source in zip(trees, cells):
        lines = source.splitlines()
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            func = call.func
            plain = isinstance(func, ast.Name) and func.id == "claim"
            structured = (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                          and func.value.id == "claim" and func.attr in STRUCTURED)
            if not (plain or structured):
                continue
            sentence, has_number = _sentence(_argument(call, 0, "name"))

            def bad(rule: str) -> None:
                found.append(Violation(notebook, rule, sentence, lines[call.lineno - 1] if lines else ""))

            asserted = _asserted(call)
            if not asserted and _kwarg(call, "why") is None:
                bad("no-why")
            if plain:
                evidence = _argument(call, 2, "evidence")
                empty = (evidence is None or (isinstance(evidence, ast.Constant) and evidence.value is None)
                         or (isinstance(evidence, ast.Dict) and not evidence.keys))
                if asserted and empty:
                    bad("no-evidence")
                holds = _argument(call, 1, "holds")
                if asserted and holds is not None and any(
                        isinstance(n, ast.Compare) and any(is_profile_constant(side, derived, literals=False)
                                                           for side in [n.left, *n.comparators])
                        for n in ast.walk(holds)):
                    bad("profile-constant")
                continue
            if func.attr in ("above", "below"):
                label = _kwarg(call, "threshold_label")
                if label is None or (isinstance(label, ast.Constant) and label.value == "threshold"):
                    bad("unlabelled-threshold")
                continue
            a, b = _argument(call, 1, "a"), _argument(call, 2, "b")
            labels = _kwarg(call, "a_label"), _kwarg(call, "b_label")
            if a is not None and b is not None and (
                    _same(a, b) or (all(isinstance(x, ast.Constant) for x in labels) and _same(*labels))):
                bad("same-sides")
            if asserted and any(side is not None and is_profile_constant(side, derived) for side in (a, b)):
                bad("profile-constant")
            margin = _argument(call, 3, "tolerance" if func.attr == "close" else "margin")
            nonzero = margin is not None and not (isinstance(margin, ast.Constant) and margin.value == 0)
            if nonzero and not has_number:
                bad("margin-not-in-sentence")
    return found


def audit_notebook(path: Path) -> list[Violation]:
    return audit_source(_code_cells(path), path.stem)


# ------------------------------------------------------------------ the audit itself can fail

@pytest.mark.parametrize("source, rule", [
    ('claim.greater("x beats x by 1 point", acc, acc, 0.01, a_label="a", b_label="b")', "same-sides"),
    ('claim.greater("a beats b by 1 point", a, b, 0.01, a_label="acc", b_label="acc")', "same-sides"),
    ('claim("the model works", acc > 0.5)', "no-evidence"),
    ('claim("the model works", acc > 0.5, {})', "no-evidence"),
    ('claim("the model works", acc > 0.5, evidence=None)', "no-evidence"),
    ('claim("more steps than fine-tuning", steps_done > P.finetune_steps, {"s": steps_done})', "profile-constant"),
    ('claim("x", ratio >= 10 * params["epochs"], {"r": ratio})', "profile-constant"),
    ('chance = 1 / P.glyph_classes\nclaim("above chance", acc > 3 * chance, {"acc": acc})', "profile-constant"),
    ('claim.greater("pretraining reads 10x the tokens", pre_tokens, 10 * P.text_chars, 0, a_label="a", b_label="b")',
     "profile-constant"),
    ('claim.greater("above a half by 0", acc, 0.5, a_label="acc", b_label="half")', "profile-constant"),
    ('claim.above("above chance", acc, 0.1, a_label="acc")', "unlabelled-threshold"),
    ('claim.below("gap under 0.04", gap, 0.04, a_label="gap", threshold_label="threshold")', "unlabelled-threshold"),
    ('claim.less("gap under 0.04", gap, 0.04, 0.0, a_label="gap", b_label="0.04")', "profile-constant"),
    ('claim.greater("only here by 2 points", a, b, 0.02, a_label="a", b_label="b", asserted=False)', "no-why"),
    ('claim.greater("fine-tuning beats scratch by a margin", ft, scratch, 0.05, a_label="ft", b_label="s")',
     "margin-not-in-sentence"),
    ('claim.close("lora matches full", lora, full, tolerance=0.1, a_label="l", b_label="f")', "margin-not-in-sentence"),
])
def test_the_audit_rejects(source, rule):
    assert [v.rule for v in audit_source([source])] == [rule]


@pytest.mark.parametrize("source", [
    'claim.greater("fine-tuning beats scratch by > 5 points", ft, scratch, 0.05, a_label="ft", b_label="scratch")',
    'claim.greater(f"fine-tuning beats scratch by > {M:.0%}", ft, scratch, M, a_label="ft", b_label="scratch")',
    'claim.less("fine-tuning forgets less", lora, full, a_label="lora", b_label="full")',
    'chance = 1 / P.glyph_classes\nclaim.above("3x chance", acc, 3 * chance, a_label="acc", threshold_label="3 x 1/classes")',
    'claim.below("gap under 0.04", gap, 0.04, a_label="best - last", threshold_label="tolerance (0.04)")',
    'claim("the tokenizer round-trips", decoded == sample, evidence={"chars": len(sample)})',
    'claim("beats half", acc > 0.5, {"acc": acc})',  # a literal threshold in a yes/no: allowed
    'claim.greater("only on mnist by 2 points", a, b, 0.02, a_label="a", b_label="b", asserted=False, why="mnist")',
    'claim("reported", x > P.steps, asserted=False, why="a definition: the profile sets it")',
    'seeds = seed_list(P)\nclaim("every seed ran", len(runs) == len(seeds), {"runs": len(runs)})',
    '%matplotlib inline\nclaim("ok", x > y, {"x": x, "y": y})',
])
def test_the_audit_accepts(source):
    assert audit_source([source]) == []


def test_profile_constants_are_followed_through_assignments():
    cells = ["P = resolve(PROFILE)", "budget = P.budgets[0] * 2", "total = budget + 1",
             'claim("x", seen > total, {"seen": seen})']
    assert [v.rule for v in audit_source(cells)] == ["profile-constant"]
    assert audit_source(["total = measured + 1", 'claim("x", seen > total, {"seen": seen})']) == []


# ------------------------------------------------------------------ the committed notebooks

def test_every_committed_claim_can_fail():
    found = [v for path in sorted(NOTEBOOKS.glob("*.ipynb")) for v in audit_notebook(path)]
    known = {key: why for key, why in KNOWN.items()}
    new, matched = [], set()
    for v in found:
        key = next((k for k in known if k[0] == v.notebook and k[1] == v.rule and v.claim.startswith(k[2])), None)
        if key is None:
            new.append(v)
        else:
            matched.add(key)
    for key in set(known) - matched:
        warnings.warn(f"KNOWN lists a claim that no longer breaks its rule; remove it: {key}")
    assert not new, "claims that cannot fail as written (see this test's docstring):\n" + "\n".join(map(str, new))


def test_the_audit_reads_every_notebook_claim():
    counts = {path.stem: sum(isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Name) and n.func.id == "claim")
        or (isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name) and n.func.value.id == "claim"))
        for cell in _code_cells(path) for n in ast.walk(ast.parse(_python(cell))))
        for path in sorted(NOTEBOOKS.glob("*.ipynb"))}
    assert sum(counts.values()) > 20 and counts.get("00_tour", 0) >= 2, counts

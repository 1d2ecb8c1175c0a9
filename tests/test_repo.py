"""House rules: clean notebooks, a parameters cell each, dependencies declared once, CI = README."""

import json
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_notebooks_have_no_outputs_and_a_parameters_cell():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
        assert "PROFILE" in "".join(tagged[0]["source"]), f"{path.name}: parameters cell lacks PROFILE"


def test_notebooks_are_valid_nbformat_with_cell_ids():
    """A cell without an id makes every run print nbformat's MissingIDFieldWarning (a hard error
    in later nbformat versions): each notebook validates, and every cell carries a unique id."""
    import nbformat

    for path in NOTEBOOKS:
        raw = json.loads(path.read_text())  # nbformat.reads would quietly add the missing ids
        ids = [c.get("id") for c in raw["cells"]]
        assert all(ids), f"{path.name}: cells {[i for i, x in enumerate(ids) if not x]} have no id"
        assert len(set(ids)) == len(ids), f"{path.name}: cell ids repeat"
        nbformat.validate(nbformat.from_dict(raw))


def _requirement_names(reqs):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in reqs}


def _declared(project) -> list[str]:
    """The dependencies and every extra's requirements."""
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pkgs = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda_pkgs and "pip" in conda_pkgs
    assert "conda-forge" in env["channels"]
    assert "-e ." in pip_section and "-c constraints.txt" in pip_section
    listed = [p for p in pip_section if p not in ("-e .", "-c constraints.txt")]
    assert _requirement_names(listed) == _requirement_names(declared)


def test_dependencies_are_lower_bounds_without_cpu_builds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in _declared(project):
        assert "==" not in req and "+cpu" not in req, req


def test_test_only_tools_are_not_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    for tool in ("nbval", "playwright", "pytest", "pytest-xdist"):
        assert tool not in runtime and tool in _requirement_names(project["optional-dependencies"]["dev"])
    imported = "\n".join(p.read_text() for p in (ROOT / "helpers").rglob("*.py"))
    assert not re.search(r"^\s*(import|from)\s+(nbval|playwright|pytest)\b", imported, re.M)


def test_constraints_pin_every_requirement_and_make_uses_them():
    """constraints.txt pins (==) every package pyproject asks for, within its bounds, and all they
    pull in here; the Makefile installs with it unless CONSTRAINTS= is given."""
    from packaging.requirements import Requirement

    from helpers import constraints

    pins = constraints.read(ROOT / "constraints.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in _declared(project):
        req = Requirement(text)
        name = constraints.canonical(req.name)
        assert name in pins, f"{name} is required by pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    assert not any("+cpu" in v for v in pins.values())
    closure = constraints.installed_closure(constraints.project_requirements(ROOT / "pyproject.toml"))
    missing = sorted(set(closure) - set(pins))
    assert not missing, f"installed requirements not pinned (run `make constraints`): {missing}"
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile
    assert "$(if $(CONSTRAINTS),-c $(CONSTRAINTS))" in makefile


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, re.M)


def test_no_generated_artifacts_tracked():
    tracked = _tracked("*")
    bad = [p for p in tracked if p.endswith((".safetensors", ".pt", ".pth", ".results.json"))
           or p.startswith(("runs/", "data/store/"))]
    assert not bad, bad

"""The batch runner ``python -m helpers.run``: input checks (no kernel) and real papermill runs.

Kernel starts are kept to four: a 2-point sweep of one notebook, and a failing notebook followed
by one that works.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import run

GOOD = """\
from helpers.config import resolve
from helpers.results import record
from helpers.claims import claim
P = resolve(PROFILE, seed=SEED, **OVERRIDES)
record("x", P.seed)
record("lr_used", P.lr)
claim("seed is small", P.seed < 5, {"seed": P.seed})
"""

BAD = """\
from helpers.config import resolve
from helpers.results import record
P = resolve(PROFILE, seed=SEED, **OVERRIDES)
record("before_boom", 42)
raise RuntimeError("boom in the notebook")
"""


def _notebook(path: Path, body: str, parameters: str = 'PROFILE = "quick"\nOVERRIDES = {}\nSEED = None\n') -> Path:
    cell = new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("# test"), cell, new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nbdir(tmp_path: Path) -> Path:
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "00_good.ipynb", GOOD)
    _notebook(folder / "01_bad.ipynb", BAD)
    _notebook(folder / "02_good_too.ipynb", GOOD)
    _notebook(folder / "05_no_overrides.ipynb", GOOD, parameters='PROFILE = "quick"\nSEED = None\n')
    return folder


def _cli(nbdir: Path, out: Path, *args: str) -> list[str]:
    return [*args, "--notebooks-dir", str(nbdir), "--out", str(out)]


# ---------------------------------------------------------------- input checks, no kernel

@pytest.mark.parametrize("args, expected", [
    (["--profile", "quik"], ["unknown profile 'quik'", "did you mean 'quick'", "smoke, quick, full"]),
    (["-p", "lrr=0.1"], ["unknown parameter 'lrr'", "did you mean 'lr'"]),
    (["-p", "lr=-1"], ["'lr'", "-1", "float in [1e-08, 10.0]"]),
    (["-p", "device=gpu"], ["'device'", "'gpu'", "['auto', 'cpu', 'cuda', 'mps']"]),
    (["-p", "bf16=maybe"], ["'bf16'", "maybe", "bool"]),
    (["-p", "lr"], ["expected NAME=VALUE"]),
    (["-p", "lr="], ["no value for 'lr'"]),
    (["-p", "profile=smoke"], ["--profile"]),
    (["-p", "seed=1", "-p", "seed=2"], ["given twice"]),
    (["--sweep", "seed="], ["empty sweep"]),
    (["--sweep", "seed=0,,2"], ["empty value"]),
    (["--sweep", "seed=0,-1"], ["'seed'", "-1", "int >= 0"]),
    (["--sweep", "seed=0,1", "-p", "seed=3"], ["given with -p and swept"]),
    (["--sweep", "sed=0,1"], ["unknown parameter 'sed'", "did you mean 'seed'"]),
    (["99"], ["unknown notebook '99'", "00_good, 01_bad, 02_good_too, 05_no_overrides"]),
    (["00_god"], ["unknown notebook '00_god'", "did you mean '00_good'"]),
    (["05", "-p", "lr=0.1"], ["05_no_overrides.ipynb declares neither LR nor OVERRIDES"]),
    (["--timeout", "0"], ["--timeout"]),
])
def test_bad_input_is_reported_before_any_work(nbdir, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    assert run.main(_cli(nbdir, out, *args)) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not out.exists()  # nothing started


def test_output_folder_problems(nbdir, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.txt").write_text("earlier batch")
    assert run.main(_cli(nbdir, busy, "00")) == 2
    assert "not empty" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    assert run.main(_cli(nbdir, afile, "00")) == 2
    assert "not a folder" in capsys.readouterr().err


def test_empty_notebooks_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run.main(_cli(tmp_path / "empty", tmp_path / "out")) == 2
    assert "no notebooks" in capsys.readouterr().err


def test_values_sweeps_names_and_selection(nbdir, tmp_path):
    assert run.parse_value("1e-3") == 0.001 and run.parse_value("cpu") == "cpu"
    assert run.parse_value("False") is False and run.parse_value("true", "bf16") is True
    assert run.split_values("[1, 2],[3],x") == ["[1, 2]", "[3]", "x"]
    sweeps = run.parse_sweeps(["seed=0,1,2", "lr=1e-3,3e-3,0.001"])
    assert sweeps == {"seed": [0, 1, 2], "lr": [0.001, 0.003]}
    points = run.sweep_points(sweeps)
    assert len(points) == 6 and points[1] == {"seed": 0, "lr": 0.003}
    assert run.sweep_points({}) == [{}]
    assert run.output_stem("03_finetune_cnn", {"seed": 0, "lr": 0.001}) == "03_finetune_cnn__seed=0__lr=0.001"
    assert run.parse_params(["lr=1", "bf16=False", "device=cpu"]) == {"lr": 1.0, "bf16": False, "device": "cpu"}

    for name in ("2", "02", "02_good_too", "02_good_too.ipynb", str(nbdir / "02_good_too.ipynb")):
        assert run.find_notebook(name, nbdir) == (nbdir / "02_good_too.ipynb").resolve()
    assert [p.name for p in run.available_notebooks(nbdir)][:2] == ["00_good.ipynb", "01_bad.ipynb"]

    declared = {"PROFILE": {"default": '"quick"'}, "OVERRIDES": {"default": "{'epochs': 2}"},
                "SEED": {"default": "None"}}
    assert run.notebook_parameters(Path("x.ipynb"), "smoke", {"seed": 3, "lr": 0.1}, declared) == \
        {"PROFILE": "smoke", "SEED": 3, "OVERRIDES": {"epochs": 2, "lr": 0.1}}
    assert run.notebook_parameters(Path("x.ipynb"), "quick", {}, declared) == {"PROFILE": "quick"}


# ---------------------------------------------------------------- real executions (papermill)

def test_sweep_runs_each_point_and_reports(nbdir, tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main(_cli(nbdir, out, "0", "--sweep", "seed=0,1", "-p", "lr=1e-3"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"report: {out / 'report.html'}" in printed or "report.html" in printed

    for seed in (0, 1):
        stem = f"00_good__seed={seed}"
        assert (out / f"{stem}.ipynb").is_file()
        res = json.loads((out / f"{stem}.results.json").read_text())
        assert res["profile"] == "quick"
        assert res["params"]["seed"] == seed and res["params"]["lr"] == 0.001  # SEED direct, lr via OVERRIDES
        assert res["metrics"]["x"] == seed
        assert res["claims"][0]["holds"] and res["claims"][0]["asserted"]

    batch = json.loads((out / "batch.json").read_text())
    assert [r["name"] for r in batch["runs"]] == ["00_good__seed=0", "00_good__seed=1"]
    assert all(r["status"] == "ok" and r["wall_s"] > 0 for r in batch["runs"])
    assert batch["runs"][0]["parameters"] == {"PROFILE": "quick", "SEED": 0, "OVERRIDES": {"lr": 0.001}}
    assert batch["sweep"] == {"seed": [0, 1]} and batch["failed"] == []
    assert batch["environment"]["torch"]

    summary = (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    for text in (summary, html):
        assert "seed is small" in text and "pass" in text
        assert "lr_used" in text and "00_good__seed=1" in text
        assert "Sweep: 00_good" in text
    assert "<table>" in html and "python" in html


def test_failure_does_not_stop_the_batch(nbdir, tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main(_cli(nbdir, out, "01_bad", "2", "--profile", "smoke"))
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAILED: 1 of 2" in printed and "01_bad: RuntimeError: boom in the notebook" in printed

    batch = json.loads((out / "batch.json").read_text())
    bad, good = batch["runs"]
    assert (bad["status"], good["status"]) == ("failed", "ok")
    assert bad["error"]["name"] == "RuntimeError" and "boom" in bad["error"]["message"]
    assert (out / "01_bad.ipynb").is_file() and (out / "02_good_too.ipynb").is_file()
    assert json.loads((out / "01_bad.results.json").read_text())["metrics"] == {"before_boom": 42}
    good_res = json.loads((out / "02_good_too.results.json").read_text())
    assert good_res["profile"] == "smoke" and not good_res["claims"][0]["asserted"]

    html = (out / "report.html").read_text()
    assert "boom in the notebook" in html and "before_boom" in html
    assert "reported only: holds" in html

"""The batch runner ``python -m helpers.run`` (and :mod:`helpers.plan` behind it): input checks (no
kernel) and real papermill runs.

Kernel starts are kept to five: a 2-point seed sweep of one notebook run two at a time (--jobs 2),
a failing notebook followed by one that works, and a --resume of that batch (only the failed one
runs again).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import plan, run

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
    folder.mkdir(parents=True)
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
    (["-p", "LR=0.1"], ["unknown parameter 'LR'", "did you mean 'lr'"]),  # knobs are lower case
    (["-p", "batch=3"], ["unknown parameter 'batch'", "known parameters: "]),
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
    (["--jobs", "0"], ["--jobs 0", "at least 1"]),
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
    assert plan.parse_value("1e-3") == 0.001 and plan.parse_value("cpu") == "cpu"
    assert plan.parse_value("False") is False and plan.parse_value("true", "bf16") is True
    assert plan.split_values("[1, 2],[3],x") == ["[1, 2]", "[3]", "x"]
    sweeps = plan.parse_sweeps(["seed=0,1,2", "lr=1e-3,3e-3,0.001"])
    assert sweeps == {"seed": [0, 1, 2], "lr": [0.001, 0.003]}
    points = plan.sweep_points(sweeps)
    assert len(points) == 6 and points[1] == {"seed": 0, "lr": 0.003}
    assert plan.sweep_points({}) == [{}]
    assert plan.output_stem("03_finetune_cnn", {"seed": 0, "lr": 0.001}) == "03_finetune_cnn__seed=0__lr=0.001"
    assert plan.parse_params(["lr=1", "bf16=False", "device=cpu"]) == {"lr": 1.0, "bf16": False, "device": "cpu"}

    for name in ("2", "02", "02_good_too", "02_good_too.ipynb", str(nbdir / "02_good_too.ipynb")):
        assert plan.find_notebook(name, nbdir) == (nbdir / "02_good_too.ipynb").resolve()
    assert [p.name for p in plan.available_notebooks(nbdir)][:2] == ["00_good.ipynb", "01_bad.ipynb"]

    declared = {"PROFILE": {"default": '"quick"'}, "OVERRIDES": {"default": "{'epochs': 2}"},
                "SEED": {"default": "None"}}
    assert plan.notebook_parameters(Path("x.ipynb"), "smoke", {"seed": 3, "lr": 0.1}, declared) == \
        {"PROFILE": "smoke", "SEED": 3, "OVERRIDES": {"epochs": 2, "lr": 0.1}}
    assert plan.notebook_parameters(Path("x.ipynb"), "quick", {}, declared) == {"PROFILE": "quick"}


def test_notebook_parameters_must_be_knobs(nbdir, tmp_path, capsys):
    """A notebook parameter X is always the knob x: a parameters cell declaring another upper-case
    name is refused before anything runs, naming the notebook, the parameter and the allowed ones."""
    _notebook(nbdir / "03_renamed.ipynb", GOOD,
              parameters='PROFILE = "quick"\nSEED = None\nEPOCH = 3\nOVERRIDES = {}\n')
    out = tmp_path / "out"
    assert run.main(_cli(nbdir, out, "00", "03")) == 2  # 00 is fine; 03 stops the batch before it starts
    err = capsys.readouterr().err
    for fragment in ("03_renamed.ipynb", "parameter EPOCH", "did you mean EPOCHS",
                     "allowed: PROFILE, OVERRIDES, ", "SEED", "LR"):
        assert fragment in err, (fragment, err)
    assert not out.exists()

    # the check reads only the selected notebooks; lower-case names and knobs upper-cased are fine
    args = run.build_parser().parse_args(_cli(nbdir, out, "00"))
    assert [job.name for job in run.make_plan(args).jobs] == ["00_good"]
    plan.check_declared(Path("x.ipynb"), {"PROFILE": {}, "OVERRIDES": {}, "SEED": {}, "LR": {},
                                          "LM_EPOCHS": {}, "helper_value": {}})
    with pytest.raises(plan.UsageError, match="TASKS"):
        plan.check_declared(Path("x.ipynb"), {"PROFILE": {}, "TASKS": {}})


# ---------------------------------------------------------------- real executions (papermill)

@pytest.mark.notebooks  # executes real notebooks in kernels (seconds each)
def test_sweep_runs_each_point_and_reports(nbdir, tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main(_cli(nbdir, out, "0", "--sweep", "seed=0,1", "-p", "lr=1e-3", "--jobs", "2"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.strip().splitlines()[-1].endswith("report.html")  # the last line: the report

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
    assert all(r["status"] == "ok" and r["wall_s"] > 0 and r["finished"] for r in batch["runs"])
    assert all(r["peak_rss_mb"] and r["peak_rss_mb"] > 20 for r in batch["runs"])  # the kernel's
    assert batch["jobs"] == 2
    assert batch["runs"][0]["parameters"] == {"PROFILE": "quick", "SEED": 0, "OVERRIDES": {"lr": 0.001}}
    assert batch["sweep"] == {"seed": [0, 1]} and batch["failed"] == []
    assert batch["environment"]["torch"]
    for entry in batch["runs"]:  # where the time went, from papermill's own stamps
        parts = [e["section"] for e in entry["sections"]]
        assert parts[0] == "kernel start" and "parameters" in parts
        assert sum(e["seconds"] for e in entry["sections"]) == pytest.approx(entry["wall_s"], abs=0.01)
    assert "| kernel start |" in (out / "profile.md").read_text()

    summary = (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    for text in (summary, html):
        assert "seed is small" in text and "pass" in text
        assert "lr_used" in text and "00_good__seed=1" in text
        assert "Sweep: 00_good" in text
        assert "Across seeds: 00_good: 2 seeds (0, 1)" in text
        assert "0.5 ± 0.7071" in text  # metric x = seed: mean and sample std over seeds 0 and 1
    assert "<table>" in html and "python" in html and "ipywidgets" in html
    for entry in batch["runs"]:  # each notebook run's time, in the runs table of both reports
        shown = f"{entry['wall_s']:.1f} s"
        assert f"| {entry['name']} | ok | {shown} |" in summary
        assert f"{entry['name']}</a></td><td><span class=\"ok\">ok</span></td><td>{shown}</td>" in html
    aggregate = json.loads((out / "aggregate.json").read_text())
    assert aggregate[0]["metrics"]["x"] == {"mean": 0.5, "std": pytest.approx(0.70710678), "n": 2}

    # resuming a batch that finished: nothing runs again, the report is rewritten
    assert run.main(["--resume", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 executions already done, 0 to run" in printed
    again = json.loads((out / "batch.json").read_text())
    assert [r["wall_s"] for r in again["runs"]] == [r["wall_s"] for r in batch["runs"]]
    assert all(r["earlier"] for r in again["runs"]) and len(again["resumed"]) == 1
    assert "(earlier session)" in (out / "report.html").read_text()


@pytest.mark.notebooks  # executes real notebooks in kernels (seconds each)
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

    # --resume repeats the recorded command: the successful run is kept, the failed one runs again
    code = run.main(["--resume", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and "1 execution already done, 1 to run" in printed
    again = json.loads((out / "batch.json").read_text())
    bad2, good2 = again["runs"]
    assert good2 == {**good, "earlier": True}  # kept exactly as recorded
    assert bad2["status"] == "failed" and not bad2["earlier"] and bad2["wall_s"] != bad["wall_s"]
    assert again["profile"] == "smoke" and again["command"] == batch["command"]
    assert again["wall_s"] > batch["wall_s"]


def _fake_batch(folder: Path, nbdir: Path, profile: str = "quick") -> None:
    folder.mkdir(parents=True)
    (folder / "00_good.ipynb").write_text("{}")
    entry = {"name": "00_good", "notebook": "00_good", "input": str(nbdir / "00_good.ipynb"),
             "cwd": str(nbdir), "point": {}, "parameters": {"PROFILE": profile}, "status": "ok",
             "output": "00_good.ipynb", "results": "00_good.results.json", "wall_s": 1.0}
    argv = ["00", "--notebooks-dir", str(nbdir), "--profile", profile, "--out", str(folder)]
    (folder / "batch.json").write_text(json.dumps(
        {"schema": 1, "command": "python -m helpers.run ...", "argv": argv, "profile": profile,
         "params": {}, "sweep": {}, "timeout_s": None, "out": str(folder), "started": "t",
         "runs": [entry]}))


def test_resume_input_checks(nbdir, tmp_path, capsys, monkeypatch):
    assert run.main(["--resume", "--out", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert run.main(["--resume", "--out", str(tmp_path / "plain")]) == 2
    assert "no batch.json" in capsys.readouterr().err

    done = tmp_path / "runs" / "done"
    _fake_batch(done, nbdir)
    assert run.main(["--resume", "--out", str(done), "--profile", "smoke"]) == 2
    assert "holds a 'quick' batch" in capsys.readouterr().err
    assert run.main(["--resume", "--out", str(done), "00", "--notebooks-dir", str(nbdir),
                     "-p", "lr=0.1"]) == 2
    assert "ran with parameters" in capsys.readouterr().err
    # the recorded command, all done already: nothing runs, no kernel starts
    monkeypatch.setattr(plan, "repo_root", lambda: tmp_path)  # --resume alone: newest runs/*/
    assert run.main(["--resume"]) == 0
    assert "1 execution already done, 0 to run" in capsys.readouterr().out
    assert (done / "report.html").is_file()


def test_seed_aggregates_group_by_the_other_swept_values():
    from helpers.aggregate import seed_aggregates
    from helpers.report import fmt_mean_std

    def entry(name, seed, lr, status="ok"):
        return {"name": name, "notebook": "03_x", "point": {"seed": seed, "lr": lr}, "status": status}

    runs = [entry("a", 0, 0.1), entry("b", 1, 0.1), entry("c", 2, 0.1), entry("d", 0, 0.2),
            entry("e", 1, 0.2), entry("f", 2, 0.2, status="failed")]
    results = {"a": {"metrics": {"acc": 0.5, "loss": 1.0, "ok": True, "curve": [1, 2]}},
               "b": {"metrics": {"acc": 0.7, "loss": 3.0}}, "c": {"metrics": {"acc": 0.9}},
               "d": {"metrics": {"acc": 0.1}}, "e": {"metrics": {"acc": 0.3}},
               "f": {"metrics": {"acc": 99.0}}}
    first, second = seed_aggregates(runs, results)
    assert first["point"] == {"lr": 0.1} and first["seeds"] == [0, 1, 2]
    assert first["metrics"]["acc"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.2), "n": 3}
    assert first["metrics"]["loss"]["n"] == 2 and set(first["metrics"]) == {"acc", "loss"}  # no bools/lists
    assert second["seeds"] == [0, 1] and second["metrics"]["acc"]["mean"] == pytest.approx(0.2)  # failed f left out
    assert fmt_mean_std(first["metrics"]["acc"], 3) == "0.7 ± 0.2"
    assert fmt_mean_std(first["metrics"]["loss"], 3) == "2 ± 1.414 (n=2)"
    assert seed_aggregates([entry("a", 0, 0.1)], results) == []  # one seed: nothing to aggregate

    # dict metrics are flattened; tables are aggregated cell by cell, row by row
    def table(acc0, acc1, note):
        return {"columns": ["method", "budget", "acc", "note"],
                "rows": [["scratch", 1, acc0, note], ["full", 1, acc1, note]]}
    results = {"a": {"metrics": {"gap": {"1": 0.1, "5": 0.3}}, "tables": {"t": table(0.2, 0.6, "x"), "only_a": table(0, 0, "")}},
               "b": {"metrics": {"gap": {"1": 0.3}}, "tables": {"t": table(0.4, 0.6, "y")}}}
    (group,) = seed_aggregates(runs[:2], results)
    assert group["metrics"]["gap[1]"]["mean"] == pytest.approx(0.2) and group["metrics"]["gap[5]"]["n"] == 1
    assert list(group["tables"]) == ["t"]  # a table missing for one seed is not aggregated
    rows = group["tables"]["t"]["rows"]
    assert rows[0][:2] == ["scratch", 1] and rows[0][2]["mean"] == pytest.approx(0.3)
    assert rows[1][2] == 0.6 and rows[0][3] == "(varies)"


def test_section_seconds_sum_cell_durations_under_each_heading():
    from helpers.execute import section_seconds

    def code(seconds):
        return {"cell_type": "code", "source": "x", "metadata": {"papermill": {"duration": seconds}}}

    def heading(text):
        return {"cell_type": "markdown", "source": [f"## {text}\n", "prose"], "metadata": {}}

    cells = [code(1.0), heading("1 · Train"), code(2.0), code(0.5), {"cell_type": "markdown", "source": "prose"},
             code(1.0), heading("Claims"), code(0.25)]
    assert section_seconds(cells) == [{"section": "setup", "seconds": 1.0}, {"section": "1 · Train", "seconds": 3.5},
                                      {"section": "Claims", "seconds": 0.25}]


def test_time_profile_adds_kernel_start_parameters_and_the_rest():
    from helpers.execute import profile_markdown, time_profile

    def code(start, seconds, tags=()):
        return {"cell_type": "code", "source": "x",
                "metadata": {"tags": list(tags), "papermill": {"start_time": start, "duration": seconds}}}

    notebook = {"metadata": {"papermill": {"start_time": "2026-01-01T00:00:00.000000"}},
                "cells": [{"cell_type": "markdown", "source": "## Parameters", "metadata": {}},
                          code("2026-01-01T00:00:02.500000", 0.5, ["parameters"]),
                          code("2026-01-01T00:00:03.000000", 0.25, ["injected-parameters"]),
                          {"cell_type": "markdown", "source": "## 1 · Train", "metadata": {}},
                          code("2026-01-01T00:00:03.250000", 4.0)]}
    profile = time_profile(notebook, wall_s=10.0)
    assert profile == [{"section": "kernel start", "seconds": 2.5}, {"section": "parameters", "seconds": 0.75},
                       {"section": "1 · Train", "seconds": 4.0}, {"section": "other", "seconds": 2.75}]
    assert sum(e["seconds"] for e in profile) == pytest.approx(10.0)  # every second is accounted for
    assert time_profile({"cells": []}, wall_s=3.0) == []  # nothing recorded: no invented profile
    table = profile_markdown({"out": "/x/runs/b", "profile": "quick", "wall_s": 10.0,
                              "runs": [{"name": "03_x", "status": "ok", "wall_s": 10.0, "sections": profile}]})
    assert "| kernel start | 2.50 | 25% |" in table and "## 03_x (ok, 10.0 s)" in table


def test_a_summary_waits_for_the_notebooks_it_reads(tmp_path):
    """With --jobs N (or Dask) a notebook that reads its siblings' results starts only when every
    other notebook of its sweep point has ended; the rest start in order."""
    from helpers.executors import next_ready

    reader = _notebook(tmp_path / "11_summary.ipynb", "from helpers import results\nresults.sibling('03_')\n")
    plain = _notebook(tmp_path / "03_plain.ipynb", GOOD)

    def job(path, seed):
        return plan.Job(notebook=path, name=f"{path.stem}__seed={seed}", point={"seed": seed}, parameters={},
                        cwd=tmp_path)

    jobs = [job(plain, 0), job(reader, 0), job(plain, 1), job(reader, 1)]
    the_plan = type("P", (), {"jobs": jobs})()
    assert next_ready(the_plan, [1, 2, 3], running=[0]) == 1      # seed 0's summary waits; seed 1's plain goes
    assert next_ready(the_plan, [1, 3], running=[0, 2]) is None   # both summaries wait for their plain runs
    assert next_ready(the_plan, [1, 3], running=[2]) == 0         # seed 0's plain run ended: its summary starts
    assert next_ready(the_plan, [3], running=[1]) == 0            # another summary running does not block


def test_a_notebook_waits_for_the_notebooks_whose_checkpoints_it_loads(tmp_path):
    """``workbook.needs`` in a notebook's metadata: it starts only after those notebooks (of its
    sweep point) have ended, instead of waiting on a checkpoint's lock beside them."""
    from helpers.executors import needs, next_ready

    producer = _notebook(tmp_path / "01_make.ipynb", GOOD)
    user = _notebook(tmp_path / "03_use.ipynb", GOOD)
    other = _notebook(tmp_path / "04_other.ipynb", GOOD)
    nb = nbformat.read(user, as_version=4)
    nb.metadata["workbook"] = {"needs": ["01_make"]}
    nbformat.write(nb, user)
    jobs = [plan.Job(notebook=p, name=f"{p.stem}__seed={s}", point={"seed": s}, parameters={}, cwd=tmp_path)
            for s in (0, 1) for p in (producer, user, other)]
    the_plan = type("P", (), {"jobs": jobs})()
    assert needs(jobs[1]) == ("01_make",) and needs(jobs[2]) == ()
    assert next_ready(the_plan, [1, 2], running=[0]) == 1      # 03 waits for 01 of its seed; 04 goes
    assert next_ready(the_plan, [1], running=[0, 3]) is None     # 01 of seed 1 running does not matter...
    assert next_ready(the_plan, [1, 4], running=[0]) == 1       # ...but seed 1's 03 waits for its own 01 (3)
    assert next_ready(the_plan, [1, 4], running=[3]) == 0       # seed 0's 01 ended: its 03 starts


def test_the_longest_chain_starts_first(tmp_path):
    """start_order: critical-path list scheduling. The notebook others wait for starts first, a long
    independent one before short ones, the summary last; ties keep the plan's order."""
    from helpers.executors import start_order

    names = {"00_tour": 20, "01_make": 200, "03_use": 100, "05_long": 150, "07_short": 30, "11_summary": 10}
    paths = {n: _notebook(tmp_path / f"{n}.ipynb", GOOD if n != "11_summary" else
                          "from helpers import results\nresults.sibling('03_')\n") for n in names}
    nb = nbformat.read(paths["03_use"], as_version=4)
    nb.metadata["workbook"] = {"needs": ["01_make"]}
    nbformat.write(nb, paths["03_use"])
    jobs = [plan.Job(notebook=p, name=n, point={}, parameters={}, cwd=tmp_path) for n, p in paths.items()]
    the_plan = type("P", (), {"jobs": jobs})()
    order = start_order(the_plan, range(len(jobs)), seconds=lambda job: names[Path(job.notebook).stem])
    assert [jobs[i].name for i in order] == ["01_make", "05_long", "03_use", "07_short", "00_tour", "11_summary"]


def test_every_notebook_needs_only_earlier_notebooks_that_exist():
    """The workbook's own ``workbook.needs``: each names an existing notebook with a smaller number
    (no cycle can leave --jobs waiting forever)."""
    from helpers.executors import needs

    notebooks = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stems = [p.stem for p in notebooks]
    seen = 0
    for p in notebooks:
        for need in needs(plan.Job(notebook=p, name=p.stem, point={}, parameters={}, cwd=p.parent)):
            seen += 1
            assert need in stems and need < p.stem, f"{p.name}: workbook.needs names {need!r}"
    assert seen >= 7

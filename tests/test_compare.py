"""``python -m helpers.run compare A B`` on two tiny real batches (one kernel start each)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import compare, run
from test_run import _cli, _notebook

BODY = """\
from helpers.config import resolve
from helpers.results import record
from helpers.claims import claim
P = resolve(PROFILE, seed=SEED, **OVERRIDES)
record("lr_used", P.lr)
record("steps", {"small": 1, "large": 2})
import os
record("tensorboard_folder", os.environ.get("WORKBOOK_TENSORBOARD"))
claim("lr is small", P.lr < 2e-3, {"lr": P.lr})  # asserted in quick: the last line
"""


def test_compare_two_batches(tmp_path: Path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_lr.ipynb", BODY)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run.main(_cli(nbs, a, "00", "-p", "lr=1e-3")) == 0
    assert run.main(_cli(nbs, b, "00", "-p", "lr=3e-3", "--tensorboard")) == 1  # the claim fails
    capsys.readouterr()
    # --tensorboard hands each execution its own folder for helpers.train's event files
    recorded = [json.loads((x / "00_lr.results.json").read_text())["metrics"]["tensorboard_folder"]
                for x in (a, b)]
    assert recorded == ["", str(b / "tensorboard" / "00_lr")]

    assert run.main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp.md")]) == 0
    text = capsys.readouterr().out
    assert text.strip() == (tmp_path / "cmp.md").read_text().strip()
    result = compare.compare(a, b)
    rows = {(m["run"], m["metric"]): m for m in result.metrics}
    assert rows[("00_lr", "lr_used")]["a"] == 1e-3 and rows[("00_lr", "lr_used")]["b"] == 3e-3
    assert abs(rows[("00_lr", "lr_used")]["change"] - 2e-3) < 1e-12
    assert rows[("00_lr", "steps[large]")]["change"] == 0  # dicts flattened as in the report
    assert result.claims == [{"run": "00_lr", "claim": "lr is small", "a": "pass", "b": "FAIL"}]
    assert "| 00_lr | lr is small | pass | FAIL |" in text and "## Environment differences" in text
    changed = compare.compare(a, b, changed_only=True)
    assert [m["metric"] for m in changed.metrics] == ["lr_used"]

    # environment differences come from each batch's recorded environment
    index = json.loads((b / "batch.json").read_text())
    index["environment"]["torch"] = "0.0-other"
    (b / "batch.json").write_text(json.dumps(index))
    env = {e["key"]: e for e in compare.compare(a, b).environment}
    assert env["torch"]["b"] == "0.0-other"


def test_compare_bad_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run.main(["compare", str(tmp_path / "empty"), str(tmp_path / "empty")]) == 2
    assert "no batch.json" in capsys.readouterr().err

import json
import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helpers import results  # noqa: E402
from helpers.claims import ClaimFailed, claim  # noqa: E402
from helpers.config import resolve  # noqa: E402


def _saved(tmp_path):
    return json.loads((tmp_path / "test.results.json").read_text())


def test_records_metrics_tables_figures(tmp_path):
    resolve("smoke", seed=2)
    results.record("accuracy", np.float32(0.5))
    results.record_table("scores", pd.DataFrame({"method": ["a", "b"], "acc": [0.1, 0.2]}))
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    results.record_figure("curve", fig)
    saved = _saved(tmp_path)
    assert saved["profile"] == "smoke" and saved["params"]["seed"] == 2
    assert saved["metrics"]["accuracy"] == 0.5
    assert saved["tables"]["scores"] == {"columns": ["method", "acc"], "rows": [["a", 0.1], ["b", 0.2]]}
    assert (tmp_path / saved["figures"]["curve"]).exists()


def test_claims_are_reported_in_smoke(tmp_path, capsys):
    resolve("smoke")
    assert claim("two is less than one", 2 < 1, {"a": 2, "b": 1}) is False
    assert "not shown (smoke" in capsys.readouterr().out
    entry = _saved(tmp_path)["claims"][0]
    assert entry == {"name": "two is less than one", "holds": False, "asserted": False,
                     "evidence": {"a": 2, "b": 1}}


def test_claims_are_asserted_in_quick(tmp_path):
    resolve("quick")
    assert claim("one is less than two", 1 < 2, {"a": 1})
    with pytest.raises(ClaimFailed, match=r"two is less than one\n  evidence: a=2"):
        claim("two is less than one", 2 < 1, {"a": 2})
    assert [c["holds"] for c in _saved(tmp_path)["claims"]] == [True, False]


def test_sibling_results_are_found_beside_this_notebook(tmp_path):
    resolve("smoke")
    results.record_table("cost", pd.DataFrame({"stage": ["a"], "flops": [1.0]}).set_index("stage"))
    (tmp_path / "03_finetune.results.json").write_text((tmp_path / "test.results.json").read_text())
    found = results.sibling("03_")
    assert found is not None and results.table(found, "cost").to_dict("records") == [{"stage": "a", "flops": 1.0}]
    assert results.sibling("07_") is None


def test_a_recorded_nan_comes_back_as_a_float(tmp_path):
    resolve("smoke")  # one seed: its std is NaN, which JSON stores as the string "nan"
    nan = float("nan")
    results.record_table("curve", pd.DataFrame({"method": ["a", "b"], "acc_std": [nan, 0.5], "one_seed": [nan, nan],
                                                "verdict": ["nan", "ok"]}))
    back = results.table(json.loads((tmp_path / "test.results.json").read_text()), "curve")
    assert back["acc_std"].dtype == float and math.isnan(back["acc_std"][0]) and back["acc_std"][1] == 0.5
    assert back["one_seed"].dtype == float and back["one_seed"].isna().all()
    assert back["verdict"].tolist() == ["nan", "ok"]  # a text column stays text


def test_structured_claims_pair_seeds_and_report_the_interval(tmp_path):
    resolve("quick")
    assert claim.greater("ft beats scratch", [0.9, 0.8, 0.85], [0.7, 0.72, 0.6], 0.05,
                         a_label="fine-tuned", b_label="scratch")
    entry = _saved(tmp_path)["claims"][-1]
    assert entry["kind"] == "greater" and entry["n"] == 3 and entry["margin"] == 0.05
    assert entry["differences"] == pytest.approx([0.2, 0.08, 0.25])
    low, high = entry["ci95"]
    assert low < entry["effect"] < high and entry["effect"] == pytest.approx(0.53 / 3)
    assert "95% CI" in entry["evidence"] and entry["evidence"]["fine-tuned"] == pytest.approx(0.85)
    # the mean clears the margin but the whole interval does not: test="ci" fails loudly
    with pytest.raises(ClaimFailed, match="noisy"):
        claim.greater("noisy", [0.9, 0.5], [0.6, 0.55], 0.0, test="ci", a_label="x", b_label="y")
    assert claim.less("lower", [1.0, 2.0], [3.0, 3.5], 0.5, a_label="loss ft", b_label="loss scratch")
    assert claim.close("within 10%", [0.95, 1.0], [1.0, 1.0], 0.1, relative=True, a_label="lora", b_label="full")
    with pytest.raises(ClaimFailed):
        claim.close("not within 1%", [0.8, 0.8], [1.0, 1.0], 0.01, relative=True, a_label="lora", b_label="full")
    assert claim.above("above chance", [0.5, 0.6], 0.1, a_label="acc", threshold_label="chance (1/10)")
    assert claim.below("gap under 0.04", [0.01, 0.02], 0.04, a_label="best - last", threshold_label="tolerance 0.04")
    assert _saved(tmp_path)["claims"][-1]["effect"] == pytest.approx(0.025)  # threshold - a
    with pytest.raises(ClaimFailed, match="gap under 0.01"):
        claim.below("gap under 0.01", [0.01, 0.02], 0.01, a_label="best - last", threshold_label="tolerance 0.01")


def test_structured_claims_refuse_comparisons_that_cannot_fail(tmp_path):
    from helpers.claims import ClaimError

    resolve("quick")
    acc = [0.5, 0.6]
    with pytest.raises(ClaimError, match="same quantity"):
        claim.greater("a beats itself", acc, acc, a_label="acc", b_label="acc2")
    # two different quantities that measured the same (a genuine null) are allowed, and such a claim fails
    with pytest.raises(ClaimFailed):
        claim.greater("same values", [0.5, 0.6], [0.5, 0.6], a_label="x", b_label="y")
    with pytest.raises(ClaimError, match="integer constants"):
        claim.greater("steps", 600, 60, a_label="pretraining steps", b_label="fine-tuning steps")
    with pytest.raises(ClaimError, match="pair them"):
        claim.greater("unpaired", [1.0, 2.0, 3.0], [1.0, 2.0], a_label="x", b_label="y")
    with pytest.raises(ClaimError, match="why"):
        claim.greater("no reason", [1.0], [0.0], a_label="x", b_label="y", asserted=False)


def test_reported_only_claims_never_raise(tmp_path, capsys):
    resolve("quick")
    assert claim.greater("only on mnist", [0.1, 0.2], [0.3, 0.3], a_label="x", b_label="y",
                         asserted=False, why="holds on mnist only") is False
    assert "reported only: holds on mnist only" in capsys.readouterr().out
    entry = _saved(tmp_path)["claims"][-1]
    assert entry["asserted"] is False and entry["why_reported_only"] == "holds on mnist only"
    assert claim("plain, reported", False, asserted=False, why="a smoke-size effect") is False


def _batch(tmp_path, name="03_x"):
    return {"out": str(tmp_path), "command": "python -m helpers.run 03", "profile": "quick", "params": {},
            "sweep": {}, "started": "now", "finished": "later", "wall_s": 1.0, "environment": {"python": "3"},
            "runs": [{"name": name, "notebook": name, "status": "ok", "wall_s": 1.0, "peak_rss_mb": 100,
                      "output": f"{name}.ipynb", "input": "in.ipynb", "point": {}, "parameters": {},
                      "results": "test.results.json"}]}


def test_the_report_shows_every_structured_claim_the_same_way(tmp_path):
    from helpers import report
    from helpers.aggregate import claim_fields

    resolve("quick")
    claim.greater("ft beats scratch by > 5 points", [0.9, 0.8, 0.85], [0.7, 0.72, 0.6], 0.05,
                  a_label="full_ft", b_label="scratch", evidence={"budget": 10})
    claim.close("lora within 10% of full", [0.95, 0.97, 0.96], [1.0, 1.0, 1.0], 0.1, relative=True, test="ci",
                a_label="lora", b_label="full")
    claim.above("above chance", 0.5, 0.1, a_label="acc", threshold_label="chance (1/10)",
                asserted=False, why="shown on one dataset only")
    claim("the tokenizer round-trips", True, {"chars": 400})
    saved = _saved(tmp_path)["claims"]

    fields = claim_fields(saved[0])
    assert fields["sides"] == (("full_ft", pytest.approx(0.85)), ("scratch", pytest.approx(2.02 / 3)))
    assert fields["effect"] == pytest.approx(0.53 / 3) and fields["n"] == 3 and fields["margin"] == "> 0.05"
    assert fields["ci95"][0] < fields["effect"] < fields["ci95"][1]
    assert fields["evidence"] == {"budget": 10} and fields["asserted"] == "yes"  # sides not repeated
    cells = report.claim_cells(saved[0])
    assert cells[:3] == ["ft beats scratch by > 5 points", "pass", "full_ft = 0.85 vs scratch = 0.6733"]
    assert cells[3] == "+0.1767 [-0.0404, +0.394]" and cells[4:8] == ["> 0.05", "3", "yes", "budget=10"]
    close = report.claim_cells(saved[1])
    assert close[3].startswith("-0.04 (relative) [") and close[4] == "|effect| <= 0.1 (whole CI)"
    above = report.claim_cells(saved[2])
    assert above[1] == "reported only: holds" and above[2] == "acc = 0.5 vs chance (1/10) = 0.1"
    assert above[3] == "+0.4" and above[5] == "1"  # one seed: no interval
    assert above[6] == "no: shown on one dataset only"
    plain = report.claim_cells(saved[3])
    assert plain == ["the tokenizer round-trips", "pass", "", "", "", "", "yes", "chars=400"]

    batch = _batch(tmp_path)
    results_ = {"03_x": _saved(tmp_path)}
    markdown = report.render_markdown(batch, results_)
    assert "| run | claim | verdict | sides (mean over seeds) | effect [95% CI] | margin | n | asserted | evidence |" in markdown
    assert "| 03_x | ft beats scratch by > 5 points | pass | full_ft = 0.85 vs scratch = 0.6733 | +0.1767 [-0.0404, +0.394] | > 0.05 | 3 | yes | budget=10 |" in markdown
    assert "| no: shown on one dataset only |" in markdown
    html_text = report.render_html(tmp_path, batch, results_)
    assert html_text.count("full_ft = 0.85 vs scratch = 0.6733") == 2  # the batch's claims and the run's
    assert html_text.count("|effect| &lt;= 0.1 (whole CI)") == 2 and "no: shown on one dataset only" in html_text


def test_a_smoke_claim_says_why_it_is_not_asserted(tmp_path):
    from helpers import report

    resolve("smoke")
    claim.greater("tiny", [0.2], [0.3], a_label="x", b_label="y")
    cells = report.claim_cells(_saved(tmp_path)["claims"][0])
    assert cells[1] == "reported only: does not hold" and cells[6] == "no (smoke)"

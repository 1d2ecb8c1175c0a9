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


def test_structured_claims_refuse_comparisons_that_cannot_fail(tmp_path):
    from helpers.claims import ClaimError

    resolve("quick")
    acc = [0.5, 0.6]
    with pytest.raises(ClaimError, match="same quantity"):
        claim.greater("a beats itself", acc, acc, a_label="acc", b_label="acc2")
    with pytest.raises(ClaimError, match="same quantity"):
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

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

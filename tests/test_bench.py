"""``helpers.bench``: the peak is measured on the device the models train on, and MFU divides by it.

GPUs are not available to the tests: the device logic is checked on the CPU with stand-ins for the
timings (the README says what ran on a GPU)."""

from __future__ import annotations

import pytest
import torch

from helpers import bench


def test_matmul_peak_is_measured_on_the_given_device():
    gflops = bench.matmul_peak(torch.float32, size=128, seconds=0.05, device="cpu")
    assert gflops > 0.01
    assert bench.PEAK_SIZE["cpu"] < bench.PEAK_SIZE["cuda"]  # a GPU needs a larger matmul to saturate


@pytest.mark.parametrize("bf16_ok", [True, False])
def test_mfu_uses_the_training_device_peak(monkeypatch, bf16_ok):
    peaks, compared = [], []

    def fake_peak(dtype, size=None, seconds=1.0, device=None):
        peaks.append((dtype, torch.device(device)))
        # the second measurement of each precision comes out higher: MFU must divide by it
        again = sum(d == dtype for d, _ in peaks) > 1
        return {torch.float32: 100.0, torch.bfloat16: 400.0}[dtype] * (1.5 if again else 1.0)

    def fake_compare(make_model, data, task, batch_size, steps, bf16, device, rounds=3, between=None):
        compared.append((task, bf16, device))
        if between is not None:
            between()
        return {"bare_per_s": 1e6, "helpers_per_s": 1e6, "helpers_over_bare": 1.0}

    monkeypatch.setattr(bench, "matmul_peak", fake_peak)
    monkeypatch.setattr(bench, "_compare", fake_compare)
    monkeypatch.setattr(bench, "bf16_supported", lambda device: bf16_ok)
    report = bench.run(steps=2, device="cpu")
    cpu = torch.device("cpu")
    assert report["device"] == "cpu" and all(device == cpu for _, device in peaks)
    assert report["precisions"] == (["fp32", "bf16"] if bf16_ok else ["fp32"])  # no bf16 row without support
    assert all(device == cpu for *_, device in compared) and len(compared) == 2 * len(report["precisions"])
    for precision in report["precisions"]:
        expected = 6 * report["gpt_params"] * 1e6 / (report["matmul_gflops"][precision] * 1e9)
        assert report[f"gpt_{precision}"]["mfu"] == pytest.approx(expected)
        first, *later = report["matmul_gflops_samples"][precision]
        assert later and max(later) > first and report["matmul_gflops"][precision] == max(later)


def test_compare_runs_both_loops_on_the_device():
    images = (torch.rand(2 * 8, 1, 28, 28), torch.randint(0, 10, (2 * 8,)))
    row = bench._compare(lambda: bench.SmallResNet(10, width=4), images, "classify", 8, 2, False,
                         torch.device("cpu"))
    assert row["bare_per_s"] > 0 and row["helpers_per_s"] > 0
    assert len(row["helpers_over_bare_rounds"]) == 3  # one ratio per round, the default 3 rounds
    assert row["helpers_over_bare"] == pytest.approx(sorted(row["helpers_over_bare_rounds"])[1])


def test_paired_ratio_is_not_decided_by_one_fast_minute():
    # the helpers loop is 2% slower in every round; one fast minute fell on bare's second turn only
    bare = [1.00, 0.80, 1.00, 1.00, 1.00]
    helpers = [1.02, 1.02, 1.02, 1.02, 1.02]
    assert min(bare) / min(helpers) == pytest.approx(0.784, abs=1e-3)  # best over best: a 22% "overhead"
    assert bench.paired_ratio(bare, helpers) == pytest.approx(1 / 1.02)
    # and a real overhead is still seen when the machine drifts in between
    assert bench.paired_ratio([1.0, 0.8, 1.2], [1.1, 0.88, 1.32]) == pytest.approx(1 / 1.1)
    with pytest.raises(ValueError, match="one helpers time per bare time"):
        bench.paired_ratio([1.0], [1.0, 1.0])


def test_a_missing_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--steps", "2"])


def test_full_is_sized_for_one_gpu_and_larger_than_quick():
    """`full`'s models and data fit one modern GPU with room to spare (weights, gradients and two
    AdamW moments in fp32 = 16 bytes per parameter; the glyphs as float32), and it is no smaller
    than `quick` anywhere that sets a size."""
    from helpers.config import PROFILES
    from helpers.models import SmallResNet, count_parameters, tiny_gpt

    full, quick = PROFILES["full"], PROFILES["quick"]
    cnn = count_parameters(SmallResNet(full["glyph_classes"], width=full["width"]))
    gpt = count_parameters(tiny_gpt(full["vocab_size"], n_positions=full["seq_len"], n_embd=full["gpt_width"],
                                    n_layer=full["gpt_layers"], n_head=full["gpt_heads"]))
    training_state_gb = 16 * (cnn + gpt) / 2**30
    glyphs_gb = full["glyph_classes"] * full["glyphs_per_class"] * 28 * 28 * 4 / 2**30
    assert 1e6 < gpt < 5e7 and training_state_gb < 1 and glyphs_gb < 4
    for knob in ("glyph_classes", "glyphs_per_class", "vocab_size", "seq_len", "epochs", "batch_size",
                 "width", "gpt_width", "gpt_layers", "lm_epochs", "pretrain_epochs", "finetune_steps", "seeds"):
        assert full[knob] >= quick[knob], knob


def _report(gpt_fp32: float, gpt_bf16: float, ratio: float = 1.0, peaks=(300.0, 1000.0)) -> dict:
    row = lambda speed: {"bare_per_s": speed, "helpers_per_s": speed * ratio, "helpers_over_bare": ratio,  # noqa: E731
                         "mfu": 6 * 1e6 * speed * ratio / (peaks[0] * 1e9)}
    return {"precisions": ["fp32", "bf16"], "matmul_gflops": {"fp32": peaks[0], "bf16": peaks[1]},
            "cnn_fp32": row(100.0), "cnn_bf16": row(150.0), "gpt_fp32": row(gpt_fp32), "gpt_bf16": row(gpt_bf16),
            "cnn_params": 1e5, "gpt_params": 1e6, "device": "cpu", "torch": "x", "threads": 2}


def test_targets_check_the_speedup_and_loop_overhead():
    report = _report(10_000.0, 16_000.0)  # bf16 1.6x fp32, the bf16 peak 3.3x fp32's
    checks = {c["target"]: c for c in bench.targets(report)}
    assert checks["gpt bf16 speed-up over fp32"]["value"] == pytest.approx(1.6)
    assert bench.gpt_target_met(list(checks.values()))
    assert all(checks[f"{m}_{p} helpers/bare"]["met"] for m in ("cnn", "gpt") for p in ("fp32", "bf16"))
    slow = bench.targets(_report(10_000.0, 12_000.0, ratio=0.9))  # 1.2x and a loop at 0.9 of bare
    assert not bench.gpt_target_met(slow) and not any(c["met"] for c in slow if "helpers/bare" in c["target"])
    # where bf16's peak is not 2x fp32's, the speed-up is not asked for (MFU alone decides)
    flat = bench.targets(_report(10_000.0, 16_000.0, peaks=(300.0, 400.0)))
    assert not any("speed-up" in c["target"] for c in flat)
    assert "| gpt bf16 speed-up over fp32 | 1.6 | 1.5 | yes |" in bench.bench_markdown({**report, "targets": list(checks.values())})


def test_notebook_times_take_each_notebooks_newest_plain_quick_run(tmp_path):
    import json

    def batch(name, profile, runs, mtime, jobs=1, wall=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "batch.json").write_text(json.dumps({"profile": profile, "params": {}, "jobs": jobs,
                                                       "wall_s": wall, "runs": runs}))
        import os
        os.utime(folder / "batch.json", (mtime, mtime))

    def run(stem, seconds, status="ok", point=None):
        return {"name": stem, "notebook": stem, "status": status, "wall_s": seconds, "point": point or {},
                "sections": [{"section": "kernel start", "seconds": 1.0}, {"section": "1 · Train", "seconds": seconds - 1}]}

    batch("old", "quick", [run("03_finetune_cnn", 50.0), run("02_pretrain_transformer", 30.0)], 1000)
    batch("new", "quick", [run("03_finetune_cnn", 70.0), run("02_pretrain_transformer", 5.0, "failed"),
                           run("05_forgetting", 1.0, point={"finetune_steps": 2})], 2000)
    batch("smoke", "smoke", [run("03_finetune_cnn", 2.0)], 3000)
    rows = bench.notebook_times(tmp_path)
    assert [(r["notebook"], r["seconds"], r["batch"]) for r in rows] == [
        ("02_pretrain_transformer", 30.0, "old"), ("03_finetune_cnn", 70.0, "new")]  # failed, smoke, fewer steps: skipped
    assert rows[1]["budget_s"] == bench.BUDGETS_S["03"] and rows[1]["within_budget"] == (70.0 <= bench.BUDGETS_S["03"])
    text = bench.notebook_markdown(rows)
    assert "| 03_finetune_cnn | 70.0 | 1 |" in text and "1 · Train 69.0 s" in text
    assert "| all (estimated: " in text and "| 100.0 | | 600 | not judged: no quick run of 00, 01, 04" in text
    assert sum(bench.BUDGETS_S.values()) <= bench.WORKBOOK_BUDGET_S  # the notebooks' budgets fit the workbook's


def test_notebook_budgets_scale_with_notebooks_at_a_time(tmp_path):
    """Two notebooks at a time, each on half the cores, may each take twice its share of the wall
    budget; the workbook is judged on the batch's own wall time, not on the sum of its notebooks."""
    import json

    share = bench.BUDGETS_S["02"]
    times = {key: 1.0 for key in bench.BUDGETS_S} | {"02": 1.5 * share, "03": 400.0}
    runs = [{"name": f"{key}_nb", "notebook": f"{key}_nb", "status": "ok", "wall_s": seconds, "point": {},
             "sections": []} for key, seconds in times.items()]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "batch.json").write_text(json.dumps({"profile": "quick", "params": {}, "jobs": 2,
                                                           "wall_s": 590.0, "runs": runs}))
    rows = bench.notebook_times(tmp_path)
    by_key = {r["notebook"][:2]: r for r in rows}
    assert [by_key[k]["allowed_s"] for k in ("02", "03")] == [2 * share, 2 * bench.BUDGETS_S["03"]]
    assert [by_key[k]["within_budget"] for k in ("02", "03")] == [True, False]  # 1.5x its share fits at 2 at a time
    assert bench.workbook_wall(rows) == (590.0, True)
    assert "| all (the batch's wall time) | 590.0 | | 600 | yes |" in bench.notebook_markdown(rows)
    for row in rows:
        row["batch_wall_s"] = 700.0
    assert "| 700.0 | | 600 | **no** |" in bench.notebook_markdown(rows)
    for row in rows:  # a sweep ran each notebook twice: its wall time is not one workbook's
        row["batch_runs"] = 2 * len(rows)
    assert bench.workbook_wall(rows)[1] is False


def test_notebooks_only_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "repo_root", lambda: tmp_path)
    assert bench.main(["--notebooks-only"]) == 0
    assert "no successful quick-profile notebook run" in capsys.readouterr().out
    assert (tmp_path / "runs" / "bench" / "notebooks.md").is_file()
    with pytest.raises(SystemExit):
        bench.main(["--notebooks-only", "--loops-only"])

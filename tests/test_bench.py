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
        return {torch.float32: 100.0, torch.bfloat16: 400.0}[dtype]

    def fake_compare(make_model, data, task, batch_size, steps, bf16, device):
        compared.append((task, bf16, device))
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


def test_compare_runs_both_loops_on_the_device():
    images = (torch.rand(2 * 8, 1, 28, 28), torch.randint(0, 10, (2 * 8,)))
    row = bench._compare(lambda: bench.SmallResNet(10, width=4), images, "classify", 8, 2, False,
                         torch.device("cpu"))
    assert row["bare_per_s"] > 0 and row["helpers_per_s"] > 0


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

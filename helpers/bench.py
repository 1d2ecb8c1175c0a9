"""Performance yardstick: is the shared training loop as fast as a bare PyTorch loop?

``python -m helpers.bench`` (or ``make bench``) measures on this machine:

* the matmul peak in fp32 and bf16 (GFLOP/s), the ceiling any model can reach;
* a small CNN and a tiny GPT trained by :func:`helpers.train.train` and by a bare hand-written
  loop on the same data, in examples (or tokens) per second, fp32 and bf16 autocast;
* model FLOPs utilisation (MFU): achieved training FLOP/s over the matmul peak, with the standard
  estimate training FLOPs = 6 x parameters x tokens for the transformer.

Results are printed as ratios (timings on shared machines are noisy; ratios within one run are
not) and written to ``runs/bench/bench.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .checkpoints import atomic_write_json, repo_root
from .models import SmallResNet, count_parameters, tiny_gpt
from .train import _forward, train


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 1.0) -> float:
    """Sustained GFLOP/s of a square matmul in ``dtype`` on the CPU."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def bare_loop(model: torch.nn.Module, batches: list[Any], task: str, bf16: bool) -> float:
    """The simplest correct training loop; returns seconds for all ``batches``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if task == "lm":
                logits = _forward(model, batch[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))
            else:
                loss = F.cross_entropy(model(batch[0]).float(), batch[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _compare(make_model: Callable[[], torch.nn.Module], data: Any, task: str, batch_size: int,
             steps: int, bf16: bool) -> dict[str, float]:
    n = steps * batch_size
    if task == "lm":
        data = data[:n]
        batches = [data[i:i + batch_size] for i in range(0, n, batch_size)]
        per_example = data.shape[1] - 1
    else:
        data = (data[0][:n], data[1][:n])
        batches = [(data[0][i:i + batch_size], data[1][i:i + batch_size]) for i in range(0, n, batch_size)]
        per_example = 1
    bare_loop(make_model(), batches[:2], task, bf16)  # warm-up (allocator, kernels)

    def helpers_loop() -> float:
        start = time.perf_counter()
        train(make_model(), data, task=task, epochs=1, batch_size=batch_size, lr=1e-3, bf16=bf16,
              progress=False, grad_clip=1.0)
        return time.perf_counter() - start

    # Alternate the two and keep each one's best time: other load on the machine hits both alike.
    bare, helpers_time = float("inf"), float("inf")
    for _ in range(2):
        bare = min(bare, bare_loop(make_model(), batches, task, bf16))
        helpers_time = min(helpers_time, helpers_loop())
    return {"bare_per_s": n * per_example / bare, "helpers_per_s": n * per_example / helpers_time,
            "helpers_over_bare": bare / helpers_time}


def run(steps: int = 30, threads: int = 0) -> dict[str, Any]:
    """Measure everything; returns the numbers (also written to runs/bench/bench.json)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    report: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                              "matmul_gflops": peak}

    images = (torch.rand(steps * 128, 1, 28, 28), torch.randint(0, 10, (steps * 128,)))
    cnn = lambda: SmallResNet(10, width=16)  # noqa: E731
    cnn_params = count_parameters(cnn())
    for precision in ("fp32", "bf16"):
        report[f"cnn_{precision}"] = _compare(cnn, images, "classify", 128, steps, precision == "bf16")
    report["cnn_params"] = cnn_params

    vocab, seq = 2000, 128
    gpt = lambda: tiny_gpt(vocab, n_positions=seq, n_embd=128, n_layer=4, n_head=4)  # noqa: E731
    gpt_params = count_parameters(gpt())
    tokens = torch.randint(0, vocab, (steps * 32, seq + 1))
    for precision in ("fp32", "bf16"):
        row = _compare(gpt, tokens, "lm", 32, max(steps // 3, 2), precision == "bf16")
        row["mfu"] = 6 * gpt_params * row["helpers_per_s"] / (peak[precision] * 1e9)
        report[f"gpt_{precision}"] = row
    report["gpt_params"] = gpt_params
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement (>= 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps={args.steps} is not allowed: expected an integer >= 2")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} is not allowed: expected an integer >= 0")
    report = run(args.steps, args.threads)
    peak = report["matmul_gflops"]
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"({report['threads']} threads)")
    for name, unit, params in (("cnn", "img/s", report["cnn_params"]), ("gpt", "tok/s", report["gpt_params"])):
        for precision in ("fp32", "bf16"):
            row = report[f"{name}_{precision}"]
            mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
            print(f"{name} ({params / 1e6:.2f}M params) {precision}: bare {row['bare_per_s']:.0f} {unit}, "
                  f"helpers.train {row['helpers_per_s']:.0f} {unit} "
                  f"(helpers/bare = {row['helpers_over_bare']:.2f}){mfu}")
    out = repo_root() / "runs" / "bench" / "bench.json"
    atomic_write_json(out, report)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

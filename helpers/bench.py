"""Performance yardstick: is the shared training loop as fast as a bare PyTorch loop?

``python -m helpers.bench`` (or ``make bench``) measures on this machine's training device (a CUDA
GPU when there is one, else Apple's GPU, else the CPU; ``--device cpu`` to choose):

* that device's matmul peak in fp32 and bf16 (GFLOP/s), the ceiling any model can reach there
  (bf16 only where the device supports it natively);
* a small CNN and a tiny GPT trained by :func:`helpers.train.train` and by a bare hand-written
  loop on the same data, in examples (or tokens) per second, fp32 and bf16 autocast;
* model FLOPs utilisation (MFU): achieved training FLOP/s over the *same device's* measured matmul
  peak (never a CPU peak for a GPU run, nor a datasheet number), with the standard estimate training
  FLOPs = 6 x parameters x tokens for the transformer.

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
from .config import pick_device
from .models import SmallResNet, count_parameters, tiny_gpt
from .train import _forward, bf16_supported, train

# A matmul big enough to reach the device's peak: small on a CPU, large on a GPU (an H100/H200
# needs thousands of rows before launch overheads stop counting).
PEAK_SIZE = {"cpu": 1024, "mps": 4096, "cuda": 8192}


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (GPU kernels run asynchronously, so a
    timer read without this measures the launch, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(dtype: torch.dtype = torch.float32, size: int | None = None, seconds: float = 1.0,
                device: torch.device | str | None = None) -> float:
    """Sustained GFLOP/s of a square ``size`` x ``size`` matmul in ``dtype`` on ``device`` (default:
    the device training would use, :func:`helpers.config.pick_device`; ``size`` default from
    :data:`PEAK_SIZE`). MFU divides by this, measured on the device the model trains on."""
    device = torch.device(device) if device is not None else pick_device("auto")
    size = size or PEAK_SIZE.get(device.type, 1024)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up (kernel selection, allocator)
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        if device.type != "cpu" and runs % 10 == 0:
            synchronize(device)  # keep the queue short so the clock follows the work
    synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def bare_loop(model: torch.nn.Module, batches: list[Any], task: str, bf16: bool) -> float:
    """The simplest correct training loop; returns seconds for all ``batches`` (on the model's device)."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if task == "lm":
                logits = _forward(model, batch[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))
            else:
                loss = F.cross_entropy(model(batch[0]).float(), batch[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def _compare(make_model: Callable[[], torch.nn.Module], data: Any, task: str, batch_size: int,
             steps: int, bf16: bool, device: torch.device = torch.device("cpu")) -> dict[str, float]:
    n = steps * batch_size
    build = make_model
    make_model = lambda: build().to(device)  # noqa: E731
    if task == "lm":
        data = data[:n].to(device)
        batches = [data[i:i + batch_size] for i in range(0, n, batch_size)]
        per_example = data.shape[1] - 1
    else:
        data = (data[0][:n].to(device), data[1][:n].to(device))
        batches = [(data[0][i:i + batch_size], data[1][i:i + batch_size]) for i in range(0, n, batch_size)]
        per_example = 1
    bare_loop(make_model(), batches[:2], task, bf16)  # warm-up (allocator, kernels)

    def helpers_loop() -> float:
        model = make_model()
        synchronize(device)
        start = time.perf_counter()
        train(model, data, task=task, epochs=1, batch_size=batch_size, lr=1e-3, bf16=bf16,
              progress=False, grad_clip=1.0, device=device)
        synchronize(device)
        return time.perf_counter() - start

    # Alternate the two and keep each one's best time: other load on the machine hits both alike.
    bare, helpers_time = float("inf"), float("inf")
    for _ in range(2):
        bare = min(bare, bare_loop(make_model(), batches, task, bf16))
        helpers_time = min(helpers_time, helpers_loop())
    return {"bare_per_s": n * per_example / bare, "helpers_per_s": n * per_example / helpers_time,
            "helpers_over_bare": bare / helpers_time}


def device_name(device: torch.device) -> str:
    """``cpu``, or the GPU's name (``cuda: NVIDIA H200``)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def run(steps: int = 30, threads: int = 0, device: str = "auto", peak_seconds: float = 1.0) -> dict[str, Any]:
    """Measure everything on ``device`` (``auto``: :func:`helpers.config.pick_device`); returns the
    numbers (``main`` also writes them to runs/bench/bench.json). MFU uses the peak measured here,
    on the same device; bf16 rows only where that device supports bf16 natively."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    target = pick_device(device)
    precisions = ["fp32", "bf16"] if bf16_supported(target) else ["fp32"]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak = {p: matmul_peak(dtypes[p], seconds=peak_seconds, device=target) for p in precisions}
    report: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                              "device": device_name(target), "precisions": precisions,
                              "matmul_gflops": peak}
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)

    images = (torch.rand(steps * 128, 1, 28, 28), torch.randint(0, 10, (steps * 128,)))
    cnn = lambda: SmallResNet(10, width=16)  # noqa: E731
    cnn_params = count_parameters(cnn())
    for precision in precisions:
        report[f"cnn_{precision}"] = _compare(cnn, images, "classify", 128, steps, precision == "bf16", target)
    report["cnn_params"] = cnn_params

    vocab, seq = 2000, 128
    gpt = lambda: tiny_gpt(vocab, n_positions=seq, n_embd=128, n_layer=4, n_head=4)  # noqa: E731
    gpt_params = count_parameters(gpt())
    tokens = torch.randint(0, vocab, (steps * 32, seq + 1))
    for precision in precisions:
        row = _compare(gpt, tokens, "lm", 32, max(steps // 3, 2), precision == "bf16", target)
        row["mfu"] = 6 * gpt_params * row["helpers_per_s"] / (peak[precision] * 1e9)
        report[f"gpt_{precision}"] = row
    report["gpt_params"] = gpt_params
    if target.type == "cuda":
        report["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(target) / 2**20
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement (>= 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="where to measure (auto: cuda > mps > cpu)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps={args.steps} is not allowed: expected an integer >= 2")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} is not allowed: expected an integer >= 0")
    try:
        report = run(args.steps, args.threads, args.device)
    except ValueError as err:  # --device cuda without a GPU
        parser.error(str(err))
    peak = report["matmul_gflops"]
    print(f"matmul peak on {report['device']}: "
          + ", ".join(f"{p} {peak[p]:.0f} GFLOP/s" for p in report["precisions"])
          + f" ({report['threads']} CPU threads)")
    for name, unit, params in (("cnn", "img/s", report["cnn_params"]), ("gpt", "tok/s", report["gpt_params"])):
        for precision in report["precisions"]:
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

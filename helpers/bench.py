"""Performance yardstick: is the shared training loop as fast as a bare PyTorch loop?

``python -m helpers.bench`` (or ``make bench``) measures on this machine's training device (a CUDA
GPU when there is one, else Apple's GPU, else the CPU; ``--device cpu`` to choose):

* that device's matmul peak in fp32 and bf16 (GFLOP/s), the ceiling any model can reach there
  (bf16 only where the device supports it natively);
* a small CNN and a tiny GPT trained by :func:`helpers.train.train` and by a bare hand-written
  loop on the same data, in examples (or tokens) per second, fp32 and bf16 autocast;
* model FLOPs utilisation (MFU): achieved training FLOP/s over the *same device's* measured matmul
  peak (never a CPU peak for a GPU run, nor a datasheet number; the best of the samples taken at the
  start and between the GPT's timed turns), with the standard estimate training
  FLOPs = 6 x parameters x tokens for the transformer.

Results are printed as ratios (timings on shared machines are noisy; ratios within one run are
not) and written to ``runs/bench/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from .checkpoints import atomic_write_bytes, atomic_write_json, repo_root
from .config import pick_device
from .models import SmallResNet, count_parameters, tiny_gpt
from .text.lm import FAST_GPT
from .train import _forward, attention_kernels, bf16_supported, fused_adam, train

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
    """The simplest correct training loop; returns seconds for all ``batches`` (on the model's device).

    It picks the same attention kernels as :func:`helpers.train.train`
    (:func:`helpers.train.attention_kernels`): which kernel computes attention belongs to the model,
    so helpers/bare measures the loop's own overhead only; for the same reason it uses the same
    optimizer kernel (:func:`helpers.train.fused_adam`)."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **fused_adam(device))
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        with attention_kernels(device, bf16), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
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
             steps: int, bf16: bool, device: torch.device = torch.device("cpu"), rounds: int = 3,
             between: Callable[[], None] | None = None) -> dict[str, Any]:
    """Examples (or tokens) per second of :func:`helpers.train.train` and of :func:`bare_loop` on the
    same ``steps`` batches, in ``rounds`` rounds of one turn each (each loop's best turn kept), and
    helpers/bare as :func:`paired_ratio` of the rounds; ``between`` (if given) runs after every round
    (the GPT rows sample the matmul peak there)."""
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

    # Alternate the two, swapping which goes first each round (neither always runs on a warmer
    # machine). Throughput is each loop's best turn; the overhead ratio is taken within each round,
    # between two turns a second apart, and the median over rounds is kept (paired_ratio).
    bare_times: list[float] = []
    helpers_times: list[float] = []
    for i in range(rounds):
        if i % 2:
            helpers_times.append(helpers_loop())
            bare_times.append(bare_loop(make_model(), batches, task, bf16))
        else:
            bare_times.append(bare_loop(make_model(), batches, task, bf16))
            helpers_times.append(helpers_loop())
        if between is not None:
            between()
    return {"bare_per_s": n * per_example / min(bare_times), "helpers_per_s": n * per_example / min(helpers_times),
            "helpers_over_bare": paired_ratio(bare_times, helpers_times),
            "helpers_over_bare_rounds": [b / h for b, h in zip(bare_times, helpers_times)]}


def paired_ratio(bare_times: list[float], helpers_times: list[float]) -> float:
    """helpers/bare speed: the median over rounds of ``bare / helpers`` time, each round's two turns
    run back to back.

    Why not each loop's best turn over the other's: a shared machine's speed moves from one minute
    to the next (1.4x between two runs a minute apart here), and a best-of picks each loop's
    luckiest moment on its own, so one fast minute that fell on one loop's turn decides the ratio
    (best-over-best helpers/bare moved 0.87-1.10 between runs minutes apart, while the helpers loop's
    extra ops -- clipping, shuffling, accuracy -- cost ~0.5 ms of a 14-24 ms CNN step in the profiler).
    Within a round both turns see the same machine; the median drops a round that a burst of other
    work split."""
    if not bare_times or len(bare_times) != len(helpers_times):
        raise ValueError(f"paired_ratio needs one helpers time per bare time, got {len(bare_times)} "
                         f"and {len(helpers_times)}")
    return statistics.median(b / h for b, h in zip(bare_times, helpers_times))


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
        # a CNN turn lasts well under a second, so one round is noise: the median of 9 rounds
        report[f"cnn_{precision}"] = _compare(cnn, images, "classify", 128, steps, precision == "bf16", target,
                                              rounds=9)
    report["cnn_params"] = cnn_params

    vocab, seq = 2000, 128
    # the workbook's own GPT settings (helpers.text.lm.FAST_GPT: no key/value cache while training,
    # GELU as one fused kernel), at the reference shape of notebook 02's throughput table
    gpt = lambda: tiny_gpt(vocab, n_positions=seq, n_embd=128, n_layer=4, n_head=4, **FAST_GPT)  # noqa: E731
    gpt_params = count_parameters(gpt())
    tokens = torch.randint(0, vocab, (steps * 32, seq + 1))
    # A shared machine's sustained speed drifts within minutes (here up to 1.4x between two runs a
    # minute apart, 1.8x between hours): each GPT row keeps its best of five turns, and its MFU
    # divides by the best peak seen from the start to that row's last turn, sampled between turns,
    # so that a throughput from a fast minute is never set against a peak from a slow one.
    samples: dict[str, list[float]] = {p: [peak[p]] for p in precisions}
    for precision in precisions:
        sample = lambda p=precision: samples[p].append(  # noqa: E731
            matmul_peak(dtypes[p], seconds=peak_seconds / 2, device=target))
        row = _compare(gpt, tokens, "lm", 32, max(steps // 3, 2), precision == "bf16", target, rounds=5,
                       between=sample)
        peak[precision] = max(samples[precision])
        row["mfu"] = 6 * gpt_params * row["helpers_per_s"] / (peak[precision] * 1e9)
        report[f"gpt_{precision}"] = row
    report["matmul_gflops_samples"] = samples
    report["gpt_params"] = gpt_params
    if target.type == "cuda":
        report["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(target) / 2**20
    return report


#: What ``make bench`` checks (issue 15): the tiny GPT at >= 50% MFU of its precision's peak, or
#: bf16 >= 1.5x as fast as fp32 where the bf16 matmul peak is >= 2x fp32's; the helpers loop at
#: >= 0.95 of a bare loop's speed in every row.
TARGET_MFU, TARGET_BF16_SPEEDUP, PEAK_RATIO_FOR_SPEEDUP, TARGET_HELPERS_OVER_BARE = 0.50, 1.5, 2.0, 0.95


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target of :data:`TARGET_MFU` & co. checked on a :func:`run` report: name, measured
    value, what it must reach, whether it does."""
    checks = [{"target": f"{name}_{p} helpers/bare", "value": report[f"{name}_{p}"]["helpers_over_bare"],
               "needed": TARGET_HELPERS_OVER_BARE} for name in ("cnn", "gpt") for p in report["precisions"]]
    best_mfu = max(report[f"gpt_{p}"]["mfu"] for p in report["precisions"])
    checks.append({"target": "gpt MFU (best precision)", "value": best_mfu, "needed": TARGET_MFU})
    peak = report["matmul_gflops"]
    if "bf16" in peak and peak["bf16"] >= PEAK_RATIO_FOR_SPEEDUP * peak["fp32"]:
        speedup = report["gpt_bf16"]["helpers_per_s"] / report["gpt_fp32"]["helpers_per_s"]
        checks.append({"target": "gpt bf16 speed-up over fp32", "value": speedup, "needed": TARGET_BF16_SPEEDUP})
    for check in checks:
        check["met"] = check["value"] >= check["needed"]
    return checks


def gpt_target_met(checks: list[dict[str, Any]]) -> bool:
    """The GPT target: MFU, *or* the bf16 speed-up where it applies."""
    return any(c["met"] for c in checks if c["target"].startswith("gpt MFU") or "speed-up" in c["target"])


def bench_markdown(report: Mapping[str, Any]) -> str:
    """The loop benchmark as markdown (``runs/bench/bench.md``)."""
    peak = report["matmul_gflops"]
    lines = [f"# Training-loop benchmark on {report['device']}", "",
             f"torch {report['torch']}, {report['threads']} CPU threads; matmul peak "
             + ", ".join(f"{p} {peak[p]:.0f} GFLOP/s" for p in report["precisions"]) + ".", "",
             "| model | precision | bare (/s) | helpers.train (/s) | helpers/bare | MFU |", "|---|---|---|---|---|---|"]
    for name, unit in (("cnn", "img"), ("gpt", "tok")):
        for p in report["precisions"]:
            row = report[f"{name}_{p}"]
            mfu = f"{row['mfu']:.1%}" if "mfu" in row else ""
            lines.append(f"| {name} ({report[name + '_params'] / 1e6:.2f}M) | {p} | {row['bare_per_s']:.0f} {unit} | "
                         f"{row['helpers_per_s']:.0f} {unit} | {row['helpers_over_bare']:.2f} | {mfu} |")
    lines += ["", "| target | measured | needed | met |", "|---|---|---|---|"]
    lines += [f"| {c['target']} | {c['value']:.3g} | {c['needed']:g} | {'yes' if c['met'] else '**no**'} |"
              for c in report.get("targets", [])]
    return "\n".join(lines) + "\n"


# --- notebook times against their budgets ----------------------------------------------------------

#: Quick-profile budget of each notebook: its share, in seconds, of the workbook's promise that a cold
#: ``make run`` (nothing cached, 2 cores) finishes within :data:`WORKBOOK_BUDGET_S` of wall time; a
#: notebook not named here gets :data:`DEFAULT_BUDGET_S`. Edit these, not the code, when the promise
#: changes. The shares are those of each notebook's time in the cold quick run of 2026-12-03 around
#: 06:00 UTC (809 notebook-seconds at seed 0, two notebooks at a time), rounded to add up to 600 s.
#: A batch that runs ``jobs`` notebooks at a time gives each notebook ``jobs`` x its share in
#: notebook-seconds (each one has 1/jobs of the cores, and ``jobs`` of them run at once).
BUDGETS_S: dict[str, float] = {"00": 10.0, "01": 50.0, "02": 145.0, "03": 45.0, "04": 60.0, "05": 60.0,
                               "06": 40.0, "07": 15.0, "08": 60.0, "09": 40.0, "10": 65.0, "11": 10.0}
WORKBOOK_BUDGET_S = 600.0
DEFAULT_BUDGET_S = 60.0
#: Parameters that change where a notebook runs or which seed, not how much work it does: an
#: execution with only these set still counts as the notebook's quick time.
NEUTRAL_PARAMS = ("seed", "threads", "device", "target_dataset")


def notebook_key(notebook: str) -> str:
    """The key of ``notebook`` (a stem such as ``03_finetune_cnn``) in :data:`BUDGETS_S`: ``"03"``."""
    return notebook.split("_", 1)[0]


def budget_s(notebook: str) -> float:
    """The quick budget of ``notebook`` (a stem such as ``03_finetune_cnn``), from :data:`BUDGETS_S`."""
    return BUDGETS_S.get(notebook_key(notebook), DEFAULT_BUDGET_S)


def notebook_times(runs: Path | None = None, profile: str = "quick") -> list[dict[str, Any]]:
    """Each notebook's newest successful ``profile`` execution among the batches in ``runs``
    (default ``runs/`` of the repository): seconds, budget, where the time went (the runner's
    :func:`helpers.execute.time_profile`) and which batch it comes from.

    Only executions whose parameters are :data:`NEUTRAL_PARAMS` count (a run with fewer steps is not
    the notebook's quick time). One row per notebook, in notebook order.
    """
    runs = runs or repo_root() / "runs"
    newest: dict[str, dict[str, Any]] = {}
    for index in sorted(runs.glob("*/batch.json"), key=lambda p: p.stat().st_mtime):
        try:
            batch = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if batch.get("profile") != profile:
            continue
        given = {**(batch.get("params") or {})}
        for run in batch.get("runs", []):
            point = {**given, **(run.get("point") or {})}
            if run.get("status") != "ok" or run.get("wall_s") is None or set(point) - set(NEUTRAL_PARAMS):
                continue
            notebook = run.get("notebook") or run["name"].split("__")[0]
            newest[notebook] = {
                "notebook": notebook, "seconds": float(run["wall_s"]), "budget_s": budget_s(notebook),
                "sections": run.get("sections") or [], "batch": index.parent.name,
                "finished": run.get("finished"), "params": point,
                "jobs": batch.get("jobs") or 1, "batch_wall_s": batch.get("wall_s"),
                "batch_runs": len(batch.get("runs") or []),
                "threads": (batch.get("environment") or {}).get("torch threads")}
    rows = [newest[name] for name in sorted(newest)]
    for row in rows:
        row["allowed_s"] = row["budget_s"] * row["jobs"]
        row["within_budget"] = row["seconds"] <= row["allowed_s"]
    return rows


def workbook_wall(rows: list[dict[str, Any]]) -> tuple[float, bool]:
    """The wall time the rows stand for, and whether it was measured: the batch's own wall time
    when every row comes from one batch that recorded it and ran nothing else (not a sweep), else
    each notebook's seconds divided by the number of notebooks its batch ran at a time, summed (an
    estimate)."""
    batches = {r["batch"] for r in rows}
    if len(batches) == 1 and rows[0].get("batch_wall_s") and rows[0].get("batch_runs") == len(rows):
        return float(rows[0]["batch_wall_s"]), True
    return sum(r["seconds"] / r["jobs"] for r in rows), False


def _sections_text(sections: list[dict[str, Any]], top: int = 4) -> str:
    """The ``top`` largest entries of a time profile, largest first: ``kernel start 3.1 s; 1 · ...``."""
    largest = sorted(sections, key=lambda e: -e["seconds"])[:top]
    return "; ".join(f"{e['section']} {e['seconds']:.1f} s" for e in largest)


def notebook_markdown(rows: list[dict[str, Any]], profile: str = "quick") -> str:
    """The notebook-times table as markdown: time against budget, where it went, from which batch."""
    wall, measured = workbook_wall(rows)
    how = ("the batch's wall time" if measured else
           "estimated: each notebook's seconds over the notebooks its batch ran at a time, summed")
    lines = [f"# Notebook times ({profile} profile)", "",
             f"Each notebook's newest successful {profile} execution under runs/. Its budget is its share "
             f"of the workbook's {WORKBOOK_BUDGET_S:.0f} s of wall time (helpers.bench.BUDGETS_S), times "
             f"the notebooks its batch ran at a time (two at a time, each has half the cores for twice "
             f"as long). These are the times of whatever batch ran last (cold or warm store, a quiet or "
             f"a busy machine), so compare two of them only when they ran alike.", "",
             "| notebook | seconds | at a time | allowed | within | largest parts | batch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['notebook']} | {r['seconds']:.1f} | {r['jobs']} | {r['allowed_s']:.0f} | "
                     f"{'yes' if r['within_budget'] else '**no**'} | {_sections_text(r['sections'])} | "
                     f"{r['batch']} |")
    missing = sorted(set(BUDGETS_S) - {notebook_key(r["notebook"]) for r in rows})
    verdict = ("yes" if wall <= WORKBOOK_BUDGET_S else "**no**") if not missing else \
        f"not judged: no quick run of {', '.join(missing)}"
    lines.append(f"| all ({how}) | {wall:.1f} | | {WORKBOOK_BUDGET_S:.0f} | {verdict} | | |")
    return "\n".join(lines) + "\n"


def notebooks_main(runs: Path, out: Path, execute: bool, threads: int) -> None:
    """The notebook part of ``make bench``: with ``execute``, first run every notebook in quick
    (``python -m helpers.run``, one at a time) into a new batch; then tabulate each notebook's
    newest quick time against its budget into ``out``/notebooks.json and notebooks.md."""
    if execute:
        from . import run as runner

        runner.main(["--profile", "quick", *(["-p", f"threads={threads}"] if threads else [])])
    rows = notebook_times(runs)
    wall, measured = workbook_wall(rows) if rows else (0.0, False)
    atomic_write_json(out / "notebooks.json", {"workbook_budget_s": WORKBOOK_BUDGET_S, "workbook_wall_s": wall,
                                               "wall_measured": measured, "rows": rows})
    text = notebook_markdown(rows)
    atomic_write_bytes(out / "notebooks.md", text.encode("utf-8"))
    if rows:
        print(text)
    else:
        print(f"no successful quick-profile notebook run under {runs}: run `make run` (or "
              f"`python -m helpers.bench --run-notebooks`) first")
    print(f"written: {out / 'notebooks.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement (>= 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="where to measure (auto: cuda > mps > cpu)")
    parser.add_argument("--notebooks-only", action="store_true",
                        help="skip the loop benchmark; only tabulate the notebooks' quick times")
    parser.add_argument("--loops-only", action="store_true",
                        help="skip the notebooks' quick times; only the loop benchmark")
    parser.add_argument("--run-notebooks", action="store_true",
                        help="execute every notebook in quick first (python -m helpers.run), then "
                             "tabulate those times (default: the newest quick batch under runs/)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps={args.steps} is not allowed: expected an integer >= 2")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} is not allowed: expected an integer >= 0")
    if args.notebooks_only and args.loops_only:
        parser.error("--notebooks-only and --loops-only both given: choose one (or neither for both)")
    out = repo_root() / "runs" / "bench"
    if not args.notebooks_only:
        try:
            report = run(args.steps, args.threads, args.device)
        except ValueError as err:  # --device cuda without a GPU
            parser.error(str(err))
        report["targets"] = targets(report)
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
        for check in report["targets"]:
            print(f"target {check['target']}: {check['value']:.3g} (needed >= {check['needed']:g}): "
                  f"{'met' if check['met'] else 'NOT met'}")
        atomic_write_json(out / "bench.json", report)
        atomic_write_bytes(out / "bench.md", bench_markdown(report).encode("utf-8"))
        print(f"written: {out / 'bench.json'}, {out / 'bench.md'}")
    if not args.loops_only:
        notebooks_main(repo_root() / "runs", out, args.run_notebooks, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

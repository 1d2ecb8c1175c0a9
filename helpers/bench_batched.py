"""Does training many fine-tuning runs together pay? 03's grid, one at a time vs :mod:`helpers.batched`.

``python -m helpers.bench_batched --threads 1`` times notebook 03's fine-tuning grid (the profile's
``curve_methods`` x ``budgets`` plus every method at ``compare_budget``, x ``seeds``) on the real
target task, both ways, in one process, alternating: ``vision.finetune_grid``'s loop (``finetune``
then ``evaluate`` on the test and shifted sets per run) and ``batched.finetune_many`` +
``batched.evaluate_many``. The "pretrained" network is a freshly initialised one of the same shape:
the time of a step does not depend on the weights' values, and nothing is read from or written to the
checkpoint store. Prints a table of seconds per group of same-shaped runs and the overall ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Mapping, Sequence

import torch


def grid(params: Mapping[str, Any], budgets: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """03's (method, budget) pairs for ``params`` (its first section's ``runs``), only those at
    ``budgets`` when given."""
    runs = [(m, b) for m in params["curve_methods"] for b in sorted(params["budgets"])]
    runs += [(m, params["compare_budget"]) for m in params["methods"]]
    return [(m, b) for m, b in dict.fromkeys(runs) if not budgets or b in budgets]


def main(argv: list[str] | None = None) -> None:
    from . import batched, config
    from .finetuning import finetune
    from .models import SmallResNet
    from .train import evaluate
    from .vision import target_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budgets", type=int, nargs="*", help="a subset of the profile's budgets")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two paths this many times")
    parser.add_argument("--max-runs", type=int, help="only the first runs of the grid (a quick check)")
    args = parser.parse_args(argv)
    params = config.resolve(args.profile, _record=False)  # no results file: this is a benchmark
    torch.set_num_threads(args.threads)
    task = target_task(params["target_dataset"], params["seed"])
    torch.manual_seed(0)
    pretrained = SmallResNet(params["glyph_classes"], width=params["width"])
    seeds = config.seed_list(params)
    jobs = [(m, b, s) for s in seeds for m, b in grid(params, args.budgets)][:args.max_runs]
    common = dict(num_classes=task.num_classes, steps=params["finetune_steps"], batch_size=params["finetune_batch_size"],
                  width=params["width"], weight_decay=params["weight_decay"], bf16=params["bf16"])
    print(f"{len(jobs)} runs ({args.profile}: {params['finetune_steps']} steps, batch {params['finetune_batch_size']}, "
          f"bf16={params['bf16']}), threads={args.threads}")

    def loop() -> list[float]:
        accs = []
        for method, budget, seed in jobs:
            tuned = finetune(method, pretrained, task.budget(budget, seed), lr=params["lr"], seed=seed, **common)
            accs.append(evaluate(tuned.model, task.test, bf16=params["bf16"])["acc"])
            accs.append(evaluate(tuned.model, task.shifted, bf16=params["bf16"])["acc"])
        return accs

    def together() -> list[float]:
        runs = [batched.Run(m, task.budget(b, s), s, pretrained, lr=params["lr"]) for m, b, s in jobs]
        tuned = batched.finetune_many(runs, **common)
        models = [t.model for t in tuned]
        test = batched.evaluate_many(models, task.test, bf16=params["bf16"])
        shifted = batched.evaluate_many(models, task.shifted, bf16=params["bf16"])
        return [x for pair in zip(test, shifted) for x in (pair[0]["acc"], pair[1]["acc"])]

    times: dict[str, list[float]] = {"loop": [], "batched": []}
    accs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, fn in (("loop", loop), ("batched", together)):
            start = time.perf_counter()
            accs[name] = fn()
            times[name].append(time.perf_counter() - start)
            print(f"  {name:8s} {times[name][-1]:7.1f} s", flush=True)
    loop_s, batched_s = min(times["loop"]), min(times["batched"])
    diff = [abs(a - b) for a, b in zip(accs["loop"], accs["batched"])]
    print(f"threads={args.threads}: loop {loop_s:.1f} s, batched {batched_s:.1f} s, "
          f"speed-up {loop_s / batched_s:.2f}x; mean |accuracy difference| per run {sum(diff) / len(diff):.4f}, "
          f"mean accuracy loop {sum(accs['loop']) / len(diff):.4f} vs batched {sum(accs['batched']) / len(diff):.4f}")


if __name__ == "__main__":
    main()

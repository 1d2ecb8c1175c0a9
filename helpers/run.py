"""The batch runner: execute notebooks with a profile, overrides and sweeps, then write one report.

Usage (from the repository root)::

    python -m helpers.run                                  # every notebooks/NN_*.ipynb, profile quick
    python -m helpers.run 03 --profile smoke               # one notebook, by number
    python -m helpers.run 03_finetune_cnn -p lr=1e-3 -p bf16=False
    python -m helpers.run 3 --sweep seed=0,1,2 --sweep lr=1e-3,3e-3   # 6 executions
    python -m helpers.run --out runs/my-batch --timeout 600
    python -m helpers.run --sweep seed=0,1,2 --jobs 2      # two notebooks at a time
    python -m helpers.run --resume --out runs/my-batch     # continue: skip what already ran ok
    python -m helpers.run --sweep seed=0,1,2 --cluster local:2          # on a Dask LocalCluster
    python -m helpers.run --sweep seed=0,1,2 --scheduler tcp://host:8786   # on a running cluster
    python -m helpers.run --resume                         # ... in the newest runs/<stamp>/
    python -m helpers.run compare runs/A runs/B            # two batches side by side (helpers.compare)

A notebook may be named by path, file name (``00_tour.ipynb``), stem (``00_tour``) or number
(``00`` or ``0``). Values of ``-p name=value`` and ``--sweep name=v1,v2`` are Python literals
(``1e-3``, ``False``, ``[1, 2]``), else plain strings (``cpu``). Several ``--sweep`` options give
the cartesian product; each point is one executed notebook, named after it, e.g.
``03_finetune_cnn__seed=0__lr=0.001.ipynb``.

``--jobs N`` runs N notebook executions at once, each in its own worker process with its own
kernel. They share the checkpoint store safely: :func:`helpers.checkpoints.load_or_train` and
``cached`` hold a lock per artefact while building it, so when two notebooks need the same missing
checkpoint one trains it and the other waits and loads it. Each kernel then gets
``OMP_NUM_THREADS = cores // N`` (unless you set it) so N kernels do not fight over the cores.

``--cluster local:N`` runs the executions on Dask distributed instead: a ``LocalCluster`` of N
worker processes (one thread each, TCP), one task per notebook execution; ``--scheduler
tcp://host:port`` joins a running Dask cluster (``dask scheduler``/``dask worker``, dask-jobqueue on
SLURM or PBS, Dask on Kubernetes) whose workers see the repository and ``--out`` at the same paths.
Results, resume and the report are the same as with ``--jobs``; a worker that dies mid-notebook
fails that execution (``WorkerDied``) and the batch goes on (see :class:`helpers.executors.DaskExecutor`).

``--resume`` continues a batch in an existing run folder (``--out``, default the newest
``runs/*/`` that has a ``batch.json``): executions that ``batch.json`` records as successful (and
whose executed notebook is there) are kept, everything else (failed, interrupted, not yet run) is
executed. Without notebooks, ``-p``, ``--sweep`` or ``--notebooks-dir`` on the command line the
batch's recorded command is repeated; the profile must be the batch's, and an execution of the same
name must have the same parameters (else use a new ``--out``).

Everything is checked before the first notebook starts (profile, parameter names and values,
notebook names, output folder); a bad input prints one clear message and exits with status 2.

How a parameter reaches a notebook: each notebook has a papermill cell tagged ``parameters`` with
``PROFILE``, ``OVERRIDES = {}`` and some knobs upper-cased (``SEED = None``); a notebook parameter
``X`` is always the knob ``x``, and a notebook declaring any other upper-case name is refused before
anything runs. A knob ``lr`` is passed as ``LR`` when the notebook declares ``LR``, otherwise inside
``OVERRIDES`` (merged with the notebook's own ``OVERRIDES``). ``PROFILE`` is always passed.

Output folder (default ``runs/<YYYYmmdd-HHMMSS>/`` under the repository root):

* ``<run>.ipynb`` -- each executed notebook (also written when it fails, up to the failing cell);
* ``<run>.results.json`` (and ``<run>_figures/``) -- what the notebook recorded through
  :mod:`helpers.results` (the runner points ``$WORKBOOK_RESULTS`` there);
* ``batch.json`` -- the machine-readable index (rewritten after every notebook);
* ``profile.md`` -- where each execution's time went: kernel start, parameters, each ``## ``
  section, the rest (:func:`helpers.execute.time_profile`; also in ``batch.json`` and the report);
* ``summary.md`` and ``report.html`` -- the aggregated report (see :mod:`helpers.report`): every
  run's time and peak memory, claims with their evidence, metrics, tables, figures, the
  environment; for a sweep over ``seed``, every metric as mean ± std over the seeds (grouped by the
  other swept parameters), also written to ``aggregate.json``.

Kernels started by the runner see ``WORKBOOK_STATIC=1``: interactive widgets
(:mod:`helpers.widgets`) fall back to one static run with their current values.

Exit status: 0 when every notebook ran, 1 when any failed (the others still run), 2 for bad
input, 130 when interrupted (the report then covers what finished).

Where the parts are: this module is the command line (arguments, the batch session, exit status);
:mod:`helpers.plan` turns notebooks, parameters and sweeps into planned executions (and holds the
resume state); :mod:`helpers.executors` runs them (one at a time, or ``--jobs N`` processes);
:mod:`helpers.execute` runs one notebook with papermill; :mod:`helpers.report` writes the report
from what :mod:`helpers.aggregate` gathers.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import config, executors, report
from .report import one_line
from .checkpoints import repo_root
from .execute import profile_markdown, terminal
from .plan import (Job, Plan, UsageError, available_notebooks, check_out, default_out,
                   find_notebook, load_batch, merge_previous, newest_batch, parse_params,
                   parse_sweeps, plan_jobs)

BATCH_SCHEMA = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.run",
        description="Execute workbook notebooks with papermill (profiles, overrides, sweeps) "
                    "and aggregate their results into one report.",
        epilog="Notebooks are named by path, file name, stem (00_tour) or number (00, 3). "
               "Known parameters: " + ", ".join(sorted(config.KNOBS)) + ".")
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="notebooks to run (default: every NN_*.ipynb in --notebooks-dir, in order)")
    parser.add_argument("--profile", default=None,
                        help=f"parameter profile: {', '.join(config.PROFILES)} (default: quick, "
                             "or the resumed batch's)")
    parser.add_argument("-p", "--param", dest="params", action="append", default=[],
                        metavar="NAME=VALUE", help="override one parameter (repeatable)")
    parser.add_argument("--sweep", dest="sweeps", action="append", default=[],
                        metavar="NAME=V1,V2,...",
                        help="run once per value; several --sweep give the cartesian product")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: runs/<YYYYmmdd-HHMMSS>/ in the repository)")
    parser.add_argument("--notebooks-dir", type=Path, default=None,
                        help="where NN_*.ipynb live (default: notebooks/ in the repository)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="fail a notebook when one of its cells runs longer than this")
    parser.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                        help="run N notebook executions at once, in separate processes "
                             "(default 1; shared checkpoints are built once, under a lock)")
    parser.add_argument("--cluster", default=None, metavar="local:N",
                        help="run on a Dask LocalCluster of N worker processes (one notebook "
                             "execution per task; instead of --jobs)")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="run on the running Dask cluster whose scheduler is there (its workers "
                             "must share the repository and --out folder)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="every train() call logs its scalars as TensorBoard event files under "
                             "<out>/tensorboard/<execution>/ (needs the tensorboard extra); view "
                             "them with: tensorboard --logdir <out>/tensorboard")
    parser.add_argument("--resume", action="store_true",
                        help="continue the batch in --out (default: the newest runs/*/ with a "
                             "batch.json), skipping executions that already succeeded there")
    return parser


def _recorded_arguments(batch: Mapping[str, Any]) -> argparse.Namespace:
    """The plan-defining arguments of the command that started a batch."""
    argv = batch.get("argv")
    if argv is None:  # written before "argv" was recorded
        argv = shlex.split(batch.get("command", "").removeprefix("python -m helpers.run"))
    try:
        return build_parser().parse_args(list(argv))
    except SystemExit:
        raise UsageError(f"--resume: cannot re-read the recorded command {argv!r}; "
                         f"give the notebooks and parameters again") from None


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate every input and build the list of executions; raise :class:`UsageError`."""
    previous = None
    if args.resume:
        out = (args.out or newest_batch()).resolve()
        previous = load_batch(out)
        if not (args.notebooks or args.params or args.sweeps or args.notebooks_dir):
            recorded = _recorded_arguments(previous)
            args.notebooks, args.params = recorded.notebooks, recorded.params
            args.sweeps, args.notebooks_dir = recorded.sweeps, recorded.notebooks_dir
        if args.profile is None:
            args.profile = previous["profile"]
        elif args.profile != previous["profile"]:
            raise UsageError(f"--resume: {out} holds a {previous['profile']!r} batch, not "
                             f"{args.profile!r}; resume it with --profile {previous['profile']} "
                             f"or start a new batch with another --out")
        if args.timeout is None:
            args.timeout = previous.get("timeout_s")
    args.profile = args.profile or "quick"
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1")
    if args.cluster is not None and args.scheduler is not None:
        raise UsageError("--cluster and --scheduler both given: start a local cluster "
                         "(--cluster local:N) or join a running one (--scheduler tcp://host:port)")
    if (args.cluster or args.scheduler) and args.jobs > 1:
        raise UsageError(f"--jobs {args.jobs} and --{'cluster' if args.cluster else 'scheduler'} "
                         f"both given: on Dask the workers set how many notebooks run at once")
    if args.cluster is not None:
        try:
            executors.parse_cluster(args.cluster)
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.scheduler is not None and "://" not in args.scheduler and ":" not in args.scheduler:
        raise UsageError(f"--scheduler {args.scheduler!r}: expected a scheduler address such as "
                         f"tcp://host:8786")
    if args.profile not in config.PROFILES:
        near = difflib.get_close_matches(args.profile, list(config.PROFILES), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown profile {args.profile!r}{hint}; "
                         f"allowed profiles: {', '.join(config.PROFILES)}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    params = parse_params(args.params)
    sweeps = parse_sweeps(args.sweeps)
    both = sorted(set(params) & set(sweeps))
    if both:
        raise UsageError(f"parameter {both[0]!r} is given with -p and swept with --sweep; use one")

    folder = (args.notebooks_dir or repo_root() / "notebooks").resolve()
    if args.notebooks:
        notebooks = list(dict.fromkeys(find_notebook(name, folder) for name in args.notebooks))
    else:
        if not folder.is_dir():
            raise UsageError(f"--notebooks-dir {folder}: no such folder")
        notebooks = [p.resolve() for p in available_notebooks(folder)]
        if not notebooks:
            raise UsageError(f"no notebooks NN_*.ipynb found in {folder}")

    if previous is None:
        out = (args.out or default_out()).resolve()
        check_out(out)

    jobs = plan_jobs(notebooks, folder, args.profile, params, sweeps)
    if previous is not None:
        jobs = merge_previous(jobs, previous, out)
    if args.tensorboard:
        for job in jobs:
            if not job.earlier:
                job.tensorboard = f"tensorboard/{job.name}"
    return Plan(args.profile, params, sweeps, out, args.timeout, jobs, args.jobs, previous,
                cluster=args.cluster, scheduler=args.scheduler)


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """Versions and machine, cheaply (no transformers import) for the report."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "machine": platform.machine(), "cpu": _cpu_model(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "torch threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpus"] = torch.cuda.device_count()
    with contextlib.suppress(ImportError):
        import psutil
        env["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    for package in ("torchvision", "transformers", "tokenizers", "peft", "safetensors", "numpy",
                    "pandas", "scikit-learn", "matplotlib", "papermill", "ipykernel", "ipywidgets",
                    "jupyterlab", "dask", "distributed", "tensorboard"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(),
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo_root(),
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            env["git"] = commit.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    return env


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _write_index(plan: Plan, batch: dict[str, Any]) -> None:
    batch["runs"] = [job.index(plan.out) for job in plan.jobs]
    batch["failed"] = [job.name for job in plan.jobs if job.status == "failed"]
    report.write_text(plan.out / "batch.json", json.dumps(batch, indent=2, default=str))


def _verdict(job: Job) -> str:
    if job.status == "ok":
        return f"{job.name}: ok in {job.wall_s:.1f} s"
    if job.error is None:
        return f"{job.name}: {job.status}"
    return (f"{job.name}: FAILED ({job.error['name']}: {one_line(job.error['message'], 120)}) "
            f"in {job.wall_s or 0:.1f} s")


def run_plan(plan: Plan, argv: Sequence[str]) -> int:
    """Execute every job (continuing past failures), write ``batch.json`` and the report."""
    from tqdm.auto import tqdm

    todo = [i for i, job in enumerate(plan.jobs) if not job.earlier]  # earlier: kept as recorded
    executor = executors.choose(plan, todo)  # a Dask cluster is started or joined here
    plan.out.mkdir(parents=True, exist_ok=True)
    command = "python -m helpers.run " + shlex.join(argv)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    if plan.previous is None:
        batch: dict[str, Any] = {
            "schema": BATCH_SCHEMA, "command": command, "argv": list(argv),
            "profile": plan.profile, "params": plan.params, "sweep": plan.sweeps,
            "timeout_s": plan.timeout, "out": str(plan.out), "started": now, "finished": None,
            "interrupted": False, "resumed": [],
        }
        earlier_s = 0.0
    else:  # keep the batch's identity; note this session
        batch = dict(plan.previous)
        batch["resumed"] = [*batch.get("resumed", []), {"command": command, "started": now}]
        batch["out"] = str(plan.out)
        earlier_s = float(batch.get("wall_s") or 0.0)
    batch.update(jobs=getattr(executor, "workers", plan.parallel), environment=environment(),
                 engine=getattr(executor, "label", f"{plan.parallel} local processes"
                                if plan.parallel > 1 else "this process"))
    kept = len(plan.jobs) - len(todo)
    if plan.previous is not None:
        print(f"resuming {_shown(plan.out)}/: {kept} execution{'s' if kept != 1 else ''} already "
              f"done, {len(todo)} to run")

    def save() -> None:
        _write_index(plan, batch)

    def done(i: int) -> None:  # called by the executor as each job ends
        bar.write(_verdict(plan.jobs[i]))
        bar.update()
        save()

    save()
    began = time.perf_counter()
    interrupted = False
    screen = terminal()
    bar = tqdm(total=len(todo), unit="notebook", file=screen, dynamic_ncols=True)
    try:
        executor(plan, todo, bar, done)
    except KeyboardInterrupt:
        interrupted = True
        for job in plan.jobs:
            if job.status == "pending":
                job.status = "skipped"
    finally:
        bar.close()
        if screen is not sys.stderr:
            screen.close()
    batch.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), interrupted=interrupted,
                 wall_s=round(earlier_s + time.perf_counter() - began, 3))
    save()
    summary, html = report.write_reports(plan.out, batch)
    report.write_text(plan.out / "profile.md", profile_markdown(batch))  # where the time went

    failed = [job for job in plan.jobs if job.status == "failed"]
    if failed:
        print(f"FAILED: {len(failed)} of {len(plan.jobs)} notebook runs:")
        for job in failed:
            assert job.error is not None
            print(f"  {job.name}: {job.error['name']}: {one_line(job.error['message'])} "
                  f"-> {_shown(plan.out / (job.name + '.ipynb'))}")
    if interrupted:
        print("interrupted: the report covers the notebooks that finished; continue with "
              f"python -m helpers.run --resume --out {_shown(plan.out)}", file=sys.stderr)
    print(f"executed notebooks: {_shown(plan.out)}/")
    print(f"summary: {_shown(summary)}")
    print(f"report: {_shown(html)}")
    if interrupted:
        return 130
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # python -m helpers.run compare A B: see helpers.compare
        from . import compare
        return compare.main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argparse error (2, message already printed)
        return int(exit_.code or 0)
    try:
        plan = make_plan(args)
        return run_plan(plan, argv)
    except (UsageError, executors.EngineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

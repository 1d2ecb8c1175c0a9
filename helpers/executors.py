"""Executors: take a plan's planned executions and run them. ``--jobs`` picks one; Dask can be another.

An executor is a function ``executor(plan, todo, progress, done)`` that

* runs ``plan.jobs[i]`` for every ``i`` in ``todo`` with :func:`helpers.execute.execute`, in
  whatever process (or machine) it likes, writing into ``plan.out``;
* stores each finished :class:`helpers.plan.Job` back into ``plan.jobs[i]`` and calls ``done(i)``
  in the calling process as soon as it has ended (the runner then prints its verdict, advances the
  progress bar and rewrites ``batch.json``), failures included: one failure never stops the rest;
* may say what it is doing with ``progress.set_description(text)`` (``progress`` is a tqdm bar);
* on ``KeyboardInterrupt`` stops what it started, marks those jobs ``interrupted`` (jobs it never
  started stay ``pending``) and re-raises.

:func:`serial` runs the jobs one after another in this process; :func:`processes` (``--jobs N``)
runs N at a time, each in a fresh worker process with its own kernel and ``OMP_NUM_THREADS =
cores // N`` (unless set), so N kernels share the cores instead of fighting over them. Shared
checkpoints are safe: :func:`helpers.checkpoints.load_or_train` builds each one once, under a lock.
:func:`choose` picks the executor for a plan.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

from .execute import execute
from .plan import Job, Plan

Executor = Callable[[Plan, Sequence[int], Any, Callable[[int], None]], None]


def serial(plan: Plan, todo: Sequence[int], progress: Any, done: Callable[[int], None]) -> None:
    """Run the jobs ``todo`` one after another in this process (and its kernel)."""
    for i in todo:
        job = plan.jobs[i]
        progress.set_description(job.name)
        execute(job, plan.out, plan.timeout)
        done(i)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _worker(job: Job, out: Path, timeout: float | None, threads: int, conn: Any) -> None:
    """Run one job in its own process (``--jobs N``) and send the finished :class:`Job` back.

    Ctrl-C is the parent's to handle: it ignores SIGINT here and stops a worker with SIGTERM,
    which becomes a KeyboardInterrupt, so the job is recorded as interrupted and its kernel shut
    down on the way out.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    if "OMP_NUM_THREADS" not in os.environ:  # N kernels share the cores instead of fighting
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        execute(job, out, timeout)
    except KeyboardInterrupt:
        pass  # execute marked it interrupted
    conn.send(job)
    conn.close()


def processes(plan: Plan, todo: Sequence[int], progress: Any, done: Callable[[int], None]) -> None:
    """Run the jobs ``todo``, ``plan.parallel`` at a time, each in a fresh worker process."""
    from multiprocessing.connection import wait as wait_for

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    workers = min(plan.parallel, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue, running = list(todo), {}
    progress.set_description(f"{workers} at a time")
    try:
        while queue or running:
            while queue and len(running) < workers:
                i = queue.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, name=f"run {plan.jobs[i].name}",
                                          args=(plan.jobs[i], plan.out, plan.timeout, threads, send))
                process.start()
                send.close()
                running[receive] = (i, process)
            for receive in wait_for(list(running), timeout=5):
                i, process = running.pop(receive)
                try:
                    plan.jobs[i] = receive.recv()
                except EOFError:  # the worker died before answering (killed, out of memory)
                    process.join()
                    plan.jobs[i].status = "failed"
                    plan.jobs[i].error = {"name": "WorkerDied", "cell": None, "traceback": "",
                                          "message": f"the worker process running it exited with "
                                                     f"code {process.exitcode} before reporting"}
                process.join()
                if plan.jobs[i].status == "failed" and plan.jobs[i].error and \
                        plan.jobs[i].error["name"] == "KeyboardInterrupt":
                    plan.jobs[i].status = "interrupted"  # its kernel got the terminal's Ctrl-C
                done(i)
    except KeyboardInterrupt:
        for receive, (i, process) in running.items():
            process.terminate()  # SIGTERM: the worker records the interruption and stops its kernel
        for receive, (i, process) in running.items():
            process.join(timeout=20)
            if process.is_alive():
                process.kill()
                process.join()
            with contextlib.suppress(EOFError, OSError):
                if receive.poll():
                    plan.jobs[i] = receive.recv()
            if plan.jobs[i].status not in ("ok", "failed"):  # it may have just finished
                plan.jobs[i].status = "interrupted"
        raise


def choose(plan: Plan, todo: Sequence[int]) -> Executor:
    """The executor for a plan: :func:`processes` for ``--jobs N`` (N > 1) when more than one
    execution is to run, else :func:`serial`."""
    return processes if plan.parallel > 1 and len(todo) > 1 else serial

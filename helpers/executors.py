"""Executors: take a plan's planned executions and run them: here, in N processes, or on Dask.

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
runs N at a time, each in a fresh worker process with its own kernel; :class:`DaskExecutor`
(``--cluster local:N`` or ``--scheduler tcp://host:port``) hands each execution to a Dask
distributed cluster as one task. Locally, N kernels get ``OMP_NUM_THREADS = cores // N`` (unless
set) so they share the cores instead of fighting over them, and with several GPUs each worker gets
its own, round-robin (:func:`gpu_for`, through ``CUDA_VISIBLE_DEVICES``). Shared checkpoints are
safe wherever the kernels run, as long as they share the store:
:func:`helpers.checkpoints.load_or_train` builds each one once, under a lock that holds across
processes and machines. Both parallel executors start jobs in :func:`start_order` (the longest
chain of waiting notebooks first) and hold back a job that would only wait (:func:`next_ready`).
:func:`choose` picks the executor for a plan.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .execute import execute
from .plan import Job, Plan

Executor = Callable[[Plan, Sequence[int], Any, Callable[[int], None]], None]


@functools.lru_cache(maxsize=None)
def _reads_siblings(notebook: Path) -> bool:
    try:
        return "sibling(" in notebook.read_text()
    except OSError:
        return False


def reads_siblings(job: Job) -> bool:
    """Does ``job``'s notebook read what the other notebooks of its batch recorded
    (:func:`helpers.results.sibling`, e.g. the summary)? Then it must run after them."""
    return _reads_siblings(Path(job.notebook))


@functools.lru_cache(maxsize=None)
def _needs(notebook: Path) -> tuple[str, ...]:
    try:
        meta = json.loads(notebook.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return ()
    return tuple(meta.get("workbook", {}).get("needs", ()))


def needs(job: Job) -> tuple[str, ...]:
    """The notebooks (stems, e.g. ``01_pretrain_cnn``) whose shared checkpoints ``job``'s notebook
    loads: its metadata's ``workbook.needs``. With ``--jobs N`` it starts after them rather than
    beside them, where it would only wait, idle, on the checkpoint's lock while they build it."""
    return _needs(Path(job.notebook))


#: Seconds of each notebook (by number) in ``quick``, cold, at one thread beside another notebook
#: (measured 2026-12-03 with the stride-2 CNN, ``make run``, mean of seeds 0 and 3): only the order
#: they imply matters, for :func:`start_order`. A notebook not named here counts :data:`DEFAULT_EXPECTED_S`.
EXPECTED_S: dict[str, float] = {"00": 12, "01": 72, "02": 191, "03": 64, "04": 82, "05": 80, "06": 52,
                                "07": 20, "08": 79, "09": 55, "10": 86, "11": 11}
DEFAULT_EXPECTED_S = 60.0


def expected_seconds(job: Job) -> float:
    """How long ``job`` is expected to take (:data:`EXPECTED_S`), for ordering only."""
    return EXPECTED_S.get(Path(job.notebook).stem.split("_", 1)[0], DEFAULT_EXPECTED_S)


def _waits_for(plan: Plan, i: int, j: int) -> bool:
    """Must job ``i`` wait until job ``j`` (of the same sweep point) has ended?"""
    a, b = plan.jobs[i], plan.jobs[j]
    if i == j or a.point != b.point:
        return False
    if reads_siblings(a):
        return not reads_siblings(b)
    return Path(b.notebook).stem in needs(a)


def start_order(plan: Plan, todo: Sequence[int],
                seconds: Callable[[Job], float] = expected_seconds) -> list[int]:
    """``todo`` in the order to start them when several run at once: the longest chain first.

    List scheduling by critical path: a job's priority is its own expected seconds plus the longest
    chain of jobs that wait for it (:func:`needs`, :func:`reads_siblings`). So the notebooks that
    build checkpoints for many others start first, a long independent one (10_scale) starts early
    instead of running alone at the end, and short ones fill the gaps. Ties keep the plan's order.
    """
    todo = list(todo)
    chain: dict[int, float] = {}

    def length(i: int, seen: frozenset[int] = frozenset()) -> float:
        if i not in chain:
            after = [length(j, seen | {i}) for j in todo if j not in seen | {i} and _waits_for(plan, j, i)]
            chain[i] = seconds(plan.jobs[i]) + max(after, default=0.0)
        return chain[i]

    return sorted(todo, key=lambda i: -length(i))


def next_ready(plan: Plan, queue: Sequence[int], running: Sequence[int]) -> int | None:
    """The position in ``queue`` of the first job that may start now, or ``None``.

    A job waits while a job it waits for is queued or running: a notebook that reads its siblings'
    results (the summary) for every other notebook of its sweep point; a notebook that loads
    another's checkpoints (:func:`needs`) for that one. The others start in queue order.
    """
    pending = [*queue, *running]
    for pos, i in enumerate(queue):
        if not any(_waits_for(plan, i, j) for j in pending):
            return pos
    return None


def serial(plan: Plan, todo: Sequence[int], progress: Any, done: Callable[[int], None]) -> None:
    """Run the jobs ``todo`` one after another in this process (and its kernel)."""
    for i in todo:
        job = plan.jobs[i]
        progress.set_description(job.name)
        execute(job, plan.out, plan.timeout)
        done(i)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _worker(job: Job, out: Path, timeout: float | None, threads: int, conn: Any,
            gpu: str | None = None) -> None:
    """Run one job in its own process (``--jobs N``) and send the finished :class:`Job` back.

    Ctrl-C is the parent's to handle: it ignores SIGINT here and stops a worker with SIGTERM,
    which becomes a KeyboardInterrupt, so the job is recorded as interrupted and its kernel shut
    down on the way out.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    _set_worker_env(threads, gpu)  # N kernels share the cores (and GPUs) instead of fighting
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
    threads = _threads(workers)
    gpus = visible_gpus()
    queue, running = start_order(plan, todo), {}
    slots: dict[Any, int] = {}  # worker slot 0..workers-1 of each running process: picks its GPU
    progress.set_description(f"{workers} at a time")
    try:
        while queue or running:
            while queue and len(running) < workers:
                pos = next_ready(plan, queue, [i for i, _ in running.values()])
                if pos is None:  # only a summary is left, and what it reads is still running
                    break
                i = queue.pop(pos)
                slot = min(set(range(workers)) - set(slots.values()))
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, name=f"run {plan.jobs[i].name}",
                                          args=(plan.jobs[i], plan.out, plan.timeout, threads, send,
                                                gpu_for(slot, gpus)))
                process.start()
                send.close()
                running[receive] = (i, process)
                slots[receive] = slot
            for receive in wait_for(list(running), timeout=5):
                i, process = running.pop(receive)
                slots.pop(receive)
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


# --- GPUs: one per worker, round-robin -----------------------------------------------------------

def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: the entries of ``$CUDA_VISIBLE_DEVICES`` when it is set
    (ids or UUIDs), else ``"0"`` .. ``"n-1"`` for the n CUDA devices torch counts (none without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_for(slot: int, gpus: Sequence[str]) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` value for worker ``slot``: GPU ``slot mod len(gpus)``, round-robin,
    when there are two or more; ``None`` (leave it alone) with one GPU or none."""
    return gpus[slot % len(gpus)] if len(gpus) >= 2 else None


def _set_worker_env(threads: int | None, gpu: str | None) -> None:
    """What a worker's kernels inherit: ``OMP_NUM_THREADS`` (set, not overridden, by :func:`_threads`)
    and the worker's own GPU."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _threads(workers: int) -> int:
    """Threads per kernel when ``workers`` kernels share this machine: ``$OMP_NUM_THREADS`` when the
    user set it, else cores // workers (at least 1)."""
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    return max(1, (os.cpu_count() or 1) // workers)


# --- Dask distributed: --cluster local:N, --scheduler tcp://host:port ------------------------------

class EngineError(RuntimeError):
    """The distributed engine cannot be started or reached (reported before any notebook runs)."""


def parse_cluster(spec: str) -> int:
    """``"local:4"`` -> 4 worker processes; raise :class:`ValueError` with what is allowed."""
    kind, _, count = spec.partition(":")
    if kind != "local" or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--cluster {spec!r}: expected local:N with N >= 1 worker processes "
                         f"(e.g. --cluster local:2); to use a running cluster give "
                         f"--scheduler tcp://host:port")
    return int(count)


def _dask_task(job: Job, out: Path, timeout: float | None, threads: int | None,
               gpus: Sequence[str]) -> Job:
    """One notebook execution as a Dask task, in a worker process; returns the finished job.

    A worker of a ``LocalCluster`` is named 0..N-1 (a restarted one keeps its name), which picks its
    GPU round-robin (:func:`gpu_for`); its kernels inherit the environment set here.
    """
    from distributed import get_worker

    name = get_worker().name
    _set_worker_env(threads, gpu_for(name, gpus) if isinstance(name, int) else None)
    return execute(job, out, timeout)


class DaskExecutor:
    """Run each notebook execution as one task on a Dask distributed cluster.

    ``DaskExecutor(local=N)`` starts a ``distributed.LocalCluster`` of N worker processes with one
    thread each, talking TCP on 127.0.0.1, each kernel with ``OMP_NUM_THREADS = cores // N`` and, on
    a machine with several GPUs, its own GPU (:func:`gpu_for`). ``DaskExecutor(scheduler=address)``
    joins a running cluster instead (``dask scheduler`` + ``dask worker``, dask-jobqueue on
    SLURM/PBS, Dask on Kubernetes); its workers must see the repository, the notebooks and the
    output folder at the same paths (shared storage), and should run one thread each
    (``--nthreads 1``): a worker's kernel takes the worker's environment.

    Tasks go out one per free worker thread, each bound to that worker (the rest wait here, as
    with ``--jobs``), so a task never waits on a worker behind another one. A task is never retried: the local scheduler runs
    with ``allowed-failures`` 0, so a worker that
    dies mid-notebook (killed, out of memory) fails that execution as ``WorkerDied`` at once and the
    rest of the batch goes on (set ``distributed.scheduler.allowed-failures: 0`` in a running
    scheduler's configuration for the same behaviour there). The cluster is started or joined when
    the executor is made, so an unreachable scheduler is an :class:`EngineError` before anything
    runs; it is closed (a local one shut down) when the executor has run.
    """

    def __init__(self, *, local: int | None = None, scheduler: str | None = None,
                 connect_timeout: float = 10.0):
        import logging

        import dask
        from distributed import Client, LocalCluster

        self.cluster: Any = None
        if local is not None:
            self.workers, self.threads = local, _threads(local)
            self.gpus = visible_gpus()
            self.label = f"dask local:{local}"
            # Never retry a notebook whose worker died (a notebook that kills its worker would
            # kill the next one too).
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self.cluster = LocalCluster(
                    n_workers=local, threads_per_worker=1, processes=True, host="127.0.0.1",
                    protocol="tcp://", dashboard_address=None, memory_limit=0,
                    silence_logs=logging.CRITICAL)  # failures are reported per job
            self.client = Client(self.cluster)
        elif scheduler is not None:
            try:
                self.client = Client(scheduler, timeout=connect_timeout)
            except (OSError, TimeoutError) as err:
                raise EngineError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there "
                                  f"({type(err).__name__}: {err}); start one with `dask scheduler` "
                                  f"and workers with `dask worker {scheduler} --nthreads 1`") from None
            self.threads, self.gpus = None, []  # the workers' own environment decides
            self.workers = max(1, sum(w.get("nthreads", 1) for w in
                                      self.client.scheduler_info()["workers"].values()))
            self.label = f"dask {scheduler}"
        else:
            raise ValueError("DaskExecutor: give local=N or scheduler=address")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def _free_slots(self, placed: Sequence[str]) -> list[str]:
        """One worker address per free thread: each worker's threads minus the tasks of ours
        ``placed`` on it. Only workers the scheduler has now count (a restarting one joins later;
        an adaptive dask-jobqueue cluster may grow or shrink)."""
        try:
            workers = self.client.scheduler_info()["workers"]
        except Exception:
            return []
        self.workers = max(1, sum(w.get("nthreads", 1) for w in workers.values()))
        return [address for address, info in workers.items()
                for _ in range(info.get("nthreads", 1) - list(placed).count(address))]

    def __call__(self, plan: Plan, todo: Sequence[int], progress: Any,
                 done: Callable[[int], None]) -> None:
        from distributed import wait
        from distributed.scheduler import KilledWorker

        from .execute import error_info

        progress.set_description(f"{self.label}, {self.workers} worker{'s' * (self.workers > 1)}")
        token = os.urandom(4).hex()  # keys unique on a scheduler shared by several batches
        queue = start_order(plan, todo)
        running: dict[Any, tuple[int, str]] = {}  # future -> (job index, worker address)
        try:
            while queue or running:
                # Each task goes to a worker thread that is free now, and only there: it never waits
                # behind another task on a worker that may die (it would fail with it: no retries).
                for address in self._free_slots([a for _, a in running.values()])[:len(queue)]:
                    pos = next_ready(plan, queue, [i for i, _ in running.values()])
                    if pos is None:  # a summary waits for the notebooks it reads
                        break
                    i = queue.pop(pos)
                    future = self.client.submit(
                        _dask_task, plan.jobs[i], plan.out, plan.timeout, self.threads, self.gpus,
                        key=f"{plan.jobs[i].name}-{token}", pure=False, retries=0,
                        workers=[address], allow_other_workers=False)
                    running[future] = (i, address)
                if not running:  # no free worker yet (starting, restarting): look again shortly
                    time.sleep(0.5)
                    continue
                try:
                    finished = wait(list(running), timeout=2, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    continue
                for future in finished:
                    i, _ = running.pop(future)
                    job = plan.jobs[i]
                    try:
                        plan.jobs[i] = job = future.result()
                    except KilledWorker as err:
                        job.status = "failed"
                        job.error = {"name": "WorkerDied", "cell": None, "traceback": "",
                                     "message": f"the Dask worker running it died before reporting "
                                                f"(killed, or out of memory): {err}"}
                    except Exception as err:  # the task itself raised (e.g. the notebook is unreadable there)
                        job.status, job.error = "failed", error_info(err)
                    if job.status == "failed" and job.error and job.error["name"] == "KeyboardInterrupt":
                        job.status = "interrupted"
                    done(i)
        except KeyboardInterrupt:
            for future, (i, _) in running.items():  # sent out, not finished; the queue stays pending
                if plan.jobs[i].status == "pending":
                    plan.jobs[i].status = "interrupted"
            with contextlib.suppress(Exception):
                self.client.cancel(list(running), force=True)
            raise
        finally:
            self.close()


def choose(plan: Plan, todo: Sequence[int]) -> Executor:
    """The executor for a plan: a :class:`DaskExecutor` for ``--cluster``/``--scheduler`` (started
    or joined now; :class:`EngineError` when that fails), :func:`processes` for ``--jobs N`` (N > 1)
    when more than one execution is to run, else :func:`serial`."""
    if plan.cluster is not None or plan.scheduler is not None:
        try:
            if plan.cluster is not None:
                return DaskExecutor(local=parse_cluster(plan.cluster))
            return DaskExecutor(scheduler=plan.scheduler)
        except EngineError:
            raise
        except ImportError as err:
            raise EngineError(f"--cluster/--scheduler need Dask distributed ({err}); install it with "
                              f"pip install -e '.[cluster]' (make does)") from None
        except Exception as err:  # the engine's own start-up errors
            raise EngineError(f"cannot start or join the Dask cluster "
                              f"({plan.cluster or plan.scheduler}): {type(err).__name__}: {err}") from err
    return processes if plan.parallel > 1 and len(todo) > 1 else serial

"""Running one planned execution: papermill, the kernel's environment, its log, memory and errors.

:func:`execute` runs one :class:`helpers.plan.Job` into the batch's output folder and fills in what
happened: status, wall-clock seconds, peak memory of the kernel (:class:`PeakRss`), the error of a
failed cell (:func:`error_info`) and the slowest cells. The kernel inherits the environment:
``$WORKBOOK_RESULTS`` tells :mod:`helpers.results` where to record, ``$WORKBOOK_STATIC`` tells
:mod:`helpers.widgets` there is no live frontend, and file descriptor 2 points at the job's kernel
log (:func:`terminal` keeps a progress bar on the real terminal meanwhile). Which jobs run when, and
in which process, is :mod:`helpers.executors`' business.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping

from .plan import Job

RESULTS_ENV = "WORKBOOK_RESULTS"
STATIC_ENV = "WORKBOOK_STATIC"  # tells helpers.widgets there is no live frontend
TENSORBOARD_ENV = "WORKBOOK_TENSORBOARD"  # helpers.train logs TensorBoard runs below it (--tensorboard)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration (a kernel inherits ``os.environ`` at start)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _kernel_log(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` for the duration, so the kernel (which inherits it) logs
    there instead of scribbling over the progress bar; an empty log is removed afterwards."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def terminal() -> Any:
    """Where the progress bar goes: ``sys.stderr``, or a duplicate of fd 2 when ``sys.stderr`` *is*
    fd 2 (so the bar stays on the terminal while fd 2 points at a kernel log)."""
    try:
        if sys.stderr.fileno() == 2:
            return os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                             errors="replace")
    except (OSError, ValueError, AttributeError):
        pass
    return sys.stderr


class PeakRss:
    """Sample the summed RSS of this process's child processes (the kernel) a few times a second.

    Cheap (one ``psutil`` call per sample); the peak is a sampled lower bound. ``peak_mb`` is
    ``None`` when psutil is missing.
    """

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil
        except ImportError:
            self._psutil = None
        else:
            self._psutil = psutil
            self._before = {c.pid for c in psutil.Process().children(recursive=True)}

    def _sample(self) -> None:
        psutil = self._psutil
        me = psutil.Process()
        while True:
            total = 0
            with contextlib.suppress(psutil.Error):
                for child in me.children(recursive=True):
                    if child.pid not in self._before:
                        with contextlib.suppress(psutil.Error):
                            total += child.memory_info().rss
            if total:
                self.peak_mb = max(self.peak_mb or 0.0, total / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRss":
        if self._psutil is not None:
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def error_info(err: BaseException) -> dict[str, Any]:
    """Name, message, failing cell and (ANSI-free, trimmed) traceback of an execution error."""
    name = getattr(err, "ename", None) or type(err).__name__
    message = getattr(err, "evalue", None)
    if message is None:
        message = str(err)
    lines = getattr(err, "traceback", None)
    text = "\n".join(lines) if isinstance(lines, list) else str(err)
    text = _ANSI.sub("", text)
    if len(text) > 12_000:
        text = "...\n" + text[-12_000:]
    return {"name": str(name), "message": str(message).strip(),
            "cell": getattr(err, "exec_count", None), "traceback": text}


def section_seconds(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where an executed notebook spent its time: the seconds of its code cells summed under each
    ``## `` heading (papermill records each cell's duration), in notebook order. Cells before the
    first heading count as "setup"; the kernel start is the run's wall time minus their sum."""
    sections: dict[str, float] = {}
    current = "setup"
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            heading = next((line[3:].strip() for line in "".join(cell.get("source", "")).splitlines()
                            if line.startswith("## ")), None)
            current = heading or current
        duration = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if cell.get("cell_type") == "code" and isinstance(duration, (int, float)):
            sections[current] = sections.get(current, 0.0) + float(duration)
    return [{"section": name, "seconds": round(seconds, 3)} for name, seconds in sections.items()]


KERNEL_START = "kernel start"  # from papermill's start to the first cell: kernel launch and handshake
PARAMETERS = "parameters"  # the cells tagged parameters / injected-parameters
OTHER = "other"  # the rest of the wall time: writing the executed notebook, shutting the kernel down


def _timestamp(value: Any) -> datetime | None:
    """A papermill ISO timestamp as a datetime (``None`` when absent or unreadable)."""
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def time_profile(notebook: dict[str, Any], wall_s: float | None = None) -> list[dict[str, Any]]:
    """Where one execution's wall time went, in order, from what papermill records.

    papermill stamps the notebook's metadata with its own start and each cell's metadata with the
    cell's start and duration. So: ``kernel start`` = the first cell's start minus papermill's start
    (launching the kernel: Python, its imports, the handshake); ``parameters`` = the parameter cells;
    then each ``## `` section's code cells (:func:`section_seconds`; cells before the first heading
    are ``setup``); and, given the execution's ``wall_s``, ``other`` = what is left (writing the
    executed notebook, shutting the kernel down). Entries of 0 s are left out, so an empty list means
    papermill recorded nothing (the notebook could not be read).
    """
    cells = notebook.get("cells") or []
    begun = _timestamp((notebook.get("metadata", {}).get("papermill") or {}).get("start_time"))
    first = next((_timestamp((c.get("metadata", {}).get("papermill") or {}).get("start_time"))
                  for c in cells if c.get("cell_type") == "code"
                  and (c.get("metadata", {}).get("papermill") or {}).get("start_time")), None)
    profile: list[dict[str, Any]] = []
    if begun is not None and first is not None:
        profile.append({"section": KERNEL_START, "seconds": round(max(0.0, (first - begun).total_seconds()), 3)})
    tagged = [c for c in cells if {"parameters", "injected-parameters"} & set(c.get("metadata", {}).get("tags", []))]
    profile += [{**s, "section": PARAMETERS} for s in section_seconds(tagged)][:1]
    profile += section_seconds([c for c in cells if not any(c is t for t in tagged)])
    if wall_s is not None and profile:
        profile.append({"section": OTHER, "seconds": round(max(0.0, wall_s - sum(e["seconds"] for e in profile)), 3)})
    return [entry for entry in profile if entry["seconds"] > 0]


def profile_markdown(batch: Mapping[str, Any]) -> str:
    """Where each execution of one batch spent its time (``<out>/profile.md``, written by the runner):
    one row per execution, one column per part (kernel start, parameters, each section, other)."""
    lines = [f"# Where the time went: {Path(str(batch.get('out', ''))).name}", "",
             f"profile {batch.get('profile')}, {batch.get('jobs') or 1} notebook(s) at a time, "
             f"batch wall time {batch.get('wall_s') or 0:.1f} s. Seconds per part of each notebook "
             f"(papermill's cell times; kernel start = launch to first cell; other = writing the "
             f"notebook, kernel shutdown).", ""]
    for run in batch.get("runs", []):
        sections = run.get("sections") or []
        lines += [f"## {run['name']} ({run.get('status')}, {run.get('wall_s') or 0:.1f} s)", "",
                  "| part | seconds | share |", "|---|---|---|"]
        wall = run.get("wall_s") or sum(e["seconds"] for e in sections) or 1.0
        lines += [f"| {e['section']} | {e['seconds']:.2f} | {e['seconds'] / wall:.0%} |" for e in sections]
        lines.append("")
    return "\n".join(lines)


def _executed_notebook(path: Path) -> dict[str, Any]:
    """An executed notebook as JSON (an empty one when it cannot be read)."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        return notebook if isinstance(notebook.get("cells"), list) else {"cells": []}
    except (OSError, ValueError, AttributeError):
        return {"cells": []}


def _slowest_cells(cells: list[dict[str, Any]], n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` slowest code cells (of 0.05 s or more) of an executed notebook, by ``In [n]``
    (papermill records each cell's duration in its metadata)."""
    timed = []
    for cell in cells:
        duration = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if isinstance(duration, (int, float)) and duration >= 0.05 and cell.get("cell_type") == "code":
            source = "".join(cell.get("source", ""))
            first = next((line for line in source.splitlines() if line.strip()), "")
            timed.append({"cell": cell.get("execution_count"), "seconds": round(float(duration), 3),
                          "source": first[:100]})
    return sorted(timed, key=lambda c: -c["seconds"])[:n]


def execute(job: Job, out: Path, timeout: float | None = None) -> Job:
    """Run one notebook with papermill into ``out``; record status, time, memory and any error."""
    import papermill

    output = out / f"{job.name}.ipynb"
    log = out / "logs" / f"{job.name}.log"
    started = time.perf_counter()
    tensorboard = str(out / job.tensorboard) if job.tensorboard else ""  # "": no logging
    with _env(RESULTS_ENV, str(out / f"{job.name}.results.json")), _env(STATIC_ENV, "1"), \
            _env(TENSORBOARD_ENV, tensorboard), _kernel_log(log), PeakRss() as rss:
        try:
            papermill.execute_notebook(
                str(job.notebook), str(output), parameters=job.parameters, kernel_name="python3",
                progress_bar=False, cwd=str(job.cwd), execution_timeout=timeout)
        except KeyboardInterrupt:
            job.status = "interrupted"
            job.wall_s = round(time.perf_counter() - started, 3)
            raise
        except Exception as err:  # PapermillExecutionError, CellTimeoutError, DeadKernelError...
            job.status, job.error = "failed", error_info(err)
        else:
            job.status = "ok"
    job.wall_s = round(time.perf_counter() - started, 3)
    job.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    job.peak_rss_mb = None if rss.peak_mb is None else round(rss.peak_mb, 1)
    notebook = _executed_notebook(output)  # read once for both profiles of where the time went
    job.slowest_cells = _slowest_cells(notebook["cells"])
    job.sections = time_profile(notebook, job.wall_s)
    job.kernel_log = os.path.relpath(log, out) if log.is_file() else None
    return job


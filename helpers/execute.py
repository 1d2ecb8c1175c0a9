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
from pathlib import Path
from typing import Any, Iterator

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


def _executed_cells(path: Path) -> list[dict[str, Any]]:
    """The cells of an executed notebook (none when it cannot be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return []


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
    cells = _executed_cells(output)  # read once for both profiles of where the time went
    job.slowest_cells = _slowest_cells(cells)
    job.sections = section_seconds(cells)
    job.kernel_log = os.path.relpath(log, out) if log.is_file() else None
    return job


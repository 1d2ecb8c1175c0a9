"""The batch runner: execute notebooks with a profile, overrides and sweeps, then write one report.

Usage (from the repository root)::

    python -m helpers.run                                  # every notebooks/NN_*.ipynb, profile quick
    python -m helpers.run 03 --profile smoke               # one notebook, by number
    python -m helpers.run 03_finetune_cnn -p lr=1e-3 -p bf16=False
    python -m helpers.run 3 --sweep seed=0,1,2 --sweep lr=1e-3,3e-3   # 6 executions
    python -m helpers.run --out runs/my-batch --timeout 600

A notebook may be named by path, file name (``00_tour.ipynb``), stem (``00_tour``) or number
(``00`` or ``0``). Values of ``-p name=value`` and ``--sweep name=v1,v2`` are Python literals
(``1e-3``, ``False``, ``[1, 2]``), else plain strings (``cpu``). Several ``--sweep`` options give
the cartesian product; each point is one executed notebook, named after it, e.g.
``03_finetune_cnn__seed=0__lr=0.001.ipynb``.

Everything is checked before the first notebook starts (profile, parameter names and values,
notebook names, output folder); a bad input prints one clear message and exits with status 2.

How a parameter reaches a notebook: each notebook has a papermill cell tagged ``parameters`` with
``PROFILE``, ``OVERRIDES = {}`` and some upper-case knobs (``SEED = None``). A knob ``lr`` is passed
as ``LR`` when the notebook declares ``LR``, otherwise inside ``OVERRIDES`` (merged with the
notebook's own ``OVERRIDES``). ``PROFILE`` is always passed.

Output folder (default ``runs/<YYYYmmdd-HHMMSS>/`` under the repository root):

* ``<run>.ipynb`` -- each executed notebook (also written when it fails, up to the failing cell);
* ``<run>.results.json`` (and ``<run>_figures/``) -- what the notebook recorded through
  :mod:`helpers.results` (the runner points ``$WORKBOOK_RESULTS`` there);
* ``batch.json`` -- the machine-readable index (rewritten after every notebook);
* ``summary.md`` and ``report.html`` -- the aggregated report (see :mod:`helpers.report`).

Exit status: 0 when every notebook ran, 1 when any failed (the others still run), 2 for bad
input, 130 when interrupted (the report then covers what finished).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import itertools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import config, report
from .checkpoints import repo_root

BATCH_SCHEMA = 1
RESULTS_ENV = "WORKBOOK_RESULTS"
_NUMBERED = re.compile(r"^(\d+)_.+\.ipynb$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UsageError(Exception):
    """Bad command-line input; reported as one message, exit status 2, before any work starts."""


# --------------------------------------------------------------------------------------------
# parsing and validation (no kernel needed)
# --------------------------------------------------------------------------------------------

def parse_value(text: str, name: str | None = None) -> Any:
    """A Python literal (``1e-3``, ``False``, ``[1, 2]``), else the text itself (``cpu``).

    For a boolean knob ``true``/``false`` (any case) are accepted as well.
    """
    text = text.strip()
    knob = config.KNOBS.get(name or "")
    if knob is not None and knob.kind is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def split_values(text: str) -> list[str]:
    """Split ``"1e-3,3e-3"`` on top-level commas (commas inside ``[]``, ``()``, ``{}`` or quotes stay)."""
    parts: list[str] = []
    depth, quote, current = 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        example = "lr=1e-3" if option == "-p" else "seed=0,1,2"
        raise UsageError(f"{option} {text!r}: expected NAME=VALUE, e.g. {option} {example}")
    if name == "profile":
        raise UsageError(f"{option} {text!r}: set the profile with --profile "
                         f"(one of: {', '.join(config.PROFILES)}), not with {option}")
    if name not in config.KNOBS:
        near = difflib.get_close_matches(name, list(config.KNOBS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"{option} {text!r}: unknown parameter {name!r}{hint}; "
                         f"known parameters: {', '.join(sorted(config.KNOBS))}")
    return name, value


def check_value(name: str, value: Any, option: str) -> Any:
    """Validate one value with :func:`helpers.config.validate`; return it converted (ints to floats...)."""
    try:
        return config.validate({name: value})[name]
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "device=cpu"]`` -> validated ``{"lr": 0.001, "device": "cpu"}``."""
    params: dict[str, Any] = {}
    for item in items:
        name, text = _split_assignment(item, "-p")
        if name in params:
            raise UsageError(f"-p {item!r}: parameter {name!r} is given twice")
        if not text.strip():
            raise UsageError(f"-p {item!r}: no value for {name!r}")
        params[name] = check_value(name, parse_value(text, name), f"-p {item}")
    return params


def parse_sweeps(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["seed=0,1", "lr=1e-3,3e-3"]`` -> ``{"seed": [0, 1], "lr": [0.001, 0.003]}``, validated."""
    sweeps: dict[str, list[Any]] = {}
    for item in items:
        name, text = _split_assignment(item, "--sweep")
        if name in sweeps:
            raise UsageError(f"--sweep {item!r}: parameter {name!r} is swept twice; "
                             f"give all its values in one --sweep {name}=v1,v2,...")
        if not text.strip():
            raise UsageError(f"--sweep {item!r}: empty sweep; give values as {name}=v1,v2,...")
        values: list[Any] = []
        for part in split_values(text):
            if not part:
                raise UsageError(f"--sweep {item!r}: empty value in the list (stray comma?)")
            value = check_value(name, parse_value(part, name), f"--sweep {item}")
            if value not in values:  # 1e-3 and 0.001 are one point, not two
                values.append(value)
        sweeps[name] = values
    return sweeps


def sweep_points(sweeps: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the sweeps, in the order given (``[{}]`` when there is none)."""
    names = list(sweeps)
    return [dict(zip(names, combo)) for combo in itertools.product(*(sweeps[n] for n in names))]


def _name_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_name_value(v) for v in value)
    text = value if isinstance(value, str) else repr(value)
    return re.sub(r"[^A-Za-z0-9._,+-]", "_", text)


def output_stem(stem: str, point: Mapping[str, Any]) -> str:
    """``03_finetune_cnn`` + ``{"seed": 0, "lr": 0.001}`` -> ``03_finetune_cnn__seed=0__lr=0.001``."""
    return "__".join([stem, *(f"{name}={_name_value(value)}" for name, value in point.items())])


def available_notebooks(folder: Path) -> list[Path]:
    """The course notebooks ``NN_*.ipynb`` in ``folder``, in order of their number."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and _NUMBERED.match(p.name)]
    return sorted(found, key=lambda p: (int(_NUMBERED.match(p.name).group(1)), p.name))  # type: ignore[union-attr]


def find_notebook(name: str, folder: Path) -> Path:
    """Resolve a notebook named by path, file name, stem or number; raise :class:`UsageError`."""
    as_path = Path(name)
    if as_path.suffix == ".ipynb" and as_path.is_file():
        return as_path.resolve()
    available = available_notebooks(folder)
    for candidate in (folder / name, folder / f"{name}.ipynb"):
        if candidate.suffix == ".ipynb" and candidate.is_file():
            return candidate.resolve()
    if name.isdigit():
        matches = [p for p in available if int(_NUMBERED.match(p.name).group(1)) == int(name)]  # type: ignore[union-attr]
        if len(matches) == 1:
            return matches[0].resolve()
        if len(matches) > 1:
            raise UsageError(f"notebook number {name} is ambiguous in {folder}: "
                             f"{', '.join(p.name for p in matches)}; name it by stem")
    listing = ", ".join(p.stem for p in available) or "(none)"
    near = difflib.get_close_matches(name.removesuffix(".ipynb"), [p.stem for p in available], n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise UsageError(f"unknown notebook {name!r}{hint}; available in {folder}: {listing}")


def notebook_parameters(path: Path, profile: str, values: Mapping[str, Any],
                        declared: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The papermill parameters for one execution.

    ``declared`` is :func:`papermill.inspect_notebook`'s answer. A knob goes in under its upper-case
    name when the notebook declares it, otherwise into ``OVERRIDES`` (merged with the notebook's
    own default ``OVERRIDES`` when that is a literal dict).
    """
    parameters: dict[str, Any] = {"PROFILE": profile}
    overrides: dict[str, Any] = {}
    for name, value in values.items():
        if name.upper() in declared:
            parameters[name.upper()] = value
        elif "OVERRIDES" in declared:
            overrides[name] = value
        else:
            raise UsageError(
                f"notebook {path.name} declares neither {name.upper()} nor OVERRIDES in its "
                f"'parameters' cell, so it cannot take {name!r} "
                f"(its parameters: {', '.join(declared) or 'none'})")
    if overrides:
        try:
            base = ast.literal_eval(str(declared["OVERRIDES"].get("default", "{}")))
        except (ValueError, SyntaxError):
            base = {}
        parameters["OVERRIDES"] = {**(base if isinstance(base, dict) else {}), **overrides}
    return parameters


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out}: folder exists and is not empty; choose another "
                         f"--out (or delete it) so an earlier batch is not mixed with this one")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot create it ({parent} is not a writable folder)")


def default_out() -> Path:
    """``<repo>/runs/<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... if that one exists already)."""
    base = repo_root() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One notebook execution: which notebook, with which sweep point and papermill parameters."""

    notebook: Path
    name: str  # output stem: <notebook stem>[__name=value...]
    point: dict[str, Any]
    parameters: dict[str, Any]
    cwd: Path
    status: str = "pending"  # pending | ok | failed | interrupted | skipped (after an interrupt)
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    error: dict[str, Any] | None = None
    kernel_log: str | None = None  # relative to the out folder: what the kernel wrote to stderr
    slowest_cells: list[dict[str, Any]] = field(default_factory=list)

    def index(self, out: Path) -> dict[str, Any]:
        """This job's entry in ``batch.json`` (paths relative to the out folder)."""
        entry = asdict(self)
        entry.update(notebook=self.notebook.stem, input=str(self.notebook), cwd=str(self.cwd),
                     output=f"{self.name}.ipynb", results=f"{self.name}.results.json")
        return entry


@dataclass
class Plan:
    """Everything validated, nothing run yet."""

    profile: str
    params: dict[str, Any]
    sweeps: dict[str, list[Any]]
    out: Path
    timeout: float | None
    jobs: list[Job]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.run",
        description="Execute workbook notebooks with papermill (profiles, overrides, sweeps) "
                    "and aggregate their results into one report.",
        epilog="Notebooks are named by path, file name, stem (00_tour) or number (00, 3). "
               "Known parameters: " + ", ".join(sorted(config.KNOBS)) + ".")
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="notebooks to run (default: every NN_*.ipynb in --notebooks-dir, in order)")
    parser.add_argument("--profile", default="quick",
                        help=f"parameter profile: {', '.join(config.PROFILES)} (default: quick)")
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
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate every input and build the list of executions; raise :class:`UsageError`."""
    import papermill

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

    out = (args.out or default_out()).resolve()
    _check_out(out)

    jobs: list[Job] = []
    taken: set[str] = set()
    points = sweep_points(sweeps)
    for notebook in notebooks:
        try:
            declared = papermill.inspect_notebook(str(notebook))
        except Exception as err:  # unreadable JSON, not a notebook...
            raise UsageError(f"cannot read notebook {notebook}: {type(err).__name__}: {err}") from None
        cwd = folder if notebook.parent == folder else notebook.parent
        for point in points:
            parameters = notebook_parameters(notebook, args.profile, {**params, **point}, declared)
            name = output_stem(notebook.stem, point)
            unique, n = name, 1
            while unique in taken:
                n += 1
                unique = f"{name}__{n}"
            taken.add(unique)
            jobs.append(Job(notebook, unique, dict(point), parameters, cwd))
    return Plan(args.profile, params, sweeps, out, args.timeout, jobs)


# --------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------

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


def _terminal() -> Any:
    """Where the progress bar goes: ``sys.stderr``, or a duplicate of fd 2 when ``sys.stderr`` *is*
    fd 2 (so the bar stays on the terminal while fd 2 points at a kernel log)."""
    try:
        if sys.stderr.fileno() == 2:
            return os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                             errors="replace")
    except (OSError, ValueError, AttributeError):
        pass
    return sys.stderr


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with whitespace runs (newlines too) collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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


def _error_info(err: BaseException) -> dict[str, Any]:
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


def _slowest_cells(path: Path, n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` slowest code cells (of 0.05 s or more) of an executed notebook, by ``In [n]``
    (papermill records each cell's duration in its metadata)."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return []
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
    with _env(RESULTS_ENV, str(out / f"{job.name}.results.json")), _kernel_log(log), \
            PeakRss() as rss:
        try:
            papermill.execute_notebook(
                str(job.notebook), str(output), parameters=job.parameters, kernel_name="python3",
                progress_bar=False, cwd=str(job.cwd), execution_timeout=timeout)
        except KeyboardInterrupt:
            job.status = "interrupted"
            job.wall_s = round(time.perf_counter() - started, 3)
            raise
        except Exception as err:  # PapermillExecutionError, CellTimeoutError, DeadKernelError...
            job.status, job.error = "failed", _error_info(err)
        else:
            job.status = "ok"
    job.wall_s = round(time.perf_counter() - started, 3)
    job.peak_rss_mb = None if rss.peak_mb is None else round(rss.peak_mb, 1)
    job.slowest_cells = _slowest_cells(output)
    job.kernel_log = os.path.relpath(log, out) if log.is_file() else None
    return job


def environment() -> dict[str, Any]:
    """Versions and machine, cheaply (no transformers import) for the report."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "machine": platform.machine(), "cpu_count": os.cpu_count(),
                           "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    for package in ("transformers", "papermill", "numpy"):
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


def run_plan(plan: Plan, argv: Sequence[str]) -> int:
    """Execute every job (continuing past failures), write ``batch.json`` and the report."""
    from tqdm.auto import tqdm

    plan.out.mkdir(parents=True, exist_ok=True)
    batch: dict[str, Any] = {
        "schema": BATCH_SCHEMA, "command": "python -m helpers.run " + shlex.join(argv),
        "profile": plan.profile, "params": plan.params, "sweep": plan.sweeps,
        "timeout_s": plan.timeout, "out": str(plan.out),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": None, "interrupted": False,
        "environment": environment(),
    }
    _write_index(plan, batch)
    began = time.perf_counter()
    interrupted = False
    terminal = _terminal()
    bar = tqdm(plan.jobs, unit="notebook", file=terminal, dynamic_ncols=True)
    try:
        for job in bar:
            bar.set_description(job.name)
            execute(job, plan.out, plan.timeout)
            verdict = "ok" if job.status == "ok" else \
                f"FAILED ({job.error['name']}: {one_line(job.error['message'], 120)})"  # type: ignore[index]
            bar.write(f"{job.name}: {verdict} in {job.wall_s:.1f} s")
            _write_index(plan, batch)
    except KeyboardInterrupt:
        interrupted = True
        for job in plan.jobs:
            if job.status == "pending":
                job.status = "skipped"
    finally:
        bar.close()
        if terminal is not sys.stderr:
            terminal.close()
    batch.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), interrupted=interrupted,
                 wall_s=round(time.perf_counter() - began, 3))
    _write_index(plan, batch)
    summary, html = report.write_reports(plan.out, batch)

    failed = [job for job in plan.jobs if job.status == "failed"]
    print(f"executed notebooks: {_shown(plan.out)}/")
    print(f"summary: {_shown(summary)}")
    print(f"report: {_shown(html)}")
    if failed:
        print(f"FAILED: {len(failed)} of {len(plan.jobs)} notebook runs:")
        for job in failed:
            assert job.error is not None
            print(f"  {job.name}: {job.error['name']}: {one_line(job.error['message'])} "
                  f"-> {_shown(plan.out / (job.name + '.ipynb'))}")
    if interrupted:
        print("interrupted: the report covers the notebooks that finished", file=sys.stderr)
        return 130
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argparse error (2, message already printed)
        return int(exit_.code or 0)
    try:
        plan = make_plan(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_plan(plan, argv)


if __name__ == "__main__":
    sys.exit(main())

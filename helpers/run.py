"""The batch runner: execute notebooks with a profile, overrides and sweeps, then write one report.

Usage (from the repository root)::

    python -m helpers.run                                  # every notebooks/NN_*.ipynb, profile quick
    python -m helpers.run 03 --profile smoke               # one notebook, by number
    python -m helpers.run 03_finetune_cnn -p lr=1e-3 -p bf16=False
    python -m helpers.run 3 --sweep seed=0,1,2 --sweep lr=1e-3,3e-3   # 6 executions
    python -m helpers.run --out runs/my-batch --timeout 600
    python -m helpers.run --sweep seed=0,1,2 --jobs 2      # two notebooks at a time
    python -m helpers.run --resume --out runs/my-batch     # continue: skip what already ran ok
    python -m helpers.run --resume                         # ... in the newest runs/<stamp>/

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

``--resume`` continues a batch in an existing run folder (``--out``, default the newest
``runs/*/`` that has a ``batch.json``): executions that ``batch.json`` records as successful (and
whose executed notebook is there) are kept, everything else (failed, interrupted, not yet run) is
executed. Without notebooks, ``-p``, ``--sweep`` or ``--notebooks-dir`` on the command line the
batch's recorded command is repeated; the profile must be the batch's, and an execution of the same
name must have the same parameters (else use a new ``--out``).

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
* ``summary.md`` and ``report.html`` -- the aggregated report (see :mod:`helpers.report`): every
  run's time and peak memory, claims with their evidence, metrics, tables, figures, the
  environment; for a sweep over ``seed``, every metric as mean ± std over the seeds (grouped by the
  other swept parameters), also written to ``aggregate.json``.

Kernels started by the runner see ``WORKBOOK_STATIC=1``: interactive widgets
(:mod:`helpers.widgets`) fall back to one static run with their current values.

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
import multiprocessing
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import config, report
from .checkpoints import repo_root

BATCH_SCHEMA = 1
RESULTS_ENV = "WORKBOOK_RESULTS"
STATIC_ENV = "WORKBOOK_STATIC"  # tells helpers.widgets there is no live frontend
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
    finished: str | None = None  # when it ended (local time)
    earlier: bool = False  # recorded in an earlier session of this run folder and kept by --resume

    def index(self, out: Path) -> dict[str, Any]:
        """This job's entry in ``batch.json`` (paths relative to the out folder)."""
        entry = asdict(self)
        entry.update(notebook=self.notebook.stem, input=str(self.notebook), cwd=str(self.cwd),
                     output=f"{self.name}.ipynb", results=f"{self.name}.results.json")
        return entry

    @classmethod
    def from_index(cls, entry: Mapping[str, Any]) -> "Job":
        """Rebuild a job from its ``batch.json`` entry (for ``--resume``)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in entry.items() if k in known}
        values.update(notebook=Path(entry["input"]), cwd=Path(entry["cwd"]))
        return cls(**values)


@dataclass
class Plan:
    """Everything validated, nothing run yet."""

    profile: str
    params: dict[str, Any]
    sweeps: dict[str, list[Any]]
    out: Path
    timeout: float | None
    jobs: list[Job]
    parallel: int = 1  # --jobs
    previous: dict[str, Any] | None = None  # the batch.json being resumed


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
    parser.add_argument("--resume", action="store_true",
                        help="continue the batch in --out (default: the newest runs/*/ with a "
                             "batch.json), skipping executions that already succeeded there")
    return parser


def _newest_batch() -> Path:
    found = sorted((repo_root() / "runs").glob("*/batch.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--resume: no run folder with a batch.json under {repo_root() / 'runs'}; "
                         f"name one with --out")
    return found[-1].parent


def load_batch(out: Path) -> dict[str, Any]:
    """The ``batch.json`` of a run folder being resumed; raise :class:`UsageError` when unusable."""
    if not out.is_dir():
        raise UsageError(f"--resume: {out} is not a folder (nothing to resume)")
    path = out / "batch.json"
    try:
        batch = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--resume: no batch.json in {out}; it is not a run folder "
                         f"(run without --resume to start a batch there)") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"--resume: cannot read {path}: {err}") from None
    if not isinstance(batch, dict) or not isinstance(batch.get("runs"), list) or "profile" not in batch:
        raise UsageError(f"--resume: {path} is not a batch index written by helpers.run")
    return batch


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


def _merge_previous(jobs: list[Job], previous: Mapping[str, Any], out: Path) -> list[Job]:
    """The resumed batch's executions followed by new ones; successful ones are kept as done."""
    planned = {job.name: job for job in jobs}
    merged: list[Job] = []
    for entry in previous["runs"]:
        job = planned.pop(entry["name"], None)
        if job is None:  # not asked for this time: keep its record as it is
            old = Job.from_index(entry)
            old.earlier = True
            merged.append(old)
            continue
        asked = json.loads(json.dumps(job.parameters, default=str))
        if entry.get("notebook") != job.notebook.stem or entry.get("parameters") != asked:
            raise UsageError(
                f"--resume: {entry['name']} in {out} ran with parameters {entry.get('parameters')}, "
                f"this command gives {asked}; resume with the batch's own command or use a new --out")
        if entry.get("status") == "ok" and (out / entry.get("output", "")).is_file():
            job = Job.from_index(entry)
            job.earlier = True
        merged.append(job)
    return merged + list(planned.values())


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate every input and build the list of executions; raise :class:`UsageError`."""
    import papermill

    previous = None
    if args.resume:
        out = (args.out or _newest_batch()).resolve()
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
    if previous is not None:
        jobs = _merge_previous(jobs, previous, out)
    return Plan(args.profile, params, sweeps, out, args.timeout, jobs, args.jobs, previous)


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
    with _env(RESULTS_ENV, str(out / f"{job.name}.results.json")), _env(STATIC_ENV, "1"), \
            _kernel_log(log), PeakRss() as rss:
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
    job.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    job.peak_rss_mb = None if rss.peak_mb is None else round(rss.peak_mb, 1)
    job.slowest_cells = _slowest_cells(output)
    job.kernel_log = os.path.relpath(log, out) if log.is_file() else None
    return job


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
    with contextlib.suppress(ImportError):
        import psutil
        env["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    for package in ("torchvision", "transformers", "tokenizers", "peft", "safetensors", "numpy",
                    "pandas", "scikit-learn", "matplotlib", "papermill", "ipykernel", "ipywidgets",
                    "jupyterlab"):
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


def _verdict(job: Job) -> str:
    if job.status == "ok":
        return f"{job.name}: ok in {job.wall_s:.1f} s"
    if job.error is None:
        return f"{job.name}: {job.status}"
    return (f"{job.name}: FAILED ({job.error['name']}: {one_line(job.error['message'], 120)}) "
            f"in {job.wall_s or 0:.1f} s")


def _run_serial(plan: Plan, todo: list[int], bar: Any, save: Any) -> None:
    for i in todo:
        job = plan.jobs[i]
        bar.set_description(job.name)
        execute(job, plan.out, plan.timeout)
        bar.write(_verdict(job))
        bar.update()
        save()


def _run_parallel(plan: Plan, todo: list[int], bar: Any, save: Any) -> None:
    """Run the jobs ``todo``, ``plan.parallel`` at a time, each in a fresh worker process."""
    from multiprocessing.connection import wait as wait_for

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    workers = min(plan.parallel, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue, running = list(todo), {}
    bar.set_description(f"{workers} at a time")
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
                bar.write(_verdict(plan.jobs[i]))
                bar.update()
                save()
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


def run_plan(plan: Plan, argv: Sequence[str]) -> int:
    """Execute every job (continuing past failures), write ``batch.json`` and the report."""
    from tqdm.auto import tqdm

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
    batch.update(jobs=plan.parallel, environment=environment())
    todo = [i for i, job in enumerate(plan.jobs) if not job.earlier]  # earlier: kept as recorded
    kept = len(plan.jobs) - len(todo)
    if plan.previous is not None:
        print(f"resuming {_shown(plan.out)}/: {kept} execution{'s' if kept != 1 else ''} already "
              f"done, {len(todo)} to run")

    def save() -> None:
        _write_index(plan, batch)

    save()
    began = time.perf_counter()
    interrupted = False
    terminal = _terminal()
    bar = tqdm(total=len(todo), unit="notebook", file=terminal, dynamic_ncols=True)
    try:
        if plan.parallel > 1 and len(todo) > 1:
            _run_parallel(plan, todo, bar, save)
        else:
            _run_serial(plan, todo, bar, save)
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
                 wall_s=round(earlier_s + time.perf_counter() - began, 3))
    save()
    summary, html = report.write_reports(plan.out, batch)

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

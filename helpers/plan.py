"""What a batch will run: command-line values, notebooks and sweeps turned into planned executions.

Nothing here starts a kernel. :func:`parse_params` and :func:`parse_sweeps` read ``-p`` and
``--sweep`` values and validate them against :data:`helpers.config.KNOBS`; :func:`find_notebook`
resolves a notebook named by path, file name, stem or number; :func:`check_declared` and
:func:`notebook_parameters` map knobs onto a notebook's ``parameters`` cell; :class:`Job` is one
planned execution and :class:`Plan` all of them. The resume state lives here too: the
``batch.json`` of an earlier session (:func:`load_batch`) and which of its executions are kept
(:func:`merge_previous`). Any bad input raises :class:`UsageError` with one clear message.

How a parameter reaches a notebook: each notebook has a papermill cell tagged ``parameters`` with
``PROFILE``, ``OVERRIDES = {}`` and some knobs upper-cased (``SEED = None``): a notebook parameter
``X`` is always the knob ``x``, and any other upper-case name there is an error. A knob ``lr`` is
passed as ``LR`` when the notebook declares ``LR``, otherwise inside ``OVERRIDES`` (merged with the
notebook's own ``OVERRIDES``). ``PROFILE`` is always passed.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import config
from .checkpoints import repo_root

_NUMBERED = re.compile(r"^(\d+)_.+\.ipynb$")
SPECIAL_PARAMETERS = ("PROFILE", "OVERRIDES")  # the upper-case names of a parameters cell that are not knobs


class UsageError(Exception):
    """Bad command-line input; reported as one message, exit status 2, before any work starts."""


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
        if name.lower() in config.KNOBS:
            near = [name.lower()]  # parameters are knob names, lower case
        else:
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


def check_declared(path: Path, declared: Mapping[str, Any]) -> None:
    """Refuse a notebook whose ``parameters`` cell declares an upper-case name that is neither
    ``PROFILE``, ``OVERRIDES`` nor a knob upper-cased: the runner could not pass it a value."""
    allowed = [*SPECIAL_PARAMETERS, *sorted(name.upper() for name in config.KNOBS)]
    for name in declared:
        if name != name.upper() or name in allowed:
            continue
        near = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise UsageError(
            f"notebook {path.name} declares parameter {name} in its 'parameters' cell, which is not "
            f"a knob{hint}: a notebook parameter must be PROFILE, OVERRIDES or a knob of "
            f"helpers.config.KNOBS upper-cased; allowed: {', '.join(allowed)}")


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


def check_out(out: Path) -> None:
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
    sections: list[dict[str, Any]] = field(default_factory=list)  # seconds per "## " section, in order
    finished: str | None = None  # when it ended (local time)
    tensorboard: str | None = None  # --tensorboard: its train() runs log there (relative to the out folder)
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
    cluster: str | None = None  # --cluster local:N (a Dask LocalCluster)
    scheduler: str | None = None  # --scheduler tcp://host:port (a running Dask cluster)


def newest_batch() -> Path:
    found = sorted((repo_root() / "runs").glob("*/batch.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--resume: no run folder with a batch.json under {repo_root() / 'runs'}; "
                         f"name one with --out")
    return found[-1].parent


def load_batch(out: Path, command: str = "--resume",
               missing: str = "it is not a run folder (run without --resume to start a batch there)") -> dict[str, Any]:
    """The ``batch.json`` of a run folder (being resumed, or compared); raise :class:`UsageError`
    naming ``command`` when it is missing, unreadable or not a batch index."""
    if not out.is_dir():
        raise UsageError(f"{command}: {out} is not a folder (no run folder there)")
    path = out / "batch.json"
    try:
        batch = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{command}: no batch.json in {out}; {missing}") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"{command}: cannot read {path}: {err}") from None
    if not isinstance(batch, dict) or not isinstance(batch.get("runs"), list) or "profile" not in batch:
        raise UsageError(f"{command}: {path} is not a batch index written by helpers.run")
    return batch


def merge_previous(jobs: list[Job], previous: Mapping[str, Any], out: Path) -> list[Job]:
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



def plan_jobs(notebooks: Sequence[Path], folder: Path, profile: str, params: Mapping[str, Any],
              sweeps: Mapping[str, Sequence[Any]]) -> list[Job]:
    """One :class:`Job` per notebook and sweep point, each with a unique name; every notebook's
    ``parameters`` cell is read and checked (:func:`check_declared`) before anything runs."""
    import papermill

    jobs: list[Job] = []
    taken: set[str] = set()
    points = sweep_points(sweeps)
    for notebook in notebooks:
        try:
            declared = papermill.inspect_notebook(str(notebook))
        except Exception as err:  # unreadable JSON, not a notebook...
            raise UsageError(f"cannot read notebook {notebook}: {type(err).__name__}: {err}") from None
        check_declared(notebook, declared)
        cwd = folder if notebook.parent == folder else notebook.parent
        for point in points:
            parameters = notebook_parameters(notebook, profile, {**params, **point}, declared)
            name = output_stem(notebook.stem, point)
            unique, n = name, 1
            while unique in taken:
                n += 1
                unique = f"{name}__{n}"
            taken.add(unique)
            jobs.append(Job(notebook, unique, dict(point), parameters, cwd))
    return jobs

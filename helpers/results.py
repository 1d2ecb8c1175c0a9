"""Where a notebook's measured numbers go, so the batch runner can build one report.

A notebook records metrics, tables, figures and claims with the functions below. They are kept in
one JSON file per executed notebook, rewritten atomically after every record so a crash loses
nothing already measured:

* under the batch runner: the file named by ``$WORKBOOK_RESULTS`` (next to the executed notebook);
* interactively: ``runs/interactive/<notebook>.results.json``.

File format (``schema`` 1)::

    {"schema": 1, "notebook": "00_tour", "profile": "quick", "params": {...},
     "metrics": {"name": value, ...},
     "tables": {"name": {"columns": [...], "rows": [[...], ...]}},
     "figures": {"name": "relative/path.png"},
     "claims": [{"name": str, "holds": bool, "asserted": bool, "evidence": {...}}],
     "started": "...", "updated": "..."}
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .checkpoints import atomic_write_json, repo_root

SCHEMA = 1


def _jsonable(value: Any) -> Any:
    """Turn numpy/torch scalars, tuples and NaNs into plain JSON values."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


def _default_path() -> Path:
    env = os.environ.get("WORKBOOK_RESULTS")
    if env:
        return Path(env)
    session = os.environ.get("JPY_SESSION_NAME", "interactive")  # JupyterLab sets the notebook path
    return repo_root() / "runs" / "interactive" / f"{Path(session).stem}.results.json"


class Results:
    """The results of one notebook run. Use the module-level functions rather than this class."""

    def __init__(self, path: Path | None = None, notebook: str | None = None):
        self.path = Path(path) if path else _default_path()
        self.data: dict[str, Any] = {
            "schema": SCHEMA, "notebook": notebook or self.path.name.removesuffix(".results.json"),
            "profile": None, "params": {}, "metrics": {}, "tables": {}, "figures": {},
            "claims": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    @property
    def profile(self) -> str | None:
        return self.data["profile"]

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(self.path, self.data)


_current: Results | None = None


def current() -> Results:
    """The results of the running notebook (created on first use)."""
    global _current
    if _current is None:
        _current = Results()
    return _current


def start(profile: str, params: Mapping[str, Any]) -> Results:
    """Begin recording a notebook run; called by :func:`helpers.config.resolve`."""
    global _current
    _current = Results()
    _current.data["profile"] = profile
    _current.data["params"] = _jsonable(dict(params))
    _current.save()
    return _current


def record(name: str, value: Any) -> Any:
    """Record one measured number (or small JSON value) under ``name``; returns ``value``."""
    res = current()
    res.data["metrics"][name] = _jsonable(value)
    res.save()
    return value


def record_table(name: str, table: Any) -> Any:
    """Record a table (a pandas DataFrame, or a list of row dicts); returns it for display."""
    import pandas as pd

    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    flat = frame.reset_index() if frame.index.name or isinstance(frame.index, pd.MultiIndex) else frame
    res = current()
    res.data["tables"][name] = {"columns": [str(c) for c in flat.columns],
                                "rows": _jsonable(flat.values.tolist())}
    res.save()
    return table


def record_figure(name: str, figure: Any) -> Any:
    """Save a matplotlib figure as PNG beside the results file and record its path."""
    res = current()
    folder = res.path.parent / f"{res.path.name.removesuffix('.results.json')}_figures"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    figure.savefig(target, dpi=90, bbox_inches="tight")
    res.data["figures"][name] = os.path.relpath(target, res.path.parent)
    res.save()
    return figure


def add_claim(entry: Mapping[str, Any]) -> None:
    res = current()
    res.data["claims"].append(_jsonable(dict(entry)))
    res.save()


def sibling(prefix: str) -> dict[str, Any] | None:
    """What another notebook of the same batch recorded (e.g. ``sibling("03_")``), or ``None``.

    Looks beside this notebook's results file: in a batch folder that is the same run; when
    working interactively, ``runs/interactive/``. With a sweep, the first point's results.
    """
    import json

    folder = current().path.parent
    for path in sorted(folder.glob(f"{prefix}*.results.json")):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def table(recorded: Mapping[str, Any], name: str):
    """A table recorded with :func:`record_table`, back as a pandas DataFrame."""
    import pandas as pd

    spec = recorded["tables"][name]
    frame = pd.DataFrame(spec["rows"], columns=spec["columns"])
    # JSON has no NaN: record_table wrote non-finite floats as "nan"/"inf" (a std over one seed is
    # NaN). A column of numbers and such strings comes back as floats, so arithmetic on it works.
    for column in frame.columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) and values.map(_non_finite_or_number).all():
            frame[column] = values.map(lambda v: float(v) if isinstance(v, str) else v).astype(float)
    return frame


def _non_finite_or_number(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("nan", "inf", "-inf")
    return isinstance(value, (int, float)) and not isinstance(value, bool)

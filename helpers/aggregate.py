"""What a batch measured, gathered: each run's recorded results, claim verdicts, sweep groups and
the aggregation over seeds. No formatting here; :mod:`helpers.report` renders it.

A claim's verdict is one of:

* ``pass`` -- it holds (asserted: the profile is ``quick`` or ``full``);
* ``FAIL`` -- it does not hold in an asserted profile (the notebook failed on it);
* ``reported only: holds`` / ``reported only: does not hold`` -- ``smoke`` runs too little to assert.

A sweep over ``seed`` is aggregated (:func:`seed_aggregates`): each numeric metric and table as
mean ± std over the seeds, per notebook and point of the other swept parameters.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence


def load_results(out: Path, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results a run recorded, or ``None`` when it recorded nothing (or the file is unreadable)."""
    path = out / run["results"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_verdict(claim: Mapping[str, Any]) -> str:
    """``pass``, ``FAIL``, ``reported only: holds`` or ``reported only: does not hold``."""
    if claim.get("asserted"):
        return "pass" if claim.get("holds") else "FAIL"
    return "reported only: " + ("holds" if claim.get("holds") else "does not hold")


#: Evidence keys a structured claim (:mod:`helpers.claims`) writes itself; the rest is extra evidence.
_STRUCTURED_KEYS = ("effect", "effect (relative)", "95% CI", "margin", "n")


def is_structured(claim: Mapping[str, Any]) -> bool:
    """Whether a recorded claim was made by ``claim.greater/less/close/above`` (it has sides)."""
    return "kind" in claim and "a_label" in claim and "b_label" in claim


def _side_value(values: Any) -> float | None:
    numbers = [n for n in (_number(v) for v in (values if isinstance(values, list) else [values])) if n is not None]
    return statistics.fmean(numbers) if numbers else None


def claim_fields(claim: Mapping[str, Any]) -> dict[str, Any]:
    """One claim in the report's uniform shape, whatever API made it.

    For a structured claim: ``sides`` (each side's label and its mean over seeds), ``effect`` (the
    mean paired difference ``a - b``, or relative to ``b``), ``ci95`` (its 95% interval, ``None``
    with one seed), ``margin`` (what the effect must clear, e.g. ``> 0.05`` or ``|effect| <= 0.1``,
    ``(whole CI)`` when ``test="ci"``), ``n`` (seeds paired). For a plain ``claim(...)`` those are
    ``None``. Both kinds have ``asserted`` (``"yes"``; ``"no: <why>"`` when reported only by choice;
    ``"no (smoke)"`` when the profile is too small to assert) and ``evidence`` (a structured claim's
    *extra* evidence only: its sides, effect and margin are the fields above).
    """
    why = claim.get("why_reported_only")
    asserted = "yes" if claim.get("asserted") else (f"no: {why}" if why else "no (smoke)")
    evidence = dict(claim.get("evidence") or {})
    if not is_structured(claim):
        return {"sides": None, "effect": None, "ci95": None, "margin": None, "n": None,
                "relative": False, "asserted": asserted, "evidence": evidence}
    a_label, b_label = str(claim["a_label"]), str(claim["b_label"])
    for key in (a_label, b_label, *_STRUCTURED_KEYS):
        evidence.pop(key, None)
    ci = claim.get("ci95") or [None, None]
    ci95 = None if any(_number(c) is None for c in ci) else (float(ci[0]), float(ci[1]))
    margin = _number(claim.get("margin"))
    if claim.get("kind") == "close":
        margin_text = f"|effect| <= {margin:g}" if margin is not None else ""
    else:
        margin_text = f"> {margin:g}" if margin is not None else ""
    if claim.get("test") == "ci":
        margin_text += " (whole CI)"
    return {"sides": ((a_label, _side_value(claim.get("a"))), (b_label, _side_value(claim.get("b")))),
            "effect": _number(claim.get("effect")), "ci95": ci95, "margin": margin_text,
            "n": claim.get("n"), "relative": bool(claim.get("relative")), "asserted": asserted,
            "evidence": evidence}


def claim_counts(results: Mapping[str, Any] | None) -> dict[str, int]:
    """How many of a run's claims ``pass``, ``fail`` or are ``reported`` only."""
    counts = {"pass": 0, "fail": 0, "reported": 0}
    for claim in (results or {}).get("claims", []):
        verdict = claim_verdict(claim)
        counts["pass" if verdict == "pass" else "fail" if verdict == "FAIL" else "reported"] += 1
    return counts

def scalar_metrics(results: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's metrics that are single values (not dicts or curves)."""
    metrics = (results or {}).get("metrics", {})
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _stat(xs: Sequence[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(xs), "n": len(xs),
            "std": statistics.stdev(xs) if len(xs) > 1 else None}


def flat_numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric metrics, with dicts flattened: ``{"gap": {"1": 0.2}}`` -> ``{"gap[1]": 0.2}``.
    Lists (curves), strings and booleans are left out."""
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        key = f"{prefix}[{name}]" if prefix else str(name)
        if isinstance(value, Mapping):
            flat.update(flat_numbers(value, key))
        elif (number := _number(value)) is not None:
            flat[key] = number
    return flat


def aggregate_table(tables: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One table recorded by every seed, aggregated cell by cell.

    Tables are matched row by row, so they must have the same columns and number of rows (else
    ``None``). A cell equal in every seed (a method's name, a budget) is kept; a numeric cell that
    varies becomes ``{"mean", "std", "n"}``; any other varying cell becomes ``"(varies)"``.
    """
    first = tables[0]
    columns, nrows = first.get("columns"), len(first.get("rows", []))
    if any(t.get("columns") != columns or len(t.get("rows", [])) != nrows for t in tables):
        return None
    rows = []
    for i in range(nrows):
        if any(len(t["rows"][i]) != len(columns) for t in tables):
            return None
        row = []
        for j in range(len(columns)):
            cells = [t["rows"][i][j] for t in tables]
            numbers = [_number(c) for c in cells]
            if all(c == cells[0] for c in cells):
                row.append(cells[0])
            elif all(n is not None for n in numbers):
                row.append(_stat(numbers))  # type: ignore[arg-type]
            else:
                row.append("(varies)")
        rows.append(row)
    return {"columns": columns, "rows": rows}


def seed_aggregates(runs: Sequence[Mapping[str, Any]],
                    results: Mapping[str, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every numeric metric and table, per notebook and sweep point.

    Successful runs of one notebook whose sweep points differ only in ``seed`` form a group; a
    group is reported when it holds at least two seeds. Each group is
    ``{"notebook", "point": {the other swept values}, "seeds": [...], "metrics": {name: {"mean",
    "std", "n"}}, "tables": {name: {"columns", "rows"}}}``: ``std`` is the sample standard
    deviation (``None`` for one value), ``n`` the number of seeds that recorded the metric; metrics
    that are dicts are flattened (``gap[1]``); tables are aggregated cell by cell
    (:func:`aggregate_table`). Failed runs are left out: a partial run's numbers would bias the mean.
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        if run.get("status") != "ok" or "seed" not in run.get("point", {}):
            continue
        point = {k: v for k, v in run["point"].items() if k != "seed"}
        key = (run["notebook"], json.dumps(point, sort_keys=True, default=str))
        group = groups.setdefault(key, {"notebook": run["notebook"], "point": point,
                                        "seeds": [], "values": {}, "recorded": []})
        group["seeds"].append(run["point"]["seed"])
        recorded = results.get(run["name"]) or {}
        group["recorded"].append(recorded.get("tables") or {})
        for name, number in flat_numbers(recorded.get("metrics") or {}).items():
            group["values"].setdefault(name, []).append(number)
    out = []
    for group in groups.values():
        values, recorded = group.pop("values"), group.pop("recorded")
        if len(set(map(str, group["seeds"]))) < 2:
            continue
        group["metrics"] = {name: _stat(xs) for name, xs in values.items()}
        group["tables"] = {}
        for name in recorded[0]:
            if all(name in tables for tables in recorded):
                table = aggregate_table([tables[name] for tables in recorded])
                if table is not None:
                    group["tables"][name] = table
        out.append(group)
    return out


def sweep_groups(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The runs of each notebook that ran more than once (a sweep), by notebook."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["notebook"], []).append(run)
    return {name: group for name, group in groups.items() if len(group) > 1}

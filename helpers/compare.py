"""Compare two batches: ``python -m helpers.run compare A B``.

``A`` and ``B`` are run folders written by :mod:`helpers.run` (each holds ``batch.json`` and the
``*.results.json`` of its executions). The comparison, printed as Markdown (and written to
``--out`` when given), has four parts:

* **metrics side by side**: every numeric metric of every execution both batches ran (matched by
  execution name, e.g. ``03_finetune_cnn__seed=0``; dicts flattened as in the report), with the
  change B - A; ``--changed`` keeps only the rows that differ;
* **claims that changed verdict** (``pass``, ``FAIL``, ``reported only: ...``, or missing);
* **environment differences**: package versions, device, commit (:func:`helpers.run.environment`);
* executions that only one batch has, and each batch's profile and command.

Typical use: rerun the workbook after an upgrade or on another machine and see what moved::

    python -m helpers.run --out runs/after
    python -m helpers.run compare runs/before runs/after --changed
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .aggregate import claim_verdict, flat_numbers, load_results
from .plan import UsageError, load_batch
from .report import fmt, write_text


@dataclass
class Batch:
    """One run folder: its ``batch.json`` and each execution's recorded results (``None``: none)."""

    folder: Path
    index: dict[str, Any]
    results: dict[str, dict[str, Any] | None]

    @classmethod
    def load(cls, folder: Path) -> "Batch":
        index = load_batch(Path(folder), "compare", "give two run folders written by python -m helpers.run "
                                                     "(e.g. runs/<stamp>)")
        return cls(Path(folder), index, {run["name"]: load_results(Path(folder), run)
                                         for run in index["runs"]})


@dataclass
class Comparison:
    """What differs between batch ``a`` and batch ``b``."""

    a: Batch
    b: Batch
    metrics: list[dict[str, Any]] = field(default_factory=list)  # run, metric, a, b, change
    claims: list[dict[str, Any]] = field(default_factory=list)  # run, claim, a, b (verdicts)
    environment: list[dict[str, Any]] = field(default_factory=list)  # key, a, b
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)


def _verdicts(results: Mapping[str, Any] | None) -> dict[str, str]:
    return {claim["name"]: claim_verdict(claim) for claim in (results or {}).get("claims", [])}


def compare(a: Path | Batch, b: Path | Batch, changed_only: bool = False) -> Comparison:
    """Compare two run folders (see the module docstring); ``changed_only`` drops equal metrics."""
    a = a if isinstance(a, Batch) else Batch.load(a)
    b = b if isinstance(b, Batch) else Batch.load(b)
    result = Comparison(a, b)
    both = [name for name in a.results if name in b.results]
    result.only_a = [name for name in a.results if name not in b.results]
    result.only_b = [name for name in b.results if name not in a.results]
    for name in both:
        ra, rb = a.results[name], b.results[name]
        ma, mb = flat_numbers((ra or {}).get("metrics", {})), flat_numbers((rb or {}).get("metrics", {}))
        for metric in [*ma, *(m for m in mb if m not in ma)]:
            va, vb = ma.get(metric), mb.get(metric)
            change = vb - va if va is not None and vb is not None else None
            if changed_only and va == vb:
                continue
            result.metrics.append({"run": name, "metric": metric, "a": va, "b": vb, "change": change})
        ca, cb = _verdicts(ra), _verdicts(rb)
        for claim in [*ca, *(c for c in cb if c not in ca)]:
            if ca.get(claim) != cb.get(claim):
                result.claims.append({"run": name, "claim": claim, "a": ca.get(claim, "missing"),
                                      "b": cb.get(claim, "missing")})
    ea, eb = a.index.get("environment", {}), b.index.get("environment", {})
    for key in [*ea, *(k for k in eb if k not in ea)]:
        if ea.get(key) != eb.get(key):
            result.environment.append({"key": key, "a": ea.get(key), "b": eb.get(key)})
    return result


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    cell = lambda v: "—" if v is None else fmt(v).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]


def render_markdown(result: Comparison) -> str:
    """The comparison as Markdown: batches, claims that changed verdict, environment, metrics."""
    a, b = result.a, result.b
    lines = [f"# Comparison: A = {a.folder} vs B = {b.folder}", ""]
    lines += _table(["", "A", "B"], [
        ["profile", a.index.get("profile"), b.index.get("profile")],
        ["command", a.index.get("command"), b.index.get("command")],
        ["started", a.index.get("started"), b.index.get("started")],
        ["executions", len(a.results), len(b.results)]])
    if result.only_a or result.only_b:
        lines += [f"Only in A: {', '.join(result.only_a) or 'none'}. "
                  f"Only in B: {', '.join(result.only_b) or 'none'}.", ""]
    lines += ["## Claims that changed verdict", ""]
    lines += (_table(["execution", "claim", "A", "B"],
                     [[c["run"], c["claim"], c["a"], c["b"]] for c in result.claims])
              if result.claims else ["None: every claim both batches checked has the same verdict.", ""])
    lines += ["## Environment differences", ""]
    lines += (_table(["", "A", "B"], [[e["key"], e["a"], e["b"]] for e in result.environment])
              if result.environment else ["None.", ""])
    lines += ["## Metrics side by side", ""]
    lines += (_table(["execution", "metric", "A", "B", "B - A"],
                     [[m["run"], m["metric"], m["a"], m["b"], m["change"]] for m in result.metrics])
              if result.metrics else ["No metrics to show.", ""])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.run compare A B [--changed] [--out FILE]``; 0 done, 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m helpers.run compare",
                                     description="Compare two batches (run folders) of helpers.run.")
    parser.add_argument("a", type=Path, help="the first run folder (A)")
    parser.add_argument("b", type=Path, help="the second run folder (B)")
    parser.add_argument("--changed", action="store_true", help="only metrics whose value differs")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown there")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        text = render_markdown(compare(args.a, args.b, args.changed))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.out is not None:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

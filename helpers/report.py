"""Render a batch (``batch.json`` + each run's ``*.results.json``) as ``summary.md`` and ``report.html``.

The HTML report is one self-contained file: figures are embedded as base64 PNG, tables are HTML
tables, CSS is inline. It shows, for the whole batch: status and time of every notebook run, every
claim in one shape (:func:`claim_cells`: verdict, its two sides and their values, the effect with its
95% interval, the margin, the number of paired seeds, asserted or reported only and why, evidence),
metrics (side by side across sweep points), recorded tables and figures, errors of failed runs,
the profile and parameters used, and the environment (versions, CPU, memory). A sweep over ``seed`` is also aggregated: each metric as mean ± std over the seeds,
per notebook and point of the other swept parameters (also written to ``aggregate.json``).

What is shown is gathered by :mod:`helpers.aggregate` (results, claim verdicts, seed aggregates);
this module formats it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .aggregate import (claim_counts, claim_fields, claim_verdict, load_results, scalar_metrics,
                        seed_aggregates, sweep_groups)
from .checkpoints import atomic_write_bytes


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (see :func:`helpers.checkpoints.atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits, containers as compact JSON, ``None`` as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def fmt_evidence(evidence: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in (evidence or {}).items())


#: The columns every claim is shown with, in both reports (see :func:`claim_cells`).
CLAIM_COLUMNS = ["claim", "verdict", "sides (mean over seeds)", "effect [95% CI]", "margin", "n", "asserted",
                 "evidence"]


def claim_cells(claim: Mapping[str, Any]) -> list[str]:
    """A claim as the report's row (:data:`CLAIM_COLUMNS`): name, verdict, the two sides with their
    values, the effect with its 95% interval, the margin it must clear, the number of paired seeds,
    whether it is asserted (or reported only, and why), and any further evidence. A plain
    ``claim(...)`` (not a comparison) fills only name, verdict, asserted and evidence."""
    f = claim_fields(claim)
    sides = effect = ""
    if f["sides"] is not None:
        sides = " vs ".join(f"{label} = {fmt(value)}" for label, value in f["sides"])
        if f["effect"] is not None:
            effect = f"{f['effect']:+.4g}" + (" (relative)" if f["relative"] else "")
            if f["ci95"] is not None:
                effect += f" [{f['ci95'][0]:+.3g}, {f['ci95'][1]:+.3g}]"
    return [str(claim.get("name", "")), claim_verdict(claim), sides, effect, f["margin"] or "",
            fmt(f["n"]), f["asserted"], fmt_evidence(f["evidence"])]


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with whitespace runs (newlines too) collapsed, cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _counts_text(counts: Mapping[str, int]) -> str:
    parts = [f"{counts['pass']} pass"] if counts["pass"] else []
    if counts["fail"]:
        parts.append(f"{counts['fail']} FAIL")
    if counts["reported"]:
        parts.append(f"{counts['reported']} reported only")
    return ", ".join(parts) or "none"


def _point_text(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in point.items())


def fmt_mean_std(stat: Mapping[str, Any], seeds: int) -> str:
    """``0.8123 ± 0.0123``; the count is added when a metric is missing for some seeds."""
    text = fmt(stat["mean"]) + (f" ± {fmt(stat['std'])}" if stat["std"] is not None else "")
    return text + (f" (n={stat['n']})" if stat["n"] != seeds else "")


def _aggregate_cell(cell: Any, seeds: int) -> Any:
    return fmt_mean_std(cell, seeds) if isinstance(cell, Mapping) and "mean" in cell else cell


def _aggregate_tables(group: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, columns, rows) of every table a group shows: its metrics, then its tables."""
    seeds = len(group["seeds"])
    shown = []
    if group["metrics"]:
        shown.append(("metrics", ["metric", "mean ± std", "seeds"],
                      [[name, fmt_mean_std(stat, seeds), stat["n"]]
                       for name, stat in group["metrics"].items()]))
    for name, table in group.get("tables", {}).items():
        shown.append((f"table {name}", table["columns"],
                      [[_aggregate_cell(c, seeds) for c in row] for row in table["rows"]]))
    return shown


def _aggregate_title(group: Mapping[str, Any]) -> str:
    where = f" at {_point_text(group['point'])}" if group["point"] else ""
    seeds = ", ".join(fmt(s) for s in group["seeds"])
    return f"{group['notebook']}{where}: {len(group['seeds'])} seeds ({seeds})"


def _status_text(run: Mapping[str, Any]) -> str:
    return run["status"] + (" (earlier session)" if run.get("earlier") else "")


def _resumed_text(batch: Mapping[str, Any]) -> str:
    resumed = batch.get("resumed") or []
    if not resumed:
        return ""
    return f"; resumed {len(resumed)} time{'s' if len(resumed) != 1 else ''} (last {resumed[-1]['started']})"


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------

def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(batch: Mapping[str, Any], results: Mapping[str, dict[str, Any] | None]) -> str:
    runs = batch["runs"]
    failed = [r for r in runs if r["status"] == "failed"]
    ok = sum(r["status"] == "ok" for r in runs)
    lines = [f"# Workbook batch: {Path(batch['out']).name}", "",
             f"- command: `{batch['command']}`",
             f"- profile: **{batch['profile']}**; parameters: {_point_text(batch['params']) or 'profile defaults'}"
             + (f"; sweep: {_point_text(batch['sweep'])}" if batch["sweep"] else ""),
             f"- {len(runs)} notebook run{'s' if len(runs) != 1 else ''}: {ok} ok, {len(failed)} failed"
             + (", interrupted" if batch.get("interrupted") else "")
             + f"; total {_seconds(batch.get('wall_s'))}",
             f"- started {batch['started']}, finished {batch.get('finished') or '-'}"
             + _resumed_text(batch)
             + (f"; {batch['jobs']} notebooks at a time" if (batch.get("jobs") or 1) > 1 else ""), ""]
    if failed:
        lines += ["## Failed", ""]
        lines += [f"- **{r['name']}**: {r['error']['name']}: {one_line(r['error']['message'], 300)} "
                  f"([executed notebook]({r['output']}))" for r in failed]
        lines.append("")

    lines += ["## Runs", ""]
    lines += _md_table(
        ["run", "status", "time", "peak memory (MB)", "claims", "notebook"],
        [[r["name"], _status_text(r), _seconds(r.get("wall_s")), r.get("peak_rss_mb"),
          _counts_text(claim_counts(results.get(r["name"]))), f"[{r['output']}]({r['output']})"]
         for r in runs])

    claims = [(r["name"], c) for r in runs for c in (results.get(r["name"]) or {}).get("claims", [])]
    lines += ["## Claims", ""]
    if claims:
        lines += _md_table(["run", *CLAIM_COLUMNS], [[name, *claim_cells(c)] for name, c in claims])
    else:
        lines += ["No claims recorded.", ""]

    for group in seed_aggregates(runs, results):
        lines += [f"## Across seeds: {_aggregate_title(group)}", ""]
        for title, columns, rows in _aggregate_tables(group):
            lines += [f"Mean ± std over seeds, {title}:", ""] + _md_table(columns, rows)

    for notebook, group in sweep_groups(runs).items():
        names = list(dict.fromkeys(k for r in group for k in scalar_metrics(results.get(r["name"]))))
        if names:
            lines += [f"## Sweep: {notebook}", ""]
            lines += _md_table(["point", *names],
                               [[_point_text(r["point"]),
                                 *(scalar_metrics(results.get(r["name"])).get(n) for n in names)]
                                for r in group])

    lines += ["## Metrics per run", ""]
    for run in runs:
        res = results.get(run["name"]) or {}
        lines += [f"### {run['name']} ({run['status']}, {_seconds(run.get('wall_s'))})", ""]
        if res.get("metrics"):
            lines += _md_table(["metric", "value"], list(res["metrics"].items()))
        for table_name, table in res.get("tables", {}).items():
            lines += [f"Table *{table_name}*:", ""] + _md_table(table["columns"], table["rows"])
        lines += [f"![{name}]({path})" for name, path in res.get("figures", {}).items()]
        if res.get("figures"):
            lines.append("")
        if run.get("error"):
            lines += [f"Error: `{run['error']['name']}: {one_line(run['error']['message'], 300)}`", ""]
        if not res:
            lines += ["(no results recorded)", ""]

    lines += ["## Environment", ""]
    lines += _md_table(["", ""], list(batch.get("environment", {}).items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# html
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
h3{margin-top:1.4em}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.stat{white-space:nowrap}table{display:block;max-width:100%;overflow-x:auto}
.ok,.pass{color:#1a7f37;font-weight:600}.failed,.FAIL{color:#c62828;font-weight:700}
.reported{color:#777}.skipped,.pending,.interrupted{color:#996800}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;overflow-x:auto;font-size:.85em}
.box{border-left:4px solid #c62828;background:#fff4f4;padding:.4em 1em}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}code{background:#f3f3f3;padding:0 .2em}
.muted{color:#666;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(fmt(value))


def _html_table(columns: Sequence[str], rows: Iterable[Sequence[Any]],
                raw: Sequence[int] = ()) -> str:
    """An HTML table; cells in columns listed in ``raw`` are inserted as (already safe) HTML."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in raw:
                cells.append(f"<td>{cell}</td>")
            else:
                num = isinstance(cell, (int, float)) and not isinstance(cell, bool)
                stat = isinstance(cell, str) and " ± " in cell  # a mean ± std: keep on one line
                css = " class=\"num\"" if num else " class=\"num stat\"" if stat else ""
                cells.append(f"<td{css}>{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdict_html(verdict: str) -> str:
    css = verdict if verdict in ("pass", "FAIL") else "reported"
    return f"<span class=\"{css}\">{html.escape(verdict)}</span>"


def _claim_cells_html(claim: Mapping[str, Any]) -> list[str]:
    """:func:`claim_cells` with the verdict as coloured (already escaped) HTML."""
    cells = claim_cells(claim)
    cells[1] = _verdict_html(cells[1])
    return cells


def _status_html(status: str) -> str:
    return f"<span class=\"{html.escape(status)}\">{html.escape(status)}</span>"


def _anchor(name: str) -> str:
    return "run-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _figure_html(out: Path, name: str, relative: str) -> str:
    path = out / relative
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return f"<p class=\"muted\">figure {html.escape(name)}: {html.escape(relative)} is missing</p>"
    return (f"<figure><img alt=\"{html.escape(name)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption class=\"muted\">{html.escape(name)}</figcaption></figure>")


def render_html(out: Path, batch: Mapping[str, Any],
                results: Mapping[str, dict[str, Any] | None]) -> str:
    runs = batch["runs"]
    failed = [r for r in runs if r["status"] == "failed"]
    ok = sum(r["status"] == "ok" for r in runs)
    title = f"Workbook batch {Path(batch['out']).name}"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p><b>{len(runs)}</b> notebook run{'s' if len(runs) != 1 else ''}: <span class=\"ok\">{ok} ok</span>, "
             f"<span class=\"{'failed' if failed else 'muted'}\">{len(failed)} failed</span>"
             + (", <span class=\"failed\">interrupted</span>" if batch.get("interrupted") else "")
             + f"; total time {html.escape(_seconds(batch.get('wall_s')))}; "
               f"started {html.escape(batch['started'])}, finished {html.escape(batch.get('finished') or '-')}"
               f"{html.escape(_resumed_text(batch))}"
               + (f"; {batch['jobs']} notebooks at a time" if (batch.get("jobs") or 1) > 1 else "")
               + ".</p>",
             _html_table(["", ""], [
                 ["command", f"<code>{html.escape(batch['command'])}</code>"],
                 ["profile", f"<b>{html.escape(batch['profile'])}</b>"],
                 ["parameters (-p)", html.escape(_point_text(batch["params"]) or "profile defaults")],
                 ["sweep", html.escape(_point_text(batch["sweep"]) or "none")],
                 ["cell timeout", html.escape(f"{batch['timeout_s']:g} s" if batch.get("timeout_s") else "none")],
             ], raw=(1,))]
    if failed:
        items = "".join(
            f"<li><a href=\"#{_anchor(r['name'])}\">{html.escape(r['name'])}</a>: "
            f"<b>{html.escape(r['error']['name'])}</b>: {html.escape(one_line(r['error']['message'], 300))}</li>"
            for r in failed)
        parts.append(f"<div class=\"box\"><b>Failed</b><ul>{items}</ul></div>")

    parts.append("<h2>Runs</h2>")
    parts.append(_html_table(
        ["run", "status", "time", "peak memory (MB)", "claims", "metrics", "executed notebook"],
        [[f"<a href=\"#{_anchor(r['name'])}\">{html.escape(r['name'])}</a>", _status_html(r["status"])
          + (" <span class=\"muted\">(earlier session)</span>" if r.get("earlier") else ""),
          html.escape(_seconds(r.get("wall_s"))), _e(r.get("peak_rss_mb")),
          html.escape(_counts_text(claim_counts(results.get(r["name"])))),
          len((results.get(r["name"]) or {}).get("metrics", {})),
          f"<a href=\"{html.escape(r['output'])}\">{html.escape(r['output'])}</a>"]
         for r in runs], raw=(0, 1, 2, 3, 4, 6)))

    claims = [(r["name"], c) for r in runs for c in (results.get(r["name"]) or {}).get("claims", [])]
    parts.append("<h2>Claims</h2>")
    parts.append(_html_table(["run", *CLAIM_COLUMNS], [[name, *_claim_cells_html(c)] for name, c in claims],
                             raw=(2,))
                 if claims else "<p class=\"muted\">No claims recorded.</p>")

    for group in seed_aggregates(runs, results):
        parts.append(f"<h2>Across seeds: {html.escape(_aggregate_title(group))}</h2>")
        for title, columns, rows in _aggregate_tables(group):
            parts.append(f"<p>Mean ± std over seeds, <b>{html.escape(title)}</b>:</p>")
            parts.append(_html_table(columns, rows))

    for notebook, group in sweep_groups(runs).items():
        names = list(dict.fromkeys(k for r in group for k in scalar_metrics(results.get(r["name"]))))
        if names:
            parts.append(f"<h2>Sweep: {html.escape(notebook)}</h2>")
            parts.append(_html_table(["point", *names],
                                     [[_point_text(r["point"]),
                                       *(scalar_metrics(results.get(r["name"])).get(n) for n in names)]
                                      for r in group]))

    parts.append("<h2>Notebook runs</h2>")
    for run in runs:
        res = results.get(run["name"]) or {}
        parts.append(f"<h3 id=\"{_anchor(run['name'])}\">{html.escape(run['name'])} "
                     f"({_status_html(run['status'])}, {html.escape(_seconds(run.get('wall_s')))})</h3>")
        log = (f"; kernel log <a href=\"{html.escape(run['kernel_log'])}\">"
               f"{html.escape(run['kernel_log'])}</a>" if run.get("kernel_log") else "")
        parts.append(f"<p class=\"muted\">input {html.escape(run['input'])}; injected parameters: "
                     f"<code>{html.escape(fmt(run['parameters']))}</code>{log}</p>")
        if run.get("error"):
            err = run["error"]
            parts.append(f"<div class=\"box\"><b>{html.escape(err['name'])}</b>: "
                         f"{html.escape(err['message'])}"
                         + (f" (cell [{err['cell']}])" if err.get("cell") is not None else "")
                         + f"<details><summary>traceback</summary><pre>{html.escape(err['traceback'])}"
                           f"</pre></details></div>")
        if res.get("params"):
            parts.append("<details><summary>resolved parameters "
                         f"(profile {html.escape(str(res.get('profile')))})</summary>"
                         + _html_table(["parameter", "value"], list(res["params"].items()))
                         + "</details>")
        if res.get("metrics"):
            parts.append(_html_table(["metric", "value"], list(res["metrics"].items())))
        res_claims = res.get("claims", [])
        if res_claims:
            parts.append(_html_table(CLAIM_COLUMNS, [_claim_cells_html(c) for c in res_claims], raw=(1,)))
        for table_name, table in res.get("tables", {}).items():
            parts.append(f"<p><b>{html.escape(table_name)}</b></p>")
            parts.append(_html_table(table.get("columns", []), table.get("rows", [])))
        for name, relative in res.get("figures", {}).items():
            parts.append(_figure_html(out, name, relative))
        if run.get("sections"):
            parts.append("<p class=\"muted\">time by section: " + "; ".join(
                f"{html.escape(c['section'])} {c['seconds']:.1f} s" for c in run["sections"]) + "</p>")
        if run.get("slowest_cells"):
            parts.append("<p class=\"muted\">slowest cells: " + "; ".join(
                f"In [{c['cell']}] {c['seconds']:.1f} s <code>{html.escape(c['source'])}</code>"
                for c in run["slowest_cells"]) + "</p>")
        if not res:
            parts.append("<p class=\"muted\">No results recorded.</p>")

    parts.append("<h2>Environment</h2>")
    parts.append(_html_table(["", ""], list(batch.get("environment", {}).items())))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(out: Path, batch: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``report.html`` into ``out``; return their paths."""
    results = {run["name"]: load_results(out, run) for run in batch["runs"]}
    summary, report = out / "summary.md", out / "report.html"
    aggregates = seed_aggregates(batch["runs"], results)
    if aggregates:
        write_text(out / "aggregate.json", json.dumps(aggregates, indent=2, default=str))
    write_text(summary, render_markdown(batch, results))
    write_text(report, render_html(out, batch, results))
    return summary, report

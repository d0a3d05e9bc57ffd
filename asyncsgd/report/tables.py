"""Markdown tables: report.md from the frames, every cell a number of speedup.csv.

A cell shows a group's median and, where the group pools several runs (seeds),
their min-max in parentheses; runs left out of a table are listed with their
reason, so nothing is dropped silently.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from .frames import SETTING_LABELS, _value_text, setting_columns
from .runs import PHASE_NAMES, PHASES


def _md_table(headers: List[str], rows: List[List[str]]) -> str:
    numeric = [all(_looks_numeric(r[i]) for r in rows) for i in range(len(headers))]
    line = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    body = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def _looks_numeric(text: str) -> bool:
    return bool(re.match(r"^([-+−]?[\d,.]+|—|never)", text))


def _f(value: float, spec: str) -> str:
    """``spec`` is a format spec, or "sig" for about three significant digits without exponents."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if spec == "sig":
        size = abs(value)
        spec = ",.0f" if size >= 100 else ".1f" if size >= 10 else ".2f" if size >= 1 else "#.3g"
    return format(value, spec).replace("-", "−")


def _cell(row: pd.Series, column: str, spec: str, scale: float = 1.0) -> str:
    """median, with (min–max) when the group holds several runs."""
    text = _f(row[column] * scale, spec)
    if row["runs"] > 1 and f"{column}_min" in row and math.isfinite(row[f"{column}_min"]):
        text += f" ({_f(row[f'{column}_min'] * scale, spec)}–{_f(row[f'{column}_max'] * scale, spec)})"
    return text


def _shown_settings(table: pd.DataFrame) -> Tuple[List[str], Dict[str, str]]:
    """Setting columns that vary (model always shows), and the constant ones for the header line."""
    shown, constant = [], {}
    for column in setting_columns(table):
        if column not in table.columns:
            continue
        values = table[column].astype(str).unique()
        if column == "model" or len(values) > 1:
            shown.append(column)
        else:
            constant[column] = values[0]
    return shown, constant


def _ratio(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"


def iteration_table(table: pd.DataFrame) -> str:
    shown, _ = _shown_settings(table)
    baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else "baseline"
    # a sweep without 1-worker runs (the demo) has no scaling column rather than one of dashes
    scaling = table["scaling_speedup"].notna().any()
    headers = [SETTING_LABELS.get(c, c) for c in shown] + [
        "strategy", "workers", "runs", "iteration (ms)", "throughput (samples/s)", f"speedup vs {baseline}",
        *(["speedup vs 1 worker"] if scaling else [])]
    rows = [[_value_text(r[c]) for c in shown] + [
        r["strategy"], str(r["world_size"]), str(r["runs"]), _cell(r, "iter_ms", "sig"),
        _cell(r, "throughput_samples_s", ",.0f"), _ratio(r["speedup_vs_baseline"]),
        *([_ratio(r["scaling_speedup"])] if scaling else [])] for _, r in table.iterrows()]
    return _md_table(headers, rows)


def convergence_table(table: pd.DataFrame) -> str:
    shown, _ = _shown_settings(table)
    baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else "baseline"
    collapsed = "collapsed" in table and (table["collapsed"] > 0).any()
    headers = [SETTING_LABELS.get(c, c) for c in shown] + [
        "strategy", "workers", "test accuracy (%)", f"gap to {baseline} (pp)", "target (%)",
        "time to target (s)", "reached", f"time-to-target speedup vs {baseline}",
        f"iteration speedup vs {baseline}", *(["collapsed"] if collapsed else [])]
    rows = []
    for _, r in table.iterrows():
        ttt_text = _ttt_cell(r)
        gap = r["acc_gap_pp"]
        rows.append([_value_text(r[c]) for c in shown] + [
            r["strategy"], str(r["world_size"]), _cell(r, "test_acc", ".2f", 100.0),
            "—" if not math.isfinite(gap) else f"{gap:+.2f}".replace("-", "−"),
            _f(r["target_acc"] * 100.0, ".1f"), ttt_text if math.isfinite(r["target_acc"]) else "—",
            f"{int(r['target_reached'])}/{int(r['runs'])}" if math.isfinite(r["target_acc"]) else "—",
            _ratio(r["ttt_speedup"]), _ratio(r["speedup_vs_baseline"]),
            *([f"**{int(r['collapsed'])}/{int(r['runs'])}**" if r["collapsed"] else "0"] if collapsed else [])])
    return _md_table(headers, rows)


def collapse_lines(runs: pd.DataFrame) -> List[str]:
    """A warning per complete run whose training loss sat at chance level (summary.json's collapse)."""
    if "collapse" not in runs:
        return []
    hit = runs[(runs["status"] == "complete") & runs["collapse"].notna()]
    return [f"- `{r['run']}` ({r['strategy']}, {r['world_size']} workers, seed {r['seed']}): {r['collapse']}"
            for _, r in hit.iterrows()]


def _ttt_cell(row: pd.Series) -> str:
    def text(value: float) -> str:
        return "never" if value == math.inf else _f(value, "sig")

    cell = text(row["time_to_target_s"])
    if row["runs"] > 1 and math.isfinite(row["time_to_target_s_min"]):
        cell += f" ({text(row['time_to_target_s_min'])}–{text(row['time_to_target_s_max'])})"
    return cell


def breakdown_table(table: pd.DataFrame) -> str:
    shown, _ = _shown_settings(table)
    phases = [*PHASES, "other"]
    headers = [SETTING_LABELS.get(c, c) for c in shown] + ["strategy", "workers"] + [
        f"{PHASE_NAMES[p]} (ms)" for p in phases] + ["total (ms)"]
    rows = [[_value_text(r[c]) for c in shown] + [r["strategy"], str(r["world_size"])] + [
        _f(r[f"t_{p}_ms"], "sig") for p in phases] + [_f(r["t_iter_ms"], "sig")] for _, r in table.iterrows()]
    return _md_table(headers, rows)


def _problem_lines(runs: pd.DataFrame, missing: List[dict], relative_to: Optional[Path]) -> List[str]:
    """Every run left out of a table or a plot, and why: nothing is dropped silently."""
    lines = []
    for _, r in runs.iterrows():
        what = f"{r['strategy']}, {r['world_size']} workers, seed {r['seed']}"
        why = f": {r['error']}" if isinstance(r["error"], str) and r["error"] else ""
        if r["status"] != "complete":
            lines.append(f"- `{r['run']}` ({what}): **{r['status']}**{why}")
        elif why:
            lines.append(f"- `{r['run']}` ({what}): complete, but {r['error']} (left out of what needs it)")
    for m in missing:
        sweep = os.path.relpath(m["sweep"], relative_to) if relative_to else str(m["sweep"])
        lines.append(f"- `{sweep}` job {m['job']} (`{m['overrides']}`): **not started** (no run directory)")
    return lines


def render_markdown(runs: pd.DataFrame, table: pd.DataFrame, missing: List[dict], title: str,
                    inputs: Sequence[str], relative_to: Optional[Path] = None, plots: Sequence[str] = ()) -> str:
    complete = runs[runs["status"] == "complete"]
    problems = _problem_lines(runs, missing, relative_to)
    hosts = ", ".join(sorted({str(h) for h in complete["host"].dropna()})) or "unknown"
    started = sorted(str(s)[:10] for s in complete["started_at"].dropna())
    dates = "unknown" if not started else started[0] if started[0] == started[-1] else f"{started[0]} to {started[-1]}"
    out = [f"# {title}", "",
           f"{len(complete)} complete run(s) of {len(runs) + len(missing)} from {', '.join(f'`{i}`' for i in inputs)}; "
           f"machine: {hosts}; run on {dates}.", ""]
    if table.empty:
        out += ["No run completed, so there are no tables.", ""]
    else:
        _, constant = _shown_settings(table)
        if constant:
            out += ["All rows share " + ", ".join(f"{SETTING_LABELS.get(k, k)} {v}" for k, v in constant.items()) + ".", ""]
        baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else None
        if baseline is None:
            out += ["The baseline strategy is not among the complete runs, so the columns comparing with it are empty.", ""]
        if (table["runs"] > 1).any():
            out += ["Where a row pools several runs (seeds), a cell shows their median and, in parentheses, min–max.", ""]
        base = baseline or "the baseline"
        out += [
            "## Iteration time and throughput", "",
            f"Median time per training iteration after warm-up and global throughput, with the speedup over {base} "
            "(its iteration time divided by this row's, same setting and workers) and, where 1-worker runs exist, "
            "over one worker of the same strategy (throughput ratio at a fixed per-worker batch).", "",
            iteration_table(table), "",
            "## Convergence", "",
            f"Test accuracy at the end of training, its gap to {base} in percentage points, and the training time "
            "(wall-clock, test evaluations left out) to first reach the target accuracy (a run that never did counts "
            f"as infinitely slow), with its speedup over {base} next to the per-iteration speedup.", "",
            convergence_table(table), "",
            "## Where the time goes", "",
            "Mean milliseconds per iteration after warm-up in each phase on rank 0 (communication wait is time "
            "blocked on reductions; other is the rest of the loop).", "",
            breakdown_table(table), "",
        ]
    warnings = collapse_lines(runs)
    if warnings:
        out += ["## Warning: training collapsed to chance level", "",
                "These runs completed, but their mean training loss sat at chance level, ln(classes), for a whole "
                "epoch (asyncsgd.collapse): they stopped learning. Their numbers are in the tables above.", "",
                *warnings, ""]
    out += ["## Runs that failed, did not finish or lack outputs", ""]
    out += problems if problems else [f"None: all {len(runs)} run(s) completed."]
    out += [""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)

"""The command: :func:`make_report` runs the pipeline and writes its files.

What ``asyncsgd-report`` runs once :mod:`asyncsgd.cli` has parsed its
arguments: load the runs, build the frames, draw the plots, render report.md,
and write runs.csv, speedup.csv and report.md atomically into one directory.
"""
from __future__ import annotations

import datetime as _dt
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from ..io import atomic_write_text
from .frames import runs_frame, speedup_frame, varies_link_rate
from .plots import PLOTS, plot_accuracy, plot_breakdown, plot_loss, plot_speedup, plot_speedup_vs_bandwidth
from .runs import ReportError, load_runs, missing_jobs
from .tables import iteration_table, render_markdown


@dataclass
class Report:
    out: Path
    markdown: Path
    runs_csv: Path
    speedup_csv: Path
    plots: List[Path]
    main_table: str  # the iteration-time table, for the terminal
    runs: pd.DataFrame
    table: pd.DataFrame


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())


def make_report(dirs: Sequence[Path], out: Optional[Path] = None, baseline: str = "sync",
                target_acc: Optional[float] = None, title: Optional[str] = None,
                not_settings: Sequence[str] = ()) -> Report:
    """Read the runs under ``dirs`` and write report.md, runs.csv, speedup.csv and the plots to ``out``;
    config keys in ``not_settings`` do not tell settings apart (beyond :data:`frames.NOT_SETTINGS`)."""
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out is not None else dirs[0]
    if target_acc is not None and not 0.0 < target_acc <= 1.0:
        raise ReportError(f"--target-acc {target_acc} must be a fraction in (0, 1], e.g. 0.95")
    runs, sweeps = load_runs(dirs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ReportError(f"{out}: cannot write to this directory")
    # run paths relative to `out`, so report.md and a committed report read the same anywhere
    frame = runs_frame(runs, target_acc, relative_to=out.resolve(), not_settings=not_settings)
    table = speedup_frame(frame, baseline)
    missing = missing_jobs(runs, sweeps)

    paths = {name: out / file for name, file in PLOTS.items()}
    plot_loss(runs, frame, paths["loss_vs_iteration"], x="step")
    plot_loss(runs, frame, paths["loss_vs_time"], x="train_s")
    plot_accuracy(runs, frame, paths["accuracy_vs_epoch"], x="epoch")
    plot_accuracy(runs, frame, paths["accuracy_vs_time"], x="train_s")
    plot_speedup(table, paths["speedup_vs_workers"])
    plot_breakdown(table, paths["time_breakdown"])
    if varies_link_rate(table):  # a sweep over emulated links (scripts/bench-overlap --emulated A,B,C)
        paths["speedup_vs_bandwidth"] = out / "speedup_vs_bandwidth.png"
        plot_speedup_vs_bandwidth(table, paths["speedup_vs_bandwidth"])

    stamp = _dt.date.today().isoformat()
    heading = title or f"asyncsgd report ({stamp})"
    markdown = render_markdown(frame, table, missing, heading, [os.path.relpath(d.resolve(), out.resolve()) for d in dirs],
                               relative_to=out.resolve(), plots=list(paths.values()))
    _write_csv(frame, out / "runs.csv")
    _write_csv(table, out / "speedup.csv")
    atomic_write_text(out / "report.md", markdown)
    return Report(out=out, markdown=out / "report.md", runs_csv=out / "runs.csv", speedup_csv=out / "speedup.csv",
                  plots=list(paths.values()), main_table=iteration_table(table) if not table.empty else "(no complete runs)",
                  runs=frame, table=table)

"""asyncsgd-report: run directories -> tables (markdown, CSV) -> plots (PNG).

Pure functions, in pipeline order, one module per stage:

    runs.py     find_runs(dirs)          run dirs (and the multirun sweeps that hold them)
                load_run(path)           one run's documented outputs: summary.json,
                                         metrics.csv (or .jsonl), .hydra/config.yaml
    frames.py   runs_frame(runs)         one row per run -> runs.csv
                speedup_frame(runs_df)   one row per (setting, strategy, world size) -> speedup.csv
    tables.py   render_markdown(...)     report.md
    plots.py    plot_*(...)              the PNG figures
    command.py  make_report(dirs, out)   all of the above, for the ``asyncsgd-report`` command

Every number in the tables comes from runs.csv by one documented rule
(medians over the runs of a group, ratios of those medians: see
:func:`speedup_frame`), so a reader can recompute any cell by hand. Nothing
else in a run dir is read: ``.asyncsgd/`` is internal and may change.

Everything a caller needs is importable from ``asyncsgd.report`` itself.
"""
from __future__ import annotations

from .command import Report, make_report
from .frames import (
    BASE_SETTINGS,
    CHOICE_GROUPS,
    LINK_KEY,
    NOT_SETTINGS,
    SETTING_LABELS,
    STRATEGY_KEYS,
    link_rate_mbit,
    phase_means,
    resolve_baseline,
    runs_frame,
    setting_columns,
    speedup_frame,
    strategy_labels,
    time_to_target,
    varies_link_rate,
)
from .plots import (
    PLOTS,
    _aligned,  # the unit tests check the curve aggregation directly
    plot_accuracy,
    plot_breakdown,
    plot_loss,
    plot_speedup,
    plot_speedup_vs_bandwidth,
)
from .runs import (
    METRIC_NUMBERS,
    PHASE_NAMES,
    PHASES,
    ReportError,
    Run,
    Sweep,
    find_runs,
    load_run,
    load_runs,
    missing_jobs,
    read_metrics,
)
from .tables import breakdown_table, convergence_table, iteration_table, render_markdown

# The house style, for other reports: asyncsgd.projection writes its validation and
# projection reports with the same tables and figures.
from .plots import _figure as new_figure, _legend as figure_legend, _save as save_figure, _styles as strategy_styles
from .tables import _f as format_number, _md_table as markdown_table

__all__ = [
    "BASE_SETTINGS", "CHOICE_GROUPS", "LINK_KEY", "METRIC_NUMBERS", "NOT_SETTINGS", "PHASES", "PHASE_NAMES", "PLOTS",
    "SETTING_LABELS", "STRATEGY_KEYS", "Report", "ReportError", "Run", "Sweep", "breakdown_table",
    "convergence_table", "find_runs", "iteration_table", "link_rate_mbit", "load_run", "load_runs", "make_report",
    "missing_jobs", "phase_means", "plot_accuracy", "plot_breakdown", "plot_loss", "plot_speedup",
    "plot_speedup_vs_bandwidth", "read_metrics", "render_markdown", "resolve_baseline", "runs_frame",
    "setting_columns", "speedup_frame", "strategy_labels", "time_to_target", "varies_link_rate",
    "new_figure", "figure_legend", "save_figure", "strategy_styles", "format_number", "markdown_table",
]

"""The time-to-accuracy study: reports per network and model, and the verdict on issue 14's targets.

    python -m asyncsgd.time_to_accuracy RUNS_DIR --out results/reference/time_to_accuracy

``RUNS_DIR`` holds one multirun directory per (network, model), named
``<network>-<model>`` (``emulated-cnn``, ``loopback-lenet``, ...), as
``scripts/time-to-accuracy`` writes them. For each one this picks the target
accuracy from its ``sync`` runs (:func:`choose_target`), writes the ordinary
report (``asyncsgd-report`` with that ``--target-acc``) to ``OUT/<network>-<model>/``,
and then ``OUT/README.md``: which strategy reaches the target first and by how
much, and each target of the issue met or missed, with the numbers behind it.

Every figure comes from the reports' speedup.csv (medians over seeds), so the
README can be checked against them by hand.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from .io import atomic_write_text
from .report import ReportError, load_runs, make_report, runs_frame
from .report.frames import split_nice

ACC_TOLERANCE_PP = 0.5  # "within 0.5 percentage points" of sync, and "no worse than" plain delayed K=1
SPEED_RATIO = 0.9  # time-to-target speedup >= 0.9 x the per-iteration speedup (over the emulated links)
TARGET_BELOW_SYNC_PP = 1.0  # the target sits this far below sync's median final accuracy, on a 0.5 pp grid


def choose_target(runs: pd.DataFrame) -> float:
    """Sync's median final test accuracy less TARGET_BELOW_SYNC_PP, rounded down to a multiple of 0.5 pp.

    Below sync's final accuracy so that sync reaches it well before its last
    evaluation (a target at the final accuracy measures evaluation noise);
    fixed per setting before any other strategy is looked at.
    """
    sync = runs[(runs["status"] == "complete") & runs["strategy"].str.fullmatch("sync")]
    if sync.empty or sync["final_test_acc"].isna().all():
        raise ReportError("no complete sync run with a final test accuracy to choose the target from")
    pp = float(sync["final_test_acc"].median()) * 100.0 - TARGET_BELOW_SYNC_PP
    return math.floor(pp * 2.0) / 200.0


def _fields(label: str) -> dict:
    """``delayed(k=2, compensation=spike)+nice`` -> {"k": "2", "compensation": "spike"}."""
    label = split_nice(label)[0]
    return dict(part.split("=", 1) for part in label[len("delayed("):-1].split(", ") if "=" in part)


def _k(label: str) -> Optional[int]:
    if not label.startswith("delayed("):
        return None
    fields = _fields(label)
    return int(fields["k"]) if "k" in fields else None


def _compensation(label: str) -> str:
    return _fields(label).get("compensation", "none")


def _pp(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.2f} pp".replace("-", "−")


def _x(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"


def _ttt(value: float) -> str:
    return "never" if value == math.inf else "—" if not math.isfinite(value) else f"{value:.1f} s"


def best_variant(delayed: pd.DataFrame, sync_acc: float) -> pd.Series:
    """The variant a user would pick among ``delayed`` (one K): the first to the target among those
    ending within ACC_TOLERANCE_PP of sync's accuracy; where none does, the most accurate."""
    close = delayed[(delayed["test_acc"] - sync_acc) * 100.0 >= -ACC_TOLERANCE_PP]
    if not close.empty:
        return close.sort_values(["time_to_target_s", "test_acc"], ascending=[True, False]).iloc[0]
    return delayed.sort_values(["test_acc", "time_to_target_s"], ascending=[False, True]).iloc[0]


def verdicts(table: pd.DataFrame, network: str) -> List[str]:
    """Issue 14's targets for one (network, model) report table (speedup.csv rows, 2 workers)."""
    table = table[table["world_size"] == table["world_size"].max()]
    sync = table[table["strategy"] == "sync"]
    if sync.empty:
        return ["- no sync runs: nothing to compare with"]
    sync_acc = float(sync["test_acc"].iloc[0])
    lines = []
    for k in (1, 2):
        delayed = table[table["strategy"].map(_k) == k]
        if delayed.empty:
            continue
        best = best_variant(delayed, sync_acc)
        gap = (best["test_acc"] - sync_acc) * 100.0
        met = "met" if gap >= -ACC_TOLERANCE_PP else "**missed**"
        lines.append(f"- K={k}: best delayed variant `{best['strategy']}` ends at {best['test_acc'] * 100:.2f}% "
                     f"(median over {int(best['runs'])} seeds) vs sync {sync_acc * 100:.2f}%: {_pp(gap)} — "
                     f"within {ACC_TOLERANCE_PP} pp: {met}")
        if network == "emulated":
            ratio = best["ttt_speedup"] / best["speedup_vs_baseline"]
            met = "met" if math.isfinite(ratio) and ratio >= SPEED_RATIO else "**missed**"
            lines.append(f"  - its time-to-target speedup {_x(best['ttt_speedup'])} vs per-iteration speedup "
                         f"{_x(best['speedup_vs_baseline'])}: ratio {ratio:.2f} (target ≥ {SPEED_RATIO}): {met}"
                         if math.isfinite(ratio) else
                         f"  - time to target {_ttt(best['time_to_target_s'])}: no time-to-target speedup "
                         f"to compare with the per-iteration {_x(best['speedup_vs_baseline'])}: **missed**")
    plain = table[(table["strategy"].map(_k) == 1) & (table["strategy"].map(_compensation) == "none")]
    if not plain.empty:
        plain_acc = float(plain["test_acc"].iloc[0])
        for _, row in table[(table["strategy"].map(_k) == 1) & (table["strategy"].map(_compensation) != "none")].iterrows():
            gap = (row["test_acc"] - plain_acc) * 100.0
            met = "met" if gap >= -ACC_TOLERANCE_PP else "**missed**"
            lines.append(f"- K=1 `{_compensation(row['strategy'])}` vs plain delayed K=1: {row['test_acc'] * 100:.2f}% "
                         f"vs {plain_acc * 100:.2f}% ({_pp(gap)}), time to target {_ttt(row['time_to_target_s'])} vs "
                         f"{_ttt(float(plain['time_to_target_s'].iloc[0]))} — not worse: {met}")
    return lines


def first_to_target(table: pd.DataFrame) -> str:
    """One sentence: the strategy with the shortest median time to target, and its margin over sync."""
    reached = table[table["time_to_target_s"].map(lambda v: math.isfinite(v))]
    if reached.empty:
        return "No strategy reached the target in the median run."
    best = reached.sort_values("time_to_target_s").iloc[0]
    spread = f"{_ttt(best['time_to_target_s_min'])}–{_ttt(best['time_to_target_s_max'])}"
    return (f"First to the target: `{best['strategy']}`, {_ttt(best['time_to_target_s'])} (seeds {spread}), "
            f"{_x(best['ttt_speedup'])} sync's time to target, at {_x(best['speedup_vs_baseline'])} its "
            f"iteration speed; final accuracy {best['test_acc'] * 100:.2f}% "
            f"({best['test_acc_min'] * 100:.2f}–{best['test_acc_max'] * 100:.2f}%).")


def study(runs_dir: Path, out: Path, title: str = "") -> Path:
    """Write every (network, model) report and the README of the study; returns the README."""
    sections = []
    dirs = sorted(d for d in Path(runs_dir).iterdir() if d.is_dir() and "-" in d.name)
    if not dirs:
        raise ReportError(f"{runs_dir}: no <network>-<model> multirun directories")
    for d in dirs:
        network, model = d.name.split("-", 1)
        runs, _ = load_runs([d])
        target = choose_target(runs_frame(runs))
        report = make_report([d], out=out / d.name, target_acc=target,
                             title=f"Time to accuracy, {model} on Fashion-MNIST, {network} links{title}")
        table = report.table
        sections += [f"## {network} links, {model}", "",
                     f"Target {target * 100:.1f}% (sync's median final accuracy less {TARGET_BELOW_SYNC_PP} pp, "
                     f"rounded down to 0.5 pp). [Full report]({d.name}/report.md).", "",
                     first_to_target(table), "", *verdicts(table, network), ""]
    text = "\n".join([f"# Time to accuracy on Fashion-MNIST{title}", "",
                      "Generated by `python -m asyncsgd.time_to_accuracy` from the runs of "
                      "`scripts/time-to-accuracy`; medians over seeds, spread in parentheses. Targets of issue 14: "
                      f"the best delayed variant within {ACC_TOLERANCE_PP} pp of sync's final accuracy at K=1 and "
                      f"K=2 (the best: the first to the target among the variants within {ACC_TOLERANCE_PP} pp; "
                      f"where none is, the most accurate); over the emulated links its time-to-target speedup "
                      f"at least {SPEED_RATIO}× its per-iteration speedup; no compensation worse than plain delayed K=1 "
                      f"(by more than {ACC_TOLERANCE_PP} pp).", "", *sections])
    atomic_write_text(out / "README.md", text)
    return out / "README.md"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asyncsgd.time_to_accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="directory of <network>-<model> multirun directories")
    parser.add_argument("--out", type=Path, required=True, help="where the reports and README.md go")
    parser.add_argument("--title", default="", help="appended to the headings, e.g. ' — 2-core VM, 2026-12-01'")
    args = parser.parse_args(argv)
    try:
        readme = study(args.runs_dir, args.out, args.title)
    except ReportError as exc:
        print(f"time_to_accuracy: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(readme.read_text())


if __name__ == "__main__":
    main()

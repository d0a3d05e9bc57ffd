"""Plots: the report's PNG figures, one style for all of them.

Loss and accuracy curves (median over a group's runs with a min-max band, one
panel per setting and world size), speedup against workers and against link
rate, and the stacked time per phase. Every figure is a matplotlib ``Figure``
(no pyplot state) written atomically; one colour and dash per strategy label
across all of them (:func:`_styles`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import pandas as pd

from ..io import atomic_write
from .frames import LINK_KEY, SETTING_LABELS, _by_value, _value_text, link_rate_mbit, setting_columns
from .runs import PHASE_NAMES, PHASES, Run


PLOTS = {
    "loss_vs_iteration": "loss_vs_iteration.png",
    "loss_vs_time": "loss_vs_time.png",
    "accuracy_vs_epoch": "accuracy_vs_epoch.png",
    "accuracy_vs_time": "accuracy_vs_time.png",
    "speedup_vs_workers": "speedup_vs_workers.png",
    "time_breakdown": "time_breakdown.png",
}


def _figure(nrows: int, ncols: int, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.5, 4.6 * ncols), 3.2 * nrows + 1.6), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")


def _styles(labels: Iterable[str]) -> Dict[str, dict]:
    """Colour and dash per strategy. Equivalent strategies (sync, layerwise, ddp) draw the very same
    loss curve; the dashes and the thinning widths keep each of them visible on top of the others."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    dashes = ["-", "--", "-.", ":"]
    return {label: {"color": cmap(i % 10), "ls": dashes[i % len(dashes)], "lw": max(0.8, 2.2 - 0.25 * i)}
            for i, label in enumerate(dict.fromkeys(labels))}


def _setting_name(values: dict) -> str:
    return ", ".join(f"{SETTING_LABELS.get(k, k)} {_value_text(v)}" for k, v in values.items())


def _facets(frame: pd.DataFrame) -> List[Tuple[str, pd.DataFrame]]:
    """(setting description, its rows) per setting among the complete runs; model is always named."""
    complete = frame[frame["status"] == "complete"] if "status" in frame else frame
    varying = [c for c in setting_columns(frame) if c in complete and (c == "model" or complete[c].astype(str).nunique() > 1)]
    if complete.empty or not varying:
        return []
    return [(_setting_name({c: group.iloc[0][c] for c in varying}), group)
            for _, group in complete.sort_values(varying, key=_by_value, kind="stable")
                                     .groupby([complete[c].astype(str) for c in varying], sort=False)]


def _aligned(curves: List[pd.DataFrame], key: str, x: str, y: str) -> pd.DataFrame:
    """Median and min/max over runs of ``y`` at each ``key`` (step or epoch), at the median ``x``."""
    joined = pd.concat(curves)
    by_key = joined.groupby(key)
    agg = by_key.agg(y_med=(y, "median"), y_min=(y, "min"), y_max=(y, "max"))
    agg["x"] = by_key[x].median() if x != key else agg.index.astype(float)
    return agg.reset_index(drop=True)


def _plot_curves(runs: Sequence[Run], frame: pd.DataFrame, path: Path, *, kind: str, x: str, y: str,
                 title: str, xlabel: str, ylabel: str, scale: float = 1.0, smooth: bool = False,
                 log: bool = False) -> None:
    """One line per strategy (median over its runs, min–max band), facets per setting and world size.

    ``frame`` is runs_frame(runs): row i describes runs[i].
    """
    # on a time axis, evaluations within epochs (kind "eval") are points of the accuracy curve too
    kinds = [kind, "eval"] if kind == "epoch" and x != "epoch" else [kind]
    key = "step" if kind == "iter" or x != "epoch" else "epoch"
    complete = frame[frame["status"] == "complete"]
    facets = _facets(frame)
    sizes = sorted(complete["world_size"].dropna().unique())
    styles = _styles(complete["strategy"])
    fig, axes = _figure(max(1, len(facets)), max(1, len(sizes)), title)
    for i, (name, group) in enumerate(facets):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            ax.set_title(f"{name}, {int(size)} worker{'s' if size != 1 else ''}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            for label, members in group[group["world_size"] == size].groupby("strategy", sort=False):
                curves = []
                for index in members.index:
                    m = runs[index].metrics
                    if m is None:
                        continue
                    rows = m.loc[m["kind"].isin(kinds) & m[y].notna(), list(dict.fromkeys([key, x, y]))]
                    if key == "epoch":
                        rows[key] = rows[key] + 1  # evaluations come at the end of an epoch: epochs completed
                    if len(rows):
                        curves.append(rows)
                if not curves:
                    continue
                agg = _aligned(curves, key, x, y)
                ys = agg[["y_med", "y_min", "y_max"]] * scale
                window = max(1, len(agg) // 50) if smooth else 1
                if window > 1:
                    # rank 0's local-batch loss is noisy: a centred moving mean over 2% of the run shows the trend
                    ys = ys.rolling(window, center=True, min_periods=1).mean()
                    ax.set_ylabel(f"{ylabel}, mean of {window} steps")
                ax.plot(agg["x"], ys["y_med"], label=label, marker="o" if kind == "epoch" else None, ms=3,
                        **styles[label])
                if len(curves) > 1:
                    ax.fill_between(agg["x"], ys["y_min"], ys["y_max"], color=styles[label]["color"], alpha=0.15, lw=0)
            if not ax.lines:
                ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes, color="grey")
            elif log and all((line.get_ydata() > 0).all() for line in ax.lines):
                ax.set_yscale("log")  # late training is a factor of 100 below the start: linear hides it
            if x == "epoch":
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5"
    _legend(fig, axes)
    _save(fig, path)


def _legend(fig, axes, title: str = "strategy") -> None:
    handles, labels = {}, []
    for row in axes:
        for ax in row:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in handles:
                    handles[l] = h
                    labels.append(l)
    if handles:
        fig.legend([handles[l] for l in labels], labels, loc="outside lower center", fontsize=8, title=title,
                   ncols=min(len(labels), 4))


TIME_LABEL = "training time since start (s, test evaluations left out)"


def plot_loss(runs: Sequence[Run], frame: pd.DataFrame, path: Path, x: str = "step") -> None:
    """Training loss (rank 0's local batch) against iteration or training time, per strategy."""
    time_axis = x in ("wall_s", "train_s")
    _plot_curves(runs, frame, path, kind="iter", x=x, y="loss", smooth=True, log=True,
                 title=f"Training loss vs {'training time' if time_axis else 'iteration'}",
                 xlabel=TIME_LABEL if time_axis else "iteration",
                 ylabel="training loss (rank 0 batch)")


def plot_accuracy(runs: Sequence[Run], frame: pd.DataFrame, path: Path, x: str = "epoch") -> None:
    """Test accuracy at each evaluation against epochs completed or training time."""
    time_axis = x in ("wall_s", "train_s")
    _plot_curves(runs, frame, path, kind="epoch", x=x, y="test_acc", scale=100.0,
                 title=f"Test accuracy vs {'training time' if time_axis else 'epoch'}",
                 xlabel=TIME_LABEL if time_axis else "epochs completed",
                 ylabel="test accuracy (%)")


def plot_speedup(table: pd.DataFrame, path: Path) -> None:
    """Throughput speedup over one worker against workers, per strategy, with the linear ideal."""
    facets = _facets(table)
    fig, axes = _figure(1, max(1, len(facets)), "Speedup vs number of workers")
    styles = _styles(table["strategy"]) if not table.empty else {}
    for ax, (name, group) in zip(axes[0], facets or [("", table)]):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("workers")
        ax.set_ylabel("throughput over 1 worker (×)")
        ax.grid(alpha=0.3)
        sizes = sorted(group["world_size"].dropna().unique()) if not group.empty else []
        plotted = False
        for label, rows in group.groupby("strategy", sort=False):
            rows = rows[rows["scaling_speedup"].notna()].sort_values("world_size")
            if len(rows):
                ax.plot(rows["world_size"], rows["scaling_speedup"], marker="o", label=label, **styles[label])
                plotted = True
        if plotted:
            ax.plot(sizes, sizes, ls="--", color="black", lw=1, label="ideal (linear)")
            ax.set_xticks(sizes)
        else:
            ax.text(0.5, 0.5, "no 1-worker runs to scale from", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    _legend(fig, axes)
    _save(fig, path)


def plot_breakdown(table: pd.DataFrame, path: Path) -> None:
    """Stacked mean time per iteration by phase, one bar per strategy and world size."""
    facets = _facets(table)
    width = max([len(g) for _, g in facets] or [1])
    fig, axes = _figure(max(1, len(facets)), 1, "Time per iteration by phase (mean after warm-up, rank 0)")
    fig.set_size_inches(max(8.0, 0.9 * width + 4.0), fig.get_size_inches()[1])
    from matplotlib import colormaps

    phase_colors = {p: colormaps["Set2"](i) for i, p in enumerate([*PHASES, "other"])}
    for row, (name, group) in zip(axes, facets or [("", table)]):
        ax = row[0]
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("time per iteration (ms)")
        ax.grid(alpha=0.3, axis="y")
        if group.empty:
            ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        positions = np.arange(len(group))
        bottom = np.zeros(len(group))
        for p in [*PHASES, "other"]:
            values = group[f"t_{p}_ms"].fillna(0.0).clip(lower=0.0).to_numpy()
            ax.bar(positions, values, bottom=bottom, color=phase_colors[p], label=PHASE_NAMES[p], width=0.7)
            bottom += values
        ax.set_xticks(positions, [f"{s}\n{int(w)} worker{'s' if w != 1 else ''}"
                                  for s, w in zip(group["strategy"], group["world_size"])], fontsize=7)
    _legend(fig, axes, title="phase")
    _save(fig, path)


def plot_speedup_vs_bandwidth(table: pd.DataFrame, path: Path) -> None:
    """Speedup over the baseline against the emulated link rate, per strategy (nocomm left out),
    one panel per other setting (batch size...): where each strategy wins as the network gets faster."""
    others = table.drop(columns=[LINK_KEY])
    facets = _facets(others) or [("", others)]
    fig, axes = _figure(1, len(facets), f"Speedup over {table['baseline'].dropna().iloc[0] if table['baseline'].notna().any() else 'the baseline'} vs link rate (emulated)")
    styles = _styles(table["strategy"])
    for ax, (name, group) in zip(axes[0], facets):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("link rate (Mbit/s, log scale)")
        ax.set_ylabel("speedup over baseline (×)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.axhline(1.0, color="black", lw=1, ls="--")
        rows = table.loc[group.index].assign(_mbit=lambda f: f[LINK_KEY].map(link_rate_mbit))
        # nocomm is no synchronization at all: its 10-50x at slow links would flatten every real line
        rows = rows[rows["strategy"] != "nocomm"]
        for (label, _), line in rows.groupby(["strategy", "world_size"], sort=False):
            line = line[line["speedup_vs_baseline"].notna() & line["_mbit"].notna()].sort_values("_mbit")
            if len(line):
                ax.plot(line["_mbit"], line["speedup_vs_baseline"], marker="o", label=label, **styles[label])
        rates = sorted(rows["_mbit"].dropna().unique())
        if rates:
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
    _legend(fig, axes)
    _save(fig, path)

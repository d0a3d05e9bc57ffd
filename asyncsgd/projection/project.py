"""Projections: each strategy against workers, batch and network, with the model's uncertainty.

:func:`scaling` simulates every strategy (as implemented and its ideal bound)
at each worker count and gives the iteration time (the steady-state period,
1 / throughput), speedup over ``sync``, exposed communication and overlap
efficiency ``(T_sync - T) / (T_sync - max(T_compute, T_comm))``, the
benchmark's definition. :func:`batch_latency` sweeps the per-worker batch
against the network latency (and :func:`batch_bandwidth` against its rate):
which strategy wins where, and by how much. :func:`sensitivity` repeats a
projection with the constants that cannot be validated here halved and
doubled. Tables render in the report's style; plots use its figure helpers.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from .. import report as house
from .profile import Profile
from .schedules import AS_IMPLEMENTED, IDEAL, StrategySpec, predict

DEFAULT_STRATEGIES = "sync,layerwise,layerwise_step,layerwise_priority,delayed_k1,ddp"


def comm_alone_s(profile: Profile, network, world_size: int) -> float:
    """One allreduce of the whole gradient with nothing else running (the benchmark's T_comm)."""
    return network.allreduce_s(profile.nbytes, world_size)


def scaling(profile: Profile, network, workers: Sequence[int], strategies: Sequence[StrategySpec],
            rules: Sequence[str] = (AS_IMPLEMENTED, IDEAL), cpu: float = 1.0, compute_nice: int = 0) -> pd.DataFrame:
    rows = []
    for p in workers:
        t_compute = predict(profile, network, p, StrategySpec("nocomm"), AS_IMPLEMENTED, cpu=cpu).period_s
        t_comm = comm_alone_s(profile, network, p)
        sync = {r: predict(profile, network, p, StrategySpec("sync"), r, cpu=cpu, compute_nice=compute_nice).period_s
                for r in rules}
        for spec in strategies:
            for r in rules:
                pred = predict(profile, network, p, spec, r, cpu=cpu, compute_nice=compute_nice)
                t = pred.period_s
                limit = max(t_compute, t_comm)
                rows.append({
                    "model": profile.model, "profile": profile.name, "network": network.name, "workers": p,
                    "strategy": spec.label, "rules": r, "iter_ms": t * 1e3,
                    "throughput_samples_s": p * (profile.batch_size or 1) / t,
                    "speedup_vs_sync": sync[r] / t, "exposed_comm_ms": pred.comm_wait_s * 1e3,
                    "overlap_efficiency": (sync[r] - t) / (sync[r] - limit) if sync[r] - limit > 1e-12 else math.nan,
                    "t_compute_ms": t_compute * 1e3, "t_comm_ms": t_comm * 1e3,
                    "scaling_efficiency": (profile.compute_s / t) if t > 0 else math.nan,
                })
    return pd.DataFrame(rows)


def comm_dominates_at(profile: Profile, network, workers: Iterable[int]) -> Optional[int]:
    """The first worker count at which one allreduce of the gradient takes longer than the compute."""
    for p in sorted(workers):
        if p > 1 and comm_alone_s(profile, network, p) > profile.compute_s:
            return p
    return None


def sensitivity(profile: Profile, network, workers: Sequence[int], strategies: Sequence[StrategySpec],
                factors: Sequence[float] = (0.5, 2.0), knobs: Sequence[str] = ("alpha", "beta", "compute")) -> pd.DataFrame:
    """Speedup over sync as implemented with each knob halved and doubled, one at a time: the band."""
    rows = []
    variants = [("base", 1.0, profile, network)]
    for knob, f in itertools.product(knobs, factors):
        if knob == "compute":
            variants.append((knob, f, profile.scaled(f), network))
        else:
            variants.append((knob, f, profile, network.scaled(**{knob: f})))
    for knob, f, prof, net in variants:
        table = scaling(prof, net, workers, strategies, rules=(AS_IMPLEMENTED,))
        for _, r in table.iterrows():
            rows.append({"knob": knob, "factor": f, "workers": r["workers"], "strategy": r["strategy"],
                         "speedup_vs_sync": r["speedup_vs_sync"], "iter_ms": r["iter_ms"]})
    frame = pd.DataFrame(rows)
    base = frame[frame["knob"] == "base"].set_index(["workers", "strategy"])["speedup_vs_sync"]
    band = frame.groupby(["workers", "strategy"])["speedup_vs_sync"].agg(["min", "max"]).rename(
        columns={"min": "low", "max": "high"})
    band["base"] = base
    return band.reset_index()


def batch_grid(profile_at: Callable[[int], Profile], network_at: Callable[[float], object], batches: Sequence[int],
               values: Sequence[float], world_size: int, strategies: Sequence[StrategySpec],
               value_name: str) -> pd.DataFrame:
    """Per (batch, value): each strategy's period and speedup over sync, and the winner."""
    rows = []
    for b, v in itertools.product(batches, values):
        prof, net = profile_at(b), network_at(v)
        sync = predict(prof, net, world_size, StrategySpec("sync")).period_s
        best, best_t = "sync", sync
        for spec in strategies:
            t = predict(prof, net, world_size, spec).period_s
            rows.append({"batch": b, value_name: v, "strategy": spec.label, "iter_ms": t * 1e3,
                         "speedup_vs_sync": sync / t})
            if t < best_t * (1 - 1e-9):
                best, best_t = spec.label, t
        rows.append({"batch": b, value_name: v, "strategy": "best", "iter_ms": best_t * 1e3,
                     "speedup_vs_sync": sync / best_t, "winner": best})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- tables and plots
def scaling_markdown(table: pd.DataFrame) -> str:
    shown = table[table["rules"] == AS_IMPLEMENTED]
    ideal = table[table["rules"] == IDEAL].set_index(["workers", "strategy"])
    headers = ["workers", "strategy", "iteration (ms)", "speedup vs sync", "exposed comm (ms)", "overlap efficiency",
               "ideal (ms)", "ideal speedup"]
    body = []
    for _, r in shown.iterrows():
        key = (r["workers"], r["strategy"])
        i = ideal.loc[key] if key in ideal.index else None
        body.append([str(r["workers"]), r["strategy"], house.format_number(r["iter_ms"], "sig"),
                     f"{r['speedup_vs_sync']:.2f}×", house.format_number(r["exposed_comm_ms"], "sig"),
                     house.format_number(r["overlap_efficiency"], ".2f"),
                     house.format_number(i["iter_ms"], "sig") if i is not None else "—",
                     f"{i['speedup_vs_sync']:.2f}×" if i is not None else "—"])
    return house.markdown_table(headers, body)


def plot_scaling(tables: Dict[str, pd.DataFrame], bands: Dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """Speedup over sync against workers, one panel per (model, network); solid as implemented,
    dashed the ideal bound, shaded the sensitivity band."""
    fig, axes = house.new_figure(1, max(1, len(tables)), title)
    labels = [s for t in tables.values() for s in t["strategy"].unique()]
    styles = house.strategy_styles(labels)
    for ax, (name, table) in zip(axes[0], tables.items()):
        ax.set_title(name, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.set_ylabel("speedup over sync (×)")
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.grid(alpha=0.3, which="both")
        for label, rows in table.groupby("strategy", sort=False):
            if label == "sync":
                continue
            impl = rows[rows["rules"] == AS_IMPLEMENTED].sort_values("workers")
            ideal = rows[rows["rules"] == IDEAL].sort_values("workers")
            style = {**styles[label], "ls": "-"}
            ax.plot(impl["workers"], impl["speedup_vs_sync"], marker="o", ms=3, label=label, **style)
            if len(ideal):
                ax.plot(ideal["workers"], ideal["speedup_vs_sync"], color=style["color"], ls=":", lw=1)
            band = bands.get(name)
            if band is not None:
                b = band[band["strategy"] == label].sort_values("workers")
                ax.fill_between(b["workers"], b["low"], b["high"], color=style["color"], alpha=0.12, lw=0)
        ax.text(0.01, 0.01, "solid: as implemented; dotted: ideal bound; band: alpha, beta, compute x0.5..x2",
                transform=ax.transAxes, fontsize=6, color="grey")
    house.figure_legend(fig, axes)
    house.save_figure(fig, path)


def plot_heatmap(grid: pd.DataFrame, value_name: str, path: Path, title: str, xlabel: str,
                 fmt: Callable[[float], str]) -> None:
    """Speedup of the best strategy over sync per (batch, value), the winner written in each cell."""
    best = grid[grid["strategy"] == "best"]
    batches = sorted(best["batch"].unique())
    values = sorted(best[value_name].unique())
    z = np.array([[best[(best["batch"] == b) & (best[value_name] == v)]["speedup_vs_sync"].iloc[0] for v in values]
                  for b in batches])
    fig, axes = house.new_figure(1, 1, title)
    ax = axes[0][0]
    im = ax.imshow(z, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(values)), [fmt(v) for v in values], fontsize=7)
    ax.set_yticks(range(len(batches)), [str(b) for b in batches], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("batch per worker")
    short = {"layerwise(priority)": "lw-prio", "layerwise(forward)": "lw-fwd", "layerwise(step)": "lw-step",
             "delayed(k=1)": "dly1", "delayed(k=2)": "dly2", "sync": "sync", "ddp": "ddp"}
    for i, b in enumerate(batches):
        for j, v in enumerate(values):
            cell = best[(best["batch"] == b) & (best[value_name] == v)].iloc[0]
            ax.text(j, i, f"{short.get(cell['winner'], cell['winner'])}\n{cell['speedup_vs_sync']:.2f}×",
                    ha="center", va="center", fontsize=5.5, color="white" if z[i, j] < z.max() * 0.7 else "black")
    fig.colorbar(im, ax=ax, label="speedup of the best strategy over sync (×)")
    house.save_figure(fig, path)

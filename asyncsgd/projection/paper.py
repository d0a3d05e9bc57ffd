"""``asyncsgd-project paper``: the paper's question at the paper's scale, as one report.

AlexNet (batch 256 per worker) and GoogLeNet (batch 32 per worker) on a
Sandy Bridge-class CPU cluster over InfiniBand FDR and on DGX-1s (8 P100 per
node over NVLink, nodes over 4 x InfiniBand EDR), 2 to 1024 workers, every
strategy as implemented and its ideal bound, with sensitivity bands; then the
reviewers' questions: per-worker batch (1 to 256) against latency (1 us to
1 ms) and against bandwidth, and strong scaling (a fixed global batch, so the
per-worker batch shrinks as workers grow). Inputs: the shipped hand-made
profiles (:mod:`.hardware`) and the network presets (:mod:`.presets`); no
measurement, so it reruns in minutes anywhere.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

from .. import report as house
from ..io import atomic_write_text
from .hardware import handmade_profile
from .presets import NETWORKS
from .profile import Profile, builtin_profiles, load_profile
from .project import (batch_grid, comm_dominates_at, plot_heatmap, plot_scaling, scaling, scaling_markdown,
                      sensitivity)
from .schedules import AS_IMPLEMENTED, IDEAL, RULESET, StrategySpec

WORKERS = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
STRATEGIES = "sync,layerwise,layerwise_priority,delayed_k1,delayed_k2,ddp"
# (profile name, model, batch, device, network preset)
SETTINGS = [
    ("alexnet-b256-sandybridge", "alexnet", 256, "sandybridge-2s", "ib-fdr"),
    ("googlenet-b32-sandybridge", "googlenet", 32, "sandybridge-2s", "ib-fdr"),
    ("alexnet-b256-p100", "alexnet", 256, "p100", "dgx1-ib-edr"),
    ("googlenet-b32-p100", "googlenet", 32, "p100", "dgx1-ib-edr"),
]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LATENCIES = [1e-6, 3e-6, 10e-6, 30e-6, 100e-6, 300e-6, 1e-3]
RATES_GBIT = [1, 10, 25, 54.5, 100, 400]


def write_profiles(folder: Path) -> List[Path]:
    """(Re)write the hand-made profiles of the paper's hardware into ``folder``."""
    paths = []
    for name, model, batch, device, _ in SETTINGS:
        prof = handmade_profile(model, (3, 224, 224), batch, device, name=name)
        path = folder / f"{name}.json"
        prof.save(path)
        paths.append(path)
    return paths


def _profile(name: str) -> Profile:
    shipped = builtin_profiles()
    if name not in shipped:
        raise SystemExit(f"asyncsgd-project paper: error: shipped profile {name} missing; run with --write-profiles")
    return load_profile(shipped[name])


def _fmt_latency(v: float) -> str:
    return f"{v * 1e6:g} us" if v < 1e-3 else f"{v * 1e3:g} ms"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="asyncsgd-project paper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for projection.md, CSVs and plots")
    parser.add_argument("--write-profiles", type=Path, default=None, metavar="DIR",
                        help="first (re)write the hand-made profiles into DIR (the package's profiles/ folder)")
    parser.add_argument("--quick", action="store_true", help="fewer points (a smoke test)")
    args = parser.parse_args(argv)
    if args.write_profiles:
        for p in write_profiles(args.write_profiles):
            print(f"profile: {p}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    workers = [2, 8, 64] if args.quick else WORKERS
    batches = [1, 16, 256] if args.quick else BATCHES
    latencies = [1e-6, 1e-4, 1e-3] if args.quick else LATENCIES
    rates = [10, 100] if args.quick else RATES_GBIT
    specs = [StrategySpec.parse(s) for s in STRATEGIES.split(",")]

    intro = ["# Projection to the paper's scale", "",
            "Every number below is a simulation (`asyncsgd/projection`) of the strategies' schedules, fed with "
            "hand-made profiles of the paper's hardware (per-layer FLOPs over a device's throughput; "
            "`asyncsgd/projection/hardware.py`, every constant with its source or marked as an assumption) and "
            "the network presets of `asyncsgd/projection/presets.py`. The same simulator, fed with profiles and "
            "constants measured on this machine, is checked against measured runs in `validation.md`. "
            f"Rules: {RULESET[AS_IMPLEMENTED]}; ideal: {RULESET[IDEAL]}. Iteration time here is the steady-state "
            "period (1 / throughput).", ""]
    text: List[str] = []
    scaling_tables: Dict[str, pd.DataFrame] = {}
    bands: Dict[str, pd.DataFrame] = {}
    headline = []
    for name, model, batch, device, net_name in SETTINGS:
        prof, net = _profile(name), NETWORKS[net_name]
        table = scaling(prof, net, workers, specs)
        band = sensitivity(prof, net, workers, specs)
        key = f"{model} b{batch}, {device}, {net_name}"
        scaling_tables[key], bands[key] = table, band
        table.to_csv(out / f"scaling-{name}.csv", index=False)
        band.to_csv(out / f"sensitivity-{name}.csv", index=False)
        dom = comm_dominates_at(prof, net, list(range(2, 1025)))
        impl = table[table["rules"] == AS_IMPLEMENTED]
        best = impl.loc[impl["speedup_vs_sync"].idxmax()]
        headline.append([key, f"{prof.compute_s * 1e3:,.0f}", f"{prof.nbytes / 1e6:.0f}",
                         str(dom) if dom else "never (≤ 1024)", best["strategy"], str(best["workers"]),
                         f"{best['speedup_vs_sync']:.2f}×",
                         f"{table[table['rules'] == IDEAL]['speedup_vs_sync'].max():.2f}×"])
        text += [f"## {key}", "", f"Profile `{name}`: {prof.source}", "",
                 f"Network `{net_name}`: {net.source}.", "", scaling_markdown(table), ""]
        b = band[band["strategy"] != "sync"]
        if len(b):
            wide = b.loc[(b["high"] - b["low"]).idxmax()]
            text += [f"Sensitivity (alpha, beta and compute each halved and doubled): the widest band is "
                     f"{wide['strategy']} at {wide['workers']} workers, {wide['low']:.2f}× to {wide['high']:.2f}× "
                     f"(base {wide['base']:.2f}×).", ""]
    plot_scaling(scaling_tables, bands, out / "speedup_vs_workers.png",
                 "Speedup over sync vs workers (projection, weak scaling: fixed batch per worker)")
    text = intro + ["## Summary", "",
                    house.markdown_table(["setting", "compute/iteration (ms)", "gradient MB",
                                          "allreduce > compute from (workers)", "best strategy", "at workers",
                                          "its speedup", "best ideal speedup"], headline), "",
                    "![speedup vs workers](speedup_vs_workers.png)", ""] + text

    # strong scaling: a fixed global batch shrinks the per-worker batch
    strong_rows = []
    for name, model, batch, device, net_name in SETTINGS:
        prof, net = _profile(name), NETWORKS[net_name]
        for p in workers:
            b = max(1, batch * 8 // p) if p > 8 else batch
            t = scaling(prof.at_batch(b), net, [p], specs, rules=(AS_IMPLEMENTED,))
            for _, r in t.iterrows():
                strong_rows.append({"setting": f"{model}, {device}, {net_name}", "global_batch": batch * 8,
                                    "workers": p, "batch_per_worker": b, "strategy": r["strategy"],
                                    "speedup_vs_sync": r["speedup_vs_sync"], "iter_ms": r["iter_ms"]})
    strong = pd.DataFrame(strong_rows)
    strong.to_csv(out / "strong_scaling.csv", index=False)
    piv = strong.pivot_table(index=["setting", "workers", "batch_per_worker"], columns="strategy",
                             values="speedup_vs_sync").reset_index()
    cols = [c for c in piv.columns if c not in ("setting", "workers", "batch_per_worker", "sync")]
    text += ["## Strong scaling: a fixed global batch (8 x the per-worker batch above)", "",
             "From 8 workers on, the per-worker batch is the global batch divided by the workers (compute scaled "
             "linearly with the batch: an assumption that flatters small batches on GPUs). Speedup over sync:", "",
             house.markdown_table(["setting", "workers", "batch/worker", *cols],
                                  [[r["setting"], str(r["workers"]), str(r["batch_per_worker"]),
                                    *[f"{r[c]:.2f}×" for c in cols]] for _, r in piv.iterrows()]), ""]

    # the reviewers: batch x latency, batch x bandwidth
    text += ["## Where each strategy wins: per-worker batch against latency and bandwidth", ""]
    for name, model, batch, device, net_name in SETTINGS[:2] + SETTINGS[2:3]:
        prof, net = _profile(name), NETWORKS[net_name]
        p = 64
        grid = batch_grid(prof.at_batch, lambda v, n=net: n.with_link(latency_s=v), batches, latencies, p, specs,
                          "latency_s")
        grid.to_csv(out / f"batch_latency-{name}.csv", index=False)
        plot_heatmap(grid, "latency_s", out / f"batch_latency-{name}.png",
                     f"{model}, {device}, {net_name} rate, {p} workers: best strategy by batch and latency",
                     "latency per message", _fmt_latency)
        grid2 = batch_grid(prof.at_batch, lambda v, n=net: n.with_link(rate_bps=v * 1e9), batches, rates, p, specs,
                           "rate_gbit")
        grid2.to_csv(out / f"batch_bandwidth-{name}.csv", index=False)
        plot_heatmap(grid2, "rate_gbit", out / f"batch_bandwidth-{name}.png",
                     f"{model}, {device}, {net_name} latency, {p} workers: best strategy by batch and link rate",
                     "link rate (Gbit/s)", lambda v: f"{v:g}")
        best = grid[grid["strategy"] == "best"]
        top = best.loc[best["speedup_vs_sync"].idxmax()]
        large = best[best["batch"] >= max(batches) // 4]
        text += [f"### {model}, {device}, {net_name}, {p} workers", "",
                 f"Largest gain over sync in the latency sweep: {top['winner']} {top['speedup_vs_sync']:.2f}× at batch "
                 f"{top['batch']} per worker and {_fmt_latency(top['latency_s'])} per message; with "
                 f"{max(batches) // 4} or more per worker the best gain is {large['speedup_vs_sync'].max():.2f}×.", "",
                 f"![batch x latency](batch_latency-{name}.png)", f"![batch x bandwidth](batch_bandwidth-{name}.png)", ""]
    atomic_write_text(out / "projection.md", "\n".join(text) + "\n")
    print(f"projection: {out / 'projection.md'}")

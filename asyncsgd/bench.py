"""Overlap micro-benchmark: every strategy back to back, in one invocation.

    asyncsgd-bench --backend gloo --world-size 2 --model cnn --batch 32
    scripts/bench-overlap --backend mpi --progress thread --repeats 3
    scripts/bench-overlap --emulated 100mbit,1gbit,10gbit --batch 8,32,128   # a sweep


Runs no-communication (T_compute), sync, layerwise (wait at forward and at step),
delayed k=1,2 and ddp as ordinary ``asyncsgd-run`` jobs (so the benchmark
measures exactly what users run), interleaving the repeats so that machine
noise hits every strategy alike, and prints:

- mean ms/iteration after warm-up (medians over repeats) and communication wait per iteration,
- speedup over ``sync``, and over the best DDP bucket size,
- overlap efficiency = (T_sync - T) / (T_sync - max(T_compute, T_comm)), where
  T_comm is one fused allreduce of the whole gradient with nothing else running.
  1.0 means the strategy hid every second that could be hidden; 0 means none.

A fair comparison sweeps the bucket size (``--buckets``, MiB): DDP runs with
torch's default buckets (a 1 MiB first bucket, then 25 MiB ones, which put most
of a small CNN in one bucket ready only at the end of backward) and once per
size, and the best is the one to beat; each layerwise
case runs per layer (its default) and once per size.
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

import pandas as pd

from .config import MPI_PROGRESS
from .io import atomic_write_text, read_json

if TYPE_CHECKING:  # the projection is imported only where the bound is computed
    from .projection.profile import Profile

CASES = {
    # the timeline gives the per-layer compute times the layerwise bound is computed from
    "nocomm": ["strategy=nocomm", "timeline=true", "timeline_steps=10"],
    "sync": ["strategy=sync", "train.measure_comm=true"],
    "layerwise(forward)": ["strategy=layerwise", "strategy.wait_at=forward"],
    "layerwise(step)": ["strategy=layerwise", "strategy.wait_at=step"],
    "layerwise(priority)": ["strategy=layerwise", "strategy.wait_at=forward", "strategy.priority=true"],
    # and large fully connected layers as row blocks of one chunk each (asyncsgd.strategies.split)
    "layerwise(priority+split)": ["strategy=layerwise", "strategy.wait_at=forward", "strategy.priority=true",
                                  "strategy.split_mb=1"],
    # and the last-used bucket sent last (strategy.last_used_last, asyncsgd.strategies.schedule)
    "layerwise(priority+split+last)": ["strategy=layerwise", "strategy.wait_at=forward", "strategy.priority=true",
                                       "strategy.split_mb=1", "strategy.last_used_last=true"],
    # the bucket layout timed at the start of the run (strategy.bucket_mb=auto, asyncsgd.strategies.tuning)
    "layerwise(priority+auto)": ["strategy=layerwise", "strategy.wait_at=forward", "strategy.priority=true",
                                 "strategy.bucket_mb=auto"],
    "delayed(k=1)": ["strategy=delayed", "strategy.k=1"],
    "delayed(k=2)": ["strategy=delayed", "strategy.k=2"],
    "ddp": ["strategy=ddp"],
}


# any case with "+nice" appended: the same, with the training thread yielding the CPU to the
# backend's threads (backend.compute_nice, asyncsgd.comm.priority), to compare in one invocation
NICE = "+nice"
NICE_OVERRIDES = ["backend.compute_nice=19"]


def case_overrides(name: str) -> Optional[List[str]]:
    """A case's overrides, ``None`` for an unknown name."""
    base = name.removesuffix(NICE)
    if base != name:
        return CASES[base] + NICE_OVERRIDES if base in CASES else None
    return CASES.get(name)


# cases whose first steps are not steady state for long: the least steps they run, whatever --steps
# says (bucket_mb=auto: 1 + 4 + 3 x 5 trial steps, up to 4 + 5 more where two layouts are timed
# again, then 4 of the kept layout's EDF calibration: 44 steps leave 10 steady ones in every case)
SLOW_TO_SETTLE = {"layerwise(priority+auto)": 44}


def case_steps(name: str, steps: int) -> int:
    """The steps a case runs: ``--steps``, or more for a case that settles late (SLOW_TO_SETTLE)."""
    return max(steps, SLOW_TO_SETTLE.get(name.removesuffix(NICE), 0))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="asyncsgd-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="gloo", choices=["gloo", "mpi", "nccl"])
    p.add_argument("--progress", default=None,
                   help="MPI progress mode(s), comma-separated from thread,blocking,test,library (backend=mpi only); "
                        "several are compared in one interleaved invocation")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--model", default="cnn")
    p.add_argument("--shape", default="3,32,32", help="synthetic input shape, comma-separated")
    p.add_argument("--batch", default="32", help="per-worker batch size; several, comma-separated, make a sweep")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--steps", type=int, default=40,
                   help="steps per run (the first 5 are warm-up, or more where the strategy settles later)")
    p.add_argument("--repeats", type=int, default=1, help="runs per strategy; medians are reported")
    p.add_argument("--strategies", default=",".join(c for c in CASES if c not in SLOW_TO_SETTLE),
                   help=f"subset of {','.join(CASES)}, each also with {NICE} appended (the training thread "
                        f"yields the CPU to the backend's threads: {' '.join(NICE_OVERRIDES)}) "
                        f"(default: all but {', '.join(SLOW_TO_SETTLE)})")
    p.add_argument("--buckets", default="1,4,25",
                   help="bucket sizes in MiB (strategy.bucket_mb) that ddp runs with; the best is reported")
    p.add_argument("--layerwise-buckets", default=None,
                   help="bucket sizes in MiB for the layerwise cases, besides one bucket per layer "
                        "(default: those of --buckets; 'none' for per layer only)")
    p.add_argument("--emulated", default=None, metavar="BANDWIDTH",
                   help="run every case on an emulated cluster (launcher=emulated) with links of this rate, "
                        "e.g. 1gbit, or several comma-separated (a sweep); needs root and iproute2 "
                        "(docs/emulated-cluster.md)")
    p.add_argument("--overlap-cost", default=None, metavar="SC,SR",
                   help="also give the layerwise bound with the measured cost of overlap: compute beside a "
                        "reduction runs SC times slower and the reduction SR times slower "
                        "(scripts/bench_reduction_cpu.py prints both, for one reduction size and link rate: "
                        "the same factors are applied to every cell of a sweep), e.g. 1.17,1.10")
    p.add_argument("--out", type=Path, default=None, help="directory for run dirs, bench.csv and bench.md")
    p.add_argument("--reuse", action="store_true",
                   help="read the runs that finished in --out before instead of running them again (a benchmark "
                        "cut short continues; the same command with other report options re-makes bench.md)")
    p.add_argument("overrides", nargs="*", help="extra asyncsgd-run overrides, e.g. strategy.bucket_mb=1")
    args = p.parse_args(argv)
    unknown = [s for s in args.strategies.split(",") if case_overrides(s) is None]
    if unknown:
        p.error(f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(CASES)} (each also with {NICE} appended)")
    slow = [s for s in args.strategies.split(",") if args.steps < case_steps(s, args.steps)]
    if slow:
        print(f"asyncsgd-bench: {', '.join(slow)} runs {max(case_steps(s, args.steps) for s in slow)} steps "
              f"(its first steps time candidate layouts), the other cases --steps {args.steps}", file=sys.stderr)
    if args.backend == "mpi" and any(s.removesuffix(NICE) == "ddp" for s in args.strategies.split(",")):
        # DDP needs torch.distributed
        args.strategies = ",".join(s for s in args.strategies.split(",") if s.removesuffix(NICE) != "ddp")
    if args.progress and args.backend != "mpi":
        p.error("--progress applies to --backend mpi only")
    args.modes = args.progress.split(",") if args.progress else [None]
    bad = [m for m in args.modes if m is not None and m not in MPI_PROGRESS]
    if bad:
        p.error(f"--progress: unknown {', '.join(bad)}; choose from {', '.join(MPI_PROGRESS)}")
    try:
        args.batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error(f"--batch {args.batch}: expected integers, e.g. 32 or 8,32,128")
    args.bucket_sizes = _sizes(p, "--buckets", args.buckets)
    args.layerwise_sizes = (args.bucket_sizes if args.layerwise_buckets is None
                            else [] if args.layerwise_buckets == "none"
                            else _sizes(p, "--layerwise-buckets", args.layerwise_buckets))
    args.cases = expand_cases(args.strategies.split(","), args.bucket_sizes, args.layerwise_sizes)
    args.links = args.emulated.split(",") if args.emulated else [None]
    if args.emulated:
        from .launch.link import parse_rate
        from .config import ConfigError

        for link in args.links:
            try:
                parse_rate(link)
            except ConfigError as exc:
                p.error(f"--emulated: {exc}")
    args.slowdowns = (1.0, 1.0)
    if args.overlap_cost:
        try:
            args.slowdowns = tuple(float(x) for x in args.overlap_cost.split(","))
        except ValueError:
            args.slowdowns = ()
        if len(args.slowdowns) != 2 or not all(math.isfinite(x) and x >= 1.0 for x in args.slowdowns):
            p.error(f"--overlap-cost {args.overlap_cost}: expected two factors >= 1, SC,SR (e.g. 1.17,1.10)")
    if args.reuse and args.out is None:
        p.error("--reuse reads the runs of an earlier --out: give that --out")
    if args.world_size < 1 or min(args.batches) < 1 or args.steps < 6 or args.repeats < 1:
        p.error("--world-size, --batch and --repeats must be >= 1, --steps >= 6")
    return args


def _sizes(p: argparse.ArgumentParser, flag: str, text: str) -> List[float]:
    try:
        sizes = [float(v) for v in text.split(",")]
    except ValueError:
        p.error(f"{flag} {text}: expected sizes in MiB, e.g. 1,4,25")
    if min(sizes) <= 0:
        p.error(f"{flag} {text}: sizes must be > 0 MiB")
    return sizes


def expand_cases(names: List[str], ddp_sizes: List[float], layerwise_sizes: List[float]) -> Dict[str, List[str]]:
    """Case name -> its overrides, with the bucket sweeps: ``ddp`` becomes ``ddp(4MB)``...,
    and ``layerwise(priority)`` (per layer) gains ``layerwise(priority,4MB)``..."""
    cases: Dict[str, List[str]] = {}
    for name in names:
        cases[name] = case_overrides(name)  # ddp: torch's default buckets, then each size
        if name.endswith(NICE):  # a variant of one case: no sweep of its own
            continue
        if name == "ddp":
            sweep = [(f"ddp({mb:g}MB)", mb) for mb in ddp_sizes]
        else:
            sweep = [(f"{name[:-1]},{mb:g}MB)", mb) for mb in layerwise_sizes] \
                if name.startswith("layerwise") and "auto" not in name else []
        for case, mb in sweep:
            cases[case] = CASES[name] + [f"strategy.bucket_mb={mb:g}"]
    return cases


def family(case: str) -> str:
    """The strategy a case belongs to, bucket size aside: ``ddp(4MB)`` -> ``ddp``,
    ``layerwise(priority,4MB)`` -> ``layerwise(priority)``. A ``+nice`` case is its own (never the best DDP
    that the others are compared with)."""
    if case.endswith(NICE):
        return case
    if case.startswith("ddp"):
        return "ddp"
    head, _, size = case.rpartition(",")
    return head + ")" if head and size.endswith("MB)") else case


class Cell(NamedTuple):
    """One setting the strategies are compared in: MPI progress mode, link rate, batch."""

    mode: Optional[str]
    link: Optional[str]
    batch: int

    def describe(self) -> str:
        parts = [f"backend.progress={self.mode}"] if self.mode else []
        parts += [f"links={self.link}"] if self.link else []
        return ", ".join(parts + [f"batch={self.batch}/worker"])


def common_overrides(args: argparse.Namespace, cell: Cell, steps: Optional[int] = None) -> List[str]:
    steps = args.steps if steps is None else steps
    shape = "[" + args.shape + "]"
    out = [
        "dataset=synthetic", f"dataset.shape={shape}", f"model={args.model}", f"backend={args.backend}",
        f"world_size={args.world_size}", f"train.batch_size={cell.batch}", f"train.threads={args.threads}",
        f"train.max_steps={steps}", "train.epochs=100000", "train.eval_every_epochs=0",
        "train.warmup_steps=5", "dataset.num_test=64", "progress_bar=false",
        # one epoch holds every step: an epoch end's bookkeeping allreduce waits behind delayed-k's
        # reduction in flight, a serialisation every 8 steps at batch 128 that a real epoch has once
        f"dataset.num_train={max(2048, steps * cell.batch * args.world_size)}",
    ]
    if cell.mode:
        out += [f"backend.progress={cell.mode}"]
    if cell.link:
        out += ["launcher=emulated", f"cluster.bandwidth={cell.link}"]
    return out + list(args.overrides)


def layerwise_bound(profile: "Profile", t_compute: float, t_comm: float,
                    slowdowns: Tuple[float, float] = (1.0, 1.0)) -> float:
    """The least time per iteration any schedule of ``layerwise(wait_at=forward)`` can reach in
    this cell (:func:`asyncsgd.projection.schedules.layerwise_bound`, issue 12's bound).

    Per-layer f_i, b_i, u_i come from the nocomm run's timeline; c_i is layer i's share of the
    measured T_comm by gradient bytes (one link per worker). The rest of T_compute (data, loss,
    zero_grad, bookkeeping) is counted before the first forward, where it can overlap with the
    link, so the bound stays a lower bound; where the link is fast it is T_compute. ``slowdowns``:
    (s_c, s_r), what running beside a reduction costs the compute and the reduction on these cores
    (:func:`asyncsgd.projection.schedules.overlap_window`); (1, 1) is issue 12's bound."""
    from .projection.schedules import layerwise_bound as bound

    layers = profile.layers
    total_bytes = sum(layer.nbytes for layer in layers) or 1
    update_all = profile.get("update_all_s")
    update = [l.update_s or update_all * l.nbytes / total_bytes for l in layers]
    rest = t_compute - sum(l.forward_s + l.backward_s for l in layers) - sum(update)
    return bound([l.forward_s for l in layers], [l.backward_s for l in layers], update,
                 [t_comm * l.nbytes / total_bytes for l in layers], before=max(0.0, rest),
                 compute_slowdown=slowdowns[0], reduction_slowdown=slowdowns[1])


def bound_consistent_with(profiles: List[Tuple["Profile", float]], t_comm: float, t_delayed: float,
                          slowdowns: Tuple[float, float], steps: int = 40) -> Optional[float]:
    """The largest :func:`layerwise_bound` (median over the nocomm repeats in ``profiles``) over
    costs of overlap (s_c, s_r) between none (1, 1) and the measured ``slowdowns`` that keep
    delayed K=1's ideal, T_compute beside T_comm with no dependency, at or below its measured
    ``t_delayed``. A matmul beside an allreduce can be hit harder than the training compute is: the
    run itself says how much of the pair's cost is real. None: not even (1, 1) is consistent."""
    from .projection.schedules import overlap_window

    t_compute = statistics.median(t for _, t in profiles)
    grid = [(1.0 + (slowdowns[0] - 1.0) * i / steps, 1.0 + (slowdowns[1] - 1.0) * j / steps)
            for i in range(steps + 1) for j in range(steps + 1)]
    fits = [f for f in grid if overlap_window(t_compute, t_comm, *f) <= t_delayed + 1e-12]
    if not fits:
        return None
    return max(statistics.median(layerwise_bound(p, t, t_comm, f) for p, t in profiles) for f in fits)


def run_case(run_dir: Path, overrides: List[str], reuse: bool = False) -> Dict[str, float]:
    """Run one case into ``run_dir`` and read its figures; ``reuse``: read a run that finished there
    before with the same overrides (one made with others is run again, and replaced)."""
    if not (reuse and _finished(run_dir, overrides)):
        cmd = [sys.executable, "-m", "asyncsgd.cli", *overrides, f"hydra.run.dir={run_dir}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"benchmark run failed ({' '.join(overrides)}):\n{tail}")
    return read_case(run_dir)


def _finished(run_dir: Path, overrides: List[str]) -> bool:
    """A complete run of exactly these overrides (Hydra's record of the run's command line)."""
    import yaml

    from .runinfo import run_status

    if run_status(run_dir) != "complete":
        return False
    try:
        recorded = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(recorded, list) and [str(o) for o in recorded] == [str(o) for o in overrides]


def read_case(run_dir: Path) -> Dict[str, float]:
    """A finished case's figures: mean iteration after the run's warm-up, median communication wait."""
    summary = read_json(run_dir / "summary.json")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    # the run's own warm-up: 5 steps, or more where the strategy settled later (bucket_mb=auto's trials)
    iters = metrics[metrics["kind"] == "iter"].iloc[int(summary.get("warmup_steps") or 5):]
    if not len(iters):
        raise RuntimeError(f"benchmark run {run_dir} has no step after its warm-up of {summary.get('warmup_steps')} "
                           "steps: run more --steps")
    # The mean, not the median: delayed-k's and layerwise's iterations alternate between short
    # ones and ones that wait, and the time per iteration that a run takes is their mean.
    return {
        "iter_s": float(iters["t_iter"].mean()),
        "comm_wait_s": float(iters["t_comm_wait"].median()),
        "allreduce_alone_s": summary.get("allreduce_alone_s"),
        "run_dir": run_dir,
    }


def summarize(samples: Dict[str, List[Dict[str, float]]],
              slowdowns: Tuple[float, float] = (1.0, 1.0)) -> pd.DataFrame:
    """Medians over repeats, speedup over sync and overlap efficiency (one progress mode); with
    ``slowdowns`` other than (1, 1) also the bound with that cost of overlap (``--overlap-cost``)."""
    slowdowns = tuple(slowdowns)
    med = {name: {k: statistics.median([s[k] for s in runs if s.get(k) is not None] or [float("nan")])
                  for k in ("iter_s", "comm_wait_s", "allreduce_alone_s")}
           for name, runs in samples.items()}
    t_sync = med.get("sync", {}).get("iter_s")
    t_compute = med.get("nocomm", {}).get("iter_s")
    t_comm = med.get("sync", {}).get("allreduce_alone_s")
    limit = max(t_compute, t_comm) if t_compute is not None and t_comm is not None else None

    def efficiency(t: float) -> Optional[float]:
        if t_sync is None or limit is None or t_sync - limit <= 1e-9:
            return None
        return (t_sync - t) / (t_sync - limit)

    bound = cpu_bound = cpu_floor = consistent = None
    delayed_beats_floor = False
    nocomm = [s for s in samples.get("nocomm", []) if s.get("run_dir")]  # (timelines to read)
    if limit is not None and nocomm:
        try:
            from .projection.measure import profile_from_run
            from .projection.schedules import overlap_window

            # each repeat's bound from its own per-layer times and its own T_compute; the median of
            # them, as T_compute is the median of the repeats
            profiles = [(profile_from_run(s["run_dir"]), s["iter_s"]) for s in nocomm]
            bound = statistics.median(layerwise_bound(p, t, t_comm) for p, t in profiles)
            if slowdowns != (1.0, 1.0):
                cpu_bound = statistics.median(layerwise_bound(p, t, t_comm, slowdowns) for p, t in profiles)
                # with no dependency between them (delayed K>=1's ideal): the compute beside the link
                cpu_floor = overlap_window(t_compute, t_comm, *slowdowns)
                t_delayed = med.get("delayed(k=1)", {}).get("iter_s")
                if t_delayed is not None and math.isfinite(t_delayed):
                    consistent = bound_consistent_with(profiles, t_comm, t_delayed, slowdowns)
                    delayed_beats_floor = consistent is None
        except (ValueError, OSError) as exc:  # a run without a usable timeline: no bound, say why
            print(f"asyncsgd-bench: no layerwise bound: {exc}", file=sys.stderr)
    # the best of each bucket sweep (and of ddp, the reference a new method must beat)
    families: Dict[str, List[str]] = {}
    for name in med:
        families.setdefault(family(name), []).append(name)
    best = {fam: min(members, key=lambda n: med[n]["iter_s"]) for fam, members in families.items()
            if len(members) > 1 or fam == "ddp"}
    t_ddp = med[best["ddp"]]["iter_s"] if "ddp" in best else None
    rows = []
    for name, m in med.items():
        row = {
            "strategy": name,
            "ms_per_iter": m["iter_s"] * 1e3,
            "comm_wait_ms": m["comm_wait_s"] * 1e3,
            "speedup_vs_sync": t_sync / m["iter_s"] if t_sync else None,
            "overlap_efficiency": efficiency(m["iter_s"]) if name != "nocomm" else None,
        }
        if t_ddp is not None:
            row["speedup_vs_best_ddp"] = t_ddp / m["iter_s"]
        rows.append(row)
    table = pd.DataFrame(rows)

    def ms(t: Optional[float]) -> float:  # NaN where there is no figure
        return (t or float("nan")) * 1e3

    def efficiency_at(t: Optional[float]) -> float:
        e = efficiency(t) if t else None
        return float("nan") if e is None else e

    table.attrs.update(t_compute_ms=ms(t_compute), t_comm_ms=ms(t_comm), limit_ms=ms(limit), best=best,
                       bound_ms=ms(bound), bound_efficiency=efficiency_at(bound), slowdowns=slowdowns,
                       cpu_bound_ms=ms(cpu_bound), cpu_bound_efficiency=efficiency_at(cpu_bound),
                       cpu_floor_ms=ms(cpu_floor), consistent_bound_ms=ms(consistent),
                       consistent_bound_efficiency=efficiency_at(consistent), delayed_beats_floor=delayed_beats_floor)
    return table


def best_line(table: pd.DataFrame) -> str:
    """``best DDP: ddp(4MB) 143.2 ms; best layerwise(priority): ...`` (empty without a sweep)."""
    rows = table.set_index("strategy")
    parts = []
    for fam, name in sorted(table.attrs.get("best", {}).items(), key=lambda item: item[0] != "ddp"):
        text = f"best {'DDP' if fam == 'ddp' else fam}: {name} {rows.loc[name, 'ms_per_iter']:.1f} ms"
        if fam != "ddp" and "speedup_vs_best_ddp" in rows:
            text += f" ({rows.loc[name, 'speedup_vs_best_ddp']:.2f}x the best DDP)"
        parts.append(text)
    return "; ".join(parts)


def overlap_cost_text(a: dict) -> str:
    """The lines ``--overlap-cost`` adds under a cell's bound (``a``: the summary table's attrs)."""
    if not math.isfinite(a.get("cpu_bound_ms", float("nan"))):
        return "no bound with the cost of overlap: it needs nocomm runs with timelines and a sync run\n"
    text = (f"the same bound with the cost of overlap (compute x{a['slowdowns'][0]:.3f}, reduction "
            f"x{a['slowdowns'][1]:.3f} beside each other) = {a['cpu_bound_ms']:.1f} ms "
            f"(overlap efficiency {a['cpu_bound_efficiency']:.2f}); T_compute beside T_comm with that "
            f"cost, no dependency between them (delayed's ideal) = {a['cpu_floor_ms']:.1f} ms\n")
    if math.isfinite(a.get("consistent_bound_ms", float("nan"))):
        text += (f"largest such bound whose cost keeps delayed(k=1)'s ideal within its measured time "
                 f"(costs between none and those) = {a['consistent_bound_ms']:.1f} ms (overlap efficiency "
                 f"{a['consistent_bound_efficiency']:.2f})\n")
    elif a.get("delayed_beats_floor"):
        text += ("no cost of overlap is consistent with delayed(k=1): it measured faster than T_compute "
                 "beside T_comm with no cost at all\n")
    return text


def render(tables: Dict[Cell, pd.DataFrame], args: argparse.Namespace) -> str:
    text = (f"model={args.model} input={args.shape} batch={args.batch}/worker world_size={args.world_size} "
            f"backend={args.backend} threads={args.threads} steps={args.steps} repeats={args.repeats}"
            f"{' links=' + args.emulated + ' (emulated)' if args.emulated else ' (loopback)'}\n")
    several = len(tables) > 1
    for cell, table in tables.items():
        a = table.attrs
        text += (f"\n{cell.describe() + ': ' if several or cell.mode else ''}"
                 f"T_compute (nocomm) = {a['t_compute_ms']:.1f} ms, T_comm (fused allreduce alone) = "
                 f"{a['t_comm_ms']:.1f} ms, limit max(T_compute, T_comm) = {a['limit_ms']:.1f} ms\n"
                 f"bound of layerwise(wait_at=forward) from nocomm's per-layer times = {a['bound_ms']:.1f} ms "
                 f"(overlap efficiency {a['bound_efficiency']:.2f} at the bound)\n")
        if a.get("slowdowns", (1.0, 1.0)) != (1.0, 1.0):  # --overlap-cost
            text += overlap_cost_text(a)
        best = best_line(table)
        text += (best + "\n" if best else "") + "\n"
        text += table.to_markdown(index=False, floatfmt=".2f") + "\n"
    return text


def main(argv: Optional[List[str]] = None) -> None:
    from tqdm import tqdm

    try:
        args = parse_args(argv)
    except SystemExit as exc:
        sys.exit(2 if exc.code else 0)
    out = args.out or Path("results") / "bench" / pd.Timestamp.now().strftime("%Y-%m-%d_%H-%M-%S")
    names = list(args.cases)
    cells = [Cell(m, link, b) for m in args.modes for link in args.links for b in args.batches]
    samples = {cell: {n: [] for n in names} for cell in cells}
    # interleaved repeats (within each link setting): machine noise hits every case alike
    jobs = [(r, c, n) for link in args.links for r in range(args.repeats) for c in cells if c.link == link
            for n in names]
    bar = tqdm(jobs, desc="benchmark", unit="run", disable=None)
    for repeat, cell, name in bar:
        bar.set_postfix_str(f"{name} {cell.describe()}")
        slug = f"{name}-{cell.mode or ''}"
        if len(args.links) > 1 or len(args.batches) > 1:
            slug = f"{cell.link or 'loopback'}-b{cell.batch}/{slug}"
        slug = re.sub(r"[^A-Za-z0-9/]+", "-", slug).strip("-")  # Hydra's grammar dislikes ( ) =
        try:
            overrides = common_overrides(args, cell, case_steps(name, args.steps)) + args.cases[name]
            samples[cell][name].append(run_case(out / f"{slug}-{repeat}", overrides, args.reuse))
        except RuntimeError as exc:
            print(f"asyncsgd-bench: {exc}", file=sys.stderr)
            sys.exit(1)
    tables = {cell: summarize(samples[cell], args.slowdowns) for cell in cells}
    text = render(tables, args)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat([t.assign(progress=c.mode, link=c.link, batch=c.batch, t_compute_ms=t.attrs["t_compute_ms"],
                        t_comm_ms=t.attrs["t_comm_ms"], layerwise_bound_ms=t.attrs["bound_ms"],
                        layerwise_bound_cpu_ms=t.attrs["cpu_bound_ms"],
                        layerwise_bound_consistent_ms=t.attrs["consistent_bound_ms"])
               for c, t in tables.items()]).to_csv(
        out / "bench.csv", index=False)
    atomic_write_text(out / "bench.md", text)
    print(text + f"\nwritten: {out / 'bench.md'}, {out / 'bench.csv'}")


if __name__ == "__main__":
    main()

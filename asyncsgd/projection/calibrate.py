"""Fitting a network's constants from allreduces between emulated workers.

    asyncsgd-project calibrate --emulated 100mbit,1gbit --backend gloo,mpi --out net.json

For each backend, link rate and world size, workers on an emulated cluster
(:mod:`asyncsgd.launch.netns`, the runner's own launcher pieces) run the
project's Communicator and measure, rank 0 reporting:

- ``alone``: one blocking allreduce per size, between barriers (median wall time);
- ``pair``: two allreduces started together, then both waited for (do they
  run at once?);
- ``pipeline``: a stream of allreduces with two always in flight, the pattern
  of delayed-k (how well several at once share the link);
- ``busy``: an allreduce of the largest size while the training thread
  computes (a small convolution and its backward, ~1-2 ms each): how much
  compute slows down and how much the reduction does — the CPU a reduction
  takes from compute;
- ``local``: the CPU's own reduction arithmetic (``a += b``) and division
  by P per byte: gamma and the averaging cost.

:func:`fit` turns these into a :class:`~asyncsgd.projection.network.Network`
per backend: alpha and the link efficiency (beta = 8 / (efficiency * rate))
by least squares over every size and rate where the link bounds the reduction
(above 64 KiB: where its CPU work, fitted below, is less than its time on the
wire at the line rate), for each candidate algorithm, the
algorithm that fits best at small and at large sizes (by the world sizes
measured: at P = 2 they cannot be told apart, at 3 and 4 they differ),
``channels`` from the pairs and ``concurrent_efficiency[2]`` from the
pipeline, ``cpu_s_per_call`` and ``cpu_poll`` from the process CPU time of
reductions alone (per call, and per second the reduction runs: a slower link
polls longer for the same bytes), ``cpu_share`` from how much compute lost
during the busy reduction, and ``cpu_s_per_byte`` from the busy reduction at
the fastest link (where it is CPU-bound: the share it got times the time it
took), or from the CPU time alone if that is more, and ``cpu_poll_gate`` from
how much the busy reduction still slowed down at the slower links, where its
work fitted in its share. The raw
measurements go into the file beside the fit, so a fit can be checked or
redone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from .network import ALGORITHMS, Network, SizeRange, allreduce_time

DEFAULT_SIZES = [4, 4096, 65536, 262144, 1 << 20, 4 << 20, 16 << 20]  # bytes


def _sizes_for(rate_bps: float, sizes: Sequence[int], budget_s: float = 1.0) -> List[int]:
    """Leave out sizes whose one allreduce would take longer than ``budget_s`` on this link."""
    return [n for n in sizes if n * 8 / rate_bps <= budget_s] or [min(sizes)]


# ---------------------------------------------------------------------- the worker (one rank)
def _worker(args) -> None:
    import resource

    import torch

    from ..comm import communicator_for

    torch.set_num_threads(1)
    comm = communicator_for(args.backend, args.timeout)
    sizes = [int(s) for s in args.sizes.split(",")]
    out: Dict[str, object] = {"world_size": comm.size, "backend": args.backend}

    def cpu_now() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    tensors = {n: torch.ones(max(1, n // 4)) for n in sizes}
    for n in sizes:
        comm.allreduce(tensors[n])  # connections and buffers are set up lazily: keep that out of the timing
    alone = {}
    for n in sizes:
        walls, cpus = [], []
        for _ in range(args.repeats):
            comm.barrier()
            c0, t0 = cpu_now(), time.perf_counter()
            comm.allreduce(tensors[n])
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu_now() - c0)
        alone[n] = {"wall": walls, "cpu": cpus}
    out["alone"] = alone

    pair = {}
    for n in sizes[-2:]:
        other = torch.ones_like(tensors[n])
        walls = []
        for _ in range(args.repeats):
            comm.barrier()
            t0 = time.perf_counter()
            h1, h2 = comm.allreduce_async(tensors[n]), comm.allreduce_async(other)
            h1.wait()
            first = time.perf_counter() - t0
            h2.wait()
            walls.append((first, time.perf_counter() - t0))
        pair[n] = walls
    out["pair"] = pair

    # two in flight at all times, as delayed-k keeps them: start the next, then wait for the previous
    n = sizes[-1]
    other = torch.ones_like(tensors[n])
    comm.barrier()
    t0 = time.perf_counter()
    previous = None
    count = max(4, args.repeats)
    for i in range(count):
        h = comm.allreduce_async(tensors[n] if i % 2 == 0 else other)
        if previous is not None:
            previous.wait()
        previous = h
    previous.wait()
    out["pipeline"] = {"nbytes": n, "count": count, "seconds": time.perf_counter() - t0}

    # compute rate alone, then while an allreduce of the largest size runs; the work is a small
    # convolution with its backward, what the training thread does (a GEMM alone shares a core differently)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(4, 16, 32, 32)

    def work(k: int) -> None:
        for _ in range(k):
            conv(x).sum().backward()

    work(20)
    t0 = time.perf_counter()
    work(100)
    per_mm = (time.perf_counter() - t0) / 100
    n = sizes[-1]
    busy = []
    for _ in range(args.repeats):
        comm.barrier()
        t0 = time.perf_counter()
        h = comm.allreduce_async(tensors[n])
        done = 0
        while not h.is_completed():
            work(1)
            done += 1
        end = getattr(h, "completed_at", None) or time.perf_counter()
        h.wait()
        busy.append({"wall": end - t0, "mm": done, "elapsed": time.perf_counter() - t0})
    out["busy"] = {"nbytes": n, "mm_alone_s": per_mm, "runs": busy}

    x, y = torch.randn(4 << 20), torch.randn(4 << 20)
    adds, divs = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        x.add_(y)
        adds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        x.div_(2.0)
        divs.append(time.perf_counter() - t0)
    out["local"] = {"add_s_per_byte": statistics.median(adds) / (16 << 20),
                    "div_s_per_byte": statistics.median(divs) / (16 << 20)}
    if comm.rank == 0:
        Path(args.out).write_text(json.dumps(out))
    comm.close()


def measure(backend: str, rate: str, world_size: int, sizes: Sequence[int], repeats: int,
            timeout_s: float = 300.0) -> dict:
    """Run the worker on a fresh emulated cluster; returns rank 0's measurements."""
    from ..launch.emulated import run_for_result
    from ..launch.netns import LinkSpec

    link = LinkSpec.parse(rate)
    result = run_for_result(
        world_size, link, backend,
        lambda out: [sys.executable, "-m", "asyncsgd.projection.calibrate", "--worker", "--backend", backend,
                     "--sizes", ",".join(map(str, sizes)), "--repeats", str(repeats), "--timeout", str(timeout_s),
                     "--out", str(out)],
        {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, prefix="asyncsgd-calibrate-")
    import platform

    result.update(rate=rate, rate_bps=link.rate_bps, sizes=list(sizes), repeats=repeats, host=platform.node())
    return result


def run_sweep(backends: Sequence[str], rates: Sequence[str], world_sizes: Sequence[int], sizes: Sequence[int],
              repeats: int, progress=print) -> List[dict]:
    from ..launch.netns import LinkSpec

    runs = []
    for backend in backends:
        for rate in rates:
            for p in world_sizes:
                chosen = _sizes_for(LinkSpec.parse(rate).rate_bps, sizes)
                progress(f"calibrate: {backend}, {p} workers, {rate} links, sizes {chosen}")
                runs.append(measure(backend, rate, p, chosen, repeats))
    return runs


# ---------------------------------------------------------------------- the fit
def _med(values) -> float:
    return float(statistics.median(values))


def _lstsq_alpha_eff(samples, algorithm: str, gamma: float):
    """alpha and link efficiency of ``algorithm`` from (nbytes, p, seconds, rate) samples; relative errors."""
    import numpy as np

    rows, rhs, w = [], [], []
    for n, p, s, rate in samples:
        rows.append([allreduce_time(algorithm, n, p, 1.0, 0.0, 0.0), allreduce_time(algorithm, n, p, 0.0, 8.0 / rate, 0.0)])
        rhs.append(s - allreduce_time(algorithm, n, p, 0.0, 0.0, gamma))
        w.append(1.0 / s)
    A, y, w = np.array(rows), np.array(rhs), np.array(w)
    (alpha, inv_eff), *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
    alpha, eff = max(float(alpha), 0.0), min(1.0, 1.0 / max(float(inv_eff), 1e-6))
    errors = [(allreduce_time(algorithm, n, p, alpha, 8.0 / (eff * rate), gamma) - s) / s for n, p, s, rate in samples]
    return alpha, eff, float(np.sqrt(np.mean(np.square(errors))))


def fit(runs: List[dict], backend: str, name: Optional[str] = None, small_bytes: int = 65536) -> Network:
    """A Network for ``backend`` from the sweep's measurements (see the module docstring)."""
    import numpy as np

    mine = [r for r in runs if r["backend"] == backend]
    if not mine:
        raise ValueError(f"no calibration measurements for backend {backend}")
    gamma = _med([r["local"]["add_s_per_byte"] for r in mine])
    div = _med([r["local"]["div_s_per_byte"] for r in mine])
    # CPU a reduction takes from the compute cores: its process CPU time alone (slope over size),
    # and the share of a core it gets while compute runs (busy: cpu needed / time it took)
    # CPU of a reduction alone = per call + per byte + polling for as long as it runs: a linear fit
    # over sizes and rates (a slower link polls longer for the same bytes). MPICH's progress engine
    # spins through a blocking allreduce, so its CPU time is its wall time: polling ~1 core.
    pts = [(int(n), _med(v["wall"]), _med(v["cpu"])) for r in mine for n, v in r["alone"].items()]
    rates_seen = len({r["rate_bps"] for r in mine}) > 1
    X = np.array([[1.0, n, t] if rates_seen else [1.0, n, 0.0] for n, t, _ in pts])
    coef, *_ = np.linalg.lstsq(X, np.array([c for *_, c in pts]), rcond=None)
    per_call, per_byte, poll = (max(0.0, float(c)) for c in coef)
    poll = min(poll, 1.0)
    # While compute runs: the core fraction compute loses (the reduction thread's share), and at
    # the fastest link, where a reduction is CPU-bound, the CPU it really needs per byte = the
    # share it got times the time it then took
    shares, work = [], []
    fastest = max(r["rate_bps"] for r in mine)
    for r in mine:
        busy = r.get("busy")
        if not busy or not busy["runs"]:
            continue
        for run in busy["runs"]:
            computed = run["mm"] * busy["mm_alone_s"] / run["elapsed"]
            share_run = min(1.0, max(0.02, 1.0 - computed))
            shares.append(share_run)
            if r["rate_bps"] == fastest:
                work.append(share_run * run["wall"] / busy["nbytes"])
    share = _med(shares) if shares else 1.0
    if work:
        per_byte = max(per_byte, _med(work))
    samples = [(int(n), r["world_size"], _med(v["wall"]), r["rate_bps"]) for r in mine for n, v in r["alone"].items()]
    several_p = len({p for _, p, _, _ in samples}) > 1
    # The link's constants from the samples the link bounds: a large reduction whose CPU work exceeds
    # its time on the wire at the line rate (16 MiB at 10 Gbit/s here) is CPU-bound, which the CPU
    # terms above already model; fitting the link to it as well would count that CPU twice and lower
    # the link's efficiency at every rate. (Small messages are latency: all of them are kept.)
    def link_bound(sample) -> bool:
        n, p, _, rate = sample
        return per_call + per_byte * n < allreduce_time("ring", n, p, 0.0, 8.0 / rate, 0.0)

    large = [s for s in samples if s[0] > small_bytes]
    bound = [s for s in large if link_bound(s)] or large  # none link-bound: the link fit has nothing better
    ranges, report = [], {}
    for part, subset, limit in (("small", [s for s in samples if s[0] <= small_bytes], small_bytes),
                                ("large", bound, None)):
        if not subset:
            continue
        scores = {a: _lstsq_alpha_eff(subset, a, gamma) for a in ALGORITHMS}
        report[part] = {a: {"alpha": v[0], "link_efficiency": v[1], "rms_rel_error": v[2]} for a, v in scores.items()}
        # at P = 2 every algorithm has the same cost shape: only several world sizes tell them apart
        best = min(scores, key=lambda a: scores[a][2]) if several_p else "ring"
        ranges.append(SizeRange(limit, best, alpha=scores[best][0], link_efficiency=scores[best][1]))
    if ranges[-1].up_to_bytes is not None:
        ranges[-1] = replace(ranges[-1], up_to_bytes=None)
    base = ranges[-1]

    # how much of the polling progress needs: at the slower links, where the reduction's work fits
    # in its share, it still slowed down while compute ran (share / (work + gate x polling) = 1 / slowdown)
    gates = []
    for r in mine:
        busy = r.get("busy")
        n = busy["nbytes"] if busy else None
        if not busy or r["rate_bps"] == fastest or str(n) not in r["alone"] or poll <= 0:
            continue
        alone = _med(r["alone"][str(n)]["wall"])
        slowdown = _med([run["wall"] for run in busy["runs"]]) / alone
        if slowdown > 1.02:
            gates.append((share * slowdown - per_byte * n / alone) / poll)
    gate = min(1.0, max(0.0, _med(gates))) if gates else 0.0

    # several reductions at once (gloo's worker threads): pairs started together overlap when
    # the first ends well after one allreduce alone; two kept in flight give the link's efficiency
    channels, pipeline_eff = 1, []
    for r in mine:
        for n, walls in r["pair"].items():
            alone = _med(r["alone"][n]["wall"]) if n in r["alone"] else None
            if alone and int(n) >= 1 << 20 and _med([w[0] for w in walls]) > 1.5 * alone:
                channels = 2
        pipe = r.get("pipeline")
        if pipe and str(pipe["nbytes"]) in r["alone"]:
            alone = _med(r["alone"][str(pipe["nbytes"])]["wall"])
            pipeline_eff.append(alone / (pipe["seconds"] / pipe["count"]))
    concurrent = {2: min(1.0, _med(pipeline_eff))} if channels > 1 and pipeline_eff else {}
    rates = sorted({r["rate"] for r in mine})
    return Network(
        name=name or f"{backend}-emulated", alpha=base.alpha, rate_bps=min(s[3] for s in samples),
        link_efficiency=base.link_efficiency, gamma=gamma, ranges=ranges, channels=channels,
        concurrent_efficiency=concurrent, cpu_s_per_byte=per_byte, cpu_s_per_call=per_call, cpu_poll=poll,
        cpu_poll_gate=gate, cpu_share=share, channel_priority=backend == "mpi",
        scale_on_worker=backend != "mpi",
        source=(f"fitted by asyncsgd-project calibrate from allreduces between emulated workers ({backend}; links "
                f"{', '.join(rates)}; world sizes {sorted({r['world_size'] for r in mine})}) on "
                f"{mine[0].get('host', 'this machine')}"),
        notes={"scale_s_per_byte": f"{div:.4g}", "algorithm_fit": json.dumps(report),
               "link_fit_samples": f"{len(bound)} of {len(large)} large allreduces (the link-bound ones)",
               "pipeline_efficiency": json.dumps(pipeline_eff), "cpu_shares": json.dumps(shares)},
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncsgd.projection.calibrate")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--backend")
    parser.add_argument("--sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if not args.worker:
        parser.error("use asyncsgd-project calibrate; this entry point is the calibration worker")
    _worker(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a reduction costs the compute it overlaps, per backend and MPI progress mode.

Two workers on an emulated cluster (root + iproute2, docs/emulated-cluster.md):
rank 0 and 1 each reduce a gradient-sized tensor through the project's own
communicator (asyncsgd.comm, as the strategies do) while the training thread
multiplies matrices, or with --compute cnn runs the design.md CNN's forward and
backward (1 thread; as many as take --compute-fraction of the reduction alone,
so the compute ends first), and report, medians over repeats:

- reduce alone / reduce overlapped: the reduction's time without and with the compute;
- compute alone / compute overlapped: the compute's time without and with the reduction
  (the difference is what overlapping costs the training thread: the backend's threads,
  the kernel's TCP and veth work on the same cores);
- other threads' CPU: the process's CPU time outside the training thread while overlapped;
- s_c, s_r: how much slower the compute and the reduction run beside each other
  (asyncsgd.projection.schedules.overlap_slowdowns), per repeat from its own pair on rank 0,
  median (min-max over repeats), the factors of
  ``asyncsgd-bench --overlap-cost s_c,s_r`` (the layerwise bound with the cost of overlap).

    sudo .venv/bin/python scripts/bench_reduction_cpu.py --emulated 1gbit \\
        --cases gloo,mpi:thread,mpi:blocking --mbytes 9.54 --repeats 9
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def worker(backend: str, progress: str, nbytes: int, repeats: int, fraction: float, kind: str, batch: int,
           out: Path) -> None:
    import torch

    from asyncsgd.comm import communicator_for

    torch.set_num_threads(1)
    comm = communicator_for(backend, 120, progress=progress)
    grad = torch.ones(nbytes // 4)
    if kind == "cnn":  # the training step itself: forward and backward of the design.md CNN
        from asyncsgd.config import CNNConfig
        from asyncsgd.models import build_model

        model = build_model(CNNConfig(), (3, 32, 32), 10)
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

        def unit() -> None:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
    else:
        a, b = torch.randn(512, 2048), torch.randn(2048, 512)

        def unit() -> None:
            a @ b

    products = 1

    def compute() -> float:
        t0 = time.perf_counter()
        for _ in range(products):
            unit()
        return time.perf_counter() - t0

    comm.allreduce(grad)  # connections are made lazily
    # The compute must end before the reduction for the slowdowns to be read from the pair
    # (overlap_slowdowns): size it to a fraction of the reduction alone on this machine.
    reduce_alone = statistics.median(_timed(comm.allreduce, grad) for _ in range(3))
    one = statistics.median(compute() for _ in range(3))
    products = max(1, int(fraction * reduce_alone / one))  # at most the fraction (one CNN step is ~half of it)
    rows = {k: [] for k in ("reduce_alone", "reduce_overlapped", "compute_alone", "compute_overlapped",
                            "other_threads_cpu")}
    for _ in range(repeats):
        comm.barrier()
        rows["compute_alone"].append(compute())
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(grad)
        rows["reduce_alone"].append(time.perf_counter() - t0)
        comm.barrier()
        t0, cpu0, own0 = time.perf_counter(), time.process_time(), time.thread_time()
        handle = comm.allreduce_async(grad)
        rows["compute_overlapped"].append(compute())
        handle.wait()
        rows["reduce_overlapped"].append(time.perf_counter() - t0)
        rows["other_threads_cpu"].append((time.process_time() - cpu0) - (time.thread_time() - own0))
    if comm.rank == 0:  # the raw repeats: the slowdowns are computed per repeat, from one pair each
        out.write_text(json.dumps(rows))
    comm.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emulated", default="1gbit", help="link rate of the emulated cluster")
    p.add_argument("--cases", default="gloo,mpi:thread,mpi:blocking",
                   help="comma-separated: gloo, or mpi:PROGRESS (thread, blocking, test, library)")
    p.add_argument("--mbytes", type=float, default=9.54, help="reduction size in MB (the design.md CNN: 9.54)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--compute-fraction", type=float, default=0.6,
                   help="the compute's length alone as a fraction of the reduction's alone (below 1: it must "
                        "end first for s_c and s_r to be read; default 0.6)")
    p.add_argument("--compute", choices=["matmul", "cnn"], default="matmul",
                   help="the compute beside the reduction: matrix products, or forward and backward steps of the "
                        "design.md CNN on synthetic 3x32x32 input (the training step the bound is about)")
    p.add_argument("--batch", type=int, default=32, help="--compute cnn: the batch per step")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not 0.0 < args.compute_fraction < 1.0:
        p.error(f"--compute-fraction {args.compute_fraction}: must be in (0, 1)")
    if args.worker:
        backend, progress, nbytes, out = args.worker
        worker(backend, progress, int(nbytes), args.repeats, args.compute_fraction, args.compute, args.batch,
               Path(out))
        return 0

    from asyncsgd.launch.emulated import run_for_result
    from asyncsgd.launch.netns import LinkSpec
    from asyncsgd.projection.schedules import overlap_slowdowns

    beside = "matrix products" if args.compute == "matmul" else f"CNN steps (batch {args.batch})"
    print(f"{args.mbytes} MB allreduce beside {beside}, 2 workers over emulated {args.emulated} links, 1 thread, "
          f"medians of {args.repeats} (ms)")
    print("| case | reduce alone | reduce overlapped | compute alone | compute overlapped | other threads' CPU "
          "| s_c | s_r |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        backend, _, progress = case.partition(":")
        result = run_for_result(
            2, LinkSpec.parse(args.emulated), backend,
            lambda out: [sys.executable, __file__, "--repeats", str(args.repeats),
                         "--compute-fraction", str(args.compute_fraction), "--compute", args.compute,
                         "--batch", str(args.batch),
                         "--worker", backend, progress or "-", str(int(args.mbytes * 1e6)), str(out)],
            {"OMP_NUM_THREADS": "1"})
        raw = {k: [x * 1e3 for x in v] for k, v in result.items()}
        r = {k: statistics.median(v) for k, v in raw.items()}
        # what overlapping costs each side (asyncsgd-bench --overlap-cost s_c,s_r), per repeat from
        # that repeat's own pair: medians of the columns would pair numbers of different repeats
        pairs = []
        for alone, together, c_alone, c_together in zip(raw["reduce_alone"], raw["reduce_overlapped"],
                                                       raw["compute_alone"], raw["compute_overlapped"]):
            try:
                pairs.append(overlap_slowdowns(alone, together, c_alone, c_together))
            except ValueError:  # that repeat's compute outlived its reduction: no factor from it
                pass
        factors = " | ".join(
            f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in zip(*pairs)) if pairs else "— | —"
        if len(pairs) < len(raw["reduce_alone"]):
            factors += f" ({len(pairs)} of {len(raw['reduce_alone'])} repeats: in the others the compute ended last)"
        print(f"| {case} | {r['reduce_alone']:.1f} | {r['reduce_overlapped']:.1f} | {r['compute_alone']:.1f} | "
              f"{r['compute_overlapped']:.1f} | {r['other_threads_cpu']:.1f} | {factors} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

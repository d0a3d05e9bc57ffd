"""Does cutting a gradient into chunks cost link time when nothing computes beside it?

Two workers on an emulated cluster (root + iproute2, docs/emulated-cluster.md)
reduce the design.md CNN's gradient through the project's own communicator
(asyncsgd.comm, on a second channel as layerwise's bulk lane) in several ways,
interleaved, and report the median time of each over the repeats:

- fused: the whole gradient as one reduction (T_comm);
- one at a time: layerwise's 12 reductions (conv1, conv2, fc1 as 8 row blocks, fc2,
  fc3; backward's order), each waited for before the next starts;
- window N: the same, at most N started and not yet waited for;
- all: all 12 started at once, then waited for (the backend queues them);
- lanes: conv1 and conv2 on channel 0, the rest on channel 1, all at once.

If the windows and ``all`` take about as long as ``fused``, chunks cost the link
nothing by themselves, and what a layerwise step loses beside its compute is
the compute's doing (docs/performance.md).

    sudo .venv/bin/python scripts/bench_chunks.py --backend gloo --bandwidth 1gbit --repeats 15
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# bytes per reduction, in the order layerwise starts them: the design.md CNN with split_mb=1
# (fc3, fc2, fc1's 8 row blocks, conv2, conv1)
SIZES = [20520, 1050624] + [1048832] * 8 + [73984, 3592]
URGENT = 2  # the last two (conv2, conv1): lane 0 in the ``lanes`` pattern


def _patterns(comm, torch):
    fused = torch.ones(sum(SIZES) // 4)
    parts = [torch.ones(n // 4) for n in SIZES]

    def start(t, channel=1):
        return comm.allreduce_async(t, average=False, channel=channel)

    def window(n):
        def run():
            pending = []
            for t in parts:
                pending.append(start(t))
                if len(pending) >= n:
                    pending.pop(0).wait()
            for h in pending:
                h.wait()
        return run

    def all_at_once():
        for h in [start(t) for t in parts]:
            h.wait()

    def lanes():
        handles = [start(t) for t in parts[:-URGENT]] + [start(t, channel=0) for t in parts[-URGENT:]]
        for h in handles:
            h.wait()

    return {"fused": lambda: start(fused).wait(), "one at a time": window(1), "window 2": window(2),
            "window 3": window(3), "all": all_at_once, "lanes": lanes}


def _worker(backend: str, repeats: int, out: Path) -> None:
    import torch

    from asyncsgd.comm import communicator_for

    torch.set_num_threads(1)
    comm = communicator_for(backend, 120.0)
    comm.open_channels(2)
    patterns = _patterns(comm, torch)
    for run in patterns.values():  # connections are set up lazily: keep that out of the timing
        run()
    ms = {name: [] for name in patterns}
    for _ in range(repeats):
        for name, run in patterns.items():
            comm.barrier()
            t0 = time.perf_counter()
            run()
            ms[name].append((time.perf_counter() - t0) * 1e3)
    if comm.rank == 0:
        out.write_text(json.dumps(ms))
    comm.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["gloo", "mpi"], default="gloo")
    parser.add_argument("--bandwidth", default="1gbit", help="link rate, tc units")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.backend, args.repeats, args.worker)
        return 0

    from asyncsgd.launch.emulated import run_for_result
    from asyncsgd.launch.netns import LinkSpec, missing_requirements

    reason = missing_requirements()
    if reason:
        print(f"bench_chunks: {reason}", file=sys.stderr)
        return 2
    ms = run_for_result(
        2, LinkSpec.parse(args.bandwidth), args.backend,
        lambda out: [sys.executable, str(Path(__file__).resolve()), "--backend", args.backend,
                     "--repeats", str(args.repeats), "--worker", str(out)],
        # one thread each: the reduction's arithmetic is not what is measured
        {"OMP_NUM_THREADS": "1", "ASYNCSGD_THREADS": "1", "PYTHONUNBUFFERED": "1"}, prefix="asyncsgd-chunks-")
    print(f"{args.backend}, 2 workers, {args.bandwidth} emulated links, {sum(SIZES)} bytes in {len(SIZES)} "
          f"reductions, medians of {args.repeats} (ms):")
    for name, values in ms.items():
        print(f"  {name:14s} {statistics.median(values):7.1f}   (min {min(values):.1f}, max {max(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

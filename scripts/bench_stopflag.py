"""What the stop flag costs per step: its own 1-element reduction, or carried in the gradient's.

Every step the workers agree on whether to stop (asyncsgd.stopping). This runs
the training step of a real strategy on real workers and alternates blocks of
steps between the two ways of carrying the flag — a separate non-blocking
1-element allreduce read ``stop_lag`` steps later, and the strategy's
StopFlagSlot (one extra element of the reduction it makes anyway) — and
prints the median ms per step of each (rank 0). Start it under a launcher:

    .venv/bin/torchrun --nproc-per-node 2 scripts/bench_stopflag.py --backend gloo --model mlp
    .venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_stopflag.py --backend mpi --strategy delayed
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from asyncsgd.comm import make_communicator
from asyncsgd.config import GROUPS
from asyncsgd.metrics import PhaseTimer
from asyncsgd.models import build_model
from asyncsgd.stopping import StopRequest
from asyncsgd.strategies import make_strategy

SHAPES = {"mlp": (1, 8, 8), "cnn": (3, 32, 32)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="gloo", choices=["gloo", "mpi"])
    p.add_argument("--progress", default="thread", help="MPI progress mode")
    p.add_argument("--strategy", default="sync", choices=["sync", "delayed"])
    p.add_argument("--model", default="mlp", choices=list(SHAPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="steps per block")
    p.add_argument("--blocks", type=int, default=10, help="blocks, alternating between the two ways")
    args = p.parse_args()
    torch.set_num_threads(1)
    backend_cfg = GROUPS["backend"][args.backend]()
    if args.backend == "mpi":
        backend_cfg.progress = args.progress
    comm = make_communicator(backend_cfg)
    torch.manual_seed(0)
    shape = SHAPES[args.model]
    model = build_model(GROUPS["model"][args.model](), shape, 10)
    for t in model.state_dict().values():
        comm.broadcast(t, root=0)
    strategy = make_strategy(GROUPS["strategy"][args.strategy](), comm, PhaseTimer())
    net = strategy.attach(model, lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, fused=True))
    x, y = torch.randn(args.batch, *shape), torch.randint(10, (args.batch,))
    periods = {"separate reduction": [], "carried (slot)": []}
    for block in range(args.blocks):
        mode = list(periods)[block % 2]
        stop = StopRequest(comm, lag=strategy.stop_lag, slot=strategy.stop_slot if block % 2 else None)
        comm.barrier()
        last = time.perf_counter()
        for step in range(args.steps):
            strategy.zero_grad()
            F.cross_entropy(net(x), y).backward()
            strategy.synchronize()
            strategy.step()
            assert not stop.poll()
            now = time.perf_counter()
            if step >= 5:  # warm-up of each block
                periods[mode].append(now - last)
            last = now
        stop.close(complete=True)
    strategy.finish()
    strategy.close()
    if comm.rank == 0:
        med = {m: statistics.median(v) * 1e3 for m, v in periods.items()}
        print(f"{args.backend} P={comm.size} {args.strategy} {args.model} batch {args.batch}, "
              f"{args.blocks} alternating blocks of {args.steps} steps: "
              + ", ".join(f"{m} {v:.3f} ms/step" for m, v in med.items())
              + f"; difference {med['separate reduction'] - med['carried (slot)']:+.3f} ms/step")
    comm.close()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

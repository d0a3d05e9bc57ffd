"""One rank of a layerwise run whose model skips a layer on some ranks and not others.

Run under torchrun (gloo) or mpiexec (MPI) by test_rank_dependent.py. Each rank draws
its own data, and the data decides whether the middle layer runs, so at many steps
the set of layers without a gradient differs between the ranks. Rank 0 writes, as
JSON, whether every rank ended with rank 0's parameters.
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from asyncsgd.comm import make_communicator
from asyncsgd.config import GlooConfig, LayerwiseConfig, MPIBackendConfig
from asyncsgd.launch.environment import detect, prepare_torchdist_env
from asyncsgd.metrics import PhaseTimer
from asyncsgd.strategies import make_strategy


class RankDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.maybe, self.b = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if float(x[0, 0]) > 0:  # the data decides, so the ranks differ
            h = torch.relu(self.maybe(h))
        return self.b(h)


def main(backend: str, priority: bool, out: str) -> None:
    torch.set_num_threads(1)
    if backend == "mpi":
        comm = make_communicator(MPIBackendConfig(timeout_s=30))
    else:
        prepare_torchdist_env(detect())
        comm = make_communicator(GlooConfig(timeout_s=30))
    torch.manual_seed(0)
    model = RankDependent()
    cfg = LayerwiseConfig(priority=priority, chunk_mb=16 / 2**20, urgent_share=0.3)
    strategy = make_strategy(cfg, comm, PhaseTimer())
    net = strategy.attach(model, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    g = torch.Generator().manual_seed(1 + comm.rank)
    skipped_here = []
    for step in range(30):
        x, y = torch.randn(4, 6, generator=g), torch.randint(3, (4,), generator=g)
        skipped_here.append(float(x[0, 0]) <= 0)
        strategy.zero_grad()
        F.cross_entropy(net(x), y).backward()
        strategy.synchronize()
        strategy.step()
    strategy.finish()
    strategy.close()
    mine = [p.detach().clone() for p in model.parameters()]
    theirs = comm.broadcast_object(mine, root=0)
    same = all(torch.equal(a, b) for a, b in zip(mine, theirs))
    flags = comm.broadcast_object(same, root=1) if comm.size > 1 else same
    patterns = [comm.broadcast_object(skipped_here, root=r) for r in range(comm.size)]
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump({"equal": same and flags, "skips": patterns}, f)
    comm.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "priority", sys.argv[3])

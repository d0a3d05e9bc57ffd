"""Synchronous SGD: full backward, one allreduce of all gradients, then the update."""
from __future__ import annotations

import torch

from .base import Strategy


class SyncStrategy(Strategy):
    name = "sync"

    def synchronize(self) -> None:
        grads = self._grads()
        if self.cfg.fuse:
            # One reduction of everything flattened together: one message instead of
            # one per tensor (what DDP buckets and Horovod fusion do at full size).
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.comm.allreduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset: offset + g.numel()].view_as(g))
                offset += g.numel()
        else:
            handles = [self.comm.allreduce_async(g) for g in grads]
            for h in handles:
                h.wait()

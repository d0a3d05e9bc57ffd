"""Synchronous SGD: full backward, one allreduce of all gradients, then the update."""
from __future__ import annotations

import torch

from .base import Strategy


class SyncStrategy(Strategy):
    name = "sync"

    def attach(self, model, make_optimizer):
        net = super().attach(model, make_optimizer)
        self.flat = torch.empty(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                device=self.params[0].device)
        return net

    def synchronize(self) -> None:
        grads = self._grads()
        if self.cfg.fuse:
            # One reduction of everything flattened together: one message instead of
            # one per tensor (what DDP buckets and Horovod fusion do at full size).
            self._flatten_into(self.flat, grads)
            self._wait(self._reduce(self.flat, "allreduce all"), "all")
            self._unflatten_from(self.flat, grads)
        else:
            handles = [self._reduce(g, f"allreduce {i}") for i, g in enumerate(grads)]
            for i, h in enumerate(handles):
                self._wait(h, str(i))

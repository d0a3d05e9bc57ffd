"""Synchronous SGD: full backward, one allreduce of all gradients, then the update.

Fused (the default), the gradients are flattened into one buffer with one extra
element, the stop flag (:class:`~asyncsgd.stopping.StopFlagSlot`); the buffer is
*summed*, and the division by P happens in the copy back into the gradients,
not in a pass of its own.
"""
from __future__ import annotations

import torch

from ..stopping import StopFlagSlot
from .base import Strategy


class SyncStrategy(Strategy):
    name = "sync"

    def attach(self, model, make_optimizer):
        net = super().attach(model, make_optimizer)
        if self.cfg.fuse and self.comm.size > 1:
            self.flat = torch.empty(sum(p.numel() for p in self.params) + 1, dtype=self.params[0].dtype,
                                    device=self.params[0].device)
            self.stop_slot = StopFlagSlot()
        return net

    def synchronize(self) -> None:
        grads = self._grads()
        if self.comm.size == 1:
            return  # the average over one worker is its own gradient: nothing to copy
        if self.cfg.fuse:
            # One reduction of everything flattened together: one message instead of
            # one per tensor (what DDP buckets and Horovod fusion do at full size).
            self._flatten_into(self.flat, grads)
            self.flat[-1] = self.stop_slot.outgoing
            self._wait(self._reduce(self.flat, "allreduce all", average=False), "all")
            self._unflatten_from(self.flat, grads, scale=1.0 / self.comm.size)
            self.stop_slot.deliver(float(self.flat[-1]))
        else:
            handles = [self._reduce(g, f"allreduce {i}") for i, g in enumerate(grads)]
            for i, h in enumerate(handles):
                self._wait(h, str(i))

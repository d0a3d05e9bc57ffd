"""Synchronous SGD: full backward, one allreduce of all gradients, then the update.

Fused (the default), every gradient is a view of one flat buffer
(:meth:`~asyncsgd.strategies.base.Strategy._flat_gradients`) with one extra
element, the stop flag (:class:`~asyncsgd.stopping.StopFlagSlot`): backward
writes the buffer, one reduction *sums* it in place, and one in-place multiply
by 1/P makes it the average — no copy into or out of a reduction buffer.
"""
from __future__ import annotations

from ..stopping import StopFlagSlot
from .base import Strategy


class SyncStrategy(Strategy):
    name = "sync"

    def attach(self, model, make_optimizer):
        net = super().attach(model, make_optimizer)
        self.flat = self._flat_gradients(extra=1)  # + the stop flag
        if self.flat is None:
            raise ValueError("strategy=sync needs every parameter in one dtype on one device")
        if self.cfg.fuse and self.comm.size > 1:
            self.stop_slot = StopFlagSlot()
        return net

    def synchronize(self) -> None:
        if self.comm.size == 1:
            return  # the average over one worker is its own gradient
        if self.cfg.fuse:
            # One reduction of everything flattened together: one message instead of
            # one per tensor (what DDP buckets and Horovod fusion do at full size).
            self.flat[-1] = self.stop_slot.outgoing
            self._wait(self._reduce(self.flat, "allreduce all", average=False), "all")
            self.stop_slot.deliver(float(self.flat[-1]))
            self.flat.mul_(1.0 / self.comm.size)
        else:
            grads = [p.grad for p in self.params]
            handles = [self._reduce(g, f"allreduce {i}") for i, g in enumerate(grads)]
            for i, h in enumerate(handles):
                self._wait(h, str(i))

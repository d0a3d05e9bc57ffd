"""No communication at all: each worker trains on its own shard.

Not data-parallel SGD (the workers drift apart); it exists to measure the
compute-only time of an iteration, T_compute, for the overlap benchmark.
"""
from __future__ import annotations

from .base import Strategy


class NoCommStrategy(Strategy):
    name = "nocomm"

    def attach(self, model, make_optimizer):
        net = super().attach(model, make_optimizer)
        self._flat_gradients()  # zeroing and the non-finite check in one kernel each, as in sync
        return net

    def synchronize(self) -> None:
        pass

"""The strategy interface: how and when gradients are averaged and applied.

The training loop is the same for every strategy::

    strategy.zero_grad()
    loss = loss_fn(model(x), y)     # forward (hooks may wait/update here)
    loss.backward()                 # backward (hooks may start reductions here)
    strategy.synchronize()          # whatever must finish before the update
    strategy.step()                 # the update(s) due at this step

A strategy is composed with the model by :meth:`attach`, owns its hooks,
handles and buffers, and removes them in :meth:`close`. :meth:`flush` completes
every reduction in flight so that evaluation and checkpoints see the true
current weights; :meth:`finish` ends training (flush, plus whatever the
strategy still owes).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, List

import torch
from torch import nn

from ..comm import Communicator
from ..metrics import PhaseTimer

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class Strategy(ABC):
    name = "base"

    def __init__(self, cfg, comm: Communicator, timer: PhaseTimer):
        self.cfg, self.comm, self.timer = cfg, comm, timer
        self.model: nn.Module | None = None
        self.params: List[nn.Parameter] = []
        self.warnings: List[str] = []

    def attach(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        """Take charge of ``model``'s gradients; returns the module to run forward on."""
        self.model = model
        # registration order = the same fixed order on every rank (collective order matters)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params)
        return model

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)

    @abstractmethod
    def synchronize(self) -> None:
        """Called right after backward."""

    def step(self) -> None:
        self.optimizer.step()

    def flush(self) -> None:
        """Complete every in-flight reduction and every update already due."""

    def finish(self) -> None:
        """End of training: after this the model holds the final weights."""
        self.flush()

    def close(self) -> None:
        """Remove hooks and free buffers."""

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _grads(self) -> List[torch.Tensor]:
        # A parameter that took no part in this loss still contributes a zero
        # gradient, so every rank reduces the same tensors in the same order.
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params]

    def describe(self) -> dict:
        return {"strategy": self.name, "warnings": list(self.warnings)}

"""The strategy interface: how and when gradients are averaged and applied.

The training loop is the same for every strategy::

    strategy.zero_grad()
    loss = loss_fn(model(x), y)     # forward (hooks may wait/update here)
    loss.backward()                 # backward (hooks may start reductions here)
    strategy.synchronize()          # whatever must finish before the update
    strategy.step()                 # the update(s) due at this step

A strategy is composed with the model by :meth:`attach`, owns its hooks,
handles and buffers, and removes them in :meth:`close` — ``close(abort=True)``
after a failure, when a peer may be gone: then it waits for nothing, applies
nothing and raises nothing. :meth:`flush` completes
every reduction in flight so that evaluation and checkpoints see the true
current weights; :meth:`finish` ends training (flush, plus whatever the
strategy still owes). :meth:`state_dict` / :meth:`load_state_dict` carry the
optimizer state (and, for ``delayed``, the queue of reduced gradients) through
a checkpoint; they are called only after :meth:`flush`.

Before every update the reduced gradient is checked for NaN/inf
(``train.nonfinite``): it is the same tensor on every rank, so every rank makes
the same decision without an extra collective.

A strategy whose step makes a reduction anyway may lend one element of it to
the stop flag (:class:`~asyncsgd.stopping.StopFlagSlot`, ``stop_slot``), so a
step issues no collective the algorithm does not need.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
import math
import time
from typing import Callable, Iterable, Iterator, List, Optional

import torch
from torch import nn

from ..comm import Communicator, Handle
from ..lr_schedule import LrSchedule, constant
from ..metrics import PhaseTimer
from ..stopping import StopFlagSlot
from ..timeline import Timeline

class NonFiniteGradient(RuntimeError):
    """The gradient to apply holds NaN or inf and train.nonfinite=stop."""


OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]



def flat_views(flat: torch.Tensor, like: List[torch.Tensor]) -> List[torch.Tensor]:
    """Consecutive views of ``flat``, one shaped like each of ``like``, from its start."""
    views, offset = [], 0
    for t in like:
        views.append(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()
    return views

class Strategy(ABC):
    name = "base"

    def __init__(self, cfg, comm: Communicator, timer: PhaseTimer, timeline: Optional[Timeline] = None,
                 clip_norm: Optional[float] = None):
        self.cfg, self.comm, self.timer = cfg, comm, timer
        self.timeline = timeline if timeline is not None else Timeline(comm.rank, 0, 0, enabled=False)
        self.clip_norm = clip_norm  # global-norm gradient clipping before each update (None = off)
        self.model: nn.Module | None = None
        self.params: List[nn.Parameter] = []
        self.warnings: List[str] = []
        self.nonfinite = "stop"  # train.nonfinite: stop | skip
        self.skipped = 0  # updates skipped because their gradient was not finite
        self.steps_done = 0  # step() calls, to name the step of a bad gradient
        # train.lr's factor for the gradient of a step (asyncsgd.lr_schedule); the optimizers keep
        # the unscheduled rate, scaled only while a gradient is applied (_scheduled_lr)
        self.lr_schedule: LrSchedule = constant
        # An element of a reduction this strategy makes anyway that carries the stop flag;
        # None: asyncsgd.stopping makes a reduction of its own for it.
        self.stop_slot: Optional[StopFlagSlot] = None
        # Every gradient as a view of one flat buffer (_flat_gradients), or None.
        self.flat_grad: Optional[torch.Tensor] = None
        self._grad_views: List[torch.Tensor] = []

    @property
    def settled_step(self) -> int:
        """The first step of the strategy's final schedule: steps before it (layerwise's first step,
        its EDF calibration, bucket_mb=auto's trials) are left out of the median iteration time."""
        return 0

    def attach(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        """Take charge of ``model``'s gradients; returns the module to run forward on."""
        self.model = model
        # registration order = the same fixed order on every rank (collective order matters)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params)
        return model

    def zero_grad(self) -> None:
        if self.flat_grad is None:
            self.optimizer.zero_grad(set_to_none=False)
            return
        for p, view in zip(self.params, self._grad_views):
            if p.grad is not view:  # something replaced it (e.g. zero_grad(set_to_none=True)): view again
                p.grad = view
        self.flat_grad.zero_()  # one kernel, where the optimizer's zero_grad loops in Python

    @abstractmethod
    def synchronize(self) -> None:
        """Called right after backward."""

    def step(self) -> None:
        with self._scheduled_lr(self.optimizer, self.steps_done):
            self._update(self.optimizer, grad_step=self.steps_done)
        self.steps_done += 1

    # -- checkpoint -------------------------------------------------------------
    def optimizers(self) -> List[torch.optim.Optimizer]:
        """Every optimizer holding state, in a fixed order."""
        return [self.optimizer]

    def state_dict(self) -> dict:
        """Tensors and plain values only (saved with torch.save, read with weights_only=True)."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers()], "steps_done": self.steps_done,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        optimizers = self.optimizers()
        if len(state["optimizers"]) != len(optimizers):
            raise ValueError(f"checkpoint holds {len(state['optimizers'])} optimizer states, "
                             f"strategy {self.name} has {len(optimizers)}")
        for opt, saved in zip(optimizers, state["optimizers"]):
            # The checkpoint gives the state (momentum); the config gives the hyperparameters,
            # which may differ under resume.allow_changes (load_state_dict would restore the old ones).
            settings = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            opt.load_state_dict(saved)
            for group, setting in zip(opt.param_groups, settings):
                group.update(setting)
        self.steps_done = int(state["steps_done"])
        self.skipped = int(state["skipped"])

    # -- helpers shared by the strategies ---------------------------------------
    def _reduce(self, tensor: torch.Tensor, label: str, grad_step: Optional[int] = None, channel: int = 0,
                average: bool = True) -> Handle:
        """Start averaging (or summing) ``tensor`` (the gradient of step ``grad_step``) over all workers on
        ``channel``; the timeline draws it."""
        started = time.perf_counter()
        handle = self.comm.allreduce_async(tensor, average, channel)
        self.timeline.reduction(label, handle, started, tensor.numel() * tensor.element_size(), grad_step, channel)
        return handle

    def _wait(self, handle: Handle, label: str) -> None:
        """Block until ``handle`` is done, booked as communication wait."""
        with self.timer.phase("comm_wait"), self.timeline.region(f"wait {label}"):
            handle.wait()

    @contextmanager
    def _scheduled_lr(self, optimizer: torch.optim.Optimizer, grad_step: Optional[int]) -> Iterator[None]:
        """Within: ``optimizer``'s rates scaled for the gradient of ``grad_step``; after: as they were
        (checkpoints and resume see the configured rate; the schedule needs no state)."""
        factor = 1.0 if grad_step is None else self.lr_schedule(grad_step)
        if factor == 1.0:
            yield
            return
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] *= factor
        try:
            yield
        finally:
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate

    def _update(self, optimizer: torch.optim.Optimizer, label: str = "update", grad_step: Optional[int] = None) -> bool:
        """Apply ``optimizer`` to the reduced gradient computed at step ``grad_step``; False if skipped.
        The caller holds ``_scheduled_lr`` for that step."""
        with self.timer.phase("update"), self.timeline.region(label):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if not self._finite(params, grad_step):
                return False
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
            optimizer.step()
            return True

    @staticmethod
    def all_finite(tensors: List[torch.Tensor]) -> bool:
        """No NaN or inf in ``tensors``. Fast path: NaN and inf survive a sum (0.15 ms for 2.4M
        values, isfinite per element costs 6 ms); only a non-finite sum, which overflow could
        also give, is checked exactly."""
        if not tensors or bool(torch.isfinite(torch.stack([t.sum() for t in tensors]).sum())):
            return True
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def _finite(self, params: List[torch.Tensor], grad_step: Optional[int]) -> bool:
        """False (update skipped) or NonFiniteGradient when a gradient holds NaN/inf."""
        grads = [p.grad for p in params if p.grad is not None]
        if self.flat_grad is None:
            finite = self.all_finite(grads)
        else:  # the fast path is one sum over the flat buffer (its extra elements are finite)
            finite = math.isfinite(self.flat_grad.sum().item()) or all(bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            return True
        if self.nonfinite == "skip":
            self.skipped += 1
            return False
        raise NonFiniteGradient(
            f"non-finite loss or gradient (NaN/inf) computed at step {grad_step}; "
            "set train.nonfinite=skip to skip such updates"
        )

    def flush(self) -> None:
        """Complete every in-flight reduction and every update already due."""

    def finish(self) -> None:
        """End of training: after this the model holds the final weights."""
        self.flush()

    def close(self, abort: bool = False) -> None:
        """Remove hooks and free buffers.

        ``abort``: training ended with an error and a peer may be gone. Wait for no
        reduction, apply no update, raise nothing: drop what is in flight (the process
        is about to end; the first error is the one to report)."""

    @property
    def stop_lag(self) -> int:
        """Steps after which a reduction issued at a step boundary may be waited for without
        waiting earlier than the strategy itself would (see asyncsgd.stopping)."""
        return 1

    def lr_at(self, grad_step: int) -> float:
        """The rate the gradient of ``grad_step`` is applied with (before any compensation rule)."""
        return float(self.optimizer.param_groups[0]["lr"]) * self.lr_schedule(grad_step)

    @staticmethod
    def _flatten_into(buffer: torch.Tensor, tensors: List[torch.Tensor]) -> torch.Tensor:
        offset = 0
        for t in tensors:
            buffer[offset: offset + t.numel()].copy_(t.reshape(-1))
            offset += t.numel()
        return buffer

    @staticmethod
    def _unflatten_from(buffer: torch.Tensor, tensors: List[torch.Tensor], scale: float = 1.0) -> None:
        """Copy ``buffer`` back into ``tensors``, times ``scale``: a summed reduction becomes the
        average in the copy that is made anyway, instead of in a pass of its own."""
        for t, part in zip(tensors, flat_views(buffer, tensors)):
            if scale == 1.0:
                t.copy_(part)
            else:
                torch.mul(part, scale, out=t)

    def _flat_gradients(self, extra: int = 0) -> Optional[torch.Tensor]:
        """Make every parameter's ``.grad`` a view of one flat buffer with ``extra`` more elements
        at its end, and return the buffer (None when the parameters differ in dtype or device).

        Backward accumulates into the views in place, so the gradient is already flat for a
        reduction (no copy in or out), zeroing and the non-finite check are one kernel each,
        and a parameter that took no part in the loss still has a (zero) gradient: every rank
        reduces the same tensors in the same order. Call from ``attach``, for strategies
        whose one optimizer updates ``self.params``."""
        like = self.params[0]
        if any(p.dtype != like.dtype or p.device != like.device for p in self.params):
            return None
        flat = torch.zeros(sum(p.numel() for p in self.params) + extra, dtype=like.dtype, device=like.device)
        return self._grads_into(flat)

    def _grads_into(self, flat: torch.Tensor) -> torch.Tensor:
        """Make every parameter's ``.grad`` a view of ``flat`` (shaped as :meth:`_flat_gradients`
        made it) from now on, and return it: a strategy that hands the buffer backward filled to a
        reduction gives backward another one instead of copying the gradient out."""
        views = flat_views(flat, self.params)
        for p, view in zip(self.params, views):
            p.grad = view
        self.flat_grad, self._grad_views = flat, views
        return flat

    def describe(self) -> dict:
        return {"strategy": self.name, "warnings": list(self.warnings)}

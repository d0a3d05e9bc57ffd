"""Delayed-k SGD (bounded staleness): the gradient of step t is applied at step t+k.

After backward, the reductions still in flight are waited for (usually long
done: one reduction at a time on the link), the flat buffer backward filled
starts its reduction in the background and the parameters' gradients become
views of a free one of k+1 others (no copy); then the reduced gradient of step
t-k is applied, averaged on its way into that buffer. Steps 0..k-1 apply nothing. A buffer
handed to a reduction is not touched again until that reduction is applied.
``flush`` completes the reductions in flight but keeps them queued (evaluation
sees the true weights without changing the math); ``finish`` applies them when
``strategy.drain`` is true. k=0 is exactly ``sync``.

The gradients are views of one flat buffer, so the copy back is one kernel;
each buffer has one extra element for the stop flag
(:class:`~asyncsgd.stopping.StopFlagSlot`); buffers are summed, and the
division by P happens in the copy back into the gradients.

``strategy.compensation`` adds staleness compensation rules
(:mod:`asyncsgd.strategies.compensation`); the strategy calls their hooks at
fixed points of the step and carries their state through checkpoints. They
see the averaged gradient (the flat buffer less its stop flag), after the copy
back, so the flag and the summing stay out of their math.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, List, NamedTuple

import torch

from ..comm import DoneHandle, Handle
from ..stopping import StopFlagSlot
from .base import Strategy
from .compensation import Compensation


class _Queued(NamedTuple):
    """A step's gradient on its way to being applied."""

    step: int
    handle: Handle
    buffer: torch.Tensor  # the gradients flattened, then the stop flag
    scale: float  # times the buffer gives the average: 1/P for a sum, 1 for one restored from a checkpoint
    carries_flag: bool  # False once the flag it carried was read (restored from a checkpoint)


class DelayedStrategy(Strategy):
    name = "delayed"

    def attach(self, model, make_optimizer):
        net = super().attach(model, make_optimizer)
        if self._flat_gradients(extra=1) is None:  # the gradients as one buffer (self.flat), + the stop flag
            raise ValueError("strategy=delayed needs every parameter in one dtype on one device")
        self.free: Deque[torch.Tensor] = deque(torch.empty_like(self.flat) for _ in range(self.cfg.k + 1))
        self.in_flight: Deque[_Queued] = deque()  # oldest first
        self.steps_taken = 0
        self.stop_slot = StopFlagSlot()
        self.compensation = Compensation(self.cfg, self.params, self.optimizer, self._flatten_into,
                                         self._unflatten_from)
        return net

    @property
    def flat(self) -> torch.Tensor:
        """The buffer the parameters' gradients are views of now (the next backward fills it)."""
        return self.flat_grad

    def zero_grad(self) -> None:
        super().zero_grad()
        self.compensation.begin_step()  # the forward of this step may run at predicted weights

    def synchronize(self) -> None:
        # One reduction on the link at a time: the ones in flight are waited for before this step's
        # starts. gloo would run them side by side, and two allreduces sharing one link move the data
        # slower than one after the other (docs/performance.md, 100 Mbit/s); MPI's channel thread runs
        # them in order anyway. At K=1 it is the wait step() makes, moved before the new reduction starts.
        for queued in self.in_flight:
            self._wait(queued.handle, f"step {queued.step}")
        self.flat[-1] = self.stop_slot.outgoing
        # reduced where backward left it; the next backward fills a free buffer (no 9.5 MB copy
        # between one reduction's end and the next one's start, where the link would wait for it)
        buffer = self.flat
        handle = self._reduce(buffer, f"allreduce step {self.steps_taken}", average=False)
        self._grads_into(self.free.popleft())
        self.in_flight.append(_Queued(self.steps_taken, handle, buffer, 1.0 / self.comm.size, True))
        self.compensation.after_backward(self.steps_taken)
        self.steps_taken += 1

    def step(self) -> None:
        if len(self.in_flight) > self.cfg.k:
            self._apply_oldest()

    def _apply_oldest(self) -> None:
        queued = self.in_flight.popleft()
        self._wait(queued.handle, f"step {queued.step}")
        torch.mul(queued.buffer, queued.scale, out=self.flat)  # into the gradients, averaged on the way
        if queued.carries_flag:
            self.stop_slot.deliver(float(queued.buffer[-1]))
        self.compensation.correct(queued.step, self.flat[:-1])  # in place: the gradients are its views
        # the compensation rules scale the scheduled rate (spike's missed part included)
        with self._scheduled_lr(self.optimizer, queued.step):
            self.compensation.before_update(queued.step)
            applied = self._update(self.optimizer, f"update with gradient of step {queued.step}", grad_step=queued.step)
            self.compensation.after_update(applied)
        self.free.append(queued.buffer)

    def flush(self) -> None:
        for queued in self.in_flight:
            self._wait(queued.handle, f"step {queued.step}")

    def finish(self) -> None:
        self.flush()
        while self.cfg.drain and self.in_flight:
            self._apply_oldest()

    def close(self, abort: bool = False) -> None:
        if abort:  # after a failure the reductions in flight are dropped, never waited for
            self._drop_queue()

    def _drop_queue(self) -> None:
        self.free.extend(queued.buffer for queued in self.in_flight)
        self.in_flight.clear()

    @property
    def stop_lag(self) -> int:
        return max(1, self.cfg.k)  # step t's reduction is waited for at step t+k

    def state_dict(self) -> dict:
        """Adds the averaged gradients still waiting to be applied (call after flush)."""
        state = super().state_dict()
        state["steps_taken"] = self.steps_taken
        state["queue_steps"] = [queued.step for queued in self.in_flight]
        state["queue"] = [queued.buffer[:-1] * queued.scale for queued in self.in_flight]
        state["compensation"] = self.compensation.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if len(state["queue"]) > self.cfg.k:
            raise ValueError(f"checkpoint holds {len(state['queue'])} queued gradients, more than strategy.k={self.cfg.k}")
        self.steps_taken = int(state["steps_taken"])
        self._drop_queue()
        for step, saved in zip(state["queue_steps"], state["queue"]):
            buffer = self.free.popleft()
            buffer[:-1].copy_(saved)
            buffer[-1] = 0.0
            # reduced and averaged before it was saved; its stop flag was read then
            self.in_flight.append(_Queued(int(step), DoneHandle(buffer), buffer, 1.0, False))
        self.compensation.load_state_dict(state.get("compensation", {"rules": []}))

    def pending_steps(self) -> List[int]:
        return [queued.step for queued in self.in_flight]

    def describe(self) -> dict:
        info = super().describe()
        info["undrained_gradients"] = len(self.in_flight)
        return info

"""Delayed-k SGD (bounded staleness): the gradient of step t is applied at step t+k.

After backward, the gradients are copied into one of k+1 flat buffers and their
reduction starts in the background; then the reduced gradient of step t-k is
waited for (usually long done) and applied. Steps 0..k-1 apply nothing. A buffer
handed to a reduction is not touched again until that reduction is applied.
``flush`` completes the reductions in flight but keeps them queued (evaluation
sees the true weights without changing the math); ``finish`` applies them when
``strategy.drain`` is true. k=0 is exactly ``sync``.

``strategy.compensation`` adds staleness compensation rules
(:mod:`asyncsgd.strategies.compensation`); the strategy calls their hooks at
fixed points of the step and carries their state through checkpoints.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, List, Tuple

import torch

from ..comm import DoneHandle, Handle
from .base import Strategy
from .compensation import Compensation


class DelayedStrategy(Strategy):
    name = "delayed"

    def attach(self, model, make_optimizer):
        net = super().attach(model, make_optimizer)
        numel = sum(p.numel() for p in self.params)
        like = self.params[0]
        self.free: Deque[torch.Tensor] = deque(
            torch.empty(numel, dtype=like.dtype, device=like.device) for _ in range(self.cfg.k + 1)
        )
        self.in_flight: Deque[Tuple[int, Handle, torch.Tensor]] = deque()  # (step, handle, buffer), oldest first
        self.steps_taken = 0
        self.compensation = Compensation(self.cfg, self.params, self.optimizer, self._flatten_into,
                                         self._unflatten_from)
        return net

    def zero_grad(self) -> None:
        super().zero_grad()
        self.compensation.begin_step()  # the forward of this step may run at predicted weights

    def synchronize(self) -> None:
        buffer = self._flatten_into(self.free.popleft(), self._grads())
        self.in_flight.append((self.steps_taken, self._reduce(buffer, f"allreduce step {self.steps_taken}"), buffer))
        self.compensation.after_backward(self.steps_taken)
        self.steps_taken += 1

    def step(self) -> None:
        if len(self.in_flight) > self.cfg.k:
            self._apply_oldest()

    def _apply_oldest(self) -> None:
        step, handle, buffer = self.in_flight.popleft()
        self._wait(handle, f"step {step}")
        self.compensation.correct(step, buffer)
        self._unflatten_from(buffer, self._grads())
        self.compensation.before_update(step)
        self._update(self.optimizer, f"update with gradient of step {step}", grad_step=step)
        self.compensation.after_update()
        self.free.append(buffer)

    def flush(self) -> None:
        for step, handle, _ in self.in_flight:
            self._wait(handle, f"step {step}")

    def finish(self) -> None:
        self.flush()
        while self.cfg.drain and self.in_flight:
            self._apply_oldest()

    @property
    def stop_lag(self) -> int:
        return max(1, self.cfg.k)  # step t's reduction is waited for at step t+k

    def state_dict(self) -> dict:
        """Adds the reduced gradients still waiting to be applied (call after flush)."""
        state = super().state_dict()
        state["steps_taken"] = self.steps_taken
        state["queue_steps"] = [step for step, _, _ in self.in_flight]
        state["queue"] = [buffer.clone() for _, _, buffer in self.in_flight]
        state["compensation"] = self.compensation.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if len(state["queue"]) > self.cfg.k:
            raise ValueError(f"checkpoint holds {len(state['queue'])} queued gradients, more than strategy.k={self.cfg.k}")
        self.steps_taken = int(state["steps_taken"])
        self.free.extend(buffer for _, _, buffer in self.in_flight)
        self.in_flight.clear()
        for step, saved in zip(state["queue_steps"], state["queue"]):
            buffer = self.free.popleft()
            buffer.copy_(saved)
            self.in_flight.append((int(step), DoneHandle(buffer), buffer))  # reduced before it was saved
        self.compensation.load_state_dict(state.get("compensation", {"rules": []}))

    def pending_steps(self) -> List[int]:
        return [step for step, _, _ in self.in_flight]

    def describe(self) -> dict:
        info = super().describe()
        info["undrained_gradients"] = len(self.in_flight)
        return info

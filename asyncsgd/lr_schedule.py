"""Learning-rate schedules as a factor of the configured rate, by the step a gradient was computed at.

The factor is a pure function of that step, so every rank applies the same rate without
communicating, a resumed run continues exactly (nothing to checkpoint), and a strategy that
applies a gradient later than it was computed (``delayed``: K steps; ``layerwise``: at the next
forward) applies it with the rate of its own step, as sequential SGD would. That is why this is
not torch.optim.lr_scheduler, whose schedulers count their own ``step()`` calls per optimizer.
"""
from __future__ import annotations

import math
from typing import Callable

LR_SCHEDULES = ["constant", "cosine"]

LrSchedule = Callable[[int], float]


def constant(step: int) -> float:
    return 1.0


def make_lr_schedule(name: str, total_steps: int, warmup_steps: int = 0) -> LrSchedule:
    """The factor of ``train.lr`` for the gradient of step ``step`` (0-based) of ``total_steps``.

    ``cosine``: (1 + cos(pi * step / total_steps)) / 2, from 1 at step 0 down towards 0 at the
    last step; torch's CosineAnnealingLR with eta_min=0 and T_max=total_steps in closed form
    (Loshchilov and Hutter, SGDR, 2017, without restarts).
    ``warmup_steps``: the factor times (step + 1) / warmup_steps over the first steps, the gradual
    warm-up of Goyal et al. (2017): large early gradients applied late are what make a stale run
    with momentum diverge at a rate sync trains well with."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; expected one of {LR_SCHEDULES}")
    total = max(int(total_steps), 1)
    warmup = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        f = 1.0
        if name == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(max(step, 0), total) / total))
        if step < warmup:
            f *= (max(step, 0) + 1) / warmup
        return f

    return constant if name == "constant" and warmup == 0 else factor

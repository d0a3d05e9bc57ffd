"""The Communicator interface: the only way a strategy talks to other workers.

Strategies see ``allreduce_async(tensor) -> Handle``, ``handle.wait()``,
``broadcast``, ``barrier``, ``rank`` and ``size``; so one strategy runs unchanged
on MPI, gloo and NCCL. Every collective must be issued in the same order on every
rank (MPI and NCCL match collectives by order, not by name).

Channels: ``open_channels(n)`` gives ``n`` independent sequences of collectives
(a process group each on torch.distributed, a duplicated communicator each on
MPI). The order rule holds per channel; between channels nothing is ordered, so
a reduction on one channel is never queued behind another channel's. Channel 0
is the default and goes first where the backend decides (MPI's communication
thread starts channel 0's reductions before any other channel's).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import torch


class CommTimeout(RuntimeError):
    """A collective did not complete within backend.timeout_s (a peer is dead or stuck)."""


class Handle(ABC):
    """A reduction in flight. Its tensor must not be touched until ``wait`` returns.

    ``completed_at`` (``time.perf_counter()``) is set by the backend when it learns
    the reduction finished; the timeline draws each reduction from start to it.
    """

    completed_at: Optional[float] = None

    def track_completion(self) -> None:
        """Ask the backend to set ``completed_at`` when the reduction ends (only the timeline
        needs it; where that costs a callback per collective, it is paid only when asked)."""

    @abstractmethod
    def is_completed(self) -> bool:
        """True once the result is in the tensor (does not block)."""

    @abstractmethod
    def wait(self) -> torch.Tensor:
        """Block until the reduction is done; returns the reduced tensor."""


class DoneHandle(Handle):
    """A reduction that needed no communication (world size 1)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.completed_at = time.perf_counter()

    def is_completed(self) -> bool:
        return True

    def wait(self) -> torch.Tensor:
        return self.tensor


class Communicator(ABC):
    """Collectives over one group of ``size`` workers; this worker is ``rank``."""

    name: str = "base"
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    @abstractmethod
    def allreduce_async(self, tensor: torch.Tensor, average: bool = True, channel: int = 0) -> Handle:
        """Start an in-place sum (divided by ``size`` if ``average``) of ``tensor`` over all workers,
        on ``channel`` (see :meth:`open_channels`)."""

    def allreduce(self, tensor: torch.Tensor, average: bool = True) -> torch.Tensor:
        return self.allreduce_async(tensor, average).wait()

    @property
    def channels(self) -> int:
        return 1

    def open_channels(self, n: int) -> None:
        """Make channels 0..n-1 available. A collective call: every rank makes the same calls in
        the same order (strategies do it in ``attach``). Backends without channels keep one."""

    @abstractmethod
    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        """Overwrite ``tensor`` on every rank with root's copy."""

    @abstractmethod
    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Return root's (picklable) ``obj`` on every rank."""

    @abstractmethod
    def barrier(self) -> None:
        """Return only when every rank has called it."""

    def suit_reductions(self, per_step: int) -> None:
        """A strategy's steps make ``per_step`` reductions from now on.

        Called at a step boundary with nothing in flight, at the same step on every rank
        (layerwise, when it lays out its buckets). A backend whose best way of driving
        reductions depends on how many there are may switch now (MPI with
        ``backend.progress=auto``); the others ignore it.
        """

    def progress(self) -> None:
        """Give pending non-blocking reductions a chance to advance.

        Only MPI with ``backend.progress=test`` needs this; strategies call it from
        their hooks so that reductions move while backward runs.
        """

    def abort(self, code: int = 1) -> None:
        """End every worker of the job now (after a fatal error on this rank)."""
        import os

        os._exit(code)

    def close(self) -> None:
        """Release the backend; further collectives are errors."""

    def describe(self) -> dict:
        """Facts recorded in summary.json (library versions, progress mode...)."""
        return {"backend": self.name, "world_size": self.size}

    def _wait_until(self, done: Callable[[], bool], what: str) -> None:
        """Poll ``done`` until true; raise CommTimeout after ``timeout_s``.

        Spins briefly first (low latency for short reductions), then backs off
        to short sleeps so a waiting rank does not steal a core from compute.
        """
        start = time.monotonic()
        spins = 0
        while not done():
            spins += 1
            if spins > 200:
                if time.monotonic() - start > self.timeout_s:
                    raise CommTimeout(
                        f"{what} did not complete within backend.timeout_s={self.timeout_s:g}s on rank {self.rank}"
                        " (a peer died or is stuck)"
                    )
                time.sleep(0.0002)

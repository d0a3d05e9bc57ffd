"""Which reduction goes on the wire next: chunking, credit and priority for ``layerwise``.

With one communication channel, reductions complete in the order they were
started. In backward the first layer's gradient is ready last, so without
help the next forward's very first layer waits behind every other reduction,
including the largest. ``strategy.priority=true`` (the idea behind P3 and
ByteScheduler) splits each bucket's flat buffer into chunks of
``strategy.chunk_mb``, keeps at most ``strategy.credit`` chunks handed to the
backend, and always hands over next the pending chunk of the layer the next
forward needs first; the other chunks wait in this scheduler, where a more
urgent one can still overtake them. A chunk of a layer more urgent than every
chunk in flight goes at once, credit or not: the credit exists to hold back
less urgent data so that such a chunk finds little ahead of it, and holding
the chunk itself back would only delay what the next forward needs first.

The launch order must be the same on every rank (MPI and gloo match
collectives by order), so no decision may depend on *when* a reduction happens
to finish. Decisions are therefore taken only at points every rank passes in
the same order — a bucket's gradient becoming ready in backward, the end of
backward, a layer's forward pre-hook — and credit is returned only by waits
the training thread makes anyway: waiting for a chunk also retires every chunk
started before it (they were ahead of it on the channel). When a layer needs
a chunk that is still pending and the credit is spent, the oldest chunk in
flight is waited for first.

Without priority each bucket is one chunk, credit is unlimited and order is
first ready, first sent: exactly the plain layer-wise method.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

import torch

from ..comm import Handle


@dataclass
class Chunk:
    job: "Job"
    index: int
    tensor: torch.Tensor  # a contiguous slice of the job's buffer
    label: str
    handle: Optional[Handle] = None
    done: bool = False


@dataclass
class Job:
    """One bucket's reduction for one step, possibly in several chunks."""

    label: str
    urgency: int  # smaller = needed earlier by the next forward
    step: int
    chunks: List[Chunk] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(c.done for c in self.chunks)


class ReductionScheduler:
    def __init__(self, start: Callable[[torch.Tensor, str, int], Handle], wait: Callable[[Handle, str], None],
                 priority: bool = False, chunk_bytes: int = 0, credit: int = 0):
        self._start, self._wait = start, wait
        self.priority = priority
        self.chunk_bytes = chunk_bytes if priority else 0  # 0 = one chunk per job
        self.credit = credit if priority else 0  # 0 = unlimited
        self._pending: List[tuple] = []  # heap of (key, chunk); keys are unique, so chunks are never compared
        self._inflight: Deque[Chunk] = deque()  # in start order, which is completion order on one channel
        self._arrival = itertools.count()

    # -- decision points ------------------------------------------------------------
    def submit(self, buffer: torch.Tensor, label: str, urgency: int, step: int) -> Job:
        """A bucket's gradient is in ``buffer``: queue its chunks and start what credit allows."""
        job = Job(label, urgency, step)
        pieces = self._split(buffer)
        for i, piece in enumerate(pieces):
            name = label if len(pieces) == 1 else f"{label} [{i + 1}/{len(pieces)}]"
            job.chunks.append(Chunk(job, i, piece, name))
        arrival = next(self._arrival)
        for chunk in job.chunks:
            # priority: the layer the next forward needs first, then chunk order; else first ready, first sent
            key = (urgency, arrival, chunk.index) if self.priority else (arrival, chunk.index)
            heapq.heappush(self._pending, (key, chunk))
        self.pump()
        return job

    def pump(self) -> None:
        """Start pending chunks, most urgent first, while credit lasts (never blocks)."""
        while self._pending and self._may_launch():
            self._launch()

    def complete(self, job: Job) -> None:
        """Block until ``job`` is reduced: start its pending chunks (waiting for the oldest in flight
        when credit is spent), then wait for its chunks and everything started before them."""
        while any(c.handle is None for c in job.chunks):
            if self._may_launch():
                self._launch()
            else:
                self._retire_oldest()
        while not job.done:
            self._retire_oldest()
        self.pump()

    def drain(self) -> None:
        """Start and complete everything."""
        while self._pending or self._inflight:
            if self._pending and self._may_launch():
                self._launch()
            else:
                self._retire_oldest()

    @property
    def idle(self) -> bool:
        return not self._pending and not self._inflight

    # -- internals --------------------------------------------------------------------
    def _may_launch(self) -> bool:
        """May the most urgent pending chunk start now? Depends only on what was started and
        waited for, never on timing, so every rank answers the same."""
        if not self.credit or len(self._inflight) < self.credit:
            return True
        urgency = self._pending[0][1].job.urgency
        return all(urgency < c.job.urgency for c in self._inflight)  # overtakes all in flight

    def _launch(self) -> None:
        _, chunk = heapq.heappop(self._pending)
        chunk.handle = self._start(chunk.tensor, f"allreduce {chunk.label}", chunk.job.step)
        self._inflight.append(chunk)

    def _retire_oldest(self) -> None:
        chunk = self._inflight[0]
        # Leave it in flight until the wait succeeds: when a peer dies the wait raises, and the
        # clean-up that follows (flush, close) must meet the same error again, not a broken queue.
        self._wait(chunk.handle, chunk.label)
        self._inflight.popleft()
        chunk.done = True

    def _split(self, buffer: torch.Tensor) -> List[torch.Tensor]:
        if not self.chunk_bytes:
            return [buffer]
        per = max(1, self.chunk_bytes // buffer.element_size())
        return list(torch.split(buffer, per))

"""``strategy.bucket_mb=auto`` for ``layerwise``: the bucket layout that is fastest here, measured.

Which layout wins depends on what the strategy cannot know ahead of time.
Over a slow link, one reduction per layer lets the first layers' gradients
travel while backward is still running, and the run is as fast as the link.
Over a fast link on few cores, a reduction is CPU work that competes with the
compute it overlaps (docs/performance.md): there, fewer and larger reductions
cost less, and one reduction after backward (what ``sync`` does) can be the
fastest. So, as Horovod's autotune does for its fusion threshold, the
strategy tries each candidate layout for a few steps at the start of the run
and keeps the fastest; the arithmetic is the same for every layout
(sequential SGD), only the speed differs.

Every rank must build the same buckets at the same step. The switches happen
after fixed numbers of steps (the same on every rank); the only decision that
depends on timing is the final choice, which rank 0's medians make and one
broadcast hands to every rank.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

SETTLE_STEPS = 1  # left out after each switch: the first step after one finds nothing in flight
MEASURED_STEPS = 4  # timed per candidate; the median decides


@dataclass(frozen=True)
class Layout:
    """How layerwise groups gradients into reductions: ``bucket_mb`` per bucket (0 = one per
    layer, inf = one bucket for the whole model) and ``chunk_mb`` per chunk (inf = not cut)."""

    bucket_mb: float
    chunk_mb: float

    def describe(self) -> dict:
        """For summary.json (JSON has no inf: null means one bucket / not cut)."""
        return {"bucket_mb": None if math.isinf(self.bucket_mb) else self.bucket_mb,
                "chunk_mb": None if math.isinf(self.chunk_mb) else self.chunk_mb}

    @classmethod
    def from_description(cls, d: dict) -> "Layout":
        return cls(math.inf if d["bucket_mb"] is None else float(d["bucket_mb"]),
                   math.inf if d["chunk_mb"] is None else float(d["chunk_mb"]))

    def __str__(self) -> str:
        if math.isinf(self.bucket_mb):
            return "one bucket"
        return "per layer" if self.bucket_mb == 0 else f"{self.bucket_mb:g} MiB buckets"


def candidates(chunk_mb: float) -> List[Layout]:
    """Per layer (the paper's method), DDP-like 4 MiB buckets, and one reduction after backward."""
    return [Layout(0.0, chunk_mb), Layout(4.0, chunk_mb), Layout(math.inf, math.inf)]


class LayoutTuner:
    """Times each candidate layout in turn; then the fastest, decided by ``choose``.

    Call :meth:`tick` once per step at the same point of the step on every rank. It returns
    the layout to switch to before the next step, or None to keep the current one; after a
    switch call :meth:`started`. ``choose(medians)`` returns the index of the layout to keep,
    the same on every rank (rank 0 decides, a broadcast tells the others).
    """

    def __init__(self, layouts: Sequence[Layout], choose: Callable[[List[float]], int],
                 measured: int = MEASURED_STEPS, clock: Callable[[], float] = time.perf_counter):
        if not layouts or measured < 1:
            raise ValueError("LayoutTuner needs at least one layout and one measured step")
        self.layouts = list(layouts)
        self.times: List[List[float]] = [[] for _ in self.layouts]
        self.chosen: Optional[Layout] = None
        self._choose, self._measured, self._clock = choose, measured, clock
        self._index = 0
        self._last: Optional[float] = None
        self._steps = 0  # steps ended since the current layout started
        self._discard = False  # the step under way did more than train (an evaluation, a checkpoint)

    @property
    def current(self) -> Layout:
        return self.chosen if self.chosen is not None else self.layouts[self._index]

    @property
    def done(self) -> bool:
        return self.chosen is not None

    def started(self) -> None:
        """The current layout is in place; the step that follows is its first."""
        self._last, self._steps = self._clock(), 0

    def discard(self) -> None:
        """Leave the step under way out of the timing (it also evaluated, or wrote a checkpoint)."""
        self._discard = True

    def restore(self, chosen: int, times: List[List[float]]) -> None:
        """A resumed run: the layout chosen before, with the times that chose it."""
        self.chosen, self.times = self.layouts[chosen], [list(t) for t in times]

    def tick(self) -> Optional[Layout]:
        now = self._clock()
        if self._last is None:  # the first call: the reference point only
            self._last = now
            return None
        self._steps += 1
        if self._steps > SETTLE_STEPS and not self._discard:
            self.times[self._index].append(now - self._last)
        self._last, self._discard = now, False
        if len(self.times[self._index]) < self._measured:
            return None
        if self._index + 1 < len(self.layouts):
            self._index += 1
            return self.layouts[self._index]
        best = self._choose(self.medians())
        self.chosen = self.layouts[best]
        return self.chosen if best != self._index else None

    def medians(self) -> List[float]:
        return [statistics.median(t) if t else math.inf for t in self.times]

    def describe(self) -> dict:
        return {"chosen": self.chosen.describe() if self.chosen else None,
                "tried": [{**layout.describe(), "median_ms": None if math.isinf(m) else round(1e3 * m, 3)}
                          for layout, m in zip(self.layouts, self.medians())]}

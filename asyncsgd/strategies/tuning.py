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

A few steps each cannot tell layouts apart that differ by less than the
machine's step-to-step noise (on a 2-core VM 10-20% per step at a 120 ms
step): the fastest median of four steps then is a coin toss, and each
repeat kept a different layout at MPI 10 Gbit/s batch 128, where `auto` ran
0.88x sync for the whole run (2026-12-02). So the choice (:func:`decide`)
keeps the one-bucket layout, which runs sync's schedule, unless another is
faster by more than the trials' noise; where the lead is positive but within
the noise, the two are timed once more (:data:`EXTRA_PASSES`) and judged on
all their steps.

Every rank must build the same buckets at the same step. The switches happen
after fixed numbers of steps (the same on every rank); the only decisions that
depend on timing (keep a layout, or time two again) are rank 0's, and one
broadcast hands each to every rank.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

SETTLE_STEPS = 1  # left out after each switch: the first step after one finds nothing in flight
# left out before the first candidate is timed: a run's first steps are slow (allocator, caches,
# connections: 200-300 ms against 150-180 at MPI 10 Gbit/s batch 128), which timed the per-layer
# layout, always first, up to 40% slow (as train.warmup_steps leaves them out of the run's median)
WARMUP_STEPS = 5
MEASURED_STEPS = 4  # timed per candidate and turn; the median decides
MIN_LEAD = 0.03  # a layout replaces one bucket only if at least this much faster (fraction of its median)
NOISE_FACTOR = 2.0  # ... and faster by more than this many median absolute deviations of the steps
EXTRA_PASSES = 1  # turns of the two contenders added when the lead is positive but within the noise


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


SAFE = 2  # the index in candidates() of one bucket: sync's schedule, the choice when in doubt


def medians(times: Sequence[Sequence[float]]) -> List[float]:
    """The median of each candidate's step times (inf for one not timed)."""
    return [statistics.median(t) if t else math.inf for t in times]


def _mad(times: Sequence[float]) -> float:
    m = statistics.median(times)
    return statistics.median(abs(t - m) for t in times)


def decide(times: Sequence[Sequence[float]], extra_left: int = 0, safe: int = SAFE) -> Union[int, List[int]]:
    """From the step times of each candidate: the index to keep, or the two indices to time again.

    The fastest median is kept if it is ``safe`` or leads it by more than :data:`MIN_LEAD` and
    by more than :data:`NOISE_FACTOR` median absolute deviations of either's steps (scaled
    down as the steps timed grow beyond one turn's). A positive lead within that margin,
    with ``extra_left`` turns left, asks for one more turn of ``[safe, fastest]``; with none
    left, ``safe`` is kept."""
    median = medians(times)
    best = min(range(len(median)), key=median.__getitem__)
    if best == safe:
        return safe
    lead = median[safe] - median[best]
    samples = min(len(times[best]), len(times[safe]))
    noise = NOISE_FACTOR * max(_mad(times[best]), _mad(times[safe])) * math.sqrt(MEASURED_STEPS / samples)
    if lead > max(MIN_LEAD * median[safe], noise):
        return best
    return [safe, best] if lead > 0 and extra_left > 0 else safe


class LayoutTuner:
    """Times each candidate layout in turn; then the one ``choose`` keeps, or more turns.

    Call :meth:`tick` once per step at the same point of the step on every rank. It returns
    the layout to switch to before the next step, or None to keep the current one; after a
    switch call :meth:`started`. ``choose(times, extra_left)`` gets every candidate's step
    times and returns the index of the layout to keep or a list of indices to time once
    more (:func:`decide`), the same on every rank (rank 0 decides, a broadcast tells the
    others); ``extra_left`` is how many more turns it may still ask for.
    """

    def __init__(self, layouts: Sequence[Layout], choose: Callable[[List[List[float]], int], Union[int, List[int]]],
                 measured: int = MEASURED_STEPS, clock: Callable[[], float] = time.perf_counter,
                 extra_passes: int = EXTRA_PASSES, warmup: int = WARMUP_STEPS):
        if not layouts or measured < 1:
            raise ValueError("LayoutTuner needs at least one layout and one measured step")
        self.layouts = list(layouts)
        self.times: List[List[float]] = [[] for _ in self.layouts]
        self.chosen: Optional[Layout] = None
        self.passes = 1  # rounds of turns so far
        self._choose, self._measured, self._clock = choose, measured, clock
        self._extra_passes = extra_passes
        self._queue = list(range(len(self.layouts)))  # the turns of this round, in order
        self._pos = 0
        self._turn = 0  # steps timed in the current turn
        self._last: Optional[float] = None
        self._steps = 0  # steps ended since the current layout started
        self._settle = max(SETTLE_STEPS, warmup)  # of the first turn; SETTLE_STEPS after a switch
        self._discard = False  # the step under way did more than train (an evaluation, a checkpoint)

    @property
    def _index(self) -> int:
        return self._queue[self._pos]

    @property
    def current(self) -> Layout:
        return self.chosen if self.chosen is not None else self.layouts[self._index]

    @property
    def done(self) -> bool:
        return self.chosen is not None

    def started(self) -> None:
        """The current layout is in place; the step that follows is its first."""
        self._last, self._steps, self._settle = self._clock(), 0, SETTLE_STEPS

    def discard(self) -> None:
        """Leave the step under way out of the timing (it also evaluated, or wrote a checkpoint)."""
        self._discard = True

    def restore(self, chosen: int, times: List[List[float]], passes: int = 1) -> None:
        """A resumed run: the layout chosen before, with the times and rounds that chose it."""
        self.chosen, self.times, self.passes = self.layouts[chosen], [list(t) for t in times], passes

    def tick(self) -> Optional[Layout]:
        now = self._clock()
        if self._last is None:  # the first call: the reference point only
            self._last = now
            return None
        self._steps += 1
        if self._steps > self._settle and not self._discard:
            self.times[self._index].append(now - self._last)
            self._turn += 1
        self._last, self._discard = now, False
        if self._turn < self._measured:
            return None
        self._turn, timed = 0, self._index
        if self._pos + 1 < len(self._queue):
            self._pos += 1
            return self.layouts[self._index]
        # a round is judged on its own contenders: in a second one, a layout not timed again cannot
        # win on old steps
        contenders = set(self._queue)
        verdict = self._choose([t if i in contenders else [] for i, t in enumerate(self.times)],
                               self._extra_passes - (self.passes - 1))
        self._last = self._clock()  # the decision (a broadcast) is no layout's step time
        if isinstance(verdict, int):
            self.chosen = self.layouts[verdict]
            return self.chosen if verdict != timed else None
        # another round; it starts with the layout in place when that is one of them (no switch)
        self.passes += 1
        self._queue = sorted(verdict, key=lambda i: i != timed)
        self._pos = 0
        return None if self._index == timed else self.layouts[self._index]

    def medians(self) -> List[float]:
        return medians(self.times)

    def describe(self) -> dict:
        return {"chosen": self.chosen.describe() if self.chosen else None, "passes": self.passes,
                "tried": [{**layout.describe(), "median_ms": None if math.isinf(m) else round(1e3 * m, 3)}
                          for layout, m in zip(self.layouts, self.medians())]}

"""Event simulation of one worker's iterations: a training thread, a CPU, a link.

Every worker of a data-parallel job runs the same program on the same kind of
hardware, so one worker stands for all of them: its training thread executes
a *program* (a generator written by :mod:`.schedules`, reading like the
strategy's code), and its reductions run on the backend's communication
channels and share the link. What happens when is decided by a fluid model:

- the training thread runs ``Compute`` ops one after the other; ``Start``
  hands a :class:`Reduction` to the backend and returns at once; ``Wait``
  blocks until the reduction is done;
- the backend starts queued reductions in order while fewer than
  ``channels`` run (MPI's communication thread: one; gloo: its worker
  threads), or, with ``preemptive`` (the ideal), always serves the most urgent
  ready reduction at the link's full rate;
- ``k`` reductions running together share the link, each getting
  ``efficiency(k) / k`` of it; a reduction alone takes ``link_s``;
- a reduction's thread also wants CPU: ``cpu_s`` CPU seconds of work spread
  over its duration, which gates its progress, plus ``cpu_poll`` of a core
  while it runs (a progress engine polling), of which only the fraction
  ``cpu_poll_gate`` gates progress (a poller that runs late reacts late). The running reductions share the worker's ``cpu`` cores
  max-min fairly; while the training thread computes, each gets at most
  ``cpu_share`` of a core (measured by :mod:`.calibrate`: a communication
  thread woken by the network waits for a core busy with compute) and compute
  gets the rest. So communication slows compute, and where a reduction needs
  more CPU than it gets (loopback, fast links, MPI's TCP progress), compute
  slows communication.

The result is the steady-state iteration time, where the training thread
waited, and a Chrome trace in the runner's format (:mod:`asyncsgd.timeline`),
so a predicted and a measured timeline open side by side.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, Generator, Iterable, List, Optional, Tuple

from ..timeline import COMM, COMPUTE, TRACK_NAMES, WAITS

EPS = 1e-15


# ---------------------------------------------------------------------- ops
@dataclass
class Compute:
    """CPU work of the training thread: ``seconds`` at a full core."""

    seconds: float
    name: str
    phase: str  # the runner's phase it is booked to: data, forward, backward, comm_wait, update, other
    track: int = COMPUTE  # timeline track of its span; -1: no span (the runner draws none there either)


@dataclass
class Reduction:
    """One allreduce: what it costs alone, and what happened to it."""

    label: str
    nbytes: float
    link_s: float  # seconds alone on the link
    cpu_s: float = 0.0  # CPU seconds it takes from the worker's cores
    step: int = 0  # the iteration that started it
    grad_step: int = 0  # the iteration whose gradient it carries
    urgency: Tuple = ()  # preemptive backends serve the smallest first
    # filled in by the simulation
    queued_at: Optional[float] = None
    started_at: Optional[float] = None
    done_at: Optional[float] = None
    progress: float = 0.0

    @property
    def done(self) -> bool:
        return self.done_at is not None


@dataclass
class Start:
    reduction: Reduction


@dataclass
class Wait:
    reduction: Reduction
    name: str  # the runner's "wait {label}"
    phase: str = "comm_wait"


@dataclass
class IterationMark:
    """The program's iteration boundary: ``begin`` (t0 of the runner's t_iter) or end."""

    step: int
    begin: bool


Op = object  # Compute | Start | Wait | IterationMark
Program = Generator[Op, None, None]


# ---------------------------------------------------------------------- machine
@dataclass
class Machine:
    """What one worker has: cores for its threads, and how its backend runs reductions."""

    cpu: float = 1.0  # cores this worker's threads share (cores / workers on a shared host)
    channels: int = 1  # reductions run at once
    efficiency: Callable[[int], float] = lambda k: 1.0  # fraction of the link k concurrent reductions get
    preemptive: bool = False  # ideal link: most urgent ready reduction first, at full rate
    cpu_contention: bool = True  # False: reductions need no CPU (the ideal)
    cpu_share: float = 1.0  # most of a core one reduction gets while the training thread computes
    cpu_poll: float = 0.0  # core fraction a running reduction's thread uses whatever its bytes (polling)
    cpu_poll_gate: float = 0.0  # the part of that polling its progress needs (reacting to the network in time)


@dataclass
class Span:
    name: str
    track: int
    start: float
    end: float
    args: dict = field(default_factory=dict)


@dataclass
class Result:
    """What the simulation measured, the way the runner measures it."""

    iterations: List[Tuple[float, float]]  # (begin, end) per iteration
    phases: List[Dict[str, float]]  # seconds per phase per iteration
    spans: List[Span]
    reductions: List[Reduction]
    warmup: int
    states: List[tuple] = field(default_factory=list)  # per iteration start: the reductions not yet done

    @property
    def measured(self) -> List[int]:
        return list(range(self.warmup, len(self.iterations)))

    @property
    def durations(self) -> List[float]:
        return [end - begin for begin, end in self.iterations]

    @property
    def iter_s(self) -> float:
        """Median iteration time after the warm-up, as the runner reports it (median_iter_s)."""
        return statistics.median(self.durations[i] for i in self.measured)

    @property
    def period_s(self) -> float:
        """Mean time from one iteration's start to the next after the warm-up: 1 / throughput.

        Differs from :attr:`iter_s` when iterations alternate (two reductions in flight on two
        channels make long and short iterations in turn: the median then picks one of them).
        """
        starts = [begin for begin, _ in self.iterations]
        if len(starts) - self.warmup >= 2:
            return (starts[-1] - starts[self.warmup]) / (len(starts) - 1 - self.warmup)
        return self.iter_s

    def phase_s(self, phase: str) -> float:
        return statistics.mean(self.phases[i].get(phase, 0.0) for i in self.measured)

    @property
    def comm_wait_s(self) -> float:
        """Time the training thread spent blocked on reductions per iteration (exposed communication)."""
        return statistics.mean(self.phases[i].get("blocked", 0.0) for i in self.measured)

    def trace_events(self, rank: int = 0, steps: Optional[Iterable[int]] = None) -> List[dict]:
        """Chrome trace events in :mod:`asyncsgd.timeline`'s layout (one process, three tracks)."""
        keep = set(self.measured if steps is None else steps)
        meta = [{"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank} (predicted)"}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": label}}
                 for tid, label in TRACK_NAMES.items()]
        events = []
        for s in self.spans:
            if s.args.get("step") in keep:
                events.append({"name": s.name, "ph": "X", "pid": rank, "tid": s.track, "ts": s.start * 1e6,
                               "dur": max(s.end - s.start, 0.0) * 1e6, "args": dict(s.args)})
        return meta + events


# ---------------------------------------------------------------------- the engine
def max_min_share(capacity: float, demands: List[float]) -> List[float]:
    """Max-min fair allocation of ``capacity`` among ``demands`` (water-filling)."""
    alloc = [0.0] * len(demands)
    left = capacity
    todo = sorted(range(len(demands)), key=lambda i: demands[i])
    while todo:
        share = left / len(todo)
        i = todo[0]
        if demands[i] <= share + EPS:
            alloc[i] = demands[i]
            left -= demands[i]
            todo.pop(0)
        else:
            for j in todo:
                alloc[j] = share
            break
    return alloc


class Simulation:
    """Runs ``program`` on ``machine`` until it ends; :meth:`run` returns the :class:`Result`."""

    def __init__(self, machine: Machine, program: Program, warmup: int):
        self.m = machine
        self.program = program
        self.warmup = warmup
        self.now = 0.0
        self.queue: List[Reduction] = []  # handed to the backend, not yet running
        self.running: List[Reduction] = []
        self.all: List[Reduction] = []
        self.spans: List[Span] = []
        self.iterations: List[List[float]] = []
        self.phases: List[Dict[str, float]] = []
        self.states: List[tuple] = []
        self.step = -1
        self._arrival = 0

    # -- the backend ----------------------------------------------------------------
    def _start_queued(self) -> None:
        if self.m.preemptive:
            return  # the ideal serves from the queue directly
        while self.queue and len(self.running) < self.m.channels:
            r = self.queue.pop(0)
            r.started_at = self.now
            self.running.append(r)

    def _active(self) -> List[Reduction]:
        if not self.m.preemptive:
            return self.running
        ready = [r for r in self.queue if not r.done]
        if not ready:
            return []
        top = min(ready, key=lambda r: r.urgency)
        if top.started_at is None:
            top.started_at = self.now
        return [top]

    def _rates(self, computing: bool) -> Tuple[float, Dict[int, float]]:
        """(compute rate, progress rate per active reduction id)."""
        active = self._active()
        k = len(active)
        share = self.m.efficiency(k) / k if k else 0.0
        link_rates = [share / r.link_s if r.link_s > EPS else math.inf for r in active]
        if not self.m.cpu_contention:
            return (1.0 if computing else 0.0), {id(r): lr for r, lr in zip(active, link_rates)}
        # What each reduction's thread would use at its link rate: its per-byte work (which gates its
        # progress) plus polling (which soaks up what it is given but moves nothing). While the
        # training thread computes, a reduction's thread gets at most cpu_share of a core (measured:
        # what compute loses meanwhile); without enough for its work it goes slower in proportion.
        cap = self.m.cpu_share * self.m.cpu if computing else self.m.cpu
        work = [r.cpu_s * lr if r.cpu_s > 0 and lr != math.inf else 0.0 for r, lr in zip(active, link_rates)]
        alloc = max_min_share(self.m.cpu, [min(self.m.cpu_poll + w, cap) for w in work])
        compute = min(1.0, self.m.cpu - sum(alloc)) if computing else 0.0
        rates = {}
        for r, lr, w, a in zip(active, link_rates, work, alloc):
            if lr == math.inf:  # no link time at all: as fast as its CPU allows
                rates[id(r)] = a / r.cpu_s if r.cpu_s > 0 else math.inf
            else:
                need = w + self.m.cpu_poll_gate * self.m.cpu_poll
                rates[id(r)] = lr * (min(1.0, a / need) if need > EPS else 1.0)
        return compute, rates

    def _advance(self, until_compute: Optional[float]) -> Optional[float]:
        """Let time run until the compute op (``until_compute`` seconds of work left) or a reduction
        ends; returns the compute work left (None if no compute op was running)."""
        computing = until_compute is not None
        c_rate, rates = self._rates(computing)
        active = self._active()
        dt = math.inf
        if computing and c_rate > EPS:
            dt = until_compute / c_rate
        for r in active:
            rate = rates[id(r)]
            if rate == math.inf:
                dt = 0.0
            elif rate > EPS:
                dt = min(dt, (1.0 - r.progress) / rate)
        if dt == math.inf:
            raise RuntimeError("simulation stalled: nothing can progress (a wait on a reduction never started?)")
        self.now += dt
        left = None
        if computing:
            left = until_compute - c_rate * dt
            if left < 1e-12 * max(1.0, until_compute):
                left = 0.0
        for r in list(active):
            rate = rates[id(r)]
            r.progress = 1.0 if rate == math.inf else min(1.0, r.progress + rate * dt)
            if r.progress >= 1.0 - 1e-12:
                self._finish(r)
        return left

    def _finish(self, r: Reduction) -> None:
        r.progress = 1.0
        r.done_at = self.now
        if r in self.running:
            self.running.remove(r)
        if r in self.queue:
            self.queue.remove(r)
        self.spans.append(Span(f"allreduce {r.label}", COMM, r.started_at, r.done_at,
                               {"step": r.step, "grad_step": r.grad_step, "bytes": int(r.nbytes)}))
        self._start_queued()

    # -- the training thread -----------------------------------------------------------
    def _book(self, phase: str, seconds: float) -> None:
        if self.phases:
            self.phases[-1][phase] = self.phases[-1].get(phase, 0.0) + seconds

    def run(self) -> Result:
        for op in self.program:
            if isinstance(op, IterationMark):
                if op.begin:
                    self.step = op.step
                    self.iterations.append([self.now, math.nan])
                    self.phases.append({})
                    self.states.append(self._state())
                else:
                    self.iterations[-1][1] = self.now
            elif isinstance(op, Compute):
                begin, left = self.now, op.seconds
                while left > 0:
                    left = self._advance(left)
                if op.track >= 0 and (op.seconds > 0 or op.track != COMPUTE):
                    self.spans.append(Span(op.name, op.track, begin, self.now, {"step": self.step}))
                self._book(op.phase, self.now - begin)
            elif isinstance(op, Start):
                r = op.reduction
                r.queued_at = self.now
                r.urgency = r.urgency + (self._arrival,)
                self._arrival += 1
                self.queue.append(r)
                self.all.append(r)
                self._start_queued()
            elif isinstance(op, Wait):
                begin = self.now
                while not op.reduction.done:
                    if op.reduction.queued_at is None:
                        raise RuntimeError(f"wait for {op.reduction.label}, which was never started")
                    self._advance(None)
                self.spans.append(Span(op.name, WAITS, begin, self.now, {"step": self.step}))
                self._book(op.phase, self.now - begin)
                self._book("blocked", self.now - begin)
            else:
                raise TypeError(f"unknown op {op!r}")
        return Result([tuple(i) for i in self.iterations], self.phases, self.spans, self.all, self.warmup, self.states)

    def _state(self) -> tuple:
        """What is still in flight, relative to this iteration: repeats once the pipeline is steady."""
        pending = [r for r in self.queue + self.running if not r.done]
        return tuple(sorted((self.step - r.grad_step, (1.0 - r.progress) * r.link_s) for r in pending))


def simulate(machine: Machine, program: Program, warmup: int) -> Result:
    return Simulation(machine, program, warmup).run()

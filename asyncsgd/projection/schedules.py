"""Each strategy's schedule as a program for :mod:`.simulate`, in two rule sets.

A program is the training loop of ``asyncsgd/train.py`` — data, zero_grad,
forward layer by layer, loss, backward layer by layer, synchronize, step,
then the loop's bookkeeping and the stop-flag reduction — with each
strategy's hooks doing what its code does, op by op:

``as_implemented`` (the code as of this rule set's :data:`RULESET` note)
    ``sync`` flattens, reduces, unflattens; ``layerwise`` copies a bucket into
    its buffer when its last gradient arrives and hands it to the reduction
    scheduler (``asyncsgd/strategies/schedule.py`` itself, driven through
    :class:`RecordedScheduler`: chunks, credit, most-urgent-first, the
    urgent-chunk bypass, credit returned only by waits the training thread
    makes), and waits/updates in the next forward's pre-hooks
    (``wait_at=forward``) or after backward (``wait_at=step``); ``delayed``
    keeps K+1 buffers and applies step t-K's reduced gradient; ``ddp`` reduces
    torch's buckets (``strategy.bucket_mb`` each, in gradient-ready order; torch
    makes the first one 1 MiB only when ``bucket_cap_mb`` is left at its
    default, and the runner passes it) from its autograd hooks and waits at
    the end of backward. gloo divides by P on the training thread after the
    wait, MPI on its communication thread; every step boundary issues the
    stop flag's 4-byte reduction and waits for the one ``lag`` steps back
    (``asyncsgd/stopping.py``).

``ideal``
    the same dependencies and nothing else: no copies, no stop flag, one
    reduction per layer, a preemptive link that always serves the reduction
    needed soonest (earliest-deadline-first), and no CPU taken from compute.
    It is the lower bound for the strategy's dependencies; for
    ``layerwise(forward)`` it equals design.md's bound.

Rule sets are chosen from a run's config (:func:`ruleset_for`), so when the
runner's scheduler changes, a new rule set is added beside the old one and
old runs keep being predicted by the rules they ran with.
"""
from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Deque, Dict, Iterator, List, Optional, Tuple

from ..timeline import COMPUTE, WAITS
from .profile import Layer, Profile
from .simulate import Compute, IterationMark, Machine, Reduction, Result, Start, Wait, simulate

AS_IMPLEMENTED = "as_implemented"
IDEAL = "ideal"
# What the as_implemented rules follow (update when a new rule set is added for new scheduler code).
RULESET = {AS_IMPLEMENTED: "asyncsgd/strategies/{layerwise,schedule}.py and comm/mpi.py as of commit 93da2fa",
           IDEAL: "dependencies only: preemptive earliest-deadline-first link, no copies, no CPU interference"}

DTYPE_BYTES = 4  # gradient element size the chunking splits by (fp32)
STOP_FLAG_BYTES = 4


class ScheduleError(ValueError):
    """A strategy or setting the simulator cannot take; one line for the user."""


# ---------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class StrategySpec:
    """A strategy and the options that change its schedule (the run config's ``strategy`` keys)."""

    name: str  # sync | layerwise | delayed | ddp | nocomm
    wait_at: str = "forward"
    bucket_mb: float = 0.0  # layerwise: MiB per bucket (0 = one per layer); ddp: torch's bucket_cap_mb
    priority: bool = False
    chunk_mb: float = 1.0
    credit: int = 8
    k: int = 1
    fuse: bool = True
    first_bucket_mb: Optional[float] = None  # ddp: None = bucket_mb (what torch does when bucket_cap_mb is passed)

    @property
    def label(self) -> str:
        """The benchmark's names: sync, layerwise(forward), layerwise(priority), delayed(k=1), ddp."""
        if self.name == "layerwise":
            return "layerwise(priority)" if self.priority else f"layerwise({self.wait_at})"
        if self.name == "delayed":
            return f"delayed(k={self.k})"
        if self.name == "sync" and not self.fuse:
            return "sync(unfused)"
        return self.name

    @classmethod
    def parse(cls, text: str) -> "StrategySpec":
        """``sync``, ``sync_unfused``, ``layerwise`` / ``layerwise_forward``, ``layerwise_step``,
        ``layerwise_priority``, ``delayed_k1`` (any K), ``ddp``, ``nocomm``, or the benchmark's labels
        (``layerwise(priority)``, ``delayed(k=2)``)."""
        t = text.strip().lower().replace("(", "_").replace(")", "").replace("k=", "k").replace("wait_at=", "")
        t = t.replace("-", "_")
        simple = {
            "sync": cls("sync"), "sync_unfused": cls("sync", fuse=False), "nocomm": cls("nocomm"),
            "layerwise": cls("layerwise"), "layerwise_forward": cls("layerwise"),
            "layerwise_step": cls("layerwise", wait_at="step"),
            "layerwise_priority": cls("layerwise", priority=True), "ddp": cls("ddp", bucket_mb=25.0),
            "ddp_default": cls("ddp", bucket_mb=25.0, first_bucket_mb=1.0),
        }
        if t in simple:
            return simple[t]
        if t.startswith("delayed_k") and t[len("delayed_k"):].isdigit():
            return cls("delayed", k=int(t[len("delayed_k"):]))
        if t == "delayed":
            return cls("delayed", k=1)
        raise ScheduleError(f"unknown strategy {text!r}; use sync, sync_unfused, layerwise, layerwise_step, "
                            "layerwise_priority, delayed_k1 (any K), ddp, ddp_default or nocomm")

    @classmethod
    def from_config(cls, strategy: dict) -> "StrategySpec":
        """From a run's resolved ``strategy`` config section."""
        name = strategy.get("name")
        if name == "layerwise":
            return cls("layerwise", wait_at=strategy.get("wait_at", "forward"),
                       bucket_mb=float(strategy.get("bucket_mb", 0.0)), priority=bool(strategy.get("priority", False)),
                       chunk_mb=float(strategy.get("chunk_mb", 1.0)), credit=int(strategy.get("credit", 8)))
        if name == "delayed":
            return cls("delayed", k=int(strategy.get("k", 1)))
        if name == "sync":
            return cls("sync", fuse=bool(strategy.get("fuse", True)))
        if name == "ddp":
            return cls("ddp", bucket_mb=float(strategy.get("bucket_mb", 25.0)))
        if name == "nocomm":
            return cls("nocomm")
        raise ScheduleError(f"strategy {name!r} has no schedule in the model")


def ruleset_for(config: dict) -> str:
    """The rule set that describes a run made with ``config`` (today's code: one)."""
    strategy = config.get("strategy", {}) if isinstance(config.get("strategy"), dict) else {}
    known = {"name", "wait_at", "bucket_mb", "priority", "chunk_mb", "credit", "k", "drain", "fuse"}
    new = sorted(set(strategy) - known)
    if new:
        raise ScheduleError(f"strategy keys {', '.join(new)} come from scheduler code this model has no rules for "
                            f"yet ({RULESET[AS_IMPLEMENTED]}); add a rule set in asyncsgd/projection/schedules.py")
    return AS_IMPLEMENTED


# ---------------------------------------------------------------------- costs
@dataclass
class Plan:
    """What every op costs for one setting: a profile on ``world_size`` workers over ``network``."""

    profile: Profile
    network: object  # network.Network or presets.Hierarchical
    world_size: int
    cpu: float = 1.0  # cores per worker (1 / measured slowdown on a shared host)
    ideal: bool = False
    _costs: Dict[tuple, Tuple[float, float]] = field(default_factory=dict)  # (bytes, average) -> (link, cpu)

    def __post_init__(self) -> None:
        self.total_bytes = self.profile.nbytes
        self.update_all_s = self.profile.update_all_s

    def copy_s(self, nbytes: float) -> float:
        return 0.0 if self.ideal else nbytes * self.profile.get("copy_s_per_byte")

    def scale_s(self, nbytes: float) -> float:
        return 0.0 if self.ideal else nbytes * self.profile.get("scale_s_per_byte")

    def zero_s(self, nbytes: float) -> float:
        """Zeroing ``nbytes`` of gradients: the profile's zero_grad_s, pro rata."""
        if self.ideal:
            return 0.0
        return self.profile.get("zero_grad_s") * nbytes / max(1, self.total_bytes)

    def update_s(self, layers: List[Layer]) -> float:
        """Updating these layers alone (layerwise per bucket)."""
        total = sum(l.update_s for l in layers)
        if total == 0 and self.profile.get("update_all_s"):  # only a whole-model figure: share it by bytes
            total = self.profile.get("update_all_s") * sum(l.nbytes for l in layers) / max(1, self.total_bytes)
        return total

    def reduction(self, label: str, nbytes: float, step: int, grad_step: int, urgency: Tuple = (),
                  average: bool = True) -> Reduction:
        key = (nbytes, average)
        if key not in self._costs:
            p = self.world_size
            link = self.network.allreduce_s(nbytes, p)
            cpu = self.network.cpu_s(nbytes, p)
            if average and not self.network.scale_on_worker and p > 1:
                # MPI's communication thread divides by P after the allreduce: on the channel and on the CPU
                link += self.scale_s(nbytes)
                cpu += self.scale_s(nbytes)
            self._costs[key] = (link, 0.0 if self.ideal else cpu)
        link, cpu = self._costs[key]
        return Reduction(label, nbytes, link, cpu, step, grad_step, urgency)

    def machine(self) -> Machine:
        net = self.network
        if self.ideal:
            return Machine(cpu=self.cpu, channels=1, preemptive=True, cpu_contention=False)
        return Machine(cpu=self.cpu, channels=net.channels, efficiency=net.efficiency, cpu_share=net.cpu_share,
                       cpu_poll=net.cpu_poll, cpu_poll_gate=net.cpu_poll_gate)


# ---------------------------------------------------------------------- the training loop
class Worker:
    """train.py's loop with the strategy's hooks; subclasses are the strategies."""

    lag = 1  # the stop flag is read this many steps after it was issued

    def __init__(self, plan: Plan, spec: StrategySpec):
        self.plan, self.spec = plan, spec
        self.layers = plan.profile.layers
        self.p = plan.world_size
        self._flags: Deque[Reduction] = deque()

    # simulation length: long enough for the pipeline to reach its steady state
    @property
    def warmup(self) -> int:
        return 4

    def program(self, steps: int) -> Iterator:
        prof = self.plan.profile
        for step in range(steps):
            yield IterationMark(step, True)
            yield Compute(prof.get("data_s"), "data", "data", track=-1)
            yield from self.zero_grad(step)
            for i, layer in enumerate(self.layers):
                yield from self.before_forward(i, step)
                yield Compute(layer.forward_s, f"forward {layer.label}", "forward")
            yield Compute(prof.get("loss_s"), "loss", "forward", track=-1)
            for i in reversed(range(len(self.layers))):
                layer = self.layers[i]
                yield Compute(layer.backward_s, f"backward {layer.label}", "backward")
                yield from self.after_backward(i, step)
            yield from self.synchronize(step)
            yield from self.step(step)
            yield IterationMark(step, False)
            yield Compute(prof.get("between_s"), "bookkeeping", "between", track=-1)
            yield from self.stop_flag(step)

    # -- hooks (defaults: nothing) ------------------------------------------------
    def zero_grad(self, step: int):
        yield Compute(self.plan.profile.get("zero_grad_s"), "zero_grad", "other", track=-1)

    def before_forward(self, i: int, step: int):
        return
        yield

    def after_backward(self, i: int, step: int):
        return
        yield

    def synchronize(self, step: int):
        return
        yield

    def step(self, step: int):
        yield Compute(self.plan.update_all_s, "update", "update", track=WAITS)

    def stop_flag(self, step: int):
        """asyncsgd/stopping.py: a 1-element sum per step boundary, read ``lag`` steps later."""
        if self.plan.ideal or self.p <= 1:
            return
        flag = self.plan.reduction("stop flag", STOP_FLAG_BYTES, step, step, average=False)
        yield Start(flag)
        self._flags.append(flag)
        if len(self._flags) > self.lag:
            yield Wait(self._flags.popleft(), "wait stop flag", phase="between")

    # -- shared pieces --------------------------------------------------------------
    def wait(self, r: Reduction, name: str, phase: str = "comm_wait"):
        """Strategy._wait: block on the handle; gloo then divides by P on this thread."""
        yield Wait(r, f"wait {name}", phase=phase)
        if self.plan.network.scale_on_worker and self.p > 1:
            yield Compute(self.plan.scale_s(r.nbytes), f"average {name}", phase, track=-1)


class NoComm(Worker):
    pass


class Sync(Worker):
    def synchronize(self, step: int):
        plan, nbytes = self.plan, self.plan.total_bytes
        if self.spec.fuse:
            yield Compute(plan.copy_s(nbytes), "flatten", "comm_wait", track=-1)
            r = plan.reduction("all", nbytes, step, step)
            yield Start(r)
            yield from self.wait(r, "all")
            yield Compute(plan.copy_s(nbytes), "unflatten", "comm_wait", track=-1)
            return
        handles = []
        for t, nb in enumerate(t for layer in self.layers for t in layer.tensors):
            r = plan.reduction(str(t), nb, step, step)
            yield Start(r)
            handles.append(r)
        for t, r in enumerate(handles):
            yield from self.wait(r, str(t))


class Delayed(Worker):
    """delayed.py: the gradient of step t is reduced in the background and applied at step t+K."""

    def __init__(self, plan: Plan, spec: StrategySpec):
        super().__init__(plan, spec)
        self.in_flight: Deque[Reduction] = deque()
        self.lag = max(1, spec.k)

    @property
    def warmup(self) -> int:
        return 4 + 2 * self.spec.k

    def synchronize(self, step: int):
        nbytes = self.plan.total_bytes
        yield Compute(self.plan.copy_s(nbytes), "flatten", "comm_wait", track=-1)
        r = self.plan.reduction(f"step {step}", nbytes, step, step, urgency=(step,))
        yield Start(r)
        self.in_flight.append(r)

    def step(self, step: int):
        if len(self.in_flight) > self.spec.k:
            r = self.in_flight.popleft()
            yield from self.wait(r, f"step {r.grad_step}")
            yield Compute(self.plan.copy_s(r.nbytes), "unflatten", "update", track=-1)
            yield Compute(self.plan.update_all_s, f"update with gradient of step {r.grad_step}", "update",
                          track=WAITS)


# ---------------------------------------------------------------------- layer-wise
def layer_buckets(layers: List[Layer], bucket_mb: float) -> List[List[int]]:
    """layerwise.py's buckets: layer indices (forward order inside), listed in backward order."""
    limit = bucket_mb * 2 ** 20
    groups: List[List[int]] = []
    size = 0.0
    for i in reversed(range(len(layers))):
        if not groups or limit <= 0 or size >= limit:
            groups.append([])
            size = 0.0
        groups[-1].append(i)
        size += layers[i].nbytes
    return [sorted(g) for g in groups]


def ddp_buckets(layers: List[Layer], cap_mb: float, first_mb: Optional[float]) -> List[Tuple[int, int]]:
    """torch's bucket assignment (``_compute_bucket_assignment_by_size``) over tensors in gradient-ready
    order: a bucket closes once it holds at least its limit. Returns, per bucket in ready order,
    (bytes, forward index of the layer whose gradient completes it)."""
    limits = itertools.chain([(first_mb if first_mb is not None else cap_mb) * 2 ** 20], itertools.repeat(cap_mb * 2 ** 20))
    limit = next(limits)
    buckets, size, last = [], 0, None
    for i in reversed(range(len(layers))):
        for nbytes in reversed(layers[i].tensors):
            size += nbytes
            last = i
            if size >= limit:
                buckets.append((size, i))
                size, limit = 0, next(limits)
    if size:
        buckets.append((size, last))
    return buckets


class RecordedScheduler:
    """``asyncsgd/strategies/schedule.py``'s ReductionScheduler itself, its start/wait turned into ops.

    The real scheduler decides only at points every rank passes in the same order and
    never from timing (its module says why), so running a decision with callbacks that
    *record* the starts and waits, then handing those ops to the simulation in the same
    order, is the same schedule the runner makes. Its chunks are slices of a meta
    tensor: shapes without memory.
    """

    def __init__(self, worker: "Layerwise", priority: bool, chunk_bytes: int, credit: int):
        from ..strategies.schedule import ReductionScheduler

        self.w = worker
        self._ops: List[object] = []
        self.real = ReductionScheduler(self._start, self._wait, priority=priority, chunk_bytes=chunk_bytes,
                                       credit=credit)

    def _start(self, tensor, label: str, step: int) -> Reduction:
        nbytes = tensor.numel() * tensor.element_size()
        r = self.w.plan.reduction(label[len("allreduce "):], nbytes, self.w.current_step, step)
        self._ops.append(Start(r))
        return r

    def _wait(self, handle: Reduction, label: str) -> None:
        self._ops.extend(self.w.wait(handle, label))

    def _flush(self):
        ops, self._ops = self._ops, []
        yield from ops

    def submit(self, nbytes: int, label: str, urgency: int, step: int):
        import torch

        job = self.real.submit(torch.empty(max(1, nbytes // DTYPE_BYTES), device="meta"), label, urgency, step)
        yield from self._flush()
        return job

    def pump(self):
        self.real.pump()
        yield from self._flush()

    def complete(self, job):
        self.real.complete(job)
        yield from self._flush()


class Layerwise(Worker):
    """layerwise.py: a bucket's reduction starts when its last gradient is ready; each bucket is
    waited for and updated in the next forward's pre-hook (wait_at=forward) or after backward."""

    def __init__(self, plan: Plan, spec: StrategySpec):
        super().__init__(plan, spec)
        self.buckets = layer_buckets(self.layers, spec.bucket_mb)  # backward order
        self.bucket_of = {i: b for b, members in enumerate(self.buckets) for i in members}
        self._labels = ["+".join(self.layers[i].name for i in members) for members in self.buckets]
        self._bytes = [sum(self.layers[i].nbytes for i in members) for members in self.buckets]
        self.ready = [0] * len(self.buckets)
        self.jobs: Dict[int, object] = {}  # bucket -> job (as_implemented) or Reduction (ideal)
        self.launched: List[int] = []
        self.current_step = 0
        self.scheduler = RecordedScheduler(self, spec.priority, int(spec.chunk_mb * 2 ** 20), spec.credit)

    def label(self, b: int) -> str:
        return self._labels[b]

    def nbytes(self, b: int) -> int:
        return self._bytes[b]

    def zero_grad(self, step: int):
        self.current_step = step
        yield from super().zero_grad(step)

    def before_forward(self, i: int, step: int):
        if self.spec.wait_at != "forward":
            return
        b = self.bucket_of[i]
        if b in self.jobs:
            yield from self.apply(b)
        if not self.plan.ideal:
            yield from self.scheduler.pump()

    def after_backward(self, i: int, step: int):
        b = self.bucket_of[i]
        self.ready[b] += 1
        if self.ready[b] == len(self.buckets[b]):
            yield from self.launch(b, step)

    def launch(self, b: int, step: int):
        self.ready[b] = 0
        nbytes = self.nbytes(b)
        if self.plan.ideal:
            # needed soonest = oldest gradient, then earliest layer of the next forward
            r = self.plan.reduction(self.label(b), nbytes, step, step, urgency=(step, min(self.buckets[b])))
            yield Start(r)
            self.jobs[b] = r
        else:
            yield Compute(self.plan.copy_s(nbytes), f"flatten {self.label(b)}", "backward", track=-1)
            self.jobs[b] = yield from self.scheduler.submit(nbytes, self.label(b), len(self.buckets) - b, step)
        self.launched.append(b)

    def complete(self, b: int, phase: str):
        """_complete: wait for the bucket's chunks, then unflatten (booked to ``phase``: the pre-hook's
        forward, or synchronize's comm_wait)."""
        job = self.jobs.pop(b)
        self.launched.remove(b)
        if self.plan.ideal:
            yield Wait(job, f"wait {self.label(b)}")
            return
        yield from self.scheduler.complete(job)
        yield Compute(self.plan.copy_s(self.nbytes(b)), f"unflatten {self.label(b)}", phase, track=-1)

    def apply(self, b: int):
        yield from self.complete(b, "forward")
        layers = [self.layers[i] for i in self.buckets[b]]
        yield Compute(self.plan.update_s(layers), f"update {self.label(b)}", "update", track=WAITS)
        yield Compute(self.plan.zero_s(self.nbytes(b)), f"zero {self.label(b)}", "forward", track=-1)

    def synchronize(self, step: int):
        if self.spec.wait_at == "step":
            for b in list(self.launched):
                yield from self.complete(b, "comm_wait")
        if not self.plan.ideal:
            yield from self.scheduler.pump()

    def step(self, step: int):
        if self.spec.wait_at == "step":
            yield Compute(self.plan.update_all_s, "update", "update", track=WAITS)


class DDP(Worker):
    """torch DDP: bucket copies and allreduces from autograd hooks, all waited for at the end of backward."""

    def __init__(self, plan: Plan, spec: StrategySpec):
        super().__init__(plan, spec)
        self.buckets = ddp_buckets(self.layers, spec.bucket_mb, spec.first_bucket_mb)
        self.pending: List[Reduction] = []

    def after_backward(self, i: int, step: int):
        for index, (nbytes, last) in enumerate(self.buckets):
            if last == i:
                # the reducer copies the gradients into the bucket and divides by P before the allreduce
                yield Compute(self.plan.copy_s(nbytes) + self.plan.scale_s(nbytes), f"bucket {index}", "backward",
                              track=-1)
                r = self.plan.reduction(f"bucket {index}", nbytes, step, step, urgency=(step, index), average=False)
                yield Start(r)
                self.pending.append(r)
        if i == 0:  # end of backward: the reducer waits for every bucket and copies it back
            for r in self.pending:
                yield Wait(r, f"wait {r.label}", phase="backward")
                yield Compute(self.plan.copy_s(r.nbytes), f"copy back {r.label}", "backward", track=-1)
            self.pending = []


PROGRAMS = {"nocomm": NoComm, "sync": Sync, "layerwise": Layerwise, "delayed": Delayed, "ddp": DDP}


# ---------------------------------------------------------------------- running it
@dataclass
class Prediction:
    strategy: str
    rules: str
    world_size: int
    iter_s: float  # median after the warm-up, as the runner reports it (median_iter_s)
    period_s: float  # mean start-to-start time: 1 / throughput
    mean_s: float  # mean iteration (t_iter) after the warm-up, as the report's t_iter_s
    comm_wait_s: float  # time the training thread was blocked on reductions per iteration
    phases: Dict[str, float]
    result: Result

    @property
    def trace(self) -> List[dict]:
        return self.result.trace_events()


def _settled(result: Result, tail: int = 6) -> bool:
    """The last ``tail`` iterations repeat with period 1 or 2 (two channels may alternate), and so
    does what is in flight when each starts (a queue still filling repeats its durations but not that)."""
    d = result.durations[-tail:]
    states = result.states[-tail:]
    if len(d) < tail:
        return False
    scale = max(d) or 1.0

    def same(a, b) -> bool:
        return len(a) == len(b) and all(x[0] == y[0] and abs(x[1] - y[1]) <= 1e-7 * scale for x, y in zip(a, b))

    return all(abs(d[i] - d[i - 2]) <= 1e-7 * scale and same(states[i], states[i - 2]) for i in range(2, tail))


def steady_state(plan: Plan, spec: StrategySpec, warmup: int, tail: int = 6, limit: int = 512) -> Result:
    """Simulate longer and longer until the iterations repeat; the result measures the last ``tail``.

    A pipeline that is only slightly communication-bound fills slowly (delayed-k's queue grows by
    the difference each step), so a fixed warm-up is not enough.
    """
    steps = warmup + 2 * tail
    while True:
        worker = PROGRAMS[spec.name](plan, spec)
        result = simulate(plan.machine(), worker.program(steps), steps - tail)
        if _settled(result, tail) or steps >= limit:
            return result
        steps *= 2


def worker_cpu(profile: Profile, world_size: int, threads: int = 1, cores: Optional[int] = None) -> float:
    """Cores per worker on a shared host: 1 / measured slowdown with that many processes."""
    if cores is not None and profile.cores is None:
        return min(1.0, cores / max(1, world_size * threads))
    return 1.0 / profile.slowdown_at(world_size, threads)


def predict(profile: Profile, network, world_size: int, spec: StrategySpec, rules: str = AS_IMPLEMENTED,
            cpu: Optional[float] = None, steps: Optional[int] = None, warmup: Optional[int] = None) -> Prediction:
    """Simulate ``spec`` on ``world_size`` workers over ``network`` (a Network or presets.Hierarchical).

    By default long enough for the steady state; ``steps``/``warmup`` reproduce a run's
    train.max_steps/train.warmup_steps, so the median is taken over the same iterations.
    """
    if spec.name not in PROGRAMS:
        raise ScheduleError(f"strategy {spec.name!r} has no schedule in the model")
    if rules not in RULESET:
        raise ScheduleError(f"unknown rule set {rules!r}; known: {', '.join(RULESET)}")
    ideal = rules == IDEAL
    plan = Plan(profile, network, world_size, cpu=worker_cpu(profile, world_size) if cpu is None else cpu, ideal=ideal)
    worker = PROGRAMS[spec.name](plan, spec)
    if steps is not None:
        warmup = worker.warmup if warmup is None else warmup
        if steps <= warmup:
            raise ScheduleError(f"steps={steps} leaves nothing after warmup={warmup}")
        result = simulate(plan.machine(), worker.program(steps), warmup)
    else:
        result = steady_state(plan, spec, worker.warmup)
    phases = {p: result.phase_s(p) for p in ("data", "forward", "backward", "comm_wait", "update", "other")}
    mean_s = statistics.mean(result.durations[i] for i in result.measured)
    return Prediction(spec.label, rules, world_size, result.iter_s, result.period_s, mean_s, result.comm_wait_s,
                      phases, result)

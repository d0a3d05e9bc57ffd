"""Each strategy's schedule as a program for :mod:`.simulate`, in two rule sets.

A program is the training loop of ``asyncsgd/train.py`` — data, zero_grad,
forward layer by layer, loss, backward layer by layer, synchronize, step,
then the loop's bookkeeping and, where no reduction carries the stop flag,
its own reduction — with each strategy's hooks doing what its code does, op
by op:

``as_implemented`` (the code as of this rule set's :data:`RULESET` note)
    ``sync`` reduces the flat gradient buffer (gradients are views of it; the
    stop flag is its last element) and multiplies it by 1/P; ``layerwise``
    builds its buckets, lanes and chunks as ``layerwise.py`` does from the
    first step, hands each bucket to ``asyncsgd/strategies/schedule.py``'s
    ``ReductionScheduler`` itself (driven through :class:`RecordedScheduler`:
    lanes on channels of their own, the chunks' fixed launch order, the
    earliest-deadline-first re-order after the calibration steps, measured
    here from the simulated link as the strategy measures it), and waits and
    updates chunk by chunk in the next forward's pre-hooks (``wait_at=forward``)
    or after backward (``wait_at=step``); ``delayed`` keeps K+1 buffers and
    applies step t-K's reduced gradient; ``ddp`` reduces torch's buckets (its
    default layout: 1 MiB first, then 25 MiB; an explicit ``bucket_mb`` makes
    every bucket that size) from its autograd hooks and waits at the end of
    backward, and keeps the stop flag's own 4-byte reduction, waited for one
    step later (``asyncsgd/stopping.py``).

``ideal``
    the same dependencies and nothing else: no copies, no stop flag, one
    reduction per layer (per chunk with priority, whose updates go chunk by
    chunk), a preemptive link that always serves the reduction needed soonest
    (earliest-deadline-first), and no CPU taken from compute. It is the lower
    bound for the strategy's dependencies; for ``layerwise(forward)`` it
    equals design.md's bound, :func:`layerwise_bound`.

Rule sets are chosen from a run's config (:func:`ruleset_for`): a run made by
scheduler code this model has no rules for is refused, never predicted by the
wrong rules.
"""
from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from ..timeline import WAITS
from .network import yielded_share
from .profile import Layer, Profile
from .simulate import Compute, IterationMark, Machine, Reduction, Result, Start, Wait, simulate

AS_IMPLEMENTED = "as_implemented"
IDEAL = "ideal"
# What the as_implemented rules follow (update when a new rule set is added for new scheduler code).
RULESET = {AS_IMPLEMENTED: "asyncsgd/strategies/{layerwise,schedule,recording}.py and comm/mpi.py of issue 12 "
                           "(lanes, chunks, EDF order, chunk-wise updates, MPI Iallreduce polled by its thread)",
           IDEAL: "dependencies only: preemptive earliest-deadline-first link, no copies, no CPU interference"}

DTYPE_BYTES = 4  # gradient element size the chunking splits by (fp32)
STOP_FLAG_BYTES = 4
DDP_FIRST_BUCKET_MB = 1.0  # torch's _DEFAULT_FIRST_BUCKET_BYTES, used when bucket_cap_mb is left at None
DDP_BUCKET_MB = 25.0  # torch's default bucket_cap_mb


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
    chunk_mb: float = 1.0  # layerwise with priority: MiB per chunk
    urgent_share: float = 0.1  # layerwise with priority: fraction of the bytes on the urgent lane
    k: int = 1
    fuse: bool = True
    first_bucket_mb: Optional[float] = None  # ddp: None = bucket_mb (what torch does when bucket_cap_mb is passed)
    split_mb: float = 0.0  # layerwise: MiB; larger nn.Linear weights become row blocks (0 = off)
    last_used_last: bool = False  # layerwise with priority: the last-used bucket sent last (schedule.bulk_lane_order)

    @property
    def label(self) -> str:
        """The benchmark's names: sync, layerwise(forward), layerwise(priority), delayed(k=1), ddp."""
        if self.name == "layerwise":
            base = "priority" if self.priority else self.wait_at
            base += "+split" if self.split_mb > 0 else ""
            return f"layerwise({base}+last)" if self.priority and self.last_used_last else f"layerwise({base})"
        if self.name == "delayed":
            return f"delayed(k={self.k})"
        if self.name == "sync" and not self.fuse:
            return "sync(unfused)"
        if self.name == "ddp" and self.first_bucket_mb is None:
            return f"ddp({self.bucket_mb:g}MB)"
        return self.name

    @classmethod
    def parse(cls, text: str) -> "StrategySpec":
        """``sync``, ``sync_unfused``, ``layerwise`` / ``layerwise_forward``, ``layerwise_step``,
        ``layerwise_priority``, ``delayed_k1`` (any K), ``ddp`` (torch's default buckets), ``ddp_25mb``
        (any size), ``nocomm``, or the benchmark's labels (``layerwise(priority)``, ``delayed(k=2)``,
        ``ddp(4MB)``)."""
        t = text.strip().lower().replace("(", "_").replace(")", "").replace("k=", "k").replace("wait_at=", "")
        t = t.replace("-", "_")
        simple = {
            "sync": cls("sync"), "sync_unfused": cls("sync", fuse=False), "nocomm": cls("nocomm"),
            "layerwise": cls("layerwise"), "layerwise_forward": cls("layerwise"),
            "layerwise_step": cls("layerwise", wait_at="step"),
            "layerwise_priority": cls("layerwise", priority=True),
            "ddp": cls("ddp", bucket_mb=DDP_BUCKET_MB, first_bucket_mb=DDP_FIRST_BUCKET_MB),
        }
        simple["ddp_default"] = simple["ddp"]
        if t in simple:
            return simple[t]
        if t.startswith("delayed_k") and t[len("delayed_k"):].isdigit():
            return cls("delayed", k=int(t[len("delayed_k"):]))
        if t == "delayed":
            return cls("delayed", k=1)
        if t.startswith("ddp_") and t.endswith("mb"):
            try:
                mb = float(t[len("ddp_"):-len("mb")])
            except ValueError:
                mb = 0.0
            if mb > 0:
                return cls("ddp", bucket_mb=mb)
        raise ScheduleError(f"unknown strategy {text!r}; use sync, sync_unfused, layerwise, layerwise_step, "
                            "layerwise_priority, delayed_k1 (any K), ddp, ddp_4mb (any size) or nocomm")

    @classmethod
    def from_config(cls, strategy: dict) -> "StrategySpec":
        """From a run's resolved ``strategy`` config section."""
        name = strategy.get("name")
        if name == "layerwise":
            return cls("layerwise", wait_at=strategy.get("wait_at", "forward"),
                       bucket_mb=float(strategy.get("bucket_mb", 0.0)), priority=bool(strategy.get("priority", False)),
                       chunk_mb=float(strategy.get("chunk_mb", 1.0)),
                       urgent_share=float(strategy.get("urgent_share", 0.1)),
                       split_mb=float(strategy.get("split_mb", 0.0)),
                       last_used_last=bool(strategy.get("last_used_last", False)))
        if name == "delayed":
            return cls("delayed", k=int(strategy.get("k", 1)))
        if name == "sync":
            return cls("sync", fuse=bool(strategy.get("fuse", True)))
        if name == "ddp":
            mb = strategy.get("bucket_mb")
            if mb is None:  # torch's default layout
                return cls("ddp", bucket_mb=DDP_BUCKET_MB, first_bucket_mb=DDP_FIRST_BUCKET_MB)
            return cls("ddp", bucket_mb=float(mb))
        if name == "nocomm":
            return cls("nocomm")
        raise ScheduleError(f"strategy {name!r} has no schedule in the model")


# Delayed's compensation rules that change no work of a step: ``momentum`` lowers the optimizer's
# momentum and raises its lr (momentum still > 0 at the usual settings: the same fused update), ``lr``
# sets the learning rate per step. ``spike``, ``dc`` and ``predict`` add passes over copies of the
# weights (asyncsgd/strategies/compensation.py) whose cost no profile measures.
FREE_COMPENSATIONS = ("momentum", "lr")


def ruleset_for(config: dict) -> str:
    """The rule set that describes a run made with ``config`` (today's code: one)."""
    from ..config import compensation_rules

    strategy = config.get("strategy", {}) if isinstance(config.get("strategy"), dict) else {}
    if "credit" in strategy:
        raise ScheduleError("this run was made with the credit scheduler that issue 12 replaced (strategy.credit); "
                            f"the model's rules follow today's code ({RULESET[AS_IMPLEMENTED]})")
    known = {"name", "wait_at", "bucket_mb", "priority", "chunk_mb", "urgent_share", "k", "drain", "fuse", "split_mb",
             "last_used_last",
             "compensation", "dc_lambda", "dc_adaptive", "dc_beta"}
    new = sorted(set(strategy) - known)
    if new:
        raise ScheduleError(f"strategy keys {', '.join(new)} come from scheduler code this model has no rules for "
                            f"yet ({RULESET[AS_IMPLEMENTED]}); add a rule set in asyncsgd/projection/schedules.py")
    try:
        rules = compensation_rules(str(strategy.get("compensation", "none")))
    except ValueError as exc:  # ConfigError
        raise ScheduleError(str(exc)) from None
    costly = [r for r in rules if r not in FREE_COMPENSATIONS]
    if costly:
        raise ScheduleError(f"strategy.compensation={strategy['compensation']}: {', '.join(costly)} adds passes over "
                            "copies of the weights each step that no profile measures; the model predicts delayed "
                            f"with compensation none, {' or '.join(FREE_COMPENSATIONS)} (no extra work)")
    if "momentum" in rules:
        from ..strategies.compensation import explicit_momentum

        train = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
        if explicit_momentum(float(train.get("momentum", 0.9)), int(strategy.get("k", 1))) <= 0:
            raise ScheduleError("strategy.compensation=momentum leaves the optimizer no momentum at this k: its "
                                "update is not the one the profile measured (SGD with momentum)")
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
    compute_nice: int = 0  # backend.compute_nice: the training thread yields the CPU to the reductions' threads
    _costs: Dict[tuple, Tuple[float, float]] = field(default_factory=dict)  # (bytes, average) -> (link, cpu)

    def __post_init__(self) -> None:
        self.total_bytes = self.profile.nbytes
        self.update_all_s = self.profile.update_all_s

    @property
    def max_inflight(self) -> int:
        """What the communicator keeps in flight per channel, as the strategy reads it
        (``getattr(comm, "max_inflight", 2)``: MPI's thread has the setting, gloo does not)."""
        return self.network.channels if getattr(self.network, "channel_priority", False) else 2

    def copy_s(self, nbytes: float) -> float:
        return 0.0 if self.ideal else nbytes * self.profile.get("copy_s_per_byte")

    def scale_s(self, nbytes: float) -> float:
        return 0.0 if self.ideal else nbytes * self.profile.get("scale_s_per_byte")

    def update_s(self, layers: List[Layer]) -> float:
        """Updating these layers alone."""
        return sum(self.update_part_s(l, l.nbytes) for l in layers)

    def update_part_s(self, layer: Layer, nbytes: float) -> float:
        """Updating ``nbytes`` of ``layer``'s parameters (SGD is element-wise: its time pro rata); a
        profile with only a whole-model figure shares that by bytes."""
        if layer.update_s == 0 and self.profile.get("update_all_s"):
            return self.profile.get("update_all_s") * nbytes / max(1, self.total_bytes)
        return layer.update_s * nbytes / max(1, layer.nbytes)

    def reduction(self, label: str, nbytes: float, step: int, grad_step: int, urgency: Tuple = (),
                  average: bool = True, channel: int = 0) -> Reduction:
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
        return Reduction(label, nbytes, link, cpu, step, grad_step, urgency, channel)

    def machine(self) -> Machine:
        net = self.network
        if self.ideal:
            return Machine(cpu=self.cpu, channels=1, preemptive=True, cpu_contention=False)
        return Machine(cpu=self.cpu, channels=net.channels, channel_priority=getattr(net, "channel_priority", False),
                       efficiency=net.efficiency, cpu_share=yielded_share(net.cpu_share, self.compute_nice),
                       cpu_poll=net.cpu_poll,
                       cpu_poll_gate=net.cpu_poll_gate)


# ---------------------------------------------------------------------- the training loop
class Worker:
    """train.py's loop with the strategy's hooks; subclasses are the strategies."""

    lag = 1  # the stop flag is read this many steps after it was issued
    carries_stop_flag = False  # a reduction of the strategy's own carries it (StopFlagSlot): no reduction of its own

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
        """asyncsgd/stopping.py: without a slot in a reduction of the strategy's, a 1-element sum per
        step boundary, read ``lag`` steps later."""
        if self.plan.ideal or self.p <= 1 or self.carries_stop_flag:
            return
        flag = self.plan.reduction("stop flag", STOP_FLAG_BYTES, step, step, average=False)
        yield Start(flag)
        self._flags.append(flag)
        if len(self._flags) > self.lag:
            yield Wait(self._flags.popleft(), "wait stop flag", phase="between")

    # -- shared pieces --------------------------------------------------------------
    @property
    def flag_bytes(self) -> int:
        """What the stop flag adds to the reduction that carries it (the ideal has none)."""
        return 0 if self.plan.ideal else STOP_FLAG_BYTES

    def wait(self, r: Reduction, name: str, phase: str = "comm_wait", averaged: bool = True):
        """Strategy._wait: block on the handle; for an averaging reduction gloo then divides by P on
        this thread (MPI on its communication thread, in the reduction's cost)."""
        yield Wait(r, f"wait {name}", phase=phase)
        if averaged and self.plan.network.scale_on_worker and self.p > 1:
            yield Compute(self.plan.scale_s(r.nbytes), f"average {name}", phase, track=-1)


class NoComm(Worker):
    pass


class Sync(Worker):
    """sync.py: fused, the gradients are views of one flat buffer (+ the stop flag), summed in place by one
    reduction and multiplied by 1/P on the training thread; unfused, one averaging reduction per tensor."""

    @property
    def carries_stop_flag(self) -> bool:
        return self.spec.fuse

    def synchronize(self, step: int):
        plan, nbytes = self.plan, self.plan.total_bytes
        if self.p <= 1:
            return
        if self.spec.fuse:
            r = plan.reduction("all", nbytes + self.flag_bytes, step, step, average=False)
            yield Start(r)
            yield from self.wait(r, "all", averaged=False)
            yield Compute(plan.scale_s(nbytes), "average all", "comm_wait", track=-1)
            return
        handles = []
        for t, nb in enumerate(t for layer in self.layers for t in layer.tensors):
            r = plan.reduction(str(t), nb, step, step)
            yield Start(r)
            handles.append(r)
        for t, r in enumerate(handles):
            yield from self.wait(r, str(t))


class Delayed(Worker):
    """delayed.py: the gradient of step t (+ the stop flag) is summed in the background where backward
    left it (the next backward fills a free buffer) and, at step t+K, copied back into the gradients
    scaled by 1/P and applied."""

    carries_stop_flag = True

    def __init__(self, plan: Plan, spec: StrategySpec):
        super().__init__(plan, spec)
        self.in_flight: Deque[Reduction] = deque()
        self.lag = max(1, spec.k)

    @property
    def warmup(self) -> int:
        return 4 + 2 * self.spec.k

    def synchronize(self, step: int):
        nbytes = self.plan.total_bytes
        # one reduction on the link at a time: the ones in flight are waited for before this step's starts
        for queued in self.in_flight:
            yield from self.wait(queued, f"step {queued.grad_step}", averaged=False)
        # no copy: the buffer backward filled is reduced in place (delayed.py, since it stopped copying)
        r = self.plan.reduction(f"step {step}", nbytes + self.flag_bytes, step, step, urgency=(step,), average=False)
        yield Start(r)
        self.in_flight.append(r)

    def step(self, step: int):
        if len(self.in_flight) > self.spec.k:
            r = self.in_flight.popleft()
            yield from self.wait(r, f"step {r.grad_step}", averaged=False)
            yield Compute(self.plan.copy_s(r.nbytes), "copy back, scaled by 1/P", "update", track=-1)
            yield Compute(self.plan.update_all_s, f"update with gradient of step {r.grad_step}", "update",
                          track=WAITS)


# ---------------------------------------------------------------------- layer-wise
def split_layers(layers: List[Layer], split_mb: float) -> List[Layer]:
    """``strategy.split_mb`` (asyncsgd/strategies/split.py) on a profile: every ``Linear`` layer whose
    weight is larger than ``split_mb`` MiB becomes row blocks, each a layer of its own, in forward
    order (backward finishes the last block first). As ``split_linear_layers``: as few equal blocks
    as keep each weight within the limit, ``rows = ceil(out / blocks)`` each, the last one shorter.
    A block's forward, backward, update and bytes are the layer's in proportion to its rows (the
    same arithmetic per output row). The rows are read from the bias (out x 4 bytes)."""
    if split_mb <= 0:
        return list(layers)
    from ..strategies.split import block_rows

    max_bytes = int(split_mb * 2 ** 20)
    out: List[Layer] = []
    for layer in layers:
        weight = layer.tensors[0]
        if weight <= max_bytes or layer.type not in ("Linear", ""):
            out.append(layer)
            continue
        if not layer.type:
            raise ScheduleError(f"strategy.split_mb: profile layer {layer.name} has no type; split_mb splits only "
                                "nn.Linear layers, so the profile must say which layers are (type: Linear)")
        rows_total = layer.tensors[1] // DTYPE_BYTES if len(layer.tensors) == 2 else 0
        if not rows_total or weight % rows_total:
            raise ScheduleError(f"strategy.split_mb: profile layer {layer.name} (Linear) needs tensors [weight, bias] "
                                "bytes to know its rows")
        row_bytes = weight // rows_total
        rows = block_rows(rows_total, row_bytes, max_bytes)
        for k, r0 in enumerate(range(0, rows_total, rows)):
            n = min(rows, rows_total - r0)
            share = n / rows_total
            out.append(Layer(f"{layer.name}.blocks.{k}", [n * row_bytes, n * DTYPE_BYTES], layer.forward_s * share,
                             layer.backward_s * share, layer.update_s * share, "_Block"))
    return out


def layer_buckets(layers: List[Layer], bucket_mb: float) -> List[List[int]]:
    """layerwise.py's buckets: layer indices (forward order inside), listed in gradient-ready order
    (backward's). A layer's parameters share a bucket; with ``bucket_mb`` a bucket takes the next
    layer while it holds less than that (DDP's close-at-cap rule)."""
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


@dataclass
class ChunkSpec:
    """One chunk of a bucket's reduction: its elements, and the layers' bytes its update covers."""

    elements: int
    parts: List[Tuple[int, int]]  # (layer index, bytes of that layer's parameters in this chunk)


@dataclass
class BucketSpec:
    """What layerwise.py's ``_build`` makes of one bucket."""

    index: int
    layers: List[int]  # forward order
    label: str
    nbytes: int
    copied: int  # bytes copied into the flat buffer at launch (gradients of at most one chunk)
    chunks: List[ChunkSpec]
    carries_flags: bool


def layerwise_plan(layers: List[Layer], spec: StrategySpec) -> Tuple[List[BucketSpec], List[int], List[List[int]]]:
    """layerwise.py's ``_build`` on a profile: buckets in gradient-ready order with their chunks (the flat
    buffer of the small gradients, plus the flags in the bucket the next forward needs first, then each
    larger gradient in chunks of ``chunk_mb``), the use order, and ``make_plan``'s lanes."""
    from ..strategies.layerwise import FLAGS
    from ..strategies.schedule import make_plan

    groups = layer_buckets(layers, spec.bucket_mb)
    use_order = sorted(range(len(groups)), key=lambda b: (min(groups[b]), b))
    chunk_bytes = int(spec.chunk_mb * 2 ** 20) if spec.priority and not math.isinf(spec.chunk_mb) else 0
    per = max(1, chunk_bytes // DTYPE_BYTES) if chunk_bytes else 0
    buckets = []
    for b, members in enumerate(groups):
        carries = b == use_order[0]
        # parameters in the order backward finished them: later layers first, a layer's tensors reversed
        tensors = [(i, t) for i in sorted(members, reverse=True) for t in reversed(layers[i].tensors)]
        small = [(i, t) for i, t in tensors if not (chunk_bytes and t > chunk_bytes)]
        chunks = []
        copied = sum(t for _, t in small)
        flat = copied // DTYPE_BYTES + (FLAGS if carries else 0)
        if flat:
            parts: Dict[int, int] = {}
            for i, t in small:
                parts[i] = parts.get(i, 0) + t
            chunks.append(ChunkSpec(flat, list(parts.items())))
        for i, t in tensors:
            if chunk_bytes and t > chunk_bytes:
                n = t // DTYPE_BYTES
                chunks += [ChunkSpec(min(per, n - a), [(i, min(per, n - a) * DTYPE_BYTES)]) for a in range(0, n, per)]
        label = "+".join(layers[i].name for i in members)
        buckets.append(BucketSpec(b, members, label, sum(layers[i].nbytes for i in members), copied, chunks, carries))
    lanes = make_plan([bk.nbytes for bk in buckets], list(range(len(buckets))), use_order, spec.priority,
                      spec.urgent_share)
    return buckets, use_order, lanes


class RecordedScheduler:
    """``asyncsgd/strategies/schedule.py``'s ReductionScheduler itself, its start/wait turned into ops.

    The real scheduler decides only at points every rank passes in the same order and
    never from timing (its module says why), so running a decision with callbacks that
    *record* the starts and waits, then handing those ops to the simulation in the same
    order, is the same schedule the runner makes. Its chunks are meta tensors: shapes
    without memory. Its handles are the simulation's reductions, so ``carried`` (which
    asks them whether they are done) reads the simulated link as the strategy reads the
    real one.
    """

    def __init__(self, worker: "Layerwise", lanes):
        from ..strategies.schedule import ReductionScheduler

        self.w = worker
        self._ops: List[object] = []
        self.real = ReductionScheduler(self._start, self._wait, lanes)

    def _start(self, tensor, label: str, grad_step: int, lane: int) -> Reduction:
        nbytes = tensor.numel() * tensor.element_size()
        r = self.w.plan.reduction(label[len("allreduce "):], nbytes, self.w.current_step, grad_step, average=False,
                                  channel=lane)
        self._ops.append(Start(r))
        return r

    def _wait(self, handle: Reduction, label: str) -> None:
        self._ops.extend(self.w.wait(handle, label, averaged=False))

    def _flush(self):
        ops, self._ops = self._ops, []
        yield from ops

    def submit(self, job):
        self.real.submit(job)
        yield from self._flush()

    def wait(self, chunk):
        self.real.wait(chunk)
        yield from self._flush()


class Layerwise(Worker):
    """layerwise.py: a bucket's reduction is submitted when its last gradient is ready; each bucket is
    waited for and updated chunk by chunk in the next forward's pre-hook of the layer that first uses
    it (wait_at=forward), or after backward (wait_at=step). The first step reduces everything after
    backward and updates at once; with priority, steps 1-4 measure how far the link had got when each
    bucket of lane 1 was ready and lane 1 follows earliest-deadline-first chunk order from step 5."""

    carries_stop_flag = True

    def __init__(self, plan: Plan, spec: StrategySpec):
        from ..strategies.layerwise import CALIBRATION_STEPS
        from ..strategies.schedule import chunk_items

        super().__init__(plan, spec)
        self.layers = split_layers(self.layers, spec.split_mb)
        self.calibration_steps = CALIBRATION_STEPS
        self.specs, self.use_order, self.lanes = layerwise_plan(self.layers, spec)
        self.bucket_of = {i: b.index for b in self.specs for i in b.layers}
        self.waits_at: Dict[int, List[int]] = {}  # layer -> buckets waited for in its forward pre-hook, in use order
        for b in self.use_order:
            self.waits_at.setdefault(min(self.specs[b].layers), []).append(b)
        self.ready = [0] * len(self.specs)
        self.jobs: Dict[int, object] = {}  # bucket -> schedule.Job (as implemented) or its Reductions (ideal)
        self.current_step = 0
        self.scheduler = None
        if not plan.ideal:
            self.scheduler = RecordedScheduler(self, [chunk_items(lane, {b: len(self.specs[b].chunks) for b in lane})
                                                      for lane in self.lanes])
        # lanes after the first: bytes of the lane carried when each bucket (but the lane's first) was ready
        self.carried: Dict[int, List[float]] = {b: [] for lane in self.lanes[1:] for b in lane[1:]}
        self.reorders = bool(self.carried)  # lane 1's chunk order changes after the calibration steps

    @property
    def warmup(self) -> int:
        return self.calibration_steps + 3 if self.reorders else 4

    def label(self, b: int) -> str:
        return self.specs[b].label

    def zero_grad(self, step: int):
        # layerwise.zero_grad sets p.grad = None: autograd makes new gradients, nothing is zeroed
        self.current_step = step
        return
        yield

    def before_forward(self, i: int, step: int):
        if self.spec.wait_at != "forward":
            return
        for b in self.waits_at.get(i, []):
            if b in self.jobs:
                yield from self.apply(b)

    def after_backward(self, i: int, step: int):
        if step == 0 and not self.plan.ideal:
            return  # the first step is observed; its reductions start after backward
        b = self.bucket_of[i]
        self.ready[b] += 1
        if self.ready[b] == len(self.specs[b].layers):
            yield from self.launch(b, step)

    def launch(self, b: int, step: int, in_backward: bool = True):
        self.ready[b] = 0
        bucket = self.specs[b]
        if self.plan.ideal:
            # needed soonest = oldest gradient, then earliest in the next forward, then chunk order
            deadline = self.use_order.index(b)
            self.jobs[b] = []
            for c, chunk in enumerate(bucket.chunks):
                # the gradient's bytes only (no flags); a chunk of flags alone is not reduced
                r = None
                if chunk.parts:
                    r = self.plan.reduction(f"{bucket.label} [{c + 1}]", sum(n for _, n in chunk.parts), step, step,
                                            urgency=(step, deadline, c))
                    yield Start(r)
                self.jobs[b].append(r)
            return
        import torch

        from ..strategies.schedule import Chunk, Job

        if bucket.copied:
            yield Compute(self.plan.copy_s(bucket.copied), f"fill buffer {bucket.label}", "backward", track=-1)
        many = len(bucket.chunks) > 1
        job = Job(b, bucket.label, step, [
            Chunk(torch.empty(chunk.elements, device="meta"),
                  f"{bucket.label} [{c + 1}/{len(bucket.chunks)}]" if many else bucket.label)
            for c, chunk in enumerate(bucket.chunks)])
        if in_backward and 1 <= step <= self.calibration_steps and b in self.carried:
            self.carried[b].append(self.scheduler.real.carried(self.scheduler.real.lane_of[b]))
        self.jobs[b] = job
        yield from self.scheduler.submit(job)

    def apply(self, b: int):
        """_apply: wait for each chunk, then update what it holds (SGD is element-wise)."""
        job = self.jobs.pop(b)
        bucket = self.specs[b]
        chunks = job if self.plan.ideal else job.chunks
        for chunk, spec in zip(chunks, bucket.chunks):
            if self.plan.ideal:
                if chunk is None:
                    continue
                yield Wait(chunk, f"wait {chunk.label}")
            else:
                yield from self.scheduler.wait(chunk)
            if spec.parts:  # (the flat buffer may hold only the flags)
                seconds = sum(self.plan.update_part_s(self.layers[i], nbytes) for i, nbytes in spec.parts)
                yield Compute(seconds, f"update {chunk.label}", "update", track=WAITS)

    def synchronize(self, step: int):
        first = step == 0 and not self.plan.ideal
        if first:  # the plan is made now; the observed step's reductions start in bucket (ready) order
            for b in range(len(self.specs)):
                yield from self.launch(b, step, in_backward=False)
        if self.carried and step == self.calibration_steps:
            self.calibrate()
        if self.spec.wait_at == "step" or first:
            for b in self.use_order:
                if b in self.jobs:
                    yield from self.apply(b)

    def calibrate(self) -> None:
        """_calibrate: rank 0's medians -> earliest-deadline-first chunk order on the lanes after the first."""
        from ..strategies.schedule import bulk_lane_order

        carried = {b: statistics.median(v) for b, v in self.carried.items() if v}
        self.carried = {}
        if not carried:
            return
        deadline = {b: position for position, b in enumerate(self.use_order)}
        ahead = self.plan.max_inflight * self.spec.chunk_mb * 2 ** 20
        sizes = {b.index: [c.elements * DTYPE_BYTES for c in b.chunks] for b in self.specs}
        lanes = [self.scheduler.real.lanes[0]] + [
            bulk_lane_order(lane, {b: sizes[b] for b in lane}, deadline, carried, ahead, self.spec.last_used_last)
            for lane in self.lanes[1:]]
        self.scheduler.real.replan(lanes)

    def step(self, step: int):
        return  # every update happens in the waits
        yield


def layerwise_bound(forward: Sequence[float], backward: Sequence[float], update: Sequence[float],
                    comm: Sequence[float], before: float = 0.0, after: float = 0.0,
                    compute_slowdown: float = 1.0, reduction_slowdown: float = 1.0) -> float:
    """design.md's bound for ``layerwise(wait_at=forward)`` (issue 12), layers in forward order:

        T >= max_i [ sum_{j>=i}(f_j+b_j+u_j) + max( sum_{j<i}(f_j+b_j+u_j), sum_{j<=i} c_j ) ]

    Between layer i's gradient being ready and the same point one step later, the compute of the
    layers before i (and ``before``: the step's work outside the layers ahead of the first forward,
    data and bookkeeping) can run while the reductions of layers 1..i travel on the one link, all of
    which must arrive before layer i's forward; u_i and the forward and backward of layers i..n
    (and ``after``: the loss) follow. ``comm[i]``: layer i's reduction alone on the link.

    With the cost of overlap (:func:`overlap_window`): where a reduction's CPU work shares the
    worker's cores with the compute, compute beside a reduction runs ``compute_slowdown`` times
    slower and the reduction ``reduction_slowdown`` times slower (both 1: the bound above).
    """
    n = len(forward)
    if not n or not len(backward) == len(update) == len(comm) == n:
        raise ValueError("forward, backward, update and comm need one value per layer, at least one layer")
    work = [f + b + u for f, b, u in zip(forward, backward, update)]
    return max(sum(work[i:]) + after + overlap_window(sum(work[:i]) + before, sum(comm[:i + 1]),
                                                      compute_slowdown, reduction_slowdown)
               for i in range(n))


def overlap_window(compute: float, link: float, compute_slowdown: float = 1.0,
                   reduction_slowdown: float = 1.0) -> float:
    """The least time in which ``compute`` seconds of compute and ``link`` seconds of reductions
    (each as measured alone) both complete on one worker, when running side by side slows the
    compute by ``compute_slowdown`` (s_c) and the reductions by ``reduction_slowdown`` (s_r).

    Split the window into time with both running (x), reductions alone, and no reduction. If y
    seconds of the compute run beside a reduction, x = s_c y and the reductions do x / s_r of their
    work then, so the window is at least
        x + (link - x / s_r) + (compute - y) = link + compute - y (1 - s_c (1 - 1/s_r)),
    with y <= compute and x / s_r <= link. It is least at the largest y where overlapping saves
    time (1 - s_c (1 - 1/s_r) > 0), at y = 0 where it costs more than it hides. s_c = s_r = 1
    gives max(compute, link). Assumed: one reduction at a time slows the compute as much as the
    measured pair did, and several reductions together move no faster than one."""
    if not (math.isfinite(compute_slowdown) and math.isfinite(reduction_slowdown)) \
            or compute_slowdown < 1.0 or reduction_slowdown < 1.0:
        raise ValueError(f"slowdowns must be >= 1 (got compute {compute_slowdown}, reduction {reduction_slowdown})")
    if not (math.isfinite(compute) and math.isfinite(link)):
        raise ValueError(f"overlap_window needs finite times (got compute {compute}, link {link})")
    if compute <= 0.0 or link <= 0.0:
        return max(compute, link, 0.0)
    gain = 1.0 - compute_slowdown * (1.0 - 1.0 / reduction_slowdown)  # time saved per second overlapped
    overlapped = min(compute, link * reduction_slowdown / compute_slowdown) if gain > 0 else 0.0
    return max(compute, link + compute - gain * overlapped)


def overlap_slowdowns(reduce_alone: float, reduce_overlapped: float, compute_alone: float,
                      compute_overlapped: float) -> Tuple[float, float]:
    """(s_c, s_r) of :func:`overlap_window` from a pair measured alone and started together
    (``scripts/bench_reduction_cpu.py``): s_c = compute_overlapped / compute_alone (the compute
    ran beside the reduction throughout when it ended first); the reduction ran beside the compute
    for compute_overlapped seconds and alone for the rest, in which it did that much of its work, so
    s_r = compute_overlapped / (reduce_alone - (reduce_overlapped - compute_overlapped))."""
    times = (reduce_alone, reduce_overlapped, compute_alone, compute_overlapped)
    if not all(math.isfinite(t) and t > 0 for t in times):
        raise ValueError(f"overlap_slowdowns needs positive, finite times (got {times})")
    if compute_overlapped > reduce_overlapped:
        raise ValueError("overlap_slowdowns needs a compute that ends before the reduction "
                         f"({compute_overlapped:.4g} s after a reduction of {reduce_overlapped:.4g} s): "
                         "measure with a shorter compute")
    done_beside = reduce_alone - (reduce_overlapped - compute_overlapped)
    if done_beside <= 0:
        raise ValueError("overlap_slowdowns: the reduction did no work beside the compute")
    return max(1.0, compute_overlapped / compute_alone), max(1.0, compute_overlapped / done_beside)


def layerwise_bound_for(profile: Profile, network, world_size: int, split_mb: float = 0.0) -> float:
    """:func:`layerwise_bound` of a profile over a network: c_i = one allreduce of layer i's gradient
    alone; the step's data and bookkeeping come before the first layer's forward, the loss after the
    last (layerwise's zero_grad only drops references). ``split_mb``: of the layers as row blocks."""
    layers = split_layers(profile.layers, split_mb)
    plan = Plan(profile, network, world_size, ideal=True)
    return layerwise_bound([l.forward_s for l in layers], [l.backward_s for l in layers],
                           [plan.update_part_s(l, l.nbytes) for l in layers],
                           [network.allreduce_s(l.nbytes, world_size) for l in layers],
                           before=profile.get("data_s") + profile.get("between_s"),
                           after=profile.get("loss_s"))


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
            cpu: Optional[float] = None, steps: Optional[int] = None, warmup: Optional[int] = None,
            compute_nice: int = 0) -> Prediction:
    """Simulate ``spec`` on ``world_size`` workers over ``network`` (a Network or presets.Hierarchical).

    By default long enough for the steady state; ``steps``/``warmup`` reproduce a run's
    train.max_steps/train.warmup_steps, so the median is taken over the same iterations.
    ``compute_nice`` is the run's backend.compute_nice: the reductions' threads get the larger share
    of a core that the training thread's lower priority leaves them (network.yielded_share).
    """
    if spec.name not in PROGRAMS:
        raise ScheduleError(f"strategy {spec.name!r} has no schedule in the model")
    if rules not in RULESET:
        raise ScheduleError(f"unknown rule set {rules!r}; known: {', '.join(RULESET)}")
    ideal = rules == IDEAL
    plan = Plan(profile, network, world_size, cpu=worker_cpu(profile, world_size) if cpu is None else cpu, ideal=ideal,
                compute_nice=compute_nice)
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

"""Layer-wise overlap: each layer's allreduce starts the moment its gradient is ready.

During backward, a post-accumulate-grad hook on every parameter counts the
gradients of its bucket (one layer, or several layers finished one after the
other when ``strategy.bucket_mb`` > 0); when the bucket is complete its
reduction is submitted to the :mod:`.schedule`. Where the wait and the update
happen is ``strategy.wait_at``:

- ``forward`` (default, the paper's asynchronous layer-wise method): a forward
  pre-hook waits for the bucket and applies its update just before the bucket's
  parameters are first used in the next iteration, so communication overlaps
  the rest of backward *and* the next forward.
- ``step``: all reductions are waited for right after backward, then updated
  (what DDP-style overlap gives).

Either way every layer is updated with the exact global-batch gradient before
it is used again, so the result equals sequential SGD (design.md, semantics 2).

The first training step is observed (:mod:`.recording`, rank 0's observation
broadcast to all): buckets follow the order backward finishes gradients, and
each bucket's wait sits in the forward pre-hook of the module that first uses
one of its parameters — which may not be the module that owns it. That step
itself reduces everything after backward and updates at once.

The update is SGD's arithmetic, element-wise, applied per chunk with torch's
fused SGD kernel on views of the parameter, its reduced gradient and its
momentum buffer (kept in the optimizer's state, so checkpoints hold it as
usual). With priority a layer is updated chunk by chunk as its chunks arrive,
and the averaging's 1/P is folded into the kernel (the reduction sums). A
gradient with several chunks is reduced where autograd left it, without a copy;
small gradients share one flat buffer.

The first bucket the next forward waits for also carries two numbers summed
over the ranks: stop requests and gradients that were not finite. So every
rank decides the same way, before any layer of a step is updated, whether to
stop or to skip that step, and the step issues no collective beyond its
gradients'.
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

import torch
from torch import nn

from ..stopping import StopFlagSlot
from .base import NonFiniteGradient, Strategy, flat_views
from .recording import Observation, Recorder
from .schedule import Chunk, Job, ReductionScheduler, bulk_lane_order, chunk_items, make_plan
from .split import split_linear_layers
from .tuning import Layout, LayoutTuner, candidates, decide

log = logging.getLogger("asyncsgd")

FLAGS = 2  # carried by the first bucket of a step: [stop requests, ranks with a non-finite gradient]
CALIBRATION_STEPS = 4  # 4 steps after the layout is built measure how far the link gets in backward; then EDF


@dataclass
class _Piece:
    """Where a chunk's values go: parameters (whole or a slice) and their reduced gradients."""

    params: List[torch.Tensor]  # parameter views (detached) to update
    grads: List[torch.Tensor]  # matching views of the reduced chunk
    owners: List[nn.Parameter]  # the parameters, for their optimizer state


@dataclass
class _Bucket:
    index: int
    label: str
    params: List[nn.Parameter]  # in the order backward finished them
    nbytes: int
    module: nn.Module  # whose forward pre-hook waits for it
    small: List[bool] = field(default_factory=list)  # per parameter: copied into ``flat`` (else reduced in place)
    # the chunks, in order: None for ``flat``, else (parameter position, first, end element) of a gradient
    layout: List[Optional[tuple]] = field(default_factory=list)
    flat: Optional[torch.Tensor] = None
    flat_piece: Optional[_Piece] = None  # the small parameters and their views of ``flat`` (fixed at build)
    carries_flags: bool = False
    covered: bool = False  # launched no later than the flags' bucket: its local check is in the flags
    ready: int = 0  # parameters whose gradient arrived in this backward
    job: Optional[Job] = None  # its reduction in flight
    pieces: List[_Piece] = field(default_factory=list)  # per chunk of ``job``


class LayerwiseStrategy(Strategy):
    name = "layerwise"

    def attach(self, model: nn.Module, make_optimizer):
        if self.cfg.split_mb > 0:
            split = split_linear_layers(model, int(self.cfg.split_mb * 2**20))
            if split and self.comm.rank == 0:
                log.info("layerwise: computed as row blocks of at most %g MiB: %s", self.cfg.split_mb, ", ".join(split))
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.index = {p: i for i, p in enumerate(self.params)}
        self.optimizer = make_optimizer(self.params)  # hyperparameters and momentum buffers
        self._owners = self._owning_modules(model)
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self.params)]
        self._wait_hooks: List = []  # the forward pre-hooks of the current layout
        self.recorder: Optional[Recorder] = Recorder(model, self.params)
        self.buckets: List[_Bucket] = []
        self.scheduler: Optional[ReductionScheduler] = None
        self.lanes: List[List[int]] = []
        self.flags = torch.zeros(FLAGS, dtype=self.params[0].dtype, device=self.params[0].device)
        # The stop flag travels as flags[0] of each step's first bucket (asyncsgd.stopping).
        self.stop_slot = StopFlagSlot()
        self._flags_read = -1  # the last grad step whose flags were read
        self._skip: Set[int] = set()  # grad steps whose update every rank skips (non-finite)
        self._bad_local = 0  # buckets of this step with a non-finite local gradient
        self._flags_sent = False  # this step's flags are on their way
        self.use_order: List[_Bucket] = []
        self._grad_scale = torch.tensor(float(self.comm.size))
        self._step = 0
        self._obs: Optional[Observation] = None
        self._built_at = 0  # the step whose synchronize built the current layout
        self._settled_before: Optional[int] = None  # a resumed run: the step it had settled at
        # bucket_mb=auto: candidate layouts are timed at the start (asyncsgd.strategies.tuning)
        self.tuner: Optional[LayoutTuner] = None
        if self.cfg.bucket_mb == "auto":
            self.tuner = LayoutTuner(candidates(self.cfg.chunk_mb), self._choose_layout)
        self.layout = self.tuner.current if self.tuner else Layout(float(self.cfg.bucket_mb), self.cfg.chunk_mb)
        if self.cfg.priority:
            self.comm.open_channels(2)  # collective: every rank attaches at the same point
        self._check_equivalence(model)
        return model

    @staticmethod
    def _owning_modules(model: nn.Module) -> Dict[nn.Parameter, List[nn.Module]]:
        owners: Dict[nn.Parameter, List[nn.Module]] = {}
        for module in model.modules():
            for p in module.parameters(recurse=False):
                owners.setdefault(p, []).append(module)
        return owners

    # -- the plan, from the first step ---------------------------------------------------------
    def _build(self, obs: Observation) -> None:
        """Buckets, lanes and waits from rank 0's observation of the first step."""
        self.recorder.close()
        self.recorder = None
        self._obs = obs
        self._lay_out(self.layout)

    def _lay_out(self, layout: Layout) -> None:
        """Buckets, lanes and waits of ``layout``; nothing may be in flight (a step boundary, every rank alike)."""
        obs = self._obs
        for h in self._wait_hooks:
            h.remove()
        self._wait_hooks = []
        self.layout, self.buckets, self._built_at = layout, [], self._step
        ready = list(obs.ready) + [i for i in range(len(self.params)) if i not in set(obs.ready)]
        modules = dict(self.model.named_modules())
        limit = layout.bucket_mb * 2**20
        groups: List[List[int]] = []
        size = 0.0
        for i in ready:
            p = self.params[i]
            # one layer per bucket: a parameter joins the previous one's bucket when the same module
            # owns both, or while the bucket is under bucket_mb (DDP's close-at-cap rule)
            same_layer = groups and self._owners[p][0] is self._owners[self.params[groups[-1][-1]]][0]
            if not groups or not (same_layer or (limit > 0 and size < limit)):
                groups.append([])
                size = 0.0
            groups[-1].append(i)
            size += p.numel() * p.element_size()
        never = len(self.params)  # position of a parameter the forward never used
        use = [min(obs.first_use.get(i, never) for i in g) for g in groups]
        use_order = sorted(range(len(groups)), key=lambda b: (use[b], b))
        chunk_bytes = int(layout.chunk_mb * 2**20) if self.cfg.priority and not math.isinf(layout.chunk_mb) else 0
        for b, group in enumerate(groups):
            params = [self.params[i] for i in group]
            first = min(group, key=lambda i: obs.first_use.get(i, never))
            # the wait sits where the first of its parameters is used; never used in forward: at its start
            where = modules.get(obs.used_in.get(first, ""), self.model) if first in obs.first_use else self.model
            names = sorted({self._layer_name(p) for p in params})
            bucket = _Bucket(b, "+".join(names), params, sum(p.numel() * p.element_size() for p in params), where)
            # a gradient of more than one chunk is reduced where it lies; smaller ones share a buffer
            bucket.small = [not (chunk_bytes and p.numel() * p.element_size() > chunk_bytes) for p in params]
            bucket.carries_flags = b == use_order[0]
            n = sum(p.numel() for p, small in zip(params, bucket.small) if small) + (FLAGS if bucket.carries_flags else 0)
            if n:
                bucket.flat = torch.empty(n, dtype=params[0].dtype, device=params[0].device)
                bucket.layout.append(None)
                small = [p for p, is_small in zip(params, bucket.small) if is_small]
                bucket.flat_piece = _Piece([p.detach() for p in small], flat_views(bucket.flat, small), small)
            per = max(1, chunk_bytes // params[0].element_size()) if chunk_bytes else 0
            for k, p in enumerate(params):
                if not bucket.small[k]:
                    bucket.layout += [(k, a, min(a + per, p.numel())) for a in range(0, p.numel(), per)]
            self.buckets.append(bucket)
        self.bucket_of = {p: b for b in self.buckets for p in b.params}
        self.use_order = [self.buckets[b] for b in use_order]
        self.lanes = make_plan([b.nbytes for b in self.buckets], list(range(len(self.buckets))), use_order,
                               self.cfg.priority, self.cfg.urgent_share)
        self.scheduler = ReductionScheduler(
            self._start, self._wait, [chunk_items(lane, {b: len(self.buckets[b].layout) for b in lane})
                                      for lane in self.lanes])
        # lanes after the first are refined to earliest-deadline-first chunk order after a few steps
        # (of the layout that is kept: not while candidates are being timed)
        tuning = self.tuner is not None and not self.tuner.done
        self._carried: Dict[int, List[float]] = {}
        if not tuning:
            self._start_calibration()
        # one reduction per step (the one-bucket layout) is driven best by a blocking call on MPI
        self.comm.suit_reductions(sum(len(b.layout) for b in self.buckets))
        if self.cfg.wait_at == "forward":
            waiting: Dict[nn.Module, List[_Bucket]] = {}
            for bucket in self.use_order:
                waiting.setdefault(bucket.module, []).append(bucket)
            for module, buckets in waiting.items():
                self._wait_hooks.append(module.register_forward_pre_hook(self._make_pre_hook(buckets)))
        if self.comm.rank == 0:
            log.info("layerwise: %s%s: %d buckets on %d lane(s): %s", layout, " (timing it)" if tuning else "",
                     len(self.buckets), len(self.lanes),
                     " | ".join(", ".join(self.buckets[b].label for b in lane) for lane in self.lanes))

    def _choose_layout(self, times: List[List[float]], extra_left: int):
        """bucket_mb=auto: rank 0's verdict on its step times (tuning.decide), the same on every rank."""
        verdict = decide(times, extra_left=extra_left) if self.comm.rank == 0 else None
        return self.comm.broadcast_object(verdict, root=0)

    def _tune(self) -> None:
        """bucket_mb=auto, at the end of a step's synchronize: time the layout; switch when its turn is over."""
        switch = self.tuner.tick()
        if switch is not None:
            self._apply_all()  # nothing may be in flight when the buckets change
            self._lay_out(switch)
            self.tuner.started()
        elif self.tuner.done:  # the last candidate timed is the one kept: its EDF calibration starts now
            self._built_at = self._step
            self._start_calibration()
        if self.tuner.done and self.comm.rank == 0:
            log.info("layerwise: bucket_mb=auto keeps %s (median ms per step: %s)", self.layout,
                     ", ".join(f"{layout} {1e3 * m:.1f}" for layout, m in zip(self.tuner.layouts,
                                                                                self.tuner.medians())))

    @property
    def settled_step(self) -> int:
        """The first step of the final schedule: the layout is kept and the EDF order (priority) is in place.
        (A resumed run recalibrates EDF for a few steps; its steady steps from before the stop still count.)"""
        if self.tuner is not None and not self.tuner.done:
            return self._step + 1
        if self._settled_before is not None:
            return self._settled_before
        return self._built_at + 1 + (CALIBRATION_STEPS if len(self.lanes) > 1 else 0)

    def _start_calibration(self) -> None:
        """Measure, from the next step, how far the link gets in backward (lanes after the first) -> EDF."""
        self._carried = {b: [] for lane in self.lanes[1:] for b in lane[1:]}

    def _chunk_sizes(self, bucket: _Bucket) -> List[int]:
        size = bucket.params[0].element_size()
        return [(bucket.flat.numel() if spec is None else spec[2] - spec[1]) * size for spec in bucket.layout]

    def _calibrate(self) -> None:
        """Rank 0's measurements of how far the link had got when each bucket was ready -> EDF chunk
        order on the lanes after the first, the same on every rank (broadcast), from the next step on."""
        carried = self.comm.broadcast_object(
            {b: statistics.median(v) for b, v in self._carried.items() if v} if self.comm.rank == 0 else None, root=0)
        self._carried = {}
        if not carried:
            return
        deadline = {bucket.index: position for position, bucket in enumerate(self.use_order)}
        ahead = getattr(self.comm, "max_inflight", 2) * self.layout.chunk_mb * 2**20  # what the backend holds
        lanes = [self.scheduler.lanes[0]] + [
            bulk_lane_order(lane, {b: self._chunk_sizes(self.buckets[b]) for b in lane}, deadline, carried, ahead,
                            self.cfg.last_used_last)
            for lane in self.lanes[1:]]
        self.scheduler.replan(lanes)
        if self.comm.rank == 0:
            log.info("layerwise: lane order by earliest deadline from step %d: %s", self._step + 1,
                     " | ".join(", ".join(f"{self.buckets[b].label}[{c}]" for b, c in lane) for lane in lanes[1:]))

    def _layer_name(self, p: nn.Parameter) -> str:
        names = {id(m): n for n, m in self.model.named_modules()}
        return names.get(id(self._owners[p][0])) or type(self.model).__name__

    def _start(self, tensor: torch.Tensor, label: str, grad_step: int, lane: int):
        # the reduction sums; 1/P is folded into the update
        return self._reduce(tensor, label, grad_step, channel=lane, average=False)

    # -- hooks ---------------------------------------------------------------------------------
    def _make_hook(self, i: int):
        def hook(param: torch.Tensor) -> None:
            if self.recorder is not None:
                self.recorder.grad_ready(i)
                return
            bucket = self.bucket_of[self.params[i]]
            bucket.ready += 1
            if bucket.ready == len(bucket.params):
                self._launch(bucket)
            self.comm.progress()  # backend.progress=test: move reductions along during backward
        return hook

    def _make_pre_hook(self, buckets: List[_Bucket]):
        def pre_hook(module, args) -> None:
            self.comm.progress()
            for bucket in buckets:
                if bucket.job is not None:
                    self._apply(bucket)
        return pre_hook

    def _launch(self, bucket: _Bucket, in_backward: bool = True) -> None:
        """Hand the bucket's gradients to its reduction; the parameters get fresh gradients next backward."""
        if bucket.job is not None:
            if in_backward and self.cfg.wait_at == "forward":
                # The forward used these parameters (backward made their gradients) without passing the
                # wait that applies their previous update: it computed with stale weights.
                raise RuntimeError(
                    f"layerwise: parameters of {bucket.label} were used in forward before their update was "
                    f"applied (step {self._step}): where the model uses them changed after the first step, "
                    "which placed the wait; use strategy.wait_at=step for such a model"
                )
            # Its previous reduction is still pending because the forward skipped these parameters
            # (control flow): apply it before their gradients are reduced again.
            self._apply(bucket)
        grads = [self._take_grad(p) for p in bucket.params]
        if not self.all_finite(grads):
            self._bad_local += 1
        bucket.covered = not self._flags_sent
        job = Job(bucket.index, bucket.label, self._step)
        bucket.pieces = []
        many = len(bucket.layout) > 1
        for c, spec in enumerate(bucket.layout):
            name = f"{bucket.label} [{c + 1}/{len(bucket.layout)}]" if many else bucket.label
            if spec is None:
                self._fill_flat(bucket, grads)
                job.chunks.append(Chunk(bucket.flat, name))
                bucket.pieces.append(bucket.flat_piece)
            else:
                k, a, b = spec
                p, g = bucket.params[k], grads[k].view(-1)
                job.chunks.append(Chunk(g[a:b], name))
                bucket.pieces.append(_Piece([p.detach().view(-1)[a:b]], [g[a:b]], [p]))
        if in_backward and 1 <= self._step - self._built_at <= CALIBRATION_STEPS and self.comm.rank == 0 and \
                bucket.index in self._carried:
            self._carried[bucket.index].append(self.scheduler.carried(self.scheduler.lane_of[bucket.index]))
        bucket.job = job
        bucket.ready = 0
        self.scheduler.submit(job)

    def _fill_flat(self, bucket: _Bucket, grads: List[torch.Tensor]) -> None:
        """The small gradients, then (first bucket of a step) this rank's flags, into the flat buffer."""
        small = [g for g, is_small in zip(grads, bucket.small) if is_small]
        for view, g in zip(bucket.flat_piece.grads, small):
            view.copy_(g)
        if bucket.carries_flags:
            self.flags[0] = self.stop_slot.outgoing
            self.flags[1] = float(self._bad_local > 0)
            bucket.flat[-FLAGS:].copy_(self.flags)
            self._flags_sent = True

    @staticmethod
    def _take_grad(p: nn.Parameter) -> torch.Tensor:
        """The parameter's gradient (zeros if it took no part in the loss, so every rank reduces the same
        tensors), detached from it: autograd makes a new one next backward, nothing is zeroed or copied."""
        g = p.grad
        if g is None:
            g = torch.zeros_like(p)
        elif not g.is_contiguous():
            g = g.contiguous()
        p.grad = None
        return g

    # -- waits and updates ---------------------------------------------------------------------
    def _apply(self, bucket: _Bucket) -> None:
        """Wait for the bucket's reduction chunk by chunk and update each chunk as it arrives."""
        job, pieces = bucket.job, bucket.pieces
        bucket.job, bucket.pieces = None, []
        firsts = {p: p not in self.optimizer.state for piece in pieces for p in piece.owners}
        lr_factor = self.lr_schedule(job.step)
        for chunk, piece in zip(job.chunks, pieces):
            self.scheduler.wait(chunk)
            if bucket.carries_flags and chunk.tensor is bucket.flat and job.step > self._flags_read:
                self._read_flags(job.step, chunk.tensor[-FLAGS:])
            if job.step in self._skip or not piece.params:  # (a buffer may hold only the flags)
                continue
            if not bucket.covered and not self.all_finite(piece.grads):
                self._nonfinite_late(job.step, bucket)
                continue
            with self.timer.phase("update"), self.timeline.region(f"update {chunk.label}"):
                self._sgd(piece, firsts, lr_factor)

    def _read_flags(self, step: int, flags: torch.Tensor) -> None:
        """The first bucket of ``step``: did any rank ask to stop, or have a non-finite gradient?"""
        self._flags_read = step
        # Read in the waits, which every rank passes in the same order: every rank delivers
        # the same sums before the same step boundary.
        self.stop_slot.deliver(float(flags[0]))
        if flags[1] > 0:
            if self.nonfinite == "stop":
                raise NonFiniteGradient(
                    f"non-finite loss or gradient (NaN/inf) computed at step {step} on {int(flags[1])} rank(s); "
                    "set train.nonfinite=skip to skip such updates"
                )
            self._skip.add(step)
            self.skipped += 1

    def _nonfinite_late(self, step: int, bucket: _Bucket) -> None:
        """A bucket launched after this step's flags (its gradient was finished after the first layer's)
        is not finite. Its reduced gradient is the same on every rank, so every rank decides alike:
        stop, or skip the rest of the step (the buckets already applied stay applied)."""
        if self.nonfinite == "stop":
            raise NonFiniteGradient(
                f"non-finite loss or gradient (NaN/inf) in {bucket.label} computed at step {step}; "
                "set train.nonfinite=skip to skip such updates"
            )
        if step not in self._skip:
            self._skip.add(step)
            self.skipped += 1
            self._warn(f"step {step}: a non-finite gradient was found in {bucket.label} after layers of that step "
                       "had been updated; the rest of the step is skipped")

    def _sgd(self, piece: _Piece, firsts: Dict[nn.Parameter, bool], lr_factor: float) -> None:
        """SGD's element-wise update of ``piece`` (torch.optim.SGD's arithmetic, fused kernel), with the
        rate scheduled for the step its gradient was computed at."""
        group = self.optimizer.param_groups[0]
        momentum = group["momentum"]
        bufs = []
        if momentum:
            for owner, view in zip(piece.owners, piece.params):
                state = self.optimizer.state[owner]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(owner, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"].view(-1)[self._offset(view, owner): self._offset(view, owner)
                                                              + view.numel()].view_as(view))
        torch._fused_sgd_(
            piece.params, piece.grads, bufs, weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"] * lr_factor,
            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group.get("maximize", False),
            is_first_step=firsts[piece.owners[0]], grad_scale=self._grad_scale,
        )

    @staticmethod
    def _offset(view: torch.Tensor, owner: nn.Parameter) -> int:
        return view.storage_offset() - owner.storage_offset()

    # -- the loop's calls ------------------------------------------------------------------------
    def zero_grad(self) -> None:
        # Gradients in flight were detached from the parameters at launch: nothing to clear.
        for p in self.params:
            p.grad = None

    def synchronize(self) -> None:
        if self.recorder is not None:  # the first step: plan from rank 0's observation, then reduce all
            self._build(self.comm.broadcast_object(self.recorder.obs, root=0))
        # Buckets not complete here hold parameters that took no part in this loss: their (zero)
        # gradients are reduced too, so every rank issues the same reductions in every lane.
        for bucket in self.buckets:
            if bucket.job is None or bucket.job.step < self._step:
                self._launch(bucket, in_backward=False)
        self._bad_local = 0
        self._flags_sent = False
        if self._carried and self._step - self._built_at == CALIBRATION_STEPS:
            self._calibrate()
        if self.cfg.wait_at == "step" or self._step == 0:
            if self.clip_norm is not None:
                self._clip()
            self._apply_all()
            self._grad_scale.fill_(float(self.comm.size))
        if self.tuner is not None and not self.tuner.done:
            self._tune()
        self._step += 1

    def _clip(self) -> None:
        """Global-norm clipping (wait_at=step only): every reduction is waited for, then the clip
        factor is folded into the update's gradient scale, as clip_grad_norm_ would scale the grads."""
        pieces = []
        for bucket in self.use_order:
            for chunk, piece in zip(bucket.job.chunks, bucket.pieces):
                self.scheduler.wait(chunk)
                pieces += piece.grads
        with self.timer.phase("update"):
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in pieces])) / self.comm.size
            coef = torch.clamp(self.clip_norm / (norm + 1e-6), max=1.0)
            self._grad_scale.fill_(float(self.comm.size / coef))

    def step(self) -> None:
        pass  # every update happens in the waits (wait_at=forward: in the next forward)

    def _apply_all(self) -> None:
        for bucket in self.use_order:  # the flags' bucket first
            if bucket.job is not None:
                self._apply(bucket)

    def flush(self) -> None:
        self._apply_all()
        if self.tuner is not None and not self.tuner.done:
            self.tuner.discard()  # an evaluation or a checkpoint is not the layout's time

    def optimizers(self):
        return [self.optimizer]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["layer_step"] = self._step
        if self.tuner is not None and self.tuner.done:  # a resumed run keeps the layout it chose
            state["layout"] = {"chosen": self.tuner.layouts.index(self.tuner.chosen), "times": self.tuner.times,
                               "passes": self.tuner.passes}
        if self.tuner is None or self.tuner.done:
            state["settled_step"] = self.settled_step
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._step = int(state["layer_step"])
        if self.tuner is not None and state.get("layout") is not None:
            self.tuner.restore(int(state["layout"]["chosen"]), state["layout"]["times"],
                               int(state["layout"].get("passes", 1)))
            self.layout = self.tuner.chosen
        if state.get("settled_step") is not None and (self.tuner is None or self.tuner.done):
            self._settled_before = int(state["settled_step"])

    def close(self, abort: bool = False) -> None:
        if abort:  # a peer may be gone: drop what is in flight, wait for nothing
            for bucket in self.buckets:
                bucket.job, bucket.pieces = None, []
        else:
            self.flush()
        for h in self._hooks + self._wait_hooks:
            h.remove()
        self._hooks, self._wait_hooks = [], []
        if self.recorder is not None:
            self.recorder.close()

    # -- what breaks per-layer equivalence ----------------------------------------------
    def _check_equivalence(self, model: nn.Module) -> None:
        batchnorm = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batchnorm:
            self._warn(
                f"model has BatchNorm ({len(batchnorm)} layers, e.g. {batchnorm[0]}): statistics come from each "
                "worker's local batch, so layerwise (like every data-parallel strategy) no longer equals "
                "single-process SGD on the global batch"
            )
        tied = [p for p, mods in self._owners.items() if len(mods) > 1]
        if tied:
            self._warn(
                f"model has {len(tied)} tied/shared parameter(s): each is reduced once, after its last use in "
                "backward, and updated before its first use in forward, so the math holds but its reduction "
                "cannot overlap with the layers in between"
            )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.comm.rank == 0:
            log.warning("layerwise: %s", message)

    def describe(self) -> dict:
        info = super().describe()
        info["buckets"] = len(self.buckets)
        info["layout"] = self.layout.describe()
        if self.tuner is not None:
            info["layout"]["auto"] = self.tuner.describe()
        if self.scheduler is not None:  # which layers travel on which channel, in launch order
            info["lanes"] = [[f"{self.buckets[b].label}[{c + 1}/{len(self.buckets[b].layout)}]" for b, c in lane]
                             for lane in self.scheduler.lanes]
        return info

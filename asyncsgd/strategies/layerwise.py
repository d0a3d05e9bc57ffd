"""Layer-wise overlap: each layer's allreduce starts the moment its gradient is ready.

During backward, a post-accumulate-grad hook on every parameter counts the
gradients of its bucket (one layer, or several consecutive small layers when
``strategy.bucket_mb`` > 0); when the bucket is complete its gradients are
copied into the bucket's own flat buffer and a non-blocking allreduce starts.
Where the wait and the update happen is ``strategy.wait_at``:

- ``forward`` (default, the paper's asynchronous layer-wise method): a forward
  pre-hook on the layer waits for that bucket and applies its update just
  before the layer runs in the next iteration, so communication overlaps the
  rest of backward *and* the next forward.
- ``step``: all reductions are waited for right after backward, then one update
  (what DDP-style overlap gives).

Either way every layer is updated with the exact global-batch gradient before
it is used again, so the result equals sequential SGD (design.md, semantics 2).

Which reduction goes on the wire when is :mod:`.schedule`'s job: first ready,
first sent by default; with ``strategy.priority=true`` chunked, credit-limited
and most-urgent-for-the-next-forward first.
Per-layer optimizers hold per-layer state; SGD's update is element-wise, so
this is the same arithmetic as one optimizer over all parameters.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from .base import Strategy
from .schedule import Job, ReductionScheduler

log = logging.getLogger("asyncsgd")


@dataclass
class _Bucket:
    index: int
    label: str
    params: List[nn.Parameter]  # forward order
    buffer: torch.Tensor = None
    optimizer: Optional[torch.optim.Optimizer] = None
    ready: int = 0  # parameters whose gradient arrived in this backward
    job: Optional[Job] = None  # its reduction in flight (or still queued)
    modules: List[nn.Module] = field(default_factory=list)


class LayerwiseStrategy(Strategy):
    name = "layerwise"

    def attach(self, model: nn.Module, make_optimizer):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buckets = self._make_buckets(model)
        self.bucket_of: Dict[nn.Parameter, _Bucket] = {p: b for b in self.buckets for p in b.params}
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(p)) for p in self.params]
        self.scheduler = ReductionScheduler(
            self._reduce, self._wait, priority=self.cfg.priority,
            chunk_bytes=int(self.cfg.chunk_mb * 2**20), credit=self.cfg.credit,
        )
        self.optimizer = make_optimizer(self.params)  # wait_at=step, and zero_grad/lr for both
        if self.cfg.wait_at == "forward":
            for bucket in self.buckets:
                bucket.optimizer = make_optimizer(bucket.params)
                for module in bucket.modules:
                    self._hooks.append(module.register_forward_pre_hook(self._make_pre_hook(bucket)))
        self._launched: List[_Bucket] = []  # in launch order: the same on every rank
        self._step = 0
        self._check_equivalence(model)
        return model

    # -- buckets ------------------------------------------------------------------
    def _make_buckets(self, model: nn.Module) -> List[_Bucket]:
        """Layers (modules owning parameters) grouped into buckets in backward order."""
        owners: Dict[nn.Parameter, List[nn.Module]] = {}
        layers: List[tuple] = []  # (name, module, its parameters not seen before)
        for name, module in model.named_modules():
            fresh = []
            for p in module.parameters(recurse=False):
                if not p.requires_grad:
                    continue
                owners.setdefault(p, []).append(module)
                if len(owners[p]) == 1:
                    fresh.append(p)
            if fresh:
                layers.append((name or type(module).__name__, module, fresh))
        self._owners = owners
        limit = self.cfg.bucket_mb * 2**20
        groups: List[List[tuple]] = []
        size = 0.0
        for layer in reversed(layers):  # backward order: the last layer's gradient comes first
            nbytes = sum(p.numel() * p.element_size() for p in layer[2])
            if not groups or limit <= 0 or size >= limit:
                groups.append([])
                size = 0.0
            groups[-1].append(layer)
            size += nbytes
        buckets = []
        for i, group in enumerate(groups):
            group = list(reversed(group))  # forward order inside a bucket
            params = [p for _, _, ps in group for p in ps]
            modules = list({id(m): m for p in params for m in owners[p]}.values())
            buckets.append(_Bucket(
                index=i, label="+".join(name for name, _, _ in group), params=params, modules=modules,
                buffer=torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device),
            ))
        return buckets

    # -- hooks --------------------------------------------------------------------
    def _make_hook(self, p: nn.Parameter):
        def hook(param: torch.Tensor) -> None:
            bucket = self.bucket_of[p]
            bucket.ready += 1
            if bucket.ready == len(bucket.params):
                self._launch(bucket)
            self.comm.progress()  # backend.progress=test: move reductions along during backward
        return hook

    def _make_pre_hook(self, bucket: _Bucket):
        def pre_hook(module, args) -> None:
            self.comm.progress()
            if bucket.job is not None:
                self._apply(bucket)
            self.scheduler.pump()  # a decision point: start what the credit now allows
        return pre_hook

    def _launch(self, bucket: _Bucket) -> None:
        self._flatten_into(bucket.buffer, [self._grad(p) for p in bucket.params])
        # urgency: the next forward meets the buckets in reverse of their (backward-order) index
        bucket.job = self.scheduler.submit(bucket.buffer, bucket.label, len(self.buckets) - bucket.index, self._step)
        bucket.ready = 0
        self._launched.append(bucket)

    def _complete(self, bucket: _Bucket) -> List[torch.Tensor]:
        """Wait for the bucket's reduction; its gradients then hold the global average."""
        self.scheduler.complete(bucket.job)
        bucket.job = None
        self._launched.remove(bucket)
        grads = [self._grad(p) for p in bucket.params]
        self._unflatten_from(bucket.buffer, grads)
        return grads

    def _apply(self, bucket: _Bucket) -> None:
        """Wait for the bucket's reduction and apply its layer-local update."""
        grad_step = bucket.job.step
        grads = self._complete(bucket)
        self._update(bucket.optimizer, f"update {bucket.label}", grad_step=grad_step)
        for g in grads:  # the next backward accumulates into clean gradients
            g.zero_()

    @staticmethod
    def _grad(p: nn.Parameter) -> torch.Tensor:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        return p.grad

    # -- the loop's calls -----------------------------------------------------------
    def synchronize(self) -> None:
        # A bucket still holding the previous step's gradient belongs to layers the
        # forward pass skipped (no pre-hook fired): apply it now, in launch order.
        for bucket in [b for b in self._launched if b.job.step < self._step]:
            self._apply(bucket)
        # A bucket whose parameters took no part in this loss never completed: reduce
        # its (zero) gradients now so every rank issues the same reductions.
        for bucket in self.buckets:
            if bucket.job is None:
                bucket.ready = 0
                self._launch(bucket)
        if self.cfg.wait_at == "step":
            for bucket in list(self._launched):
                self._complete(bucket)
        self.scheduler.pump()
        self._step += 1

    def step(self) -> None:
        if self.cfg.wait_at == "step":
            self._update(self.optimizer, grad_step=self._step - 1)
        # wait_at=forward: each layer is updated by its forward pre-hook next iteration

    def zero_grad(self) -> None:
        # Gradients in flight live in the bucket buffers, so p.grad is free to clear.
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def flush(self) -> None:
        for bucket in list(self._launched):
            self._apply(bucket)

    def optimizers(self):
        # wait_at=forward: the per-bucket optimizers hold the momentum; the global one only zero_grad/lr
        if self.cfg.wait_at == "forward":
            return [b.optimizer for b in self.buckets]
        return [self.optimizer]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["layer_step"] = self._step
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._step = int(state["layer_step"])

    def close(self) -> None:
        self.flush()
        for h in self._hooks:
            h.remove()
        self._hooks = []

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
        return info

"""torch DistributedDataParallel, the reference peer (gloo or NCCL only).

DDP reduces gradient buckets during backward and waits for them at its end,
so its communication wait is inside the measured backward time.

The stop flag keeps its own 1-element reduction here (no ``stop_slot``): DDP's
buckets are flat tensors of exactly the gradients' size, so carrying one more
element would take a Python comm hook that copies a whole bucket into a longer
tensor and back every step — more work than the tiny reduction it saves — and
would replace DDP's built-in C++ allreduce, which is the reference measured.
"""
from __future__ import annotations

from torch.nn.parallel import DistributedDataParallel

from .base import Strategy


class DDPStrategy(Strategy):
    name = "ddp"

    def attach(self, model, make_optimizer):
        super().attach(model, make_optimizer)
        device_ids = [self.comm.device] if self.comm.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(
            model, device_ids=device_ids, bucket_cap_mb=self.cfg.bucket_mb, broadcast_buffers=False
        )
        return self.ddp

    def synchronize(self) -> None:
        pass  # done inside backward by DDP's own hooks

"""torch.distributed communicator, one code path for gloo (CPU) and NCCL (GPU).

Rank, size and the rendezvous address come from the environment that torch's
elastic agent, torchrun or :mod:`asyncsgd.launch.external` set (env:// init).
"""
from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .base import CommTimeout, Communicator, DoneHandle, Handle


class _WorkHandle(Handle):
    def __init__(self, comm: "TorchDistCommunicator", work, tensor: torch.Tensor, average: bool):
        self.comm, self.work, self.tensor, self.average = comm, work, tensor, average
        self._done = False

    def track_completion(self) -> None:
        # gloo runs the reduction on its own threads; its future says when it ended. The callback
        # takes the GIL once per collective, so it is attached only when the timeline asks.
        self.work.get_future().add_done_callback(self._stamp)

    def _stamp(self, _future) -> None:
        self.completed_at = time.perf_counter()

    def is_completed(self) -> bool:
        return self._done or self.work.is_completed()

    def wait(self) -> torch.Tensor:
        if not self._done:
            try:
                self.work.wait(timeout=timedelta(seconds=self.comm.timeout_s))
            except RuntimeError as exc:
                raise CommTimeout(f"{self.comm.name} allreduce failed on rank {self.comm.rank}: {exc}") from exc
            self._done = True
            if self.average:
                # ReduceOp.AVG exists only on NCCL; sum-then-divide is the same math on both.
                self.tensor.div_(self.comm.size)
        return self.tensor


class TorchDistCommunicator(Communicator):
    def __init__(self, backend: str, timeout_s: float):
        super().__init__(timeout_s)
        self.name = backend
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise RuntimeError("backend=nccl needs a CUDA GPU, and torch.cuda.is_available() is False here")
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self._groups = [None]  # channel 0 is the default process group

    @property
    def channels(self) -> int:
        return len(self._groups)

    def open_channels(self, n: int) -> None:
        # A process group per extra channel: its own gloo context (own TCP connections, own
        # worker threads) or NCCL communicator (own stream), so its collectives never queue
        # behind another channel's.
        while len(self._groups) < n:
            self._groups.append(dist.new_group(list(range(self.size)), timeout=timedelta(seconds=self.timeout_s))
                                if self.size > 1 else None)

    def allreduce_async(self, tensor: torch.Tensor, average: bool = True, channel: int = 0) -> Handle:
        if self.size == 1:
            return DoneHandle(tensor)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self._groups[channel], async_op=True)
        return _WorkHandle(self, work, tensor, average)

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        if self.size > 1:
            dist.broadcast(tensor, src=root)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        if self.size == 1:
            return obj
        box = [obj if self.rank == root else None]
        dist.broadcast_object_list(box, src=root, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            # monitored_barrier carries a timeout and names the missing rank (gloo only).
            if self.name == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=self.timeout_s))
            else:
                dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def describe(self) -> dict:
        info = super().describe()
        info["torch"] = torch.__version__
        return info

"""MPI communicator (mpi4py) with a choice of who drives non-blocking reductions.

MPI's non-blocking collectives only move when something calls into MPI. Three
ways are offered (``backend.progress``):

- ``thread``: a dedicated communication thread runs the reductions one after the
  other with blocking calls, as the paper's Caffe code and Horovod do. The
  training thread only enqueues and later waits on an event.
- ``test``: ``MPI_Iallreduce`` from the training thread; strategies call
  :meth:`progress` from their hooks, which polls ``MPI_Test`` on every pending
  request.
- ``library``: ``MPI_Iallreduce`` and MPICH's own progress thread
  (``MPIR_CVAR_ASYNC_PROGRESS=1``, set before MPI starts; needs THREAD_MULTIPLE).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from .base import CommTimeout, Communicator, DoneHandle, Handle


def _buffer(tensor: torch.Tensor) -> np.ndarray:
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("MPI reductions need contiguous CPU tensors")
    return tensor.detach().numpy()


class _RequestHandle(Handle):
    """An MPI request driven by MPI_Test / MPI_Wait (progress=test or library)."""

    def __init__(self, comm: "MPICommunicator", request, tensor: torch.Tensor, average: bool):
        self.comm, self.request, self.tensor, self.average = comm, request, tensor, average
        self._done = False

    def is_completed(self) -> bool:
        if not self._done and self.request.Test():
            self._finish()
        return self._done

    def _finish(self) -> None:
        self.completed_at = time.perf_counter()  # as seen by polling: an upper bound
        self._done = True
        self.comm._pending.remove(self)
        if self.average:
            self.tensor.div_(self.comm.size)

    def wait(self) -> torch.Tensor:
        if not self._done:
            self.comm._wait_until(self.is_completed, "MPI allreduce")
        return self.tensor


class _ThreadHandle(Handle):
    """Work queued to the communication thread; completion is an event."""

    def __init__(self, comm: "MPICommunicator", fn: Callable[[], Any]):
        self.comm, self.fn = comm, fn
        self.event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # surfaced to the training thread in wait()
            self.error = exc
        finally:
            self.completed_at = time.perf_counter()
            self.event.set()

    def is_completed(self) -> bool:
        return self.event.is_set()

    def wait(self) -> Any:
        # Blocks on the event (no spinning): the core stays free for compute.
        if not self.event.wait(self.comm.timeout_s):
            raise CommTimeout(
                f"MPI collective did not complete within backend.timeout_s={self.comm.timeout_s:g}s "
                f"on rank {self.comm.rank} (a peer died or is stuck)"
            )
        if self.error is not None:
            raise self.error
        return self.result


class MPICommunicator(Communicator):
    name = "mpi"

    def __init__(self, timeout_s: float, progress: str = "thread"):
        super().__init__(timeout_s)
        if progress == "library":
            # Must be in the environment before MPI_Init; launcher=local sets it too.
            os.environ.setdefault("MPIR_CVAR_ASYNC_PROGRESS", "1")
        from mpi4py import MPI

        self.MPI = MPI
        self.progress_mode = progress
        if progress in ("thread", "library") and MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            raise RuntimeError(
                f"backend.progress={progress} needs an MPI library with MPI_THREAD_MULTIPLE; "
                "this one does not provide it (use backend.progress=test)"
            )
        # A private communicator keeps our collectives apart from any user code's.
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._pending: List[_RequestHandle] = []
        self._queue: "queue.Queue[Optional[_ThreadHandle]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        if progress == "thread":
            self._thread = threading.Thread(target=self._serve, name="asyncsgd-mpi-comm", daemon=True)
            self._thread.start()

    # -- communication thread -------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            item.run()

    def _submit(self, fn: Callable[[], Any]) -> _ThreadHandle:
        handle = _ThreadHandle(self, fn)
        self._queue.put(handle)
        return handle

    # -- collectives ------------------------------------------------------------
    def allreduce_async(self, tensor: torch.Tensor, average: bool = True) -> Handle:
        if self.size == 1:
            return DoneHandle(tensor)
        buf = _buffer(tensor)
        MPI = self.MPI
        if self._thread is not None:

            def reduce() -> torch.Tensor:
                self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                if average:
                    tensor.div_(self.size)
                return tensor

            return self._submit(reduce)
        handle = _RequestHandle(self, self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), tensor, average)
        self._pending.append(handle)
        return handle

    def progress(self) -> None:
        if self._pending:
            for handle in list(self._pending):
                handle.is_completed()

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        if self.size == 1:
            return
        buf = _buffer(tensor)
        self._blocking(lambda: self.comm.Ibcast(buf, root=root), lambda: self.comm.Bcast(buf, root=root), "MPI broadcast")

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        if self.size == 1:
            return obj
        if self._thread is not None:
            return self._submit(lambda: self.comm.bcast(obj, root=root)).wait()
        # Pickled broadcast has no non-blocking form: send the length, then the bytes.
        import pickle

        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        n = np.array([0 if data is None else data.size], dtype=np.int64)
        self._blocking(lambda: self.comm.Ibcast(n, root=root), None, "MPI broadcast")
        buf = data.copy() if data is not None else np.empty(int(n[0]), dtype=np.uint8)
        self._blocking(lambda: self.comm.Ibcast(buf, root=root), None, "MPI broadcast")
        return pickle.loads(buf.tobytes())

    def barrier(self) -> None:
        if self.size > 1:
            self._blocking(self.comm.Ibarrier, self.comm.Barrier, "MPI barrier")

    def _blocking(self, start_nonblocking, blocking, what: str) -> None:
        """Run a collective to completion, but never wait longer than timeout_s."""
        if self._thread is not None and blocking is not None:
            self._submit(blocking).wait()
            return
        request = start_nonblocking()
        self._wait_until(request.Test, what)

    def abort(self, code: int = 1) -> None:
        # MPI_Abort makes mpiexec end every rank; a plain exit would leave peers
        # spinning inside a collective forever.
        self.MPI.COMM_WORLD.Abort(code)

    def close(self) -> None:
        for handle in list(self._pending):
            handle.wait()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self.timeout_s)
            self._thread = None
        self.comm.Free()

    def describe(self) -> dict:
        info = super().describe()
        info["mpi_library"] = self.MPI.Get_library_version().splitlines()[0].strip()
        info["progress"] = self.progress_mode
        info["thread_level_multiple"] = self.MPI.Query_thread() == self.MPI.THREAD_MULTIPLE
        return info

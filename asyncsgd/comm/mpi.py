"""MPI communicator (mpi4py) with a choice of who drives non-blocking reductions.

MPI's non-blocking collectives only move when something calls into MPI. Three
ways are offered (``backend.progress``):

- ``thread`` (default): a dedicated communication thread, as in the paper's
  Caffe code and Horovod. The training thread only enqueues and later waits on
  an event. The thread starts ``MPI_Iallreduce`` for queued reductions (up to
  ``backend.max_inflight`` per channel, channel 0 first) and drives them with
  ``MPI_Test``, sleeping between polls with a short back-off. It never sits
  in a blocking MPI call, where MPICH may poll the network for the whole
  transfer: on a machine with one core per worker, such a thread competes
  with the compute it is meant to overlap.
- ``blocking``: one communication thread per channel, each running its
  channel's reductions one after the other as blocking ``MPI_Allreduce``
  calls on its own duplicated communicator (the paper's Caffe code with
  ``comm_threads``). mpi4py releases the GIL inside the call, so no Python
  runs while a reduction is in flight; channel 0's thread goes first (the
  others start nothing new while it has work). Measured on the emulated
  1 Gbit/s links (scripts/bench_reduction_cpu.py, docs/performance.md): a
  9.5 MB reduction overlapped with compute took 15.7 ms of CPU outside the
  training thread and slowed its compute by 37 ms, against 27.4 and 51 ms
  for the polled ``thread`` mode.
- ``test``: ``MPI_Iallreduce`` from the training thread; strategies call
  :meth:`progress` from their hooks, which polls ``MPI_Test`` on every pending
  request.
- ``library``: ``MPI_Iallreduce`` and MPICH's own progress thread
  (``MPIR_CVAR_ASYNC_PROGRESS=1``, set before MPI starts; needs THREAD_MULTIPLE).

``backend.progress=auto`` resolves to ``thread`` for layerwise and ``blocking`` for the
strategies that reduce one fused gradient per step (config.resolve_progress), and
then follows the layout: :meth:`suit_reductions` switches between the two when a
strategy lays out one reduction per step or many.

Channels (:meth:`open_channels`) are duplicated communicators: collectives are
ordered per communicator, so the communication thread may start channel 0's
reductions ahead of queued ones of other channels without any rank disagreeing
about the order within a channel.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional

import numpy as np
import torch

from . import priority
from .base import CommTimeout, Communicator, DoneHandle, Handle

# Back-off of the communication thread between MPI_Test polls while reductions are in
# flight: short enough that a socket buffer (hundreds of KB) never runs dry at 10 Gbit/s,
# long enough that the thread costs a few percent of a core, not the whole core.
POLL_MIN_S = 20e-6
POLL_MAX_S = 200e-6


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
    """Work for the communication thread; completion is an event the training thread waits on.

    Either a reduction (``tensor`` set: started non-blocking, polled) or a callable run to
    completion on the thread (broadcasts, barriers: rare, outside the training step).
    """

    def __init__(self, comm: "MPICommunicator", channel: int, fn: Optional[Callable[[], Any]] = None,
                 tensor: Optional[torch.Tensor] = None, average: bool = False):
        self.comm, self.channel, self.fn, self.tensor, self.average = comm, channel, fn, tensor, average
        self.request = None
        self.event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        MPI = self.comm.MPI
        self.request = self.comm.comms[self.channel].Iallreduce(MPI.IN_PLACE, _buffer(self.tensor), op=MPI.SUM)

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # surfaced to the training thread in wait()
            self.error = exc
        self.done()

    def done(self) -> None:
        if self.tensor is not None and self.error is None:
            if self.average:
                self.tensor.div_(self.comm.size)
            self.result = self.tensor
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

    def __init__(self, timeout_s: float, progress: str = "thread", max_inflight: int = 2, adaptive: bool = False):
        super().__init__(timeout_s)
        if progress == "library":
            # Must be in the environment before MPI_Init; launcher=local sets it too.
            os.environ.setdefault("MPIR_CVAR_ASYNC_PROGRESS", "1")
        from mpi4py import MPI

        self.MPI = MPI
        self.progress_mode = progress
        self.max_inflight = max_inflight
        # backend.progress=auto: the mode follows the number of reductions per step (suit_reductions)
        self.adaptive = adaptive
        if progress in ("thread", "blocking", "library") and MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            raise RuntimeError(
                f"backend.progress={progress} needs an MPI library with MPI_THREAD_MULTIPLE; "
                "this one does not provide it (use backend.progress=test)"
            )
        # A private communicator keeps our collectives apart from any user code's.
        self.comm = MPI.COMM_WORLD.Dup()
        self.comms = [self.comm]  # one per channel
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._pending: List[_RequestHandle] = []
        self._queue: "queue.Queue[Optional[_ThreadHandle]]" = queue.Queue()
        self._threads: List[threading.Thread] = []
        self._threaded = progress in ("thread", "blocking")
        # progress=blocking: one queue per channel; channel 0's unfinished tasks are its work
        self._channel_queues: List["queue.Queue[Optional[_ThreadHandle]]"] = []
        # communication threads started later (a switch of progress mode) keep the priority threads
        # have now, even after the training thread has lowered its own (backend.compute_nice)
        self._spawner = priority.Spawner("asyncsgd-mpi-spawner")
        self._start_threads()

    def suit_reductions(self, per_step: int) -> None:
        """progress=auto: ``blocking`` for one reduction per step, ``thread`` for more (the rule of
        :meth:`MPIBackendConfig.resolve_progress`, applied to the layout a strategy has now)."""
        mode = "blocking" if per_step <= 1 else "thread"
        if not self.adaptive or mode == self.progress_mode:
            return
        # Nothing is in flight (the caller's contract): the old threads finish at once, and every
        # rank switches at the same step, so each channel's collectives keep one order.
        self._stop_threads()
        self.progress_mode = mode
        self._start_threads()

    def _start_threads(self) -> None:
        if self.progress_mode == "thread":
            self._threads.append(threading.Thread(target=self._serve, name="asyncsgd-mpi-comm", daemon=True))
            self._spawner.start(self._threads[0])
        elif self.progress_mode == "blocking":
            for channel in range(len(self.comms)):
                self._start_channel_thread(channel)

    def _stop_threads(self) -> None:
        if not self._threads:
            return
        if self.progress_mode == "thread":
            self._queue.put(None)
        for jobs in self._channel_queues:
            jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout_s)
        self._threads, self._channel_queues = [], []

    # -- channels ---------------------------------------------------------------
    @property
    def channels(self) -> int:
        return len(self.comms)

    def open_channels(self, n: int) -> None:
        while len(self.comms) < n:
            if self._threaded:  # MPI calls on a communicator stay on the thread that drives it
                self.comms.append(self._submit(0, fn=self.comm.Dup).wait())
            else:
                self.comms.append(self.comm.Dup())
            if self.progress_mode == "blocking":
                self._start_channel_thread(len(self.comms) - 1)

    def _start_channel_thread(self, channel: int) -> None:
        self._channel_queues.append(queue.Queue())
        thread = threading.Thread(target=self._serve_blocking, args=(channel, self._channel_queues[channel]),
                                  name=f"asyncsgd-mpi-comm-{channel}", daemon=True)
        self._threads.append(thread)
        self._spawner.start(thread)

    # -- communication thread -------------------------------------------------
    def _serve(self) -> None:
        waiting: List[Deque[_ThreadHandle]] = []  # per channel: queued, not started
        active: List[List[_ThreadHandle]] = []  # per channel: started, not complete
        pause = POLL_MIN_S
        while True:
            busy = any(active) or any(waiting)
            try:
                item = self._queue.get(block=not busy)
            except queue.Empty:
                item = False
            while item is not False:
                if item is None:  # close(): the training thread no longer waits for anything
                    return
                while len(waiting) <= item.channel:
                    waiting.append(deque())
                    active.append([])
                if item.fn is not None:
                    # A blocking collective: every reduction queued before it on its channel
                    # must be started first, so that every rank issues them in the same order.
                    while waiting[item.channel]:
                        self._start(waiting[item.channel].popleft(), active)
                    item.run()
                else:
                    waiting[item.channel].append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = False
            progressed = False
            for channel, queued in enumerate(waiting):
                # channel 0 first: the next channel starts only while the ones before it are idle
                while queued and len(active[channel]) < self.max_inflight:
                    self._start(queued.popleft(), active)
                    progressed = True
                if active[channel] or queued:
                    break
            for running in active:
                for handle in [h for h in running if self._test(h)]:
                    running.remove(handle)
                    handle.done()
                    progressed = True
            if progressed:
                pause = POLL_MIN_S
            elif any(active):
                time.sleep(pause)
                pause = min(2 * pause, POLL_MAX_S)

    def _serve_blocking(self, channel: int, jobs: "queue.Queue[Optional[_ThreadHandle]]") -> None:
        """progress=blocking: this channel's collectives in order, each one blocking MPI call."""
        MPI = self.MPI
        while True:
            item = jobs.get()
            if item is None:  # close()
                jobs.task_done()
                return
            if channel > 0:
                # channel 0 first: nothing new starts here while it has work (as in progress=thread)
                self._channel_queues[0].join()
            if item.fn is not None:
                item.run()
            else:
                try:
                    self.comms[channel].Allreduce(MPI.IN_PLACE, _buffer(item.tensor), op=MPI.SUM)
                except BaseException as exc:  # surfaced to the training thread in wait()
                    item.error = exc
                item.done()
            jobs.task_done()

    def _start(self, handle: _ThreadHandle, active: List[List[_ThreadHandle]]) -> None:
        try:
            handle.start()
            active[handle.channel].append(handle)
        except BaseException as exc:
            handle.error = exc
            handle.done()

    @staticmethod
    def _test(handle: _ThreadHandle) -> bool:
        try:
            return bool(handle.request.Test())
        except BaseException as exc:
            handle.error = exc
            return True

    def _submit(self, channel: int, fn: Optional[Callable[[], Any]] = None, tensor: Optional[torch.Tensor] = None,
                average: bool = False) -> _ThreadHandle:
        handle = _ThreadHandle(self, channel, fn=fn, tensor=tensor, average=average)
        (self._channel_queues[channel] if self.progress_mode == "blocking" else self._queue).put(handle)
        return handle

    # -- collectives ------------------------------------------------------------
    def allreduce_async(self, tensor: torch.Tensor, average: bool = True, channel: int = 0) -> Handle:
        if self.size == 1:
            return DoneHandle(tensor)
        if self._threaded:
            _buffer(tensor)  # refuse a bad tensor here, not on the thread
            return self._submit(channel, tensor=tensor, average=average)
        MPI = self.MPI
        request = self.comms[channel].Iallreduce(MPI.IN_PLACE, _buffer(tensor), op=MPI.SUM)
        handle = _RequestHandle(self, request, tensor, average)
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
        if self._threaded:
            return self._submit(0, fn=lambda: self.comm.bcast(obj, root=root)).wait()
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
        if self._threaded and blocking is not None:
            self._submit(0, fn=blocking).wait()
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
        self._stop_threads()
        self._spawner.close()
        for comm in self.comms:
            comm.Free()

    def describe(self) -> dict:
        info = super().describe()
        info["mpi_library"] = self.MPI.Get_library_version().splitlines()[0].strip()
        info["progress"] = self.progress_mode  # at the end of the run (progress=auto may have switched)
        info["progress_auto"] = self.adaptive
        info["max_inflight"] = self.max_inflight
        info["thread_level_multiple"] = self.MPI.Query_thread() == self.MPI.THREAD_MULTIPLE
        if priority.supported():  # the communication threads running now (started by the spawner)
            info["comm_threads_nice"] = [priority.thread_nice(t.native_id) for t in self._threads if t.is_alive()]
        return info

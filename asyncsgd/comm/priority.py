"""The training thread yields the CPU to the backend's threads (``backend.compute_nice``).

With one core per worker, a reduction's CPU work (gloo's worker threads, MPI's
communication thread) runs on the core the training thread computes on. The
scheduler shares that core fairly, so a backend thread woken by arriving data
may wait while the compute finishes its slice, and the link idles meanwhile:
overlapped, a reduction runs slower than alone (docs/performance.md, "The cost
of overlap"). Raising the training thread's nice value (lowering its priority,
which needs no privilege) lets the backend's threads preempt it whenever they
have work, as a dedicated progress core would, and costs the compute only the
CPU those threads really use.

Linux sets nice per thread, and a new thread inherits its creator's. So the
training thread lowers its own priority only after the backend's threads exist
(gloo creates them with each process group), and a backend that starts threads
later starts them from a :class:`Spawner` made before, which still has the
process's priority (MPI's communication threads, restarted when
``backend.progress=auto`` follows the layout).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

MAX_NICE = 19


def supported() -> bool:
    """Per-thread nice values: Linux (setpriority on a thread id). Elsewhere it would renice the
    whole process, backend threads included, which gains nothing."""
    return sys.platform.startswith("linux")


def thread_nice(tid: Optional[int] = None) -> int:
    """The nice value of thread ``tid`` (default: the calling thread)."""
    return os.getpriority(os.PRIO_PROCESS, tid if tid is not None else threading.get_native_id())


def lower_own_priority(increment: int) -> int:
    """Add ``increment`` (>= 0) to the calling thread's nice value, at most 19; returns the new value."""
    if increment < 0:
        raise ValueError(f"a thread may only lower its own priority (increment {increment} < 0)")
    tid = threading.get_native_id()
    value = min(MAX_NICE, thread_nice(tid) + increment)
    os.setpriority(os.PRIO_PROCESS, tid, value)
    return value


def threads_nice() -> Dict[int, int]:
    """Thread id -> nice value, for every thread of this process (from /proc; empty where absent)."""
    out: Dict[int, int] = {}
    for task in Path("/proc/self/task").glob("*"):
        try:
            # field 19 of stat is nice; the command name (field 2) may hold spaces, so split after it
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            out[int(task.name)] = int(fields[16])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


def yield_to_backend(increment: int) -> dict:
    """Lower the calling (training) thread's priority by ``increment``; what was done, for summary.json:
    the training thread's nice value and those of the process's other threads (the backend's)."""
    if increment == 0:
        return {"compute_nice": 0}
    if not supported():
        return {"compute_nice": 0, "not_applied": f"per-thread priorities are Linux-only ({sys.platform})"}
    before = thread_nice()
    value = lower_own_priority(increment)
    me = threading.get_native_id()
    others: List[int] = sorted(set(v for tid, v in threads_nice().items() if tid != me))
    return {"compute_nice": value - before, "base_nice": before, "training_thread_nice": value,
            "other_threads_nice": others}


class Spawner:
    """Starts threads with the priority of the thread that made it (see the module's docstring)."""

    def __init__(self, name: str = "asyncsgd-spawner"):
        self._requests: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            thread, started, failed = request
            try:
                thread.start()
            except Exception as exc:  # handed to the caller; the spawner serves on
                failed.append(exc)
            started.set()

    def start(self, thread: threading.Thread) -> None:
        """Start ``thread`` from the spawner; returns once it has started."""
        if self._closed:
            raise RuntimeError("the spawner is closed: no thread can be started from it")
        started, failed = threading.Event(), []
        self._requests.put((thread, started, failed))
        while not started.wait(0.5):  # never wait on a spawner that is gone
            if not self._thread.is_alive():
                raise RuntimeError("the spawner thread ended before it started the thread")
        if failed:
            raise failed[0]

    def close(self) -> None:
        self._closed = True
        self._requests.put(None)

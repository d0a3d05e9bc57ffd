"""A Chrome-trace timeline (open in Perfetto or chrome://tracing) of a few steps.

Per rank, three tracks: per-layer forward and backward spans ("compute"), each
reduction from the moment it was started to the moment the backend saw it
finish ("communication"), and the training thread's waits and updates
("waits"). If the communication spans sit under compute spans, the overlap is
real; if they sit under waits, the training thread paid for them.

Backward spans are drawn between consecutive "gradient ready" moments of
layers (post-accumulate-grad hooks): robust for any model, including in-place
activations that module backward hooks cannot handle.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import List, Optional

from torch import nn

from .io import atomic_write_json, read_json

COMPUTE, COMM, WAITS = 0, 1, 2
_NOTHING = nullcontext()
TRACK_NAMES = {COMPUTE: "compute (per layer)", COMM: "communication (reductions)", WAITS: "training thread waits/updates"}


class Timeline:
    def __init__(self, rank: int, first_step: int, steps: int, enabled: bool):
        self.rank, self.first_step, self.last_step, self.enabled = rank, first_step, first_step + steps, enabled
        self.active = False
        self.step = 0
        self.events: List[dict] = []
        # (name, handle, started_at, nbytes, step, grad_step, channel, seconds the start call took)
        self._pending_comm: List[tuple] = []
        self._backward_mark: Optional[float] = None
        self._hooks: list = []
        self.origin = time.perf_counter()

    # ------------------------------------------------------------------ recording
    def set_step(self, step: int) -> None:
        self._collect_comm()
        self.active = self.enabled and self.first_step <= step < self.last_step
        self._backward_mark = None
        self.step = step

    def span(self, name: str, track: int, start: float, end: float, **args) -> None:
        if self.active:
            self.events.append({
                "name": name, "ph": "X", "pid": self.rank, "tid": track,
                "ts": (start - self.origin) * 1e6, "dur": max(end - start, 0.0) * 1e6,
                "args": {"step": self.step, **args},
            })

    def region(self, name: str, track: int = WAITS, **args):
        """``with timeline.region(name):`` draws the block as a span (nothing outside the recorded steps)."""
        if not self.active:  # every wait and update passes here: cost nothing when not recording
            return _NOTHING
        return self._region(name, track, **args)

    @contextmanager
    def _region(self, name: str, track: int, **args):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.span(name, track, start, time.perf_counter(), **args)

    def reduction(self, name: str, handle, started_at: float, nbytes: int, grad_step: Optional[int] = None,
                  channel: int = 0) -> None:
        """A reduction (of the gradient of ``grad_step``, on ``channel``) started at ``started_at``;
        drawn once its handle knows when it ended."""
        if self.active:
            issue = time.perf_counter() - started_at  # the training thread's time handing it to the backend
            handle.track_completion()
            grad_step = self.step if grad_step is None else grad_step
            self._pending_comm.append((name, handle, started_at, nbytes, self.step, grad_step, channel, issue))

    def _collect_comm(self, force: bool = False) -> None:
        still = []
        for pending in self._pending_comm:
            name, handle, start, nbytes, step, grad_step, channel, issue = pending
            end = handle.completed_at
            if end is None and not force:
                still.append(pending)
                continue
            end = end if end is not None else time.perf_counter()
            self.events.append({
                "name": name, "ph": "X", "pid": self.rank, "tid": COMM,
                "ts": (start - self.origin) * 1e6, "dur": max(end - start, 0.0) * 1e6,
                "args": {"step": step, "grad_step": grad_step, "bytes": nbytes, "channel": channel,
                         "issue_us": round(issue * 1e6, 1)},
            })
        self._pending_comm = still

    def backward_started(self) -> None:
        self._backward_mark = time.perf_counter()

    def grad_ready(self, layer: str) -> None:
        """A layer's gradient is complete: its backward span ends now."""
        now = time.perf_counter()
        if self._backward_mark is not None:
            self.span(f"backward {layer}", COMPUTE, self._backward_mark, now)
        self._backward_mark = now

    # ------------------------------------------------------------------ hooks
    def watch(self, model: nn.Module) -> None:
        """Per-layer forward spans and gradient-ready marks for every module with parameters.

        Steps are counted by the model's own training-mode forward calls, so the
        training loop needs no timeline calls of its own.
        """
        if not self.enabled:
            return
        self.step = -1

        def new_step(m, args):
            if m.training:
                self.set_step(self.step + 1)

        def forward_done(m, args, out):
            if m.training:
                self.backward_started()  # the loss is computed next, then backward begins

        self._hooks.append(model.register_forward_pre_hook(new_step))
        self._hooks.append(model.register_forward_hook(forward_done))
        for name, module in model.named_modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            label = f"{name or 'model'} ({type(module).__name__})"
            starts: dict = {}
            self._hooks.append(module.register_forward_pre_hook(
                lambda m, args, s=starts: s.__setitem__("t", time.perf_counter())))
            self._hooks.append(module.register_forward_hook(
                lambda m, args, out, s=starts, lab=label: self.span(f"forward {lab}", COMPUTE, s["t"], time.perf_counter())))
            last = params[-1]  # the layer is done when its last parameter's gradient is
            self._hooks.append(last.register_post_accumulate_grad_hook(lambda p, lab=label: self.grad_ready(lab)))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._collect_comm(force=True)

    # ------------------------------------------------------------------ output
    def trace_events(self) -> List[dict]:
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank, "args": {"name": f"rank {self.rank}"}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": self.rank, "tid": tid, "args": {"name": label}}
                 for tid, label in TRACK_NAMES.items()]
        return meta + self.events


def trace_path(run_dir: Path) -> Path:
    """Where a run's timeline is: ``timeline.json`` in its run directory."""
    return Path(run_dir) / "timeline.json"


def write_trace(path: Path, events: List[dict]) -> None:
    atomic_write_json(path, {"traceEvents": events, "displayTimeUnit": "ms"})


class TraceError(ValueError):
    """A run directory has no readable timeline.json."""


def read_trace(run_dir: Path, needs: str = "timeline=true") -> List[dict]:
    """The events of the trace :func:`write_trace` wrote in ``run_dir``; :class:`TraceError` (one
    line, saying to run with ``needs``) when there is none or it is not such a trace."""
    path = trace_path(run_dir)
    if not path.is_file():
        raise TraceError(f"{run_dir}: no timeline.json; run with {needs}")
    try:
        return list(read_json(path)["traceEvents"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TraceError(f"{path}: not a Chrome trace written by asyncsgd ({exc})") from None

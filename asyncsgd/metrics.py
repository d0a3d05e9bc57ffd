"""Per-iteration timing and the metrics file, kept out of the training loop's way.

:class:`PhaseTimer` measures *exclusive* time per phase: when a strategy's hook
waits for a reduction inside the forward pass, that time is booked as
``comm_wait`` and not as ``forward``. :class:`MetricsLog` keeps the rows and
rewrites ``metrics.csv`` atomically now and then (rank 0 only).
"""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

from .io import atomic_write

PHASES = ("data", "forward", "backward", "comm_wait", "update")

COLUMNS = [
    "kind",  # "iter" (one training step), "epoch" (end of an epoch) or "eval" (a test evaluation within one)
    "step", "epoch", "loss", "lr",
    "t_data", "t_forward", "t_backward", "t_comm_wait", "t_update", "t_iter",  # seconds
    "samples_per_s",
    "skipped_updates",  # updates skipped so far for a non-finite gradient (train.nonfinite=skip)
    "train_loss", "train_acc", "test_loss", "test_acc",
    "wall_s",  # seconds since training started
    "eval_s",  # of wall_s, seconds spent evaluating on the test set so far (training time = wall_s - eval_s)
]


# phases booked between steps that the next step owns (PhaseTimer.start)
CARRIED_PHASES = ("comm_wait",)


class PhaseTimer:
    """Exclusive wall time per phase; phases nest (the inner one pauses the outer)."""

    def __init__(self) -> None:
        self.totals: Dict[str, float] = {}
        self._stack: List[List] = []  # [name, started_at]
        self._phases: Dict[str, _Phase] = {}

    def phase(self, name: str) -> "_Phase":
        """``with timer.phase(name):`` books the block's time to ``name``."""
        phase = self._phases.get(name)
        if phase is None:
            phase = self._phases[name] = _Phase(self, name)
        return phase

    def start(self) -> float:
        """Begin a step; returns when it began, for its iteration time.

        A wait for reductions booked between steps (a flush before an evaluation, the epoch's
        bookkeeping allreduce queued behind delayed-k's reduction in flight) is the wait this step
        would otherwise have made itself: it is booked to this step, whose start moves back by it.
        Left out, a delayed-k run over 8-step epochs hid one reduction in eight from its mean
        iteration time (755 ms against 860). Anything else booked between steps is forgotten."""
        carried = {name: t for name, t in self.totals.items() if name in CARRIED_PHASES}
        self.totals = carried
        return time.perf_counter() - sum(carried.values())

    def pop(self) -> Dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals


class _Phase:
    """The context manager of one phase name, reused: entered several times a step, so a
    plain class (less than half the cost of a generator-based contextmanager)."""

    __slots__ = ("timer", "name")

    def __init__(self, timer: PhaseTimer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        timer, now = self.timer, time.perf_counter()
        if timer._stack:
            outer = timer._stack[-1]
            timer.totals[outer[0]] = timer.totals.get(outer[0], 0.0) + now - outer[1]
        timer._stack.append([self.name, now])

    def __exit__(self, *exc) -> bool:
        timer, end = self.timer, time.perf_counter()
        timer.totals[self.name] = timer.totals.get(self.name, 0.0) + end - timer._stack.pop()[1]
        if timer._stack:
            timer._stack[-1][1] = end  # the outer phase resumes now
        return False


class MetricsLog:
    """Rows of metrics.csv; only the writer rank touches the file."""

    def __init__(self, path: Optional[Path], flush_every_s: float = 30.0):
        self.path = path
        self.rows: List[dict] = []
        self.iter_times: List[float] = []
        # the epoch-end and evaluation rows again: judged at every epoch end, where a scan of
        # every row would cost O(steps) each time (3.8% of a 20,000-step digits run)
        self._scored: List[dict] = []
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()  # of the last write (or of the start)
        self._written = False

    def iteration(self, step: int, epoch: int, loss: float, lr: float, times: Dict[str, float],
                  t_iter: float, samples: int, wall_s: float, keep_row: bool = True, skipped: int = 0,
                  eval_s: float = 0.0) -> None:
        self.iter_times.append(t_iter)
        if not keep_row:
            return
        row = {"kind": "iter", "step": step, "epoch": epoch, "loss": loss, "lr": lr,
               "t_iter": t_iter, "samples_per_s": samples / t_iter if t_iter > 0 else None, "wall_s": wall_s,
               "skipped_updates": skipped, "eval_s": eval_s}
        for p in PHASES:
            row[f"t_{p}"] = times.get(p, 0.0)
        self.rows.append(row)
        self._flush_if_due()

    def epoch(self, step: int, epoch: int, wall_s: float, kind: str = "epoch", **values: float) -> None:
        """An end-of-epoch row (``kind="epoch"``) or a test evaluation within an epoch (``kind="eval"``)."""
        row = {"kind": kind, "step": step, "epoch": epoch, "wall_s": wall_s, **values}
        self.rows.append(row)
        self._scored.append(row)
        self._flush_if_due(first=True)

    def restore(self, rows: List[dict], iter_times: List[float]) -> None:
        """The rows and step times of a resumed run, as its checkpoint holds them."""
        self.rows, self.iter_times = list(rows), list(iter_times)
        self._scored = [r for r in self.rows if r["kind"] != "iter"]

    def _flush_if_due(self, first: bool = False) -> None:
        """Rewrite the file every ``flush_every_s`` (or, with ``first``, if it was never written).

        Each write rewrites every row (atomically), so writing at every epoch end would cost
        O(rows) each time: 33 ms per epoch after 1,500 rows, more than the epoch's own steps
        for small models. The last rows are written by :meth:`flush` at the end."""
        if self.path is None:
            return
        if (first and not self._written) or time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if self.path is None:
            return

        def write(f):
            w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
            w.writeheader()
            w.writerows(self.rows)

        atomic_write(self.path, write)
        self._last_flush = time.monotonic()
        self._written = True

    def median_iter_s(self, warmup: int) -> Optional[float]:
        """Median step time leaving out the first ``warmup`` steps (unless that leaves none)."""
        times = self.iter_times[warmup:] or self.iter_times
        return statistics.median(times) if times else None

    def epoch_rows(self) -> List[dict]:
        return [r for r in self._scored if r["kind"] == "epoch"]

    def evaluation_rows(self) -> List[dict]:
        """Every row with a test evaluation (end of epoch or within one), in step order."""
        return [r for r in self._scored if r.get("test_acc") is not None]

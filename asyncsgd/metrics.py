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
from contextlib import contextmanager
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


class PhaseTimer:
    """Exclusive wall time per phase; phases nest (the inner one pauses the outer)."""

    def __init__(self) -> None:
        self.totals: Dict[str, float] = {}
        self._stack: List[List] = []  # [name, started_at]

    @contextmanager
    def phase(self, name: str):
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self.totals[outer[0]] = self.totals.get(outer[0], 0.0) + now - outer[1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            self.totals[name] = self.totals.get(name, 0.0) + end - self._stack.pop()[1]
            if self._stack:
                self._stack[-1][1] = end  # the outer phase resumes now

    def start(self) -> float:
        """Begin a step: forget time booked outside steps (e.g. an epoch-end flush); returns now."""
        self.totals = {}
        return time.perf_counter()

    def pop(self) -> Dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals


class MetricsLog:
    """Rows of metrics.csv; only the writer rank touches the file."""

    def __init__(self, path: Optional[Path], flush_every_s: float = 30.0):
        self.path = path
        self.rows: List[dict] = []
        self.iter_times: List[float] = []
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()

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
        if self.path is not None and time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def epoch(self, step: int, epoch: int, wall_s: float, kind: str = "epoch", **values: float) -> None:
        """An end-of-epoch row (``kind="epoch"``) or a test evaluation within an epoch (``kind="eval"``)."""
        self.rows.append({"kind": kind, "step": step, "epoch": epoch, "wall_s": wall_s, **values})
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

    def median_iter_s(self, warmup: int) -> Optional[float]:
        """Median step time leaving out the first ``warmup`` steps (unless that leaves none)."""
        times = self.iter_times[warmup:] or self.iter_times
        return statistics.median(times) if times else None

    def epoch_rows(self) -> List[dict]:
        return [r for r in self.rows if r["kind"] == "epoch"]

    def evaluation_rows(self) -> List[dict]:
        """Every row with a test evaluation (end of epoch or within one), in step order."""
        return [r for r in self.rows if r["kind"] in ("epoch", "eval") and r.get("test_acc") is not None]

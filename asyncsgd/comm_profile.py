"""Where a run's communication time goes, collective by collective, from its ``timeline.json``.

Per reduction of the recorded steps (one rank's trace; medians over the steps):

- its bytes and channel, and when it started, from the start of the step whose gradient it carries;
- ``issue``: the training thread's time handing it to the backend (the start call);
- ``in flight``: from its start until the backend saw it end (queued behind others included);
- ``wait`` and ``update``: the training thread's time waiting for it and applying it.

Per step: the iteration, the compute (the per-layer forward and backward spans), waits, updates,
and the link: ``busy``, the time at least one reduction was in flight (the union of their spans),
and the gaps when none was, each with the reduction whose end opened it and the one whose start
closed it. A gap is time the link had nothing to carry however fast it was; ``busy`` is an upper
bound of the link's work (a reduction queued behind another counts as in flight).

    python -m asyncsgd.comm_profile RUN_DIR [--rank R] [--out FILE.md]

The run must have been made with ``timeline=true`` (asyncsgd-bench records it where it is asked:
``asyncsgd-bench ... timeline=true timeline_steps=10``).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from .io import atomic_write_text
from .timeline import COMM, COMPUTE, WAITS, TraceError, read_trace, trace_path


class ProfileInputError(ValueError):
    """The run has no usable timeline."""


def _label(name: str, prefix: str) -> Optional[str]:
    return name[len(prefix):] if name.startswith(prefix) else None


def load_events(run_dir: Path, rank: int = 0) -> List[dict]:
    """Rank ``rank``'s spans of the run's timeline."""
    try:
        events = read_trace(run_dir)
    except TraceError as exc:
        raise ProfileInputError(str(exc)) from None
    spans = [e for e in events if e.get("ph") == "X" and e.get("pid") == rank]
    if not spans:
        raise ProfileInputError(f"{trace_path(run_dir)}: no spans of rank {rank}")
    return spans


def step_starts(spans: List[dict]) -> Dict[int, float]:
    """Step -> the start of its first compute span (us)."""
    starts: Dict[int, float] = {}
    for e in spans:
        if e["tid"] == COMPUTE:
            s = e["args"]["step"]
            starts[s] = min(starts.get(s, e["ts"]), e["ts"])
    return starts


def collectives(spans: List[dict]) -> pd.DataFrame:
    """One row per reduction of a step recorded whole, with the training thread's wait and update for it:
    the first ``wait``/``update`` spans of its label after it started (in its own step with wait_at=step,
    the next with wait_at=forward or delayed-k)."""
    starts = step_starts(spans)
    steps = sorted(starts)
    complete = set(steps[:-1])  # its wait may be in the next step: that one must be recorded too
    after: Dict[str, Dict[str, List[Tuple[float, float]]]] = {"wait ": defaultdict(list), "update ": defaultdict(list)}
    for e in spans:
        if e["tid"] == WAITS:
            for prefix, into in after.items():
                label = _label(e["name"], prefix)
                if label is not None:
                    # delayed-k: "update with gradient of step N" applies the reduction "step N"
                    into[label.removeprefix("with gradient of ")].append((e["ts"], e["dur"] / 1e3))
    for into in after.values():
        for v in into.values():
            v.sort()

    def between(prefix: str, label: str, ts: float, until: float) -> float:
        """Total of the ``prefix label`` spans between the reduction's start and its label's next start."""
        return sum(d for t, d in after[prefix].get(label, []) if ts <= t < until)

    comm = sorted((e for e in spans if e["tid"] == COMM), key=lambda e: e["ts"])
    next_start: Dict[int, float] = {}
    last: Dict[str, int] = {}
    for i, e in enumerate(comm):
        label = _label(e["name"], "allreduce ") or e["name"]
        if label in last:
            next_start[last[label]] = e["ts"]
        last[label] = i
    rows = []
    for i, e in enumerate(comm):
        g = e["args"].get("grad_step", e["args"]["step"])
        if g not in complete or g not in starts:
            continue
        label = _label(e["name"], "allreduce ") or e["name"]
        until = next_start.get(i, float("inf"))
        rows.append({
            "collective": label, "grad_step": g, "bytes": e["args"].get("bytes", 0),
            "channel": e["args"].get("channel", 0),
            "start_ms": (e["ts"] - starts[g]) / 1e3,
            "issue_ms": e["args"].get("issue_us", float("nan")) / 1e3,
            "in_flight_ms": e["dur"] / 1e3,
            "end_ms": (e["ts"] + e["dur"] - starts[g]) / 1e3,
            "wait_ms": between("wait ", label, e["ts"], until),
            "update_ms": between("update ", label, e["ts"], until),
        })
    if not rows:
        raise ProfileInputError("no reduction of a step recorded whole (the run needs timeline_steps >= 2 and "
                                "a strategy that communicates)")
    return pd.DataFrame(rows)


def _generic(label: str) -> str:
    """delayed-k names each step's reduction by its step: one name for all of them."""
    return re.sub(r"^step \d+$", "step's gradient", label)


def per_collective(table: pd.DataFrame) -> pd.DataFrame:
    """Medians over steps, per collective, in the order they started."""
    cols = ["start_ms", "issue_ms", "in_flight_ms", "end_ms", "wait_ms", "update_ms"]
    table = table.assign(collective=table["collective"].map(_generic))
    out = table.groupby("collective", sort=False).agg(
        bytes=("bytes", "first"), channel=("channel", "first"), steps=("grad_step", "nunique"),
        **{c: (c, "median") for c in cols})
    return out.sort_values("start_ms").reset_index()


def link_gaps(spans: List[dict]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Per step (between consecutive step starts): iteration, compute, waits, updates, the link's busy
    time and gaps; and every gap with the reductions around it."""
    starts = step_starts(spans)
    steps = sorted(starts)
    comm = sorted((e["ts"], e["ts"] + e["dur"], _label(e["name"], "allreduce ") or e["name"])
                  for e in spans if e["tid"] == COMM)
    step_rows, gap_rows = [], []
    compute_spans: Dict[int, List[Tuple[float, float]]] = defaultdict(list)
    for e in spans:
        if e["tid"] == COMPUTE:
            compute_spans[e["args"]["step"]].append((e["ts"], e["ts"] + e["dur"]))
    waits = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["tid"] == WAITS]
    # the first recorded step is left out: reductions started before the recording may still be in flight
    for s, nxt in zip(steps[1:], steps[2:]):
        lo, hi = starts[s], starts[nxt]
        inside = [(max(a, lo), min(b, hi), name) for a, b, name in comm if b > lo and a < hi]
        busy, gaps = 0.0, []
        cur: Optional[list] = None
        for a, b, name in sorted(inside):
            if cur is None or a > cur[1]:
                if cur is not None:
                    busy += cur[1] - cur[0]
                    gaps.append((cur[1], a, cur[2], name))
                elif a > lo:
                    gaps.append((lo, a, "(step start)", name))
                cur = [a, b, name]
            elif b >= cur[1]:
                cur[1], cur[2] = b, name
        if cur is not None:
            busy += cur[1] - cur[0]
            if cur[1] < hi:
                gaps.append((cur[1], hi, cur[2], "(next step)"))
        else:
            gaps.append((lo, hi, "(step start)", "(next step)"))

        def total(track: int, prefix: str = "") -> float:
            return sum(e["dur"] for e in spans if e["tid"] == track and e["args"]["step"] == s
                       and e["name"].startswith(prefix)) / 1e3

        # waits and updates in a forward pre-hook lie inside that layer's forward span: not compute
        inside_compute = sum(max(0.0, min(b, c1) - max(a, c0)) for a, b in waits if lo <= a < hi
                             for c0, c1 in compute_spans.get(s, []))
        step_rows.append({"step": s, "iteration_ms": (hi - lo) / 1e3,
                          "compute_ms": total(COMPUTE) - inside_compute / 1e3,
                          "wait_ms": total(WAITS, "wait"), "update_ms": total(WAITS, "update"),
                          "link_busy_ms": busy / 1e3, "link_idle_ms": (hi - lo - busy) / 1e3})
        gap_rows += [{"step": s, "from_ms": (a - lo) / 1e3, "ms": (b - a) / 1e3, "after": _generic(before),
                      "until": _generic(after)}
                     for a, b, before, after in gaps]
    if not step_rows:
        raise ProfileInputError("fewer than three recorded steps: nothing to measure a whole step by")
    return pd.DataFrame(step_rows), pd.DataFrame(gap_rows, columns=["step", "from_ms", "ms", "after", "until"])


def render(run_dir: Path, rank: int = 0) -> str:
    spans = load_events(run_dir, rank)
    table = per_collective(collectives(spans))
    steps, gaps = link_gaps(spans)
    med = steps.drop(columns="step").median()
    lines = [f"# Collectives of {run_dir} (rank {rank}, {len(steps)} steps; medians over steps, ms)", ""]
    lines += ["Per step: " + ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {v:.1f}" for k, v in med.items()),
              f"Per step, the training thread handed {len(table)} reduction(s) to the backend in "
              f"{table['issue_ms'].sum():.2f} ms, waited {table['wait_ms'].sum():.1f} ms for them and updated "
              f"{table['update_ms'].sum():.1f} ms.", ""]
    lines += [table.to_markdown(index=False, floatfmt=".2f"), ""]
    if not gaps.empty:
        typical = gaps[gaps["ms"] >= 0.5].groupby(["after", "until"], sort=False)["ms"].agg(["count", "median"])
        lines += ["Link idle (no reduction in flight) for at least 0.5 ms, by the reductions around the gap "
                  "(count over steps, median ms):", "",
                  typical.reset_index().to_markdown(index=False, floatfmt=".2f") if not typical.empty else "(none)", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m asyncsgd.comm_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--rank", type=int, default=0, help="whose trace (timeline_all_ranks=true records every rank)")
    p.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = p.parse_args(argv)
    try:
        text = render(args.run_dir, args.rank)
    except ProfileInputError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()

"""asyncsgd.comm_profile: per-collective times and the link's gaps, from a hand-made trace."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asyncsgd import comm_profile
from asyncsgd.timeline import COMM, COMPUTE, WAITS


def _span(name, tid, step, t0_ms, t1_ms, **args):
    return {"name": name, "ph": "X", "pid": 0, "tid": tid, "ts": t0_ms * 1e3, "dur": (t1_ms - t0_ms) * 1e3,
            "args": {"step": step, **args}}


def _trace(tmp_path, steps=4):
    """Steps of 100 ms: forward 0-20 (with the wait for the last step's reduction at 0-5 and its update
    at 5-6 inside it), backward 20-50; the step's reduction (1 MB) is started at 50 after a 0.2 ms start
    call and is in flight until 90; the link then idles until the next step's reduction at 150."""
    events = []
    for s in range(steps):
        t = 100.0 * s
        events += [_span("forward fc", COMPUTE, s, t, t + 20), _span("backward fc", COMPUTE, s, t + 20, t + 50),
                   _span("allreduce fc", COMM, s, t + 50, t + 90, grad_step=s, bytes=1_000_000, channel=1,
                         issue_us=200.0)]
        if s > 0:
            events += [_span("wait fc", WAITS, s, t, t + 5), _span("update fc", WAITS, s, t + 5, t + 6)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "timeline.json").write_text(json.dumps({"traceEvents": events}))
    return run


def test_each_reduction_with_its_wait_and_update(tmp_path):
    spans = comm_profile.load_events(_trace(tmp_path))
    table = comm_profile.per_collective(comm_profile.collectives(spans))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["collective"], row["bytes"], row["channel"], row["steps"]) == ("fc", 1_000_000, 1, 3)
    assert row["start_ms"] == pytest.approx(50) and row["in_flight_ms"] == pytest.approx(40)
    assert row["issue_ms"] == pytest.approx(0.2) and row["end_ms"] == pytest.approx(90)
    # waited for and applied in the next step (wait at forward), each once
    assert row["wait_ms"] == pytest.approx(5) and row["update_ms"] == pytest.approx(1)


def test_the_link_is_idle_between_one_steps_reduction_and_the_next(tmp_path):
    steps, gaps = comm_profile.link_gaps(comm_profile.load_events(_trace(tmp_path)))
    assert list(steps["step"]) == [1, 2]  # the first recorded step is left out, the last has no end
    assert steps["iteration_ms"].tolist() == pytest.approx([100, 100])
    assert steps["link_busy_ms"].tolist() == pytest.approx([40, 40])
    assert steps["link_idle_ms"].tolist() == pytest.approx([60, 60])
    assert steps["compute_ms"].tolist() == pytest.approx([44, 44])  # 50 ms of spans less the 6 ms wait/update
    # within step 1 (100-200 ms): idle until its reduction at 150 (step 0's ended at 90), and after it
    assert gaps[gaps["step"] == 1][["from_ms", "ms", "after", "until"]].values.tolist() == [
        [0.0, 50.0, "(step start)", "fc"], [90.0, 10.0, "fc", "(next step)"]]


def test_a_run_without_a_timeline_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asyncsgd.comm_profile", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no timeline.json; run with timeline=true" in result.stderr


def test_the_report_is_written_where_asked(tmp_path):
    out = tmp_path / "profile.md"
    comm_profile.main([str(_trace(tmp_path)), "--out", str(out)])
    text = out.read_text()
    assert "| fc " in text and "link busy 40.0" in text and "link idle 60.0" in text


def test_overlapping_reductions_count_once_and_delayed_names_match(tmp_path):
    # delayed-k's names: "allreduce step N", waited for as "step N", applied as "update with gradient
    # of step N". Two reductions per step overlap (b inside a's span, c touching a's end), so the link
    # is busy 10-60 and idle 60-100 of each 100 ms step.
    events = []
    for s in range(4):
        t = 100.0 * s
        events += [_span("forward x", COMPUTE, s, t, t + 10),
                   _span(f"allreduce step {s}", COMM, s, t + 10, t + 50, grad_step=s, bytes=100, channel=0,
                         issue_us=50.0),
                   _span("allreduce b", COMM, s, t + 20, t + 30, grad_step=s, bytes=10, channel=1, issue_us=10.0),
                   _span("allreduce c", COMM, s, t + 50, t + 60, grad_step=s, bytes=10, channel=1, issue_us=10.0)]
        if s > 0:
            events += [_span(f"wait step {s - 1}", WAITS, s, t + 1, t + 3),
                       _span(f"update with gradient of step {s - 1}", WAITS, s, t + 3, t + 4)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "timeline.json").write_text(json.dumps({"traceEvents": events}))
    spans = comm_profile.load_events(run)
    table = comm_profile.per_collective(comm_profile.collectives(spans)).set_index("collective")
    assert list(table.index) == ["step's gradient", "b", "c"]
    assert table.loc["step's gradient", ["wait_ms", "update_ms", "steps"]].tolist() == pytest.approx([2, 1, 3])
    steps, gaps = comm_profile.link_gaps(spans)
    assert steps["link_busy_ms"].tolist() == pytest.approx([50, 50])
    assert steps["link_idle_ms"].tolist() == pytest.approx([50, 50])
    assert steps["wait_ms"].tolist() == pytest.approx([2, 2]) and steps["update_ms"].tolist() == pytest.approx([1, 1])
    one = gaps[gaps["step"] == 1][["from_ms", "ms", "after", "until"]].values.tolist()
    assert one == [[0.0, 10.0, "(step start)", "step's gradient"], [60.0, 40.0, "c", "(next step)"]]

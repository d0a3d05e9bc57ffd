"""timeline=true writes a Chrome trace that shows where each reduction ran."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest

from asyncsgd import comm_profile

from ..conftest import run_cli

pytestmark = pytest.mark.slow


def _trace(workdir, name, args):
    run_dir = workdir / name
    result = run_cli(["backend=gloo", "train.max_steps=12", "timeline=true", "timeline_first_step=4",
                      "timeline_steps=3", *args, f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "timeline.json").read_text())["traceEvents"]


def _by_step(events, tid, prefix):
    out = defaultdict(list)
    for e in events:
        if e["ph"] == "X" and e["tid"] == tid and e["name"].startswith(prefix):
            out[e["args"]["step"]].append(e)
    return out


def test_layerwise_reductions_start_during_backward_and_sync_after_it(workdir):
    layerwise = _trace(workdir, "lw", ["strategy=layerwise"])
    names = {e["args"]["name"] for e in layerwise if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"compute (per layer)", "communication (reductions)", "training thread waits/updates"}

    backward = _by_step(layerwise, 0, "backward")
    forward = _by_step(layerwise, 0, "forward")
    reductions = _by_step(layerwise, 1, "allreduce")
    assert sorted(reductions) == [4, 5, 6]
    for step in (4, 5, 6):
        assert len(forward[step]) == 3 and len(reductions[step]) == 3  # mlp: 3 layers, one reduction each
        assert len(backward[step]) == 3  # one span per layer, ending at its gradient-ready mark
        backward_end = max(e["ts"] + e["dur"] for e in backward[step])
        first_start = min(e["ts"] for e in reductions[step])
        assert first_start < backward_end, "the last layer's reduction must start while backward still runs"
        assert all(e["args"]["bytes"] > 0 for e in reductions[step])

    # the per-collective profile of that run (asyncsgd.comm_profile): each layer's reduction, what
    # starting it cost the training thread, and where it was waited for
    table = comm_profile.per_collective(comm_profile.collectives(comm_profile.load_events(workdir / "lw")))
    assert len(table) == 3 and (table["steps"] == 2).all()  # steps 4 and 5 (6's waits are not recorded)
    assert (table["issue_ms"] > 0).all() and (table["in_flight_ms"] > 0).all()
    assert (table["start_ms"] > 0).all() and (table["wait_ms"] >= 0).all()
    assert (table["update_ms"] > 0).all()  # wait_at=forward: every layer updated in the next forward

    sync = _trace(workdir, "sync", ["strategy=sync"])
    backward = _by_step(sync, 0, "backward")
    reductions = _by_step(sync, 1, "allreduce")
    for step in (4, 5, 6):
        (reduction,) = reductions[step]
        # every gradient, fused, plus one element for the stop flag (asyncsgd.stopping.StopFlagSlot)
        assert reduction["args"]["bytes"] == 4 * (64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10 + 1)
        assert reduction["ts"] >= max(e["ts"] + e["dur"] for e in backward[step])


def _reductions(events, grad_step):
    """Reduction name -> (channel, start time), for the reductions of one step's gradient."""
    return {e["name"]: (e["args"]["channel"], e["ts"]) for e in events
            if e["ph"] == "X" and e["tid"] == 1 and e["args"].get("grad_step") == grad_step}


def test_priority_sends_the_first_layer_on_its_own_channel_and_the_rest_first_ready_first_sent(workdir):
    # mlp layers in forward order: "1" (33 KB), "3" (66 KB), "5" (5 KB); 10 KiB chunks; 30% of the
    # 104 KB gradient is urgent: layer "1", the first the next forward needs
    priority = _trace(workdir, "prio", ["strategy=layerwise", "strategy.priority=true", "strategy.chunk_mb=0.01",
                                        "strategy.urgent_share=0.3"])
    fifo = _trace(workdir, "fifo", ["strategy=layerwise"])
    for grad_step in (4, 5):
        reductions = _reductions(priority, grad_step)
        first = sorted((t, ch) for name, (ch, t) in reductions.items() if name.startswith("allreduce 1"))
        middle = sorted((t, ch) for name, (ch, t) in reductions.items() if name.startswith("allreduce 3"))
        last = [(t, ch) for name, (ch, t) in reductions.items() if name.startswith("allreduce 5")]
        # "1" (33 KB) is a buffer with its bias (and the flags) plus its weight in 4 chunks; "3" its bias
        # plus its weight in 7
        assert len(first) == 5 and len(middle) == 8 and len(last) == 1, sorted(reductions)
        assert {ch for _, ch in first} == {0} and {ch for _, ch in middle + last} == {1}
        if grad_step == 4:  # on lane 1, first ready first sent until the EDF order is measured (from step 5)
            assert last[0][0] <= middle[0][0]
        # the next forward waits for the first layer before the middle one
        waits = [e for e in priority if e["ph"] == "X" and e["tid"] == 2 and e["name"].startswith("wait ")
                 and e["args"]["step"] == grad_step + 1]
        names = [e["name"] for e in sorted(waits, key=lambda e: e["ts"])]
        assert names.index(next(n for n in names if n.startswith("wait 1"))) < \
            names.index(next(n for n in names if n.startswith("wait 3")))
        plain = _reductions(fifo, grad_step)
        assert set(plain) == {"allreduce 5", "allreduce 3", "allreduce 1"}
        assert plain["allreduce 5"][1] < plain["allreduce 3"][1] < plain["allreduce 1"][1]  # first ready, first sent
        assert {ch for ch, _ in plain.values()} == {0}

"""asyncsgd.strategies.tuning: layerwise's strategy.bucket_mb=auto."""
from __future__ import annotations

import math

import pytest
import torch

from asyncsgd.config import LayerwiseConfig
from asyncsgd.strategies import make_strategy
from asyncsgd.strategies.tuning import (
    EXTRA_PASSES,
    MEASURED_STEPS,
    MIN_LEAD,
    SAFE,
    SETTLE_STEPS,
    WARMUP_STEPS,
    Layout,
    LayoutTuner,
    candidates,
    decide,
)
from asyncsgd.metrics import PhaseTimer

from torch import nn

from .test_strategies import PRIORITY, assert_same, plain, run, sgd

PER_CANDIDATE = SETTLE_STEPS + MEASURED_STEPS
FIRST_LONGER = WARMUP_STEPS - SETTLE_STEPS  # the first turn also waits out the run's warm-up
TRIALS = 1 + 3 * PER_CANDIDATE + FIRST_LONGER  # the reference tick and one turn of each candidate


class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


class Clock:
    """Step times chosen by the test: ``durations[layout index]`` seconds per step."""

    def __init__(self, tuner_ref, durations):
        self.now, self.tuner_ref, self.durations = 0.0, tuner_ref, durations

    def __call__(self):
        tuner = self.tuner_ref()
        self.now += self.durations[tuner.layouts.index(tuner.current)] if tuner is not None else 0.0
        return self.now


def fake_clock_tuner(durations, choose=None):
    holder = {}
    tuner = LayoutTuner(candidates(1.0), choose or decide, clock=Clock(lambda: holder.get("t"), durations))
    holder["t"] = tuner
    return tuner


def test_each_candidate_is_timed_after_settling_then_the_fastest_is_kept():
    tuner = fake_clock_tuner([0.03, 0.02, 0.05])
    switches = []
    for step in range(TRIALS):
        switch = tuner.tick()
        if switch is not None:
            switches.append((step, switch))
            tuner.started()
    first, second, one = candidates(1.0)
    # the first tick is the reference point; each layout then runs PER_CANDIDATE steps (the first
    # FIRST_LONGER more)
    assert switches == [(PER_CANDIDATE + FIRST_LONGER, second), (2 * PER_CANDIDATE + FIRST_LONGER, one),
                        (3 * PER_CANDIDATE + FIRST_LONGER, second)]
    assert tuner.done and tuner.current == second == Layout(4.0, 1.0)
    assert [len(t) for t in tuner.times] == [MEASURED_STEPS] * 3
    assert tuner.medians() == pytest.approx([0.03, 0.02, 0.05])
    described = tuner.describe()
    assert described["chosen"] == {"bucket_mb": 4.0, "chunk_mb": 1.0}
    assert [t["median_ms"] for t in described["tried"]] == pytest.approx([30.0, 20.0, 50.0])
    assert described["tried"][2]["bucket_mb"] is None and described["tried"][2]["chunk_mb"] is None  # JSON: no inf


def test_keeping_the_last_candidate_needs_no_switch():
    tuner = fake_clock_tuner([0.03, 0.02, 0.01])
    results = [tuner.tick() for _ in range(1 + PER_CANDIDATE + FIRST_LONGER)]
    assert results[-1] == candidates(1.0)[1]
    tuner.started()
    results = [tuner.tick() for _ in range(2 * PER_CANDIDATE)]
    assert results[PER_CANDIDATE - 1] == candidates(1.0)[2]
    tuner.started()
    results = [tuner.tick() for _ in range(PER_CANDIDATE)]
    assert results == [None] * PER_CANDIDATE and tuner.done and math.isinf(tuner.current.bucket_mb)


def test_the_choice_is_what_choose_returns_not_the_local_times():
    # rank 0's decision, broadcast, wins over this rank's own medians
    tuner = fake_clock_tuner([0.01, 0.02, 0.03], choose=lambda times, extra_left: 2)
    for _ in range(TRIALS):
        if tuner.tick() is not None:
            tuner.started()
    assert tuner.current == candidates(1.0)[2]


def test_decide_keeps_one_bucket_unless_another_leads_beyond_the_noise():
    assert math.isinf(candidates(1.0)[SAFE].bucket_mb)
    per_layer_fast = [[0.100, 0.102, 0.098, 0.101], [0.12] * 4, [0.130, 0.128, 0.133, 0.131]]
    assert decide(per_layer_fast) == 0  # 23% ahead, steps within 2%
    # MPI at 10 Gbit/s batch 128 on 2026-12-02 (seconds): per layer 7% ahead in the median, its steps
    # up to 13% from their median
    noisy = [[0.185, 0.160, 0.202, 0.171], [0.193, 0.177, 0.210, 0.190], [0.202, 0.175, 0.181, 0.214]]
    assert decide(noisy) == SAFE
    assert decide(noisy, extra_left=1) == [SAFE, 0]  # within the noise but ahead: time the two again
    tiny_lead = [[0.099] * 4, [0.12] * 4, [0.100] * 4]  # no noise, but under MIN_LEAD
    assert 0.01 < MIN_LEAD and decide(tiny_lead, extra_left=1) == [SAFE, 0] and decide(tiny_lead) == SAFE
    assert decide([[0.2] * 4, [0.3] * 4, [0.1] * 4], extra_left=1) == SAFE  # one bucket fastest: no more turns
    # more steps timed narrow the margin: the same spread over twice the steps lets a 9% lead through
    spread = [0.09, 0.10, 0.11, 0.10]
    assert decide([spread, [0.2] * 4, [0.11, 0.12, 0.10, 0.11]]) == SAFE
    assert decide([spread * 2, [0.2] * 4, [0.11, 0.12, 0.10, 0.11] * 2]) == 0


def test_a_lead_within_the_noise_times_the_two_contenders_once_more():
    # per layer 5% ahead of one bucket with 10% noise per step: undecided after one round
    base = {0: 0.095, 1: 0.2, 2: 0.100}
    jitter = [1.1, 0.9]  # each layout's steps alternate: median 1.0, deviation 0.1
    holder, calls = {}, {0: 0, 1: 0, 2: 0}

    def clock():
        index = holder["t"].layouts.index(holder["t"].current)
        calls[index] += 1
        clock.now += base[index] * jitter[calls[index] % 2]
        return clock.now

    clock.now = 0.0
    seen = []

    def choose(times, extra_left):
        seen.append([len(t) for t in times])
        return decide(times, extra_left)

    tuner = LayoutTuner(candidates(1.0), choose, clock=clock)
    holder["t"] = tuner
    switches, steps = [], 0
    while not tuner.done and steps < 100:
        switch = tuner.tick()
        steps += 1
        if switch is not None:
            switches.append(tuner.layouts.index(switch))
            tuner.started()
    # per layer, 4 MiB, one bucket; then one bucket again (no switch: it is in place), per layer; then kept
    assert switches[:3] == [1, 2, 0] and tuner.passes == 2
    assert [len(t) for t in tuner.times] == [2 * MEASURED_STEPS, MEASURED_STEPS, 2 * MEASURED_STEPS]
    assert tuner.current == candidates(1.0)[SAFE] and tuner.describe()["passes"] == 2
    # the second verdict sees the two contenders only: 4 MiB cannot win on its first-round steps
    assert seen == [[MEASURED_STEPS] * 3, [2 * MEASURED_STEPS, 0, 2 * MEASURED_STEPS]]
    assert steps == TRIALS + MEASURED_STEPS + PER_CANDIDATE


def test_layout_round_trips_through_its_json_form():
    for layout in candidates(0.5):
        assert Layout.from_description(layout.describe()) == layout
    assert [str(x) for x in candidates(1.0)] == ["per layer", "4 MiB buckets", "one bucket"]


# every candidate, a second round of two where the lead is within the noise (real clocks), the
# switch to the kept one, and some steps after
STEPS = TRIALS + EXTRA_PASSES * 2 * PER_CANDIDATE + 6


@pytest.mark.parametrize("priority", [{}, PRIORITY], ids=["fifo", "priority"])
@pytest.mark.parametrize("wait_at", ["forward", "step"])
def test_auto_is_sequential_sgd_through_every_switch(comm, wait_at, priority):
    model, strategy = run(LayerwiseConfig(wait_at=wait_at, bucket_mb="auto", **priority), comm, Net, steps=STEPS)
    assert_same(model, plain(Net, steps=STEPS))
    info = strategy.describe()
    assert info["layout"]["auto"]["chosen"] is not None
    assert len(info["layout"]["auto"]["tried"]) == 3
    assert all(t["median_ms"] > 0 for t in info["layout"]["auto"]["tried"])
    assert strategy.settled_step > TRIALS - 1  # the trials are not steady state
    assert strategy.scheduler.idle


def test_a_forced_choice_rebuilds_the_buckets_and_a_checkpoint_keeps_it(comm, monkeypatch):
    # per layer timed slowest, one bucket fastest: the run ends on one bucket
    cfg = LayerwiseConfig(bucket_mb="auto", **PRIORITY)
    strategy = make_strategy(cfg, comm, PhaseTimer())
    net = strategy.attach(Net(), sgd)
    strategy.tuner._clock = Clock(lambda: strategy.tuner, [0.05, 0.04, 0.01])
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x, y = torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)
        strategy.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        strategy.synchronize()
        strategy.step()
    assert strategy.layout == Layout(math.inf, math.inf) and len(strategy.buckets) == 1
    state = strategy.state_dict()
    assert state["layout"]["chosen"] == 2 and [len(t) for t in state["layout"]["times"]] == [MEASURED_STEPS] * 3
    # the one-bucket layout was timed last and kept: built at step TRIALS - 1, one lane, so no EDF calibration
    assert state["settled_step"] == strategy.settled_step == TRIALS
    strategy.close()

    resumed = make_strategy(cfg, comm, PhaseTimer())
    resumed.attach(Net(), sgd)
    resumed.load_state_dict(state)
    assert resumed.tuner.done and resumed.layout == Layout(math.inf, math.inf)  # no second round of trials
    assert resumed.describe()["layout"]["auto"]["tried"][2]["median_ms"] == pytest.approx(10.0)
    assert resumed.settled_step == state["settled_step"]  # the steady steps before the stop still count
    resumed.close()
    assert state["layout"]["passes"] == 1  # decided at once; a run that needed two rounds says so after resume
    twice = make_strategy(cfg, comm, PhaseTimer())
    twice.attach(Net(), sgd)
    twice.load_state_dict({**state, "layout": {**state["layout"], "passes": 2}})
    assert twice.describe()["layout"]["auto"]["passes"] == 2
    twice.close()


def test_a_step_that_also_evaluated_is_not_timed():
    tuner = fake_clock_tuner([0.01, 0.01, 0.01])
    tuner.tick()
    for _ in range(WARMUP_STEPS):  # the first turn's steps left out
        tuner.tick()
    tuner.discard()
    tuner.tick()
    assert tuner.times[0] == []  # left out; the layout is timed for MEASURED_STEPS other steps
    for _ in range(MEASURED_STEPS - 1):
        assert tuner.tick() is None
    assert tuner.tick() == candidates(1.0)[1]


def test_a_resumed_layerwise_run_keeps_its_first_settled_step(comm):
    cfg = LayerwiseConfig(**PRIORITY)
    _, strategy = run(cfg, comm, Net, steps=8)
    state = strategy.state_dict()
    assert state["settled_step"] == 5  # EDF order from step 5: the bench's five warm-up steps
    resumed = make_strategy(cfg, comm, PhaseTimer())
    resumed.attach(Net(), sgd)
    resumed.load_state_dict(state)
    assert resumed.settled_step == 5
    resumed.close()

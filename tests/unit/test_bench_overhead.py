"""The runner-overhead benchmark's arithmetic and the runs it asks for."""
from __future__ import annotations

import pytest

from asyncsgd.bench_overhead import WARMUP, runner_overrides, step_periods, summarize


def test_periods_leave_out_the_warm_up():
    ends = [float(i * i) for i in range(WARMUP + 4)]  # a slow start, then periods 2*WARMUP+1, +3, +5
    assert step_periods(ends) == [2 * WARMUP + 1, 2 * WARMUP + 3, 2 * WARMUP + 5]


def test_ratio_to_the_bare_loop_uses_medians_of_runs():
    table = summarize({"bare": [0.010, 0.012, 0.011], "nocomm": [0.0113, 0.0200, 0.0112], "sync": [0.0115] * 3})
    rows = table.set_index("loop")
    assert rows.loc["bare", "ms_per_iter"] == pytest.approx(11.0)
    assert rows.loc["nocomm", "vs_bare"] == pytest.approx(11.3 / 11.0)  # the outlier run does not count
    assert rows.loc["sync", "overhead_pct"] == pytest.approx((11.5 / 11.0 - 1) * 100)
    assert rows.loc["nocomm", "spread_ms"] == pytest.approx(20.0 - 11.2)


def test_the_runner_runs_one_worker_one_thread_and_the_strategy_asked():
    args = runner_overrides("cnn", "sync", 120)
    for expected in ("world_size=1", "train.threads=1", "strategy=sync", "model=cnn", "train.max_steps=120",
                     "train.batch_size=32"):
        assert expected in args

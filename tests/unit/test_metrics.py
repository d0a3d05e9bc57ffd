"""Exclusive phase timing and the atomically rewritten metrics file."""
from __future__ import annotations

import csv
import time

from asyncsgd.metrics import COLUMNS, MetricsLog, PhaseTimer


def test_nested_phase_time_is_not_counted_twice():
    timer = PhaseTimer()
    with timer.phase("forward"):
        time.sleep(0.02)
        with timer.phase("comm_wait"):
            time.sleep(0.05)
        time.sleep(0.02)
    t = timer.pop()
    assert 0.05 <= t["comm_wait"] < 0.2
    assert 0.04 <= t["forward"] < t["comm_wait"]  # the wait inside forward is booked as comm_wait
    assert timer.pop() == {}


def test_metrics_csv_has_iteration_and_epoch_rows(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    for step in range(4):
        log.iteration(step, 0, loss=1.0 / (step + 1), lr=0.1, times={"forward": 0.001, "comm_wait": 0.002},
                      t_iter=0.01 * (step + 1), samples=32, wall_s=step * 0.01)
    log.epoch(4, 0, wall_s=0.05, train_loss=0.5, train_acc=0.8, test_loss=0.6, test_acc=0.75)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0].keys()) == COLUMNS
    assert [r["kind"] for r in rows] == ["iter"] * 4 + ["epoch"]
    assert float(rows[1]["samples_per_s"]) == 32 / 0.02
    assert float(rows[0]["t_comm_wait"]) == 0.002 and float(rows[0]["t_backward"]) == 0.0
    assert float(rows[4]["test_acc"]) == 0.75
    assert log.median_iter_s(warmup=2) == 0.035  # median of 0.03 and 0.04
    assert not list(tmp_path.glob(".metrics.csv.*"))  # no temp file left behind


def test_start_books_a_wait_between_steps_to_the_next_step_and_forgets_the_rest():
    timer = PhaseTimer()
    with timer.phase("comm_wait"):  # e.g. a flush before evaluation: the next step would have waited
        time.sleep(0.02)
    with timer.phase("update"):  # e.g. updates a flush applied: not this step's work
        time.sleep(0.01)
    before = time.perf_counter()
    t0 = timer.start()
    assert before - t0 >= 0.02  # the step's iteration time covers the wait
    with timer.phase("forward"):
        pass
    phases = timer.pop()
    assert set(phases) == {"comm_wait", "forward"} and phases["comm_wait"] >= 0.02
    timer.start()
    assert timer.pop() == {}  # booked once, to one step


def test_epoch_rows_do_not_rewrite_the_file_each_epoch(tmp_path):
    """The file appears at the first epoch end; later ends rewrite it only every flush_every_s
    (a rewrite costs O(rows)); flush() writes everything."""
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, flush_every_s=3600)
    for epoch in range(3):
        log.iteration(epoch, epoch, loss=1.0, lr=0.1, times={}, t_iter=0.01, samples=32, wall_s=epoch)
        log.epoch(epoch + 1, epoch, wall_s=epoch + 0.5, train_loss=1.0)
    assert len(list(csv.DictReader(open(path)))) == 2  # as written at the first epoch end
    log.flush()
    assert len(list(csv.DictReader(open(path)))) == 6
    quick = MetricsLog(tmp_path / "quick.csv", flush_every_s=0.0)
    quick.epoch(1, 0, wall_s=0.1)
    quick.epoch(2, 1, wall_s=0.2)
    assert len(list(csv.DictReader(open(tmp_path / "quick.csv")))) == 2


def test_epoch_and_evaluation_rows_are_kept_apart_from_the_steps_and_restored():
    """The collapse check reads the epoch rows at every epoch end: they are kept as they are
    written (not found again among every step's row), and a resumed run's come back with them."""
    log = MetricsLog(None)
    for step in range(6):
        log.iteration(step, step // 3, loss=1.0, lr=0.1, times={}, t_iter=0.01, samples=32, wall_s=step)
        if step == 1:
            log.epoch(step + 1, 0, wall_s=step, kind="eval", test_acc=0.5, test_loss=1.0)
        if step % 3 == 2:
            log.epoch(step + 1, step // 3, wall_s=step + 0.5, train_loss=1.0 - step / 10)
    scan_epochs = [r for r in log.rows if r["kind"] == "epoch"]
    assert log.epoch_rows() == scan_epochs and [r["step"] for r in scan_epochs] == [3, 6]
    assert [r["step"] for r in log.evaluation_rows()] == [2]
    resumed = MetricsLog(None)
    resumed.restore(log.rows, log.iter_times)
    assert resumed.epoch_rows() == scan_epochs and resumed.evaluation_rows() == log.evaluation_rows()
    assert resumed.iter_times == log.iter_times and resumed.rows is not log.rows

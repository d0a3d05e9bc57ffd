"""The overlap benchmark's arithmetic: medians, speedup over sync, overlap efficiency."""
from __future__ import annotations

import pytest

from asyncsgd.bench import Cell, common_overrides, parse_args, render, summarize


def _runs(*iter_ms, wait_ms=0.0, alone_ms=None):
    return [{"iter_s": t / 1e3, "comm_wait_s": wait_ms / 1e3,
             "allreduce_alone_s": None if alone_ms is None else alone_ms / 1e3} for t in iter_ms]


def test_speedup_and_overlap_efficiency_follow_the_definitions():
    samples = {
        "nocomm": _runs(50, 55, 60),                       # T_compute = 55
        "sync": _runs(150, 140, 145, wait_ms=80, alone_ms=80),  # T_sync = 145, T_comm = 80 -> limit 80
        "layerwise(forward)": _runs(90, 100, 95),          # T = 95
        "delayed(k=1)": _runs(80, 80, 81),                 # T = 80: all that could be hidden was
    }
    table = summarize(samples).set_index("strategy")
    assert table.loc["sync", "ms_per_iter"] == pytest.approx(145)
    assert table.loc["layerwise(forward)", "speedup_vs_sync"] == pytest.approx(145 / 95)
    assert table.loc["layerwise(forward)", "overlap_efficiency"] == pytest.approx((145 - 95) / (145 - 80))
    assert table.loc["delayed(k=1)", "overlap_efficiency"] == pytest.approx(1.0)
    assert table.loc["sync", "overlap_efficiency"] == pytest.approx(0.0)
    assert table.loc["sync", "comm_wait_ms"] == pytest.approx(80)
    assert table.attrs["limit_ms"] == pytest.approx(80)


def test_compute_bound_limit_and_report_text():
    samples = {"nocomm": _runs(100), "sync": _runs(130, alone_ms=20), "ddp": _runs(115)}
    table = summarize(samples)
    assert table.attrs["limit_ms"] == pytest.approx(100)  # max(T_compute, T_comm)
    eff = table.set_index("strategy").loc["ddp", "overlap_efficiency"]
    assert eff == pytest.approx(0.5)
    text = render({Cell("thread", None, 32): table}, parse_args(["--backend", "mpi", "--progress", "thread"]))
    assert "backend.progress=thread, batch=32/worker: T_compute (nocomm) = 100.0 ms" in text and "| ddp" not in text.split("|")[0]


def test_ddp_is_dropped_on_mpi_and_modes_are_parsed():
    args = parse_args(["--backend", "mpi", "--progress", "thread,test,library"])
    assert "ddp" not in args.strategies.split(",") and args.modes == ["thread", "test", "library"]
    with pytest.raises(SystemExit):
        parse_args(["--progress", "thread"])  # gloo has no progress modes


def test_emulated_links_become_launcher_overrides():
    args = parse_args(["--emulated", "1gbit", "--backend", "mpi"])
    assert common_overrides(args, Cell(None, "1gbit", 32))[-2:] == ["launcher=emulated", "cluster.bandwidth=1gbit"]
    assert "launcher=emulated" not in common_overrides(parse_args([]), Cell(None, None, 32))


def test_a_sweep_over_links_and_batches():
    args = parse_args(["--emulated", "100mbit,1gbit", "--batch", "8,32"])
    assert args.links == ["100mbit", "1gbit"] and args.batches == [8, 32]
    overrides = common_overrides(args, Cell(None, "100mbit", 8))
    assert "train.batch_size=8" in overrides and "cluster.bandwidth=100mbit" in overrides
    for bad in (["--emulated", "1gbit,fast"], ["--batch", "8,x"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)

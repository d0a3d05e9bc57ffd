"""The overlap benchmark's arithmetic: medians, speedup over sync, overlap efficiency."""
from __future__ import annotations

import pytest

from asyncsgd.bench import Cell, case_steps, common_overrides, expand_cases, family, parse_args, render, summarize


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


def test_ddp_and_layerwise_run_a_bucket_sweep():
    args = parse_args(["--strategies", "sync,layerwise(priority),ddp", "--buckets", "1,4,25"])
    assert list(args.cases) == ["sync", "layerwise(priority)", "layerwise(priority,1MB)", "layerwise(priority,4MB)",
                                "layerwise(priority,25MB)", "ddp", "ddp(1MB)", "ddp(4MB)", "ddp(25MB)"]
    assert args.cases["ddp"] == ["strategy=ddp"]  # torch's default buckets (1 MiB first)
    assert args.cases["ddp(4MB)"] == ["strategy=ddp", "strategy.bucket_mb=4"]
    assert args.cases["layerwise(priority,1MB)"][-1] == "strategy.bucket_mb=1"
    assert "strategy.bucket_mb" not in " ".join(args.cases["layerwise(priority)"])  # per layer, its default
    only_ddp = parse_args(["--strategies", "layerwise(step),ddp", "--buckets", "0.5,25", "--layerwise-buckets", "none"])
    assert list(only_ddp.cases) == ["layerwise(step)", "ddp", "ddp(0.5MB)", "ddp(25MB)"]
    assert expand_cases(["ddp"], [2], [])["ddp(2MB)"][-1] == "strategy.bucket_mb=2"
    assert [family(n) for n in ("ddp(4MB)", "layerwise(priority,4MB)", "layerwise(priority)", "delayed(k=1)")] == [
        "ddp", "layerwise(priority)", "layerwise(priority)", "delayed(k=1)"]
    for bad in (["--buckets", "0,4"], ["--buckets", "big"], ["--layerwise-buckets", "1,x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_speedup_over_the_best_ddp_bucket_size():
    samples = {
        "nocomm": _runs(40), "sync": _runs(120, alone_ms=80),
        "layerwise(priority)": _runs(90), "layerwise(priority,4MB)": _runs(84),
        "ddp(1MB)": _runs(110), "ddp(4MB)": _runs(105), "ddp(25MB)": _runs(126),
    }
    table = summarize(samples)
    rows = table.set_index("strategy")
    assert table.attrs["best"] == {"ddp": "ddp(4MB)", "layerwise(priority)": "layerwise(priority,4MB)"}
    assert rows.loc["layerwise(priority,4MB)", "speedup_vs_best_ddp"] == pytest.approx(105 / 84)
    assert rows.loc["ddp(25MB)", "speedup_vs_best_ddp"] == pytest.approx(105 / 126)
    text = render({Cell(None, None, 32): table}, parse_args([]))
    assert "best DDP: ddp(4MB) 105.0 ms; best layerwise(priority): layerwise(priority,4MB) 84.0 ms (1.25x the best DDP)" \
        in text
    assert "speedup_vs_best_ddp" in text.splitlines()[-len(samples) - 2]  # a column of the table
    assert "speedup_vs_best_ddp" not in summarize({"sync": _runs(100)}).columns  # no DDP, no column


def test_layerwise_bound_is_the_schedule_bound_of_issue_12():
    from asyncsgd.bench import layerwise_bound
    from asyncsgd.projection.profile import Layer, Profile

    # three layers, forward order; x = f + b + u = 10, 4, 6 ms; bytes 1:2:7 of T_comm = 100 ms
    layers = [Layer("a", [100], 0.002, 0.006, 0.002), Layer("b", [200], 0.001, 0.002, 0.001),
              Layer("c", [700], 0.002, 0.003, 0.001)]
    profile = Profile(layers=layers)
    # i=1: 20 + max(rest 5, 10) = 30; i=2: 10 + max(5+10, 30) = 40; i=3: 6 + max(5+14, 100) = 106
    assert layerwise_bound(profile, 0.025, 0.100) == pytest.approx(0.106)
    # compute-bound: a fast link leaves T_compute (i=1: 20 + max(5, 0.1))
    assert layerwise_bound(profile, 0.025, 0.001) == pytest.approx(0.025)
    # the bound never drops below T_compute nor below T_comm
    for t_comm in (0.001, 0.02, 0.05, 0.3):
        assert layerwise_bound(profile, 0.025, t_comm) >= max(0.025, t_comm) - 1e-12


def test_layerwise_bound_with_the_measured_cost_of_overlap():
    from asyncsgd.bench import layerwise_bound
    from asyncsgd.projection.profile import Layer, Profile

    layers = [Layer("a", [100], 0.002, 0.006, 0.002), Layer("b", [200], 0.001, 0.002, 0.001),
              Layer("c", [700], 0.002, 0.003, 0.001)]
    profile = Profile(layers=layers)
    # i=3 binds: 6 ms after, and 19 ms of compute beside 100 ms of link; with the compute 1.2x and
    # the reduction 1.1x slower beside each other: 22.8 ms together, 100 - 22.8 / 1.1 alone
    slow = layerwise_bound(profile, 0.025, 0.100, (1.2, 1.1))
    assert slow == pytest.approx(0.006 + 0.0228 + (0.100 - 0.0228 / 1.1))
    assert layerwise_bound(profile, 0.025, 0.100, (1.0, 1.0)) == pytest.approx(0.106) and 0.106 < slow
    # the report says which factors its second bound used (no timelines here: no bound to give)
    table = summarize({"nocomm": _runs(30), "sync": _runs(120, alone_ms=80)}, (1.2, 1.1))
    text = render({Cell(None, None, 32): table}, parse_args(["--overlap-cost", "1.2,1.1"]))
    assert "no bound with the cost of overlap: it needs nocomm runs with timelines" in text
    assert "cost of overlap" not in render({Cell(None, None, 32): summarize({"sync": _runs(120)})}, parse_args([]))
    assert parse_args(["--overlap-cost", "1.17,1.10"]).slowdowns == (1.17, 1.10)
    assert parse_args([]).slowdowns == (1.0, 1.0)
    for bad in ("1.2", "0.9,1.1", "a,b", "nan,nan", "inf,1.1"):
        with pytest.raises(SystemExit):
            parse_args(["--overlap-cost", bad])


def test_the_cost_of_overlap_is_bounded_by_what_delayed_measured():
    from asyncsgd.bench import bound_consistent_with, layerwise_bound
    from asyncsgd.projection.profile import Layer, Profile
    from asyncsgd.projection.schedules import overlap_window

    layers = [Layer("a", [100], 0.002, 0.006, 0.002), Layer("b", [200], 0.001, 0.002, 0.001),
              Layer("c", [700], 0.002, 0.003, 0.001)]
    profiles = [(Profile(layers=layers), 0.025)]
    full = (1.3, 1.2)
    none_bound = layerwise_bound(profiles[0][0], 0.025, 0.100)
    full_bound = layerwise_bound(profiles[0][0], 0.025, 0.100, full)
    # delayed measured at or above the full cost's ideal: the whole measured cost may be real
    slow_delayed = overlap_window(0.025, 0.100, *full)
    assert bound_consistent_with(profiles, 0.100, slow_delayed, full) == pytest.approx(full_bound)
    # delayed at the link's time: no cost of overlap is consistent with it but none
    assert bound_consistent_with(profiles, 0.100, 0.100, full) == pytest.approx(none_bound)
    # faster than even no cost allows: nothing is consistent
    assert bound_consistent_with(profiles, 0.100, 0.099, full) is None
    # in between: between the two bounds, and the cost it picked keeps delayed's ideal within it
    middle = bound_consistent_with(profiles, 0.100, 0.5 * (0.100 + slow_delayed), full)
    assert none_bound < middle < full_bound


def test_a_finished_run_is_read_not_run_again_with_reuse(tmp_path, monkeypatch):
    import json

    import asyncsgd.bench as bench

    run = tmp_path / "sync-0"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "complete", "allreduce_alone_s": 0.08}))
    rows = ["kind,t_iter,t_comm_wait"] + [f"iter,{0.1 + 0.01 * i},0.05" for i in range(8)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model=cnn\n- strategy=sync\n")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("ran the case again"))
    got = bench.run_case(run, ["model=cnn", "strategy=sync"], reuse=True)
    assert got["iter_s"] == pytest.approx(0.1 + 0.01 * 6) and got["allreduce_alone_s"] == 0.08  # steps 5-7
    with pytest.raises(pytest.fail.Exception):  # a run made with other overrides is run again
        bench.run_case(run, ["model=cnn", "strategy=sync", "train.batch_size=8"], reuse=True)
    (run / "summary.json").write_text(json.dumps({"status": "failed"}))  # so is a failed run
    with pytest.raises(pytest.fail.Exception):
        bench.run_case(run, ["model=cnn", "strategy=sync"], reuse=True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--reuse"])  # nothing to reuse without --out


def test_the_auto_layout_case_runs_enough_steps_and_is_not_run_by_default(capsys):
    assert "layerwise(priority+auto)" not in parse_args([]).strategies.split(",")
    args = parse_args(["--strategies", "sync,layerwise(priority+auto)", "--steps", "30"])
    # its trials and a second round of two take 34 steps: it runs 44 whatever --steps says, the others 30
    assert "layerwise(priority+auto) runs 44 steps" in capsys.readouterr().err
    assert case_steps("layerwise(priority+auto)", 30) == case_steps("layerwise(priority+auto)+nice", 30) == 44
    assert case_steps("sync", 30) == 30 and case_steps("layerwise(priority+auto)", 60) == 60
    cell = Cell(None, None, 32)
    assert "train.max_steps=44" in common_overrides(args, cell, case_steps("layerwise(priority+auto)", args.steps))
    assert "train.max_steps=30" in common_overrides(args, cell)
    args = parse_args(["--strategies", "layerwise(priority+auto)", "--steps", "44", "--layerwise-buckets", "4"])
    assert capsys.readouterr().err == ""
    assert list(args.cases) == ["layerwise(priority+auto)"]  # no bucket sweep of an auto layout
    assert args.cases["layerwise(priority+auto)"][-1] == "strategy.bucket_mb=auto"


def test_any_case_runs_with_the_training_thread_yielding_to_the_backend_too(capsys):
    args = parse_args(["--strategies", "sync,layerwise(priority),layerwise(priority)+nice,delayed(k=1)+nice",
                       "--buckets", "4"])
    # the +nice variant is the same case with backend.compute_nice, and no bucket sweep of its own
    assert list(args.cases) == ["sync", "layerwise(priority)", "layerwise(priority,4MB)", "layerwise(priority)+nice",
                                "delayed(k=1)+nice"]
    assert args.cases["layerwise(priority)+nice"] == args.cases["layerwise(priority)"] + ["backend.compute_nice=19"]
    assert args.cases["delayed(k=1)+nice"] == ["strategy=delayed", "strategy.k=1", "backend.compute_nice=19"]
    with pytest.raises(SystemExit) as exc:
        parse_args(["--strategies", "sync+nicer"])
    assert exc.value.code == 2 and "unknown sync+nicer" in capsys.readouterr().err
    parse_args(["--strategies", "layerwise(priority+auto)+nice", "--steps", "20"])  # the variant of a slow case
    assert "layerwise(priority+auto)+nice runs 44 steps" in capsys.readouterr().err  # runs its steps too
    # a +nice case is its own family (never the best DDP the others are compared with), and DDP's
    # variant is dropped on MPI like DDP
    assert family("ddp+nice") == "ddp+nice" and family("ddp(4MB)") == "ddp"
    assert parse_args(["--backend", "mpi", "--strategies", "sync,ddp,ddp+nice"]).strategies == "sync"

"""The report on hand-made run dirs with known numbers: every table cell, the CSVs, the plots."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from asyncsgd.report import (
    PLOTS, ReportError, _aligned, find_runs, link_rate_mbit, load_runs, make_report, missing_jobs, resolve_baseline, runs_frame,
    speedup_frame, strategy_labels,
)
from asyncsgd.report.frames import split_nice

from ..report_fixtures import make_run, md_tables, png_size

DELAYED = {"name": "delayed", "k": 1, "drain": True}
SYNC_P2 = [  # seed, median_iter_s, final acc, evals (epoch, wall_s, test_acc), comm wait s/step
    (0, 0.012, 0.90, [(0, 1.0, 0.85), (1, 2.0, 0.90)], 0.005),
    (1, 0.014, 0.92, [(0, 1.5, 0.91), (1, 3.0, 0.92)], 0.007),
    (2, 0.020, 0.94, [(0, 1.0, 0.80), (1, 2.5, 0.94)], 0.006),
]
DELAYED_P2 = [
    (0, 0.010, 0.89, [(0, 0.8, 0.85), (1, 1.6, 0.89)], 0.001),
    (1, 0.007, 0.91, [(0, 0.9, 0.90), (1, 1.8, 0.91)], 0.001),
    (2, 0.008, 0.95, [(0, 1.0, 0.93), (1, 2.0, 0.95)], 0.001),
]


def make_study(root):
    """sync and delayed(k=1) at 1 and 2 workers, three seeds at 2, plus runs that did not finish."""
    job = iter(range(100))
    make_run(root / "a", median_iter_s=0.010, world_size=1, final_test_acc=0.93, target_acc=0.9,
             evals=[(0, 1.0, 0.93)], phases={"comm_wait": 0.0001}, job=next(job))
    for seed, t, acc, evals, comm in SYNC_P2:
        make_run(root / f"s{seed}", seed=seed, median_iter_s=t, final_test_acc=acc, target_acc=0.9, evals=evals,
                 phases={"comm_wait": comm}, job=next(job))
    make_run(root / "d", strategy=DELAYED, world_size=1, median_iter_s=0.009, final_test_acc=0.92, target_acc=0.9,
             evals=[(0, 0.5, 0.92)], phases={"comm_wait": 0.0002}, job=next(job))
    for seed, t, acc, evals, comm in DELAYED_P2:
        make_run(root / f"d{seed}", strategy=DELAYED, seed=seed, median_iter_s=t, final_test_acc=acc, target_acc=0.9,
                 evals=evals, phases={"comm_wait": comm}, job=next(job))
    make_run(root / "failed", seed=3, status="failed", error="RuntimeError: boom", target_acc=0.9, job=next(job))
    make_run(root / "running", strategy=DELAYED, seed=4, status="running", target_acc=0.9, job=next(job))
    make_run(root / "nosummary", seed=5, write_summary=False, write_metrics=False, target_acc=0.9, job=next(job))
    return root


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path / "sweep")


@pytest.fixture(scope="module")
def study_report(tmp_path_factory):
    """The default report of the study, made once: plotting is the slow part of these tests."""
    root = tmp_path_factory.mktemp("study")
    return make_report([make_study(root / "sweep")], out=root / "out", title="Reference: fixture host")


def test_every_cell_of_the_three_tables(study_report):
    report = study_report
    iteration, convergence, breakdown = md_tables(report.markdown.read_text())
    assert iteration == [
        ["model", "strategy", "workers", "runs", "iteration (ms)", "throughput (samples/s)", "speedup vs sync",
         "speedup vs 1 worker"],
        ["mlp", "sync", "1", "1", "10.0", "1,600", "1.00×", "1.00×"],
        ["mlp", "sync", "2", "3", "14.0 (12.0–20.0)", "2,286 (1,600–2,667)", "1.00×", "1.43×"],
        ["mlp", "delayed(k=1)", "1", "1", "9.00", "1,778", "1.11×", "1.00×"],
        ["mlp", "delayed(k=1)", "2", "3", "8.00 (7.00–10.0)", "4,000 (3,200–4,571)", "1.75×", "2.25×"],
    ]
    assert convergence == [
        ["model", "strategy", "workers", "test accuracy (%)", "gap to sync (pp)", "target (%)", "time to target (s)",
         "reached", "time-to-target speedup vs sync", "iteration speedup vs sync"],
        ["mlp", "sync", "1", "93.00", "+0.00", "90.0", "1.00", "1/1", "1.00×", "1.00×"],
        ["mlp", "sync", "2", "92.00 (90.00–94.00)", "+0.00", "90.0", "2.00 (1.50–2.50)", "3/3", "1.00×", "1.00×"],
        ["mlp", "delayed(k=1)", "1", "92.00", "−1.00", "90.0", "0.500", "1/1", "2.00×", "1.11×"],
        # one seed never reached 90 %: it counts as infinitely slow, so the median is the middle finite time
        ["mlp", "delayed(k=1)", "2", "91.00 (89.00–95.00)", "−1.00", "90.0", "1.00 (0.900–never)", "2/3", "2.00×",
         "1.75×"],
    ]
    assert breakdown == [
        ["model", "strategy", "workers", "data (ms)", "forward (ms)", "backward (ms)", "communication wait (ms)",
         "update (ms)", "other (ms)", "total (ms)"],
        ["mlp", "sync", "1", "0.200", "1.00", "2.00", "0.100", "0.500", "0.800", "4.60"],
        # comm wait per seed 5, 7, 6 ms: the median, and warm-up steps (1 s each) left out
        ["mlp", "sync", "2", "0.200", "1.00", "2.00", "6.00", "0.500", "0.800", "10.5"],
        ["mlp", "delayed(k=1)", "1", "0.200", "1.00", "2.00", "0.200", "0.500", "0.800", "4.70"],
        ["mlp", "delayed(k=1)", "2", "0.200", "1.00", "2.00", "1.00", "0.500", "0.800", "5.50"],
    ]
    assert report.main_table.splitlines()[2] == "| mlp | sync | 1 | 1 | 10.0 | 1,600 | 1.00× | 1.00× |"


def test_header_names_the_machine_the_constant_settings_and_the_seed_rule(study_report):
    text = study_report.markdown.read_text()
    assert text.startswith("# Reference: fixture host\n")
    assert "8 complete run(s) of 11" in text and "machine: fixture-host; run on 2026-01-02." in text
    assert "All rows share dataset digits, backend gloo, batch/worker 16." in text
    assert "a cell shows their median and, in parentheses, min–max" in text


def test_runs_that_did_not_finish_are_listed_not_dropped(study_report):
    text = study_report.markdown.read_text()
    section = text.split("## Runs that failed, did not finish or lack outputs")[1].split("## Plots")[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines == [
        "- `../sweep/failed` (sync, 2 workers, seed 3): **failed**: RuntimeError: boom",
        "- `../sweep/nosummary` (sync, 2 workers, seed 5): **no summary.json**: "
        "summary.json missing; metrics.csv missing",
        "- `../sweep/running` (delayed(k=1), 2 workers, seed 4): **running**",
    ]


def test_time_to_target_follows_target_acc(study, tmp_path):
    _, convergence, _ = md_tables(make_report([study], out=tmp_path / "out", target_acc=0.92).markdown.read_text())
    assert [row[5:9] for row in convergence[1:]] == [
        ["92.0", "1.00", "1/1", "1.00×"],
        ["92.0", "3.00 (2.50–never)", "2/3", "1.00×"],
        ["92.0", "0.500", "1/1", "2.00×"],
        ["92.0", "never (1.00–never)", "1/3", "—"],  # two seeds never: the median is never
    ]


def test_numbers_are_recomputable_from_runs_csv(study_report):
    report = study_report
    runs = pd.read_csv(report.runs_csv)
    table = pd.read_csv(report.speedup_csv)
    assert len(runs) == 11 and sorted(runs["status"].unique()) == ["complete", "failed", "no summary.json", "running"]
    done = runs[runs["status"] == "complete"]

    def med(strategy, world_size, column):
        return done[(done["strategy"] == strategy) & (done["world_size"] == world_size)][column].median()

    assert len(table) == 4
    for _, row in table.iterrows():
        s, p = row["strategy"], row["world_size"]
        assert row["iter_ms"] == pytest.approx(med(s, p, "median_iter_s") * 1000)
        assert row["throughput_samples_s"] == pytest.approx(med(s, p, "throughput_samples_s"))
        assert row["speedup_vs_baseline"] == pytest.approx(med("sync", p, "median_iter_s") / med(s, p, "median_iter_s"))
        assert row["scaling_speedup"] == pytest.approx(med(s, p, "throughput_samples_s") / med(s, 1, "throughput_samples_s"))
        assert row["acc_gap_pp"] == pytest.approx((med(s, p, "final_test_acc") - med("sync", p, "final_test_acc")) * 100)
        assert row["t_comm_wait_ms"] == pytest.approx(med(s, p, "t_comm_wait_s") * 1000)
        ttt = done[(done["strategy"] == s) & (done["world_size"] == p)]["time_to_target_s"].fillna(math.inf)
        assert row["time_to_target_s"] == pytest.approx(float(np.median(ttt)))
    # and the exact values, so a consistent-but-wrong pipeline cannot pass
    by = table.set_index(["strategy", "world_size"])
    assert by.loc[("delayed(k=1)", 2), "speedup_vs_baseline"] == pytest.approx(14.0 / 8.0)
    assert by.loc[("delayed(k=1)", 2), "scaling_speedup"] == pytest.approx(4000.0 / (16 / 0.009))
    assert by.loc[("sync", 2), "scaling_speedup"] == pytest.approx((32 / 0.014) / 1600.0)
    assert by.loc[("delayed(k=1)", 2), "ttt_speedup"] == pytest.approx(2.0)
    assert by.loc[("delayed(k=1)", 2), "target_reached"] == 2
    assert by.loc[("sync", 2), "seeds"] == "0,1,2"
    assert (table["baseline"] == "sync").all()


def test_runs_csv_describes_each_run(study_report):
    runs = pd.read_csv(study_report.runs_csv).set_index("run")
    row = runs.loc["../sweep/s1"]
    assert (row["dataset"], row["model"], row["backend"], row["strategy"]) == ("digits", "mlp", "gloo", "sync")
    assert (row["world_size"], row["batch_size"], row["global_batch_size"], row["seed"], row["job"]) == (2, 16, 32, 1, 2)
    assert row["median_iter_s"] == pytest.approx(0.014)
    assert row["time_to_target_s"] == pytest.approx(1.5)
    assert row["t_forward_s"] == pytest.approx(0.001) and row["t_iter_s"] == pytest.approx(0.0115)
    assert runs.loc["../sweep/failed", "error"] == "RuntimeError: boom"


def test_every_plot_is_a_sensible_png(study_report):
    from matplotlib.image import imread

    report = study_report
    assert sorted(p.name for p in report.plots) == sorted(PLOTS.values())
    for path in report.plots:
        width, height = png_size(path)
        assert 600 <= width <= 4000 and 300 <= height <= 4000, (path.name, width, height)
        assert path.stat().st_size > 10_000, path.name
        pixels = imread(path)
        assert pixels.shape[:2] == (height, width) and pixels[..., :3].std() > 0.05, f"{path.name} looks blank"
        assert f"]({path.name})" in report.markdown.read_text()
    # one facet per world size side by side: the curves are twice as wide as the single-panel plot
    assert png_size(report.out / "loss_vs_iteration.png")[0] > 1.3 * png_size(report.out / "speedup_vs_workers.png")[0]


def test_curves_are_medians_over_seeds_with_min_max():
    curves = [pd.DataFrame({"step": [0, 1], "wall_s": [0.1, 0.2], "loss": [v, v / 2]}) for v in (1.0, 2.0, 4.0)]
    agg = _aligned(curves, "step", "wall_s", "loss")
    assert agg["y_med"].tolist() == [2.0, 1.0]
    assert agg["y_min"].tolist() == [1.0, 0.5] and agg["y_max"].tolist() == [4.0, 2.0]
    assert agg["x"].tolist() == pytest.approx([0.1, 0.2])


def test_strategy_labels_show_defining_and_varying_keys():
    configs = [
        {"strategy": {"name": "sync", "fuse": True}},
        {"strategy": {"name": "layerwise", "wait_at": "forward", "bucket_mb": 0}},
        {"strategy": {"name": "layerwise", "wait_at": "step", "bucket_mb": 0}},
        {"strategy": {"name": "delayed", "k": 1, "drain": True}},
        {"strategy": {"name": "delayed", "k": 2, "drain": False}},
        {"strategy": {"name": "ddp", "bucket_mb": 25}},
    ]
    assert strategy_labels(configs) == [
        "sync", "layerwise(wait_at=forward)", "layerwise(wait_at=step)",
        "delayed(k=1, drain=true)", "delayed(k=2, drain=false)", "ddp",
    ]


def test_a_compensation_is_always_in_the_label():
    # one compensation for every k, so it does not vary: still not plain delayed-k
    compensated = [{"strategy": {"name": "delayed", "k": k, "compensation": "spike+predict"}} for k in (1, 2)]
    assert strategy_labels(compensated + [{"strategy": {"name": "sync"}}]) == [
        "delayed(k=1, compensation=spike+predict)", "delayed(k=2, compensation=spike+predict)", "sync"]
    plain = [{"strategy": {"name": "delayed", "k": k, "compensation": "none"}} for k in (1, 2)]
    assert strategy_labels(plain) == ["delayed(k=1)", "delayed(k=2)"]


def test_a_yielding_training_thread_is_a_variant_of_its_strategy_not_a_setting(tmp_path):
    # backend.compute_nice: the benchmark's CASE+nice, compared with sync of the same setting
    configs = [{"strategy": {"name": "delayed", "k": 1}, "backend": {"name": "gloo", "compute_nice": n}}
               for n in (0, 19, 5)]
    assert strategy_labels(configs) == ["delayed(k=1)", "delayed(k=1)+nice", "delayed(k=1)+nice=5"]
    assert [split_nice(label) for label in strategy_labels(configs)] == [
        ("delayed(k=1)", 0), ("delayed(k=1)", 19), ("delayed(k=1)", 5)]
    for i, (name, nice, t) in enumerate([("sync", 0, 0.02), ("delayed", 0, 0.012), ("delayed", 19, 0.01)]):
        make_run(tmp_path / f"r{i}", strategy={"name": name, "k": 1}, median_iter_s=t,
                 extra_config={"backend": {"name": "gloo", "compute_nice": nice}})
    table = make_report([tmp_path], out=tmp_path / "out").table.set_index("strategy")
    assert "backend.compute_nice" not in table.columns  # one setting: each speedup is over its sync
    assert table.loc["delayed(k=1)+nice", "speedup_vs_baseline"] == pytest.approx(2.0)
    assert table.loc["delayed(k=1)", "speedup_vs_baseline"] == pytest.approx(0.02 / 0.012)
    # a strategy's name means its plain variant, not the one with a yielding training thread
    assert resolve_baseline(["sync", "delayed(k=1)", "delayed(k=1)+nice"], "delayed") == "delayed(k=1)"
    assert resolve_baseline(["sync", "delayed(k=1)+nice"], "delayed") == "delayed(k=1)+nice"


def test_an_integer_and_a_float_of_one_key_are_one_setting():
    # an older run wrote strategy.bucket_mb=0 where a newer one writes 0.0: the same layout
    configs = [{"strategy": {"name": "layerwise", "wait_at": "forward", "bucket_mb": 0, "split_mb": 1.0}},
               {"strategy": {"name": "layerwise", "wait_at": "forward", "bucket_mb": 0.0, "split_mb": 1.0}},
               {"strategy": {"name": "layerwise", "wait_at": "forward", "bucket_mb": 0.0, "split_mb": 0.0}}]
    labels = strategy_labels(configs)
    assert labels[0] == labels[1] != labels[2]
    assert labels[0] == "layerwise(wait_at=forward, split_mb=1.0)"


def test_a_varying_config_key_becomes_a_setting_column(tmp_path):
    for i, lr in enumerate((0.05, 0.1)):
        make_run(tmp_path / f"r{i}", train={"lr": lr}, median_iter_s=0.01 * (i + 1))
    report = make_report([tmp_path], out=tmp_path / "out")
    assert report.table["train.lr"].tolist() == [0.05, 0.1]
    iteration = md_tables(report.markdown.read_text())[0]
    assert iteration[0][:3] == ["model", "train.lr", "strategy"]
    assert iteration[0][-1] == "speedup vs sync"  # no 1-worker runs: no column of dashes for scaling
    assert [row[1] for row in iteration[1:]] == ["0.05", "0.1"]
    # model.hidden exists for mlp only: comparing it against other models would invent a setting
    make_run(tmp_path / "r2", model="lenet", median_iter_s=0.02)
    assert "model.hidden" not in runs_frame(load_runs([tmp_path])[0]).columns


def test_a_key_named_as_not_a_setting_does_not_split_the_table(tmp_path):
    # a link sweep whose slow cells ran fewer steps: one setting per link rate, not two
    for i, (steps, name) in enumerate([(12, "sync"), (20, "sync"), (12, "delayed"), (20, "delayed")]):
        make_run(tmp_path / f"r{i}", strategy={"name": name}, train={"max_steps": steps}, median_iter_s=0.01)
    assert "train.max_steps" in make_report([tmp_path], out=tmp_path / "a").table.columns
    report = make_report([tmp_path], out=tmp_path / "b", not_settings=["train.max_steps"])
    assert "train.max_steps" not in report.table.columns
    assert sorted(report.table["runs"].tolist()) == [2, 2]  # each strategy's two runs in one row


def test_rows_sort_numbers_as_numbers(tmp_path):
    for batch in (16, 4, 64, 1):
        for name in ("delayed", "sync"):
            make_run(tmp_path / f"{name}{batch}", batch_size=batch, strategy={"name": name, "k": 1} if name == "delayed" else None)
    table = speedup_frame(runs_frame(load_runs([tmp_path])[0]))
    assert table["batch_size"].tolist() == [1, 1, 4, 4, 16, 16, 64, 64]
    assert table["strategy"].tolist()[:2] == ["sync", "delayed(k=1)"]  # the baseline first within a setting


def test_baseline_by_name_or_label(tmp_path):
    for i, wait_at in enumerate(("forward", "step")):
        make_run(tmp_path / f"l{i}", strategy={"name": "layerwise", "wait_at": wait_at}, median_iter_s=0.01 * (i + 1))
    labels = ["layerwise(wait_at=forward)", "layerwise(wait_at=step)"]
    with pytest.raises(ReportError, match=r"--baseline layerwise matches layerwise\(wait_at=forward\), "):
        resolve_baseline(labels, "layerwise")
    frame = runs_frame(load_runs([tmp_path])[0])
    table = speedup_frame(frame, baseline="layerwise(wait_at=step)").set_index("strategy")
    assert table.loc["layerwise(wait_at=forward)", "speedup_vs_baseline"] == pytest.approx(2.0)
    missing = make_report([tmp_path], out=tmp_path / "out", baseline="sync")
    assert missing.table["speedup_vs_baseline"].isna().all()
    assert "The baseline strategy is not among the complete runs" in missing.markdown.read_text()


def test_jobs_a_sweep_never_started_are_listed(tmp_path):
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(
        "hydra:\n"
        "  sweeper:\n"
        "    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params:\n"
        "      world_size: 1,2\n"
        "  overrides:\n"
        "    task:\n"
        "    - seed=0,1,2\n"
    )
    for job, (p, seed) in enumerate([(1, 0), (1, 1), (1, 2), (2, 0)]):
        make_run(sweep / str(job), world_size=p, seed=seed, job=job)
    runs, sweeps = load_runs([sweep])
    assert [(m["job"], m["overrides"]) for m in missing_jobs(runs, sweeps)] == [
        (4, "world_size=2 seed=1"), (5, "world_size=2 seed=2")]
    text = make_report([sweep]).markdown.read_text()
    assert "- `.` job 4 (`world_size=2 seed=1`): **not started** (no run directory)" in text
    assert "4 complete run(s) of 6" in text


def test_run_dirs_are_found_in_job_order_and_bookkeeping_is_skipped(tmp_path):
    for job in (0, 1, 2, 10):
        make_run(tmp_path / str(job), job=job)
    (tmp_path / "0" / ".submitit").mkdir()
    (tmp_path / "0" / ".submitit" / "summary.json").write_text("{}")
    runs, _ = find_runs([tmp_path])
    assert [p.name for p in runs] == ["0", "1", "2", "10"]
    assert find_runs([tmp_path / "2"])[0] == [tmp_path / "2"]  # a run dir itself
    assert len(find_runs([tmp_path, tmp_path / "0"])[0]) == 4  # named twice, counted once


@pytest.mark.parametrize("case,message", [
    ("missing", "no such directory"),
    ("file", "not a directory"),
    ("empty", "no run directories (with summary.json or .hydra/config.yaml) under"),
])
def test_bad_input_is_one_clear_error(tmp_path, case, message):
    target = tmp_path / case
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    with pytest.raises(ReportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_report([target])


def test_broken_files_are_findings_not_crashes(tmp_path):
    make_run(tmp_path / "ok")
    make_run(tmp_path / "broken")
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    (tmp_path / "broken" / "metrics.csv").write_text("")
    report = make_report([tmp_path])
    runs = report.runs.set_index("run")
    assert runs.loc["broken", "status"] == "unreadable summary.json"
    assert "metrics file unreadable" in runs.loc["broken", "error"]
    assert len(report.table) == 1


def test_a_summary_without_config_fields_falls_back_to_the_hydra_config(tmp_path):
    """Under launcher=external the summary holds only results; the setting comes from .hydra/config.yaml."""
    import json

    run = make_run(tmp_path / "r", strategy=DELAYED, world_size=4, batch_size=8, model="lenet", median_iter_s=0.02)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("strategy", "world_size", "model", "dataset", "backend", "batch_size", "global_batch_size", "seed",
                "config"):
        summary.pop(key)
    (run / "summary.json").write_text(json.dumps(summary))
    row = runs_frame(load_runs([tmp_path])[0]).iloc[0]
    assert (row["strategy"], row["world_size"], row["model"], row["batch_size"], row["global_batch_size"]) == (
        "delayed(k=1)", 4, "lenet", 8, 32)
    assert row["median_iter_s"] == pytest.approx(0.02) and row["status"] == "complete"


def test_a_sweep_where_nothing_completed_still_reports_why(tmp_path):
    make_run(tmp_path / "0", status="failed", error="CommTimeout: rank 1 went away")
    report = make_report([tmp_path])
    text = report.markdown.read_text()
    assert "No run completed, so there are no tables." in text and md_tables(text) == []
    assert "- `0` (sync, 2 workers, seed 0): **failed**: CommTimeout: rank 1 went away" in text
    assert report.main_table == "(no complete runs)"
    assert all(png_size(p)[0] >= 600 for p in report.plots)


def test_target_acc_must_be_a_fraction(tmp_path):
    make_run(tmp_path / "r")
    with pytest.raises(ReportError, match=r"--target-acc 95.0 must be a fraction in \(0, 1\]"):
        make_report([tmp_path], target_acc=95.0)


def test_a_link_rate_sweep_is_ordered_by_rate_and_plotted(tmp_path):
    from matplotlib.image import imread

    # (sync, delayed) seconds per iteration: the slower the link, the more delayed wins
    times = {"10gbit": (0.05, 0.045), "100mbit": (0.8, 0.5), "1gbit": (0.12, 0.08)}
    for batch in (32, 8):
        for rate, (t_sync, t_delayed) in times.items():
            cluster = {"launcher": {"name": "emulated"}, "cluster": {"bandwidth": rate, "latency": None}}
            # as scripts/bench-overlap does: only sync times the allreduce alone, which is no setting
            make_run(tmp_path / f"sync-{rate}-{batch}", batch_size=batch, median_iter_s=t_sync, extra_config=cluster,
                     train={"measure_comm": True})
            make_run(tmp_path / f"delayed-{rate}-{batch}", batch_size=batch, median_iter_s=t_delayed,
                     strategy={"name": "delayed", "k": 1}, extra_config=cluster)
    report = make_report([tmp_path], out=tmp_path / "out")
    table = report.table
    assert table["batch_size"].tolist() == [8] * 6 + [32] * 6
    assert table["cluster.bandwidth"].tolist()[:6] == ["100mbit", "100mbit", "1gbit", "1gbit", "10gbit", "10gbit"]
    delayed = table[table["strategy"] == "delayed(k=1)"]
    assert delayed["speedup_vs_baseline"].tolist()[:3] == pytest.approx([0.8 / 0.5, 0.12 / 0.08, 0.05 / 0.045])
    iteration = md_tables(report.markdown.read_text())[0]
    assert iteration[0][:4] == ["model", "batch/worker", "cluster.bandwidth", "strategy"]
    plot = report.out / "speedup_vs_bandwidth.png"
    assert plot in report.plots and "](speedup_vs_bandwidth.png)" in report.markdown.read_text()
    width, height = png_size(plot)
    assert width > 1.3 * height and plot.stat().st_size > 10_000  # one panel per batch size, side by side
    assert imread(plot)[..., :3].std() > 0.05
    assert link_rate_mbit("1gbit") == 1000 and link_rate_mbit("200mbit") == 200 and math.isnan(link_rate_mbit("x"))

"""The report's convergence side: evaluations within epochs, training time without them, collapse warnings,
and the time-to-accuracy study's target and verdicts."""
from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from asyncsgd.report import load_run, make_report, runs_frame, time_to_target
from asyncsgd.time_to_accuracy import choose_target, study, verdicts

from ..report_fixtures import make_run, md_tables

COLUMNS = ["kind", "step", "epoch", "loss", "t_iter", "train_loss", "test_acc", "wall_s", "eval_s"]


def _rewrite_metrics(run_dir, rows):
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _run_with_evals(path, evals, **kwargs):
    """A fixture run whose accuracy comes from (kind, step, wall_s, eval_s, test_acc) rows."""
    run_dir = make_run(path, **kwargs)
    rows = [{"kind": "iter", "step": s, "epoch": 0, "loss": 1.0, "t_iter": 0.01, "wall_s": 0.01 * (s + 1),
             "eval_s": 0.0} for s in range(10)]
    rows += [{"kind": kind, "step": step, "epoch": 0, "wall_s": wall, "eval_s": eval_s, "test_acc": acc}
             for kind, step, wall, eval_s, acc in evals]
    _rewrite_metrics(run_dir, rows)
    return run_dir


def test_time_to_target_counts_evaluations_within_epochs_and_leaves_their_time_out(tmp_path):
    # the eval row at step 4 reaches 0.9 after 3.0 s of which 1.0 s evaluating: 2.0 s of training
    run = load_run(_run_with_evals(tmp_path / "r", [("eval", 2, 1.5, 0.5, 0.6), ("eval", 4, 3.0, 1.0, 0.91),
                                                    ("epoch", 10, 6.0, 1.5, 0.93)]))
    assert time_to_target(run, 0.9) == pytest.approx(2.0)
    assert time_to_target(run, 0.92) == pytest.approx(4.5)
    assert time_to_target(run, 0.95) != time_to_target(run, 0.95)  # NaN: never


def test_runs_without_eval_s_keep_their_wall_clock_time(tmp_path):
    run = load_run(make_run(tmp_path / "old", evals=[(0, 1.0, 0.96)]))  # metrics.csv of before eval_s existed
    assert time_to_target(run, 0.95) == 1.0


def test_collapsed_runs_are_warned_about_and_counted(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "sync", evals=[(0, 1.0, 0.9)])
    for seed in (0, 1):
        run_dir = make_run(sweep / f"k1-{seed}", strategy={"name": "delayed", "k": 1}, seed=seed, final_test_acc=0.1,
                           evals=[(0, 1.0, 0.1)])
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["collapse"] = {"kind": "collapsed", "epoch": 2, "train_loss": 2.3026, "chance_loss": 2.3026,
                               "message": "training collapsed to chance level: mean training loss 2.3026 in epoch 2"}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    report = make_report([sweep], out=tmp_path / "out")
    text = report.markdown.read_text()
    _, convergence, _ = md_tables(text)
    assert convergence[0][-1] == "collapsed" and convergence[-1][-1] == "**2/2**" and convergence[1][-1] == "0"
    warning = text.split("## Warning: training collapsed to chance level")[1].split("## ")[0]
    assert warning.count("training collapsed to chance level: mean training loss 2.3026 in epoch 2") == 2
    assert "`../sweep/k1-0` (delayed(k=1), 2 workers, seed 0)" in warning
    assert pd.read_csv(report.runs_csv)["collapse"].notna().sum() == 2


def test_reports_without_collapse_have_neither_column_nor_section(tmp_path):
    make_run(tmp_path / "sweep" / "sync")
    text = make_report([tmp_path / "sweep"], out=tmp_path / "out").markdown.read_text()
    assert "collapsed" not in md_tables(text)[1][0] and "## Warning" not in text


def test_the_study_target_is_below_sync_on_a_half_point_grid(tmp_path):
    for seed, acc in enumerate((0.8861, 0.8905, 0.8790)):
        make_run(tmp_path / "s" / f"sync-{seed}", seed=seed, final_test_acc=acc)
    make_run(tmp_path / "s" / "k1", strategy={"name": "delayed", "k": 1}, final_test_acc=0.99)  # not looked at
    frame = runs_frame([load_run(p) for p in sorted((tmp_path / "s").iterdir())])
    assert choose_target(frame) == pytest.approx(0.875)  # median 88.61 - 1 = 87.61 -> 87.5


def test_verdicts_name_the_best_delayed_variant_and_each_target():
    rows = [("sync", 0.880, 10.0, 1.0, 1.0), ("delayed(k=1, compensation=none)", 0.870, 8.0, 1.25, 1.30),
            ("delayed(k=1, compensation=dc)", 0.878, 7.0, 1.43, 1.30),
            ("delayed(k=1, compensation=momentum)", 0.860, 9.0, 1.11, 1.30),
            ("delayed(k=2, compensation=none)", 0.850, float("inf"), float("nan"), 1.5)]
    table = pd.DataFrame([{"strategy": s, "world_size": 2, "runs": 3, "test_acc": a, "time_to_target_s": t,
                           "ttt_speedup": r, "speedup_vs_baseline": it} for s, a, t, r, it in rows])
    lines = verdicts(table, "emulated")
    assert lines[0].startswith("- K=1: best delayed variant `delayed(k=1, compensation=dc)` ends at 87.80%")
    assert "−0.20 pp — within 0.5 pp: met" in lines[0]
    assert "ratio 1.10 (target ≥ 0.9): met" in lines[1]
    assert "K=2" in lines[2] and "−3.00 pp" in lines[2] and "**missed**" in lines[2]
    assert "no time-to-target speedup" in lines[3] and "**missed**" in lines[3]
    compensated = {line.split("`")[1]: line for line in lines if "vs plain delayed K=1" in line}
    assert compensated["dc"].endswith("not worse: met") and compensated["momentum"].endswith("not worse: **missed**")
    assert not any("ratio" in line for line in verdicts(table, "loopback"))  # the speed target is the links'


def test_the_best_variant_is_the_first_to_the_target_among_those_that_keep_the_accuracy():
    rows = [("sync", 0.880, 10.0), ("delayed(k=1, compensation=dc)", 0.879, 9.0),  # most accurate, slower
            ("delayed(k=1, compensation=predict)", 0.876, 7.0),  # within 0.5 pp and first: the pick
            ("delayed(k=1, compensation=none)", 0.870, 6.0),  # first of all, but 1 pp below sync
            ("delayed(k=2, compensation=none)", 0.860, 6.0), ("delayed(k=2, compensation=dc)", 0.868, 8.0)]
    table = pd.DataFrame([{"strategy": s, "world_size": 2, "runs": 3, "test_acc": a, "time_to_target_s": t,
                           "ttt_speedup": 10.0 / t, "speedup_vs_baseline": 1.5} for s, a, t in rows])
    lines = verdicts(table, "loopback")
    assert "`delayed(k=1, compensation=predict)` ends at 87.60%" in lines[0]
    # none within 0.5 pp at K=2: the most accurate is named, and the target is missed
    assert "`delayed(k=2, compensation=dc)` ends at 86.80%" in lines[1] and "**missed**" in lines[1]


def test_verdicts_read_the_variant_with_a_yielding_training_thread():
    # backend.compute_nice labels a run STRATEGY+nice: still a delayed K=1 variant
    rows = [("sync", 0.880, 10.0), ("delayed(k=1)", 0.870, 8.0), ("delayed(k=1)+nice", 0.878, 7.0)]
    table = pd.DataFrame([{"strategy": s, "world_size": 2, "runs": 3, "test_acc": a, "time_to_target_s": t,
                           "ttt_speedup": 10.0 / t, "speedup_vs_baseline": 1.4} for s, a, t in rows])
    lines = verdicts(table, "emulated")
    assert lines[0].startswith("- K=1: best delayed variant `delayed(k=1)+nice` ends at 87.80%")


def test_the_study_readme_states_each_target_with_its_numbers(tmp_path):
    cell = tmp_path / "runs" / "emulated-mlp"
    for seed, acc in enumerate((0.8861, 0.8905, 0.8790)):
        _run_with_evals(cell / f"sync-{seed}", [("epoch", 10, 0.2, 0.0, acc)], seed=seed, final_test_acc=acc)
        _run_with_evals(cell / f"k1-{seed}", [("epoch", 10, 0.15, 0.0, acc - 0.002)], seed=seed,
                        strategy={"name": "delayed", "k": 1}, final_test_acc=acc - 0.002)
    readme = study(tmp_path / "runs", tmp_path / "out").read_text()
    assert "{" not in readme  # every placeholder filled in
    assert "at least 0.9× its per-iteration speedup" in readme
    assert "## emulated links, mlp" in readme and "Target 87.5%" in readme
    assert "- K=1: best delayed variant `delayed(k=1)` ends at 88.41%" in readme

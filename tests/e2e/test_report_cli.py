"""asyncsgd-report as a user runs it: on hand-made run dirs, on bad input, and on a real sweep."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ..report_fixtures import make_run, md_tables, png_size

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)  # a test run under a launcher must not look like a worker
    return env


def report_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    code = "from asyncsgd.cli import report; report()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=180)


def test_report_command_writes_everything_and_prints_the_main_table(tmp_path):
    make_run(tmp_path / "sweep" / "0", world_size=1, median_iter_s=0.010, job=0)
    make_run(tmp_path / "sweep" / "1", world_size=2, median_iter_s=0.016, job=1)
    done = report_cli("sweep", "--out", "out", "--title", "CLI test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "report: out/report.md"
    assert lines[2] == "| mlp | sync | 1 | 1 | 10.0 | 1,600 | 1.00× | 1.00× |"
    # 32 samples in 16 ms is 2,000 samples/s, 1.25 times 1,600
    assert lines[3] == "| mlp | sync | 2 | 1 | 16.0 | 2,000 | 1.00× | 1.25× |"
    out = tmp_path / "out"
    for name in ("report.md", "runs.csv", "speedup.csv", "loss_vs_iteration.png", "loss_vs_time.png",
                 "accuracy_vs_epoch.png", "accuracy_vs_time.png", "speedup_vs_workers.png", "time_breakdown.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "report.md").read_text().startswith("# CLI test\n")


def test_report_defaults_to_the_first_dir(tmp_path):
    make_run(tmp_path / "sweep" / "0")
    done = report_cli(tmp_path / "sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"report: {tmp_path / 'sweep' / 'report.md'}"
    assert png_size(tmp_path / "sweep" / "time_breakdown.png")[0] > 0


@pytest.mark.parametrize("args,message", [
    (["nowhere"], "asyncsgd-report: error: nowhere: no such directory"),
    (["empty"], "asyncsgd-report: error: no run directories (with summary.json or .hydra/config.yaml) under empty"),
    (["afile"], "asyncsgd-report: error: afile: not a directory"),
    (["run", "--target-acc", "95"], "asyncsgd-report: error: --target-acc 95.0 must be a fraction in (0, 1], e.g. 0.95"),
    (["run", "--target-acc", "high"], "asyncsgd-report: error: argument --target-acc: invalid float value: 'high' (see --help)"),
    (["run", "--baseline", "layerwise"],
     "asyncsgd-report: error: --baseline layerwise matches layerwise(wait_at=forward), layerwise(wait_at=step); "
     "name one of them"),
    ([], "asyncsgd-report: error: the following arguments are required: DIR (see --help)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a run")
    make_run(tmp_path / "run" / "a", strategy={"name": "layerwise", "wait_at": "forward"})
    make_run(tmp_path / "run" / "b", strategy={"name": "layerwise", "wait_at": "step"})
    done = report_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [message]
    assert done.stdout == ""


@pytest.mark.slow
def test_report_of_a_real_sweep_matches_its_summaries(tmp_path):
    """asyncsgd-run's own output, through the report: the numbers are the summaries' numbers."""
    run = subprocess.run(
        [sys.executable, "-m", "asyncsgd.cli", "-m", "+experiment=strategies", "+variant=sync", "train.epochs=2",
         "hydra.sweep.dir=sweep"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    done = report_cli("sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summaries = {int(p.parent.name): json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")}
    assert sorted(summaries) == [0, 1] and all(s["status"] == "complete" for s in summaries.values())
    runs = pd.read_csv(tmp_path / "sweep" / "runs.csv").set_index("job")
    for job, s in summaries.items():
        assert runs.loc[job, "world_size"] == s["world_size"] == job + 1
        assert runs.loc[job, "median_iter_s"] == pytest.approx(s["median_iter_s"])
        assert runs.loc[job, "final_test_acc"] == pytest.approx(s["final_test_acc"])
    iteration = md_tables((tmp_path / "sweep" / "report.md").read_text())[0]
    one, two = (summaries[0]["median_iter_s"] * 1000, summaries[1]["median_iter_s"] * 1000)
    scaling = summaries[1]["throughput_samples_s"] / summaries[0]["throughput_samples_s"]
    assert [row[1:3] for row in iteration[1:]] == [["sync", "1"], ["sync", "2"]]
    assert iteration[2][-1] == f"{scaling:.2f}×"
    assert float(iteration[1][4]) == pytest.approx(one, rel=0.01) and float(iteration[2][4]) == pytest.approx(two, rel=0.01)
    assert "None: all 2 run(s) completed." in (tmp_path / "sweep" / "report.md").read_text()

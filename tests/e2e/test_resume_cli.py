"""The CLI around checkpoints: preemption by signal, resume, refusals, non-finite numbers, sweeps."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ..conftest import BACKENDS, cli_env, read_summary, run_cli

SHORT = ["backend=gloo", "train.max_steps=12", "train.eval_every_epochs=0", "seed=3"]


def _rows(run_dir, kind="iter"):
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("asyncsgd-run: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
# The stop flag travels in the gradient's reduction (sync: read the same step; delayed k=2: two steps later)
@pytest.mark.parametrize("target, strategy", [("launcher", ["strategy=sync"]),
                                              ("rank1", ["strategy=delayed", "strategy.k=2"])], ids=["launcher", "rank1"])
def test_sigterm_stops_every_worker_at_one_step_then_resume_finishes(workdir, backend, target, strategy):
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "asyncsgd.cli", f"backend={backend}", *strategy, "train.epochs=200",
           "train.eval_every_epochs=0", "checkpoint.every_steps=100", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run_dir / "checkpoints" / "step-00000100.pt"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert first.exists(), "training never reached step 100"
    pid = proc.pid if target == "launcher" else int((run_dir / ".asyncsgd" / "rank1.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    signalled = time.monotonic()
    _, stderr = proc.communicate(timeout=90)
    assert time.monotonic() - signalled < 60
    assert proc.returncode == 130, stderr[-3000:]
    summary = read_summary(run_dir)
    stopped = summary["interrupted_at_step"]
    assert summary["status"] == "interrupted" and 100 < stopped < 8800, summary
    assert summary["checkpoint"].endswith(f"step-{stopped:08d}.pt")
    assert f"interrupted at step {stopped}" in stderr and "resume=auto" in stderr
    assert "Traceback" not in stderr

    # finish a little later than the stop (train.max_steps is not meaning-bearing)
    resumed = run_cli([f"backend={backend}", *strategy, "train.epochs=200", "train.eval_every_epochs=0",
                       "checkpoint.every_steps=100", f"train.max_steps={stopped + 30}", "resume=auto",
                       f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "complete" and summary["steps"] == stopped + 30
    assert summary["interrupted_at_step"] is None and summary["error"] is None and summary["finished_at"]
    assert [int(r["step"]) for r in _rows(run_dir)] == list(range(stopped + 30))


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished 2-worker run with checkpoints at steps 4, 8 and 12."""
    workdir = tmp_path_factory.mktemp("checkpointed")
    run_dir = workdir / "run"
    result = run_cli([*SHORT, "checkpoint.every_steps=4", "checkpoint.keep=3", f"hydra.run.dir={run_dir}"],
                     cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_checkpoints_are_kept_and_rotated(checkpointed):
    assert sorted(p.name for p in (checkpointed / "checkpoints").iterdir()) == [
        "step-00000004.pt", "step-00000008.pt", "step-00000012.pt"]


def test_reusing_a_finished_run_dir_is_refused(checkpointed, workdir):
    before = (checkpointed / "summary.json").read_text()
    result = run_cli([*SHORT, f"hydra.run.dir={checkpointed}"], cwd=workdir)
    _one_line_error(result, "already holds a run", "resume=auto")
    assert (checkpointed / "summary.json").read_text() == before


def test_resume_with_changed_meaning_is_refused_listing_keys(checkpointed, workdir):
    path = checkpointed / "checkpoints" / "step-00000008.pt"
    result = run_cli([*SHORT, "world_size=1", f"resume={path}", f"hydra.run.dir={workdir / 'x'}"], cwd=workdir)
    _one_line_error(result, "world_size: 2 -> 1", "not even with resume.allow_changes")
    result = run_cli([*SHORT, "train.lr=0.2", "seed=4", f"resume={path}", f"hydra.run.dir={workdir / 'y'}"], cwd=workdir)
    _one_line_error(result, "seed: 3 -> 4", "train.lr: 0.05 -> 0.2", "resume.allow_changes=true")


def test_allowed_change_resumes_into_a_new_run_dir(checkpointed, workdir):
    path = checkpointed / "checkpoints" / "step-00000008.pt"
    run_dir = workdir / "changed"
    result = run_cli([*SHORT, "train.lr=0.2", "resume.allow_changes=true", f"resume={path}",
                      f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.lr: 0.05 -> 0.2" in result.stderr
    rows = _rows(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(12))  # steps 0-7 from the checkpoint's metrics
    assert [float(r["lr"]) for r in rows] == [0.05] * 8 + [0.2] * 4


@pytest.mark.parametrize("spec, needle", [
    ("/no/such/checkpoint.pt", "resume=/no/such/checkpoint.pt: no such file or directory"),
    ("EMPTY_DIR", "no checkpoint (checkpoints/step-*.pt) in this directory"),
])
def test_resume_path_that_is_not_there(workdir, spec, needle):
    (workdir / "EMPTY_DIR").mkdir()
    _one_line_error(run_cli([*SHORT, f"resume={spec}"], cwd=workdir), needle.replace("EMPTY_DIR", ""))


def test_resume_auto_needs_the_run_dir(workdir):
    _one_line_error(run_cli([*SHORT, "resume=auto"], cwd=workdir), "add hydra.run.dir=RUN_DIR")


def test_truncated_checkpoint_is_one_line(checkpointed, workdir):
    bad = workdir / "step-00000008.pt"
    data = (checkpointed / "checkpoints" / "step-00000008.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _one_line_error(run_cli([*SHORT, f"resume={bad}"], cwd=workdir), "truncated or corrupt")


@pytest.mark.parametrize("override, needle", [
    ("checkpoint.every_steps=-1", "checkpoint.every_steps=-1 must be >= 0"),
    ("checkpoint.every_epochs=-2", "checkpoint.every_epochs=-2 must be >= 0"),
    ("checkpoint.keep=0", "checkpoint.keep=0 must be >= 1"),
    ("train.nonfinite=ignore", "train.nonfinite='ignore' is not allowed; choose one of stop, skip"),
    ("fault.kind=segv", "fault.kind='segv' is not allowed"),
    ("resume.allow_changes=maybe", "resume.allow_changes='maybe' is not a valid bool"),
    ("resume.everything=true", "resume.everything is not a config key"),
])
def test_bad_checkpoint_and_resume_values(workdir, override, needle):
    _one_line_error(run_cli([*SHORT, override], cwd=workdir), needle)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stops_the_run_naming_the_step(workdir, backend):
    run_dir = workdir / "run"
    result = run_cli([*SHORT, f"backend={backend}", "fault.rank=1", "fault.step=5", "fault.kind=nan",
                      "backend.timeout_s=30", f"hydra.run.dir={run_dir}"], cwd=workdir, timeout=120)
    assert result.returncode == 1
    assert "non-finite loss or gradient (NaN/inf) computed at step 5" in result.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "computed at step 5" in summary["error"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["strategy=sync"], ["strategy=delayed", "strategy.k=1"]])
def test_nan_is_skipped_on_every_rank_and_counted(workdir, strategy):
    """Rank 1's loss becomes NaN at step 5: both ranks skip that one update, the run goes on."""
    run_dir = workdir / "run"
    result = run_cli([*SHORT, *strategy, "train.nonfinite=skip", "fault.rank=1", "fault.step=5", "fault.kind=nan",
                      f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "complete" and summary["skipped_updates"] == 1
    rows = _rows(run_dir)
    applied_at = 5 + (1 if "strategy=delayed" in strategy else 0)  # delayed applies step 5's gradient at step 6
    assert [int(r["skipped_updates"]) for r in rows] == [0] * applied_at + [1] * (12 - applied_at)
    final = torch.load(run_dir / "model_final.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in final.values())


@pytest.mark.slow
def test_sweep_with_a_failing_job_runs_the_rest_and_the_report_lists_it(workdir):
    sweep = workdir / "sweep"
    result = run_cli(["-m", *SHORT, "fault.rank=1", "fault.step=3", "fault.kind=nan", "train.nonfinite=stop,skip",
                      f"hydra.sweep.dir={sweep}"], cwd=workdir)
    assert result.returncode == 1
    assert f"1 job(s) failed: {sweep / '0'}" in result.stderr
    assert read_summary(sweep / "0")["status"] == "failed"
    assert read_summary(sweep / "1")["status"] == "complete"
    report = subprocess.run([sys.executable, "-c", "from asyncsgd.cli import report; report()", str(sweep)],
                            cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    problems = text.split("## Runs that failed, did not finish or lack outputs")[1].split("##")[0]
    assert "0" in problems and "failed" in problems and "computed at step 3" in problems, problems

"""A dead or failing worker ends the job, names its rank, and marks the run failed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ..conftest import BACKENDS, cli_env, needs_mpi, read_summary, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_failed_worker_ends_the_job_naming_its_rank(workdir, backend, kind):
    run_dir = workdir / "run"
    start = time.monotonic()
    result = run_cli([f"backend={backend}", "fault.rank=1", "fault.step=7", f"fault.kind={kind}",
                      "backend.timeout_s=30", f"hydra.run.dir={run_dir}"], cwd=workdir, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 60
    assert "worker rank 1 failed" in result.stderr, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and summary["failed_rank"] == 1
    if kind == "raise":
        assert "fault injected on rank 1 at step 7" in summary["error"]
    if backend == "gloo":
        # torch's elastic agent logs the exit with a traceback: the run's log gets it, the terminal does not
        assert "Traceback" not in result.stderr and "ProcessExitedException" not in result.stderr, result.stderr
        assert "ProcessExitedException" in (run_dir / "asyncsgd.log").read_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_killed_from_outside(workdir, backend):
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "asyncsgd.cli", f"backend={backend}", "train.epochs=200",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = run_dir / ".asyncsgd" / "rank0.pid"
    deadline = time.monotonic() + 90
    while not (pid_file.exists() and (run_dir / "metrics.csv").exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "workers never started"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = proc.communicate(timeout=90)
    assert time.monotonic() - killed_at < 60
    assert proc.returncode != 0
    assert "worker rank 0 failed" in stderr, stderr[-3000:]
    assert read_summary(run_dir)["status"] == "failed"


@pytest.mark.parametrize("backend, kind", [("gloo", "nan"), pytest.param("mpi", "hang", marks=needs_mpi)])
def test_clean_up_after_a_failure_keeps_the_first_error_and_the_metrics(workdir, backend, kind):
    """layerwise holds reductions in flight when the error comes; clean-up must not wait for
    them (a second timeout) nor raise over the first error, and the metrics rows survive."""
    run_dir = workdir / "run"
    result = run_cli([f"backend={backend}", "strategy=layerwise", "fault.rank=1", "fault.step=7", f"fault.kind={kind}",
                      "backend.timeout_s=6", f"hydra.run.dir={run_dir}"], cwd=workdir, timeout=120)
    assert result.returncode != 0
    report = json.loads((run_dir / ".asyncsgd" / "failure-rank0.json").read_text())
    expected = {"nan": "NonFiniteGradient", "hang": "CommTimeout"}[kind]
    assert report["error"].startswith(expected), report["error"]
    assert "in close" not in report["traceback"], report["traceback"]  # the first error, not clean-up's
    steps = pd.read_csv(run_dir / "metrics.csv").query("kind == 'iter'")["step"].tolist()
    assert steps == list(range(len(steps))) and len(steps) >= 7, steps

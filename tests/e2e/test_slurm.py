"""asyncsgd on a real one-node SLURM (scripts/setup-slurm): srun, the submitit launcher with
concurrent jobs and a failing one, preemption with requeue and resume; and the script itself.

Every test here talks to real slurmctld/slurmd/slurmdbd daemons; none is mocked.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .. import slurm_cluster
from ..conftest import HAVE_MPI, cli_env, needs_mpi, read_summary, run_cli
from ..parallel.helpers import COMMON, max_relative_error, reference_sgd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                       reason="hydra-submitit-launcher is not installed (pip install 'asyncsgd[slurm]')"),
]

SUBMITIT = ["hydra/launcher=submitit_slurm", "launcher=external", "world_size=2"]


@pytest.fixture(scope="session")
def slurm():
    """SLURM's environment (SLURM_CONF) while this session uses the cluster."""
    try:
        env = slurm_cluster.acquire()
    except RuntimeError as exc:
        pytest.skip(f"no SLURM here: {exc}")
    yield env
    slurm_cluster.release()


def _slurm(cmd, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, **kw)


def _srun(args, workdir, slurm, tasks=2, mpi=False, timeout=300):
    """``srun -n TASKS asyncsgd-run ARGS`` (the venv's python, as a user's PATH would give it)."""
    prefix = ["srun", "-n", str(tasks), *(["--mpi=pmi2"] if mpi else [])]
    return run_cli(args, cwd=workdir, prefix=prefix, env_extra=slurm, timeout=timeout)


def _sacct(job_ids, slurm, duplicates=False):
    """{job id: [states, oldest first]} and {job id: (start, end)} of whole jobs (not steps),
    once they have ended (a sweep returns with the results; the tasks may still be exiting)."""
    deadline = time.monotonic() + 120
    while _slurm(["squeue", "-h", "-j", ",".join(map(str, job_ids))], slurm).stdout.strip():
        assert time.monotonic() < deadline, f"jobs {job_ids} did not end after their results"
        time.sleep(1)
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,Start,End", *(["-D"] if duplicates else [])]
    for job in job_ids:
        cmd += ["-j", str(job)]
    out = _slurm(cmd, slurm).stdout
    states, times = {}, {}
    for line in out.splitlines():
        job, state, start, end = line.split("|")
        states.setdefault(job, []).append(state.split()[0])
        times[job] = (start, end)
    return states, times


# ---------------------------------------------------------------- the script
def test_setup_slurm_starts_a_cluster_and_stop_leaves_nothing(tmp_path):
    """A second, private instance (own directory and ports) from nothing to nothing."""
    if os.geteuid() != 0:
        pytest.skip("scripts/setup-slurm needs root")
    where = tmp_path / "c"  # short: socket paths have a 108-byte limit
    env = {**os.environ, "ASYNCSGD_SLURM_DIR": str(where), "ASYNCSGD_SLURM_PORT": "17817"}
    setup = lambda *args, timeout=300: subprocess.run([str(slurm_cluster.SETUP), *args], env=env,  # noqa: E731
                                                     capture_output=True, text=True, timeout=timeout)
    try:
        started = setup(timeout=900)
        if started.returncode != 0 and "apt-get" in started.stderr:
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("setup-slurm: node ") and " idle " in started.stdout
        conf = {"SLURM_CONF": str(where / "etc" / "slurm.conf")}
        assert _slurm(["sinfo", "-h", "-o", "%P %T %c"], conf).stdout.split() == [
            "debug*", "idle", str(os.cpu_count()), "urgent", "idle", str(os.cpu_count())]
        ranks = _slurm(["srun", "-n", "2", "printenv", "SLURM_PROCID"], conf).stdout.split()
        assert sorted(ranks) == ["0", "1"]
        again = setup()
        assert again.returncode == 0 and "already running" in again.stdout
        pids = [int((where / f).read_text()) for f in ("run/slurmctld.pid", "run/slurmd.pid", "run/slurmdbd.pid",
                                                        "db/mysqld.pid", "munge/munged.pid")]
    finally:
        stopped = setup("--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not where.exists() and not Path(f"{where}.lock").exists()
    assert [p for p in pids if Path(f"/proc/{p}").exists()] == []
    status = setup("--status")
    assert status.returncode == 1 and status.stdout.strip() == "setup-slurm: not running"


def test_setup_slurm_refuses_in_one_line_without_root(tmp_path):
    if os.geteuid() != 0:
        as_user = [str(slurm_cluster.SETUP)]
    else:
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(slurm_cluster.SETUP)]
    env = {**os.environ, "ASYNCSGD_SLURM_DIR": str(tmp_path / "never")}
    done = subprocess.run(as_user, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"setup-slurm: needs root: it installs packages and runs slurmctld and slurmd as root (sudo {slurm_cluster.SETUP})"]
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- srun
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["gloo", pytest.param("mpi", marks=needs_mpi)])
def test_srun_gives_the_parameters_of_launcher_local(workdir, slurm, backend):
    """sync and layerwise under srun end within 1e-5 of plain SGD on the global batch, where
    launcher=local ends too (tests/parallel/test_sync_equivalence.py, the same settings)."""
    reference = reference_sgd("mlp", batch=32, steps=60)
    for strategy in ("sync", "layerwise"):
        run_dir = workdir / f"srun-{strategy}"
        done = _srun(["launcher=external", *COMMON, f"backend={backend}", "world_size=2", "train.batch_size=16",
                      f"strategy={strategy}", f"hydra.run.dir={run_dir}"], workdir, slurm, mpi=backend == "mpi")
        assert done.returncode == 0, done.stderr[-3000:]
        summary = read_summary(run_dir)
        assert summary["status"] == "complete" and summary["steps"] == 60
        assert (summary["launcher"], summary["world_size"], summary["comm"]["world_size"]) == ("external", 2, 2)
        assert summary["slurm_job_id"].isdigit()
        if backend == "gloo":  # the rendezvous port comes from the job and step ids
            assert f"(port from SLURM job {summary['slurm_job_id']} step 0)" in summary["rendezvous"]
        final = torch.load(run_dir / "model_final.pt", weights_only=True)
        assert max_relative_error(final, reference) < 1e-5, strategy


def test_srun_refuses_a_world_size_other_than_its_task_count(workdir, slurm):
    done = _srun(["launcher=external", "backend=gloo", "world_size=3"], workdir, slurm, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("asyncsgd-run")]
    assert lines == ["asyncsgd-run: error: world_size=3, but srun started 2 workers (SLURM_NTASKS=2); "
                     "set world_size=2 or start 3 workers"], done.stderr
    assert not (workdir / "results").exists()


# ---------------------------------------------------------------- the submitit launcher
@pytest.mark.timeout(900)
def test_submitit_sweep_runs_jobs_together_and_lists_the_failed_ones(workdir, slurm):
    sweep = workdir / "sweep"
    done = run_cli(["-m", *SUBMITIT, "backend=gloo", "strategy=sync,delayed", "train.max_steps=20",
                    "fault.rank=1", "fault.step=5,1000000", f"hydra.sweep.dir={sweep}"],
                   cwd=workdir, env_extra=slurm, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    summaries = {n: read_summary(sweep / str(n)) for n in range(4)}
    # job order: (sync, step 5), (sync, never), (delayed, step 5), (delayed, never)
    assert [summaries[n]["status"] for n in range(4)] == ["failed", "complete", "failed", "complete"]
    for n in (0, 2):
        assert summaries[n]["failed_rank"] == 1, summaries[n]
        assert summaries[n]["error"] == "RuntimeError: fault injected on rank 1 at step 5 (fault.kind=raise)"
        line = (f"asyncsgd-run: job {n} (SLURM job {summaries[n]['slurm_job_id']}): worker rank 1 failed: "
                f"RuntimeError: fault injected on rank 1 at step 5 (fault.kind=raise) (run dir: {sweep / str(n)})")
        assert line in done.stderr.splitlines(), done.stderr
    assert done.stderr.splitlines()[-1] == f"asyncsgd-run: 2 job(s) failed: {sweep / '0'}, {sweep / '2'}"
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr
    assert [summaries[n]["steps"] for n in (1, 3)] == [20, 20]
    assert done.stdout.count("results: ") == 2

    # The four jobs (one array) ran at the same time on the one node, each with its own port.
    jobs = [summaries[n]["slurm_job_id"] for n in range(4)]
    assert len({j.split("_")[0] for j in jobs}) == 1
    _, times = _sacct(jobs, slurm)
    assert max(start for start, _ in times.values()) < min(end for _, end in times.values()), times
    ports = {summaries[n]["rendezvous"].split(" ")[0] for n in range(4)}
    assert len(ports) == 4, ports

    report = subprocess.run([sys.executable, "-c", "from asyncsgd.cli import report; report()", str(sweep)],
                            cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    assert "| mlp | sync | 2 |" in text and "| mlp | delayed(k=1) | 2 |" in text
    listed = text.split("## Runs that failed, did not finish or lack outputs")[1].split("##")[0]
    assert "- `0` (sync, 2 workers, seed 0): **failed**: RuntimeError: fault injected on rank 1" in listed
    assert "- `2` (delayed(k=1), 2 workers, seed 0): **failed**: RuntimeError: fault injected on rank 1" in listed


STEPS = 600  # long enough that a signal sent after step 20 lands well before the end


@pytest.mark.timeout(900)
def test_preempted_jobs_are_requeued_and_end_where_an_uninterrupted_run_ends(workdir, slurm):
    backends = ["gloo", "mpi"] if HAVE_MPI else ["gloo"]
    args = ["train.epochs=100", f"train.max_steps={STEPS}", "train.eval_every_epochs=0", "seed=3"]
    sweep = workdir / "sweep"
    cmd = [sys.executable, "-m", "asyncsgd.cli", "-m", *SUBMITIT, *args, f"backend={','.join(backends)}",
           "checkpoint.every_steps=20", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=cli_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # scancel --signal=TERM each job once it has written its first checkpoint
    signalled, deadline = {}, time.monotonic() + 400
    while len(signalled) < len(backends) and time.monotonic() < deadline and proc.poll() is None:
        for n in range(len(backends)):
            if n not in signalled and (sweep / str(n) / "checkpoints" / "step-00000020.pt").exists():
                job = read_summary(sweep / str(n))["slurm_job_id"]
                assert _slurm(["scancel", "--signal=TERM", job], slurm).returncode == 0
                signalled[n] = job
        time.sleep(0.1)
    assert len(signalled) == len(backends), "a job never reached step 20"

    # meanwhile, the uninterrupted runs to compare with
    references = {}
    for backend in backends:
        run_dir = workdir / f"reference-{backend}"
        done = run_cli([*args, f"backend={backend}", "world_size=2", f"hydra.run.dir={run_dir}"], cwd=workdir)
        assert done.returncode == 0, done.stderr[-3000:]
        references[backend] = torch.load(run_dir / "model_final.pt", weights_only=True)

    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    states, _ = _sacct(signalled.values(), slurm, duplicates=True)
    for n, backend in enumerate(backends):
        run_dir, job = sweep / str(n), signalled[n]
        assert states[job] == ["REQUEUED", "COMPLETED"], states  # stopped once, then ran to the end
        log = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_0_log.err"))
        assert "received SIGTERM" in log and "Requeued job" in log, log[-3000:]
        stopped = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
        assert 20 <= stopped < STEPS and f"resuming {run_dir}/checkpoints/step-{stopped:08d}.pt" in log
        summary = read_summary(run_dir)
        assert summary["status"] == "complete" and summary["steps"] == STEPS, summary
        assert summary["interrupted_at_step"] is None and summary["error"] is None
        assert "resume.path=auto" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # submitit's checkpoint
        final = torch.load(run_dir / "model_final.pt", weights_only=True)
        assert max_relative_error(final, references[backend]) <= 1e-6, backend
    assert stdout.count("results: ") == len(backends)

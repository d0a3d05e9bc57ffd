"""asyncsgd on a real one-node SLURM (scripts/setup-slurm): srun against launcher=local, the
submitit launcher with concurrent jobs and a failing one, preemption with requeue and resume,
SLURM's warning before a time limit; and the script itself.

Every test here talks to real slurmctld/slurmd/slurmdbd daemons; none is mocked. To keep
the suite short, everything this module asks of SLURM is driven by one fixture
(:func:`cluster_runs`: the sweep whose jobs are preempted, the time-limited sbatch job, the
refused srun, then the srun runs and their launcher=local twins) and the tests then read
what each part left; SLURM's own waits (scheduling, a requeued job's credential expiry,
the time-limit check) overlap with the runs instead of adding up. The module is one xdist
group, so the cluster starts once per test session.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .. import slurm_cluster
from ..conftest import HAVE_MPI, cli_env, needs_mpi, read_summary
from ..parallel.helpers import COMMON, max_relative_error, reference_sgd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),  # one worker runs them all: one cluster, one cluster_runs
    pytest.mark.timeout(900),  # the first test waits for all of cluster_runs
    pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                       reason="hydra-submitit-launcher is not installed (pip install 'asyncsgd[slurm]')"),
]

SUBMITIT = ["hydra/launcher=submitit_slurm", "launcher=external", "world_size=2"]
STEPS = 600  # long enough that a signal sent after the step-20 checkpoint lands well before the end
# the settings of every training run here: the srun runs are the uninterrupted references
# of the preempted sweep jobs, which differ only in the launcher
RUN = [*(a for a in COMMON if not a.startswith(("train.epochs=", "train.max_steps="))), "train.epochs=100",
       f"train.max_steps={STEPS}", "train.batch_size=16"]
BACKENDS = ["gloo", "mpi"] if HAVE_MPI else ["gloo"]


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


def _start(name, args, workdir, slurm, srun_mpi=None) -> subprocess.Popen:
    """``asyncsgd-run ARGS`` in the background, under ``srun -n 2`` unless ``srun_mpi`` is None
    (the venv's python, as a user's PATH would give it); its output goes to ``logs/NAME.out|err``
    (a pipe nobody reads while the fixture waits could fill and stall the run)."""
    prefix = [] if srun_mpi is None else ["srun", "-n", "2", *(["--mpi=pmi2"] if srun_mpi else [])]
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        return subprocess.Popen([*prefix, sys.executable, "-m", "asyncsgd.cli", *args], cwd=workdir,
                                env=cli_env(slurm), stdout=out, stderr=err, text=True)


def _ended(name, proc, workdir) -> subprocess.CompletedProcess:
    logs = workdir / "logs"
    return subprocess.CompletedProcess(proc.args, proc.returncode, (logs / f"{name}.out").read_text(),
                                       (logs / f"{name}.err").read_text())


def _summary_now(run_dir: Path) -> dict:
    """The run's summary as it is at this moment ({} before there is one)."""
    try:
        return read_summary(run_dir)
    except FileNotFoundError:
        return {}


def _sacct(job_ids, slurm):
    """{job id: [state of each attempt, oldest first]} and {job id: [(start, end) of each
    attempt]} of whole jobs (not steps), once they have ended (a sweep returns with the
    results; the tasks may still be exiting)."""
    deadline = time.monotonic() + 120
    while _slurm(["squeue", "-h", "-j", ",".join(map(str, job_ids))], slurm).stdout.strip():
        assert time.monotonic() < deadline, f"jobs {job_ids} did not end after their results"
        time.sleep(1)
    cmd = ["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State,Start,End"]
    for job in job_ids:
        cmd += ["-j", str(job)]
    states, times = {}, {}
    for line in _slurm(cmd, slurm).stdout.splitlines():
        job, state, start, end = line.split("|")
        states.setdefault(job, []).append(state.split()[0])
        times.setdefault(job, []).append((start, end))
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


# ---------------------------------------------------------------- everything at once
# SLURM's warning before a job's time limit (sbatch --signal=TERM@WARN) comes from slurmctld's
# time-limit check, which runs every 30 s (PERIODIC_TIMEOUT in SLURM 22.05's slurmctld.h): the
# signal is sent at the first check where now + 30 >= end - WARN, so anywhere up to 30 s before
# the time asked for. A 600-step run would long be over by then. So the workers are paused
# (SIGSTOP) after their step-20 checkpoint and the job's time limit is cut so that the warning
# is due at the next check; SLURM sends SIGCONT and then the warning signal (send_job_warn_signal),
# which is what the workers must act on.
WARN_S = 120  # --signal=TERM@WARN_S
TIME_LIMIT_JOB = """#!/bin/bash
#SBATCH --job-name=asyncsgd-time-limit --ntasks=2 --time=10 --signal=TERM@{warn} --output={out}
srun {command}
"""


def _elapsed_s(job, slurm) -> int:
    """How long the job has run, in seconds (squeue's [D-]H:MM:SS or M:SS)."""
    text = _slurm(["squeue", "-h", "-j", job, "-o", "%M"], slurm).stdout.strip()
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds + 86400 * int(days or 0)


@pytest.fixture(scope="module")
def cluster_runs(slurm, tmp_path_factory):
    """Submit all of the module's SLURM work at once and wait for it; returns
    {"workdir", "sweep", "signalled": {job num: SLURM job id}, "interrupted": {job num: its summary
    while it waited for its requeue}, "time_limit": {...}, name: CompletedProcess}.

    - ``srun-BACKEND-STRATEGY``: ``srun -n 2`` runs of sync and layerwise, per backend, and
      ``local-BACKEND-STRATEGY``: the same runs with launcher=local, two runs at a time once the
      sweep's jobs are stopped, while those wait for their requeue;
    - ``refused``: ``srun -n 2`` with world_size=3;
    - ``sweep``: the submitit launcher, sync, per backend a job that fails at step 5 and
      one that runs on (jobs 1, 3); each of those gets ``scancel --signal=TERM`` once it
      has written its step-20 checkpoint, and must be requeued and finish;
    - ``time-limit``: an sbatch job (gloo, sync) stopped by SLURM's warning before its time
      limit (see WARN_S), then ``resumed``: ``srun -n 2 ... resume=auto`` in its run dir.

    That is 10 jobs of 2 tasks; setup-slurm's node takes 16 such jobs at once, so they all start.
    """
    workdir = tmp_path_factory.mktemp("slurm")
    sweep = workdir / "sweep"
    procs, time_limit = {}, {}
    try:
        procs["sweep"] = _start("sweep", ["-m", *SUBMITIT, *RUN, "strategy=sync", f"backend={','.join(BACKENDS)}",
                                          "fault.rank=1", "fault.step=5,1000000", "checkpoint.every_steps=20",
                                          # every checkpoint kept: on a quiet machine a gloo job passes step 60
                                          # (where keep=2 would delete step 20's) between two polls below
                                          "checkpoint.keep=1000", f"hydra.sweep.dir={sweep}"], workdir, slurm)
        procs["refused"] = _start("refused", ["launcher=external", "backend=gloo", "world_size=3",
                                              f"hydra.run.dir={workdir / 'refused'}"], workdir, slurm, srun_mpi=False)
        limited = workdir / "time-limit"
        limited_args = ["launcher=external", *RUN, "backend=gloo", "world_size=2", "strategy=sync",
                        "checkpoint.every_steps=20", "checkpoint.keep=1000", f"hydra.run.dir={limited}"]
        script = workdir / "time-limit.sbatch"
        script.write_text(TIME_LIMIT_JOB.format(warn=WARN_S, out=workdir / "logs" / "time-limit.out",
                                                command=" ".join([sys.executable, "-m", "asyncsgd.cli",
                                                                  *limited_args])))
        submitted = subprocess.run(["sbatch", "--parsable", str(script)], cwd=workdir, env=cli_env(slurm),
                                   capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        time_limit.update(job=submitted.stdout.strip().split(";")[0], run_dir=limited)

        # the srun runs first (the sweep's and the time-limit job's references), gloo beside MPI
        queue = [(launcher, backend, strategy) for launcher in ("srun", "local")
                 for strategy in ("sync", "layerwise") for backend in BACKENDS]
        running_on = [2 * i + 1 for i in range(len(BACKENDS))]
        signalled, interrupted = {}, {}
        deadline, asked = time.monotonic() + 840, 0.0
        while any(p.poll() is None for p in procs.values()) or queue or "resumed" not in procs:
            assert time.monotonic() < deadline, f"SLURM work not done: {[n for n, p in procs.items() if p.poll() is None]}"
            # scancel --signal=TERM each sweep job that runs on, once it has written its first checkpoint;
            # until its requeue may start (cred_expire), its summary says how it stopped
            for n in running_on:
                run_dir = sweep / str(n)
                if n not in signalled and (run_dir / "checkpoints" / "step-00000020.pt").exists():
                    job = read_summary(run_dir)["slurm_job_id"]
                    assert _slurm(["scancel", "--signal=TERM", job], slurm).returncode == 0
                    signalled[n] = job
                elif n in signalled and n not in interrupted and _summary_now(run_dir).get("status") == "interrupted":
                    interrupted[n] = read_summary(run_dir)
            # the time-limit job: pause its workers after their first checkpoint, cut the limit, wait for it to end
            if "paused_at" not in time_limit and (limited / "checkpoints" / "step-00000020.pt").exists():
                pids = [int(f.read_text()) for f in (limited / ".asyncsgd").glob("rank*.pid")]
                assert len(pids) == 2
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                minutes = _elapsed_s(time_limit["job"], slurm) // 60 + 2  # ends 60-120 s from now
                assert _slurm(["scontrol", "update", f"JobId={time_limit['job']}", f"TimeLimit={minutes}"],
                              slurm).returncode == 0
                time_limit["paused_at"] = minutes
            if "paused_at" in time_limit and "summary" not in time_limit and time.monotonic() - asked > 1:
                asked = time.monotonic()
                if not _slurm(["squeue", "-h", "-j", time_limit["job"]], slurm).stdout.strip():
                    time_limit["summary"] = read_summary(limited)
                    procs["resumed"] = _start("resumed", [*limited_args, "resume=auto"], workdir, slurm,
                                              srun_mpi=False)
            # The srun runs and their launcher=local twins start once the sweep's jobs are stopped (before,
            # they would slow the jobs' way to step 20, which the requeue waits for; after, they fill the
            # requeue's wait), two at a time: runs that meet at every step slow each other down far more
            # than their share of the cores when many share them.
            started = [n for n in procs if n.startswith(("srun-", "local-"))]
            if queue and (len(signalled) == len(running_on) or procs["sweep"].poll() is not None) \
                    and sum(procs[n].poll() is None for n in started) < 2:
                launcher, backend, strategy = queue.pop(0)
                name = f"{launcher}-{backend}-{strategy}"
                procs[name] = _start(name, [f"launcher={'external' if launcher == 'srun' else 'local'}", *RUN,
                                            f"backend={backend}", "world_size=2", f"strategy={strategy}",
                                            f"hydra.run.dir={workdir / name}"], workdir, slurm,
                                     srun_mpi=(backend == "mpi") if launcher == "srun" else None)
            time.sleep(0.1)
        yield {"workdir": workdir, "sweep": sweep, "signalled": signalled, "interrupted": interrupted,
               "time_limit": time_limit, **{name: _ended(name, proc, workdir) for name, proc in procs.items()}}
    finally:
        if "job" in time_limit:
            _slurm(["scancel", time_limit["job"]], slurm)  # its workers may still be paused
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- srun
@pytest.fixture(scope="module")
def plain_sgd():
    return reference_sgd("mlp", batch=32, steps=STEPS)


@pytest.mark.parametrize("backend", ["gloo", pytest.param("mpi", marks=needs_mpi)])
def test_srun_gives_the_parameters_of_launcher_local(cluster_runs, plain_sgd, backend):
    """sync and layerwise under srun end within 1e-5 of the same run with launcher=local, and of
    plain SGD on the global batch."""
    for strategy in ("sync", "layerwise"):
        local = cluster_runs["workdir"] / f"local-{backend}-{strategy}"
        assert cluster_runs[f"local-{backend}-{strategy}"].returncode == 0, cluster_runs[local.name].stderr[-3000:]
        assert read_summary(local)["status"] == "complete" and read_summary(local)["steps"] == STEPS
        name = f"srun-{backend}-{strategy}"
        done, run_dir = cluster_runs[name], cluster_runs["workdir"] / name
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("results: ") == 1  # rank 0's result line, as launcher=local prints it
        summary = read_summary(run_dir)
        assert summary["status"] == "complete" and summary["steps"] == STEPS
        assert (summary["launcher"], summary["world_size"], summary["comm"]["world_size"]) == ("external", 2, 2)
        assert summary["slurm_job_id"].isdigit()
        if backend == "gloo":  # the rendezvous port comes from the job and step ids
            assert f"(port from SLURM job {summary['slurm_job_id']} step 0)" in summary["rendezvous"]
        final = torch.load(run_dir / "model_final.pt", weights_only=True)
        assert max_relative_error(final, torch.load(local / "model_final.pt", weights_only=True)) < 1e-5, strategy
        assert max_relative_error(final, plain_sgd) < 1e-5, strategy


def test_srun_refuses_a_world_size_other_than_its_task_count(cluster_runs):
    done = cluster_runs["refused"]
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("asyncsgd-run")]
    assert lines == ["asyncsgd-run: error: world_size=3, but srun started 2 workers (SLURM_NTASKS=2); "
                     "set world_size=2 or start 3 workers"], done.stderr
    assert not (cluster_runs["workdir"] / "refused").exists()


# ---------------------------------------------------------------- the submitit launcher
def test_submitit_sweep_runs_jobs_together_and_lists_the_failed_ones(cluster_runs, slurm):
    done, sweep = cluster_runs["sweep"], cluster_runs["workdir"] / "sweep"
    jobs = range(2 * len(BACKENDS))  # per backend: (fails at step 5), (runs on)
    assert done.returncode == 1, done.stderr[-3000:]
    summaries = {n: read_summary(sweep / str(n)) for n in jobs}
    assert [summaries[n]["status"] for n in jobs] == ["failed", "complete"] * len(BACKENDS)
    failed = [n for n in jobs if n % 2 == 0]
    for n in failed:
        assert summaries[n]["failed_rank"] == 1, summaries[n]
        assert summaries[n]["error"] == "RuntimeError: fault injected on rank 1 at step 5 (fault.kind=raise)"
        line = (f"asyncsgd-run: job {n} (SLURM job {summaries[n]['slurm_job_id']}): worker rank 1 failed: "
                f"RuntimeError: fault injected on rank 1 at step 5 (fault.kind=raise) (run dir: {sweep / str(n)})")
        assert line in done.stderr.splitlines(), done.stderr
    assert done.stderr.splitlines()[-1] == (f"asyncsgd-run: {len(failed)} job(s) failed: "
                                            + ", ".join(str(sweep / str(n)) for n in failed))
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr
    assert done.stdout.count("results: ") == len(BACKENDS)

    # The jobs (one array) ran at the same time on the one node, each with its own port.
    ids = [summaries[n]["slurm_job_id"] for n in jobs]
    assert len({j.split("_")[0] for j in ids}) == 1
    _, times = _sacct(ids, slurm)
    first = [attempts[0] for attempts in times.values()]  # a preempted job's later attempt starts late
    assert max(start for start, _ in first) < min(end for _, end in first), times
    gloo_runs = [sweep / str(n) for n in jobs if summaries[n]["backend"] == "gloo"]
    gloo_runs += [cluster_runs["workdir"] / f"srun-gloo-{strategy}" for strategy in ("sync", "layerwise")]
    ports = {read_summary(run_dir)["rendezvous"].split(" ")[0] for run_dir in gloo_runs}
    assert len(ports) == 4, ports  # two sweep jobs and two srun jobs on gloo: four job ids, four ports

    report = subprocess.run([sys.executable, "-c", "from asyncsgd.cli import report; report()", str(sweep)],
                            cwd=cluster_runs["workdir"], env=cli_env(), capture_output=True, text=True, timeout=180)
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    timing = text.split("| model |")[1].split("\n\n")[0]  # the first table: one row per backend
    assert [row.split(" | ")[-6:-4] for row in timing.splitlines() if row.startswith("| mlp |")] == [
        ["sync", "2"]] * len(BACKENDS), timing
    listed = text.split("## Runs that failed, did not finish or lack outputs")[1].split("##")[0]
    for n in failed:
        assert f"- `{n}` (sync, 2 workers, seed 3): **failed**: RuntimeError: fault injected on rank 1" in listed


def test_preempted_jobs_are_requeued_and_end_where_an_uninterrupted_run_ends(cluster_runs, slurm):
    """scancel --signal=TERM of a running job: every worker stops at one step with a checkpoint,
    submitit requeues the job, it resumes (resume=auto) and ends where the same run under srun,
    never interrupted, ended (1e-6), on gloo and on MPI."""
    sweep, signalled = cluster_runs["workdir"] / "sweep", cluster_runs["signalled"]
    assert sorted(signalled) == [2 * i + 1 for i in range(len(BACKENDS))], "a job never reached step 20"
    states, _ = _sacct(signalled.values(), slurm)
    for n, backend in zip(sorted(signalled), BACKENDS):
        run_dir, job = sweep / str(n), signalled[n]
        assert states[job] == ["REQUEUED", "COMPLETED"], states  # stopped once, then ran to the end
        log = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_0_log.err"))
        assert "received SIGTERM" in log and "Requeued job" in log, log[-3000:]
        stopped = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
        assert 20 <= stopped < STEPS and f"resuming {run_dir}/checkpoints/step-{stopped:08d}.pt" in log
        # before the requeue the run said how it stopped (the requeued attempt starts a new summary)
        before = cluster_runs["interrupted"].get(n)
        assert before is not None, f"job {n}: its summary never said interrupted between the stop and the requeue"
        assert (before["status"], before["interrupted_at_step"]) == ("interrupted", stopped), before
        assert before["checkpoint"] == f"{run_dir}/checkpoints/step-{stopped:08d}.pt"
        assert before["error"] == f"stopped by SIGTERM at step {stopped}"
        summary = read_summary(run_dir)
        assert summary["status"] == "complete" and summary["steps"] == STEPS, summary
        assert summary["interrupted_at_step"] is None and summary["error"] is None
        assert "resume.path=auto" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # submitit's checkpoint
        final = torch.load(run_dir / "model_final.pt", weights_only=True)
        uninterrupted = torch.load(cluster_runs["workdir"] / f"srun-{backend}-sync" / "model_final.pt",
                                   weights_only=True)
        assert max_relative_error(final, uninterrupted) <= 1e-6, backend


def test_slurms_warning_before_the_time_limit_stops_the_run_which_resume_finishes(cluster_runs, slurm):
    """sbatch --signal=TERM@WARN_S: SLURM's own warning reaches every task, the workers stop at one
    step with a checkpoint and the run says interrupted; resume=auto under srun then ends where
    the same run never interrupted ended (1e-6)."""
    limited = cluster_runs["time_limit"]
    run_dir, job = limited["run_dir"], limited["job"]
    log = (cluster_runs["workdir"] / "logs" / "time-limit.out").read_text()
    assert "received SIGTERM" in log and "stopped by SIGTERM at step " in log, log[-3000:]
    stopped = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
    summary = limited["summary"]  # as the job left it
    assert (summary["status"], summary["interrupted_at_step"]) == ("interrupted", stopped), summary
    assert summary["checkpoint"] == f"{run_dir}/checkpoints/step-{stopped:08d}.pt" and 20 <= stopped < STEPS
    assert summary["slurm_job_id"] == job
    states, _ = _sacct([job], slurm)
    assert states[job] == ["FAILED"], states  # srun's exit status 130: stopped by the warning, not TIMEOUT

    resumed = cluster_runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir}/checkpoints/step-{stopped:08d}.pt" in resumed.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "complete" and summary["steps"] == STEPS and summary["interrupted_at_step"] is None
    final = torch.load(run_dir / "model_final.pt", weights_only=True)
    uninterrupted = torch.load(cluster_runs["workdir"] / "srun-gloo-sync" / "model_final.pt", weights_only=True)
    assert max_relative_error(final, uninterrupted) <= 1e-6

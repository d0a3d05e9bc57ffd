"""What a worker takes from SLURM's environment: rendezvous port, world size, job id, stop signal."""
from __future__ import annotations

import os
import signal

import pytest

from asyncsgd.errors import ConfigError
from asyncsgd.launch.environment import PORT_BASE, check_world_size, detect, rendezvous_port
from asyncsgd.launch.slurm import (mpich_segment_id, preemption_signal, remove_stale_mpich_segments, resume_overrides,
                                   slurm_job_id)
from asyncsgd.stopping import StopRequest


def test_port_from_the_job_and_step_ids_differs_between_jobs_and_steps():
    ports = {rendezvous_port({"SLURM_JOB_ID": str(job), "SLURM_STEP_ID": str(step)})[0]
             for job in range(1000, 2024) for step in range(16)}
    assert len(ports) == 1024 * 16  # 1024 consecutive jobs x 16 steps: no two share a port
    assert min(ports) >= PORT_BASE and max(ports) < 32768  # below Linux's ephemeral ports
    port, source = rendezvous_port({"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "3"})
    assert port == 15000 + (16 * 4242 + 3) % 16384 and source == "SLURM job 4242 step 3"


def test_master_port_then_config_then_slurm_then_torchruns_default():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}
    assert rendezvous_port({**slurm, "MASTER_PORT": "12345"}, configured=23456) == (12345, "MASTER_PORT")
    assert rendezvous_port(slurm, configured=23456) == (23456, "backend.master_port")
    assert rendezvous_port(slurm) == (15112, "SLURM job 7 step 0")
    assert rendezvous_port({"SLURM_JOB_ID": "7"}) == (15112, "SLURM job 7 step 0")  # sbatch's batch step
    assert rendezvous_port({}) == (29500, "the default")


@pytest.mark.parametrize("env,message", [
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"},
     "world_size=3, but srun started 2 workers (SLURM_NTASKS=2); set world_size=2 or start 3 workers"),
    ({"PMI_RANK": "0", "PMI_SIZE": "4"},
     "world_size=3, but mpiexec started 4 workers (PMI_SIZE=4); set world_size=4 or start 3 workers"),
    ({"RANK": "0", "WORLD_SIZE": "1"},
     "world_size=3, but torchrun started 1 workers (WORLD_SIZE=1); set world_size=1 or start 3 workers"),
])
def test_a_world_size_other_than_the_launchers_is_refused(env, message):
    with pytest.raises(ConfigError) as err:
        check_world_size(detect(env), 3)
    assert str(err.value) == message
    check_world_size(detect(env), detect(env).size)  # the launcher's own count passes
    check_world_size(None, 3)  # no launcher: nothing to compare with


def test_slurm_job_id_names_array_tasks_as_squeue_does():
    assert slurm_job_id({"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "16", "SLURM_ARRAY_TASK_ID": "1"}) == "16_1"
    assert slurm_job_id({"SLURM_JOB_ID": "17"}) == "17"
    assert slurm_job_id({}) is None


def test_a_requeued_job_resumes_its_run(tmp_path):
    with pytest.raises(RuntimeError, match="stopped before the run's first checkpoint, so not requeued"):
        resume_overrides(["a=1"], tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-00000020.pt").write_bytes(b"")
    assert resume_overrides(["strategy=sync", "resume.path=/x/step-1.pt", "seed=1"], tmp_path) == [
        "strategy=sync", "seed=1", "resume.path=auto"]
    assert resume_overrides(resume_overrides(["a=1"], tmp_path), tmp_path) == ["a=1", "resume.path=auto"]


def test_under_submitit_its_preemption_signal_stops_the_workers_too(comm, monkeypatch):
    assert preemption_signal() is None or os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert preemption_signal() == signal.SIGUSR2
    submitits = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: submitits.append(a))  # stands for submitit's handler
    try:
        stop = StopRequest(comm, lag=1)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.poll()  # one worker: no one to agree with, it stops at this boundary
        assert stop.agreed == "SIGUSR2" and submitits == []
        stop.close()
        os.kill(os.getpid(), signal.SIGUSR2)  # after the stop, the signal is submitit's again
        assert len(submitits) == 1
    finally:
        signal.signal(signal.SIGUSR2, previous)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preemption_signal() == signal.SIGUSR1


def test_only_mpich_segments_of_this_job_older_than_this_attempt_are_removed(tmp_path):
    # MPICH's names for PMI job id "7.0", node 0; the attempt started at t=1000
    ident = mpich_segment_id("7.0")
    old, fresh = tmp_path / f"mpich_shm_{ident}_0", tmp_path / f"mpich_vci_{ident}_0"
    other_job, foreign = tmp_path / f"mpich_shm_{mpich_segment_id('8.0')}_0", tmp_path / "unrelated"
    for path, mtime in ((old, 900), (fresh, 999), (other_job, 900), (foreign, 900)):
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    env = {"PMI_JOBID": "7.0", "SLURM_JOB_ID": "7"}
    assert remove_stale_mpich_segments(env, tmp_path, started=1000) == [str(old)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other_job.name, foreign.name])
    assert remove_stale_mpich_segments({"SLURM_JOB_ID": "7"}, tmp_path, started=1000) == []  # not MPICH under srun


def test_mpichs_segment_name_hash():
    # /dev/shm/mpich_shm_c141a9dc_0 was the segment of job 3 step 0 on the test SLURM
    assert mpich_segment_id("3.0") == "c141a9dc"


def test_a_signal_during_start_up_stops_the_run_at_its_first_step(comm):
    """catch_early (a worker under SLURM): SIGTERM before the training loop is not fatal but remembered."""
    import asyncsgd.stopping as stopping

    original = signal.getsignal(signal.SIGTERM)
    try:
        stopping.catch_early()
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the early handler
        stop = StopRequest(comm, lag=1)
        assert stop.received == "SIGTERM"
        assert stop.poll() and stop.agreed == "SIGTERM"  # at the first step boundary
        stop.close()
        assert signal.getsignal(signal.SIGTERM) is original  # the handler from before catch_early
    finally:
        signal.signal(signal.SIGTERM, original)
        stopping._early.update(signal=None, displaced={})

"""SLURM inside a job: job ids, preemption and requeue through hydra-submitit-launcher,
MPICH's shared memory left by a killed attempt. The submitting side of a sweep
(waiting for every job, its outcome) is :mod:`asyncsgd.launch.slurm_sweep`.

``hydra/launcher=submitit_slurm`` targets
:class:`hydra_plugins.asyncsgd_launcher.submitit_slurm.SubmititSlurmLauncher` (Hydra
finds launchers only in the ``hydra_plugins`` package), a thin subclass of the
plugin's SlurmLauncher whose new behaviour lives here:

* In a job, a stop signal (``scancel --signal=TERM``, SLURM's preemption, or
  submitit's USR2 ahead of the time limit) makes every worker stop at one step and
  write a checkpoint (:mod:`asyncsgd.stopping`); then rank 0 hands the signal on
  to submitit, whose checkpoint/requeue protocol asks the launcher for the job to
  run next (:func:`resume_overrides`: the same one with ``resume=auto``) and
  requeues it (``scontrol requeue``).
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger("asyncsgd")

# ---------------------------------------------------------------- inside a job
def slurm_job_id(env=os.environ) -> Optional[str]:
    """This job's id as squeue and sacct show it: ``ARRAYID_TASK`` for an array task."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def under_submitit() -> bool:
    """This process is a task of a job submitted by submitit's SLURM executor."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def preemption_signal() -> Optional[signal.Signals]:
    """The signal submitit's job environment treats as preemption/time-out (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise), when this process runs under submitit."""
    if not under_submitit():
        return None
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def requeue_after_stop(run_dir: Path) -> None:
    """After the workers stopped together and rank 0 wrote the checkpoint: requeue the job.

    Hands the preemption signal to submitit's own handler (restored when the workers'
    stop handling ended), which calls the launcher's ``checkpoint`` (the same job with
    ``resume=auto``), saves it as the job's submission, runs ``scontrol requeue`` and
    exits. Not under submitit, or when submitit declines (a time-out beyond
    ``hydra.launcher.max_num_timeout``, a job already cancelled): one log line, and
    the run stays ``interrupted`` for ``resume=auto`` by hand.
    """
    sig = preemption_signal()
    if sig is None:
        return
    log.warning("requeueing SLURM job %s through submitit; it continues from its checkpoint (resume=auto)",
                slurm_job_id())
    try:
        signal.raise_signal(sig)
    except Exception as exc:  # submitit's UncompletedJobError, scontrol's CalledProcessError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("not requeued (%s); continue with: asyncsgd-run resume=auto hydra.run.dir=%s", first, run_dir)


def resume_overrides(overrides: Sequence[str], run_dir: Path) -> List[str]:
    """The overrides of a requeued job: the same, continuing from the newest checkpoint.

    Without a checkpoint (the signal came during start-up, before the workers could
    stop together) the job is not requeued: resume=auto would refuse the run dir,
    and a fresh start would overwrite it.
    """
    from ..checkpoint import DIRNAME, list_checkpoints

    if not list_checkpoints(Path(run_dir) / DIRNAME):
        raise RuntimeError(f"stopped before the run's first checkpoint, so not requeued; run it again ({run_dir})")
    return [o for o in overrides if not o.startswith(("resume.path=", "resume="))] + ["resume.path=auto"]


def remove_stale_mpich_segments(env=os.environ, shm: Path = Path("/dev/shm"),
                                started: Optional[float] = None) -> List[str]:
    """Before MPI starts under srun: delete the shared memory that a killed earlier
    attempt of this job (a requeue) left behind, or MPI_Init fails (or hangs) on it.

    MPICH (4.x, ch4) names its node-local segments ``mpich_shm_<id>_<node>`` and
    ``mpich_vci_<id>_<node>``, ``<id>`` being the 32-bit FNV-1a hash of the PMI job
    id, which under srun is ``<job id>.<step id>``: the same again after a requeue.
    A segment is unlinked in MPI_Finalize, so a worker killed before that (SLURM's
    KillWait ran out) leaves it, and the next attempt opens it with stale contents
    ("Message truncated" in MPI_Init_thread). A SLURM restarted from scratch
    hands out the same job ids again, so this is not only about requeues. Only
    segments older than this attempt's start (scontrol) are removed, never one a
    peer has just created.
    """
    if not env.get("PMI_JOBID") or not env.get("SLURM_JOB_ID"):
        return []
    ident = mpich_segment_id(env["PMI_JOBID"])
    stale = [p for pattern in (f"mpich_shm_{ident}_*", f"mpich_vci_{ident}_*") for p in shm.glob(pattern)]
    if not stale:
        return []
    if started is None:
        started = _attempt_start(env["SLURM_JOB_ID"])
    removed = []
    for path in stale:
        try:
            if started is not None and path.stat().st_mtime < started - 2:  # 2 s: clock skew between hosts
                path.unlink()
                removed.append(str(path))
        except FileNotFoundError:  # another rank of this node removed it first
            continue
    if removed:
        log.warning("removed shared memory left by the killed attempt before this requeue: %s", " ".join(removed))
    return removed


def mpich_segment_id(pmi_jobid: str) -> str:
    """The ``<id>`` of MPICH's segment names: its HASH_FNV (32-bit FNV-1a) of the PMI job id, in hex."""
    value = 2166136261
    for byte in pmi_jobid.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return f"{value:x}"


def _attempt_start(job_id: str) -> Optional[float]:
    """When this attempt of the job started (epoch seconds), from scontrol; None if unknown."""
    import datetime as dt
    import subprocess

    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                             timeout=30).stdout
        stamp = next(f.split("=", 1)[1] for f in out.split() if f.startswith("StartTime="))
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").timestamp()  # the controller's local time
    except (OSError, subprocess.SubprocessError, StopIteration, ValueError):
        return None

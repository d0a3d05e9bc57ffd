"""SLURM through hydra-submitit-launcher: preemption and requeue inside a job, the
outcome of every job of a sweep on the submitting side.

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
* On the submitting side, a job that fails does not stop the wait for the
  others; once all have ended each failed one is marked ``failed`` in its
  summary (if the job could not say so itself) and listed in one line
  (:func:`wait_and_report`).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

log = logging.getLogger("asyncsgd")

# how often to ask SLURM (sacct) about a job whose run already says it failed, in
# seconds: it may have died without a result file, which submitit alone notices
# only at its next, ever later, sacct call
FAILED_POLL_S = 5.0


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


# ---------------------------------------------------------------- submitting side
def wait_for_jobs(jobs: Sequence, run_dirs: Sequence[Path], poll_s: float = 1.0) -> None:
    """Wait until every job has ended, in whatever order they end.

    submitit sees a finished job by its result file (checked here every second) or
    by sacct, which it asks ever less often; a job whose run says ``failed`` may
    have ended without a result file, so sacct is asked about it every
    :data:`FAILED_POLL_S` seconds.
    """
    pending = list(range(len(jobs)))
    asked: dict = {}
    while pending:
        still = []
        for i in pending:
            if _status(run_dirs[i]) == "failed" and time.monotonic() - asked.get(i, float("-inf")) > FAILED_POLL_S:
                jobs[i].get_info(mode="force")
                asked[i] = time.monotonic()
            if not jobs[i].done():
                still.append(i)
        pending = still
        if pending:
            time.sleep(poll_s)


def job_outcome(job, run_dir: Path, config) -> Tuple[Optional[object], str, Optional[str]]:
    """What one finished job left: (rank 0's Hydra JobReturn or None, status, error).

    A complete or interrupted run speaks for itself (summary.json). Otherwise the
    run is marked ``failed`` here, blaming the rank the failure reports name (as
    ``launcher=local`` does), else saying how SLURM saw the job end: a job may die
    before any worker could write (killed, a crash at start-up).
    """
    from ..io import read_json
    from ..runinfo import update_summary
    from .local import blame

    result, why = None, None
    task0 = job.task(0)
    if task0.paths.result_pickle.exists():  # else result() would wait 15 s for it
        try:
            result = task0.result()
        except Exception as exc:  # submitit's FailedJobError: an exception outside our task
            why = _last_line(str(exc))
    if result is not None and getattr(result, "status", None) is not None and result.status.name == "FAILED":
        why = f"{type(result._return_value).__name__}: {_last_line(str(result._return_value))}"
    if result is None and why is None:
        why = f"SLURM job {job.job_id} ended {task0.state} (log: {task0.paths.stderr})"

    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    status = summary.get("status")
    if status in ("complete", "interrupted"):
        return result, status, summary.get("error")
    failure = blame(run_dir, None, fallback=summary.get("error") or why)
    values = {"status": "failed", "error": failure.reason, "failed_rank": failure.rank,
              "slurm_job_id": str(job.job_id)}
    if not summary and config is not None:
        values = {**_base_summary(config), **values}
    update_summary(run_dir, **values)
    return result, "failed", str(failure)


def _base_summary(config) -> dict:
    """The summary fields of a job whose workers never wrote one (from its composed config)."""
    from ..runinfo import base_summary, to_config

    try:
        cfg = to_config({k: v for k, v in config.items() if k != "hydra"})
    except Exception:  # the job's config itself is what failed: no fields to add
        return {}
    return base_summary(cfg)


def _status(run_dir: Path) -> Optional[str]:
    from ..io import read_json

    try:
        return read_json(run_dir / "summary.json").get("status")
    except (OSError, ValueError):
        return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def report_outcomes(outcomes: Sequence[Tuple[int, object, Path, str, Optional[str]]]) -> None:
    """One line per job: its result, or why it did not complete (the CLI's exit status follows)."""
    from ..cli import job_failed, print_result
    from ..io import read_json

    for num, job, run_dir, status, error in outcomes:
        if status == "complete":
            print_result(run_dir, read_json(run_dir / "summary.json"))
            continue
        what = error if status == "failed" else f"{status}: {error}; continue with: asyncsgd-run resume=auto " \
            f"hydra.run.dir={run_dir}"
        print(f"asyncsgd-run: job {num} (SLURM job {job.job_id}): {what} (run dir: {run_dir})",
              file=sys.stderr, flush=True)
        job_failed(run_dir)

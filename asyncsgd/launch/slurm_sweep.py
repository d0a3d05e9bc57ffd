"""SLURM on the submitting side of a ``hydra/launcher=submitit_slurm`` sweep.

A job that fails does not stop the wait for the others; once all have ended
each failed one is marked ``failed`` in its summary (if the job could not say
so itself) and listed in one line, and the command's exit status says so.
What happens inside a job (requeue, resume) is :mod:`asyncsgd.launch.slurm`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

# how often to ask SLURM (sacct) about a job whose run already says it failed, in
# seconds: it may have died without a result file, which submitit alone notices
# only at its next, ever later, sacct call
FAILED_POLL_S = 5.0


def wait_for_jobs(jobs: Sequence, run_dirs: Sequence[Path], poll_s: float = 1.0) -> None:
    """Wait until every job has ended, in whatever order they end.

    submitit sees a finished job by its result file (checked here every second) or
    by sacct, which it asks ever less often; a job whose run says ``failed`` may
    have ended without a result file, so sacct is asked about it every
    :data:`FAILED_POLL_S` seconds.
    """
    from ..runinfo import run_status

    pending = list(range(len(jobs)))
    asked: dict = {}
    while pending:
        still = []
        for i in pending:
            if run_status(run_dirs[i]) == "failed" and time.monotonic() - asked.get(i, float("-inf")) > FAILED_POLL_S:
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

"""One worker process: connect to the others, train, and fail loudly.

Started by ``mpiexec ... python -m asyncsgd.worker RUN_DIR`` (backend=mpi), by
torch's elastic agent calling :func:`elastic_entry` (gloo/nccl), or directly by
the Hydra app under ``launcher=external``. A worker that fails records which
rank it is and why, then ends the whole job (MPI_Abort, or exit so the elastic
agent stops the rest): a peer never waits forever.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

from .config import Config
from .launch.environment import default_threads, detect, prepare_torchdist_env
from .launch.slurm import remove_stale_mpich_segments, requeue_after_stop, slurm_job_id
from .runinfo import load_config, record_failure, start_attempt, update_summary, write_pid
from .stopping import Interrupted, catch_early

log = logging.getLogger("asyncsgd")

EXIT_INTERRUPTED = 130


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[asyncsgd rank{rank}] %(message)s", stream=sys.stderr, force=True)


def _is_secondary(exc: BaseException) -> bool:
    """A failure caused by a peer going away, rather than by this rank."""
    from .comm import CommTimeout

    text = str(exc).lower()
    return isinstance(exc, CommTimeout) or any(
        s in text for s in ("connection reset", "connection closed", "broken pipe", "peer", "timed out")
    )


def run_worker(cfg: Config, run_dir: Optional[Path]) -> dict:
    """Connect, agree on the run dir (rank 0's), train; on failure record it and end the job."""
    if os.environ.get("SLURM_JOB_ID"):
        catch_early()  # SLURM's warnings may come during start-up
    place = detect()
    rendezvous = None
    if cfg.backend.name != "mpi" and place is not None:
        rendezvous = prepare_torchdist_env(place, getattr(cfg.backend, "master_port", 0))
    if cfg.launcher.name == "external" and (place is None or place.rank == 0):
        _start_attempt(cfg, run_dir, place, rendezvous)
    if cfg.backend.name == "mpi":
        remove_stale_mpich_segments()
    from .comm import make_communicator

    try:
        comm = make_communicator(cfg.backend, cfg.strategy)
    except Exception as exc:
        _not_connected(cfg, run_dir, place, rendezvous, exc)
    _setup_logging(comm.rank)
    # Under an external launcher every rank composed its own config; rank 0's run dir wins.
    run_dir = Path(comm.broadcast_object(str(run_dir) if comm.rank == 0 else None, root=0))
    write_pid(run_dir, comm.rank)
    place = detect()
    workers_here = place.local_size if place else comm.size
    # A launcher of ours knows how many workers share the cores (ASYNCSGD_THREADS).
    threads = cfg.train.threads or int(os.environ.get("ASYNCSGD_THREADS") or 0) or default_threads(workers_here)
    progress = os.environ.get("ASYNCSGD_PROGRESS_BAR") == "1"
    try:
        summary = train_entry(cfg, run_dir, comm, threads, progress)
    except Interrupted as stop:
        _stop(comm, run_dir, stop)
    except KeyboardInterrupt as exc:
        _fail(comm, run_dir, exc, status="interrupted", code=EXIT_INTERRUPTED)
    except BaseException as exc:
        _fail(comm, run_dir, exc, status="failed", code=1)
    comm.close()
    return summary


def _start_attempt(cfg: Config, run_dir: Path, place, rendezvous: Optional[str]) -> None:
    """Rank 0 under an external launcher, before anyone connects: this attempt's summary.

    A requeued or resumed run (resume=auto in the same dir) must not keep the last
    attempt's pid files, failure reports, error or end time; and a run whose workers
    never connect must still leave a summary that can say ``failed``.
    """
    job = slurm_job_id()
    start_attempt(run_dir, cfg, place.size if place else None, rendezvous=rendezvous,
                  **({"slurm_job_id": job} if job else {}))


def _not_connected(cfg: Config, run_dir: Path, place, rendezvous: Optional[str], exc: BaseException) -> None:
    """The workers could not form a job (a busy rendezvous port, a peer that never came):
    one line naming the rank and the rendezvous, a failure report, exit status 1."""
    rank = place.rank if place is not None else 0
    first = (str(exc).strip().splitlines() or [""])[0]
    where = f" at rendezvous {rendezvous}" if rendezvous else ""
    hint = "; set MASTER_PORT to a free port" if "EADDRINUSE" in str(exc) or "address already in use" in str(exc) else ""
    message = f"rank {rank} could not connect to the other workers{where}: {type(exc).__name__}: {first}{hint}"
    record_failure(run_dir, rank, exc)
    if cfg.launcher.name == "external" and rank == 0:
        update_summary(run_dir, status="failed", error=message, failed_rank=rank)
    print(f"asyncsgd-run: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def train_entry(cfg, run_dir, comm, threads, progress):
    from .train import train  # imported late: torch start-up is the slow part

    return train(cfg, run_dir, comm, threads, progress)


def _stop(comm, run_dir: Path, stop: Interrupted) -> None:
    """Every rank stopped at the same step and rank 0 wrote a checkpoint: a clean exit, not an abort."""
    if comm.rank == 0:
        update_summary(run_dir, status="interrupted", interrupted_at_step=stop.step, checkpoint=stop.checkpoint,
                       error=f"stopped by {stop.signal_name} at step {stop.step}")
        log.warning("stopped by %s at step %d; checkpoint %s; continue with resume=auto hydra.run.dir=%s",
                    stop.signal_name, stop.step, stop.checkpoint, run_dir)
    sys.stderr.flush()
    comm.close()
    if comm.rank == 0:
        requeue_after_stop(run_dir)  # in a submitit job: requeued to continue with resume=auto
    sys.exit(EXIT_INTERRUPTED)


def _fail(comm, run_dir: Path, exc: BaseException, status: str, code: int) -> None:
    record_failure(run_dir, comm.rank, exc, secondary=_is_secondary(exc))
    log.error("rank %d %s: %s: %s", comm.rank, status, type(exc).__name__, exc)
    if comm.rank == 0:
        update_summary(run_dir, status=status, error=f"{type(exc).__name__}: {exc}")
    sys.stderr.flush()
    comm.abort(code)
    # MPI_Abort can return (seen with MPICH over TCP when the job is already
    # going down); this rank must still not carry on as if it had succeeded.
    os._exit(code)


INTERRUPTED = "interrupted"


def elastic_entry(run_dir: str) -> Optional[str]:
    """Entry point for torch's elastic agent (one call per local worker process).

    After an agreed stop the worker returns :data:`INTERRUPTED` instead of exiting
    with status 130: the agent would log a non-zero exit with a traceback.
    """
    try:
        run_worker(load_config(Path(run_dir)), Path(run_dir))
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:
            return INTERRUPTED
        raise
    return None


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m asyncsgd.worker RUN_DIR")
    run_dir = Path(argv[0])
    cfg = load_config(run_dir)
    try:
        run_worker(cfg, run_dir)
    except SystemExit as exc:  # an agreed stop (130) after its checkpoint: written too
        if cfg.backend.name == "mpi" or not isinstance(exc.code, int):
            raise
        exit_without_finalization(exc.code)
    if cfg.backend.name != "mpi":
        exit_without_finalization(0)


def exit_without_finalization(code: int) -> None:
    """End a worker whose run is complete and written, skipping the interpreter's finalization.

    The process groups are destroyed by then, but C++ objects of torch.distributed that Python
    still references (a DDP reducer, a collective's work and its future) are destroyed during
    finalization, in no set order, while gloo's threads may still run: about one gloo run in two
    hundred over the emulated links then died after its last step with SIGABRT ("terminate called
    without an active exception"; pytorch/pytorch#190489, #179291), and a complete run was reported
    as failed. Everything the run writes is closed before this point (summary, metrics, timeline:
    atomic writes and closed files). MPI ranks end normally: mpiexec needs MPI_Finalize, which
    mpi4py calls at exit.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

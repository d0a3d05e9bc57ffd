"""launcher=local: start ``world_size`` workers on this machine and wait for them.

backend=mpi goes through ``mpiexec`` (the MPI library's own process manager);
gloo and nccl through torch's elastic agent (what torchrun runs). Neither is
re-implemented here. When a worker fails, the job ends and :class:`WorkerFailure`
names the rank, from the worker's own failure report or, when it was killed
and could not write one, from the launcher's account mapped through pid files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config import Config
from ..runinfo import failures, rank_of_pid, worker_pids, worker_ranks
from ..worker import EXIT_INTERRUPTED, INTERRUPTED  # how a worker ends after a clean, agreed stop
from .environment import default_threads, find_executable

log = logging.getLogger("asyncsgd")


class WorkerFailure(RuntimeError):
    def __init__(self, rank: Optional[int], reason: str, interrupted: bool = False):
        self.rank, self.reason, self.interrupted = rank, reason, interrupted
        who = f"worker rank {rank}" if rank is not None else "a worker (rank unknown)"
        super().__init__(f"{who} failed: {reason}")


def interrupt_source(exc: KeyboardInterrupt) -> str:
    """Ctrl-C gives a bare KeyboardInterrupt; a signal we turned into one names itself."""
    return str(exc.args[0]) if exc.args else "SIGINT"


def worker_env(cfg: Config, progress_bar: bool) -> Dict[str, str]:
    """Environment every worker starts with (threads are fixed before torch loads)."""
    threads = cfg.train.threads or default_threads(cfg.world_size)
    env = {
        # The worker reads this rather than its launcher's idea of "local":
        # emulated nodes report one worker each but share this machine's cores.
        "ASYNCSGD_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "ASYNCSGD_PROGRESS_BAR": "1" if progress_bar else "0",
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.backend.name == "mpi" and cfg.backend.progress == "library":
        env["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
    return env


def launch_local(cfg: Config, run_dir: Path, progress_bar: bool) -> None:
    env = worker_env(cfg, progress_bar)
    if cfg.backend.name == "mpi":
        _launch_mpiexec(cfg, run_dir, env)
    else:
        _launch_elastic(cfg, run_dir, env)


# ---------------------------------------------------------------- MPI
_PID_RE = re.compile(r"PID (\d+) RUNNING AT")
_ABORT_RE = re.compile(r"MPI_Abort\(.*?\) - process (\d+)")


def mpiexec_command(cfg: Config, run_dir: Path) -> List[str]:
    return [find_executable(cfg.backend.mpiexec) or cfg.backend.mpiexec, "-n", str(cfg.world_size), *cfg.backend.mpiexec_args,
            sys.executable, "-m", "asyncsgd.worker", str(run_dir)]


def _launch_mpiexec(cfg: Config, run_dir: Path, env: Dict[str, str]) -> None:
    cmd = mpiexec_command(cfg, run_dir)
    log.info("starting %d MPI workers: %s", cfg.world_size, " ".join(cmd))
    run_mpiexec(cmd, env, run_dir, cfg.launcher.grace_s)


def run_mpiexec(cmd: List[str], env: Dict[str, str], run_dir: Path, grace_s: float, own_group: bool = False) -> None:
    """Run an mpiexec command line to the end; a failure becomes :class:`WorkerFailure`.

    ``own_group``: mpiexec gets its own process group, so a terminal's Ctrl-C
    reaches only this process, which then forwards one SIGINT (also after a
    SIGTERM turned into KeyboardInterrupt, which the terminal never sent on).
    """
    extra = {"process_group": 0} if own_group else {}
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **extra)
    seen: List[str] = []
    # Pass the workers' output through as it comes (chunks, not lines: the
    # progress bar redraws with \r) and keep it to find who failed.
    pumps = [threading.Thread(target=_pump, args=(src, dst, seen), daemon=True)
             for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    for p in pumps:
        p.start()
    with _forward_stop_signals(run_dir, proc):
        code = proc.wait()
    for p in pumps:
        p.join(timeout=5)
    if code != 0:
        raise _mpi_failure(run_dir, "".join(seen), code)


@contextlib.contextmanager
def _forward_stop_signals(run_dir: Path, proc: subprocess.Popen):
    """SIGTERM/SIGINT to the launcher: SIGTERM to every worker, which then stop together at
    a step boundary and checkpoint (asyncsgd.stopping). mpiexec itself would kill them, so
    the workers are signalled directly, by their pid files. A second signal kills the job."""
    received = []

    def forward(signum, frame):
        received.append(signum)
        if len(received) > 1:
            log.warning("second signal: killing the workers")
            proc.kill()
            return
        log.warning("received %s: asking every worker to stop at the next step boundary",
                    signal.Signals(signum).name)
        for pid in worker_pids(run_dir):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pump(src, dst, seen: List[str]) -> None:
    fd = src.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        text = chunk.decode(errors="replace")
        seen.append(text)
        dst.write(text)
        dst.flush()


def blame(run_dir: Path, silent_death: Optional[Tuple[Optional[int], str]], fallback: str,
          interrupted: bool = False) -> WorkerFailure:
    """Decide which rank caused the failure.

    A rank's own report of an error beats everything; next comes a rank that
    died without a word (killed: the launcher saw it go); a report that only
    echoes a vanished peer ("connection reset", a timeout) comes last.
    """
    reports = failures(run_dir)
    primary = [r for r in reports if not r.get("secondary")]
    if primary:
        return WorkerFailure(primary[0]["rank"], primary[0]["error"], interrupted=interrupted)
    if silent_death is not None:
        return WorkerFailure(silent_death[0], silent_death[1], interrupted=interrupted)
    # The launcher may notice a peer's exit before the killed rank's: then the one rank
    # that started (pid file) but left no report at all is the one that died silently.
    unreported = sorted(set(worker_ranks(run_dir)) - {r["rank"] for r in reports})
    if reports and len(unreported) == 1:
        return WorkerFailure(unreported[0], "ended without a word (killed?); its peers lost the connection to it",
                             interrupted=interrupted)
    if reports:
        return WorkerFailure(reports[0]["rank"], reports[0]["error"], interrupted=interrupted)
    return WorkerFailure(None, fallback, interrupted=interrupted)


def _mpi_failure(run_dir: Path, output: str, code: int) -> WorkerFailure:
    silent = None
    match = _PID_RE.search(output)
    if match:
        pid = int(match.group(1))
        signal_text = re.search(r"EXIT STRING: (.+)", output)
        reason = signal_text.group(1).strip() if signal_text else f"exit code {code}"
        silent = (rank_of_pid(run_dir, pid), f"process {pid} ended: {reason}")
    else:
        match = _ABORT_RE.search(output)
        if match:
            silent = (int(match.group(1)), "called MPI_Abort")
    return blame(run_dir, silent, f"mpiexec exited with status {code}", interrupted=code == EXIT_INTERRUPTED)


# ---------------------------------------------------------------- torch.distributed
def _launch_elastic(cfg: Config, run_dir: Path, env: Dict[str, str]) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ..worker import elastic_entry

    # Children inherit the agent's environment; the agent is this process.
    os.environ.update(env)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=cfg.world_size,
        run_id=f"asyncsgd-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{cfg.backend.master_port}",  # port 0: pick a free one
        max_restarts=0,  # a failed run is reported, not silently re-run
        monitor_interval=0.2,
        start_method="spawn",
    )
    log.info("starting %d %s workers with torch's elastic agent", cfg.world_size, cfg.backend.name)
    try:
        with agent_logs_to_file(run_dir):
            results = elastic_launch(config, elastic_entry)(str(run_dir))
    except ChildFailedError as exc:
        raise _elastic_failure(run_dir, exc) from None
    except SignalException as exc:
        # The agent already passed the signal on to the workers (SIGTERM) and waited for them.
        raise WorkerFailure(None, f"interrupted ({signal.Signals(exc.sigval).name})", interrupted=True) from None
    if INTERRUPTED in results.values():
        raise WorkerFailure(None, "interrupted: the workers stopped at a step boundary", interrupted=True)


# The agent's own loggers: a worker's exit logged with a traceback (ProcessExitedException),
# the signals it sends to the others.
AGENT_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")


@contextlib.contextmanager
def agent_logs_to_file(run_dir: Path):
    """Send the elastic agent's messages to the run's log instead of the terminal.

    When a worker dies the agent logs a multi-line traceback before we can say which
    rank failed and why; the terminal should get that one line (from the CLI), the
    run's log the detail. The run's log is Hydra's job log file when there is one.
    """
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    own = None
    if not handlers:
        own = logging.FileHandler(run_dir / "agent.log")
        own.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handlers = [own]
    saved = []
    for name in AGENT_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.WARNING)
        logger.propagate = False  # not up to torch's stderr handler
        for h in handlers:
            logger.addHandler(h)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            for h in handlers:
                logger.removeHandler(h)
            logger.setLevel(level)
            logger.propagate = propagate
        if own is not None:
            own.close()


def _elastic_failure(run_dir: Path, exc) -> WorkerFailure:
    silent = None
    dead = sorted(exc.failures.items(), key=lambda kv: kv[1].timestamp)
    if dead and all(f.exitcode == EXIT_INTERRUPTED for _, f in dead):
        return WorkerFailure(None, "interrupted: the workers stopped at a step boundary", interrupted=True)
    for rank, failure in dead:
        if failure.exitcode < 0:  # killed by a signal: it could not write a report
            silent = (rank, f"process {failure.pid} killed by {failure.signal_name()}")
            break
    return blame(run_dir, silent, str(exc).strip().splitlines()[0])

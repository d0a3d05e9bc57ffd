"""Rank, size and host-local facts from whatever launcher started this process.

Recognised: torchrun / torch elastic (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE), Open MPI (OMPI_COMM_WORLD_*), MPICH/Intel MPI (PMI_RANK,
PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS) and SLURM's srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from ..errors import ConfigError

# (source, rank, size, local rank, local size), most specific first: torchrun
# under srun should win over SLURM's own variables.
_SOURCES = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
]


@dataclass
class ProcessPlace:
    rank: int
    size: int
    local_rank: int
    local_size: int
    source: str


def detect(env: Mapping[str, str] = os.environ) -> Optional[ProcessPlace]:
    """Where this process sits in the job, or None when no launcher is recognised."""
    for source, rank, size, local_rank, local_size in _SOURCES:
        if rank in env and size in env:
            r, n = int(env[rank]), int(env[size])
            lr = int(env.get(local_rank, r))
            # SLURM_NTASKS_PER_NODE may read "4(x2)" on heterogeneous allocations
            ls_raw = env.get(local_size, str(n)).split("(")[0]
            return ProcessPlace(r, n, lr, int(ls_raw) if ls_raw.isdigit() else n, source)
    return None


def find_executable(name: str) -> Optional[str]:
    """``name`` on PATH, else beside the running Python (the venv's bin, where the mpich wheel puts mpiexec)."""
    import shutil
    import sys

    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers_on_host: int) -> int:
    """Torch threads per worker so that the workers of one host do not oversubscribe it."""
    return max(1, usable_cores() // max(1, workers_on_host))


# torchrun's default when nothing better is known (one job per host)
DEFAULT_PORT = 29500
# Under SLURM the port is derived from the job and step ids (see rendezvous_port):
# PORT_BASE + (16 * job id + step id) mod PORT_SPAN stays below Linux's ephemeral
# range (32768 and up), where gloo's own connections take their local ports.
PORT_BASE, PORT_SPAN = 15000, 16384


def rendezvous_port(env: Mapping[str, str] = os.environ, configured: int = 0) -> Tuple[int, str]:
    """The TCP port of rank 0's rendezvous (torch's TCPStore), and where it came from.

    MASTER_PORT wins, then ``backend.master_port``; under srun the port is derived
    from SLURM_JOB_ID and SLURM_STEP_ID, the same on every task of the step without
    any exchange, and different for jobs that share a node (array tasks have job
    ids of their own) and for the steps of one job. Else torchrun's 29500.
    """
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"]), "MASTER_PORT"
    if configured:
        return configured, "backend.master_port"
    job, step = env.get("SLURM_JOB_ID", ""), env.get("SLURM_STEP_ID", "0")
    if job.isdigit():
        step_id = int(step) if step.isdigit() else 0
        port = PORT_BASE + (16 * int(job) + step_id) % PORT_SPAN
        return port, f"SLURM job {job} step {step_id}"
    return DEFAULT_PORT, "the default"


def prepare_torchdist_env(place: ProcessPlace, configured_port: int = 0) -> str:
    """Give env:// initialisation what mpiexec or srun do not set themselves.

    Returns a description of the rendezvous (address, port and where the port came
    from) for error messages.
    """
    os.environ.setdefault("RANK", str(place.rank))
    os.environ.setdefault("WORLD_SIZE", str(place.size))
    os.environ.setdefault("LOCAL_RANK", str(place.local_rank))
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _first_slurm_host() or "127.0.0.1"
    port, source = rendezvous_port(os.environ, configured_port)
    os.environ["MASTER_PORT"] = str(port)
    return f"{os.environ['MASTER_ADDR']}:{port} (port from {source})"


def check_world_size(place: Optional[ProcessPlace], world_size: int) -> None:
    """Under an external launcher the launcher decides how many workers there are:
    a different ``world_size`` is a mistake to name, not to override silently."""
    if place is None or place.size == world_size:
        return
    variable = {name: size for name, _, size, _, _ in _SOURCES}[place.source]
    started = {"slurm": "srun started", "torchrun": "torchrun started", "openmpi": "mpiexec started",
               "mpich": "mpiexec started"}[place.source]
    raise ConfigError(
        f"world_size={world_size}, but {started} {place.size} workers ({variable}={place.size}); "
        f"set world_size={place.size} or start {world_size} workers"
    )


def _first_slurm_host() -> Optional[str]:
    """The first host of the step (rank 0 runs there), else of the job."""
    nodelist = (os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
                or os.environ.get("SLURM_NODELIST"))
    if not nodelist:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        hosts = out.stdout.split()
        return hosts[0] if hosts else None
    except (OSError, subprocess.SubprocessError):
        return None

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
from typing import Mapping, Optional

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


def prepare_torchdist_env(place: ProcessPlace, default_port: int = 29500) -> None:
    """Give env:// initialisation what mpiexec or srun do not set themselves."""
    os.environ.setdefault("RANK", str(place.rank))
    os.environ.setdefault("WORLD_SIZE", str(place.size))
    os.environ.setdefault("LOCAL_RANK", str(place.local_rank))
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _first_slurm_host() or "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", str(default_port))


def _first_slurm_host() -> Optional[str]:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        hosts = out.stdout.split()
        return hosts[0] if hosts else None
    except (OSError, subprocess.SubprocessError):
        return None

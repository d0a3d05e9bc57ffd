"""Shared test helpers: run the real CLI in a subprocess, read run dirs."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncsgd.launch.environment import find_executable

from .datafiles import write_cifar10, write_image_folder, write_mnist

REPO = Path(__file__).resolve().parents[1]

# Beside the running Python counts too: ./scripts/test runs the venv's python without activating it.
MPIEXEC = find_executable("mpiexec")
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py and mpiexec are not installed (pip install 'asyncsgd[mpi]')")
BACKENDS = ["gloo", pytest.param("mpi", marks=needs_mpi)]


def cli_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ASYNCSGD_DATA"}  # tests say where their data is
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HYDRA_FULL_ERROR", None)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)
    env.update(extra or {})
    return env


def run_cli(args, cwd: Path, timeout: float = 240, prefix=None, module_prefix=None,
            env_extra=None) -> subprocess.CompletedProcess:
    """``asyncsgd-run ARGS`` in ``cwd`` as a user would run it (its own process).

    ``prefix`` goes before ``python -m asyncsgd.cli`` (mpiexec -n 2); ``module_prefix``
    replaces ``python`` for launchers that take ``-m module`` themselves (torchrun).
    """
    launcher = module_prefix if module_prefix is not None else [*(prefix or []), sys.executable]
    cmd = [*launcher, "-m", "asyncsgd.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(env_extra), capture_output=True, text=True, timeout=timeout)


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))

"""A real one-node SLURM for the tests (scripts/setup-slurm), started once per test session.

./scripts/test runs two pytest workers (xdist), and each may ask for the cluster
at any time: a file lock serialises the start, each worker registers while it
uses the cluster, and the last one out stops it, if the tests started it (a
SLURM that was already up is left running). Where SLURM cannot be had (not
root, no apt, no Linux) the tests skip with setup-slurm's one-line reason.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup-slurm"
SLURM_DIR = Path(os.environ.get("ASYNCSGD_SLURM_DIR", "/tmp/asyncsgd-slurm"))
USERS = Path(f"{SLURM_DIR}.users")  # one file per pytest process using the cluster
STARTED_BY_TESTS = USERS / "started-by-tests"


@contextmanager
def _locked() -> Iterator[None]:
    USERS.mkdir(parents=True, exist_ok=True)
    with open(f"{SLURM_DIR}.tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _users() -> list:
    """Registered processes still alive (a crashed session's files are dropped)."""
    live = []
    for f in USERS.glob("pid-*"):
        if Path(f"/proc/{f.name[4:]}").exists():  # SLURM runs on Linux only
            live.append(f)
        else:
            f.unlink(missing_ok=True)
    return live


def acquire() -> dict:
    """Start the cluster if it is not up and register this process; returns the
    environment its commands need (SLURM_CONF). Raises RuntimeError with the reason."""
    with _locked():
        done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"scripts/setup-slurm failed (exit {done.returncode})")
        if "already running" not in done.stdout:
            STARTED_BY_TESTS.touch()
        (USERS / f"pid-{os.getpid()}").touch()
    return {"SLURM_CONF": str(SLURM_DIR / "etc" / "slurm.conf")}


def release() -> None:
    """Unregister; the last user stops a cluster the tests started (nothing left behind)."""
    with _locked():
        (USERS / f"pid-{os.getpid()}").unlink(missing_ok=True)
        if not _users() and STARTED_BY_TESTS.exists():
            subprocess.run([str(SETUP), "--stop"], capture_output=True, text=True, timeout=300)
            STARTED_BY_TESTS.unlink(missing_ok=True)
        if not any(USERS.iterdir()):
            USERS.rmdir()  # the empty lock file stays: removing it would race with a new session's open

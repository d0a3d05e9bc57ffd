"""launcher=emulated: world_size workers, each in its own network namespace,
talking over rate-limited links (the network is :mod:`asyncsgd.launch.netns`).

    asyncsgd-run launcher=emulated backend=gloo world_size=2 cluster.bandwidth=1gbit
    asyncsgd-run launcher=emulated backend=mpi  world_size=2 cluster.bandwidth=200mbit

backend=mpi: ``mpiexec`` runs in the switch namespace and starts one hydra
proxy per worker namespace through ``-launcher ssh -launcher-exec`` (a script
that runs ``ip netns exec``), with MPICH pinned to TCP on the link
(:meth:`EmulatedCluster.mpi_env`). backend=gloo: one plain process per rank,
started with ``ip netns exec`` and env:// variables, with the rendezvous store
served from the switch (:func:`serve_store`); :func:`supervise` watches the
ranks so that a dead one ends the job within ``launcher.grace_s`` and is
named. Either way the cluster is torn down when the run ends, however it ends.

:func:`run_in_cluster` is the launcher without the run directory's config:
any worker program (e.g. the link benchmark, :mod:`asyncsgd.launch.linkbench`)
can be started on a cluster with it; :func:`run_for_result` does that on a
fresh cluster and returns the JSON the workers wrote (the measurement scripts).
"""
from __future__ import annotations

import logging
import os
import select
import signal
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from ..config import Config
from ..runinfo import failures, update_summary
from .local import WorkerFailure, blame, interrupt_source, run_mpiexec, worker_env
from .netns import ClusterError, EmulatedCluster, LinkSpec, emulated_cluster

log = logging.getLogger("asyncsgd")

DEFAULT_PORT = 29500  # every cluster is a private network, so a fixed port never collides


class ClusterSetupError(WorkerFailure):
    """The emulated network could not be built; no worker ran."""

    def __init__(self, reason: str):
        super().__init__(None, reason)
        self.args = (f"emulated cluster setup failed: {reason}",)

    def __str__(self) -> str:
        return self.args[0]


def launch_emulated(cfg: Config, run_dir: Path, progress_bar: bool) -> None:
    link = LinkSpec.from_config(cfg.cluster)
    env = worker_env(cfg, progress_bar)  # threads: all emulated nodes share this machine's cores
    try:
        with emulated_cluster(cfg.world_size, link) as cluster:
            update_summary(run_dir, cluster=cluster.describe())
            argv = [sys.executable, "-m", "asyncsgd.worker", str(run_dir)]
            run_in_cluster(
                cluster, cfg.backend.name, argv, env, run_dir, cfg.launcher.grace_s,
                mpiexec=getattr(cfg.backend, "mpiexec", "mpiexec"),
                mpiexec_args=getattr(cfg.backend, "mpiexec_args", ()),
                netmod=cfg.cluster.mpi_netmod,
                port=getattr(cfg.backend, "master_port", 0) or DEFAULT_PORT,
            )
    except ClusterError as exc:
        raise ClusterSetupError(str(exc)) from None


def run_in_cluster(cluster: EmulatedCluster, backend: str, argv: Sequence[str], env: Dict[str, str],
                   run_dir: Path, grace_s: float, mpiexec: str = "mpiexec", mpiexec_args: Sequence[str] = (),
                   netmod: str = "ofi", port: int = DEFAULT_PORT) -> None:
    """Run ``argv`` as every rank of ``cluster`` and wait; failures raise :class:`WorkerFailure`."""
    if backend == "mpi":
        cmd = cluster.mpiexec_command(mpiexec, argv, mpiexec_args)
        log.info("starting %d MPI workers in emulated cluster %s", cluster.world_size, cluster.suffix)
        run_mpiexec(cmd, {**env, **cluster.mpi_env(netmod)}, run_dir, grace_s, own_group=True)
        return
    if backend != "gloo":
        raise ValueError(f"launcher=emulated supports backend=gloo or mpi, not {backend}")
    log.info("starting %d gloo workers in emulated cluster %s", cluster.world_size, cluster.suffix)
    procs: Dict[int, subprocess.Popen] = {}
    store = serve_store(cluster, port)
    try:
        for rank in range(cluster.world_size):
            rank_env = {**os.environ, **env, **cluster.torchdist_env(rank, port)}
            # Own process group: Ctrl-C reaches the launcher only, which forwards it once.
            procs[rank] = subprocess.Popen([*cluster.prefix(rank), *argv], env=rank_env, process_group=0)
        supervise(procs, run_dir, grace_s)
    finally:
        _stop(procs, grace_s=0)
        _stop({-1: store}, grace_s=0)


def run_for_result(world_size: int, link: LinkSpec, backend: str, argv: Callable[[Path], Sequence[str]],
                   env: Dict[str, str], prefix: str = "asyncsgd-") -> Any:
    """Start ``argv(out)`` as every rank of a fresh emulated cluster of ``world_size`` workers on
    ``link``, wait for them, and return the JSON they wrote to ``out`` (by the workers' own
    convention, rank 0 writes it). Failures raise as :func:`run_in_cluster`'s do."""
    from .environment import find_executable

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        out = Path(tmp) / "result.json"
        with emulated_cluster(world_size, link) as cluster:
            run_in_cluster(cluster, backend, list(argv(out)), env, Path(tmp), grace_s=10.0,
                           mpiexec=find_executable("mpiexec") or "mpiexec")
        return json.loads(out.read_text())

# The job's rendezvous store. Prints one line once it listens, then lives until killed.
_STORE_CODE = """
import sys, time
from datetime import timedelta
from torch.distributed import TCPStore
store = TCPStore("0.0.0.0", int(sys.argv[1]), is_master=True, wait_for_workers=False, timeout=timedelta(hours=24))
print("listening", flush=True)
while True:
    time.sleep(3600)
"""


def serve_store(cluster: EmulatedCluster, port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """Start a c10d TCPStore on the switch for one job and wait until it listens.

    Not on rank 0: a store hosted by rank 0 goes away when rank 0 exits, and a
    peer still tearing down its process group then dies in C++ ("terminate
    called without an active exception", SIGABRT). The elastic agent keeps
    the store outside the workers for the same reason. A fresh store per job
    means no keys are left over from a previous job on the same cluster.
    """
    proc = subprocess.Popen([*cluster.switch_prefix(), sys.executable, "-c", _STORE_CODE, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0)
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "listening":
        _stop({-1: proc}, grace_s=0)
        err = proc.stderr.read().strip().splitlines()
        raise ClusterError(f"the rendezvous store on {cluster.switch_address}:{port} did not start"
                           f"{': ' + err[-1] if err else f' within {timeout_s:g}s'}")
    return proc


def supervise(procs: Dict[int, subprocess.Popen], run_dir: Path, grace_s: float, poll_s: float = 0.1) -> None:
    """Wait for every rank; after the first failure the rest get ``grace_s`` to exit, then SIGKILL.

    The rank named is the one whose own report says it failed first (a peer's
    "connection closed" is marked secondary), else the first to die without
    a report (killed), else the first to exit non-zero.
    """
    exits: List[tuple] = []  # (rank, returncode) of non-zero exits, in the order seen
    deadline = None
    try:
        while True:
            running = 0
            for rank, proc in procs.items():
                code = proc.poll()
                if code is None:
                    running += 1
                elif code != 0 and rank not in {r for r, _ in exits}:
                    exits.append((rank, code))
                    if deadline is None:
                        deadline = time.monotonic() + grace_s
                        log.warning("rank %d exited with %s; stopping the others within %gs", rank, code, grace_s)
            if running == 0:
                break
            if deadline is not None and time.monotonic() > deadline:
                _stop(procs, grace_s=0)
            time.sleep(poll_s)
    except KeyboardInterrupt as exc:
        _stop(procs, grace_s, sig=signal.SIGINT)
        raise WorkerFailure(None, f"interrupted ({interrupt_source(exc)})", interrupted=True) from None
    if not exits:
        return
    # A rank that died without a report (killed, OOM) is the likely cause
    # unless some rank reported an error of its own; blame() weighs them.
    reporting = {r["rank"] for r in failures(run_dir)}
    silent = [(rank, code) for rank, code in exits if rank not in reporting]
    death = None
    if silent:
        rank, code = silent[0]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        death = (rank, f"process {procs[rank].pid} {how}")
    raise blame(run_dir, death, f"rank {exits[0][0]} exited with status {exits[0][1]}")


def _stop(procs: Dict[int, subprocess.Popen], grace_s: float, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the ranks still running, wait up to ``grace_s``, SIGKILL whoever is left."""
    alive: List[subprocess.Popen] = [p for p in procs.values() if p.poll() is None]
    for proc in alive:
        proc.send_signal(sig)
    end = time.monotonic() + grace_s
    for proc in alive:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    for proc in alive:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

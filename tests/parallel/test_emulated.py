"""launcher=emulated on a real network stack: traffic crosses the rate-limited
links (measured bandwidth near the configured rate, on gloo and MPI), and
nothing of a cluster outlives its run, whether it succeeds, fails or is
terminated. Needs root and ``ip netns``; skipped with the reason otherwise.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncsgd.launch import netns
from asyncsgd.launch.linkbench import measure_allreduce
from asyncsgd.launch.netns import EmulatedCluster, LinkSpec

from ..conftest import BACKENDS, cli_env, read_summary
from ..conftest import run_cli as _run_cli

MISSING = netns.missing_requirements()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=f"emulated cluster: {MISSING}")]

RATE = "200mbit"  # low enough that two workers on two shared cores keep up with it


def _leftovers(cluster_info: dict) -> list:
    """Anything of a finished run's cluster still on the machine."""
    names = cluster_info["namespaces"]
    found = [ns for ns in netns.list_namespaces() if ns in names]
    found += [str(p) for p in (Path("/etc/netns") / ns for ns in names) if p.exists()]
    state = netns.STATE_ROOT / cluster_info["suffix"]
    if state.exists():
        found.append(str(state))
    # Links live only inside the namespaces; none may have leaked into the root one.
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [line for line in links.splitlines() if cluster_info["suffix"] in line or f" {netns.IFACE}" in line]
    return found


def _args(args) -> list:
    return ["launcher=emulated", f"cluster.bandwidth={RATE}", *args]


def run_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    return _run_cli(_args(args), cwd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_allreduce_bandwidth_is_the_configured_rate(backend):
    link = LinkSpec.parse(RATE)
    nbytes, repeats = 12_500_000, 5  # 0.5 s per allreduce at 200 Mbit/s: timer noise is negligible
    m = measure_allreduce(backend, link, world_size=2, nbytes=nbytes, repeats=repeats)
    print(m.line())
    assert len(m.seconds) == repeats
    # TCP/IP headers cost ~4%, so ~94% is expected; shared memory or loopback would be 50-100x faster.
    assert 0.75 * link.rate_bps <= m.bus_bps <= 1.25 * link.rate_bps, m.line()
    # The bytes went through the shaped qdiscs, both ways, on both ranks' links
    # (warm-up + repeats allreduces, each moving ~nbytes out of and into each rank).
    for rank in (0, 1):
        assert m.link_bytes[rank]["up"] >= repeats * nbytes, m.link_bytes
        assert m.link_bytes[rank]["down"] >= repeats * nbytes, m.link_bytes
    assert not _leftovers(m.cluster)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_records_the_links_and_leaves_nothing(tmp_path, backend):
    run_dir = tmp_path / "run"
    out = run_cli([f"backend={backend}", "world_size=2", "train.max_steps=10", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    s = read_summary(run_dir)
    assert s["status"] == "complete" and s["launcher"] == "emulated" and s["world_size"] == 2
    cluster = s["cluster"]
    assert cluster["bandwidth_bps"] == 200_000_000
    assert cluster["latency_emulation"] == "none"
    assert len(cluster["namespaces"]) == 3 and all(cluster["suffix"] in ns for ns in cluster["namespaces"])
    assert not _leftovers(cluster)


def test_failed_run_names_the_rank_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    out = run_cli(["backend=gloo", "world_size=2", "train.max_steps=50", "fault.rank=1", "fault.step=3",
                   "fault.kind=kill", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 1
    assert time.monotonic() - start < 120
    assert "worker rank 1 failed" in out.stderr and "SIGKILL" in out.stderr
    s = read_summary(run_dir)
    assert s["status"] == "failed" and s["failed_rank"] == 1
    assert not _leftovers(s["cluster"])


def test_terminated_run_is_interrupted_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "asyncsgd.cli",
           *_args(["backend=gloo", "world_size=2", "train.epochs=500", f"hydra.run.dir={run_dir}"])]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        # Wait until the workers are training (metrics rows appear), at most 2 minutes.
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.csv").exists() and not (run_dir / "metrics.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started training"
            time.sleep(0.2)
        cluster = read_summary(run_dir)["cluster"]
        assert set(cluster["namespaces"]) <= set(netns.list_namespaces())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert read_summary(run_dir)["status"] == "interrupted"
    assert not _leftovers(cluster)


def test_cleanup_removes_clusters_whose_owner_died():
    dead = subprocess.Popen(["true"])
    dead.wait()
    cluster = EmulatedCluster(2, LinkSpec.parse(RATE))
    cluster.up()
    try:
        (cluster.state_dir / "owner").write_text(f"{dead.pid}\n")  # as if its run had crashed
        assert cluster.suffix in netns.cleanup()
        assert not _leftovers(cluster.describe())
    finally:
        cluster.down()

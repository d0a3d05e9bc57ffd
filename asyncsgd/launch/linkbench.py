"""Measure the allreduce bandwidth of an emulated cluster, through the project's
own Communicator and launcher, to check that traffic really crosses the
rate-limited links (and to see how close to the configured rate it gets).

    python -m asyncsgd.launch.linkbench --backend gloo --bandwidth 200mbit
    python -m asyncsgd.launch.linkbench --backend mpi --bandwidth 1gbit --mbytes 50 --repeats 7

Bandwidth is reported as bus bandwidth, ``2 (P-1)/P * bytes * 8 / time``: what
each worker's link carries in each direction for a bandwidth-optimal
allreduce (ring, or reduce-scatter + allgather), so it is directly comparable
with the configured rate; for P=2 it is simply ``bytes * 8 / time``. The
median over repeats is used, because the machine may be shared. TCP/IP
headers take about 4% of a 1500-byte frame, so ~95% of the rate is the most
to expect.

Library use: :func:`measure_allreduce` returns a :class:`LinkMeasurement`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .environment import find_executable
from .netns import LinkSpec, emulated_cluster, format_rate


@dataclass
class LinkMeasurement:
    backend: str
    world_size: int
    configured_bps: int
    nbytes: int
    seconds: List[float]  # one per timed allreduce
    link_bytes: Dict[int, Dict[str, int]] = field(default_factory=dict)  # per rank: up/down bytes from tc
    cluster: dict = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def bus_bps(self) -> float:
        """Median bus bandwidth, bits per second."""
        P = self.world_size
        return 2 * (P - 1) / P * self.nbytes * 8 / self.median_s

    @property
    def ratio(self) -> float:
        return self.bus_bps / self.configured_bps

    def to_dict(self) -> dict:
        return {**asdict(self), "median_s": self.median_s, "bus_bps": self.bus_bps, "ratio": self.ratio}

    def line(self) -> str:
        return (f"{self.backend:5s} P={self.world_size} {self.nbytes / 1e6:.1f} MB allreduce over "
                f"{format_rate(self.configured_bps)} links: median {self.median_s * 1e3:.1f} ms, "
                f"bus bandwidth {format_rate(self.bus_bps)} ({self.ratio:.1%} of the rate)")


def measure_allreduce(backend: str, link: LinkSpec, world_size: int = 2, nbytes: int = 12_500_000,
                      repeats: int = 5, netmod: str = "ofi", timeout_s: float = 120.0,
                      mpiexec: Optional[str] = None) -> LinkMeasurement:
    """Start ``world_size`` workers on a fresh emulated cluster and time ``repeats`` allreduces of ``nbytes``."""
    from .emulated import run_in_cluster

    with tempfile.TemporaryDirectory(prefix="asyncsgd-linkbench-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "asyncsgd.launch.linkbench", "--worker", "--backend", backend,
                "--nbytes", str(nbytes), "--repeats", str(repeats), "--timeout", str(timeout_s), "--out", str(out)]
        # One thread each: the reduction's arithmetic is not what is measured.
        env = {"OMP_NUM_THREADS": "1", "ASYNCSGD_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with emulated_cluster(world_size, link) as cluster:
            run_in_cluster(cluster, backend, argv, env, Path(tmp), grace_s=10.0, netmod=netmod,
                           mpiexec=mpiexec or find_executable("mpiexec") or "mpiexec")
            link_bytes = cluster.link_bytes()
            described = cluster.describe()
        result = json.loads(out.read_text())
    return LinkMeasurement(backend, world_size, link.rate_bps, nbytes, result["seconds"], link_bytes, described)


def _worker(backend: str, nbytes: int, repeats: int, timeout_s: float, out: Path) -> None:
    """One rank: the real Communicator, a warm-up allreduce, then timed ones between barriers."""
    import torch

    from ..comm import communicator_for

    torch.set_num_threads(1)
    comm = communicator_for(backend, timeout_s)
    tensor = torch.ones(nbytes // 4, dtype=torch.float32)
    comm.allreduce(tensor)  # connections are set up lazily: keep that out of the timing
    seconds = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(tensor)
        seconds.append(time.perf_counter() - t0)
    if comm.rank == 0:
        out.write_text(json.dumps({"seconds": seconds}))
    comm.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncsgd.launch.linkbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["gloo", "mpi"], default="gloo")
    parser.add_argument("--bandwidth", default="200mbit", help="link rate, tc units (200mbit, 1gbit)")
    parser.add_argument("--latency", default=None, help="one-way delay (needs netem), e.g. 100us")
    parser.add_argument("--burst", default=None, help="tbf bucket, e.g. 64kb (default: 1 ms at the rate)")
    parser.add_argument("--mtu", type=int, default=1500, help="bytes per packet on the links")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--mbytes", type=float, default=12.5, help="allreduce size in MB (10^6 bytes)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--netmod", choices=["ofi", "ucx"], default="ofi", help="MPICH netmod (backend=mpi)")
    parser.add_argument("--json", action="store_true", help="print the measurement as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nbytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.backend, args.nbytes, args.repeats, args.timeout, args.out)
        return 0

    from ..config import ConfigError
    from .emulated import WorkerFailure
    from .netns import ClusterError, missing_requirements

    try:
        reason = missing_requirements()
        if reason:
            raise ConfigError(reason)
        link = LinkSpec.parse(args.bandwidth, args.latency, args.burst, mtu=args.mtu)
        result = measure_allreduce(args.backend, link, args.world_size, int(args.mbytes * 1e6), args.repeats,
                                   args.netmod)
    except ConfigError as exc:
        print(f"linkbench: error: {exc}", file=sys.stderr)
        return 2
    except (ClusterError, WorkerFailure) as exc:
        print(f"linkbench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.line())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())

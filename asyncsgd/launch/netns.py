"""The emulated cluster's network: one namespace per worker, veth links to a
switch, every link rate-limited with tc's ``tbf`` in both directions.

Its life cycle: build (:meth:`EmulatedCluster.up`), run in (the ``prefix``,
``*_env`` and ``mpiexec_command`` helpers), tear down (:meth:`EmulatedCluster.down`,
:func:`cleanup`). What one link is -- rate, burst, queue, latency -- is the value
type :class:`asyncsgd.launch.link.LinkSpec` (re-exported here).

Layout of one cluster (suffix ``S``, P workers; nothing is created in the root
namespace but the namespace names, so the machine's own network is untouched)::

    asg-S-sw     switch: bridge br0 holding the last address of the subnet,
                 one port wI per worker (egress shaped: the link *towards* I)
    asg-S-I      worker I: interface asgnet with host address I+1 of the
                 subnet (egress shaped: the link *from* I), lo, nothing else

Each worker's link is limited on both ends, like a full-duplex NIC plugged
into a switch port: its egress (upload) on ``asgnet`` and the switch port's
egress (download) on ``wI``, so many-to-one traffic is limited at the
receiver too. Latency, where the kernel has the ``netem`` qdisc, is split
over the two hops so ``latency`` is the one-way worker-to-worker delay; where
it does not, a latency request is refused rather than ignored.

The suffix is random per cluster, so concurrent runs and leftovers of a crash
never collide, and each cluster's addresses live only in its own isolated
namespaces (two clusters may use the same subnet). The owner's pid is kept
in ``/run/asyncsgd-emulated/S/owner``; :func:`cleanup` removes clusters whose
owner is gone (``python -m asyncsgd.launch.netns cleanup [--all]``).

Library interface (what ``launcher=emulated`` and the benchmarks use)::

    from asyncsgd.launch.netns import LinkSpec, emulated_cluster

    with emulated_cluster(world_size=2, link=LinkSpec.parse("1gbit")) as cluster:
        # the simplest: start argv as every rank (gloo or mpi) and supervise it
        asyncsgd.launch.emulated.run_in_cluster(cluster, "gloo", argv, env, run_dir, grace_s=10)
        # or piece by piece:
        cluster.prefix(rank)            # ["ip", "netns", "exec", "asg-S-<rank>"]: run a command on rank's node
        cluster.address(rank)           # "10.213.0.<rank+1>"
        cluster.torchdist_env(rank)     # RANK, WORLD_SIZE, MASTER_ADDR (the switch), GLOO_SOCKET_IFNAME, ...
                                        # (the store: asyncsgd.launch.emulated.serve_store(cluster, port))
        cluster.mpiexec_command(mpiexec, argv)  # mpiexec in the switch namespace, one host per namespace
        cluster.mpi_env("ofi")          # keeps MPICH off shared memory and on the links
        cluster.link_bytes()            # bytes each link carried, from tc's counters
        cluster.describe()              # the settings, for summary.json

Entering the context creates everything (and tears down what was made if a
step fails); leaving it -- normally, by an exception, by Ctrl-C, or by
SIGTERM/SIGHUP, which are turned into KeyboardInterrupt while it is open --
kills any process left in the namespaces and deletes them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from ..errors import ConfigError
# The link model lives in .link (config.py needs it without the cluster); re-exported here,
# where the benchmarks and the docs import it from.
from .link import MIN_BURST, LinkSpec, format_rate, parse_rate, parse_size, parse_time_us  # noqa: F401

log = logging.getLogger("asyncsgd")

PREFIX = "asg"
IFACE = "asgnet"  # the worker's interface name, the same in every namespace
BRIDGE = "br0"
STATE_ROOT = Path("/run/asyncsgd-emulated")
_NAME_RE = re.compile(rf"^{PREFIX}-([0-9a-f]{{8}})-(sw|\d+)$")


class ClusterError(RuntimeError):
    """The emulated network could not be built (the message says which command failed)."""


# ---------------------------------------------------------------- host checks
def missing_requirements() -> Optional[str]:
    """Why an emulated cluster cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "launcher=emulated needs root (network namespaces and tc); run as root or use launcher=local"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return (f"launcher=emulated needs the '{tool}' command, which is not on PATH; "
                    "install iproute2 (apt-get install iproute2)")
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"launcher=emulated cannot list network namespaces: {exc}"
    if out.returncode != 0:
        return f"launcher=emulated needs 'ip netns', which fails here: {out.stderr.strip() or out.returncode}"
    return None


_netem_cache: Dict[str, Optional[str]] = {}


def netem_unavailable() -> Optional[str]:
    """None if the kernel has netem, else tc's reason (probed once, in a throwaway namespace)."""
    if "netem" not in _netem_cache:
        probe = f"{PREFIX}-probe-{os.getpid()}"
        reason: Optional[str] = "could not probe netem"
        try:
            _ip("netns", "add", probe)
            out = subprocess.run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                                 capture_output=True, text=True, timeout=30)
            reason = None if out.returncode == 0 else (out.stderr.strip() or f"tc exit {out.returncode}")
        except ClusterError as exc:
            reason = str(exc)
        finally:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
        _netem_cache["netem"] = reason
    return _netem_cache["netem"]


# ---------------------------------------------------------------- commands
def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"'{' '.join(cmd)}' failed: {exc}") from None
    if check and out.returncode != 0:
        raise ClusterError(f"'{' '.join(cmd)}' failed: {out.stderr.strip() or f'exit {out.returncode}'}")
    return out


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check)


def list_namespaces() -> List[str]:
    out = _ip("netns", "list", check=False)
    # Lines read "name" or "name (id: 3)".
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the cluster
class EmulatedCluster:
    """P worker namespaces and a switch namespace; see the module docstring."""

    def __init__(self, world_size: int, link: LinkSpec, suffix: Optional[str] = None,
                 state_root: Path = STATE_ROOT):
        if world_size < 1:
            raise ConfigError(f"world_size={world_size} must be >= 1")
        if world_size > link.max_workers:
            raise ConfigError(
                f"world_size={world_size} does not fit cluster.subnet={link.subnet}, which has room for "
                f"{link.max_workers} workers; use a larger subnet (e.g. 10.213.0.0/24 holds 253)"
            )
        self.world_size = world_size
        self.link = link
        self.suffix = suffix or uuid.uuid4().hex[:8]
        self.state_dir = Path(state_root) / self.suffix
        hosts = list(link.network.hosts())
        self._addresses = [str(h) for h in hosts[:world_size]]
        self.switch_address = str(hosts[-1])
        self.prefix_len = link.network.prefixlen
        self.is_up = False

    # -- names ------------------------------------------------------------------
    @property
    def switch_ns(self) -> str:
        return f"{PREFIX}-{self.suffix}-sw"

    def namespace(self, rank: int) -> str:
        return f"{PREFIX}-{self.suffix}-{rank}"

    @property
    def namespaces(self) -> List[str]:
        return [self.namespace(r) for r in range(self.world_size)] + [self.switch_ns]

    def address(self, rank: int) -> str:
        return self._addresses[rank]

    def prefix(self, rank: int) -> List[str]:
        """Command prefix that runs a program on rank's emulated node."""
        return ["ip", "netns", "exec", self.namespace(rank)]

    def switch_prefix(self) -> List[str]:
        return ["ip", "netns", "exec", self.switch_ns]

    # -- build and tear down ----------------------------------------------------
    def up(self) -> "EmulatedCluster":
        reason = missing_requirements()
        if reason:
            raise ClusterError(reason)
        if self.link.latency_us:
            why = netem_unavailable()
            if why:
                raise ClusterError(f"cluster.latency needs the netem qdisc, which this kernel lacks ({why})")
        self.is_up = True  # from here on, down() has something to remove
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "owner").write_text(f"{os.getpid()}\n")
            self._build()
        except OSError as exc:  # the files under /run and /etc/netns
            self.down()
            raise ClusterError(f"cannot write the cluster's files: {exc}") from None
        except BaseException:
            self.down()
            raise
        log.info("emulated cluster %s: %d workers on %s links (%s)", self.suffix, self.world_size,
                 format_rate(self.link.rate_bps), self.link.subnet)
        return self

    def _build(self) -> None:
        sw, mtu = self.switch_ns, str(self.link.mtu)
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", BRIDGE, "mtu", mtu, "type", "bridge")
        _ip("-n", sw, "addr", "add", f"{self.switch_address}/{self.prefix_len}", "dev", BRIDGE)
        _ip("-n", sw, "link", "set", BRIDGE, "up")
        for rank in range(self.world_size):
            ns, port = self.namespace(rank), f"w{rank}"
            self._write_etc(ns)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", sw, "link", "add", port, "mtu", mtu, "type", "veth", "peer", "name", IFACE,
                "mtu", mtu, "netns", ns)
            _ip("-n", sw, "link", "set", port, "master", BRIDGE)
            _ip("-n", sw, "link", "set", port, "up")
            # IPv4 only: gloo and libfabric then cannot pick a link-local IPv6 address.
            _run(["ip", "netns", "exec", ns, "sh", "-c",
                  "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                  "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"], check=False)
            _ip("-n", ns, "addr", "add", f"{self.address(rank)}/{self.prefix_len}", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
            self._shape(ns, IFACE)  # rank's upload
            self._shape(sw, port)  # rank's download
        self._write_etc(sw)

    def _shape(self, ns: str, dev: str) -> None:
        link = self.link
        tbf = ["tbf", "rate", f"{link.rate_bps}bit", "burst", str(link.burst), "latency", f"{int(link.queue_us)}us"]
        if link.latency_us:
            # netem at the root delays, tbf under it limits the rate (the netem
            # documentation's recipe); each of the two hops adds half the delay.
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                  f"{link.latency_us / 2:.1f}us"])
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf])
        else:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf])

    def _write_etc(self, ns: str) -> None:
        """/etc/netns/NS/ files, which ``ip netns exec`` mounts over /etc inside NS.

        Host names for every node make reverse look-ups (c10d logs peers'
        names) answer from the file; an empty resolv.conf means no name
        server is ever asked from inside the cluster.
        """
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        nodes = [(self.address(r), self.namespace(r)) for r in range(self.world_size)]
        nodes.append((self.switch_address, self.switch_ns))
        # c10d's store listens on a dual-stack socket, so peers show up as
        # IPv4-mapped IPv6 addresses: those need their own lines.
        lines = ["127.0.0.1 localhost"] + [f"{a} {n}" for a, n in nodes] + [f"::ffff:{a} {n}" for a, n in nodes]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "resolv.conf").write_text("# emulated cluster: no name server\n")

    def down(self) -> List[str]:
        """Kill what runs in the namespaces, delete them; returns what could not be removed."""
        if not self.is_up:
            return []
        leftovers = teardown(self.suffix, self.namespaces, self.state_dir)
        self.is_up = False
        if leftovers:
            log.warning("emulated cluster %s: could not remove %s", self.suffix, ", ".join(leftovers))
        return leftovers

    # -- what workers need --------------------------------------------------------
    def torchdist_env(self, rank: int, port: int = 29500) -> Dict[str, str]:
        """env:// variables for a job whose TCPStore runs on the switch, at ``switch_address:port``.

        Every rank is a store client (TORCHELASTIC_USE_AGENT_STORE, as under
        torchrun); :func:`asyncsgd.launch.emulated.serve_store` starts the store.
        """
        return {
            "RANK": str(rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": "0",  # one worker per emulated node
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": self.switch_address,
            "MASTER_PORT": str(port),  # each cluster is its own network: any port is free
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "GLOO_SOCKET_IFNAME": IFACE,
        }

    def mpi_env(self, netmod: str = "ofi") -> Dict[str, str]:
        """Keep MPICH off shared memory and on the links (TCP over asgnet).

        NOLOCAL stops MPICH's own shared-memory path; the transport libraries
        have their own (UCX's cma/posix, libfabric's shm), which cross
        namespaces as they share one kernel, so each is pinned to TCP on the
        emulated interface. Measured here: both reach ~94% of the tbf rate;
        ofi is the default because UCX's TCP transport intermittently took
        1.5x as long for a 25 MB allreduce at 200 Mbit/s.
        """
        env = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": netmod}
        if netmod == "ofi":
            env.update({"FI_PROVIDER": "tcp", "FI_TCP_IFACE": IFACE})
        elif netmod == "ucx":
            env.update({"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": IFACE})
        else:
            raise ValueError(f"cluster.mpi_netmod={netmod!r}: choose ofi or ucx")
        return env

    def launcher_script(self) -> Path:
        """The ``-launcher-exec`` program: hydra calls it like ssh, ``SCRIPT -x HOST "command"``."""
        path = self.state_dir / "netns-exec"
        ip = shutil.which("ip") or "ip"
        cases = "\n".join(f"  {self.address(r)}) ns={self.namespace(r)} ;;" for r in range(self.world_size))
        path.write_text(
            "#!/bin/sh\n"
            "# Written by asyncsgd for emulated cluster " + self.suffix + ": hydra's ssh launcher calls\n"
            "# this instead of ssh, and the proxy starts inside the host's namespace.\n"
            "[ \"$1\" = \"-x\" ] && shift\n"
            "host=$1; shift\n"
            "case $host in\n" + cases + "\n"
            "  *) echo \"netns-exec: $host is not a node of emulated cluster " + self.suffix + "\" >&2; exit 1 ;;\n"
            "esac\n"
            f"exec {ip} netns exec \"$ns\" sh -c \"$*\"\n"
        )
        path.chmod(0o755)
        return path

    def mpiexec_command(self, mpiexec: str, argv: Sequence[str], extra_args: Sequence[str] = ()) -> List[str]:
        """mpiexec in the switch namespace, treating each worker namespace as a host of one slot."""
        from .environment import find_executable

        hosts = ",".join(f"{self.address(r)}:1" for r in range(self.world_size))
        return [
            *self.switch_prefix(), find_executable(mpiexec) or mpiexec,
            "-launcher", "ssh", "-launcher-exec", str(self.launcher_script()),
            # Proxies connect back to mpiexec; the switch's address is the one they can reach.
            "-localhost", self.switch_address,
            "-hosts", hosts, "-n", str(self.world_size), *extra_args, *argv,
        ]

    # -- observation --------------------------------------------------------------
    def link_bytes(self) -> Dict[int, Dict[str, int]]:
        """Bytes each rank's link carried so far: up (sent by rank), down (delivered to rank)."""
        return {r: {"up": _qdisc_bytes(self.namespace(r), IFACE), "down": _qdisc_bytes(self.switch_ns, f"w{r}")}
                for r in range(self.world_size)}

    def describe(self) -> dict:
        return {
            **self.link.describe(),
            "latency_emulation": "netem" if self.link.latency_us else "none",
            "world_size": self.world_size,
            "suffix": self.suffix,
            "namespaces": self.namespaces,
            "addresses": {str(r): self.address(r) for r in range(self.world_size)},
            "interface": IFACE,
        }


def _qdisc_bytes(ns: str, dev: str) -> int:
    out = _run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev], check=False)
    try:
        qdiscs = json.loads(out.stdout or "[]")
    except json.JSONDecodeError:
        return 0
    # The root qdisc counts everything that left the device.
    roots = [q for q in qdiscs if q.get("root")] or qdiscs
    return int(roots[0].get("bytes", 0)) if roots else 0


def teardown(suffix: str, namespaces: Sequence[str], state_dir: Optional[Path] = None) -> List[str]:
    """Remove one cluster. Processes still inside its namespaces are ours and are killed first:
    a namespace with a process in it outlives ``ip netns del`` with all its links."""
    for ns in namespaces:
        out = _ip("netns", "pids", ns, check=False)
        for pid in (int(p) for p in out.stdout.split() if p.isdigit()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    present = set(list_namespaces())
    # Workers first, then the switch: deleting a namespace deletes its veth ends and their peers.
    for ns in namespaces:
        if ns in present:
            _ip("netns", "del", ns, check=False)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    for parent in (Path("/etc/netns"), state_dir.parent if state_dir is not None else None):
        if parent is not None:
            with contextlib.suppress(OSError):  # only if empty: others' entries stay
                parent.rmdir()
    remaining = set(list_namespaces())
    return [ns for ns in namespaces if ns in remaining]


def cleanup(everything: bool = False, state_root: Path = STATE_ROOT) -> List[str]:
    """Remove clusters whose owning process is gone (all of them with ``everything``); returns their suffixes."""
    by_suffix: Dict[str, List[str]] = {}
    for ns in list_namespaces():
        match = _NAME_RE.match(ns)
        if match:
            by_suffix.setdefault(match.group(1), []).append(ns)
    if state_root.is_dir():  # state left without namespaces (a crash between the two)
        for d in state_root.iterdir():
            by_suffix.setdefault(d.name, [])
    removed = []
    for suffix, names in sorted(by_suffix.items()):
        owner_file = state_root / suffix / "owner"
        try:
            owner = int(owner_file.read_text().strip())
        except (OSError, ValueError):
            owner = None
        if not everything and owner is not None and _pid_alive(owner):
            continue
        names.sort(key=lambda n: n.endswith("-sw"))  # workers before the switch
        teardown(suffix, names, state_root / suffix)
        removed.append(suffix)
    return removed


# ---------------------------------------------------------------- context manager
@contextlib.contextmanager
def _handlers(handlers: Dict[int, object]) -> Iterator[None]:
    """Install signal handlers for the duration (only the main thread may; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def terminate_as_interrupt():
    """While open, SIGTERM and SIGHUP raise KeyboardInterrupt, so ``finally`` blocks run.

    SIGINT gets Python's usual handler even if this process was started with
    it ignored (a background job of a script): then the workers started from
    here do not inherit "ignore SIGINT" and can be interrupted cleanly too.
    """
    return _handlers({signal.SIGTERM: _interrupt, signal.SIGHUP: _interrupt,
                      signal.SIGINT: signal.default_int_handler})


def _signals_held():
    """Teardown must finish even if the user presses Ctrl-C again."""
    return _handlers({s: signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)})


@contextlib.contextmanager
def emulated_cluster(world_size: int, link: LinkSpec, suffix: Optional[str] = None) -> Iterator[EmulatedCluster]:
    """Build a cluster, yield it, and always tear it down (see the module docstring)."""
    cluster = EmulatedCluster(world_size, link, suffix)
    stale = cleanup()
    if stale:
        log.info("removed leftovers of emulated clusters whose owner is gone: %s", ", ".join(stale))
    try:
        with terminate_as_interrupt():
            cluster.up()
            yield cluster
    finally:
        with _signals_held():
            cluster.down()


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m asyncsgd.launch.netns",
                                     description="Manage asyncsgd's emulated-cluster namespaces.")
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("cleanup", help="remove clusters left behind by runs that died")
    clean.add_argument("--all", action="store_true", help="also remove clusters whose owner is still running")
    sub.add_parser("list", help="list emulated-cluster namespaces")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"asyncsgd: {reason}", file=sys.stderr)
        return 2
    if args.command == "list":
        for ns in list_namespaces():
            if _NAME_RE.match(ns):
                print(ns)
        return 0
    removed = cleanup(everything=args.all)
    print(f"removed {len(removed)} cluster(s){': ' + ', '.join(removed) if removed else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Named networks for projections, each constant with where it comes from.

Link rates come from the standards (Ethernet's line rate; InfiniBand's lane
rate times lanes times its 64b/66b encoding; NVLink's per-link rate from
NVIDIA's P100 documentation). The payload fraction of an Ethernet link is
computed from its framing; every other efficiency and every latency is an
*assumption*, written as one, in the range vendors and the literature quote
(the projection report shows how its answers move when they are halved or
doubled). ``measured:gloo``/``measured:mpi`` name networks fitted here by
``asyncsgd-project calibrate`` (a file), not presets.

A DGX-1 joins 8 GPUs by NVLink and nodes by InfiniBand: :class:`Hierarchical`
reduces in two levels (reduce-scatter inside the node, allreduce of each
GPU's share between nodes, allgather inside the node), the shape NCCL and
Horovod's hierarchical allreduce use.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional

from .network import Network, NetworkError, SizeRange, allreduce_time

# TCP/IPv4 over Ethernet at MTU 1500: 1448 payload bytes (1500 - 20 IP - 32 TCP with timestamps) per
# 1538 bytes on the wire (+ 14 header, 4 FCS, 8 preamble, 12 inter-frame gap) -- IEEE 802.3 framing.
ETHERNET_TCP_EFFICIENCY = 1448 / 1538
IB_ENCODING = 64 / 66  # FDR and EDR lanes use 64b/66b (InfiniBand Architecture Specification, Release 1.3)

# MPICH's allreduce for a commutative op: recursive doubling up to MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE
# (2048 bytes by default), reduce-scatter + allgather above (Thakur, Rabenseifner, Gropp 2005, section 4.4).
MPICH_RANGES = [SizeRange(2048, "recursive_doubling"), SizeRange(None, "rabenseifner")]
# NCCL: rings (its bus bandwidth factor 2(p-1)/p); trees only at large scale, not modelled.
NCCL_RANGES = [SizeRange(None, "ring")]

# Reduction arithmetic on one Sandy Bridge core, a[i] += b[i] on fp32: memory-bound; ~8 GB/s of the
# three streams (assumption, STREAM-class single-core rate of that generation) = 12 bytes per 4-byte
# element -> 1.5 ns per element, 0.375 ns per byte.
SANDY_BRIDGE_GAMMA = 0.375e-9
# P100 HBM2: 732 GB/s (NVIDIA Tesla P100 datasheet); a += b moves 3 bytes per byte reduced.
P100_GAMMA = 3 / 732e9


def _ethernet(name: str, gbit: float, alpha: float, alpha_note: str) -> Network:
    return Network(
        name=name, alpha=alpha, rate_bps=gbit * 1e9, link_efficiency=ETHERNET_TCP_EFFICIENCY,
        gamma=SANDY_BRIDGE_GAMMA, ranges=list(MPICH_RANGES), channels=1,
        source=f"{gbit:g} Gbit/s Ethernet (IEEE 802.3), TCP/IP, MPICH-style algorithms, one communication thread",
        notes={"rate_bps": "IEEE 802.3 line rate",
               "link_efficiency": "computed: TCP/IPv4 payload per Ethernet frame at MTU 1500 (1448/1538)",
               "alpha": alpha_note,
               "gamma": "assumption: one Sandy Bridge-class core adding fp32 arrays at ~8 GB/s of memory traffic",
               "ranges": "MPICH defaults (Thakur et al. 2005): recursive doubling <= 2 KiB, Rabenseifner above",
               "cpu_s_per_byte": "0: TCP's own CPU cost is not modelled for remote clusters (it is, measured, "
                                 "for this machine's emulated links)"},
    )


def _infiniband(name: str, lane_gbaud: float, alpha: float, alpha_note: str, what: str) -> Network:
    rate = 4 * lane_gbaud * 1e9 * IB_ENCODING
    return Network(
        name=name, alpha=alpha, rate_bps=rate, link_efficiency=0.9, gamma=SANDY_BRIDGE_GAMMA,
        ranges=list(MPICH_RANGES), channels=1,
        source=f"InfiniBand 4x {what} ({rate / 1e9:.1f} Gbit/s of data), MPI over verbs (RDMA), one communication thread",
        notes={"rate_bps": f"4 lanes x {lane_gbaud} Gbaud x 64/66 (InfiniBand Architecture Specification)",
               "link_efficiency": "assumption: MPI reaches ~90% of the data rate for large messages",
               "alpha": alpha_note,
               "gamma": "assumption: one Sandy Bridge-class core adding fp32 arrays at ~8 GB/s of memory traffic",
               "ranges": "MPICH defaults (Thakur et al. 2005): recursive doubling <= 2 KiB, Rabenseifner above",
               "cpu_s_per_byte": "0: RDMA moves the bytes without the CPU"},
    )


NVLINK_DGX1 = Network(
    name="nvlink-dgx1", alpha=5e-6, rate_bps=2 * 20e9 * 8, link_efficiency=0.8, gamma=P100_GAMMA,
    ranges=list(NCCL_RANGES), channels=1,
    source="NVLink 1.0 inside a DGX-1 (8 P100, hybrid cube-mesh), NCCL rings on one stream",
    notes={"rate_bps": "two rings of NVLink 1.0 links, 20 GB/s per link and direction (NVIDIA Tesla P100 "
                       "whitepaper); that NCCL uses two rings on the DGX-1's cube-mesh is an assumption",
           "link_efficiency": "assumption: 80% of the NVLink rate reaches the reduction",
           "alpha": "assumption: ~5 us per ring step (kernel launch and synchronisation)",
           "gamma": "P100 HBM2 bandwidth 732 GB/s (datasheet), 3 bytes moved per byte reduced"},
)


@dataclass
class Hierarchical:
    """Nodes of ``per_node`` workers joined by ``inner``, the nodes joined by ``outer``.

    An allreduce over P > per_node workers: reduce-scatter inside each node
    (each worker then holds 1/g of the sum, g = per_node), allreduce of that
    share between the P/g nodes (the g shares of a node in parallel, sharing the
    node's outer link: each gets 1/g of its rate), allgather inside the node.
    """

    name: str
    inner: Network
    outer: Network  # its rate is the node's, all NICs together
    per_node: int
    source: str = ""

    # the Network interface the simulator uses: how the workers' CPU and the backend behave is the
    # node's (inner) business; the bytes cross both levels (allreduce_s)
    _FROM_INNER = ("channels", "cpu_share", "cpu_poll", "cpu_poll_gate", "scale_on_worker", "efficiency", "cpu_s")

    def __getattr__(self, name: str):
        if name in Hierarchical._FROM_INNER:
            return getattr(self.inner, name)
        raise AttributeError(name)

    @property
    def notes(self) -> Dict[str, str]:
        return {**{f"inner.{k}": v for k, v in self.inner.notes.items()},
                **{f"outer.{k}": v for k, v in self.outer.notes.items()}}

    def algorithm(self, nbytes: float) -> str:
        return self.outer.algorithm(nbytes)

    def allreduce_s(self, nbytes: float, p: int) -> float:
        g = self.per_node
        if p <= g:
            return self.inner.allreduce_s(nbytes, p)
        nodes = -(-p // g)
        a_in, b_in = self.inner.link(nbytes)
        half_ring = (g - 1) * a_in + (g - 1) / g * nbytes * b_in  # reduce-scatter or allgather inside
        reduce = (g - 1) / g * nbytes * self.inner.gamma
        share = nbytes / g
        a_out, b_out = self.outer.link(share)
        between = allreduce_time(self.outer.algorithm(share), share, nodes, a_out, b_out * g, self.outer.gamma)
        return 2 * half_ring + reduce + between

    def with_link(self, rate_bps: Optional[float] = None, latency_s: Optional[float] = None) -> "Hierarchical":
        return replace(self, outer=self.outer.with_link(rate_bps, latency_s))

    def scaled(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> "Hierarchical":
        return replace(self, inner=self.inner.scaled(alpha, beta, gamma), outer=self.outer.scaled(alpha, beta, gamma))

    def to_dict(self) -> dict:
        return {"name": self.name, "per_node": self.per_node, "inner": self.inner.to_dict(),
                "outer": self.outer.to_dict(), "source": self.source}


def _networks() -> dict:
    ib_edr = _infiniband("ib-edr", 25.78125, 0.6e-6,
                         "assumption: ~0.6 us MPI latency (ConnectX-4 class adapters)", "EDR")
    dgx_outer = replace(ib_edr, name="ib-edr-x4", rate_bps=4 * ib_edr.rate_bps, gamma=P100_GAMMA,
                        ranges=list(NCCL_RANGES),
                        source="4 InfiniBand EDR ports per DGX-1 (DGX-1 datasheet), NCCL rings between nodes",
                        notes={**ib_edr.notes, "rate_bps": "4 x EDR per node (DGX-1 datasheet: quad EDR IB)",
                               "gamma": "P100 HBM2 (datasheet)", "ranges": "NCCL rings"})
    return {
        "1gbe": _ethernet("1gbe", 1, 25e-6, "assumption: ~25 us small-message MPI latency over kernel TCP on 1 GbE"),
        "10gbe": _ethernet("10gbe", 10, 10e-6, "assumption: ~10 us small-message MPI latency over kernel TCP on 10 GbE"),
        "25gbe": _ethernet("25gbe", 25, 8e-6, "assumption: ~8 us small-message MPI latency over kernel TCP on 25 GbE"),
        "100gbe": _ethernet("100gbe", 100, 5e-6, "assumption: ~5 us small-message MPI latency over kernel TCP on 100 GbE"),
        "ib-fdr": _infiniband("ib-fdr", 14.0625, 1.0e-6,
                              "assumption: ~1 us MPI latency (ConnectX-3 FDR class adapters quote 0.7 us)", "FDR"),
        "ib-edr": ib_edr,
        "nvlink-dgx1": NVLINK_DGX1,
        "dgx1-ib-edr": Hierarchical(
            "dgx1-ib-edr", inner=NVLINK_DGX1, outer=dgx_outer, per_node=8,
            source="DGX-1 nodes (8 P100 over NVLink) joined by 4 x InfiniBand EDR each; hierarchical allreduce"),
    }


NETWORKS = _networks()


def network_names() -> str:
    return ", ".join(NETWORKS)


def load_network(spec: str, backend: Optional[str] = None):
    """A preset by name, or a JSON file (one network, or calibrate's output holding several by backend)."""
    import json
    from pathlib import Path

    if spec in NETWORKS:
        return NETWORKS[spec]
    path = Path(spec)
    if not path.exists():
        raise NetworkError(f"{spec}: not a network preset ({network_names()}) and no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NetworkError(f"{spec}: cannot read a network from it ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("networks"), dict):
        nets = data["networks"]
        if backend is None:
            if len(nets) != 1:
                raise NetworkError(f"{spec} holds networks for {', '.join(nets)}: name the backend")
            backend = next(iter(nets))
        if backend not in nets:
            raise NetworkError(f"{spec} has no network for backend {backend} (it has {', '.join(nets)})")
        return Network.from_dict(nets[backend], f"{spec} [{backend}]")
    return Network.from_dict(data, spec)

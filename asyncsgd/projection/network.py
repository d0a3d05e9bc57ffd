"""The network model: what one allreduce costs, on the link and on the CPU.

Collective costs use the standard closed forms (Thakur, Rabenseifner and Gropp,
"Optimization of Collective Communication Operations in MPICH", IJHPCA 2005)
with latency ``alpha`` (s per message), inverse bandwidth ``beta`` (s per byte
on the link) and reduction cost ``gamma`` (s per byte of local arithmetic), for
``n`` bytes over ``p`` workers:

==========================  ======================================================
ring                        2(p-1) alpha + 2 (p-1)/p n beta + (p-1)/p n gamma
recursive doubling          lg p (alpha + n beta + n gamma)
reduce-scatter + allgather  2 lg p alpha + 2 (p-1)/p n beta + (p-1)/p n gamma
(Rabenseifner)
==========================  ======================================================

(``2 (p-1)/p`` is also the factor NCCL's "bus bandwidth" divides out.) For a
``p`` that is not a power of two, recursive doubling and Rabenseifner first fold
the ``r = p - 2^floor(lg p)`` extra ranks into partners and hand them the result
at the end, as MPICH does: ``2 alpha + 2 n beta + n gamma`` more.

Which algorithm a library uses at a size is a measured fact, not an assumption:
:class:`Network` holds size ranges (:class:`SizeRange`: up to how many bytes,
which algorithm, and the range's own latency and link efficiency where the
library switches protocol) that :mod:`.calibrate` fills in from a sweep, or a
preset states with its source.

On a CPU a reduction is also CPU work on the cores that compute (TCP/IP
copies, the arithmetic): ``cpu_s_per_byte`` and ``cpu_s_per_call`` say how
much, and the simulator (:mod:`.simulate`) lets it compete with compute.
Backends run a few reductions at once on each channel of the communicator
(MPI's communication thread: ``backend.max_inflight``; gloo: its worker threads):
``channels``; MPI's thread starts a channel's reductions only while the
channels before it are idle (``channel_priority``); several at once on one link
share it, and ``concurrent_efficiency[k]`` is the fraction of the link the k
of them achieve together (measured: it is well below 1 for gloo over TCP).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

ALGORITHMS = ("ring", "recursive_doubling", "rabenseifner")


class NetworkError(ValueError):
    """A network description that cannot be used; the message is one line for the user."""


def _lg(p: int) -> int:
    return int(math.floor(math.log2(p)))


def allreduce_time(algorithm: str, nbytes: float, p: int, alpha: float, beta: float, gamma: float = 0.0) -> float:
    """Seconds for one allreduce of ``nbytes`` over ``p`` workers by ``algorithm`` (closed form)."""
    if p <= 1 or nbytes < 0:
        return 0.0
    n = float(nbytes)
    if algorithm == "ring":
        return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * gamma
    if algorithm not in ("recursive_doubling", "rabenseifner"):
        raise NetworkError(f"unknown allreduce algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    p2 = 2 ** _lg(p)
    # non-power-of-two: the extra ranks reduce into a partner first and get the result back last
    fold = 0.0 if p2 == p else 2 * alpha + 2 * n * beta + n * gamma
    lg = _lg(p2)
    if algorithm == "recursive_doubling":
        return fold + lg * (alpha + n * beta + n * gamma)
    return fold + 2 * lg * alpha + 2 * (p2 - 1) / p2 * n * beta + (p2 - 1) / p2 * n * gamma


def bus_factor(algorithm: str, p: int) -> float:
    """Bytes each worker's link carries per byte reduced (the bandwidth term's coefficient)."""
    if p <= 1:
        return 0.0
    return allreduce_time(algorithm, 1.0, p, 0.0, 1.0, 0.0)


# Linux's CFS weight of a thread at nice 0..19 (kernel/sched/core.c, sched_prio_to_weight): a runnable
# thread gets CPU in proportion to its weight, each nice step about 1.25x less.
CFS_WEIGHT = (1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15)


def yielded_share(share: float, compute_nice: int) -> float:
    """The most of a core a reduction's thread gets while the training thread computes, once the
    training thread has added ``compute_nice`` to its nice value (``backend.compute_nice``).

    ``share`` is what was measured at equal priorities (the calibration's ``cpu_share``). Read as
    proportional sharing, it says the reduction's thread weighs share / (1 - share) of the compute;
    lowering the compute's weight from 1024 to CFS_WEIGHT[compute_nice] raises that ratio by as
    much. At nice 19 a measured 0.43 becomes 0.98: the reduction preempts the compute.
    """
    if not 0 <= compute_nice < len(CFS_WEIGHT):
        raise NetworkError(f"compute_nice={compute_nice} must be in [0, {len(CFS_WEIGHT) - 1}]")
    if share >= 1.0 or compute_nice == 0:
        return share
    return share / (share + (1.0 - share) * CFS_WEIGHT[compute_nice] / CFS_WEIGHT[0])


@dataclass
class SizeRange:
    """Messages up to ``up_to_bytes`` (None: any size) use ``algorithm``; a range may have its own
    latency and link efficiency (libraries switch protocol with size: eager vs rendezvous)."""

    up_to_bytes: Optional[float]
    algorithm: str = "ring"
    alpha: Optional[float] = None  # s; None = the network's
    link_efficiency: Optional[float] = None  # fraction of the rate carrying payload; None = the network's


@dataclass
class Network:
    """Constants of one backend on one network; every number in seconds, bytes or bits/s.

    The link: ``rate_bps`` with ``link_efficiency`` of it carrying payload
    (beta = 8 / (efficiency * rate)), or ``beta`` given directly when there is
    no rate; ``alpha`` per message. ``ranges`` picks the algorithm (and maybe
    another alpha/efficiency) by message size. ``gamma`` is the reduction
    arithmetic in the closed forms. ``channels`` reductions run at once and
    share the link with ``concurrent_efficiency`` (``channel_priority``: channel 0
    first, as MPI's communication thread starts them). On a CPU a reduction also
    takes ``cpu_s_per_byte`` (+ ``cpu_s_per_call``) CPU seconds from the
    cores that compute, and while the training thread computes it gets at most
    ``cpu_share`` of a core; ``cpu_poll`` is the core fraction its thread burns
    while it runs whatever its size (a progress engine polling), ``cpu_poll_gate``
    the part of that its progress needs. ``scale_on_worker``: averaging (division by P)
    runs on the training thread after the wait (gloo), not inside the reduction (MPI).
    """

    name: str
    alpha: float  # s per message (latency)
    beta: Optional[float] = None  # s per byte on the link; None = from rate_bps and link_efficiency
    rate_bps: Optional[float] = None  # link rate, bits/s
    link_efficiency: float = 1.0  # payload fraction of the rate (headers, protocol)
    gamma: float = 0.0  # s per byte of reduction arithmetic on the critical path
    ranges: List[SizeRange] = field(default_factory=lambda: [SizeRange(None, "ring")])
    channels: int = 1  # reductions the backend runs at once on each channel (communicator)
    channel_priority: bool = False  # MPI's communication thread: channel 0's reductions start first
    concurrent_efficiency: Dict[int, float] = field(default_factory=dict)  # k at once -> fraction of the link
    cpu_s_per_byte: float = 0.0  # CPU seconds per byte reduced, taken from the compute cores
    cpu_s_per_call: float = 0.0  # CPU seconds per reduction call
    cpu_poll: float = 0.0  # fraction of a core a running reduction's thread uses whatever its size (polling)
    cpu_poll_gate: float = 0.0  # fraction of that polling its progress needs (a late poller reacts late)
    cpu_share: float = 1.0  # most of a core a reduction gets while the training thread computes
    scale_on_worker: bool = False  # averaging (div by P) runs on the training thread after the wait
    source: str = ""  # where the numbers come from
    notes: Dict[str, str] = field(default_factory=dict)  # per-constant sources and assumptions

    def __post_init__(self) -> None:
        def check(key, value, minimum=0.0, allow_none=False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < minimum:
                raise NetworkError(f"network {self.name}: {key}={value!r} must be a number >= {minimum:g}")

        for key in ("alpha", "gamma", "cpu_s_per_byte", "cpu_s_per_call"):
            check(key, getattr(self, key))
        check("beta", self.beta, allow_none=True)
        check("rate_bps", self.rate_bps, minimum=1.0, allow_none=True)
        if self.beta is None and self.rate_bps is None:
            raise NetworkError(f"network {self.name}: give beta (s per byte) or rate_bps (bits/s)")
        if not 0 < self.link_efficiency <= 1:
            raise NetworkError(f"network {self.name}: link_efficiency={self.link_efficiency} must be in (0, 1]")
        for key in ("cpu_poll", "cpu_poll_gate"):
            if not 0 <= getattr(self, key) <= 1:
                raise NetworkError(f"network {self.name}: {key}={getattr(self, key)} must be in [0, 1]")
        if not 0 < self.cpu_share <= 1:
            raise NetworkError(f"network {self.name}: cpu_share={self.cpu_share} must be in (0, 1]")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels < 1:
            raise NetworkError(f"network {self.name}: channels={self.channels!r} must be an integer >= 1")
        ranges = []
        for r in self.ranges:
            if isinstance(r, dict):
                try:
                    r = SizeRange(**r)
                except TypeError as exc:
                    raise NetworkError(f"network {self.name}: ranges: {exc}") from None
            if r.algorithm not in ALGORITHMS:
                raise NetworkError(f"network {self.name}: unknown algorithm {r.algorithm!r}; "
                                   f"choose one of {', '.join(ALGORITHMS)}")
            check("ranges.alpha", r.alpha, allow_none=True)
            if r.link_efficiency is not None and not 0 < r.link_efficiency <= 1:
                raise NetworkError(f"network {self.name}: ranges.link_efficiency={r.link_efficiency} must be in (0, 1]")
            ranges.append(r)
        if not ranges or ranges[-1].up_to_bytes is not None:
            raise NetworkError(f"network {self.name}: the last range must cover every size (up_to_bytes null)")
        self.ranges = ranges
        self.concurrent_efficiency = {int(k): float(v) for k, v in self.concurrent_efficiency.items()}
        for k, eff in self.concurrent_efficiency.items():
            if k < 1 or not 0 < eff <= 1.5:
                raise NetworkError(f"network {self.name}: concurrent_efficiency[{k}]={eff} must be in (0, 1.5]")

    # ------------------------------------------------------------------ costs
    def range_for(self, nbytes: float) -> SizeRange:
        for r in self.ranges:
            if r.up_to_bytes is None or nbytes <= r.up_to_bytes:
                return r
        return self.ranges[-1]

    def algorithm(self, nbytes: float) -> str:
        return self.range_for(nbytes).algorithm

    def link(self, nbytes: float) -> Tuple[float, float]:
        """(alpha, beta) for a message of ``nbytes``."""
        r = self.range_for(nbytes)
        alpha = self.alpha if r.alpha is None else r.alpha
        eff = self.link_efficiency if r.link_efficiency is None else r.link_efficiency
        if self.rate_bps is not None:
            return alpha, 8.0 / (eff * self.rate_bps)
        return alpha, self.beta * self.link_efficiency / eff

    def allreduce_s(self, nbytes: float, p: int) -> float:
        """Time of one allreduce alone on the link (no other traffic, a free core)."""
        alpha, beta = self.link(nbytes)
        return allreduce_time(self.algorithm(nbytes), nbytes, p, alpha, beta, self.gamma)

    def cpu_s(self, nbytes: float, p: int) -> float:
        """CPU seconds one allreduce takes from this worker's cores."""
        if p <= 1:
            return 0.0
        return self.cpu_s_per_call + self.cpu_s_per_byte * nbytes

    def efficiency(self, k: int) -> float:
        """Fraction of the link k concurrent reductions achieve together (1 for one)."""
        if k <= 1 or not self.concurrent_efficiency:
            return 1.0
        below = [c for c in sorted(self.concurrent_efficiency) if c <= k]
        return self.concurrent_efficiency[below[-1]] if below else 1.0

    def with_link(self, rate_bps: Optional[float] = None, latency_s: Optional[float] = None) -> "Network":
        """The same backend on a link of another rate and/or latency."""
        changes: dict = {"notes": dict(self.notes)}
        if rate_bps is not None:
            changes.update(rate_bps=float(rate_bps), beta=None)
        if latency_s is not None:
            changes["alpha"] = float(latency_s)
            changes["ranges"] = [replace(r, alpha=None) for r in self.ranges]
        return replace(self, **changes)

    def scaled(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> "Network":
        """Constants multiplied by factors (sensitivity bands): latency, inverse bandwidth, arithmetic."""
        ranges = [replace(r, alpha=None if r.alpha is None else r.alpha * alpha) for r in self.ranges]
        changes = dict(alpha=self.alpha * alpha, gamma=self.gamma * gamma, ranges=ranges, notes=dict(self.notes))
        if self.rate_bps is not None:
            changes["rate_bps"] = self.rate_bps / beta
        else:
            changes["beta"] = self.beta * beta
        return replace(self, **changes)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d = asdict(self)
        d["concurrent_efficiency"] = {str(k): v for k, v in self.concurrent_efficiency.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "network") -> "Network":
        if not isinstance(data, dict):
            raise NetworkError(f"{where}: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known - {"format", "fit", "measurements"})
        if unknown:
            raise NetworkError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "name" not in data or "alpha" not in data:
            raise NetworkError(f"{where}: needs at least name, alpha and beta or rate_bps")
        values = {k: v for k, v in data.items() if k in known}
        if "ranges" in values and not isinstance(values["ranges"], list):
            raise NetworkError(f"{where}: ranges must be a list of {{up_to_bytes, algorithm, ...}}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise NetworkError(f"{where}: {exc}") from None


def link_beta(rate_bps: float, efficiency: float = 1.0) -> float:
    """Seconds per byte on a link of ``rate_bps`` bits/s of which ``efficiency`` carries payload."""
    return 8.0 / (rate_bps * efficiency)

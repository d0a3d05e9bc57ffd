"""The emulated cluster's link model: tc's units and :class:`LinkSpec`, one link's settings.

What a ``cluster.*`` config means for one worker's link, in plain units
(bits/s, bytes, microseconds), checked as a value: nothing here touches the
machine. :mod:`asyncsgd.launch.netns` builds links from a LinkSpec; the config
schema checks ``cluster.*`` through it, and the report and the benchmarks read
rates with :func:`parse_rate`.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, Optional

from ..errors import ConfigError

PRIVATE_RANGES = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
MIN_BURST = 16 * 1024  # bytes: a few MTU-sized packets, so tbf never stalls on one frame


# ---------------------------------------------------------------- units (tc's)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2}
_TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def _parse(text: str, units: Dict[str, float], key: str, example: str) -> float:
    match = re.fullmatch(_NUMBER + r"\s*([a-z]+)", str(text).strip().lower())
    if not match or match.group(2) not in units:
        raise ConfigError(
            f"{key}={text!r} is not understood; write a number and one of {', '.join(units)} (e.g. {example})"
        )
    return float(match.group(1)) * units[match.group(2)]


def parse_rate(text: str, key: str = "cluster.bandwidth") -> int:
    """``"200mbit"`` -> 200_000_000 (bits per second, decimal prefixes as tc)."""
    return int(_parse(text, _RATE_UNITS, key, "200mbit, 1gbit"))


def parse_size(text: str, key: str = "cluster.burst") -> int:
    """``"64kb"`` -> 65536 (bytes, binary prefixes as tc)."""
    return int(_parse(text, _SIZE_UNITS, key, "32kb"))


def parse_time_us(text: str, key: str) -> float:
    """``"1ms"`` -> 1000.0 (microseconds)."""
    return _parse(text, _TIME_UNITS, key, "100us, 1ms")


def format_rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.0f} bit/s"


@dataclass(frozen=True)
class LinkSpec:
    """One link's settings, in plain units (bits/s, bytes, microseconds)."""

    rate_bps: int
    latency_us: Optional[float] = None  # one-way, worker to worker; None = no netem
    burst_bytes: Optional[int] = None  # None = 1 ms at the rate, at least MIN_BURST
    queue_us: float = 100_000.0
    mtu: int = 1500
    subnet: str = "10.213.0.0/24"

    def __post_init__(self) -> None:
        if self.rate_bps < 8_000:
            raise ConfigError(f"cluster.bandwidth={format_rate(self.rate_bps)} is too low; use at least 8kbit")
        if self.latency_us is not None and self.latency_us < 0:
            raise ConfigError(f"cluster.latency={self.latency_us}us must be >= 0")
        if self.burst_bytes is not None and self.burst_bytes < self.mtu:
            raise ConfigError(f"cluster.burst={self.burst_bytes} bytes must be at least cluster.mtu={self.mtu}")
        if self.queue_us <= 0:
            raise ConfigError(f"cluster.queue={self.queue_us}us must be > 0")
        if not 576 <= self.mtu <= 65535:
            raise ConfigError(f"cluster.mtu={self.mtu} must be in [576, 65535] bytes")
        self.network  # validates the subnet

    @classmethod
    def parse(cls, bandwidth: str, latency: Optional[str] = None, burst: Optional[str] = None,
              queue: str = "100ms", mtu: int = 1500, subnet: str = "10.213.0.0/24") -> "LinkSpec":
        return cls(
            rate_bps=parse_rate(bandwidth),
            latency_us=parse_time_us(latency, "cluster.latency") if latency not in (None, "") else None,
            burst_bytes=parse_size(burst) if burst not in (None, "") else None,
            queue_us=parse_time_us(queue, "cluster.queue"),
            mtu=int(mtu),
            subnet=subnet,
        )

    @classmethod
    def from_config(cls, cluster) -> "LinkSpec":
        """From a :class:`asyncsgd.config.ClusterConfig`; ConfigError names the key."""
        return cls.parse(cluster.bandwidth, cluster.latency, cluster.burst, cluster.queue, cluster.mtu, cluster.subnet)

    @property
    def network(self) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as exc:
            raise ConfigError(f"cluster.subnet={self.subnet!r} is not an IPv4 network ({exc})") from None
        if not any(net.subnet_of(r) for r in PRIVATE_RANGES):
            raise ConfigError(
                f"cluster.subnet={self.subnet} is not a private range; use one inside 10.0.0.0/8, "
                "172.16.0.0/12 or 192.168.0.0/16"
            )
        if net.num_addresses < 4:
            raise ConfigError(f"cluster.subnet={self.subnet} is too small for one worker and the switch")
        return net

    @property
    def max_workers(self) -> int:
        """Host addresses in the subnet, less the switch's."""
        return self.network.num_addresses - 3

    @property
    def burst(self) -> int:
        if self.burst_bytes is not None:
            return self.burst_bytes
        # One millisecond at the rate: small enough that a link looks like a
        # constant-rate wire, large enough that the kernel's timer need not
        # fire per packet at 1-10 Gbit/s.
        return max(MIN_BURST, 2 * self.mtu, self.rate_bps // 8 // 1000)

    def describe(self) -> dict:
        return {
            "bandwidth_bps": self.rate_bps,
            "bandwidth": format_rate(self.rate_bps),
            "latency_us": self.latency_us,
            "burst_bytes": self.burst,
            "queue_us": self.queue_us,
            "mtu": self.mtu,
            "subnet": self.subnet,
            "shaping": "tbf on both ends of every worker link (upload and download)",
        }

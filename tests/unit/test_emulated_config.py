"""launcher=emulated's settings: tc units, link specs, and the checks made
before anything starts (no namespace is created by these tests)."""
from __future__ import annotations

import pytest

from asyncsgd.config import ConfigError
from asyncsgd.launch import netns
from asyncsgd.launch.netns import EmulatedCluster, LinkSpec, parse_rate, parse_size, parse_time_us
from asyncsgd.validate import check_all

from ..conftest import run_cli


def test_tc_units():
    assert parse_rate("200mbit") == 200_000_000
    assert parse_rate("1gbit") == 10**9
    assert parse_rate("1.5Gbit") == 1_500_000_000
    assert parse_size("64kb") == 65536
    assert parse_size("1mb") == 1024**2
    assert parse_time_us("1ms", "cluster.latency") == 1000.0
    assert parse_time_us("250us", "cluster.latency") == 250.0


@pytest.mark.parametrize("text", ["fast", "200", "200mbps", "mbit", "-1gbit"])
def test_bad_rate_names_the_key(text):
    with pytest.raises(ConfigError, match=r"cluster\.bandwidth=.*kbit, mbit, gbit"):
        parse_rate(text)


def test_burst_defaults_to_one_millisecond_of_the_rate():
    assert LinkSpec.parse("1gbit").burst == 125_000
    assert LinkSpec.parse("10mbit").burst == netns.MIN_BURST  # 1250 bytes would stall on one frame
    assert LinkSpec.parse("1gbit", burst="32kb").burst == 32768


def test_subnet_must_be_private_and_sets_the_size():
    assert LinkSpec.parse("1gbit").max_workers == 253
    assert LinkSpec.parse("1gbit", subnet="192.168.7.0/29").max_workers == 5
    with pytest.raises(ConfigError, match="not a private range"):
        LinkSpec.parse("1gbit", subnet="8.8.8.0/24")
    with pytest.raises(ConfigError, match="too small"):
        LinkSpec.parse("1gbit", subnet="10.213.0.0/31")
    with pytest.raises(ConfigError, match="cluster.burst"):
        LinkSpec.parse("1gbit", burst="1kb")


def test_cluster_addresses_and_names():
    cluster = EmulatedCluster(3, LinkSpec.parse("1gbit", subnet="10.213.5.0/24"), suffix="0123abcd")
    assert [cluster.address(r) for r in range(3)] == ["10.213.5.1", "10.213.5.2", "10.213.5.3"]
    assert cluster.switch_address == "10.213.5.254"
    assert cluster.namespaces == ["asg-0123abcd-0", "asg-0123abcd-1", "asg-0123abcd-2", "asg-0123abcd-sw"]
    env = cluster.torchdist_env(2)
    assert env["RANK"] == "2" and env["WORLD_SIZE"] == "3" and env["MASTER_ADDR"] == "10.213.5.254"
    assert env["GLOO_SOCKET_IFNAME"] == netns.IFACE
    mpi = cluster.mpi_env("ofi")
    assert mpi["MPIR_CVAR_NOLOCAL"] == "1" and mpi["FI_PROVIDER"] == "tcp" and mpi["FI_TCP_IFACE"] == netns.IFACE
    assert cluster.mpi_env("ucx")["UCX_TLS"] == "tcp,self"


def test_world_size_larger_than_the_subnet_is_refused():
    with pytest.raises(ConfigError, match="world_size=6 does not fit the emulated cluster"):
        check_all(["launcher=emulated", "backend=gloo", "world_size=6", "cluster.subnet=10.213.0.0/29"], False)
    with pytest.raises(ConfigError, match="does not fit cluster.subnet"):
        EmulatedCluster(6, LinkSpec.parse("1gbit", subnet="10.213.0.0/29"))


def test_emulated_refuses_nccl_and_bad_keys():
    with pytest.raises(ConfigError, match="launcher=emulated runs backend=gloo or backend=mpi"):
        check_all(["launcher=emulated", "backend=nccl"], False)
    with pytest.raises(ConfigError, match=r"cluster\.mpi_netmod='tcp' is not allowed"):
        check_all(["launcher=emulated", "cluster.mpi_netmod=tcp"], False)
    with pytest.raises(ConfigError, match=r"cluster\.bandwidht is not a config key.*bandwidth"):
        check_all(["launcher=emulated", "cluster.bandwidht=1gbit"], False)


def test_not_root_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    from asyncsgd import validate

    monkeypatch.setattr(validate, "_probe_cache", {})
    with pytest.raises(ConfigError, match="launcher=emulated needs root"):
        check_all(["launcher=emulated", "backend=gloo"], False)


def test_missing_tc_is_refused(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    real_which = netns.shutil.which
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "tc" else real_which(tool))
    assert "needs the 'tc' command" in netns.missing_requirements()
    assert "apt-get install iproute2" in netns.missing_requirements()


def test_latency_without_netem_is_refused_not_ignored(monkeypatch):
    from asyncsgd import validate

    monkeypatch.setattr(validate, "_probe_cache", {"emulation": None})
    monkeypatch.setattr(netns, "netem_unavailable", lambda: "Specified qdisc kind is unknown.")
    with pytest.raises(ConfigError, match=r"cluster\.latency=1ms needs the netem qdisc.*leave cluster\.latency unset"):
        check_all(["launcher=emulated", "backend=gloo", "cluster.latency=1ms"], False)


def test_cli_exits_2_with_one_line(tmp_path):
    out = run_cli(["launcher=emulated", "cluster.bandwidth=fast"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.bandwidth='fast' is not understood" in lines[0]

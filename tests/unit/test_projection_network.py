"""Collective closed forms against hand-computed values, presets, and the calibration fit
(asyncsgd/projection/network.py, presets.py, calibrate.py)."""
from __future__ import annotations

import pytest

from asyncsgd.projection.calibrate import fit
from asyncsgd.projection.network import CFS_WEIGHT, Network, NetworkError, allreduce_time, bus_factor, yielded_share
from asyncsgd.projection.presets import NETWORKS, Hierarchical, load_network

A, B, G = 1e-6, 1e-9, 1e-10  # alpha (s), beta (s/byte), gamma (s/byte)
N = 1e6  # bytes


@pytest.mark.parametrize("algorithm,p,expected", [
    # 2(p-1) alpha + 2 (p-1)/p n beta + (p-1)/p n gamma = 6e-6 + 1.5e-3 + 7.5e-5
    ("ring", 4, 1.581e-3),
    # lg p (alpha + n beta + n gamma) = 3 (1e-6 + 1e-3 + 1e-4)
    ("recursive_doubling", 8, 3.303e-3),
    # 2 lg p alpha + 2 (p-1)/p n beta + (p-1)/p n gamma = 6e-6 + 1.75e-3 + 8.75e-5
    ("rabenseifner", 8, 1.8435e-3),
    # p = 6: fold 2 extra ranks (2 alpha + 2 n beta + n gamma = 2.102e-3), then lg 4 = 2 rounds (2.202e-3)
    ("recursive_doubling", 6, 4.304e-3),
    # p = 6: the fold, then Rabenseifner on 4: 4e-6 + 1.5e-3 + 7.5e-5
    ("rabenseifner", 6, 2.102e-3 + 1.579e-3),
    ("ring", 1, 0.0),
])
def test_closed_forms(algorithm, p, expected):
    assert allreduce_time(algorithm, N, p, A, B, G) == pytest.approx(expected, rel=1e-12)


def test_bus_factor_is_nccls():
    # NCCL's bus bandwidth = algorithm bandwidth x 2(p-1)/p for a ring
    assert bus_factor("ring", 2) == pytest.approx(1.0)
    assert bus_factor("ring", 8) == pytest.approx(1.75)


def test_size_ranges_pick_algorithm_latency_and_efficiency():
    net = Network("n", alpha=1e-5, rate_bps=8e9, link_efficiency=0.5,
                  ranges=[{"up_to_bytes": 2048, "algorithm": "recursive_doubling", "alpha": 1e-6, "link_efficiency": 1.0},
                          {"up_to_bytes": None, "algorithm": "rabenseifner"}])
    # small: rd at 1 GB/s, alpha 1 us; large: Rabenseifner at 0.5 GB/s, alpha 10 us
    assert net.allreduce_s(1000, 4) == pytest.approx(2 * (1e-6 + 1000 / 1e9))
    assert net.allreduce_s(1e6, 4) == pytest.approx(4 * 1e-5 + 1.5 * 1e6 / 0.5e9)
    faster = net.with_link(rate_bps=16e9)
    assert faster.allreduce_s(1e6, 4) == pytest.approx(4 * 1e-5 + 1.5 * 1e6 / 1e9)
    assert net.scaled(alpha=2).allreduce_s(1000, 4) == pytest.approx(2 * (2e-6 + 1000 / 1e9))


def test_hierarchical_two_levels():
    inner = Network("in", alpha=0.0, beta=1e-10)
    outer = Network("out", alpha=0.0, beta=1e-9)
    h = Hierarchical("h", inner, outer, per_node=4)
    assert h.allreduce_s(N, 4) == pytest.approx(inner.allreduce_s(N, 4))
    # p = 16: reduce-scatter + allgather inside (2 x 3/4 n beta_in), then a ring over 4 nodes of n/4
    # bytes with each of the 4 shares getting a quarter of the node's link (beta x 4)
    expected = 2 * 0.75 * N * 1e-10 + 2 * 0.75 * (N / 4) * 4e-9
    assert h.allreduce_s(N, 16) == pytest.approx(expected)


def test_presets_carry_sources():
    for name, net in NETWORKS.items():
        assert net.source, name
        notes = net.notes
        assert any(k.endswith("alpha") for k in notes) and any(k.endswith("rate_bps") for k in notes), name
    # FDR: 4 lanes x 14.0625 Gbaud x 64/66
    assert NETWORKS["ib-fdr"].rate_bps == pytest.approx(54.545e9, rel=1e-4)


def test_bad_networks_say_which_field():
    with pytest.raises(NetworkError, match="alpha"):
        Network("x", alpha=-1.0, beta=1e-9)
    with pytest.raises(NetworkError, match="unknown algorithm"):
        Network("x", alpha=0.0, beta=1e-9, ranges=[{"up_to_bytes": None, "algorithm": "tree"}])
    with pytest.raises(NetworkError, match="last range"):
        Network("x", alpha=0.0, beta=1e-9, ranges=[{"up_to_bytes": 10, "algorithm": "ring"}])
    with pytest.raises(NetworkError, match="not a network preset"):
        load_network("infiniband-xdr")


def _run(backend, rate_bps, p, times, cpu_per_byte, share, channels):
    """Synthetic calibration data from known constants (what the worker would measure)."""
    sizes = [4096, 1 << 20, 4 << 20, 16 << 20]
    alone = {str(n): {"wall": [times(n)] * 3, "cpu": [1e-4 + cpu_per_byte * n] * 3} for n in sizes}
    big = sizes[-1]
    pair_first = times(big) * (2 if channels == 2 else 1)
    return {"backend": backend, "rate": f"{rate_bps / 1e6:g}mbit", "rate_bps": rate_bps, "world_size": p,
            "alone": alone, "pair": {str(big): [(pair_first, 2 * times(big))] * 3},
            "pipeline": {"nbytes": big, "count": 4, "seconds": 4 * times(big)},
            # compute loses `share` of its core while the reduction runs, CPU-bound at cpu_per_byte
            "busy": {"nbytes": big, "mm_alone_s": 1e-3,
                     "runs": [{"wall": cpu_per_byte * big / share, "mm": round((1 - share) * 1000), "elapsed": 1.0}] * 3},
            "local": {"add_s_per_byte": 1e-10, "div_s_per_byte": 5e-11}}


def test_fit_recovers_known_constants():
    alpha, eff = 2e-4, 0.9
    runs = []
    for rate in (1e8, 1e9):
        def times(n, rate=rate):
            return allreduce_time("ring", n, 2, alpha, 8 / (eff * rate), 1e-10)
        runs.append(_run("gloo", rate, 2, times, 1e-9, 0.25, channels=2))
    net = fit(runs, "gloo")
    assert net.ranges[-1].alpha == pytest.approx(alpha, rel=1e-6)
    assert net.ranges[-1].link_efficiency == pytest.approx(eff, rel=1e-6)
    assert net.cpu_s_per_byte == pytest.approx(1e-9, rel=1e-3)
    assert net.cpu_share == pytest.approx(0.25, rel=1e-3)
    assert net.channels == 2 and net.concurrent_efficiency == {2: pytest.approx(1.0)}
    assert net.scale_on_worker  # gloo divides on the training thread


def test_fit_takes_the_link_from_link_bound_reductions_only():
    """At 10 Gbit/s a 1-16 MiB reduction here is CPU-bound (1 ns/B of work against 0.9 ns/B on the wire):
    its time says nothing about the link, whose constants come from the slower rates alone."""
    alpha, eff, cpu_per_byte = 2e-4, 0.9, 1e-9
    runs = []
    for rate in (1e8, 1e9, 1e10):
        def times(n, rate=rate):
            return max(allreduce_time("ring", n, 2, alpha, 8 / (eff * rate), 1e-10), 1e-4 + cpu_per_byte * n)
        runs.append(_run("gloo", rate, 2, times, cpu_per_byte, 0.25, channels=2))
    net = fit(runs, "gloo")
    assert net.ranges[-1].alpha == pytest.approx(alpha, rel=1e-6)
    assert net.ranges[-1].link_efficiency == pytest.approx(eff, rel=1e-6)
    assert net.notes["link_fit_samples"].startswith("6 of 9 ")  # 1, 4, 16 MiB at 100 Mbit/s and 1 Gbit/s


def test_fit_tells_algorithms_apart_with_several_world_sizes():
    alpha, beta = 1e-4, 8e-9
    runs = [_run("mpi", 1e9, p, lambda n, p=p: allreduce_time("recursive_doubling", n, p, alpha, beta, 1e-10),
                 1e-9, 0.3, channels=1) for p in (2, 3, 4)]
    net = fit(runs, "mpi")
    assert net.ranges[-1].algorithm == "recursive_doubling"
    assert net.channels == 1 and not net.scale_on_worker


def test_yielded_share_follows_the_kernels_weights():
    # equal priorities: the measured share; a training thread at nice N weighs CFS_WEIGHT[N] / 1024 of
    # what it did, so a reduction's thread measured at s (weighing s / (1 - s) of the compute) gets
    # s / (s + (1 - s) * CFS_WEIGHT[N] / 1024)
    assert yielded_share(0.43, 0) == 0.43
    assert yielded_share(0.43, 19) == pytest.approx(0.43 / (0.43 + 0.57 * 15 / 1024))
    assert yielded_share(0.43, 19) == pytest.approx(0.981, abs=1e-3)
    assert yielded_share(0.5, 1) == pytest.approx(1024 / (1024 + 820))  # one nice step: about 1.25x
    assert yielded_share(1.0, 19) == 1.0
    shares = [yielded_share(0.3, n) for n in range(len(CFS_WEIGHT))]
    assert shares == sorted(shares) and shares[0] == 0.3 and shares[-1] < 1.0
    for bad in (-1, 20):
        with pytest.raises(NetworkError, match="compute_nice"):
            yielded_share(0.5, bad)

"""The simulator against hand-worked schedules of toy profiles, and the properties every
schedule must have (asyncsgd/projection/simulate.py, schedules.py).

Toy units: 1000 bytes take 1 ms on the link (alpha = 0, beta = 1 us/byte, P = 2: a
ring allreduce moves n bytes per worker), compute in ms as written, no copies, no
loop overheads. The stop flag's 4-byte reduction costs 4 us per step and is the
only thing that keeps the as-implemented numbers from being round.
"""
from __future__ import annotations

import random

import pytest

from asyncsgd.projection.network import Network
from asyncsgd.projection.profile import Layer, Profile
from asyncsgd.projection.schedules import AS_IMPLEMENTED, IDEAL, StrategySpec, ddp_buckets, layer_buckets, predict

MS = 1e-3
NET = Network("toy", alpha=0.0, beta=1e-6)  # 1000 bytes = 1 ms


def toy(f, b, nbytes, u=None) -> Profile:
    u = u or [0.0] * len(f)
    return Profile(layers=[Layer(f"l{i + 1}", [n], fi * MS, bi * MS, ui * MS)
                           for i, (fi, bi, n, ui) in enumerate(zip(f, b, nbytes, u))], batch_size=1)


THREE = toy([1, 1, 1], [2, 2, 2], [4000, 4000, 4000])  # compute 9 ms, 4 ms of reduction per layer


def period(profile, spec, rules=AS_IMPLEMENTED, net=NET, p=2):
    return predict(profile, net, p, StrategySpec.parse(spec) if isinstance(spec, str) else spec, rules).period_s / MS


# ---------------------------------------------------------------------- hand-worked schedules
def test_nocomm_is_the_compute():
    assert period(THREE, "nocomm") == pytest.approx(9.0)


def test_sync_is_compute_plus_one_allreduce():
    # forward 3 + backward 6, then 12 ms of one fused allreduce
    assert period(THREE, "sync", IDEAL) == pytest.approx(21.0)
    assert period(THREE, "sync") == pytest.approx(21.0, abs=0.01)


def test_sync_unfused_reduces_tensor_by_tensor():
    # three reductions back to back on one channel: the same 12 ms of link
    assert period(THREE, "sync_unfused") == pytest.approx(21.0, abs=0.01)


def test_layerwise_forward_fifo():
    # Gradients ready at 5, 7, 9 ms; one channel, first ready first sent: c3 5-9, c2 9-13,
    # c1 13-17. The next forward's first layer waits for c1 (17); then F1 F2 F3 B3 (c3' at 22,
    # link idle since 17) ... so an iteration starts every 17 ms.
    assert period(THREE, "layerwise") == pytest.approx(17.0, abs=0.01)


def test_layerwise_forward_ideal_is_design_bound():
    # design.md: max_i [ sum_{j>=i}(f+b+u) + max(sum_{j<i}(f+b+u), sum_{j<=i} c) ] = max(13, 14, 15)
    assert period(THREE, "layerwise", IDEAL) == pytest.approx(15.0)


def test_layerwise_step_waits_for_all_after_backward():
    # c3 5-9, c2 9-13, c1 13-17, then the update: 17 ms, ideal too (the link is the bottleneck)
    assert period(THREE, "layerwise_step") == pytest.approx(17.0, abs=0.01)
    assert period(THREE, "layerwise_step", IDEAL) == pytest.approx(17.0)


SMALL_FIRST = toy([1, 1], [1, 1], [1000, 8000])  # layer 1: 1 ms of link, layer 2: 8 ms


def test_priority_changes_the_order_and_the_time():
    # Plain: c2 (released after B2) is on the link 8 ms, c1 queues behind it; F1 waits for
    # both, then F1 F2 B2 (3 ms) with the link idle: 3 + 9 = 12 ms.
    assert period(SMALL_FIRST, "layerwise") == pytest.approx(12.0, abs=0.01)
    # Priority, 1000-byte chunks, credit 1: after B2 one chunk of c2 goes; c1 overtakes the
    # other seven (more urgent than all in flight). F1 then runs while c2's chunks travel,
    # F2 waits for the last of them: F1 starts every 1 (c1) + 1 (F1) + 6 (rest of c2) +
    # F2 B2 B1 (3) = 11 ms -- which is the ideal bound (i=2: 2 + max(2, 9) = 11).
    prio = StrategySpec("layerwise", priority=True, chunk_mb=1000 / 2**20, credit=1)
    assert period(SMALL_FIRST, prio) == pytest.approx(11.0, abs=0.01)
    assert period(SMALL_FIRST, "layerwise", IDEAL) == pytest.approx(11.0)


def test_delayed_hides_all_communication_when_compute_is_longer():
    # 12 ms of reduction per step against 9 ms of compute: K=1 is bound by the link ...
    assert period(THREE, "delayed_k1") == pytest.approx(12.0, abs=0.01)
    # ... and with a third of the bytes (4 ms < 9 ms) every millisecond of it is hidden
    light = toy([1, 1, 1], [2, 2, 2], [1000, 1500, 1500])
    pred = predict(light, NET, 2, StrategySpec.parse("delayed_k1"))
    assert pred.period_s / MS == pytest.approx(9.0, abs=0.01)
    assert pred.comm_wait_s / MS == pytest.approx(0.0, abs=0.01)


def test_ddp_buckets_are_torchs():
    # the CNN of design.md (tensor bytes as torch reports them): with bucket_cap_mb passed (the
    # runner does) torch makes one 25 MiB bucket; left at its default the first is ~1 MiB
    cnn = [Layer("c1", [3456, 128], 0, 0), Layer("c2", [73728, 256], 0, 0), Layer("fc1", [8388608, 2048], 0, 0),
           Layer("fc2", [1048576, 2048], 0, 0), Layer("fc3", [20480, 40], 0, 0)]
    assert [b for b, _ in ddp_buckets(cnn, 25.0, None)] == [9539368]
    assert ddp_buckets(cnn, 25.0, 1.0) == [(1071144, 3), (8468224, 0)]


def test_ddp_overlaps_its_first_bucket_with_the_rest_of_backward():
    # two layers of 4 ms of link each, bucket cap 4000 bytes: l2's bucket starts after B2 (t=4)
    # and runs 4-8 while B1 runs 4-6; l1's 8-12; then the update: 12 ms, vs sync 4 + 8 = 12 + ...
    two = toy([1, 1], [2, 2], [4000, 4000])
    ddp = StrategySpec("ddp", bucket_mb=4000 / 2**20)
    assert period(two, ddp) == pytest.approx(12.0, abs=0.01)
    assert period(two, "sync") == pytest.approx(14.0, abs=0.01)


# ---------------------------------------------------------------------- properties
def random_profile(rng: random.Random, layers: int) -> Profile:
    return toy([rng.uniform(0.2, 3) for _ in range(layers)], [rng.uniform(0.2, 5) for _ in range(layers)],
               [rng.choice([500, 2000, 8000, 30000]) for _ in range(layers)],
               [rng.uniform(0, 0.5) for _ in range(layers)])


NETS = [NET, Network("gloo-like", alpha=1e-4, beta=2e-7, channels=2, concurrent_efficiency={2: 0.8},
                     cpu_s_per_byte=2e-8, cpu_share=0.3, scale_on_worker=True)]
STRATEGIES = ["sync", "layerwise", "layerwise_step", "layerwise_priority", "delayed_k1", "delayed_k2", "ddp"]


@pytest.mark.parametrize("seed", range(6))
def test_no_strategy_beats_its_ideal(seed):
    rng = random.Random(seed)
    prof = random_profile(rng, rng.randint(2, 5))
    prof.memory = {"copy_s_per_byte": 1e-9, "scale_s_per_byte": 5e-10}
    for net in NETS:
        for s in STRATEGIES:
            spec = StrategySpec.parse(s)
            if s == "layerwise_priority":
                spec = StrategySpec("layerwise", priority=True, chunk_mb=1500 / 2**20, credit=2)
            if s == "ddp":
                spec = StrategySpec("ddp", bucket_mb=3000 / 2**20)
            assert period(prof, spec, AS_IMPLEMENTED, net) >= period(prof, spec, IDEAL, net) * (1 - 1e-9), (s, net.name)


def design_bound(prof: Profile, c) -> float:
    fbu = [l.forward_s + l.backward_s + l.update_s for l in prof.layers]
    n = len(fbu)
    return max(sum(fbu[i:]) + max(sum(fbu[:i]), sum(c[:i + 1])) for i in range(n))


@pytest.mark.parametrize("seed", range(6))
def test_ideal_layerwise_forward_is_the_design_bound(seed):
    prof = random_profile(random.Random(seed), 4)
    c = [NET.allreduce_s(l.nbytes, 2) for l in prof.layers]
    assert predict(prof, NET, 2, StrategySpec("layerwise"), IDEAL).period_s == pytest.approx(design_bound(prof, c))


@pytest.mark.parametrize("seed", range(4))
def test_delayed_with_large_k_tends_to_max_of_compute_and_communication(seed):
    prof = random_profile(random.Random(seed), 3)
    compute = sum(l.forward_s + l.backward_s for l in prof.layers) + prof.update_all_s
    comm = NET.allreduce_s(prof.nbytes, 2)
    t = predict(prof, NET, 2, StrategySpec("delayed", k=8), IDEAL).period_s
    assert t == pytest.approx(max(compute, comm), rel=1e-6)


@pytest.mark.parametrize("p", [2, 5, 64])
def test_sync_equals_compute_plus_one_allreduce(p):
    prof = random_profile(random.Random(p), 4)
    compute = sum(l.forward_s + l.backward_s for l in prof.layers) + prof.update_all_s
    net = Network("mpich-like", alpha=2e-5, beta=1e-8, gamma=1e-9,
                  ranges=[{"up_to_bytes": 2048, "algorithm": "recursive_doubling"},
                          {"up_to_bytes": None, "algorithm": "rabenseifner"}])
    assert predict(prof, net, p, StrategySpec("sync"), IDEAL).period_s == pytest.approx(
        compute + net.allreduce_s(prof.nbytes, p))


def test_cpu_contention_slows_compute_by_the_measured_share():
    # a reduction needing more CPU than it may take while compute runs: compute loses cpu_share
    # of its core for as long as the reduction runs, and the reduction is CPU-bound meanwhile
    prof = toy([10, 10], [10, 10], [4000, 4000])
    net = Network("cpu", alpha=0.0, beta=1e-6, cpu_s_per_byte=1e-6, cpu_share=0.25)
    free = predict(prof, net.scaled(), 2, StrategySpec("delayed", k=1), IDEAL).period_s
    busy = predict(prof, net, 2, StrategySpec("delayed", k=1)).period_s
    # 8 ms of CPU work for the reduction at 0.25 core: 32 ms of compute at 0.75 speed = 8 ms lost
    assert free / MS == pytest.approx(40.0)
    assert busy / MS == pytest.approx(48.0, abs=0.05)


# ---------------------------------------------------------------------- the rules follow the code
def test_bucketing_follows_layerwise():
    layers = [Layer(f"l{i}", [n], 0, 0) for i, n in enumerate([10, 2**20, 300, 300, 2**21])]
    assert layer_buckets(layers, 0.0) == [[4], [3], [2], [1], [0]]
    # backward order, a new bucket once the current one holds >= 1 MiB
    assert layer_buckets(layers, 1.0) == [[4], [1, 2, 3], [0]]


def test_polling_takes_cpu_from_compute_but_does_not_slow_the_reduction():
    # MPICH spins through a blocking allreduce: its thread soaks up the share it gets while compute
    # runs (here a quarter of the core) but needs it for no progress. delayed K=1: the 8 ms reduction
    # runs beside 40 ms of compute, which loses 2 ms of its 8.
    prof = toy([10, 10], [10, 10], [4000, 4000])
    net = Network("spin", alpha=0.0, beta=1e-6, cpu_poll=1.0, cpu_share=0.25)
    assert period(prof, StrategySpec("delayed", k=1), AS_IMPLEMENTED, net) == pytest.approx(42.0, abs=0.05)

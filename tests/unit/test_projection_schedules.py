"""The simulator against hand-worked schedules of toy profiles, and the properties every
schedule must have (asyncsgd/projection/simulate.py, schedules.py).

Toy units: 1000 bytes take 1 ms on the link (alpha = 0, beta = 1 us/byte, P = 2: a
ring allreduce moves n bytes per worker), compute in ms as written, no copies, no
loop overheads. The stop flag travels inside a reduction (4 bytes: 4 us; layerwise's
flags: 8 bytes, 8 us) and is the only thing that keeps the as-implemented numbers
from being round.
"""
from __future__ import annotations

import math
import random

import pytest

from asyncsgd.projection.network import Network
from asyncsgd.projection.profile import Layer, Profile
from asyncsgd.projection.schedules import (AS_IMPLEMENTED, IDEAL, Layerwise, Plan, ScheduleError, StrategySpec,
                                           ddp_buckets, layer_buckets, layerwise_bound, layerwise_bound_for,
                                           overlap_slowdowns, overlap_window,
                                           layerwise_plan, predict, ruleset_for, split_layers)
from asyncsgd.projection.simulate import simulate

MS = 1e-3
NET = Network("toy", alpha=0.0, beta=1e-6)  # 1000 bytes = 1 ms
# MPI's communication thread with backend.max_inflight=1: one reduction per channel, channel 0 first
MPI1 = Network("toy-mpi", alpha=0.0, beta=1e-6, channels=1, channel_priority=True)


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


SMALL_FIRST = toy([1, 1], [0.5, 1], [1000, 8000])  # layer 1: 1 ms of link, layer 2: 8 ms


def test_priority_changes_the_order_and_the_time():
    # Let x be when F2 starts. B2 ends at x+2 (l2 ready), B1 at x+2.5 (l1 ready, 1008 bytes with the
    # flags); the next iteration starts at x+2.5. Plain, one reduction at a time: l2 x+2..x+10, l1
    # queues behind it until x+11.008; F1 x+11.008..x+12.008, then F2: 12.008 ms per iteration.
    assert period(SMALL_FIRST, "layerwise", net=MPI1) == pytest.approx(12.008, abs=1e-6)
    # Priority, 1000-byte chunks: l1 is lane 0 (urgent_share 0.1 of 9000 bytes: at least the first),
    # alone on channel 0; l2 goes in 8 chunks on channel 1. At x+2.5 chunk 1 has 500 bytes left and
    # l1 starts beside it (channel 0 is idle): both at half rate until x+3.5; then channel 1 starts
    # nothing while channel 0 works (MPI's thread), l1's last 508 bytes end at x+4.008. F1 runs
    # x+4.008..x+5.008 while chunks 2-8 travel (to x+11.008), F2 waits for them: 11.008 ms.
    prio = StrategySpec("layerwise", priority=True, chunk_mb=1000 / 2**20)
    assert period(SMALL_FIRST, prio, net=MPI1) == pytest.approx(11.008, abs=1e-6)
    # which is the ideal bound (i=2: f2+b2 + max(f1+b1, c1+c2) = 2 + max(1.5, 9) = 11) but for the flags
    assert period(SMALL_FIRST, "layerwise", IDEAL) == pytest.approx(11.0)
    assert layerwise_bound_for(SMALL_FIRST, NET, 2) / MS == pytest.approx(11.0)
    # gloo (no channel priority): chunk 2 starts beside l1 at x+3.5, so l1 ends later (x+4.516),
    # still before F1 needs it... the link never idles, so the period is the same
    result = predict(SMALL_FIRST, NET, 2, prio).result
    l1 = [r for r in result.reductions if r.label == "l1" and r.grad_step == 8][0]
    assert (l1.done_at - l1.started_at) / MS == pytest.approx(2.016, abs=1e-6)
    assert period(SMALL_FIRST, prio) == pytest.approx(11.008, abs=1e-6)


def test_lane_one_is_reordered_earliest_deadline_first_after_calibration():
    # l1 (500 B) is lane 0; lane 1 in ready order: l3 (4000 B, four 1000-byte chunks), then l2 (1000 B).
    # In steps 1-4, l2 is ready 0.5 ms after l3, when no chunk of l3 has arrived: carried 0. EDF with
    # 2 chunks already handed to the backend (ahead = 2 x 1000 B) puts l2 (needed by F2) ahead of
    # l3's last two chunks (needed by F3) from step 5 on.
    prof = toy([1, 1, 1], [1, 0.5, 0.5], [500, 1000, 4000])
    spec = StrategySpec("layerwise", priority=True, chunk_mb=1000 / 2**20)
    plan = Plan(prof, NET, 2)
    worker = Layerwise(plan, spec)
    assert worker.lanes == [[2], [0, 1]]  # buckets in ready order: 0 = l3, 1 = l2, 2 = l1
    assert [[c.elements for c in b.chunks] for b in worker.specs] == [[250] * 4, [250], [125 + 2]]
    result = simulate(plan.machine(), worker.program(12), 8)
    assert worker.scheduler.real.lanes == [[(2, 0)], [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3)]]
    # before (steps 2-4): l2 after all of l3, F2 waits for it: 8.008 ms; after: 7.008 (B3 ends at y;
    # l3[1] y..y+1, l3[2] from y+1, l1 beside it from y+1.5 (ends y+2.516), l2 y+2.516..y+3.508, l3's
    # last two to y+5.508; F1 y+2.516, F2 y+3.516, F3 waits until y+5.508, B3 ends y+7.008)
    d = [x / MS for x in result.durations]
    assert d[2:5] == pytest.approx([8.008] * 3, abs=1e-6)
    assert d[6:] == pytest.approx([7.008] * 6, abs=1e-6)


def test_the_last_used_bucket_goes_last_as_the_code_sends_it():
    # l1 is lane 0; lane 1 in ready order: l4, l3, l2 (one 1000-byte chunk each; the next forward uses
    # l2, l3, l4). strategy.last_used_last: l4 is ready first and keeps its place; l3, used last of the
    # others, goes after l2 from the calibration on (schedule.bulk_lane_order, as layerwise._calibrate)
    prof = toy([1, 1, 1, 1], [1, 0.5, 0.5, 0.5], [500, 1000, 1000, 1000])
    spec = StrategySpec.from_config({"name": "layerwise", "priority": True, "chunk_mb": 1000 / 2**20,
                                     "last_used_last": True})
    assert spec.last_used_last and spec.label == "layerwise(priority+last)"
    assert ruleset_for({"strategy": {"name": "layerwise", "priority": True, "last_used_last": True}}) == AS_IMPLEMENTED
    plan = Plan(prof, NET, 2)
    worker = Layerwise(plan, spec)
    assert worker.lanes == [[3], [0, 1, 2]]  # buckets in ready order: 0 = l4, 1 = l3, 2 = l2, 3 = l1
    simulate(plan.machine(), worker.program(12), 8)
    assert worker.scheduler.real.lanes[1][-1] == (1, 0)  # l3 last
    assert sorted(worker.scheduler.real.lanes[1]) == [(0, 0), (1, 0), (2, 0)]
    plain = Layerwise(Plan(prof, NET, 2), StrategySpec("layerwise", priority=True, chunk_mb=1000 / 2**20))
    simulate(plain.plan.machine(), plain.program(12), 8)
    assert plain.scheduler.real.lanes[1][-1] != (1, 0)


def test_updates_go_chunk_by_chunk():
    # priority: every chunk is waited for and updated on its own, in the pre-hook of its layer
    prof = toy([1, 1], [1, 1], [1000, 3000], u=[0.4, 0.3])
    spec = StrategySpec("layerwise", priority=True, chunk_mb=1000 / 2**20)
    result = predict(prof, NET, 2, spec, steps=10, warmup=5).result
    updates = [s for s in result.spans if s.args.get("step") == 7 and s.name.startswith("update")]
    assert [s.name for s in updates] == ["update l1", "update l2 [1/3]", "update l2 [2/3]", "update l2 [3/3]"]
    assert [(s.end - s.start) / MS for s in updates] == pytest.approx([0.4, 0.1, 0.1, 0.1])


def test_layerwise_plan_follows_layerwise_build():
    # a bucket's gradients of at most one chunk share its flat buffer (+2 flags in the bucket the next
    # forward needs first); larger ones are reduced in place in chunks; without priority: no chunks
    layers = [Layer("a", [4000, 40], 0, 0), Layer("b", [12000, 400], 0, 0)]
    buckets, use_order, lanes = layerwise_plan(layers, StrategySpec("layerwise", priority=True,
                                                                    chunk_mb=5000 / 2**20, urgent_share=0.5))
    assert use_order == [1, 0] and lanes == [[1], [0]]
    assert [(b.label, b.copied, [c.elements for c in b.chunks]) for b in buckets] == [
        ("b", 400, [100, 1250, 1250, 500]), ("a", 4040, [1010 + 2])]
    plain, _, lanes = layerwise_plan(layers, StrategySpec("layerwise"))
    assert lanes == [[0, 1]] and [[c.elements for c in b.chunks] for b in plain] == [[3100], [1010 + 2]]


def test_split_cuts_a_linear_layer_into_row_blocks_as_split_py_does():
    # Linear 10 rows x 100 inputs (396 + 4 bytes a row); at most 1300 bytes of weight a block: 3 rows
    # fit, so ceil(10 / 3) = 4 equal blocks of ceil(10 / 4) = 3 rows, the last one 1 row
    layers = [Layer("conv", [5000, 40], 1 * MS, 1 * MS, 0.1 * MS, "Conv2d"),
              Layer("fc", [3960, 40], 10 * MS, 20 * MS, 1 * MS, "Linear")]
    out = split_layers(layers, 1300 / 2**20)
    assert [l.name for l in out] == ["conv", "fc.blocks.0", "fc.blocks.1", "fc.blocks.2", "fc.blocks.3"]
    assert out[0] is layers[0]  # not a Linear: kept whole, whatever its size
    assert [l.tensors for l in out[1:]] == [[1188, 12]] * 3 + [[396, 4]]
    # forward, backward and update in proportion to the rows
    assert [l.forward_s / MS for l in out[1:]] == pytest.approx([3, 3, 3, 1])
    assert [l.backward_s / MS for l in out[1:]] == pytest.approx([6, 6, 6, 2])
    assert [l.update_s / MS for l in out[1:]] == pytest.approx([0.3, 0.3, 0.3, 0.1])
    assert split_layers(layers, 0.0) == layers and split_layers(layers, 1.0) == layers  # off; nothing above 1 MiB
    with pytest.raises(ScheduleError, match="bias"):
        split_layers([Layer("fc", [3960], 0, 0, 0, "Linear")], 1300 / 2**20)
    with pytest.raises(ScheduleError, match="no type"):
        split_layers([Layer("fc", [3960, 40], 0, 0)], 1300 / 2**20)


def test_split_lets_the_big_layer_overlap():
    # conv (f 1, b 1, 1 ms of link) and a Linear of 10 rows (f 2, b 4, 4 ms), 792 bytes a block of 2 rows:
    # five blocks of f 0.4, b 0.8, 0.8 ms of link each
    prof = Profile(layers=[Layer("conv", [1000], 1 * MS, 1 * MS, 0.0, "Conv2d"),
                           Layer("fc", [3960, 40], 2 * MS, 4 * MS, 0.0, "Linear")], batch_size=1)
    whole, split = StrategySpec("layerwise"), StrategySpec("layerwise", split_mb=792 / 2**20)
    assert split.label == "layerwise(forward+split)"
    # bound: whole, the fc term 6 + max(2, 1 + 4) = 11; split, the conv term 8 + 1 = 9 (each block's term is 8)
    assert period(prof, whole, IDEAL) == pytest.approx(11.0)
    assert period(prof, split, IDEAL) == pytest.approx(9.0)
    assert layerwise_bound_for(prof, NET, 2, split_mb=792 / 2**20) / MS == pytest.approx(9.0)
    # as implemented, one channel, first ready first sent: whole, fc 7-11 then conv (+8 bytes of flags)
    # 11-12.008, which the next forward waits for; split, the blocks 3.8-7.8 one after the other, conv
    # 8-9.008, and the next forward waits only for conv
    assert period(prof, whole) == pytest.approx(12.008, abs=1e-3)
    assert period(prof, split) == pytest.approx(9.008, abs=1e-3)


def test_one_bucket_and_uncut_chunks():
    # bucket_mb=inf: every layer in one bucket; chunk_mb=inf: its gradients not cut (one buffer, + 2 flags)
    layers = [Layer("a", [4000, 40], 0, 0), Layer("b", [12000, 400], 0, 0)]
    assert layer_buckets(layers, math.inf) == [[0, 1]]
    spec = StrategySpec.from_config({"name": "layerwise", "bucket_mb": math.inf, "chunk_mb": math.inf,
                                     "priority": True})
    buckets, use_order, lanes = layerwise_plan(layers, spec)
    assert [(b.layers, [c.elements for c in b.chunks]) for b in buckets] == [([0, 1], [4110 + 2])]
    assert use_order == [0] and lanes == [[0]]


def test_rules_for_todays_strategy_keys():
    layerwise = {"name": "layerwise", "wait_at": "forward", "bucket_mb": 4.0, "priority": True, "chunk_mb": 1.0,
                 "urgent_share": 0.1, "split_mb": 1.0}
    assert ruleset_for({"strategy": layerwise}) == AS_IMPLEMENTED
    assert StrategySpec.from_config(layerwise).split_mb == 1.0
    delayed = {"name": "delayed", "k": 1, "drain": True, "compensation": "none", "dc_lambda": 2.0,
               "dc_adaptive": True, "dc_beta": 0.95}
    # none, momentum and lr change no work of a step: the plain delayed schedule
    for rules in ("none", "momentum", "lr", "lr+momentum"):
        assert ruleset_for({"strategy": {**delayed, "compensation": rules}, "train": {"momentum": 0.9}}) == AS_IMPLEMENTED
    # dc and predict add passes over copies of the weights that no profile measures
    for rules in ("dc", "predict", "lr+dc"):
        with pytest.raises(ScheduleError, match="no profile measures"):
            ruleset_for({"strategy": {**delayed, "compensation": rules}})
    # momentum at a k whose implicit momentum (k/(k+1) = 0.9) takes all of it: SGD without momentum
    with pytest.raises(ScheduleError, match="no momentum"):
        ruleset_for({"strategy": {**delayed, "k": 9, "compensation": "momentum"}, "train": {"momentum": 0.9}})
    with pytest.raises(ScheduleError, match="no rules for"):
        ruleset_for({"strategy": {**delayed, "something_new": 1}})
    # a training thread that yields the CPU is simulated (the reductions' share of a core), not refused
    for nice in (0, 19):
        assert ruleset_for({"strategy": delayed, "backend": {"name": "gloo", "compute_nice": nice}}) == AS_IMPLEMENTED


# ---------------------------------------------------------------------- the bound of issue 12
def test_layerwise_bound_by_hand():
    # f, b, u, c in ms; work f+b+u = 3.5, 5.5, 2
    f, b, u, c = [1, 2, 1], [2, 3, 1], [0.5, 0.5, 0], [1, 5, 2]
    # i=1: 11 + max(0, 1) = 12; i=2: 7.5 + max(3.5, 6) = 13.5; i=3: 2 + max(9, 8) = 11
    assert layerwise_bound(f, b, u, c) == pytest.approx(13.5)
    # with 1 ms of data before the first forward and 0.5 of loss after the last: 12.5, 14, 12.5
    assert layerwise_bound(f, b, u, c, before=1, after=0.5) == pytest.approx(14.0)
    # a fast link: the compute (i=1 term, 11 + c1)
    assert layerwise_bound(f, b, u, [0.1, 0.1, 0.1]) == pytest.approx(11.1)
    with pytest.raises(ValueError):
        layerwise_bound(f, b, u, c[:2])


def _started_together(compute, link, s_c, s_r):
    """Compute and reductions started at once, each slowed while the other runs: when the last ends."""
    if compute * s_c <= link * s_r:  # the compute ends first, the reduction finishes alone
        t = compute * s_c
        return t + (link - t / s_r)
    t = link * s_r  # the reduction ends first
    return t + (compute - t / s_c)


def test_overlap_window_without_a_cost_is_the_longer_of_the_two():
    assert overlap_window(30, 80) == pytest.approx(80)
    assert overlap_window(90, 80) == pytest.approx(90)
    assert overlap_window(0, 80) == pytest.approx(80) and overlap_window(30, 0) == pytest.approx(30)


@pytest.mark.parametrize("compute, link", [(36, 83), (33, 82), (80, 30), (50, 50)])
@pytest.mark.parametrize("s_c, s_r", [(1.0, 1.0), (1.17, 1.10), (1.3, 1.05), (1.6, 1.5)])
def test_overlap_window_is_the_best_of_overlapping_all_or_nothing(compute, link, s_c, s_r):
    # the window is linear in the overlapped compute, so its least value is at one end: everything
    # that can be overlapped (the two started together) or nothing (one after the other)
    expected = min(_started_together(compute, link, s_c, s_r), compute + link)
    assert overlap_window(compute, link, s_c, s_r) == pytest.approx(expected)
    assert overlap_window(compute, link, s_c, s_r) >= max(compute, link) - 1e-9


def test_overlap_window_with_the_cost_measured_on_gloo():
    # docs/performance.md, scripts/bench_reduction_cpu.py on gloo at 1 Gbit/s (ms): reduce alone 93.0,
    # overlapped 101.0; compute alone 78.3, overlapped 91.8
    s_c, s_r = overlap_slowdowns(93.0, 101.0, 78.3, 91.8)
    assert s_c == pytest.approx(91.8 / 78.3) and s_r == pytest.approx(91.8 / (93.0 - 9.2))
    # 36 ms of compute beside 83 ms of link: 1.17 x 36 = 42.2 ms together, in which the reduction
    # does 42.2 / 1.095 = 38.5 ms of its work; the other 44.5 alone: 86.7 ms, not 83
    assert overlap_window(36, 83, s_c, s_r) == pytest.approx(36 * s_c + 83 - 36 * s_c / s_r)
    with pytest.raises(ValueError):
        overlap_slowdowns(93.0, 101.0, 78.3, 120.0)  # the compute outlived the reduction
    with pytest.raises(ValueError):
        overlap_window(36, 83, 0.9, 1.0)
    for bad in ((36, float("nan")), (float("nan"), 83)):
        with pytest.raises(ValueError):
            overlap_window(*bad, 1.1, 1.1)
    with pytest.raises(ValueError):
        overlap_slowdowns(83.0, 88.0, 33.0, float("nan"))


def test_layerwise_bound_with_the_cost_of_overlap():
    f, b, u, c = [1, 2, 1], [2, 3, 1], [0.5, 0.5, 0], [1, 5, 2]
    assert layerwise_bound(f, b, u, c, compute_slowdown=1.0, reduction_slowdown=1.0) == pytest.approx(13.5)
    # i=2: 7.5 + window(3.5 of compute, 6 of link); s_c = 1.2, s_r = 1.1: together 4.2 ms, in which
    # the link does 4.2 / 1.1 = 3.818 ms, then 2.182 alone: 6.382; i=3: 2 + window(9, 8) = 2 + 10.467
    s_c, s_r = 1.2, 1.1
    i2 = 7.5 + 3.5 * s_c + 6 - 3.5 * s_c / s_r
    i3 = 2 + 8 * s_r + 9 - 8 * s_r / s_c  # the link ends first here: 8.8 ms together, the compute's rest alone
    assert layerwise_bound(f, b, u, c, compute_slowdown=s_c, reduction_slowdown=s_r) == pytest.approx(max(i2, i3))
    assert max(i2, i3) > 13.5
    # a cost that makes overlapping slower than not: the bound is the serial one, never above it
    serial = max(sum(f[i:]) + sum(b[i:]) + sum(u[i:]) + sum(f[:i]) + sum(b[:i]) + sum(u[:i]) + sum(c[:i + 1])
                 for i in range(3))
    assert layerwise_bound(f, b, u, c, compute_slowdown=3.0, reduction_slowdown=3.0) == pytest.approx(serial)


def test_layerwise_bound_of_a_profile():
    prof = toy([1, 2, 1], [2, 3, 1], [1000, 5000, 2000], u=[0.5, 0.5, 0])
    prof.step = {"data_s": 1 * MS, "loss_s": 0.5 * MS, "zero_grad_s": 9 * MS}  # layerwise drops grads: no zeroing
    assert layerwise_bound_for(prof, NET, 2) / MS == pytest.approx(14.0)


def test_delayed_hides_all_communication_when_compute_is_longer():
    # 12 ms of reduction per step against 9 ms of compute: K=1 is bound by the link ...
    assert period(THREE, "delayed_k1") == pytest.approx(12.0, abs=0.01)
    # ... and with a third of the bytes (4 ms < 9 ms) every millisecond of it is hidden
    light = toy([1, 1, 1], [2, 2, 2], [1000, 1500, 1500])
    pred = predict(light, NET, 2, StrategySpec.parse("delayed_k1"))
    assert pred.period_s / MS == pytest.approx(9.0, abs=0.01)
    assert pred.comm_wait_s / MS == pytest.approx(0.0, abs=0.01)


def test_delayed_puts_one_reduction_on_the_link_at_a_time():
    # delayed.py waits for the reductions in flight before starting a step's own: with the link slower
    # than the compute (12 ms against 9), every step takes its reduction's 12 ms, at K=1 and K=2, on a
    # network that would run two side by side (gloo's: two reductions at once)
    two_at_once = Network("toy-gloo", alpha=0.0, beta=1e-6, channels=2)
    for k in (1, 2):
        pred = predict(THREE, two_at_once, 2, StrategySpec("delayed", k=k), steps=24, warmup=8)
        assert pred.iter_s / MS == pytest.approx(12.0, abs=0.05)
        assert pred.mean_s / MS == pytest.approx(12.0, abs=0.05)
        link = sorted((e["ts"], e["ts"] + e["dur"]) for e in pred.trace
                      if e.get("ph") == "X" and e.get("name", "").startswith("allreduce step"))
        assert len(link) >= 10
        assert all(start >= end - 1e-6 for (_, end), (start, _) in zip(link, link[1:]))


def test_ddp_buckets_are_torchs():
    # the CNN of design.md (tensor bytes as torch reports them): with bucket_cap_mb passed torch makes
    # one 25 MiB bucket; left at its default (the runner's strategy.bucket_mb=null) the first is ~1 MiB
    cnn = [Layer("c1", [3456, 128], 0, 0), Layer("c2", [73728, 256], 0, 0), Layer("fc1", [8388608, 2048], 0, 0),
           Layer("fc2", [1048576, 2048], 0, 0), Layer("fc3", [20480, 40], 0, 0)]
    assert [b for b, _ in ddp_buckets(cnn, 25.0, None)] == [9539368]
    assert ddp_buckets(cnn, 25.0, 1.0) == [(1071144, 3), (8468224, 0)]
    assert StrategySpec.from_config({"name": "ddp", "bucket_mb": None}) == StrategySpec.parse("ddp")
    assert StrategySpec.parse("ddp").first_bucket_mb == 1.0
    assert StrategySpec.from_config({"name": "ddp", "bucket_mb": 4}) == StrategySpec("ddp", bucket_mb=4.0)


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


NETS = [NET, MPI1, Network("gloo-like", alpha=1e-4, beta=2e-7, channels=2, concurrent_efficiency={2: 0.8},
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
                spec = StrategySpec("layerwise", priority=True, chunk_mb=1500 / 2**20, urgent_share=0.3)
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


def test_delayed_reduces_the_gradient_in_place_and_copies_it_back_once():
    # delayed.py reduces the buffer backward filled (no copy into a buffer first) and copies the sum
    # back into the gradients scaled by 1/P: one copy per step on the critical path, not two
    prof = toy([10, 10], [10, 10], [4000, 4000])
    copying = toy([10, 10], [10, 10], [4000, 4000])
    copying.memory["copy_s_per_byte"] = 1 * MS / prof.nbytes  # 1 ms to copy the whole gradient
    fast = Network("fast", alpha=0.0, beta=1e-12)
    extra = period(copying, "delayed(k=1)", AS_IMPLEMENTED, fast) - period(prof, "delayed(k=1)", AS_IMPLEMENTED, fast)
    assert extra == pytest.approx(1.0, abs=0.01)


def test_polling_takes_cpu_from_compute_but_does_not_slow_the_reduction():
    # MPICH spins through a blocking allreduce: its thread soaks up the share it gets while compute
    # runs (here a quarter of the core) but needs it for no progress. delayed K=1: the 8 ms reduction
    # runs beside 40 ms of compute, which loses 2 ms of its 8.
    prof = toy([10, 10], [10, 10], [4000, 4000])
    net = Network("spin", alpha=0.0, beta=1e-6, cpu_poll=1.0, cpu_share=0.25)
    assert period(prof, StrategySpec("delayed", k=1), AS_IMPLEMENTED, net) == pytest.approx(42.0, abs=0.05)


def convnet():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def real_and_modelled_plan(cfg, comm):
    """The real strategy's buckets (label, chunk bytes) and lanes after its first step on ``convnet``
    (one gloo process), and the model's from the unsplit model's layers and bytes."""
    import torch
    import torch.nn.functional as F

    from asyncsgd.metrics import PhaseTimer
    from asyncsgd.projection.measure import _layers
    from asyncsgd.strategies import make_strategy

    layers = [Layer(name, [p.numel() * p.element_size() for p in ps], 0, 0, 0, type(m).__name__)
              for name, m, ps in _layers(convnet())]
    model = convnet()
    strategy = make_strategy(cfg, comm, PhaseTimer())
    net = strategy.attach(model, lambda ps: torch.optim.SGD(ps, lr=0.1))
    F.cross_entropy(net(torch.randn(2, 3, 32, 32)), torch.randint(10, (2,))).backward()
    strategy.synchronize()
    strategy.close()
    real = ([(b.label, strategy._chunk_sizes(b)) for b in strategy.buckets], strategy.lanes)
    spec = StrategySpec("layerwise", priority=cfg.priority, chunk_mb=cfg.chunk_mb, urgent_share=cfg.urgent_share,
                        split_mb=cfg.split_mb)
    buckets, _, lanes = layerwise_plan(split_layers(layers, spec.split_mb), spec)
    return real, ([(b.label, [c.elements * 4 for c in b.chunks]) for b in buckets], lanes)


def test_layerwise_plan_is_what_the_strategy_builds(comm):
    # the real strategy's first step on a small convnet against the model's plan from the same
    # layers' bytes: the same buckets, chunk sizes (flags included) and lanes
    from asyncsgd.config import LayerwiseConfig

    seen = []
    for cfg in (LayerwiseConfig(priority=True, chunk_mb=1.0, urgent_share=0.1), LayerwiseConfig()):
        real, modelled = real_and_modelled_plan(cfg, comm)
        assert modelled == real
        seen.append(real)
    # priority: the big layer's bias in the buffer, its weight in place in 1 MiB chunks; conv first on lane 0
    assert seen[0] == ([("5", [4040]), ("3", [400, 2**20, 2**20, 2880000 - 2 * 2**20]), ("0", [896 + 8])],
                       [[2], [0, 1]])
    assert seen[1] == ([("5", [4040]), ("3", [2880400]), ("0", [896 + 8])], [[0, 1, 2]])  # one buffer each


def test_split_plan_is_what_the_strategy_builds(comm):
    # split_mb=1: the 2.75 MiB Linear (100 rows of 28800 bytes; 36 rows fit in 1 MiB) becomes
    # ceil(100 / 36) = 3 blocks of 34, 34 and 32 rows, backward finishing the last block first
    from asyncsgd.config import LayerwiseConfig

    real, modelled = real_and_modelled_plan(LayerwiseConfig(split_mb=1.0), comm)
    assert modelled == real
    assert real == ([("5", [4040]), ("3.blocks.2", [32 * 28804]), ("3.blocks.1", [34 * 28804]),
                     ("3.blocks.0", [34 * 28804]), ("0", [896 + 8])], [[0, 1, 2, 3, 4]])

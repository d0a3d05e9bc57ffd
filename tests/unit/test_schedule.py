"""The reduction scheduler's decisions: lanes and their order, with no backend at all.

Every rank must start the same reductions in the same order on every channel,
whatever the timing and whatever order backward's hooks happen to fire in, so
the launch sequence per lane is a pure function of the plan.
"""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from asyncsgd.strategies.schedule import (Chunk, Job, ReductionScheduler, bulk_lane_order, chunk_items, edf_order,
                                         last_used, make_plan)


class Recorder:
    """Stands in for the backend: records every start (per lane) and every wait, in order."""

    def __init__(self):
        self.log = []

    def start(self, tensor, label, step, lane):
        self.log.append(("start", lane, label, step))
        return label

    def wait(self, handle, label):
        self.log.append(("wait", label))

    def lane(self, lane):
        return [entry[2] for entry in self.log if entry[0] == "start" and entry[1] == lane]


def items(lanes, chunks=None):
    """Bucket-level lanes as chunk items (one chunk per bucket unless ``chunks`` says otherwise)."""
    return [chunk_items(lane, {b: (chunks or {}).get(b, 1) for b in lane}) for lane in lanes]


def job(bucket: int, step: int = 0, chunks: int = 1) -> Job:
    j = Job(bucket, f"b{bucket}", step)
    j.chunks = [Chunk(torch.zeros(2), f"b{bucket}" if chunks == 1 else f"b{bucket} [{c + 1}/{chunks}]")
                for c in range(chunks)]
    return j


# the CNN's shape: buckets in forward order conv1 (3.5 KB), conv2 (74 KB), fc1 (8 MB), fc2 (1 MB), fc3 (20 KB)
SIZES = [3_500, 74_000, 8_000_000, 1_000_000, 20_000]
READY = [4, 3, 2, 1, 0]  # backward finishes the last layer first
USE = [0, 1, 2, 3, 4]


def test_without_priority_one_lane_in_ready_order():
    assert make_plan(SIZES, READY, USE, priority=False, urgent_share=0.1) == [[4, 3, 2, 1, 0]]


def test_priority_puts_the_first_used_layers_within_the_share_on_their_own_lane():
    # 10% of 9.1 MB holds conv1 and conv2, not fc1; the rest go first ready, first sent
    assert make_plan(SIZES, READY, USE, priority=True, urgent_share=0.1) == [[0, 1], [4, 3, 2]]
    # the first used bucket is urgent even when alone it is over the share
    assert make_plan([10, 1, 1], [2, 1, 0], [0, 1, 2], True, 0.01) == [[0], [2, 1]]
    # no share: one lane (chunking and chunk-wise updates still apply)
    assert make_plan(SIZES, READY, USE, True, 0.0) == [[4, 3, 2, 1, 0]]


def test_bad_orders_are_refused():
    with pytest.raises(ValueError, match="every bucket once"):
        make_plan([1, 1], [0], [0, 1], False, 0.1)


def test_a_job_starts_only_after_every_job_before_it_in_its_lane():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, items([[0, 1], [4, 3, 2]], {3: 2}))
    s.submit(job(4))
    s.submit(job(3, chunks=2))
    s.submit(job(1))  # conv2 is ready before conv1, but conv1 goes first on its lane
    assert rec.lane(1) == ["allreduce b4", "allreduce b3 [1/2]", "allreduce b3 [2/2]"]
    assert rec.lane(0) == []
    s.submit(job(2))
    s.submit(job(0))
    assert rec.lane(0) == ["allreduce b0", "allreduce b1"]
    assert rec.lane(1)[-1] == "allreduce b2"
    assert s.idle


def test_launch_order_per_lane_does_not_depend_on_the_order_of_submissions():
    lanes = [[0, 1], [4, 3, 2]]
    expected = None
    for order in itertools.permutations(range(5)):
        rec = Recorder()
        s = ReductionScheduler(rec.start, rec.wait, items(lanes))
        for step in range(2):
            for b in order:
                s.submit(job(b, step))
        per_lane = (rec.lane(0), rec.lane(1))
        expected = expected or per_lane
        assert per_lane == expected
        assert s.idle
    assert expected[0] == ["allreduce b0", "allreduce b1"] * 2


def test_waiting_for_a_chunk_that_was_never_started_is_an_error_not_a_hang():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, items([[0, 1]]))
    held = job(1)
    s.submit(held)  # bucket 0 not submitted yet: bucket 1 may not start
    with pytest.raises(RuntimeError, match="before it was started"):
        s.wait(held.chunks[0])
    s.submit(job(0))
    s.wait(held.chunks[0])
    s.wait(held.chunks[0])  # a second wait for a done chunk does not reach the backend
    assert [e for e in rec.log if e[0] == "wait"] == [("wait", "b1")]


def test_a_bucket_submitted_twice_in_one_step_is_refused():
    s = ReductionScheduler(Recorder().start, Recorder().wait, items([[0, 1]]))
    s.submit(job(1))
    with pytest.raises(RuntimeError, match="submitted twice"):
        s.submit(job(1))


def test_random_backward_orders_give_the_same_sequence_on_every_rank():
    # two "ranks" whose hooks fire in different orders (different control flow) over 20 steps
    rng = random.Random(0)
    lanes = make_plan([rng.randint(1, 1000) for _ in range(12)], list(range(11, -1, -1)), list(range(12)), True, 0.3)
    sequences = []
    for _rank in range(2):
        rec = Recorder()
        s = ReductionScheduler(rec.start, rec.wait, items(lanes))
        for step in range(20):
            order = list(range(12))
            rng.shuffle(order)
            for b in order:
                s.submit(job(b, step))
        sequences.append([entry[1:] for entry in rec.log])
    assert sorted(sequences[0]) == sorted(sequences[1])
    for lane in range(len(lanes)):
        assert [e for e in sequences[0] if e[0] == lane] == [e for e in sequences[1] if e[0] == lane]


def test_edf_puts_a_more_urgent_layer_before_what_the_link_has_not_reached():
    # bulk lane of the CNN in 1 MB chunks: fc3 (1 chunk), fc2 (2), fc1 (8), ready in that order;
    # deadlines: fc1 first, then fc2, then fc3. When fc2 was ready the link had carried fc3's 20 KB,
    # when fc1 was ready 0.5 MB.
    mb = 1_000_000
    sizes = {4: [20_000], 3: [mb, 50_000], 2: [mb] * 8}
    deadline = {2: 2, 3: 3, 4: 4}
    carried = {3: 20_000, 2: 500_000}
    fc1 = [(2, c) for c in range(8)]
    # 0.4 MB in the backend beyond what the link carried: fc2's first chunk is out before fc1 is
    # ready, its second is not, so fc1 (needed sooner) overtakes it
    assert edf_order([4, 3, 2], sizes, deadline, carried, ahead=0.4 * mb) == [(4, 0), (3, 0), *fc1, (3, 1)]
    # 2 MB in the backend: all of fc2 was handed over before fc1 was ready (first ready, first sent)
    assert edf_order([4, 3, 2], sizes, deadline, carried, ahead=2 * mb) == [(4, 0), (3, 0), (3, 1), *fc1]
    # nothing carried and nothing ahead: pure deadline order
    assert edf_order([4, 3, 2], sizes, deadline, {}, ahead=0) == [*fc1, (3, 0), (3, 1), (4, 0)]


def test_the_last_used_bucket_but_the_first_ready_goes_last():
    # the CNN's bulk lane with fc2 as two row blocks: fc3 (5), fc2's blocks (4: used second, 3: used first),
    # fc1's blocks (2, 1), ready in that order; the next forward uses fc1, then fc2's blocks, then fc3.
    # One 1 MB chunk each, 2 MB in the backend; when 2 was ready the link had carried 0.5 MB, when 1 was 0.6 MB
    mb = 1_000_000
    lane = [5, 4, 3, 2, 1]
    sizes = {b: [mb] for b in lane}
    deadline = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    carried = {4: 0, 3: 0, 2: 0.5 * mb, 1: 0.6 * mb}
    # work-conserving EDF: the first ready go at once; 1 overtakes 2, which the link has not reached
    assert bulk_lane_order(lane, sizes, deadline, carried, 2 * mb) == [(5, 0), (4, 0), (3, 0), (1, 0), (2, 0)]
    # fc3 is ready first (held back, the link would wait for fc2): fc2's second block (4), used after the
    # other, goes last instead. Its early place is not left empty: ordered without it, 2 goes when it is
    # ready (the backend would otherwise hold one reduction, not two), ahead of 1
    assert last_used(lane, deadline) == 4
    assert bulk_lane_order(lane, sizes, deadline, carried, 2 * mb, hold_last=True) == \
        [(5, 0), (3, 0), (2, 0), (1, 0), (4, 0)]
    # every chunk once, whatever the bucket held
    assert sorted(bulk_lane_order([5, 3, 4, 2, 1], sizes, deadline, carried, 2 * mb, True)) == \
        [(b, 0) for b in range(1, 6)]
    assert last_used([2, 1], deadline) is None  # two buckets: nothing to hold
    assert bulk_lane_order([2, 1], sizes, deadline, {}, 0, True) == [(1, 0), (2, 0)]


def test_replan_takes_effect_between_steps_only():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, items([[2, 1, 0]], {2: 2}))
    s.submit(job(2, chunks=2))
    with pytest.raises(RuntimeError, match="between steps"):
        s.replan([[(1, 0), (2, 0), (2, 1), (0, 0)]])
    s.submit(job(1))
    s.submit(job(0))
    s.replan([[(1, 0), (2, 0), (0, 0), (2, 1)]])
    rec.log.clear()
    for b in (2, 1, 0):
        s.submit(job(b, step=1, chunks=2 if b == 2 else 1))
    assert rec.lane(0) == ["allreduce b1", "allreduce b2 [1/2]", "allreduce b0", "allreduce b2 [2/2]"]

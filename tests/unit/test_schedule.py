"""The reduction scheduler's decisions: order, chunking and credit, with no backend at all.

Every rank must start the same reductions in the same order whatever the timing,
so the scheduler's launch sequence is a pure function of the calls made on it.
"""
from __future__ import annotations

import torch

from asyncsgd.strategies.schedule import ReductionScheduler


class Recorder:
    """Stands in for the backend: records every start and every wait, in order."""

    def __init__(self):
        self.log = []

    def start(self, tensor, label, step):
        self.log.append(("start", label, tensor.numel()))
        return label

    def wait(self, handle, label):
        self.log.append(("wait", label))

    def starts(self):
        return [entry[1] for entry in self.log if entry[0] == "start"]


def buf(kib: float) -> torch.Tensor:
    return torch.zeros(int(kib * 1024) // 4)


def test_without_priority_each_bucket_is_one_reduction_started_at_once_in_ready_order():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, priority=False, chunk_bytes=1024, credit=1)
    jobs = [s.submit(buf(8), name, urgency, 0) for name, urgency in [("fc2", 3), ("fc1", 2), ("conv", 1)]]
    assert rec.starts() == ["allreduce fc2", "allreduce fc1", "allreduce conv"]  # credit ignored
    s.complete(jobs[2])  # waiting for the last started retires everything before it
    assert [e for e in rec.log if e[0] == "wait"] == [("wait", "fc2"), ("wait", "fc1"), ("wait", "conv")]
    assert all(j.done for j in jobs) and s.idle


def test_priority_chunks_and_lets_the_layer_needed_first_overtake():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, priority=True, chunk_bytes=4096, credit=2)
    # backward order: the last layer first; urgency = position in the next forward
    fc2 = s.submit(buf(4), "fc2", 3, 0)
    fc1 = s.submit(buf(16), "fc1", 2, 0)  # 4 chunks of 4 KiB
    assert [c.tensor.numel() for c in fc1.chunks] == [1024] * 4
    assert rec.starts() == ["allreduce fc2", "allreduce fc1 [1/4]"]  # credit 2 spent
    s.pump()  # nothing returns credit without a wait
    assert len(rec.starts()) == 2
    # conv, needed first by the next forward, is more urgent than everything in flight: it goes
    # at once, ahead of fc1's three pending chunks
    conv = s.submit(buf(4), "conv", 1, 0)
    assert rec.starts()[2] == "allreduce conv"
    s.complete(conv)  # retires everything started before it, then refills the credit
    assert [e[1] for e in rec.log if e[0] == "wait"] == ["fc2", "fc1 [1/4]", "conv"]
    assert conv.done and not fc1.done
    assert rec.starts()[3:] == ["allreduce fc1 [2/4]", "allreduce fc1 [3/4]"]
    s.complete(fc1)
    assert rec.starts()[5:] == ["allreduce fc1 [4/4]"]
    assert fc2.done and fc1.done and s.idle


def test_a_needed_chunk_still_queued_waits_for_the_oldest_in_flight():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, priority=True, chunk_bytes=1024, credit=2)
    a = s.submit(buf(3), "a", 2, 0)  # 3 chunks: 2 start, 1 queued
    b = s.submit(buf(1), "b", 3, 0)  # less urgent: queued
    assert rec.starts() == ["allreduce a [1/3]", "allreduce a [2/3]"]
    s.complete(a)
    assert rec.log[2:4] == [("wait", "a [1/3]"), ("start", "allreduce a [3/3]", 256)]
    s.drain()
    assert b.done and s.idle


def test_credit_bounds_the_chunks_in_flight_and_drain_finishes_everything():
    rec = Recorder()
    s = ReductionScheduler(rec.start, rec.wait, priority=True, chunk_bytes=1024, credit=3)
    jobs = [s.submit(buf(5), f"l{i}", 10 - i, 0) for i in range(3)]  # 5 chunks each, each more urgent
    in_flight = max_in_flight = 0
    s.drain()
    for entry in rec.log:
        in_flight += 1 if entry[0] == "start" else -1
        max_in_flight = max(max_in_flight, in_flight)
    # the credit, plus the first chunk of each layer that overtook everything in flight
    assert max_in_flight == 3 + 2 and in_flight == 0
    assert len(rec.starts()) == 15 and all(j.done for j in jobs) and s.idle
    assert rec.starts()[:5] == ["allreduce l0 [1/5]", "allreduce l0 [2/5]", "allreduce l0 [3/5]",
                                "allreduce l1 [1/5]", "allreduce l2 [1/5]"]
    # then the most urgent layer's remaining chunks, then the next
    assert rec.starts()[5:9] == [f"allreduce l2 [{i}/5]" for i in range(2, 6)]


def test_the_sequence_is_the_same_whatever_the_buffer_contents():
    def sequence(fill):
        rec = Recorder()
        s = ReductionScheduler(rec.start, rec.wait, priority=True, chunk_bytes=2048, credit=2)
        jobs = [s.submit(buf(6).fill_(fill), n, u, 0) for n, u in [("c", 3), ("b", 2), ("a", 1)]]
        for job in reversed(jobs):
            s.complete(job)
        return rec.log

    assert sequence(0.0) == sequence(float("nan"))


def test_a_failed_wait_leaves_the_chunk_in_flight_so_clean_up_meets_the_same_error():
    class PeerDied(RuntimeError):
        pass

    rec = Recorder()
    failing = {"on": True}

    def wait(handle, label):
        if failing["on"]:
            raise PeerDied(f"{label}: connection reset by peer")
        rec.wait(handle, label)

    s = ReductionScheduler(rec.start, wait, priority=True, chunk_bytes=1024, credit=2)
    job = s.submit(buf(3), "a", 1, 0)
    for _ in range(2):  # the failing step, then the flush in the clean-up: the same error both times
        try:
            s.complete(job)
        except PeerDied as exc:
            assert "a [1/3]" in str(exc)
        else:
            raise AssertionError("the wait's error was swallowed")
    failing["on"] = False  # (a backend that recovered) everything is still accounted for
    s.drain()
    assert job.done and s.idle and len(rec.starts()) == 3

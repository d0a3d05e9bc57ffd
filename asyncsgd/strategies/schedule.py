"""Which reduction goes on the wire when, for ``layerwise``.

Every rank must start the same collectives in the same order on each channel
(MPI, gloo and NCCL match collectives by their order). A decision that depends
on *when* a reduction happens to finish would break that, so the order is fixed
ahead of time, once, from the first step (:func:`make_plan`), and never depends
on timing:

- Every bucket belongs to a lane, and each lane has a fixed launch order. A
  bucket is submitted the moment its gradient is ready in backward; it starts
  once every bucket before it in its lane has started. The order of the
  submissions themselves (the order of backward's hooks) cannot change what
  goes on any channel.
- Lane ``i`` is the communicator's channel ``i``: an independent sequence of
  collectives with its own connections (gloo, NCCL) or its own communicator
  (MPI), so nothing on one lane waits behind another lane's data.

Without priority there is one lane in the order gradients become ready:
first ready, first sent — the plain layer-wise method.

With ``strategy.priority=true`` there are two. In backward the first layers'
gradients are ready last, yet the next forward needs them first: on a single
channel they would wait behind everything the later layers sent before them.
So the layers the next forward needs first, up to ``strategy.urgent_share`` of
the gradient bytes, form lane 0, in the order the forward uses them; the rest
form lane 1, first ready first sent, so the link starts as soon as the first
gradient is ready and stays busy. Lane 0 overtakes lane 1 wherever the two
meet: on gloo both flows share the link, and MPI's communication thread
starts no new lane-1 reduction while lane 0 has work. Each bucket is cut into
chunks of ``strategy.chunk_mb``, so the backend runs several at once (keeping
the link busy across one chunk's start-up) and the strategy can update a layer
chunk by chunk as its chunks arrive.

Lane 1's order is then refined once, at chunk level, to earliest deadline
first (:func:`edf_order`): a layer whose gradient is ready while chunks of a
later layer are still to go should go before them, but what has been handed
to the backend can no longer be overtaken. So after a few steps the strategy
measures, on rank 0, how many bytes of the lane the link had carried when each
bucket became ready; a simulation of EDF over those measurements gives the
chunk order, which rank 0 broadcasts once. Chunks placed after a more urgent
layer's are held back until that layer is ready, and the link is still never
left without work it could have had.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..comm import Handle


@dataclass
class Chunk:
    tensor: torch.Tensor  # what is reduced in place: a slice of a gradient, or a bucket's flat buffer
    label: str
    handle: Optional[Handle] = None
    done: bool = False


@dataclass
class Job:
    """One bucket's reduction for one step, in one or more chunks."""

    bucket: int  # the bucket's index in the plan
    label: str
    step: int  # the step whose gradient this is
    chunks: List[Chunk] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return all(c.handle is not None for c in self.chunks)

    @property
    def done(self) -> bool:
        return all(c.done for c in self.chunks)


def make_plan(nbytes: Sequence[int], ready_order: Sequence[int], use_order: Sequence[int], priority: bool,
              urgent_share: float) -> List[List[int]]:
    """Lanes of bucket indices, each in launch order.

    ``nbytes[b]`` is bucket b's size, ``ready_order`` the buckets in the order their
    gradients became ready in backward, ``use_order`` in the order the forward first uses
    them. Without priority: one lane in ready order. With priority: lane 0 is the longest
    prefix of ``use_order`` within ``urgent_share`` of all bytes (at least its first bucket,
    none when the share is 0), in use order; lane 1 the rest, in ready order.
    """
    if sorted(ready_order) != list(range(len(nbytes))) or sorted(use_order) != list(range(len(nbytes))):
        raise ValueError("ready_order and use_order must each list every bucket once")
    if not priority or urgent_share <= 0:
        return [list(ready_order)]
    budget = urgent_share * sum(nbytes)
    urgent: List[int] = []
    total = 0
    for b in use_order:
        if urgent and total + nbytes[b] > budget:
            break
        urgent.append(b)
        total += nbytes[b]
    rest = [b for b in ready_order if b not in set(urgent)]
    return [urgent, rest] if rest else [urgent]


Item = Tuple[int, int]  # (bucket, chunk index): the unit a lane's order is made of


def chunk_items(lane: Sequence[int], chunks: Dict[int, int]) -> List[Item]:
    """Every chunk of the lane's buckets, bucket by bucket in the lane's order."""
    return [(b, c) for b in lane for c in range(chunks[b])]


def edf_order(lane: Sequence[int], sizes: Dict[int, List[int]], deadline: Dict[int, int],
              carried: Dict[int, float], ahead: float) -> List[Item]:
    """Chunk order for a lane whose buckets become ready in the order ``lane``, earliest deadline first.

    ``sizes[b]``: bucket b's chunk sizes (bytes); ``deadline[b]``: when the next forward needs b
    (smaller first); ``carried[b]``: bytes of the lane the link had carried when b became ready;
    ``ahead``: bytes handed to the backend beyond that, which nothing can overtake any more.
    The simulation places, before each bucket, the most urgent chunks already waiting up to
    what the link will have carried or taken by then; the bucket's own chunks then compete with
    the rest by deadline.
    """
    order: List[Item] = []
    waiting: List[tuple] = []  # heap of (deadline, bucket position, chunk, bucket, size)
    placed = 0.0
    for position, b in enumerate(lane):
        while waiting and placed < carried.get(b, 0.0) + ahead:
            _, _, c, bucket, size = heapq.heappop(waiting)
            order.append((bucket, c))
            placed += size
        for c, size in enumerate(sizes[b]):
            heapq.heappush(waiting, (deadline[b], position, c, b, size))
    while waiting:
        _, _, c, bucket, _ = heapq.heappop(waiting)
        order.append((bucket, c))
    return order


def last_used(lane: Sequence[int], deadline: Dict[int, int]) -> Optional[int]:
    """The bucket ``strategy.last_used_last`` holds back: the one the next forward uses last, of the
    lane's buckets but the first ready (``lane`` is in ready order); None with fewer than three
    buckets (holding the one other bucket back would leave the link the first alone).

    Every gradient of a step must have arrived by its use in the next forward, and the next step's
    first gradient is ready only after the rest of that forward, the loss and the first layers of
    backward: the link idles from its last arrival until then. Work-conserving EDF sends the
    buckets ready first in backward at once (nothing else waits yet), though the next forward needs
    them last; so the last to arrive is one needed earlier, and the link idles through the forward
    after it as well. Held back to the end of the lane, the last-needed bucket arrives last, and the
    link's idle stretch shrinks to the compute after its use. The first-ready bucket is not held,
    so the link has work from the first gradient on."""
    if len(lane) < 3:
        return None
    return max(lane[1:], key=lambda b: (deadline[b], -lane.index(b)))


def bulk_lane_order(lane: Sequence[int], sizes: Dict[int, List[int]], deadline: Dict[int, int],
                    carried: Dict[int, float], ahead: float, hold_last: bool = False) -> List[Item]:
    """A lane after the first, refined once calibrated: :func:`edf_order`; with ``hold_last``
    (``strategy.last_used_last``) the bucket :func:`last_used` names goes after the rest, which are
    ordered by EDF without it. Ordered with it and then moved, its place early in the lane (EDF
    sends a first-ready bucket at once, beside the next) would be left empty: the link would carry
    one reduction where it had two, and one alone runs below the link's rate (each has start-up and
    tail). Without it the next waiting chunk fills that place. (``carried`` was measured with the
    held bucket still at its ready place, so it counts that bucket's bytes: while the link stays busy
    the bytes it carried by a bucket's readiness are about the same whichever went first.) The
    strategy and the projection's simulation of it both order their lanes here."""
    held = last_used(lane, deadline) if hold_last else None
    if held is None:
        return edf_order(lane, sizes, deadline, carried, ahead)
    rest = edf_order([b for b in lane if b != held], sizes, deadline, carried, ahead)
    return rest + [(held, c) for c in range(len(sizes[held]))]


class ReductionScheduler:
    """Starts the chunks of submitted jobs in their lane's fixed order; waits for single chunks.

    ``lanes`` lists, per lane, (bucket, chunk) items in launch order (:func:`chunk_items`,
    :func:`edf_order`). ``start(tensor, label, grad_step, lane)`` starts a reduction and
    returns its handle; ``wait(handle, label)`` blocks until it is done.
    """

    def __init__(self, start: Callable[[torch.Tensor, str, int, int], Handle], wait: Callable[[Handle, str], None],
                 lanes: List[List[Item]]):
        self._start, self._wait = start, wait
        self._submitted: Dict[int, Job] = {}  # bucket -> this step's job, while any of its chunks is unstarted
        self._started: List[List[Chunk]] = [[] for _ in lanes]  # per lane: chunks started in this lane's step
        self._next: List[int] = []
        self.replan(lanes)

    def replan(self, lanes: List[List[Item]]) -> None:
        """Use new launch orders from the next step on (call at a step boundary, every rank alike)."""
        if not self.idle:
            raise RuntimeError("the launch order can change only between steps")
        self.lanes = lanes
        self.lane_of: Dict[int, int] = {b: i for i, lane in enumerate(lanes) for b, _ in lane}
        items = [item for lane in lanes for item in lane]
        if len(set(items)) != len(items):
            raise ValueError(f"every chunk must be on exactly one lane, once: {lanes}")
        self._next = [0] * len(lanes)  # per lane: position of the next item to start

    def submit(self, job: Job) -> None:
        """``job``'s gradient is ready: start what of its lane has its turn now."""
        if job.bucket in self._submitted:
            raise RuntimeError(f"bucket {job.label} submitted twice in one step")
        self._submitted[job.bucket] = job
        lane = self.lane_of[job.bucket]
        order = self.lanes[lane]
        if self._next[lane] == 0:
            self._started[lane] = []
        while self._next[lane] < len(order) and order[self._next[lane]][0] in self._submitted:
            bucket, c = order[self._next[lane]]
            ready = self._submitted[bucket]
            chunk = ready.chunks[c]
            chunk.handle = self._start(chunk.tensor, f"allreduce {chunk.label}", ready.step, lane)
            self._started[lane].append(chunk)
            if ready.started:
                del self._submitted[bucket]
            self._next[lane] += 1
        if self._next[lane] == len(order):  # the lane's step is complete; the next step starts over
            self._next[lane] = 0

    def carried(self, lane: int) -> float:
        """Bytes of this step's chunks on ``lane`` that have been reduced by now (asks the backend,
        never waits): how far the link has got, for :func:`edf_order`."""
        return float(sum(c.tensor.numel() * c.tensor.element_size() for c in self._started[lane]
                         if c.done or c.handle.is_completed()))

    def wait(self, chunk: Chunk) -> None:
        """Block until ``chunk`` is reduced."""
        if chunk.handle is None:
            raise RuntimeError(f"{chunk.label} waited for before it was started (a bucket of its lane was never "
                               "submitted in this step)")
        if not chunk.done:
            self._wait(chunk.handle, chunk.label)
            chunk.done = True

    @property
    def idle(self) -> bool:
        """Nothing submitted and not started: every lane is at a step boundary."""
        return not self._submitted and not any(self._next)

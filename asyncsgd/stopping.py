"""Stopping every worker at the same step when one of them is asked to stop.

SIGTERM (SLURM preemption, ``kill``) or SIGINT (Ctrl-C) may reach any subset of
the workers. Each worker only notes it; at every step boundary each rank
starts a non-blocking 1-element sum of its "asked to stop" flag and, ``lag``
steps later, reads the result. All ranks issue and read the same reductions at
the same steps, so they all see the same sum and stop at the same boundary.

Why lagged rather than a blocking allreduce each step: collectives complete in
the order they were issued, so a blocking one at the boundary would first wait
for every gradient reduction still in flight (layerwise overlaps them with the
next forward; delayed-k with the next k steps) and erase the overlap being
measured. Issued after step t's reductions and read at step t+lag, the flag is
ready by the time the strategy needed those reductions anyway.

Better still, a strategy that reduces something every step anyway offers a
:class:`StopFlagSlot`: one extra element of that reduction (``sync`` and
``delayed``: the last element of their fused gradient buffer). The flag then
travels with the gradient and a step issues no collective the algorithm does
not need; it is read when the strategy has waited for that reduction, which
is never earlier than the strategy itself waits. With one worker there is no
one to agree with and no collective at all.
"""
from __future__ import annotations

import logging
import signal
from collections import deque
from typing import Deque, List, Optional, Tuple

log = logging.getLogger("asyncsgd")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Every worker stopped at ``step`` because a stop signal arrived; a checkpoint was written."""

    def __init__(self, step: int, signal_name: str, checkpoint: Optional[str]):
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint}")


class StopFlagSlot:
    """One element of a reduction a strategy makes anyway, lent to the stop flag.

    The protocol, between :class:`StopRequest` and the strategy that owns the slot:

    - ``outgoing`` is this rank's flag (0.0, or 1.0 once a stop signal arrived),
      written by :class:`StopRequest`. The strategy copies it into its extra
      element each time it fills a buffer for a reduction that carries the flag.
    - The reduction *sums* that element (it must not be divided by the world size).
    - When the strategy has waited for such a reduction it calls :meth:`deliver`
      with the summed element. It must do so at points of the training loop every
      rank passes in the same order (e.g. in ``synchronize`` or ``step``, as the
      waits themselves), so that at every step boundary every rank holds the same
      deliveries. Deliveries from reductions that carried a stale flag (e.g. a
      reduced buffer restored from a checkpoint) must not be made.
    """

    def __init__(self) -> None:
        self.outgoing = 0.0
        self._delivered: List[float] = []

    def deliver(self, total: float) -> None:
        """The summed flag of a reduction the strategy has just waited for."""
        self._delivered.append(total)

    def take(self) -> List[float]:
        """Every sum delivered since the last call (read at a step boundary)."""
        out, self._delivered = self._delivered, []
        return out


class StopRequest:
    """Catches SIGTERM/SIGINT in this worker and agrees with the others on when to stop.

    ``slot``: the strategy's :class:`StopFlagSlot`, or None for a reduction of our own
    ``lag`` steps behind."""

    def __init__(self, comm, lag: int = 1, slot: Optional[StopFlagSlot] = None):
        self.comm, self.lag, self.slot = comm, max(1, lag), slot
        self.received: Optional[str] = None  # this worker's signal, if any
        self.agreed: Optional[str] = None
        self._pending: Deque[Tuple[object, "torch.Tensor"]] = deque()  # noqa: F821
        self._previous = {}
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread (embedded use): no signal handling
                pass

    def _note(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            if self.slot is not None:
                self.slot.outgoing = 1.0  # travels with the very next reduction
            log.warning("received %s: stopping at the next step boundary all workers agree on", self.received)

    def poll(self) -> bool:
        """Call at every step boundary on every rank; True when all ranks must stop now."""
        delivered = self.slot.take() if self.slot is not None else []
        if self.comm.size == 1:  # no one to agree with
            return self._agree(self.received is not None)
        if self.slot is not None:
            return self._agree(any(total > 0 for total in delivered))
        import torch  # here, not at import: the worker imports this module before torch is needed

        flag = torch.tensor([1.0 if self.received else 0.0], device=self.comm.device)
        self._pending.append((self.comm.allreduce_async(flag, average=False), flag))
        if len(self._pending) <= self.lag:
            return False
        handle, flag = self._pending.popleft()
        handle.wait()
        return self._agree(float(flag[0]) > 0)

    def _agree(self, stop: bool) -> bool:
        if stop:
            self.agreed = self.received or "a signal to another worker"
        return stop

    def close(self, complete: bool = True) -> None:
        """Restore the handlers; with ``complete``, first finish the reductions still open
        (every rank has the same number). After an error a peer may be gone: do not wait."""
        while complete and self._pending:
            self._pending.popleft()[0].wait()
        self._pending.clear()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

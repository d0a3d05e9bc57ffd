"""The stop request in one process, the stop-flag slot protocol, and clean-up after errors."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asyncsgd.config import DelayedConfig, SyncConfig
from asyncsgd.metrics import PhaseTimer
from asyncsgd.stopping import StopFlagSlot, StopRequest
from asyncsgd.strategies import make_strategy
from asyncsgd.train import close_all


def test_one_worker_stops_at_the_next_boundary_without_a_collective(comm):
    stop = StopRequest(comm, lag=3)
    try:
        assert not stop.poll()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.poll() and stop.agreed == "SIGTERM"
        assert not stop._pending  # nothing was reduced
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGTERM) is not stop._note


def test_slot_carries_the_flag_and_the_deliveries_are_read_once():
    slot = StopFlagSlot()
    assert slot.take() == []
    slot.deliver(0.0)
    slot.deliver(2.0)
    assert slot.take() == [0.0, 2.0] and slot.take() == []


@pytest.mark.parametrize("cfg", [SyncConfig(), DelayedConfig(k=2)], ids=["sync", "delayed"])
def test_a_signal_sets_the_flag_the_strategy_sends(comm, cfg):
    strategy = make_strategy(cfg, comm, PhaseTimer())
    strategy.attach(nn.Linear(4, 2), lambda ps: torch.optim.SGD(ps, lr=0.1))
    slot = strategy.stop_slot
    if slot is None:  # sync at one worker reduces nothing, so it carries nothing
        assert comm.size == 1 and cfg.name == "sync"
        return
    stop = StopRequest(comm, lag=strategy.stop_lag, slot=slot)
    try:
        assert slot.outgoing == 0.0
        os.kill(os.getpid(), signal.SIGINT)
        assert slot.outgoing == 1.0  # the very next reduction carries it
    finally:
        stop.close()


def test_delayed_delivers_the_flag_it_reduced_and_not_a_restored_one(comm):
    torch.manual_seed(0)
    strategy = make_strategy(DelayedConfig(k=1), comm, PhaseTimer())
    net = strategy.attach(nn.Linear(4, 2), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    strategy.stop_slot.outgoing = 1.0
    for _ in range(3):
        strategy.zero_grad()
        F.cross_entropy(net(torch.randn(8, 4)), torch.randint(2, (8,))).backward()
        strategy.synchronize()
        strategy.step()
    assert strategy.stop_slot.take() == [float(comm.size)] * 2  # steps 0 and 1 applied, summed over ranks
    strategy.flush()
    state = strategy.state_dict()
    assert state["queue"][0].numel() == sum(p.numel() for p in net.parameters())  # gradients only, averaged
    strategy.load_state_dict(state)
    strategy.finish()
    assert strategy.stop_slot.take() == []
    strategy.close(abort=True)
    assert not strategy.in_flight and len(strategy.free) == 2


def test_clean_up_runs_every_step_and_reports_the_first_error(caplog):
    ran = []

    def fails(what):
        def close():
            ran.append(what)
            raise RuntimeError(f"{what} broke")
        return close

    steps = [("strategy", fails("strategy")), ("timeline", lambda: ran.append("timeline")),
             ("metrics", fails("metrics"))]
    with caplog.at_level(logging.WARNING, logger="asyncsgd"):
        close_all(steps, after_error=True)  # after an error: logged, never raised
    assert ran == ["strategy", "timeline", "metrics"]
    assert "clean-up of the strategy after the error also failed: RuntimeError: strategy broke" in caplog.text
    ran.clear()
    with pytest.raises(RuntimeError, match="strategy broke"):
        close_all(steps, after_error=False)  # a clean end: the first clean-up error, once all ran
    assert ran == ["strategy", "timeline", "metrics"]

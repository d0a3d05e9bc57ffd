"""Checkpoint pieces in one process: strategy state, RNG states, safe loading, config checks, nonfinite."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asyncsgd.checkpoint import (CheckpointError, check_compatible, config_differences, load_checkpoint,
                                 resolve_resume, restore_rng, capture_rng)
from asyncsgd.config import DelayedConfig, LayerwiseConfig, SyncConfig
from asyncsgd.metrics import PhaseTimer
from asyncsgd.strategies import make_strategy
from asyncsgd.strategies.base import NonFiniteGradient

CONFIGS = {
    "sync": SyncConfig(),
    "layerwise-forward": LayerwiseConfig(wait_at="forward"),
    "layerwise-step": LayerwiseConfig(wait_at="step"),
    "layerwise-priority": LayerwiseConfig(priority=True, chunk_mb=64 / 2**20),
    "delayed-2": DelayedConfig(k=2),
    "delayed-2-spike": DelayedConfig(k=2, compensation="spike"),  # its own update after the optimizer's
}


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)


def _train(strategy, net, batches):
    for x, y in batches:
        strategy.zero_grad()
        F.cross_entropy(net(x), y).backward()
        strategy.synchronize()
        strategy.step()


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_strategy_state_round_trip_continues_exactly(comm, name, tmp_path):
    """Flush + state_dict after 5 steps, load into a fresh strategy: the next 6 steps match bit for bit."""
    first, later = _batches(5), _batches(6, seed=2)
    a_net = _net()
    a = make_strategy(CONFIGS[name], comm, PhaseTimer())
    a_model = a.attach(a_net, _sgd)
    _train(a, a_model, first)
    a.flush()
    # through a real file, read the way a checkpoint is read
    torch.save({"model": a_net.state_dict(), "strategy": a.state_dict()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    if name == "delayed-2":
        assert len(saved["strategy"]["queue"]) == 2 and saved["strategy"]["queue_steps"] == [3, 4]
    b_net = _net(seed=99)  # different start: everything must come from the state
    b = make_strategy(CONFIGS[name], comm, PhaseTimer())
    b_model = b.attach(b_net, _sgd)
    b_net.load_state_dict(saved["model"])
    b.load_state_dict(saved["strategy"])

    _train(a, a_model, later)
    _train(b, b_model, later)
    a.finish()
    b.finish()
    for (k, pa), pb in zip(a_net.state_dict().items(), b_net.state_dict().values()):
        assert torch.equal(pa, pb), k
    a.close()
    b.close()


@pytest.mark.parametrize("priority", [False, True])
def test_layerwise_forward_saves_the_momentum_of_every_parameter(comm, priority):
    # updates are applied bucket by bucket (chunk by chunk with priority), into one optimizer's state
    strategy = make_strategy(LayerwiseConfig(wait_at="forward", priority=priority, chunk_mb=64 / 2**20), comm,
                             PhaseTimer())
    net = strategy.attach(_net(), _sgd)
    _train(strategy, net, _batches(2))
    strategy.flush()
    state = strategy.state_dict()
    assert len(strategy.buckets) == 3 and len(state["optimizers"]) == 1
    buffers = state["optimizers"][0]["state"]
    assert sorted(buffers) == list(range(len(list(net.parameters()))))
    assert all(bool(b["momentum_buffer"].abs().sum() > 0) for b in buffers.values())
    strategy.close()


@pytest.mark.parametrize("name", ["sync", "layerwise-forward", "delayed-2", "delayed-2-spike"])
def test_nonfinite_gradient_skip_leaves_the_weights_and_counts(comm, name):
    strategy = make_strategy(CONFIGS[name], comm, PhaseTimer())
    strategy.nonfinite = "skip"
    net_module = _net()
    net = strategy.attach(net_module, _sgd)
    x, y = _batches(1)[0]
    before = {k: v.clone() for k, v in net_module.state_dict().items()}
    for _ in range(3):  # every gradient NaN: nothing may ever be applied
        strategy.zero_grad()
        (F.cross_entropy(net(x), y) * float("nan")).backward()
        strategy.synchronize()
        strategy.step()
    strategy.finish()
    assert all(torch.equal(before[k], v) for k, v in net_module.state_dict().items())
    assert strategy.skipped == 3  # steps, whatever the strategy (layerwise: not per bucket)
    strategy.close()


def test_nonfinite_gradient_stop_names_the_step(comm):
    strategy = make_strategy(DelayedConfig(k=1), comm, PhaseTimer())
    net = strategy.attach(_net(), _sgd)
    (x, y), = _batches(1)
    for step in range(3):
        strategy.zero_grad()
        loss = F.cross_entropy(net(x), y)
        (loss * float("nan") if step == 1 else loss).backward()
        strategy.synchronize()
        if step < 2:
            strategy.step()
    with pytest.raises(NonFiniteGradient, match="computed at step 1;"):
        strategy.step()  # the gradient of step 1 is applied at step 2


def test_rng_states_round_trip():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    np.random.normal()  # a cached gaussian is part of numpy's state
    state = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    torch.rand(10), np.random.rand(7), random.random()
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


# ---------------------------------------------------------------- files
def test_truncated_checkpoint_is_one_line(tmp_path):
    good = tmp_path / "step-00000001.pt"
    torch.save({"format": "asyncsgd-checkpoint/1", "meta": "{}", "x": torch.zeros(1000)}, good)
    bad = tmp_path / "step-00000002.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


class _Payload:
    """An arbitrary object: weights_only loading must refuse to build it."""

    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_a_file_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "step-00000001.pt"
    torch.save({"format": "asyncsgd-checkpoint/1", "meta": "{}", "evil": _Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert "code from a checkpoint ran" not in capsys.readouterr().out


def test_foreign_tensor_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an asyncsgd checkpoint"):
        load_checkpoint(path)


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(None, run) is None
    assert resolve_resume("auto", run) is None  # nothing ran here yet: start fresh
    (run / "checkpoints").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    with pytest.raises(CheckpointError, match="wrote no checkpoint"):
        resolve_resume("auto", run)
    for step in (9, 10, 100):
        (run / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"x")
    assert resolve_resume("auto", run).name == "step-00000100.pt"  # by step number, not by name order
    assert resolve_resume(str(run), tmp_path).name == "step-00000100.pt"
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_resume(str(tmp_path / "nope.pt"), run)


def test_config_differences_list_only_meaning_bearing_keys():
    saved = {"world_size": 2, "train": {"lr": 0.1, "epochs": 1, "max_steps": 10},
             "strategy": {"name": "delayed", "k": 2}, "dataset": {"name": "digits", "root": "/a"}}
    current = {"world_size": 2, "train": {"lr": 0.2, "epochs": 5, "max_steps": 99},
               "strategy": {"name": "delayed", "k": 1}, "dataset": {"name": "digits", "root": "/b"}}
    assert config_differences(saved, current) == ["strategy.k: 2 -> 1", "train.lr: 0.1 -> 0.2"]


def test_check_compatible():
    meta = {"config": {"world_size": 2, "train": {"lr": 0.1}, "strategy": {"name": "delayed", "k": 2}},
            "queued_gradients": 2}
    path = type("P", (), {"name": "step-00000010.pt"})()
    same_lr = {"world_size": 2, "train": {"lr": 0.1}, "strategy": {"name": "delayed", "k": 2}}
    assert check_compatible(meta, same_lr, False, path) == []
    new_lr = {**same_lr, "train": {"lr": 0.3}}
    with pytest.raises(CheckpointError, match=r"train.lr: 0.1 -> 0.3 \(set resume.allow_changes=true"):
        check_compatible(meta, new_lr, False, path)
    assert check_compatible(meta, new_lr, True, path) == ["train.lr: 0.1 -> 0.3"]
    for change in ({**same_lr, "world_size": 4}, {**same_lr, "strategy": {"name": "delayed", "k": 1}}):
        with pytest.raises(CheckpointError, match="not even with resume.allow_changes"):
            check_compatible(meta, change, True, path)


def test_incomplete_checkpoint_names_what_is_missing(tmp_path):
    path = tmp_path / "step-00000001.pt"
    torch.save({"format": "asyncsgd-checkpoint/1", "meta": '{"position": {}}', "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"incomplete \(missing strategy, ranks, meta.config"):
        load_checkpoint(path)

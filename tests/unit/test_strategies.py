"""Strategies in one process (a real gloo group of size 1): bookkeeping, warnings, edge cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asyncsgd.config import DelayedConfig, LayerwiseConfig, SyncConfig
from asyncsgd.metrics import PhaseTimer
from asyncsgd.strategies import make_strategy


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)
        self.out_proj = nn.Linear(6, 6, bias=False)
        self.out_proj.weight = self.inp.weight  # shared between the first and a late layer

    def forward(self, x):
        return self.out(torch.relu(self.out_proj(torch.relu(self.mid(torch.relu(self.inp(x)))))))


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def run(strategy_cfg, comm, model_fn, steps=6, clip=None):
    torch.manual_seed(0)
    model = model_fn()
    strategy = make_strategy(strategy_cfg, comm, PhaseTimer(), clip_norm=clip)
    net = strategy.attach(model, sgd)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)
        strategy.zero_grad()
        F.cross_entropy(net(x), y).backward()
        strategy.synchronize()
        strategy.step()
    strategy.finish()
    strategy.close()
    return model, strategy


def plain(model_fn, steps=6, clip=None):
    torch.manual_seed(0)
    model = model_fn()
    opt = sgd(model.parameters())
    # The strategies give a parameter that takes no part in the loss a zero gradient
    # (every rank must reduce the same tensors), so weight decay and momentum still
    # act on it; plain PyTorch would skip a grad=None parameter. Say so here.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return model


def assert_same(a: nn.Module, b: nn.Module):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


# priority: 64-byte chunks (a 6x6 weight is 3 of them), the first layers on the urgent lane
PRIORITY = {"priority": True, "chunk_mb": 64 / 2**20, "urgent_share": 0.3}


@pytest.mark.parametrize("priority", [{}, PRIORITY], ids=["fifo", "priority"])
@pytest.mark.parametrize("wait_at", ["forward", "step"])
def test_tied_weights_keep_the_math_and_are_reported(comm, wait_at, priority):
    model, strategy = run(LayerwiseConfig(wait_at=wait_at, **priority), comm, Tied)
    assert_same(model, plain(Tied))
    assert any("tied/shared parameter" in w for w in strategy.describe()["warnings"])


@pytest.mark.parametrize("priority", [{}, PRIORITY], ids=["fifo", "priority"])
@pytest.mark.parametrize("wait_at", ["forward", "step"])
def test_layers_skipped_by_forward_are_still_reduced_and_updated(comm, wait_at, priority):
    model, strategy = run(LayerwiseConfig(wait_at=wait_at, **priority), comm, WithUnused)
    assert_same(model, plain(WithUnused))
    assert strategy.scheduler.idle


def test_batchnorm_is_reported():
    class BN(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.out = nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.bn(self.fc(x)))

    from asyncsgd.comm.base import Communicator

    class Solo(Communicator):  # attach() alone needs no collectives
        def allreduce_async(self, tensor, average=True): raise AssertionError
        def broadcast(self, tensor, root=0): pass
        def broadcast_object(self, obj, root=0): return obj
        def barrier(self): pass

    strategy = make_strategy(LayerwiseConfig(), Solo(timeout_s=1), PhaseTimer())
    strategy.attach(BN(), sgd)
    (warning,) = strategy.describe()["warnings"]
    assert "BatchNorm" in warning and "no longer equals single-process SGD" in warning


def test_buckets_follow_bucket_mb(comm):
    def layers():
        return nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 100), nn.Linear(100, 100), nn.Linear(100, 10))

    def buckets(cfg):
        # the buckets are made from what the first step shows: the order backward finishes gradients
        strategy = make_strategy(cfg, comm, PhaseTimer())
        net = strategy.attach(layers(), sgd)
        F.cross_entropy(net(torch.randn(4, 100)), torch.randint(10, (4,))).backward()
        strategy.synchronize()
        strategy.close()
        return strategy.buckets

    assert [b.label for b in buckets(LayerwiseConfig(bucket_mb=0))] == ["3", "2", "1", "0"]  # backward order
    # ~52 KB cap; layers are 40 KB (0-2) and 4 KB (3). Like DDP, a bucket closes once it
    # reaches the cap: 3+2 (44 KB) is still under it, 3+2+1 (85 KB) closes it.
    fused = buckets(LayerwiseConfig(bucket_mb=0.05))
    assert [b.label for b in fused] == ["1+2+3", "0"]
    assert sorted(tuple(p.shape) for p in fused[0].params) == sorted([(100, 100), (100,)] * 2 + [(10, 100), (10,)])
    assert len(buckets(LayerwiseConfig(bucket_mb=100))) == 1


def test_hooks_are_removed_on_close(comm):
    model, strategy = run(LayerwiseConfig(), comm, WithUnused, steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(torch.randn(4, 6)), torch.randint(3, (4,))).backward()
    model(torch.randn(4, 6))  # no pre-hook may update anything now
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert strategy._hooks == []


@pytest.mark.parametrize("cfg", [SyncConfig(), LayerwiseConfig(wait_at="step")])
def test_global_norm_clipping_matches_plain_sgd(comm, cfg):
    model, _ = run(cfg, comm, WithUnused, clip=0.05)
    assert_same(model, plain(WithUnused, clip=0.05))


def test_delayed_keeps_k_plus_one_buffers_and_k_gradients_in_flight(comm):
    torch.manual_seed(0)
    strategy = make_strategy(DelayedConfig(k=2, drain=True), comm, PhaseTimer())
    net = strategy.attach(WithUnused(), sgd)
    applied = []
    for step in range(5):
        strategy.zero_grad()
        F.cross_entropy(net(torch.randn(4, 6)), torch.randint(3, (4,))).backward()
        strategy.synchronize()
        strategy.step()
        applied.append(strategy.pending_steps())
        assert len(strategy.free) + len(strategy.in_flight) == 3
    assert applied == [[0], [0, 1], [1, 2], [2, 3], [3, 4]]
    strategy.flush()
    assert strategy.pending_steps() == [3, 4]  # flush completes, it does not apply
    strategy.finish()
    assert strategy.pending_steps() == []


class HeadOutsideItsModule(nn.Module):
    """The classifier's weights are used with F.linear in the model's own forward: the module
    that owns them never runs, so no pre-hook of its own ever fires."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return F.linear(torch.relu(self.body(x)), self.head.weight, self.head.bias)


class AuxRegisteredLast(nn.Module):
    """Like torchvision's GoogLeNet: `aux` is registered after `late` but runs between `early` and `late`."""

    def __init__(self):
        super().__init__()
        self.early = nn.Linear(6, 6)
        self.late = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 6)

    def forward(self, x):
        return self.late(torch.relu(self.aux(torch.relu(self.early(x)))))


@pytest.mark.parametrize("priority", [{}, PRIORITY], ids=["fifo", "priority"])
@pytest.mark.parametrize("wait_at", ["forward", "step"])
@pytest.mark.parametrize("model_fn", [HeadOutsideItsModule, AuxRegisteredLast])
def test_waits_and_buckets_follow_where_parameters_are_used(comm, wait_at, priority, model_fn):
    model, strategy = run(LayerwiseConfig(wait_at=wait_at, **priority), comm, model_fn)
    assert_same(model, plain(model_fn))
    assert strategy.scheduler.idle


def test_the_plan_follows_execution_not_registration_order(comm):
    _, strategy = run(LayerwiseConfig(), comm, AuxRegisteredLast, steps=2)
    # backward finishes late, aux, early; the next forward needs early, aux, late
    assert [b.label for b in strategy.buckets] == ["late", "aux", "early"]
    assert [b.label for b in strategy.use_order] == ["early", "aux", "late"]
    assert [b.module for b in strategy.use_order] == [strategy.model.early, strategy.model.aux, strategy.model.late]
    _, strategy = run(LayerwiseConfig(), comm, HeadOutsideItsModule, steps=2)
    head = next(b for b in strategy.buckets if b.label == "head")
    assert head.module is strategy.model  # first used by the model's own forward, not by `head`


class MovesItsHead(nn.Module):
    """After the first step the head's weights are used outside the module the wait was placed in."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(6, 6), nn.Linear(6, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.body(x))
        return self.head(h) if self.calls == 1 else F.linear(h, self.head.weight, self.head.bias)


def test_a_parameter_used_before_its_wait_is_refused_not_computed_stale(comm):
    with pytest.raises(RuntimeError, match="used in forward before their update was applied"):
        run(LayerwiseConfig(), comm, MovesItsHead, steps=3)
    model, _ = run(LayerwiseConfig(wait_at="step"), comm, MovesItsHead, steps=3)
    reference = plain(MovesItsHead, steps=3)
    assert_same(model, reference)

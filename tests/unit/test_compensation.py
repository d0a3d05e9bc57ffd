"""Staleness compensation in one process: the rules' numbers, their config, their cost in collectives."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asyncsgd.config import ConfigError, DelayedConfig, compensation_rules
from asyncsgd.metrics import PhaseTimer
from asyncsgd.strategies import make_strategy
from asyncsgd.strategies.compensation import explicit_momentum, momentum_rule_lr_scale, spike_coefficients, staleness


def test_momentum_rule_keeps_the_total_momentum():
    # k/(k+1) is what the staleness adds by itself; the optimizer is asked for the rest
    assert explicit_momentum(0.9, 0) == 0.9
    assert explicit_momentum(0.9, 1) == pytest.approx(0.4)
    assert explicit_momentum(0.9, 2) == pytest.approx(0.9 - 2 / 3)
    assert explicit_momentum(0.9, 4) == pytest.approx(0.1)
    assert explicit_momentum(0.5, 1) == 0.0  # never negative


@pytest.mark.parametrize("momentum, k", [(0.9, 0), (0.9, 1), (0.9, 2), (0.9, 4), (0.5, 1), (0.0, 2)])
def test_momentum_rule_keeps_the_effective_step(momentum, k):
    # a fixed delay adds no averaging: lowering mu without raising lr would shrink lr/(1-mu)
    scale = momentum_rule_lr_scale(momentum, k)
    assert scale / (1 - explicit_momentum(momentum, k)) == pytest.approx(1 / (1 - momentum))
    assert momentum_rule_lr_scale(0.9, 1) == pytest.approx(6.0)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("tau", [0, 1, 2, 4])
def test_spike_keeps_each_gradients_total_effect(mu, tau):
    """A gradient tau steps late moves w by lr*(b + a*(1 + mu + mu^2 + ...)) in all, as in sync: lr/(1-mu);
    and from tau steps on by lr*mu^j exactly as sync's gradient does at its step tau+j."""
    a, b = spike_coefficients(mu, tau)
    assert b + a / (1 - mu) == pytest.approx(1 / (1 - mu))
    assert a == pytest.approx(mu ** tau)
    assert spike_coefficients(mu, 0) == (1.0, 0)  # no delay: the plain update


def test_staleness_counts_the_updates_in_between():
    assert [staleness(t, 2) for t in range(5)] == [0, 1, 2, 2, 2]


@pytest.mark.parametrize("spec, rules", [("none", []), ("dc", ["dc"]), ("predict+lr", ["lr", "predict"]),
                                         ("dc+momentum+lr+predict", ["momentum", "lr", "dc", "predict"]),
                                         ("predict+spike", ["spike", "predict"])])
def test_compensation_spec(spec, rules):
    assert compensation_rules(spec) == rules
    assert DelayedConfig(compensation=spec).compensation == spec


@pytest.mark.parametrize("spec", ["nesterov", "dc+dc", "none+dc", "", "dc+"])
def test_bad_compensation_names_the_key_and_the_choices(spec):
    with pytest.raises(ConfigError, match=r"strategy.compensation=.* use none or rules joined by \+ from momentum, lr, "
                                          r"spike, dc, predict"):
        DelayedConfig(compensation=spec)


@pytest.mark.parametrize("key, value", [("dc_lambda", -1.0), ("dc_beta", 1.0)])
def test_bad_dc_settings(key, value):
    with pytest.raises(ConfigError, match=f"strategy.{key}="):
        DelayedConfig(**{key: value})


class CountingComm:
    """The real size-1 communicator, counting the collectives a strategy starts."""

    def __init__(self, comm):
        self.inner, self.calls = comm, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def allreduce_async(self, tensor, average=True, channel=0):
        self.calls += 1
        return self.inner.allreduce_async(tensor, average, channel)


def _train(comm, cfg, steps=7, stop_after=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    strategy = make_strategy(cfg, comm, PhaseTimer())
    net = strategy.attach(model, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)) for _ in range(steps)]
    for x, y in batches[:stop_after]:
        strategy.zero_grad()
        F.cross_entropy(net(x), y).backward()
        strategy.synchronize()
        strategy.step()
    return model, strategy, batches


def test_no_rule_adds_a_collective(comm):
    counting = CountingComm(comm)
    _, strategy, _ = _train(counting, DelayedConfig(k=2, compensation="momentum+lr+spike+dc+predict"))
    strategy.finish()
    assert counting.calls == 7  # one reduction per step, as without compensation


def test_state_round_trip_continues_exactly(comm):
    """Stop after 4 of 7 steps, copy model and strategy state into fresh ones, finish: same weights."""
    cfg = DelayedConfig(k=2, compensation="momentum+lr+spike+dc+predict")
    whole, strategy, _ = _train(comm, cfg)
    strategy.finish()

    first, strategy, batches = _train(comm, cfg, stop_after=4)
    strategy.flush()
    state, weights = strategy.state_dict(), {k: v.clone() for k, v in first.state_dict().items()}
    assert [s for s in state["compensation"]["dc_steps"]] == [2, 3]  # the weights of the steps still in flight
    second, resumed, _ = _train(comm, cfg, stop_after=0)
    second.load_state_dict(weights)
    resumed.load_state_dict(state)
    for x, y in batches[4:]:
        resumed.zero_grad()
        F.cross_entropy(second(x), y).backward()
        resumed.synchronize()
        resumed.step()
    resumed.finish()
    for a, b in zip(whole.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_other_rules_is_refused(comm):
    _, strategy, _ = _train(comm, DelayedConfig(k=1, compensation="dc"), stop_after=3)
    strategy.flush()
    state = strategy.state_dict()
    _, other, _ = _train(comm, DelayedConfig(k=1, compensation="predict"), stop_after=0)
    with pytest.raises(ValueError, match="compensation rules"):
        other.load_state_dict(state)


@pytest.mark.parametrize("setting", [{"nesterov": True}, {"dampening": 0.1}, {"maximize": True}])
def test_spike_refuses_what_is_not_heavy_ball(setting):
    # the missed momentum steps it applies at once are heavy ball's; these change them
    from asyncsgd.strategies.compensation import Compensation

    params = [nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, **setting)
    with pytest.raises(ValueError, match="plain SGD with momentum"):
        Compensation(DelayedConfig(k=1, compensation="spike"), params, optimizer, lambda out, ps: out,
                     lambda flat, ps: None)


def test_a_checkpoint_of_the_old_momentum_rule_is_refused(comm):
    # before version 2 the momentum rule did not keep lr/(1-mu): continuing it would change the math
    _, strategy, _ = _train(comm, DelayedConfig(k=1, compensation="momentum"), stop_after=3)
    strategy.flush()
    state = strategy.state_dict()
    assert state["compensation"]["version"] == 2
    _, same, _ = _train(comm, DelayedConfig(k=1, compensation="momentum"), stop_after=0)
    same.load_state_dict(state)  # today's checkpoint resumes
    del state["compensation"]["version"]
    _, other, _ = _train(comm, DelayedConfig(k=1, compensation="momentum"), stop_after=0)
    with pytest.raises(ValueError, match="start the run again"):
        other.load_state_dict(state)

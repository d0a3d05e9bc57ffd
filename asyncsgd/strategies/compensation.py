"""Staleness compensation for delayed-k (``strategy.compensation``): rules that make stale gradients safe.

Under delayed-k the gradient computed at step t, at weights w_t, is applied at
step t+k to weights w_{t+k}. Its staleness, the number of updates applied in
between, is tau_t = min(t, k). Five rules, any combination (``spike+predict``):

``momentum``  Asynchrony acts as implicit momentum (Mitliagkas, Zhang, Hadjis,
              Re, "Asynchrony begets momentum", 2016): with a staleness of k
              the update already carries a momentum of about k/(k+1), so the
              explicit momentum is lowered to
              mu' = max(0, train.momentum - k/(k+1)). In that model the
              implicit momentum comes with its own (1 - mu_implicit) factor on
              the step; a *fixed* delay k adds none (it shifts the gradients,
              it does not average them), so lowering mu alone would shrink the
              effective step lr/(1-mu) (6x at mu=0.9, k=1, which is what the
              study measured: -5.6 pp). The learning rate is therefore scaled
              by (1-mu')/(1-train.momentum): the effective step stays the one
              sync was tuned with, only its split between lr and mu changes.
``spike``     Spike compensation (Kosson, Chiley, Venigalla, Hestness,
              Koster, "Pipelined backpropagation at scale", MLSys 2021): with
              heavy-ball momentum mu a gradient moves the weights by lr times
              1, mu, mu^2, ... over the steps after it is computed; a gradient
              that arrives tau steps late has missed the first tau of those.
              It is applied as w -= lr * (a * v + b * d), v the momentum
              buffer after the step, d = g + weight_decay * w, a = mu^tau,
              b = 1 + mu + ... + mu^(tau-1): the missed part at once, the rest
              as sync would. Each gradient's total effect stays lr/(1-mu).
``lr``        Staleness-aware learning rate (Zhang, Gupta, Lian, Liu, IJCAI
              2016): the gradient of staleness tau is applied with lr / tau
              (lr itself when tau = 0). With a fixed k that is lr / k once the
              pipeline is full, so it changes nothing at k=1.
``dc``        Delay compensation (DC-ASGD, Zheng et al., ICML 2017): the stale
              gradient is corrected with a diagonal outer-product estimate of
              the Hessian, g + lambda * g * g * (w_{t+k} - w_t), elementwise.
              The weights each in-flight gradient was computed at are kept
              (one copy of the parameters per in-flight step). With
              ``strategy.dc_adaptive`` (DC-ASGD-a) lambda = dc_lambda /
              sqrt(m + eps), m a running mean (decay dc_beta) of g * g.
``predict``   Weight prediction (SpecTrain; PipeDream-2BW's idea): the
              gradient of step t is computed at the weights predicted for step
              t+k, w_t + k * (w_t - w_{t-1}), i.e. the last update repeated k
              times (for SGD with momentum, w_t - k * lr * v; with ``spike``,
              whose update is -lr * (a * v + b * d), that whole update k
              times). The true weights are put back right after backward.

Every rule reads only what is identical on every rank: the reduced gradient,
the weights (identical updates keep them identical), k and the step. So every
rank makes the same update and no rule adds a collective. The state a rule
keeps (weights per in-flight step, the last update, DC's mean square) goes into
the strategy's checkpoint.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, List, Tuple

import torch

from ..config import compensation_rules

DC_EPS = 1e-7  # keeps lambda finite where g has always been 0 (DC-ASGD's epsilon)
# what a checkpoint's compensation state means: 2 = the momentum rule keeps lr/(1-mu) (2026-11-30)
RULES_VERSION = 2

Flatten = Callable[[torch.Tensor, List[torch.Tensor]], torch.Tensor]
Unflatten = Callable[[torch.Tensor, List[torch.Tensor]], None]


def implicit_momentum(k: int) -> float:
    """Momentum that a staleness of k adds by itself (Mitliagkas et al.: 1 - 1/(k+1))."""
    return k / (k + 1)


def explicit_momentum(momentum: float, k: int) -> float:
    """The ``momentum`` rule: what is left to ask of the optimizer so that the total stays ``momentum``."""
    return max(0.0, momentum - implicit_momentum(k))


def momentum_rule_lr_scale(momentum: float, k: int) -> float:
    """The ``momentum`` rule's factor on lr: keeps the effective step lr/(1-mu) when mu is lowered."""
    if momentum >= 1.0:  # no finite effective step to keep
        return 1.0
    return (1.0 - explicit_momentum(momentum, k)) / (1.0 - momentum)


def spike_coefficients(momentum: float, tau: int) -> Tuple[float, float]:
    """``spike``: (a, b) for a gradient tau steps late; a*v + b*d replaces v in the update."""
    return momentum ** tau, sum(momentum ** i for i in range(tau))


def staleness(grad_step: int, k: int) -> int:
    """Updates applied between computing the gradient of ``grad_step`` and applying it."""
    return min(grad_step, k)


class Compensation:
    """The rules of one delayed-k strategy; it calls the hooks at fixed points of each step.

    ``begin_step`` (before forward), ``after_backward`` (before the gradient is
    reduced), ``correct`` (the reduced flat gradient, before it is applied),
    ``before_update`` / ``after_update`` (around the optimizer step).
    """

    def __init__(self, cfg, params: List[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 flatten: Flatten, unflatten: Unflatten):
        self.rules = compensation_rules(cfg.compensation)
        self.k = cfg.k
        self.params, self.optimizer = params, optimizer
        self._flatten, self._unflatten = flatten, unflatten
        numel = sum(p.numel() for p in params)
        like = params[0]

        def flat() -> torch.Tensor:
            return torch.zeros(numel, dtype=like.dtype, device=like.device)

        if "momentum" in self.rules:
            for group in optimizer.param_groups:
                group["lr"] *= momentum_rule_lr_scale(group["momentum"], self.k)
                group["momentum"] = explicit_momentum(group["momentum"], self.k)
        # the rates before_update found (the configured rate, after the momentum rule and the
        # learning-rate schedule), put back by after_update
        self.rates: List[float] = []
        if "spike" in self.rules:
            for group in optimizer.param_groups:
                # the missed momentum steps are heavy ball's: Nesterov, dampening or maximize change them
                if group.get("nesterov") or group.get("dampening") or group.get("maximize"):
                    raise ValueError("strategy.compensation=spike needs plain SGD with momentum "
                                     "(no nesterov, dampening or maximize)")
            # per group, its parameters' weights before the update (weight decay's w in d), then d itself
            self.weights_before: List[List[torch.Tensor]] = [[torch.empty_like(p) for p in group["params"]]
                                                             for group in optimizer.param_groups]
            self.spike_steps: List[Tuple[float, float]] = []  # (lr, b) per group for the update under way
        if "dc" in self.rules:
            self.dc_lambda, self.dc_adaptive, self.dc_beta = cfg.dc_lambda, cfg.dc_adaptive, cfg.dc_beta
            self.free: Deque[torch.Tensor] = deque(flat() for _ in range(self.k + 1))
            self.computed_at: Deque[Tuple[int, torch.Tensor]] = deque()  # (step, weights), oldest first
            self.drift = flat()  # scratch: w_now - w_then
            self.mean_square = flat() if self.dc_adaptive else None
        if "predict" in self.rules:
            self.last_update = flat()  # w_t - w_{t-1}; zero until the first update
            # w_t, put back after backward; the step's one update starts from it (see after_update)
            self.true_weights = flat()
            self.predicted = flat()  # scratch: w_t + k (w_t - w_{t-1}), filled each step without allocating

    # -- hooks, in the order a step calls them --------------------------------
    def begin_step(self) -> None:
        """``predict``: move to the weights predicted for the step this gradient will be applied at."""
        if "predict" in self.rules:
            self._flatten(self.true_weights, self._data())
            if self.k > 0:
                torch.add(self.true_weights, self.last_update, alpha=self.k, out=self.predicted)
                self._unflatten(self.predicted, self._data())

    def after_backward(self, step: int) -> None:
        """``dc``: remember the weights the gradient was computed at; ``predict``: back to the true weights."""
        if "dc" in self.rules:
            weights = self._flatten(self.free.popleft(), self._data())
            self.computed_at.append((step, weights))
        if "predict" in self.rules and self.k > 0:
            self._unflatten(self.true_weights, self._data())

    def correct(self, grad_step: int, grad: torch.Tensor) -> None:
        """``dc``: correct the reduced flat gradient of ``grad_step`` in place for the weights it missed."""
        if "dc" not in self.rules:
            return
        step, then = self.computed_at.popleft()
        assert step == grad_step, f"dc: weights of step {step} met the gradient of step {grad_step}"
        # g*g*(w_now - w_then), computed in place: a few passes over flat buffers, no allocation
        term = self._flatten(self.drift, self._data()).sub_(then).mul_(grad).mul_(grad)
        if self.dc_adaptive:
            self.mean_square.mul_(self.dc_beta).addcmul_(grad, grad, value=1.0 - self.dc_beta)
            root = then.copy_(self.mean_square).add_(DC_EPS).sqrt_()  # w_then's buffer is free now
            grad.addcdiv_(term, root, value=self.dc_lambda)
        else:
            grad.add_(term, alpha=self.dc_lambda)
        self.free.append(then)

    def before_update(self, grad_step: int) -> None:
        """``lr``: lr / staleness for this gradient; ``spike``: the optimizer's step scaled by a."""
        tau = staleness(grad_step, self.k)
        self.rates = [group["lr"] for group in self.optimizer.param_groups]
        if "lr" in self.rules and tau > 0:
            for group in self.optimizer.param_groups:
                group["lr"] /= tau
        if "spike" in self.rules:
            self.spike_steps = []
            for group, before in zip(self.optimizer.param_groups, self.weights_before):
                a, b = spike_coefficients(group["momentum"], tau)
                self.spike_steps.append((group["lr"], b))
                group["lr"] *= a
                torch._foreach_copy_(before, [p.data for p in group["params"]])

    def after_update(self, applied: bool = True) -> None:
        """``spike``: the missed part, w -= lr * b * (g + wd * w_before), unless the update was skipped
        (a non-finite gradient); ``predict``: the update just made, w_{t+1} - w_t. A step makes at
        most one update, after ``after_backward`` put w_t back; the drain at the end makes several,
        but predicts nothing after."""
        if "spike" in self.rules:
            for group, before, (lr, b) in zip(self.optimizer.param_groups, self.weights_before, self.spike_steps):
                if applied and b > 0:  # d = g + wd * w_before, made in w_before's scratch: one kernel per list
                    torch._foreach_mul_(before, group["weight_decay"])
                    torch._foreach_add_(before, [p.grad for p in group["params"]])
                    torch._foreach_add_([p.data for p in group["params"]], before, alpha=-lr * b)
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            group["lr"] = rate
        if "predict" in self.rules:
            self._flatten(self.last_update, self._data()).sub_(self.true_weights)

    def _data(self) -> List[torch.Tensor]:
        return [p.data for p in self.params]

    # -- checkpoint -------------------------------------------------------------
    def state_dict(self) -> Dict[str, object]:
        state: Dict[str, object] = {"rules": list(self.rules), "version": RULES_VERSION}
        if "dc" in self.rules:
            state["dc_steps"] = [step for step, _ in self.computed_at]
            state["dc_weights"] = [w.clone() for _, w in self.computed_at]
            if self.dc_adaptive:
                state["dc_mean_square"] = self.mean_square.clone()
        if "predict" in self.rules:
            state["last_update"] = self.last_update.clone()
        return state

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if list(state.get("rules", [])) != list(self.rules):
            raise ValueError(f"checkpoint was written with strategy.compensation rules {state.get('rules')}, "
                             f"this run has {list(self.rules)}")
        if "momentum" in self.rules and int(state.get("version", 1)) < 2:
            # version 1 applied mu' with the configured lr, a six-fold smaller step at K=1: resuming
            # under today's rule would change the run's arithmetic halfway without a word
            raise ValueError("checkpoint was written by the strategy.compensation=momentum rule of before "
                             "2026-11-30, which did not keep lr/(1-mu); this version would continue it "
                             "with another update rule: start the run again")
        if "dc" in self.rules:
            self.free.extend(w for _, w in self.computed_at)
            self.computed_at.clear()
            for step, saved in zip(state["dc_steps"], state["dc_weights"]):
                self.computed_at.append((int(step), self.free.popleft().copy_(saved)))
            if self.dc_adaptive:
                self.mean_square.copy_(state["dc_mean_square"])
        if "predict" in self.rules:
            self.last_update.copy_(state["last_update"])

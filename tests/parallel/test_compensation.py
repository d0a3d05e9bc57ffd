"""Delayed-k with staleness compensation, on real multi-process runs, against an explicit reference.

:func:`reference_compensated` below writes each rule out on plain tensors, one
parameter at a time, from its paper's formula (not from the strategy's flat
buffers), so a 2-worker run that matches it to 1e-5 pins the semantics down:
every rank applied the same compensated update, decided on reduced quantities.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import pytest
import torch

from ..conftest import needs_mpi, read_summary, run_cli
from .helpers import COMMON, global_batches, max_relative_error, reference_sgd, train_and_load

pytestmark = pytest.mark.slow

TOL = 1e-5
P2 = ["world_size=2", "train.batch_size=16"]
DC_EPS = 1e-7


def reference_compensated(rules: Sequence[str], k: int, batch: int = 32, steps: int = 60, lr=0.05, momentum=0.9,
                          weight_decay=0.001, seed=3, dc_lambda=2.0, dc_adaptive=True,
                          dc_beta=0.95, cosine: bool = False) -> Dict[str, torch.Tensor]:
    """Delayed-k SGD on digits (MLP) with the named compensation rules, written out.

    Data order and model as in helpers.reference_sgd. The gradient of step t is
    computed at w_t (or, with ``predict``, at w_t + k * (w_t - w_{t-1})) and
    applied at step t+k; its staleness is min(t, k).
    The update is heavy ball written out, v <- mu*v + d, w <- w - lr*v with
    d = g + weight_decay*w (torch's SGD, dampening 0).
    - momentum: mu = max(0, momentum - k/(k+1)) and lr scaled by (1 - mu)/(1 - momentum);
    - lr: that gradient is applied with lr / staleness (lr when the staleness is 0);
    - spike: w <- w - lr*(a*v + b*d), a = mu**staleness, b = 1 + mu + ... + mu**(staleness-1);
    - dc: it is replaced by g + lambda * g*g * (w_now - w_at), lambda = dc_lambda, or with
      dc_adaptive dc_lambda / sqrt(m + eps), m <- beta*m + (1-beta)*g*g before use.
    ``cosine``: lr (after the momentum rule) times (1 + cos(pi * t / steps)) / 2 for the gradient of
    step t, under every rule (spike's missed part included).
    """
    import torch.nn.functional as F

    from asyncsgd.config import DigitsConfig, MLPConfig
    from asyncsgd.data import load_dataset
    from asyncsgd.models import build_model

    data = load_dataset(DigitsConfig(), seed)
    x_all, y_all = data.train.tensors
    torch.manual_seed(seed)
    model = build_model(MLPConfig(), data.input_shape, data.num_classes)
    params = list(model.parameters())
    mu = max(0.0, momentum - k / (k + 1)) if "momentum" in rules else momentum
    if "momentum" in rules:
        lr = lr * (1 - mu) / (1 - momentum)
    velocity = [torch.zeros_like(p) for p in params]
    last_update = [torch.zeros_like(p) for p in params]
    mean_square = [torch.zeros_like(p) for p in params]
    owed: List[tuple] = []  # (step, gradients, weights they were computed at)

    def apply(step: int, grads: List[torch.Tensor], computed_at: List[torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(params):
                g = grads[i]
                if "dc" in rules:
                    if dc_adaptive:
                        mean_square[i] = dc_beta * mean_square[i] + (1 - dc_beta) * g * g
                        lam = dc_lambda / torch.sqrt(mean_square[i] + DC_EPS)
                    else:
                        lam = dc_lambda
                    g = g + lam * g * g * (p - computed_at[i])
                p.grad = g
            staleness = min(step, k)
            step_lr = lr * (0.5 * (1 + math.cos(math.pi * step / steps)) if cosine else 1.0)
            step_lr = step_lr / staleness if "lr" in rules and staleness > 0 else step_lr
            a, b = (mu ** staleness, sum(mu ** i for i in range(staleness))) if "spike" in rules else (1.0, 0.0)
            for i, p in enumerate(params):
                d = p.grad + weight_decay * p
                velocity[i] = mu * velocity[i] + d
                last_update[i] = -step_lr * (a * velocity[i] + b * d)
                p.add_(last_update[i])

    for step, idx in enumerate(global_batches(len(x_all), batch, steps, seed)):
        true = [p.detach().clone() for p in params]
        if "predict" in rules:
            with torch.no_grad():
                for p, d in zip(params, last_update):
                    p.add_(k * d)
        model.zero_grad()
        F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        owed.append((step, [p.grad.clone() for p in params], [p.detach().clone() for p in params]))
        with torch.no_grad():
            for p, w in zip(params, true):
                p.copy_(w)
        if len(owed) > k:
            apply(*owed.pop(0))
    while owed:
        apply(*owed.pop(0))
    return {name: v.detach().clone() for name, v in model.state_dict().items()}


def _delayed(k: int, compensation: str, *extra: str) -> List[str]:
    return ["strategy=delayed", f"strategy.k={k}", f"strategy.compensation={compensation}", *extra]


ALL = "momentum+lr+spike+dc+predict"


@pytest.mark.parametrize("rules", ["momentum+lr", "dc+predict", "spike+predict"])
def test_rules_are_their_explicit_formulas_on_two_workers(workdir, rules):
    final = train_and_load(workdir, rules, ["backend=gloo", *_delayed(2, rules), *P2])
    assert max_relative_error(final, reference_compensated(rules.split("+"), k=2)) < TOL
    # and the rules do something: the result is not plain delayed-2 SGD
    assert max_relative_error(final, reference_sgd("mlp", batch=32, steps=60, k=2)) > 1e-3


def test_rules_under_a_cosine_schedule_scale_the_scheduled_rate(workdir):
    """lr, spike (its missed part too) and predict apply the rate scheduled for the gradient's own
    step, K steps before it is applied; the rules' own scaling is put back after each update."""
    rules = "lr+spike+predict"
    final = train_and_load(workdir, "cosine", ["backend=gloo", *_delayed(2, rules), *P2,
                                               "train.lr_schedule=cosine"])
    assert max_relative_error(final, reference_compensated(rules.split("+"), k=2, cosine=True)) < TOL
    assert max_relative_error(final, reference_compensated(rules.split("+"), k=2)) > 1e-2


@needs_mpi
def test_all_rules_on_mpi(workdir):
    final = train_and_load(workdir, "mpi", ["backend=mpi", *_delayed(2, ALL), *P2])
    assert max_relative_error(final, reference_compensated(ALL.split("+"), k=2)) < TOL


def test_one_worker_with_a_fixed_dc_lambda_matches_the_same_reference(workdir):
    """The reference is a global-batch computation: one worker with batch 32 must match it too.

    lr 0.01: at k=1 the momentum rule turns lr 0.05 into 0.3 (mu 0.4, the same lr/(1-mu)), where
    60 steps amplify a 1e-7 change of the initial weights to 1e-3, rounding included."""
    extra = ["strategy.dc_adaptive=false", "strategy.dc_lambda=0.5", "train.lr=0.01"]
    final = train_and_load(workdir, "p1", ["backend=gloo", *_delayed(1, ALL, *extra), "world_size=1",
                                           "train.batch_size=32"])
    assert max_relative_error(final, reference_compensated(ALL.split("+"), k=1, lr=0.01, dc_adaptive=False,
                                                           dc_lambda=0.5)) < TOL


def test_reference_rules_reduce_to_plain_delayed_sgd_where_they_should():
    """The reference itself: lr at k=1 and every rule at k=0 change nothing (cheap, single process).
    Up to rounding: the reference writes heavy ball out, reference_sgd uses torch's SGD."""
    assert max_relative_error(reference_compensated(["lr"], k=1, steps=20),
                              reference_sgd("mlp", batch=32, steps=20, k=1)) < 1e-6
    assert max_relative_error(reference_compensated(ALL.split("+"), k=0, steps=20),
                              reference_sgd("mlp", batch=32, steps=20)) < 1e-6


def test_compensated_run_resumes_exactly(workdir):
    """dc's weights per in-flight step, its mean square and predict's last update survive a kill:
    the resumed run still ends on the explicit reference."""
    args = ["backend=gloo", *_delayed(2, ALL), *P2]
    run_dir = workdir / "interrupted"
    killed = run_cli([*COMMON, *args, "checkpoint.every_steps=15", "fault.rank=1", "fault.step=40",
                      "fault.kind=kill", "backend.timeout_s=20", f"hydra.run.dir={run_dir}"], cwd=workdir,
                     timeout=120)
    assert killed.returncode != 0 and read_summary(run_dir)["status"] == "failed"
    resumed = run_cli([*COMMON, *args, "checkpoint.every_steps=15", "resume=auto", f"hydra.run.dir={run_dir}"],
                      cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000030.pt" in resumed.stderr
    final = torch.load(run_dir / "model_final.pt", weights_only=True)
    assert max_relative_error(final, reference_compensated(ALL.split("+"), k=2)) < TOL

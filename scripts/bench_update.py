"""Cost of the update on the critical path: torch's CPU SGD variants, per layer.

For every parameter tensor of a model (and for the whole model), times one
``optimizer.step()`` of torch.optim.SGD in its three implementations — the
per-tensor loop (``foreach=False``, torch's CPU default), ``foreach=True`` and
``fused=True`` — with momentum and weight decay, and sync's work around its
reduction before and after the gradients became views of the reduced buffer.
Also checks that the variants give the same parameters (max relative
difference after a few steps). One thread; medians of interleaved repeats.

    .venv/bin/python scripts/bench_update.py                      # design.md's CNN, 3x32x32
    .venv/bin/python scripts/bench_update.py --model mlp --shape 64
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

from asyncsgd.config import GROUPS
from asyncsgd.models import build_model

VARIANTS = {"default": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def timed(fn: Callable[[], None], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (after two warm-up calls)."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make(params: List[torch.nn.Parameter], variant: str, momentum: float, wd: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.01, momentum=momentum, weight_decay=wd, **VARIANTS[variant])


def step_times(named: Dict[str, List[torch.nn.Parameter]], momentum: float, wd: float, repeats: int) -> Dict:
    """{group: {variant: seconds per step}}, variants interleaved within each group."""
    out = {}
    for group, params in named.items():
        for p in params:
            p.grad = torch.randn_like(p)
        opts = {v: make(params, v, momentum, wd) for v in VARIANTS}
        samples = {v: [] for v in VARIANTS}
        for _ in range(5):  # interleave: noise hits every variant alike
            for v, opt in opts.items():
                samples[v].append(timed(opt.step, repeats))
        out[group] = {v: statistics.median(s) for v, s in samples.items()}
    return out


def agreement(model_fn, momentum: float, wd: float, steps: int = 20) -> Dict[str, float]:
    """Max relative parameter difference of each variant from the default after ``steps`` steps."""
    finals = {}
    for v in VARIANTS:
        torch.manual_seed(0)
        model = model_fn()
        opt = make(list(model.parameters()), v, momentum, wd)
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        finals[v] = [p.detach().clone() for p in model.parameters()]
    return {v: max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(finals[v], finals["default"]))
            for v in VARIANTS}


def averaging_times(params: List[torch.nn.Parameter], world: int, repeats: int) -> Dict[str, float]:
    """sync's work around its reduction, besides the reduction itself, for the whole model.

    Before: gradients copied into a flat buffer, the buffer divided by P after the
    reduction (the backend's pass), copied back. After: the gradients are views of
    the flat buffer (backward writes it) and one in-place multiply by 1/P remains.
    """
    grads = [torch.randn_like(p) for p in params]
    flat = torch.randn(sum(g.numel() for g in grads) + 1)

    def before():
        offset = 0
        for g in grads:
            flat[offset: offset + g.numel()].copy_(g.reshape(-1))
            offset += g.numel()
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def after():
        flat.mul_(1.0 / world)

    samples = {"copy in, divide, copy out": [], "multiply in place": []}
    for _ in range(5):
        samples["copy in, divide, copy out"].append(timed(before, repeats))
        samples["multiply in place"].append(timed(after, repeats))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)

    def model_fn():
        return build_model(GROUPS["model"][args.model](), tuple(args.shape), args.classes)

    model = model_fn()
    named = {name: [param] for name, param in model.named_parameters()}
    named["(whole model)"] = list(model.parameters())
    times = step_times(named, args.momentum, args.weight_decay, args.repeats)
    print(f"torch {torch.__version__}, model={args.model} {args.shape}, SGD momentum={args.momentum} "
          f"weight_decay={args.weight_decay}, 1 thread; ms per optimizer.step()\n")
    print(f"| {'tensor':24} | {'numel':>9} | " + " | ".join(f"{v:>8}" for v in VARIANTS) + " |")
    print(f"|{'-' * 26}|{'-' * 11}|" + "|".join("-" * 10 for _ in VARIANTS) + "|")
    for group, row in times.items():
        numel = sum(q.numel() for q in named[group])
        print(f"| {group:24} | {numel:>9} | " + " | ".join(f"{row[v] * 1e3:8.3f}" for v in VARIANTS) + " |")
    print("\nmax relative difference from default after 20 steps:",
          ", ".join(f"{v} {d:.1e}" for v, d in agreement(model_fn, args.momentum, args.weight_decay).items()))
    avg = averaging_times(list(model.parameters()), 2, args.repeats)
    print("\nsync's work around the reduction (P=2), ms: " + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in avg.items()))


if __name__ == "__main__":
    main()

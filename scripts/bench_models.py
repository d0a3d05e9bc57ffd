"""Per-model cost table: parameters, gradient bytes per iteration, CPU time per iteration.

One process, no communication: forward, loss, backward and an SGD update on
random input, timed after warm-up steps, median over the timed steps. The
gradient bytes are what each strategy must allreduce per iteration, so this
table gives the compute/communication ratio that decides which strategy wins.

    .venv/bin/python scripts/bench_models.py                                  # every model, 3x32x32, batch 32
    .venv/bin/python scripts/bench_models.py --models alexnet --shape 3 224 224
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from asyncsgd.config import GROUPS
from asyncsgd.models import build_model, count_parameters, loss_and_logits

LINK_BITS_S = 1e9  # the 1 Gbit/s link of design.md's emulated cluster


def bench(name: str, shape, batch: int, classes: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    cfg = GROUPS["model"][name]()
    model = build_model(cfg, tuple(shape), classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *shape), torch.randint(classes, (batch,))
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_and_logits(model(x), y, cfg)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "model": name,
        "params": count_parameters(model),
        "grad_bytes": grad_bytes,
        "ms": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        # Ring allreduce, P=2: each worker sends and receives the whole gradient once.
        "link_ms": 1000 * grad_bytes * 8 / LINK_BITS_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(GROUPS["model"]))
    parser.add_argument("--shape", nargs=3, type=int, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--batch", type=int, default=32, help="samples per iteration")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = "x".join(map(str, args.shape))
    print(f"<!-- {platform.node()}: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
          f"load average before {os.getloadavg()[0]:.1f} -->")
    print(f"| model | input | batch | parameters | gradient MB / iteration | CPU ms / iteration (median, min) "
          f"| 1 Gbit/s allreduce ms (P=2, computed) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = bench(name, args.shape, args.batch, args.classes, args.steps, args.warmup)
        print(f"| {name} | {shape} | {args.batch} | {r['params']:,} | {r['grad_bytes'] / 1e6:.1f} "
              f"| {r['ms']:.0f} ({r['ms_min']:.0f}) | {r['link_ms']:.0f} |", flush=True)
    print(f"<!-- load average after {os.getloadavg()[0]:.1f} -->")


if __name__ == "__main__":
    main()

"""The runner's own cost per iteration, against a bare PyTorch loop.

    scripts/bench-overhead                                  # design.md's CNN (synthetic 3x32x32) and the digits MLP
    scripts/bench-overhead --cases cnn --repeats 7 --steps 120

At one worker the runner (``asyncsgd-run world_size=1``, strategies ``nocomm``
and ``sync``) does what a plain training loop does plus its bookkeeping:
phase timers, the loss and accuracy of every step, metrics rows, the stop
check. The bare loop is written out below (:func:`bare_loop`): the same model,
data, batch, optimizer and seed (it reads the config of a runner's run dir),
one torch thread, a standard DataLoader reading samples one by one,
``zero_grad, forward, loss, backward, step`` and nothing else.

Both are timed the same way: the period between the ends of consecutive steps
(the runner's from ``wall_s`` of its metrics rows, which includes everything
between two steps), median over the steps after warm-up. Runs are interleaved
(bare, nocomm, sync, bare, ...) so machine noise hits each alike; the table
gives the median of the per-run medians and the ratio to the bare loop.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from .io import atomic_write_text

CASES = {
    "cnn": ["dataset=synthetic", "dataset.num_test=64", "model=cnn", "train.batch_size=32"],  # design.md's case
    "mlp": ["dataset=digits", "model=mlp", "train.batch_size=32"],  # the default run's network
}
RUNNERS = ("nocomm", "sync")
WARMUP = 10  # steps left out of every median


def step_periods(ends: List[float]) -> List[float]:
    """Seconds between the ends of consecutive steps, warm-up left out."""
    return [b - a for a, b in zip(ends[WARMUP:], ends[WARMUP + 1:])]


# ------------------------------------------------------------------ the bare loop
class _Samples:
    """A dataset as a plain map-style one: ``len`` and one sample per index, nothing batched."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def bare_loop(run_dir: Path, steps: int) -> List[float]:
    """A plain PyTorch training loop with the run's model, data, batch and optimizer; returns
    the time at the end of each step."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from .data import load_dataset
    from .models import build_model
    from .runinfo import load_config
    from .train import sgd_factory

    cfg = load_config(run_dir)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    optimizer = sgd_factory(cfg)(model.parameters())  # the runner's optimizer, so only the loop differs
    # sample by sample, as DataLoader reads a TensorDataset (the runner's loaders fetch an in-memory
    # batch whole: asyncsgd.dataset_base.Batch, part of what is compared)
    loader = DataLoader(_Samples(data.train), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    ends: List[float] = []
    while len(ends) < steps:
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            ends.append(time.perf_counter())
            if len(ends) == steps:
                break
    return ends


# ------------------------------------------------------------------ the runner
def runner_overrides(case: str, strategy: str, steps: int) -> List[str]:
    return [*CASES[case], f"strategy={strategy}", "backend=gloo", "world_size=1", "train.threads=1",
            f"train.max_steps={steps}", "train.epochs=100000", "train.eval_every_epochs=0",
            "train.warmup_steps=10", "progress_bar=false"]


def run_runner(run_dir: Path, overrides: List[str]) -> List[float]:
    cmd = [sys.executable, "-m", "asyncsgd.cli", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"runner failed ({' '.join(overrides)}):\n{result.stderr[-2000:]}")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics[metrics["kind"] == "iter"]["wall_s"].tolist()


def run_bare(config_dir: Path, steps: int) -> List[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "asyncsgd.bench_overhead", "--bare", str(config_dir), "--steps", str(steps)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"bare loop failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


# ------------------------------------------------------------------ report
def summarize(samples: Dict[str, List[float]]) -> pd.DataFrame:
    """Per-run median periods (seconds) -> median ms per iteration and ratio to the bare loop."""
    bare = statistics.median(samples["bare"])
    rows = []
    for name, medians in samples.items():
        t = statistics.median(medians)
        rows.append({"loop": name, "ms_per_iter": t * 1e3, "spread_ms": (max(medians) - min(medians)) * 1e3,
                     "vs_bare": t / bare, "overhead_pct": (t / bare - 1) * 100})
    return pd.DataFrame(rows)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="bench-overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated from {','.join(CASES)}")
    p.add_argument("--steps", type=int, default=150, help="steps per run (the first 10 are warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each loop, interleaved")
    p.add_argument("--out", type=Path, default=None, help="directory for run dirs and overhead.md")
    p.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one bare run
    args = p.parse_args(argv)
    if args.bare is not None:
        print(json.dumps(bare_loop(args.bare, args.steps)))
        return
    cases = args.cases.split(",")
    if any(c not in CASES for c in cases) or args.steps < WARMUP + 5 or args.repeats < 1:
        p.error(f"--cases from {','.join(CASES)}; --steps >= {WARMUP + 5}; --repeats >= 1")
    out = args.out or Path("results") / "bench-overhead" / pd.Timestamp.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        text = measure(cases, args.steps, args.repeats, out)
    except RuntimeError as exc:
        print(f"bench-overhead: {exc}", file=sys.stderr)
        sys.exit(1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "overhead.md", text)
    print(text + f"\nwritten: {out / 'overhead.md'}")


def measure(cases: List[str], steps: int, repeats: int, out: Path) -> str:
    """Interleaved runs of the bare loop and the runner per case; the report's text."""
    text = (f"runner (asyncsgd-run world_size=1, backend=gloo, 1 thread) against a bare PyTorch loop; "
            f"{steps} steps per run, {repeats} interleaved repeats; period between step ends, "
            f"median of per-run medians\n")
    for case in cases:
        config_dir = out / case / "config"
        run_runner(config_dir, runner_overrides(case, "nocomm", WARMUP + 5))  # its config feeds the bare loop
        samples: Dict[str, List[float]] = {"bare": [], **{s: [] for s in RUNNERS}}
        for repeat in range(repeats):
            samples["bare"].append(statistics.median(step_periods(run_bare(config_dir, steps))))
            for strategy in RUNNERS:
                ends = run_runner(out / case / f"{strategy}-{repeat}", runner_overrides(case, strategy, steps))
                samples[strategy].append(statistics.median(step_periods(ends)))
        text += f"\n{case} ({' '.join(CASES[case])}):\n\n"
        text += summarize(samples).to_markdown(index=False, floatfmt=".3f") + "\n"
    return text


if __name__ == "__main__":
    main()

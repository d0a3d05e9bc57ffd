"""A run stopped at a step and resumed ends exactly where an uninterrupted run ends.

Each case kills a worker (SIGKILL, no chance to clean up) after a periodic
checkpoint, resumes with ``resume=auto`` in the same run dir, and compares
``model_final.pt`` and the metrics with a run that was never interrupted and
never checkpointed (so checkpointing itself is shown not to change the math).
"""
from __future__ import annotations

import csv

import pytest
import torch

from ..conftest import BACKENDS, read_summary, run_cli
from .helpers import COMMON, max_relative_error, train_and_load

STRATEGIES = {
    "sync": ["strategy=sync"],
    # per-bucket optimizers with momentum: their state must survive the checkpoint
    "layerwise": ["strategy=layerwise", "strategy.wait_at=forward"],
    # two reduced gradients wait in the queue at the checkpoint
    "delayed2": ["strategy=delayed", "strategy.k=2"],
}

KILL_AT = 40  # the checkpoint of step 30 is the newest one when rank 1 dies
EVERY = 15


def _iter_losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["kind"] == "iter"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_run(workdir, backend, strategy):
    args = [f"backend={backend}", "model=lenet", "world_size=2", "train.batch_size=16", *STRATEGIES[strategy]]
    reference = train_and_load(workdir, "reference", args)

    run_dir = workdir / "interrupted"
    killed = run_cli([*COMMON, *args, f"checkpoint.every_steps={EVERY}", "checkpoint.keep=2",
                      "fault.rank=1", f"fault.step={KILL_AT}", "fault.kind=kill", "backend.timeout_s=20",
                      f"hydra.run.dir={run_dir}"], cwd=workdir, timeout=120)
    assert killed.returncode != 0
    assert read_summary(run_dir)["status"] == "failed"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000015.pt", "step-00000030.pt"]

    resumed = run_cli([*COMMON, *args, f"checkpoint.every_steps={EVERY}", "resume=auto",
                       f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "step-00000030.pt" in resumed.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "complete" and summary["steps"] == 60
    # the earlier attempt's failure is not carried into the finished run's summary
    assert summary["error"] is None and summary["failed_rank"] is None and summary["finished_at"]
    final = torch.load(run_dir / "model_final.pt", weights_only=True)
    assert max_relative_error(final, reference) <= 1e-6

    # the metrics continue the same file: one row per step 0..59, losses as in the reference
    losses, expected = _iter_losses(run_dir), _iter_losses(workdir / "reference")
    assert sorted(losses) == list(range(60))
    assert max(abs(losses[s] - expected[s]) / abs(expected[s]) for s in losses) <= 1e-6


@pytest.mark.slow
def test_resume_from_an_epoch_checkpoint(workdir):
    """checkpoint.every_epochs: the position is the start of the next epoch (delayed k=1 keeps its queue)."""
    args = ["backend=gloo", "strategy=delayed", "strategy.k=1", "train.epochs=2", "train.eval_every_epochs=1",
            "train.lr=0.05", "train.momentum=0.9", "seed=3"]
    whole = workdir / "whole"
    result = run_cli([*args, "checkpoint.every_epochs=1", f"hydra.run.dir={whole}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    steps_per_epoch = 1437 // 32
    first = whole / "checkpoints" / f"step-{steps_per_epoch:08d}.pt"
    assert first.exists()

    resumed_dir = workdir / "resumed"
    result = run_cli([*args, f"resume={first}", f"hydra.run.dir={resumed_dir}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(whole / "model_final.pt", weights_only=True)
    b = torch.load(resumed_dir / "model_final.pt", weights_only=True)
    assert max_relative_error(b, a) <= 1e-6
    assert read_summary(resumed_dir)["final_test_acc"] == read_summary(whole)["final_test_acc"]
    with open(resumed_dir / "metrics.csv") as f:
        epochs = [r for r in csv.DictReader(f) if r["kind"] == "epoch"]
    assert [int(r["step"]) for r in epochs] == [steps_per_epoch, 2 * steps_per_epoch]

"""Real data: LeNet learns Fashion-MNIST, read from Debian's package where it installs it.

./scripts/test installs dataset-fashion-mnist as root (./scripts/setup-data); where
the package cannot be installed this test skips and says so. The accuracy bound is
measured, not hoped for: one epoch of sync SGD at this setting (global batch 128,
lr 0.04, momentum 0.9, 469 steps) scored 86.0% (a 1-worker run with batch 128,
which sees the same batches); 84% leaves room for the floating-point summation
order of other machines. The Fashion-MNIST benchmark's small two-convolution
networks reach 90-92% after full training.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from asyncsgd.image_data import SYSTEM_ROOTS

from ..conftest import read_summary, run_cli

FASHION = Path(SYSTEM_ROOTS["fashion_mnist"])

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                       reason=f"Fashion-MNIST is not installed in {FASHION} (Debian's dataset-fashion-mnist: "
                              "as root, ./scripts/setup-data)"),
]

MEASURED_ONE_EPOCH = 0.860
MARGIN = 0.02


def test_lenet_learns_fashion_mnist_on_two_workers_in_one_epoch(workdir):
    run_dir = workdir / "run"
    result = run_cli(["dataset=fashion_mnist", "model=lenet", "backend=gloo", "world_size=2", "train.batch_size=64",
                      "train.epochs=1", "train.lr=0.04", "train.momentum=0.9", "train.eval_every_steps=200",
                      f"hydra.run.dir={run_dir}"], cwd=workdir)  # no dataset.root: the package's place
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"idx files in {FASHION}" in result.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "complete" and summary["steps"] == 60000 // 128
    assert summary["final_test_acc"] >= MEASURED_ONE_EPOCH - MARGIN
    assert summary["collapse"] is None
    # evaluated within the epoch too (steps 200 and 400) and at its end, each timed apart from training
    with open(run_dir / "metrics.csv") as f:
        evals = [(r["kind"], int(r["step"])) for r in csv.DictReader(f) if r["test_acc"]]
    assert evals == [("eval", 200), ("eval", 400), ("epoch", 468)]
    assert 0 < summary["eval_s"] < summary["train_wall_s"]

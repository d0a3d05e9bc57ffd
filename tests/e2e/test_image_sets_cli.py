"""asyncsgd-run on on-disk image sets: bad roots stop before launch; real files train end to end."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .. import conftest


def run_cli(args, tmp_path: Path, timeout: float = 240, env_extra=None) -> subprocess.CompletedProcess:
    """The CLI in ``tmp_path`` with its run dir at ``tmp_path/run``."""
    return conftest.run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=timeout,
                            env_extra=env_extra)


@pytest.mark.slow  # a few seconds each: the CLI imports torch and torchvision
@pytest.mark.parametrize(
    "args, expected",
    [
        (["dataset=mnist"], "dataset=mnist needs dataset.root=DIR (or $ASYNCSGD_DATA)"),
        (["dataset=cifar10", "dataset.root={tmp}"], "cifar-10-batches-py lacks data_batch_1"),
        (["dataset=imagenet", "dataset.root={tmp}"], "has no train/ folder"),
    ],
    ids=["mnist-no-root", "cifar10-empty-root", "imagenet-no-train"],
)
def test_bad_root_exits_2_with_one_line_before_any_worker(args, expected, tmp_path):
    result = run_cli([a.format(tmp=tmp_path) for a in args], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncsgd-run: error: ") and expected in lines[0]
    assert not (tmp_path / "run").exists()  # nothing was launched, no run dir


def _rows(run_dir: Path):
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_mnist_files_train_to_accuracy_on_two_workers(mnist_root, tmp_path):
    """The fixture's pixels encode the label: 200 images learnt by LeNet prove images and labels travel together."""
    result = run_cli(
        ["dataset=mnist", "model=lenet", "backend=gloo", "world_size=2", "train.batch_size=8",
         "train.epochs=8", "train.lr=0.02"],
        tmp_path, env_extra={"ASYNCSGD_DATA": str(mnist_root)},  # the default root
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["dataset"] == "mnist"
    assert summary["steps"] == 8 * (200 // 16)
    assert summary["final_test_acc"] >= 0.9
    assert summary["config"]["dataset"]["root"] == str(mnist_root)


@pytest.mark.slow
def test_image_folder_trains_with_decoding_processes(folder_root, tmp_path):
    result = run_cli(
        ["dataset=imagenet", f"dataset.root={folder_root}", "dataset.size=32", "dataset.workers=1",
         "model=googlenet", "backend=gloo", "world_size=2", "train.batch_size=2", "train.max_steps=3"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 3
    assert summary["final_test_acc"] is not None and 0.0 <= summary["final_test_acc"] <= 1.0
    # GoogLeNet for 3 classes with its auxiliary classifiers: their parameters are trained and counted.
    assert summary["parameters"] > 9_000_000 and summary["gradient_bytes"] == 4 * summary["parameters"]
    assert [int(r["step"]) for r in _rows(tmp_path / "run") if r["kind"] == "iter"] == [0, 1, 2]

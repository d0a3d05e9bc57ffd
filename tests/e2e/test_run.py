"""asyncsgd-run end to end: the run dir a user gets, and multirun."""
from __future__ import annotations

import csv

import pytest
import torch

from ..conftest import BACKENDS, read_summary, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_digits_run_writes_every_documented_output(workdir, backend):
    run_dir = workdir / "run"
    result = run_cli([f"backend={backend}", "train.epochs=3", f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"results: {run_dir}" in result.stdout and "test accuracy" in result.stdout

    summary = read_summary(run_dir)
    assert summary["status"] == "complete"
    assert (summary["strategy"], summary["backend"], summary["world_size"]) == ("sync", backend, 2)
    assert (summary["model"], summary["dataset"]) == ("mlp", "digits")
    assert summary["batch_size"] == 16 and summary["global_batch_size"] == 32
    steps = 3 * (1437 // 32)
    assert summary["steps"] == steps
    assert 0.5 < summary["final_test_acc"] <= 1.0
    assert summary["median_iter_s"] > 0
    assert summary["throughput_samples_s"] == pytest.approx(32 / summary["median_iter_s"])
    assert summary["config"]["train"]["epochs"] == 3

    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    iters = [r for r in rows if r["kind"] == "iter"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [int(r["step"]) for r in iters] == list(range(steps))
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2]
    for r in iters:
        phases = sum(float(r[f"t_{p}"]) for p in ("data", "forward", "backward", "comm_wait", "update"))
        assert 0 < phases <= float(r["t_iter"]) * 1.001
        assert float(r["samples_per_s"]) == pytest.approx(32 / float(r["t_iter"]))
    assert float(epochs[-1]["test_acc"]) == pytest.approx(summary["final_test_acc"])
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])

    state = torch.load(run_dir / "model_final.pt", weights_only=True)
    assert sum(t.numel() for t in state.values()) == summary["parameters"] == 64 * 128 + 128 + 128 * 128 + 128 + 1290
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_multirun_gives_each_job_its_own_run_dir(workdir):
    sweep = workdir / "sweep"
    result = run_cli(["-m", "world_size=1,2", "backend=gloo", "train.max_steps=5", "train.epochs=1",
                      f"hydra.sweep.dir={sweep}"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert [p.name for p in jobs] == ["0", "1"]
    assert [read_summary(p)["world_size"] for p in jobs] == [1, 2]
    assert all(read_summary(p)["status"] == "complete" and read_summary(p)["steps"] == 5 for p in jobs)


def test_default_run_dir_is_under_results(workdir):
    result = run_cli(["backend=gloo", "world_size=1", "train.max_steps=3"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = list((workdir / "results" / "runs").glob("*/*/summary.json"))
    assert read_summary(summary_path.parent)["status"] == "complete"

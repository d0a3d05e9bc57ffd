"""Hand-written run directories with known numbers, for the report's tests.

Each fixture run holds exactly the documented outputs (summary.json, metrics.csv,
.hydra/config.yaml and hydra.yaml), so the report is tested against the contract
rather than against whatever the runner happens to write today.
"""
from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

METRIC_COLUMNS = [
    "kind", "step", "epoch", "loss", "lr", "t_data", "t_forward", "t_backward", "t_comm_wait", "t_update", "t_iter",
    "samples_per_s", "train_loss", "train_acc", "test_loss", "test_acc", "wall_s",
]

# Steps 0..4 are warm-up (train.warmup_steps=5) and deliberately slow, so a report that
# forgot to leave them out would be off by orders of magnitude.
WARMUP = 5
WARMUP_PHASES = {"data": 0.5, "forward": 1.0, "backward": 1.0, "comm_wait": 1.0, "update": 0.5}


def make_run(
    path: Path,
    *,
    strategy: Optional[dict] = None,
    world_size: int = 2,
    seed: int = 0,
    batch_size: int = 16,
    model: str = "mlp",
    dataset: str = "digits",
    backend: str = "gloo",
    median_iter_s: float = 0.01,
    final_test_acc: float = 0.9,
    target_acc: Optional[float] = 0.95,
    evals: Sequence[Tuple[int, float, float]] = ((0, 1.0, 0.9),),  # (epoch, wall_s, test_acc)
    phases: Optional[Dict[str, float]] = None,  # seconds per step after warm-up
    other_s: float = 0.0008,  # loop time outside the phases
    steps: int = 10,
    status: str = "complete",
    error: Optional[str] = None,
    job: Optional[int] = None,
    train: Optional[dict] = None,
    write_summary: bool = True,
    write_metrics: bool = True,
    extra_config: Optional[dict] = None,  # more top-level config groups, e.g. {"cluster": {...}}
) -> Path:
    """A run dir whose tables and plots can be predicted from these arguments."""
    path.mkdir(parents=True, exist_ok=True)
    strategy = {"name": "sync", "fuse": True, **(strategy or {})}
    phases = {"data": 0.0002, "forward": 0.001, "backward": 0.002, "comm_wait": 0.005, "update": 0.0005,
              **(phases or {})}
    config = {
        "dataset": {"name": dataset, "root": None, "shuffle": True, "target_acc": target_acc},
        "model": {"name": model, **({"hidden": [128, 128]} if model == "mlp" else {})},
        "backend": {"name": backend, "timeout_s": 120.0},
        "strategy": strategy,
        "launcher": {"name": "local", "grace_s": 10.0},
        "train": {"batch_size": batch_size, "epochs": 2, "lr": 0.05, "momentum": 0.9, "warmup_steps": WARMUP,
                  "log_every_steps": 1, **(train or {})},
        "fault": {"rank": None, "step": 0, "kind": "raise"},
        "world_size": world_size,
        "seed": seed,
        "progress_bar": None,
        **(extra_config or {}),
    }
    (path / ".hydra").mkdir(exist_ok=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if job is not None:
        (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": "asyncsgd", "num": job}}}))
    global_batch = batch_size * world_size
    if write_summary:
        summary = {
            "status": status, "strategy": strategy["name"], "backend": backend, "launcher": "local",
            "world_size": world_size, "model": model, "dataset": dataset, "batch_size": batch_size,
            "global_batch_size": global_batch, "seed": seed, "host": "fixture-host",
            "started_at": "2026-01-02T03:04:05+00:00", "config": config,
        }
        if status == "complete":
            summary.update(steps=steps, median_iter_s=median_iter_s, throughput_samples_s=global_batch / median_iter_s,
                           final_test_acc=final_test_acc, final_test_loss=0.3, target_acc=target_acc,
                           time_to_target_s=None, train_wall_s=steps * median_iter_s)
        if error:
            summary.update(error=error, failed_rank=1)
        (path / "summary.json").write_text(json.dumps(summary, indent=2))
    if write_metrics:
        rows = []
        for step in range(steps):
            times = WARMUP_PHASES if step < WARMUP else phases
            t_iter = sum(times.values()) + other_s
            rows.append({"kind": "iter", "step": step, "epoch": 0, "loss": loss_at(step, seed), "lr": 0.05,
                         **{f"t_{k}": v for k, v in times.items()}, "t_iter": t_iter,
                         "samples_per_s": global_batch / t_iter, "wall_s": 0.01 * (step + 1)})
        for epoch, wall, acc in evals:
            rows.append({"kind": "epoch", "step": steps, "epoch": epoch, "train_loss": 0.5, "train_acc": 0.8,
                         "test_loss": 0.4, "test_acc": acc, "wall_s": wall})
        with open(path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)
    return path


def loss_at(step: int, seed: int) -> float:
    return 2.3 / (1 + 0.3 * step) + 0.01 * seed


def png_size(path: Path) -> Tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return struct.unpack(">II", data[16:24])


def md_tables(markdown: str) -> List[List[List[str]]]:
    """Every markdown table as rows of cells (header first, the |---| rule dropped)."""
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables

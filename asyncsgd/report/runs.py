"""Finding and loading runs: the first stage of the report.

A run dir is one with ``summary.json`` or ``.hydra/config.yaml``; a multirun
dir holds several, and its ``multirun.yaml`` says which jobs were asked for, so
jobs that never started are reported too. Only a run's documented outputs are
read (design.md, "Outputs of a run"); whatever is missing or unreadable becomes
a line in :attr:`Run.problems` rather than an exception, so one broken run
never hides the others.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd


PHASES = ["data", "forward", "backward", "comm_wait", "update"]

PHASE_NAMES = {"data": "data", "forward": "forward", "backward": "backward",
               "comm_wait": "communication wait", "update": "update", "other": "other"}


class ReportError(Exception):
    """Input the report cannot use; the message is one line for the user."""


@dataclass
class Sweep:
    """A multirun directory: the jobs its multirun.yaml asked for."""

    path: Path
    jobs: List[List[str]]  # override list of each job, in job-number order (empty if unknown)


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict  # the resolved config, nested
    metrics: Optional[pd.DataFrame]
    job: Optional[int] = None  # hydra.job.num of a multirun job
    problems: List[str] = field(default_factory=list)  # why some output is missing or unreadable

    @property
    def status(self) -> str:
        if self.summary.get("status"):
            return str(self.summary["status"])
        unreadable = any(p.startswith("summary.json") and "missing" not in p for p in self.problems)
        return "unreadable summary.json" if unreadable else "no summary.json"


def _natural_key(path: Path) -> list:
    """Sort job dirs 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_runs(dirs: Sequence[Path]) -> Tuple[List[Path], List[Sweep]]:
    """Every run dir under ``dirs`` (a dir may itself be a run), and the multirun sweeps seen."""
    runs: List[Path] = []
    sweeps: List[Sweep] = []
    for top in map(Path, dirs):
        if not top.exists():
            raise ReportError(f"{top}: no such directory")
        if not top.is_dir():
            raise ReportError(f"{top}: not a directory")
        if not os.access(top, os.R_OK | os.X_OK):
            raise ReportError(f"{top}: cannot read this directory")

        def refuse(err: OSError) -> None:
            raise ReportError(f"{err.filename}: cannot read ({err.strerror})")

        for root, subdirs, files in os.walk(top.resolve(), onerror=refuse):
            here = Path(root)  # absolute: the same run named twice (./a and a) is one run
            # .hydra, .asyncsgd and .submitit hold bookkeeping, never runs
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            if "multirun.yaml" in files and all(s.path != here for s in sweeps):
                sweeps.append(Sweep(here, _sweep_jobs(here / "multirun.yaml")))
            if _is_run_dir(here):
                runs.append(here)
                subdirs[:] = []
    if not runs:
        raise ReportError(
            f"no run directories (with summary.json or .hydra/config.yaml) under {', '.join(map(str, dirs))}"
        )
    return sorted(set(runs), key=_natural_key), sweeps


def _sweep_jobs(multirun_yaml: Path) -> List[List[str]]:
    """The jobs a multirun asked for, expanded as Hydra's basic sweeper does; [] if unknown."""
    from omegaconf import OmegaConf

    from ..validate import expand_sweep, sweeper_params

    try:
        hydra = OmegaConf.load(multirun_yaml).hydra
        if "basic_sweeper" not in str(OmegaConf.select(hydra, "sweeper._target_") or "basic_sweeper"):
            return []  # another sweeper (optuna, ...) decides its jobs as it goes
        return expand_sweep(list(hydra.overrides.task), sweeper_params(hydra))
    except Exception:  # noqa: BLE001 - a sweep we cannot expand still lets its runs be reported
        return []


def _read_json(path: Path, problems: List[str]) -> dict:
    if not path.is_file():
        problems.append(f"{path.name} missing")
        return {}
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
        problems.append(f"{path.name} is not a JSON object")
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} unreadable ({exc})")
    return {}


def _read_config(run_dir: Path, summary: dict, problems: List[str]) -> dict:
    """The resolved config: Hydra's .hydra/config.yaml, else the copy in summary.json."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        try:
            loaded = OmegaConf.load(path)
            try:
                return OmegaConf.to_container(loaded, resolve=True)
            except Exception:  # noqa: BLE001 - an interpolation we cannot resolve: keep it as text
                return OmegaConf.to_container(loaded, resolve=False)
        except Exception as exc:  # noqa: BLE001 - a broken YAML file is a finding, not a crash
            problems.append(f".hydra/config.yaml unreadable ({exc})")
    if isinstance(summary.get("config"), dict):
        return summary["config"]
    problems.append("no config (.hydra/config.yaml or summary.json)")
    return {}


def _read_job_num(run_dir: Path) -> Optional[int]:
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        num = OmegaConf.select(OmegaConf.load(path), "hydra.job.num")
        return int(num) if num is not None and str(num).isdigit() else None
    except Exception:  # noqa: BLE001 - the job number only helps to spot jobs that never started
        return None

METRIC_NUMBERS = ["step", "epoch", "loss", "lr", *[f"t_{p}" for p in PHASES], "t_iter", "samples_per_s",
                  "train_loss", "train_acc", "test_loss", "test_acc", "wall_s", "eval_s"]


def read_metrics(run_dir: Path, problems: List[str]) -> Optional[pd.DataFrame]:
    """metrics.csv (or metrics.jsonl) with numeric columns; None if absent or unreadable."""
    csv_path, jsonl_path = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
    try:
        if csv_path.is_file():
            frame = pd.read_csv(csv_path)
        elif jsonl_path.is_file():
            frame = pd.read_json(jsonl_path, lines=True)
        else:
            problems.append("metrics.csv missing")
            return None
    except (OSError, ValueError) as exc:
        problems.append(f"metrics file unreadable ({exc})")
        return None
    if "kind" not in frame.columns:
        problems.append("metrics file has no 'kind' column")
        return None
    for column in METRIC_NUMBERS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame.columns else np.nan
    # Training time: wall-clock time less the test evaluations so far (runs from before eval_s: none left out).
    frame["train_s"] = frame["wall_s"] - frame["eval_s"].fillna(0.0)
    return frame


def load_run(path: Path) -> Run:
    problems: List[str] = []
    summary = _read_json(path / "summary.json", problems)
    config = _read_config(path, summary, problems)
    metrics = read_metrics(path, problems)
    return Run(path=path, summary=summary, config=config, metrics=metrics, job=_read_job_num(path), problems=problems)


def load_runs(dirs: Sequence[Path]) -> Tuple[List[Run], List[Sweep]]:
    paths, sweeps = find_runs(dirs)
    return [load_run(p) for p in paths], sweeps


def missing_jobs(runs: Sequence[Run], sweeps: Sequence[Sweep]) -> List[dict]:
    """Jobs a multirun asked for that left no run dir (the sweep stopped before them)."""
    missing = []
    for sweep in sweeps:
        started = {r.job for r in runs if r.job is not None and sweep.path in r.path.parents}
        for num, overrides in enumerate(sweep.jobs):
            if num not in started:
                missing.append({"sweep": sweep.path, "job": num, "overrides": " ".join(overrides)})
    return missing

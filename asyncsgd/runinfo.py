"""What a run directory holds besides metrics: summary.json, the config the
workers read, and the per-rank bookkeeping (pid files, failure reports) that
lets the launcher name the rank that failed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from .config import GROUPS, Config
from .io import atomic_write_json, atomic_write_text, read_json

INTERNAL = ".asyncsgd"  # per-run bookkeeping, not part of the documented outputs


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- config
def save_config(run_dir: Path, cfg: DictConfig) -> Path:
    path = Path(run_dir) / INTERNAL / "config.yaml"
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def to_config(container: Any) -> Config:
    """Typed :class:`Config` from a plain/DictConfig tree, with every value check run."""
    data = OmegaConf.create(container) if not isinstance(container, DictConfig) else container
    schema = OmegaConf.structured(Config)
    for group, choices in GROUPS.items():
        name = OmegaConf.select(data, f"{group}.name")
        if name in choices:
            schema[group] = OmegaConf.structured(choices[name])
    merged = OmegaConf.merge(schema, data)
    return OmegaConf.to_object(merged)


def load_config(run_dir: Path) -> Config:
    return to_config(OmegaConf.load(Path(run_dir) / INTERNAL / "config.yaml"))


# ---------------------------------------------------------------- summary
def base_summary(cfg: Config, world_size: Optional[int] = None) -> Dict[str, Any]:
    """The config values a reader of the summary needs, before any result exists."""
    P = world_size or cfg.world_size
    return {
        "status": "running",
        "strategy": cfg.strategy.name,
        "backend": cfg.backend.name,
        "launcher": cfg.launcher.name,
        "world_size": P,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "batch_size": cfg.train.batch_size,
        "global_batch_size": cfg.train.batch_size * P,
        "epochs": cfg.train.epochs,
        "max_steps": cfg.train.max_steps,
        "lr": cfg.train.lr,
        "lr_schedule": cfg.train.lr_schedule,
        "lr_warmup_steps": cfg.train.lr_warmup_steps,
        "momentum": cfg.train.momentum,
        "weight_decay": cfg.train.weight_decay,
        "seed": cfg.seed,
        "started_at": now_iso(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
    }


def run_status(run_dir: Path) -> Optional[str]:
    """summary.json's status (running, complete, failed, interrupted); None without a readable one."""
    try:
        return read_json(Path(run_dir) / "summary.json").get("status")
    except (OSError, ValueError, AttributeError):
        return None


def update_summary(run_dir: Path, **values: Any) -> Dict[str, Any]:
    """Merge ``values`` into summary.json (atomically); stamps finished_at on a final status."""
    path = Path(run_dir) / "summary.json"
    summary: Dict[str, Any] = {}
    if path.exists():
        try:
            summary = read_json(path)
        except (OSError, json.JSONDecodeError):
            summary = {}
    summary.update(values)
    if summary.get("status") in ("complete", "failed", "interrupted"):
        if summary.get("finished_at") is None:  # a resume clears the earlier attempt's stamp
            summary["finished_at"] = now_iso()
    atomic_write_json(path, summary)
    return summary


# ---------------------------------------------------------------- ranks
def write_pid(run_dir: Path, rank: int) -> None:
    atomic_write_text(Path(run_dir) / INTERNAL / f"rank{rank}.pid", f"{os.getpid()}\n")


def clear_rank_files(run_dir: Path) -> None:
    """Forget the pid files and failure reports of an earlier attempt in this run dir (a resume):
    they would name the wrong process or blame the wrong rank."""
    for pattern in ("rank*.pid", "failure-rank*.json"):
        for f in (Path(run_dir) / INTERNAL).glob(pattern):
            f.unlink(missing_ok=True)


def start_attempt(run_dir: Path, cfg: Config, world_size: Optional[int] = None, **extra: Any) -> None:
    """Before the workers of an attempt start: forget the last attempt's pid files and failure
    reports, and write this attempt's summary (what ran, nothing yet interrupted, failed or ended),
    so a run whose workers never connect still has a summary that can say ``failed``."""
    clear_rank_files(run_dir)
    update_summary(run_dir, **base_summary(cfg, world_size), interrupted_at_step=None, checkpoint=None,
                   error=None, failed_rank=None, finished_at=None, **extra)


def worker_ranks(run_dir: Path) -> List[int]:
    """Ranks that started (wrote a pid file) in this run dir."""
    return sorted(int(f.stem[4:]) for f in (Path(run_dir) / INTERNAL).glob("rank*.pid") if f.stem[4:].isdigit())


def worker_pids(run_dir: Path) -> List[int]:
    pids = []
    for f in sorted((Path(run_dir) / INTERNAL).glob("rank*.pid")):
        try:
            pids.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def rank_of_pid(run_dir: Path, pid: int) -> Optional[int]:
    for f in (Path(run_dir) / INTERNAL).glob("rank*.pid"):
        try:
            if int(f.read_text().strip()) == pid:
                return int(f.stem[4:])
        except (OSError, ValueError):
            continue
    return None


def record_failure(run_dir: Path, rank: int, exc: BaseException, secondary: bool = False) -> None:
    """Leave a report the launcher reads to say which rank failed and why.

    ``secondary`` marks a failure that only echoes a peer's (a collective that
    broke because the other side went away), so the launcher blames the peer.
    """
    atomic_write_json(
        Path(run_dir) / INTERNAL / f"failure-rank{rank}.json",
        {
            "rank": rank,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "time": now_iso(),
            "t": time.time(),
            "secondary": secondary,
            "pid": os.getpid(),
        },
    )


def failures(run_dir: Path) -> List[dict]:
    """Failure reports, the likely cause first: primary before secondary, then earliest."""
    reports = []
    for f in (Path(run_dir) / INTERNAL).glob("failure-rank*.json"):
        try:
            reports.append(read_json(f))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(reports, key=lambda r: (bool(r.get("secondary")), r.get("t", 0.0), r.get("rank", 0)))

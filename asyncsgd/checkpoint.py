"""Checkpoints: everything needed to continue a run exactly, written safely, read safely.

A checkpoint is one file, ``RUN_DIR/checkpoints/step-NNNNNNNN.pt``, written by
rank 0 through a temp file, fsync and rename (a crash leaves the previous one
intact). It is a ``torch.save`` archive of tensors and plain values only, read
back with ``torch.load(weights_only=True)`` so loading never runs code from the
file; everything that is not a tensor (position, config, metrics rows, the
non-tensor parts of the RNG states) is one JSON string inside it.

What it holds: the model state, the strategy state (optimizer(s); for
``delayed`` the reduced gradients still waiting to be applied), the data
position (epoch and batches already consumed in it), every rank's RNG states
and running epoch sums (gathered to rank 0), and the metrics written so far.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import ConfigError
from .io import atomic_torch_save
from .runinfo import now_iso

log = logging.getLogger("asyncsgd")

FORMAT = "asyncsgd-checkpoint/1"
DIRNAME = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")

# Keys whose change alters what a checkpoint means (prefixes end in "."). A change is
# refused unless resume.allow_changes=true; STRUCTURAL ones are refused even then:
# per-rank RNG states and shards need the same world size, the data position counts
# batches of one size, parameters and optimizer/bucket layouts must fit the model.
MEANING = ["world_size", "seed", "train.batch_size", "train.lr", "train.lr_schedule", "train.lr_warmup_steps",
           "train.momentum", "train.weight_decay", "train.grad_clip_norm", "model.", "strategy.", "dataset."]
STRUCTURAL = ["world_size", "train.batch_size", "model.", "strategy.name", "strategy.wait_at", "strategy.bucket_mb",
              "strategy.split_mb"]
# with a learning-rate schedule other than constant these change the rate of every step to come
SCHEDULE_LENGTH = ["train.epochs", "train.max_steps"]
# dataset keys that say where/how fast data is read, not which data
_NOT_MEANING = {"dataset.root", "dataset.workers", "dataset.download", "dataset.target_acc", "dataset.test_subset"}


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message is one line (exit status 2)."""


@dataclass
class Position:
    """Where training stands at a step boundary."""

    step: int = 0  # steps done
    epoch: int = 0  # current epoch
    batch: int = 0  # batches of this epoch already consumed


# ---------------------------------------------------------------- finding
def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / DIRNAME / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> List[Path]:
    """Checkpoint files in ``directory``, oldest (lowest step) first."""
    found = []
    if Path(directory).is_dir():
        for f in Path(directory).iterdir():
            match = _NAME.match(f.name)
            if match:
                found.append((int(match.group(1)), f))
    return [f for _, f in sorted(found)]


def resolve_resume(spec: Optional[str], run_dir: Path) -> Optional[Path]:
    """The checkpoint file ``resume=spec`` means, or None to start fresh.

    ``auto``: the newest checkpoint in ``run_dir``; a run dir without any run yet
    starts fresh (so a requeue script may always pass resume=auto). A directory:
    its (or its ``checkpoints/``) newest checkpoint.
    """
    if spec is None:
        return None
    if spec == "auto":
        found = list_checkpoints(Path(run_dir) / DIRNAME)
        if found:
            return found[-1].resolve()
        if (Path(run_dir) / "summary.json").exists():
            raise CheckpointError(
                f"resume=auto: the run in {run_dir} wrote no checkpoint to continue from "
                "(set checkpoint.every_steps or checkpoint.every_epochs next time)"
            )
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"resume={spec}: no such file or directory")
    if path.is_dir():
        found = list_checkpoints(path / DIRNAME) or list_checkpoints(path)
        if not found:
            raise CheckpointError(f"resume={spec}: no checkpoint (checkpoints/step-*.pt) in this directory")
        return found[-1].resolve()
    return path.resolve()


# ---------------------------------------------------------------- reading
def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read and check a checkpoint; any problem is one CheckpointError line."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, unreadable file: all one message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read ({first})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("meta"), str):
        raise CheckpointError(f"checkpoint {path} is not an asyncsgd checkpoint ({FORMAT})")
    try:
        data["meta"] = json.loads(data["meta"])
    except ValueError:
        raise CheckpointError(f"checkpoint {path} is corrupt (its metadata is not JSON)") from None
    missing = [k for k in ("model", "strategy", "ranks") if k not in data]
    missing += [f"meta.{k}" for k in ("position", "config", "tracker", "rng", "world_size") if k not in data["meta"]]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
    return data


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _matches(key: str, patterns: List[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def config_differences(saved: dict, current: dict) -> List[str]:
    """Meaning-bearing keys that differ, as ``key: saved -> current``."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(k for k in set(a) | set(b) if _matches(k, MEANING) and k not in _NOT_MEANING)
    if {a.get("train.lr_schedule", "constant"), b.get("train.lr_schedule", "constant")} != {"constant"}:
        keys += SCHEDULE_LENGTH  # a schedule's rates depend on the run's length
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_compatible(meta: dict, current: dict, allow_changes: bool, path: Path) -> List[str]:
    """Refuse a resume whose config changes what the checkpoint means; returns accepted changes."""
    diffs = config_differences(meta["config"], current)
    if not diffs:
        return []
    structural = [d for d in diffs if _matches(d.split(":")[0], STRUCTURAL)]
    if meta.get("queued_gradients"):  # a delayed-k queue only means something to the same strategy and k
        structural += [d for d in diffs if _matches(d.split(":")[0], ["strategy."]) and d not in structural]
    if structural:
        raise CheckpointError(
            f"cannot resume {path.name} with a different " + "; ".join(structural)
            + " (not even with resume.allow_changes=true: the checkpoint would not fit)"
        )
    if not allow_changes:
        raise CheckpointError(
            f"the config differs from checkpoint {path.name}: " + "; ".join(diffs)
            + " (set resume.allow_changes=true to accept)"
        )
    return diffs


# ---------------------------------------------------------------- RNG states
def capture_rng() -> Dict[str, Any]:
    """This process's RNG states: torch (+CUDA), numpy and python's random, as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python": [int(py_version), py_gauss],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in state["python_internal"].tolist()), gauss))


# ---------------------------------------------------------------- writing
class Checkpointer:
    """When to checkpoint, and the collective save/restore (every rank takes part; rank 0 writes)."""

    def __init__(self, cfg, comm, run_dir: Path):
        self.cfg, self.comm, self.run_dir = cfg.checkpoint, comm, Path(run_dir)
        self.config = None  # plain dict of the run's config, set by the training loop
        self.last: Optional[Path] = None

    def due_after_step(self, step: int) -> bool:
        return self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0

    def due_after_epoch(self, epochs_done: int) -> bool:
        return self.cfg.every_epochs > 0 and epochs_done % self.cfg.every_epochs == 0

    def save(self, position: Position, model, strategy, tracker) -> Optional[Path]:
        """Collective: the strategy must have been flushed. Returns the file (rank 0) or None."""
        mine = {"rng": capture_rng(), "epoch_sums": tracker.epoch_sums.detach().cpu().clone()}
        ranks = [self.comm.broadcast_object(mine if self.comm.rank == r else None, root=r) if r else mine
                 for r in range(self.comm.size)]
        if self.comm.rank != 0:
            return None
        strategy_state = strategy.state_dict()
        meta = {
            "format": FORMAT,
            "saved_at": now_iso(),
            "position": vars(position),
            "world_size": self.comm.size,
            "config": self.config,
            "queued_gradients": len(strategy_state.get("queue", [])),
            "tracker": tracker.state(),
            "rng": [{"numpy": r["rng"]["numpy"], "python": r["rng"]["python"]} for r in ranks],
        }
        tensors_per_rank = [{"epoch_sums": r["epoch_sums"],
                             **{k: v for k, v in r["rng"].items() if k not in ("numpy", "python")}} for r in ranks]
        data = {
            "format": FORMAT,
            "meta": json.dumps(meta),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "strategy": strategy_state,
            "ranks": tensors_per_rank,
        }
        path = checkpoint_path(self.run_dir, position.step)
        atomic_torch_save(path, data)
        self.last = path
        self._prune()
        log.info("checkpoint at step %d: %s", position.step, path)
        return path

    def _prune(self) -> None:
        """Keep the newest ``keep``; the one just written is complete before any is deleted."""
        for old in list_checkpoints(self.run_dir / DIRNAME)[:-self.cfg.keep]:
            old.unlink(missing_ok=True)

    def restore(self, path: Optional[Path], model, strategy, tracker) -> tuple[Position, Optional[dict]]:
        """Collective: load ``path`` on rank 0, share it, put every piece back.

        Returns the position and this rank's RNG state, which the loop restores
        only where the uninterrupted run stood (after the data iterator draws its seed).
        """
        data = self.comm.broadcast_object(load_checkpoint(path) if self.comm.rank == 0 else None, root=0)
        meta = data["meta"]
        if meta["world_size"] != self.comm.size:
            raise CheckpointError(f"checkpoint {path} was written by {meta['world_size']} workers, "
                                  f"this run has {self.comm.size}")
        model.load_state_dict(data["model"])
        strategy.load_state_dict(data["strategy"])
        mine = data["ranks"][self.comm.rank]
        tracker.load_state(meta["tracker"], mine["epoch_sums"])
        rng = {k: v for k, v in mine.items() if k != "epoch_sums"}
        rng.update(meta["rng"][self.comm.rank])
        self.last = Path(path)
        return Position(**meta["position"]), rng

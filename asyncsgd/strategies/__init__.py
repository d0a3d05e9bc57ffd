"""Gradient synchronization strategies; one module each."""
from __future__ import annotations

from .base import Strategy


def make_strategy(cfg, comm, timer) -> Strategy:
    if cfg.name == "sync":
        from .sync import SyncStrategy

        return SyncStrategy(cfg, comm, timer)
    raise ValueError(f"strategy={cfg.name} is not known")


__all__ = ["Strategy", "make_strategy"]

"""Gradient synchronization strategies; one module each."""
from __future__ import annotations

import importlib

from .base import Strategy

_CLASSES = {
    "sync": "sync.SyncStrategy",
    "layerwise": "layerwise.LayerwiseStrategy",
    "delayed": "delayed.DelayedStrategy",
    "ddp": "ddp.DDPStrategy",
    "nocomm": "nocomm.NoCommStrategy",
}


def make_strategy(cfg, comm, timer, timeline=None, clip_norm=None) -> Strategy:
    if cfg.name not in _CLASSES:
        raise ValueError(f"strategy={cfg.name} is not known")
    module, cls = _CLASSES[cfg.name].split(".")
    strategy_cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return strategy_cls(cfg, comm, timer, timeline=timeline, clip_norm=clip_norm)


__all__ = ["Strategy", "make_strategy"]

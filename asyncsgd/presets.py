"""What an experiment preset (``+experiment=NAME``) names, and whether this installation has it.

A preset reaches config group options three ways: ``override /group: option``
lines in its defaults, group sweeps in ``hydra.sweeper.params`` (``model:
mlp,cnn`` or ``+variant: sync,delayed_k1``), and, through each option it names,
whatever that option's own file names (a variant overrides /strategy). Option
files come from several branches of work (strategies, datasets), so the tests and
``scripts/run`` ask here which of them exist instead of assuming.
"""
from __future__ import annotations

from typing import List, Tuple

from omegaconf import OmegaConf

from .validate import config_files, options

Option = Tuple[str, str]  # (group, option), e.g. ("strategy", "layerwise")


def _conf():
    return config_files()


def _is_group(group: str) -> bool:
    return _conf().joinpath(group).is_dir() and not group.startswith("hydra")


def _option_file(group: str, option: str):
    path = _conf().joinpath(group, f"{option}.yaml")
    return path if path.is_file() else None


def _named_here(group: str, option: str) -> List[Option]:
    """Options one config file names directly: its defaults overrides and its swept groups."""
    path = _option_file(group, option)
    if path is None:
        return []
    cfg = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=False) or {}
    named: List[Option] = []
    for entry in cfg.get("defaults", []) or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                target = key.removeprefix("override").strip().lstrip("/").split("@")[0]
                if _is_group(target) and value is not None:
                    named.append((target, str(value)))
    params = (cfg.get("hydra", {}) or {}).get("sweeper", {}) or {}
    for key, values in (params.get("params", {}) or {}).items():
        target = key.lstrip("+~")
        if _is_group(target):
            named.extend((target, v.strip()) for v in str(values).split(",") if v.strip())
    return named


def referenced_options(group: str, option: str) -> List[Option]:
    """Every (group, option) that ``group=option`` reaches, in first-seen order, itself excluded."""
    seen: List[Option] = []
    todo = _named_here(group, option)
    while todo:
        item = todo.pop(0)
        if item in seen:
            continue
        seen.append(item)
        todo.extend(_named_here(*item))
    return seen


def missing_options(group: str, option: str) -> List[str]:
    """``group=option`` items the config reaches that this installation does not have."""
    missing = [] if _option_file(group, option) else [f"{group}={option}"]
    available: dict = {}
    for g, o in referenced_options(group, option):
        if o not in available.setdefault(g, set(options(g))):
            missing.append(f"{g}={o}")
    return missing


def swept_values(experiment: str, key: str) -> List[str]:
    """The values an experiment preset sweeps ``key`` over (``+variant``), in its order."""
    path = _option_file("experiment", experiment)
    if path is None:
        raise ValueError(f"experiment={experiment} is not an option; choose one of {', '.join(options('experiment'))}")
    params = OmegaConf.select(OmegaConf.create(path.read_text()), "hydra.sweeper.params") or {}
    values = params.get(key)
    return [v.strip() for v in str(values).split(",") if v.strip()] if values is not None else []


def runnable_variants(experiment: str) -> List[str]:
    """The strategy variants an experiment sweeps whose options all exist here."""
    return [v for v in swept_values(experiment, "+variant") if not missing_options("variant", v)]

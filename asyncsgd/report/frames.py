"""Frames and statistics: one row per run (runs.csv), then one row per group (speedup.csv).

Every number the tables show is computed here from runs.csv's columns by one
rule: medians over the complete runs of a (setting, strategy, world size)
group, with their min and max, and ratios of those medians
(:func:`speedup_frame` documents each column). A setting is the dataset, model,
backend and per-worker batch plus any other config key that varies between the
runs and defines what is measured (:data:`NOT_SETTINGS` lists the keys that do
not).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .runs import PHASES, ReportError, Run


# Settings that always name a strategy in tables, whether or not they vary: a
# `delayed` row means nothing without its k.
STRATEGY_KEYS = {"layerwise": ("wait_at",), "delayed": ("k",)}
# Keys shown whenever they are not at this value, varying or not: a compensation changes the
# update rule, so a report of one compensated variant must not read as plain delayed-k.
STRATEGY_KEYS_UNLESS = {"delayed": {"compensation": "none"}}

# Config groups whose other keys only mean something for one choice (model.hidden
# exists for mlp alone): such a key is a setting only if it varies within a choice.
CHOICE_GROUPS = ("dataset", "model", "backend", "strategy", "launcher")

# Config keys that do not define what is measured, so runs differing only in them
# are compared as one setting. seed is here on purpose: repeated seeds are pooled.
NOT_SETTINGS = re.compile(
    r"^(seed|world_size|progress_bar|strategy\..*|fault\..*|checkpoint\..*|resume\..*|launcher\..*|backend\.(timeout_s|master_port|mpiexec|"
    r"mpiexec_args|compute_nice)|dataset\.(root|download)|train\.(log_every_steps|measure_comm))$"
)

# The setting columns every row carries (from the config); other varying keys are
# added under their dotted config names, which is how settings are told apart from results.
BASE_SETTINGS = ["dataset", "model", "backend", "batch_size"]

SETTING_LABELS = {"dataset": "dataset", "model": "model", "backend": "backend", "batch_size": "batch/worker"}


def _flatten(tree: dict, prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            # lists compare and print as text: model.hidden=[128, 128]
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _same_types(flat: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """A key that holds a float in any run holds floats in all: 4 and 4.0 are one setting (a config
    schema's float written as an integer by an older version, e.g. strategy.bucket_mb)."""
    floats = {k for f in flat for k, v in f.items() if isinstance(v, float)}
    return [{k: float(v) if k in floats and isinstance(v, int) and not isinstance(v, bool) else v
             for k, v in f.items()} for f in flat]


def _varying_keys(flat: List[Dict[str, object]], keys: Iterable[str]) -> List[str]:
    """Keys whose value differs between runs; a key under a choice group only within one choice."""
    varying = []
    for key in keys:
        group = key.split(".", 1)[0]
        if "." in key and group in CHOICE_GROUPS:
            by_choice: Dict[object, set] = {}
            for f in flat:
                if key in f:
                    by_choice.setdefault(f.get(f"{group}.name"), set()).add(_value_text(f[key]))
            if any(len(values) > 1 for values in by_choice.values()):
                varying.append(key)
        elif len({_value_text(f.get(key)) for f in flat}) > 1:
            varying.append(key)
    return varying


def nice_suffix(compute_nice: object) -> str:
    """``+nice`` for a run whose training thread yielded the CPU to the backend's threads
    (backend.compute_nice=19, the benchmark's ``CASE+nice``), ``+nice=N`` for another N, else ''."""
    n = int(compute_nice or 0)
    return "" if n == 0 else "+nice" if n == 19 else f"+nice={n}"


def split_nice(label: str) -> Tuple[str, int]:
    """``delayed(k=1)+nice`` -> (``delayed(k=1)``, 19): a label of :func:`strategy_labels` and its
    backend.compute_nice."""
    base, sep, rest = label.partition("+nice")
    if not sep:
        return label, 0
    return base, int(rest[1:]) if rest.startswith("=") else 19


def strategy_labels(configs: Sequence[Dict[str, object]]) -> List[str]:
    """``name(key=value, ...)`` per run: the strategy's defining keys plus any that vary between runs,
    and ``+nice`` where the training thread yielded the CPU (a variant of the strategy, compared with
    the others of its setting, as the benchmark names it; not a setting of its own)."""
    flat = _same_types([_flatten(c.get("strategy", {}) if isinstance(c.get("strategy"), dict) else {})
                        for c in configs])
    labels = []
    for config, f in zip(configs, flat):
        name = str(f.get("name", "unknown"))
        same = [g for g in flat if str(g.get("name", "unknown")) == name]
        keys = [k for k in f if k != "name"]
        varying = set(_varying_keys(same, keys))
        unless = STRATEGY_KEYS_UNLESS.get(name, {})
        shown = [k for k in keys if k in STRATEGY_KEYS.get(name, ()) or k in varying
                 or (k in unless and _value_text(f[k]) != unless[k])]
        label = f"{name}({', '.join(f'{k}={_value_text(f[k])}' for k in shown)})" if shown else name
        backend = config.get("backend") if isinstance(config.get("backend"), dict) else {}
        labels.append(label + nice_suffix(backend.get("compute_nice")))
    return labels


def _setting_extras(configs: Sequence[dict], not_settings: Sequence[str] = ()) -> List[str]:
    """Dotted config keys, beyond BASE_SETTINGS, that vary between runs and define a setting
    (not those of NOT_SETTINGS or ``not_settings``)."""
    flat = _same_types([_flatten(c) for c in configs])
    base = {"dataset.name", "model.name", "backend.name", "train.batch_size"}
    keys: List[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    return [k for k in _varying_keys(flat, keys)
            if k not in base and not NOT_SETTINGS.match(k) and k not in set(not_settings)]


def _warmup(run: Run) -> int:
    """Steps left out of per-iteration figures: the run's own count (summary.json: train.warmup_steps,
    or more while the strategy was still settling), else the configured one."""
    if isinstance(run.summary, dict) and run.summary.get("warmup_steps") is not None:
        return int(run.summary["warmup_steps"])
    train = run.config.get("train", {}) if isinstance(run.config.get("train"), dict) else {}
    return int(train.get("warmup_steps", 0) or 0)


def phase_means(run: Run) -> Dict[str, float]:
    """Mean seconds per iteration in each phase after the warm-up steps (means add up; medians do not)."""
    out = {f"t_{p}_s": math.nan for p in [*PHASES, "iter"]}
    if run.metrics is None:
        return out
    iters = run.metrics[run.metrics["kind"] == "iter"]
    kept = iters[iters["step"] >= _warmup(run)]
    kept = kept if len(kept) else iters  # a run shorter than its warm-up still has numbers
    if not len(kept):
        return out
    for p in [*PHASES, "iter"]:
        out[f"t_{p}_s"] = float(kept[f"t_{p}"].mean())
    return out


def time_to_target(run: Run, target: Optional[float]) -> float:
    """Training seconds (train_s: wall_s less evaluations) at the first evaluation with test accuracy >= target,
    at an epoch's end or within one (train.eval_every_steps); NaN if never or unknown."""
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return math.nan
    if run.metrics is not None:
        m = run.metrics
        evals = m[m["kind"].isin(["epoch", "eval"]) & m["test_acc"].notna()].sort_values("step", kind="stable")
        hit = evals[evals["test_acc"] >= target]
        return float(hit["train_s"].iloc[0]) if len(hit) else math.nan
    if run.summary.get("target_acc") == target and run.summary.get("time_to_target_s") is not None:
        return float(run.summary["time_to_target_s"])
    return math.nan


def _num(value: object) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def runs_frame(runs: Sequence[Run], target_acc: Optional[float] = None, relative_to: Optional[Path] = None,
               not_settings: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: its setting, strategy label, status and measured numbers (runs.csv).

    ``target_acc`` overrides each run's own dataset.target_acc for the time to target.
    """
    configs = [r.config for r in runs]
    labels = strategy_labels(configs)
    extras = _setting_extras(configs, not_settings)
    rows = []
    for run, label in zip(runs, labels):
        s, c = run.summary, run.config
        if not isinstance(c.get("strategy"), dict) and s.get("strategy"):
            label = str(s["strategy"])  # no config to read the strategy's keys from: its name at least
        flat = _flatten(c)
        world_size = s.get("world_size", flat.get("world_size"))
        batch = s.get("batch_size", flat.get("train.batch_size"))
        target = target_acc if target_acc is not None else s.get("target_acc", flat.get("dataset.target_acc"))
        row = {
            "run": os.path.relpath(run.path.resolve(), relative_to) if relative_to else str(run.path),
            "job": run.job,
            "status": run.status,
            "dataset": s.get("dataset", flat.get("dataset.name")),
            "model": s.get("model", flat.get("model.name")),
            "backend": s.get("backend", flat.get("backend.name")),
            "batch_size": batch,
            **{k: flat.get(k) for k in extras},
            "strategy": label,
            "world_size": world_size,
            "global_batch_size": s.get("global_batch_size",
                                       batch * world_size if batch is not None and world_size is not None else None),
            "seed": s.get("seed", flat.get("seed")),
            "steps": s.get("steps"),
            "median_iter_s": _num(s.get("median_iter_s")),
            "throughput_samples_s": _num(s.get("throughput_samples_s")),
            "final_test_acc": _num(s.get("final_test_acc")),
            "final_test_loss": _num(s.get("final_test_loss")),
            "target_acc": _num(target),
            "time_to_target_s": time_to_target(run, None if target is None else float(target)),
            "train_wall_s": _num(s.get("train_wall_s")),
            "collapse": (s.get("collapse") or {}).get("message") if isinstance(s.get("collapse"), dict) else None,
            **phase_means(run),
            "host": s.get("host"),
            "started_at": s.get("started_at"),
            "error": s.get("error") or "; ".join(run.problems) or None,
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("job", "batch_size", "world_size", "global_batch_size", "seed", "steps"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")  # 2, not 2.0, beside a gap
    return frame


def setting_columns(frame: pd.DataFrame) -> List[str]:
    """The columns that together name a setting: the base four plus any dotted config keys."""
    return [*BASE_SETTINGS, *[c for c in frame.columns if "." in c]]


def resolve_baseline(labels: Iterable[str], baseline: str) -> Optional[str]:
    """The strategy label ``baseline`` names: itself, or the one label of that strategy name."""
    labels = list(dict.fromkeys(labels))
    if baseline in labels:
        return baseline
    named = [label for label in labels if label.split("(", 1)[0] == baseline]
    plain = [label for label in named if split_nice(label)[1] == 0]
    named = plain or named  # the strategy's +nice variant (a yielding training thread) is not what a name means
    if len(named) > 1:
        raise ReportError(f"--baseline {baseline} matches {', '.join(named)}; name one of them")
    return named[0] if named else None


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def _group_stats(runs: pd.DataFrame) -> dict:
    iter_ms = runs["median_iter_s"] * 1000.0
    acc = runs["final_test_acc"]
    # A run that never reached the target counts as infinitely slow to reach it: with
    # seeds 10 s, 12 s and "never", the median is 12 s, with two "never" it is "never".
    ttt = runs["time_to_target_s"].where(runs["time_to_target_s"].notna(), math.inf)
    reached = runs["time_to_target_s"].dropna()
    targets = runs["target_acc"].dropna().unique()
    row = {
        "runs": len(runs),
        "seeds": ",".join(str(s) for s in sorted(runs["seed"].dropna().unique())),
        "iter_ms": _median(iter_ms), "iter_ms_min": iter_ms.min(), "iter_ms_max": iter_ms.max(),
        "throughput_samples_s": _median(runs["throughput_samples_s"]),
        "throughput_samples_s_min": runs["throughput_samples_s"].min(),
        "throughput_samples_s_max": runs["throughput_samples_s"].max(),
        "test_acc": _median(acc), "test_acc_min": acc.min(), "test_acc_max": acc.max(),
        "target_acc": float(targets[0]) if len(targets) == 1 else math.nan,
        "target_reached": len(reached),
        "time_to_target_s": float(np.median(ttt)) if runs["target_acc"].notna().any() else math.nan,
        "time_to_target_s_min": reached.min() if len(reached) else math.nan,
        "time_to_target_s_max": float(ttt.max()) if len(reached) else math.nan,  # inf if a run never got there
        "collapsed": int(runs["collapse"].notna().sum()) if "collapse" in runs else 0,
    }
    for p in [*PHASES, "iter"]:
        row[f"t_{p}_ms"] = _median(runs[f"t_{p}_s"]) * 1000.0
    row["t_other_ms"] = row["t_iter_ms"] - sum(row[f"t_{p}_ms"] for p in PHASES)
    return row


def _by_value(column: pd.Series) -> pd.Series:
    """Sort key: numbers as numbers (batch 4 before 16), link rates by rate, anything else as text."""
    if column.name == LINK_KEY:
        return column.map(link_rate_mbit)
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column.astype(str)


def speedup_frame(runs: pd.DataFrame, baseline: str = "sync") -> pd.DataFrame:
    """One row per (setting, strategy, world size) over the complete runs (speedup.csv).

    Each measured column is the median over the group's runs (with _min/_max);
    speedup_vs_baseline = baseline iter_ms / iter_ms at the same setting and world size;
    scaling_speedup = throughput / the same strategy's throughput at world size 1;
    acc_gap_pp = (test_acc - baseline test_acc) * 100;
    ttt_speedup = baseline time_to_target_s / time_to_target_s.
    """
    done = runs[runs["status"] == "complete"]
    settings = setting_columns(runs)
    if done.empty:
        return pd.DataFrame(columns=[*settings, "strategy", "world_size", "runs"])
    base_label = resolve_baseline(done["strategy"], baseline)
    order = {label: i for i, label in enumerate(dict.fromkeys(done["strategy"]))}
    if base_label is not None:
        order[base_label] = -1  # the baseline's rows first in each setting
    keys = [*settings, "strategy", "world_size"]
    grouped = done.groupby([done[k].astype(str) for k in keys], sort=False, dropna=False)
    rows = []
    for _, group in grouped:
        first = group.iloc[0]
        rows.append({**{k: first[k] for k in keys}, **_group_stats(group)})
    table = pd.DataFrame(rows)
    table["_setting"] = table[settings].astype(str).agg("|".join, axis=1)
    table["_order"] = table["strategy"].map(order)
    table = table.sort_values([*settings, "_order", "world_size"], key=_by_value, kind="stable").reset_index(drop=True)

    def lookup(setting: str, strategy: Optional[str], world_size) -> Optional[pd.Series]:
        mask = (table["_setting"] == setting) & (table["strategy"] == strategy) & (table["world_size"] == world_size)
        hit = table[mask.fillna(False).astype(bool)]  # a run without a world size matches nothing
        return hit.iloc[0] if len(hit) else None

    speedup, scaling, gap, ttt_speedup = [], [], [], []
    for _, row in table.iterrows():
        base = lookup(row["_setting"], base_label, row["world_size"]) if base_label else None
        one = lookup(row["_setting"], row["strategy"], 1)
        speedup.append(base["iter_ms"] / row["iter_ms"] if base is not None else math.nan)
        scaling.append(row["throughput_samples_s"] / one["throughput_samples_s"] if one is not None else math.nan)
        gap.append((row["test_acc"] - base["test_acc"]) * 100.0 if base is not None else math.nan)
        both = base is not None and math.isfinite(base["time_to_target_s"]) and math.isfinite(row["time_to_target_s"])
        ttt_speedup.append(base["time_to_target_s"] / row["time_to_target_s"] if both else math.nan)
    table["speedup_vs_baseline"] = speedup
    table["scaling_speedup"] = scaling
    table["acc_gap_pp"] = gap
    table["ttt_speedup"] = ttt_speedup
    table["baseline"] = base_label
    return table.drop(columns=["_setting", "_order"])

LINK_KEY = "cluster.bandwidth"


def link_rate_mbit(value: object) -> float:
    """An emulated link rate as written in the config (``1gbit``) in Mbit/s; NaN if not a rate."""
    from ..launch.link import parse_rate

    try:
        return parse_rate(str(value)) / 1e6
    except Exception:
        return math.nan


def varies_link_rate(table: pd.DataFrame) -> bool:
    return LINK_KEY in table.columns and table[LINK_KEY].astype(str).nunique() > 1

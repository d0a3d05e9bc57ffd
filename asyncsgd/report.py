"""asyncsgd-report: run directories -> tables (markdown, CSV) -> plots (PNG).

Pure functions, in pipeline order:

    find_runs(dirs)            run dirs (and the multirun sweeps that hold them)
    load_run(path)             one run's documented outputs: summary.json,
                               metrics.csv (or .jsonl), .hydra/config.yaml
    runs_frame(runs)           one row per run -> runs.csv
    speedup_frame(runs_df)     one row per (setting, strategy, world size) -> speedup.csv
    render_markdown(...)       report.md
    plot_*(...)                the PNG figures

and :func:`make_report` ties them together for the ``asyncsgd-report`` command.

Every number in the tables comes from runs.csv by one documented rule
(medians over the runs of a group, ratios of those medians), so a reader can
recompute any cell by hand. Nothing else in a run dir is read: ``.asyncsgd/``
is internal and may change.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .io import atomic_write, atomic_write_text

PHASES = ["data", "forward", "backward", "comm_wait", "update"]
PHASE_NAMES = {"data": "data", "forward": "forward", "backward": "backward",
               "comm_wait": "communication wait", "update": "update", "other": "other"}

# Settings that always name a strategy in tables, whether or not they vary: a
# `delayed` row means nothing without its k.
STRATEGY_KEYS = {"layerwise": ("wait_at",), "delayed": ("k",)}

# Config groups whose other keys only mean something for one choice (model.hidden
# exists for mlp alone): such a key is a setting only if it varies within a choice.
CHOICE_GROUPS = ("dataset", "model", "backend", "strategy", "launcher")

# Config keys that do not define what is measured, so runs differing only in them
# are compared as one setting. seed is here on purpose: repeated seeds are pooled.
NOT_SETTINGS = re.compile(
    r"^(seed|world_size|progress_bar|strategy\..*|fault\..*|checkpoint\..*|resume\..*|launcher\..*|backend\.(timeout_s|master_port|mpiexec|"
    r"mpiexec_args)|dataset\.(root|download)|train\.(log_every_steps|measure_comm))$"
)

# The setting columns every row carries (from the config); other varying keys are
# added under their dotted config names, which is how settings are told apart from results.
BASE_SETTINGS = ["dataset", "model", "backend", "batch_size"]
SETTING_LABELS = {"dataset": "dataset", "model": "model", "backend": "backend", "batch_size": "batch/worker"}

PLOTS = {
    "loss_vs_iteration": "loss_vs_iteration.png",
    "loss_vs_time": "loss_vs_time.png",
    "accuracy_vs_epoch": "accuracy_vs_epoch.png",
    "accuracy_vs_time": "accuracy_vs_time.png",
    "speedup_vs_workers": "speedup_vs_workers.png",
    "time_breakdown": "time_breakdown.png",
}


class ReportError(Exception):
    """Input the report cannot use; the message is one line for the user."""


# ---------------------------------------------------------------- finding and loading runs
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

    from .validate import expand_sweep, sweeper_params

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


# ---------------------------------------------------------------- one row per run
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


def strategy_labels(configs: Sequence[Dict[str, object]]) -> List[str]:
    """``name(key=value, ...)`` per run: the strategy's defining keys plus any that vary between runs."""
    flat = [_flatten(c.get("strategy", {}) if isinstance(c.get("strategy"), dict) else {}) for c in configs]
    labels = []
    for f in flat:
        name = str(f.get("name", "unknown"))
        same = [g for g in flat if str(g.get("name", "unknown")) == name]
        keys = [k for k in f if k != "name"]
        varying = set(_varying_keys(same, keys))
        shown = [k for k in keys if k in STRATEGY_KEYS.get(name, ()) or k in varying]
        labels.append(f"{name}({', '.join(f'{k}={_value_text(f[k])}' for k in shown)})" if shown else name)
    return labels


def _setting_extras(configs: Sequence[dict]) -> List[str]:
    """Dotted config keys, beyond BASE_SETTINGS, that vary between runs and define a setting."""
    flat = [_flatten(c) for c in configs]
    base = {"dataset.name", "model.name", "backend.name", "train.batch_size"}
    keys: List[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    return [k for k in _varying_keys(flat, keys) if k not in base and not NOT_SETTINGS.match(k)]


def _warmup(run: Run) -> int:
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


def runs_frame(runs: Sequence[Run], target_acc: Optional[float] = None, relative_to: Optional[Path] = None) -> pd.DataFrame:
    """One row per run: its setting, strategy label, status and measured numbers (runs.csv).

    ``target_acc`` overrides each run's own dataset.target_acc for the time to target.
    """
    configs = [r.config for r in runs]
    labels = strategy_labels(configs)
    extras = _setting_extras(configs)
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


# ---------------------------------------------------------------- one row per group
def resolve_baseline(labels: Iterable[str], baseline: str) -> Optional[str]:
    """The strategy label ``baseline`` names: itself, or the one label of that strategy name."""
    labels = list(dict.fromkeys(labels))
    if baseline in labels:
        return baseline
    named = [label for label in labels if label.split("(", 1)[0] == baseline]
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


# ---------------------------------------------------------------- markdown
def _md_table(headers: List[str], rows: List[List[str]]) -> str:
    numeric = [all(_looks_numeric(r[i]) for r in rows) for i in range(len(headers))]
    line = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    body = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def _looks_numeric(text: str) -> bool:
    return bool(re.match(r"^([-+−]?[\d,.]+|—|never)", text))


def _f(value: float, spec: str) -> str:
    """``spec`` is a format spec, or "sig" for about three significant digits without exponents."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if spec == "sig":
        size = abs(value)
        spec = ",.0f" if size >= 100 else ".1f" if size >= 10 else ".2f" if size >= 1 else "#.3g"
    return format(value, spec).replace("-", "−")


def _cell(row: pd.Series, column: str, spec: str, scale: float = 1.0) -> str:
    """median, with (min–max) when the group holds several runs."""
    text = _f(row[column] * scale, spec)
    if row["runs"] > 1 and f"{column}_min" in row and math.isfinite(row[f"{column}_min"]):
        text += f" ({_f(row[f'{column}_min'] * scale, spec)}–{_f(row[f'{column}_max'] * scale, spec)})"
    return text


def _shown_settings(table: pd.DataFrame) -> Tuple[List[str], Dict[str, str]]:
    """Setting columns that vary (model always shows), and the constant ones for the header line."""
    shown, constant = [], {}
    for column in setting_columns(table):
        if column not in table.columns:
            continue
        values = table[column].astype(str).unique()
        if column == "model" or len(values) > 1:
            shown.append(column)
        else:
            constant[column] = values[0]
    return shown, constant


def _ratio(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"


def iteration_table(table: pd.DataFrame) -> str:
    shown, _ = _shown_settings(table)
    baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else "baseline"
    # a sweep without 1-worker runs (the demo) has no scaling column rather than one of dashes
    scaling = table["scaling_speedup"].notna().any()
    headers = [SETTING_LABELS.get(c, c) for c in shown] + [
        "strategy", "workers", "runs", "iteration (ms)", "throughput (samples/s)", f"speedup vs {baseline}",
        *(["speedup vs 1 worker"] if scaling else [])]
    rows = [[_value_text(r[c]) for c in shown] + [
        r["strategy"], str(r["world_size"]), str(r["runs"]), _cell(r, "iter_ms", "sig"),
        _cell(r, "throughput_samples_s", ",.0f"), _ratio(r["speedup_vs_baseline"]),
        *([_ratio(r["scaling_speedup"])] if scaling else [])] for _, r in table.iterrows()]
    return _md_table(headers, rows)


def convergence_table(table: pd.DataFrame) -> str:
    shown, _ = _shown_settings(table)
    baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else "baseline"
    collapsed = "collapsed" in table and (table["collapsed"] > 0).any()
    headers = [SETTING_LABELS.get(c, c) for c in shown] + [
        "strategy", "workers", "test accuracy (%)", f"gap to {baseline} (pp)", "target (%)",
        "time to target (s)", "reached", f"time-to-target speedup vs {baseline}",
        f"iteration speedup vs {baseline}", *(["collapsed"] if collapsed else [])]
    rows = []
    for _, r in table.iterrows():
        ttt_text = _ttt_cell(r)
        gap = r["acc_gap_pp"]
        rows.append([_value_text(r[c]) for c in shown] + [
            r["strategy"], str(r["world_size"]), _cell(r, "test_acc", ".2f", 100.0),
            "—" if not math.isfinite(gap) else f"{gap:+.2f}".replace("-", "−"),
            _f(r["target_acc"] * 100.0, ".1f"), ttt_text if math.isfinite(r["target_acc"]) else "—",
            f"{int(r['target_reached'])}/{int(r['runs'])}" if math.isfinite(r["target_acc"]) else "—",
            _ratio(r["ttt_speedup"]), _ratio(r["speedup_vs_baseline"]),
            *([f"**{int(r['collapsed'])}/{int(r['runs'])}**" if r["collapsed"] else "0"] if collapsed else [])])
    return _md_table(headers, rows)


def collapse_lines(runs: pd.DataFrame) -> List[str]:
    """A warning per complete run whose training loss sat at chance level (summary.json's collapse)."""
    if "collapse" not in runs:
        return []
    hit = runs[(runs["status"] == "complete") & runs["collapse"].notna()]
    return [f"- `{r['run']}` ({r['strategy']}, {r['world_size']} workers, seed {r['seed']}): {r['collapse']}"
            for _, r in hit.iterrows()]


def _ttt_cell(row: pd.Series) -> str:
    def text(value: float) -> str:
        return "never" if value == math.inf else _f(value, "sig")

    cell = text(row["time_to_target_s"])
    if row["runs"] > 1 and math.isfinite(row["time_to_target_s_min"]):
        cell += f" ({text(row['time_to_target_s_min'])}–{text(row['time_to_target_s_max'])})"
    return cell


def breakdown_table(table: pd.DataFrame) -> str:
    shown, _ = _shown_settings(table)
    phases = [*PHASES, "other"]
    headers = [SETTING_LABELS.get(c, c) for c in shown] + ["strategy", "workers"] + [
        f"{PHASE_NAMES[p]} (ms)" for p in phases] + ["total (ms)"]
    rows = [[_value_text(r[c]) for c in shown] + [r["strategy"], str(r["world_size"])] + [
        _f(r[f"t_{p}_ms"], "sig") for p in phases] + [_f(r["t_iter_ms"], "sig")] for _, r in table.iterrows()]
    return _md_table(headers, rows)


def _problem_lines(runs: pd.DataFrame, missing: List[dict], relative_to: Optional[Path]) -> List[str]:
    """Every run left out of a table or a plot, and why: nothing is dropped silently."""
    lines = []
    for _, r in runs.iterrows():
        what = f"{r['strategy']}, {r['world_size']} workers, seed {r['seed']}"
        why = f": {r['error']}" if isinstance(r["error"], str) and r["error"] else ""
        if r["status"] != "complete":
            lines.append(f"- `{r['run']}` ({what}): **{r['status']}**{why}")
        elif why:
            lines.append(f"- `{r['run']}` ({what}): complete, but {r['error']} (left out of what needs it)")
    for m in missing:
        sweep = os.path.relpath(m["sweep"], relative_to) if relative_to else str(m["sweep"])
        lines.append(f"- `{sweep}` job {m['job']} (`{m['overrides']}`): **not started** (no run directory)")
    return lines


def render_markdown(runs: pd.DataFrame, table: pd.DataFrame, missing: List[dict], title: str,
                    inputs: Sequence[str], relative_to: Optional[Path] = None, plots: Sequence[str] = ()) -> str:
    complete = runs[runs["status"] == "complete"]
    problems = _problem_lines(runs, missing, relative_to)
    hosts = ", ".join(sorted({str(h) for h in complete["host"].dropna()})) or "unknown"
    started = sorted(str(s)[:10] for s in complete["started_at"].dropna())
    dates = "unknown" if not started else started[0] if started[0] == started[-1] else f"{started[0]} to {started[-1]}"
    out = [f"# {title}", "",
           f"{len(complete)} complete run(s) of {len(runs) + len(missing)} from {', '.join(f'`{i}`' for i in inputs)}; "
           f"machine: {hosts}; run on {dates}.", ""]
    if table.empty:
        out += ["No run completed, so there are no tables.", ""]
    else:
        _, constant = _shown_settings(table)
        if constant:
            out += ["All rows share " + ", ".join(f"{SETTING_LABELS.get(k, k)} {v}" for k, v in constant.items()) + ".", ""]
        baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else None
        if baseline is None:
            out += ["The baseline strategy is not among the complete runs, so the columns comparing with it are empty.", ""]
        if (table["runs"] > 1).any():
            out += ["Where a row pools several runs (seeds), a cell shows their median and, in parentheses, min–max.", ""]
        base = baseline or "the baseline"
        out += [
            "## Iteration time and throughput", "",
            f"Median time per training iteration after warm-up and global throughput, with the speedup over {base} "
            "(its iteration time divided by this row's, same setting and workers) and, where 1-worker runs exist, "
            "over one worker of the same strategy (throughput ratio at a fixed per-worker batch).", "",
            iteration_table(table), "",
            "## Convergence", "",
            f"Test accuracy at the end of training, its gap to {base} in percentage points, and the training time "
            "(wall-clock, test evaluations left out) to first reach the target accuracy (a run that never did counts "
            f"as infinitely slow), with its speedup over {base} next to the per-iteration speedup.", "",
            convergence_table(table), "",
            "## Where the time goes", "",
            "Mean milliseconds per iteration after warm-up in each phase on rank 0 (communication wait is time "
            "blocked on reductions; other is the rest of the loop).", "",
            breakdown_table(table), "",
        ]
    warnings = collapse_lines(runs)
    if warnings:
        out += ["## Warning: training collapsed to chance level", "",
                "These runs completed, but their mean training loss sat at chance level, ln(classes), for a whole "
                "epoch (asyncsgd.collapse): they stopped learning. Their numbers are in the tables above.", "",
                *warnings, ""]
    out += ["## Runs that failed, did not finish or lack outputs", ""]
    out += problems if problems else [f"None: all {len(runs)} run(s) completed."]
    out += [""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------- plots
def _figure(nrows: int, ncols: int, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.5, 4.6 * ncols), 3.2 * nrows + 1.6), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")


def _styles(labels: Iterable[str]) -> Dict[str, dict]:
    """Colour and dash per strategy. Equivalent strategies (sync, layerwise, ddp) draw the very same
    loss curve; the dashes and the thinning widths keep each of them visible on top of the others."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    dashes = ["-", "--", "-.", ":"]
    return {label: {"color": cmap(i % 10), "ls": dashes[i % len(dashes)], "lw": max(0.8, 2.2 - 0.25 * i)}
            for i, label in enumerate(dict.fromkeys(labels))}


def _setting_name(values: dict) -> str:
    return ", ".join(f"{SETTING_LABELS.get(k, k)} {_value_text(v)}" for k, v in values.items())


def _facets(frame: pd.DataFrame) -> List[Tuple[str, pd.DataFrame]]:
    """(setting description, its rows) per setting among the complete runs; model is always named."""
    complete = frame[frame["status"] == "complete"] if "status" in frame else frame
    varying = [c for c in setting_columns(frame) if c in complete and (c == "model" or complete[c].astype(str).nunique() > 1)]
    if complete.empty or not varying:
        return []
    return [(_setting_name({c: group.iloc[0][c] for c in varying}), group)
            for _, group in complete.sort_values(varying, key=_by_value, kind="stable")
                                     .groupby([complete[c].astype(str) for c in varying], sort=False)]


def _aligned(curves: List[pd.DataFrame], key: str, x: str, y: str) -> pd.DataFrame:
    """Median and min/max over runs of ``y`` at each ``key`` (step or epoch), at the median ``x``."""
    joined = pd.concat(curves)
    by_key = joined.groupby(key)
    agg = by_key.agg(y_med=(y, "median"), y_min=(y, "min"), y_max=(y, "max"))
    agg["x"] = by_key[x].median() if x != key else agg.index.astype(float)
    return agg.reset_index(drop=True)


def _plot_curves(runs: Sequence[Run], frame: pd.DataFrame, path: Path, *, kind: str, x: str, y: str,
                 title: str, xlabel: str, ylabel: str, scale: float = 1.0, smooth: bool = False,
                 log: bool = False) -> None:
    """One line per strategy (median over its runs, min–max band), facets per setting and world size.

    ``frame`` is runs_frame(runs): row i describes runs[i].
    """
    # on a time axis, evaluations within epochs (kind "eval") are points of the accuracy curve too
    kinds = [kind, "eval"] if kind == "epoch" and x != "epoch" else [kind]
    key = "step" if kind == "iter" or x != "epoch" else "epoch"
    complete = frame[frame["status"] == "complete"]
    facets = _facets(frame)
    sizes = sorted(complete["world_size"].dropna().unique())
    styles = _styles(complete["strategy"])
    fig, axes = _figure(max(1, len(facets)), max(1, len(sizes)), title)
    for i, (name, group) in enumerate(facets):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            ax.set_title(f"{name}, {int(size)} worker{'s' if size != 1 else ''}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            for label, members in group[group["world_size"] == size].groupby("strategy", sort=False):
                curves = []
                for index in members.index:
                    m = runs[index].metrics
                    if m is None:
                        continue
                    rows = m.loc[m["kind"].isin(kinds) & m[y].notna(), list(dict.fromkeys([key, x, y]))]
                    if key == "epoch":
                        rows[key] = rows[key] + 1  # evaluations come at the end of an epoch: epochs completed
                    if len(rows):
                        curves.append(rows)
                if not curves:
                    continue
                agg = _aligned(curves, key, x, y)
                ys = agg[["y_med", "y_min", "y_max"]] * scale
                window = max(1, len(agg) // 50) if smooth else 1
                if window > 1:
                    # rank 0's local-batch loss is noisy: a centred moving mean over 2% of the run shows the trend
                    ys = ys.rolling(window, center=True, min_periods=1).mean()
                    ax.set_ylabel(f"{ylabel}, mean of {window} steps")
                ax.plot(agg["x"], ys["y_med"], label=label, marker="o" if kind == "epoch" else None, ms=3,
                        **styles[label])
                if len(curves) > 1:
                    ax.fill_between(agg["x"], ys["y_min"], ys["y_max"], color=styles[label]["color"], alpha=0.15, lw=0)
            if not ax.lines:
                ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes, color="grey")
            elif log and all((line.get_ydata() > 0).all() for line in ax.lines):
                ax.set_yscale("log")  # late training is a factor of 100 below the start: linear hides it
            if x == "epoch":
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5"
    _legend(fig, axes)
    _save(fig, path)


def _legend(fig, axes, title: str = "strategy") -> None:
    handles, labels = {}, []
    for row in axes:
        for ax in row:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in handles:
                    handles[l] = h
                    labels.append(l)
    if handles:
        fig.legend([handles[l] for l in labels], labels, loc="outside lower center", fontsize=8, title=title,
                   ncols=min(len(labels), 4))


TIME_LABEL = "training time since start (s, test evaluations left out)"


def plot_loss(runs: Sequence[Run], frame: pd.DataFrame, path: Path, x: str = "step") -> None:
    """Training loss (rank 0's local batch) against iteration or training time, per strategy."""
    time_axis = x in ("wall_s", "train_s")
    _plot_curves(runs, frame, path, kind="iter", x=x, y="loss", smooth=True, log=True,
                 title=f"Training loss vs {'training time' if time_axis else 'iteration'}",
                 xlabel=TIME_LABEL if time_axis else "iteration",
                 ylabel="training loss (rank 0 batch)")


def plot_accuracy(runs: Sequence[Run], frame: pd.DataFrame, path: Path, x: str = "epoch") -> None:
    """Test accuracy at each evaluation against epochs completed or training time."""
    time_axis = x in ("wall_s", "train_s")
    _plot_curves(runs, frame, path, kind="epoch", x=x, y="test_acc", scale=100.0,
                 title=f"Test accuracy vs {'training time' if time_axis else 'epoch'}",
                 xlabel=TIME_LABEL if time_axis else "epochs completed",
                 ylabel="test accuracy (%)")


def plot_speedup(table: pd.DataFrame, path: Path) -> None:
    """Throughput speedup over one worker against workers, per strategy, with the linear ideal."""
    facets = _facets(table)
    fig, axes = _figure(1, max(1, len(facets)), "Speedup vs number of workers")
    styles = _styles(table["strategy"]) if not table.empty else {}
    for ax, (name, group) in zip(axes[0], facets or [("", table)]):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("workers")
        ax.set_ylabel("throughput over 1 worker (×)")
        ax.grid(alpha=0.3)
        sizes = sorted(group["world_size"].dropna().unique()) if not group.empty else []
        plotted = False
        for label, rows in group.groupby("strategy", sort=False):
            rows = rows[rows["scaling_speedup"].notna()].sort_values("world_size")
            if len(rows):
                ax.plot(rows["world_size"], rows["scaling_speedup"], marker="o", label=label, **styles[label])
                plotted = True
        if plotted:
            ax.plot(sizes, sizes, ls="--", color="black", lw=1, label="ideal (linear)")
            ax.set_xticks(sizes)
        else:
            ax.text(0.5, 0.5, "no 1-worker runs to scale from", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    _legend(fig, axes)
    _save(fig, path)


def plot_breakdown(table: pd.DataFrame, path: Path) -> None:
    """Stacked mean time per iteration by phase, one bar per strategy and world size."""
    facets = _facets(table)
    width = max([len(g) for _, g in facets] or [1])
    fig, axes = _figure(max(1, len(facets)), 1, "Time per iteration by phase (mean after warm-up, rank 0)")
    fig.set_size_inches(max(8.0, 0.9 * width + 4.0), fig.get_size_inches()[1])
    from matplotlib import colormaps

    phase_colors = {p: colormaps["Set2"](i) for i, p in enumerate([*PHASES, "other"])}
    for row, (name, group) in zip(axes, facets or [("", table)]):
        ax = row[0]
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("time per iteration (ms)")
        ax.grid(alpha=0.3, axis="y")
        if group.empty:
            ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        positions = np.arange(len(group))
        bottom = np.zeros(len(group))
        for p in [*PHASES, "other"]:
            values = group[f"t_{p}_ms"].fillna(0.0).clip(lower=0.0).to_numpy()
            ax.bar(positions, values, bottom=bottom, color=phase_colors[p], label=PHASE_NAMES[p], width=0.7)
            bottom += values
        ax.set_xticks(positions, [f"{s}\n{int(w)} worker{'s' if w != 1 else ''}"
                                  for s, w in zip(group["strategy"], group["world_size"])], fontsize=7)
    _legend(fig, axes, title="phase")
    _save(fig, path)


LINK_KEY = "cluster.bandwidth"


def link_rate_mbit(value: object) -> float:
    """An emulated link rate as written in the config (``1gbit``) in Mbit/s; NaN if not a rate."""
    from .launch.netns import parse_rate

    try:
        return parse_rate(str(value)) / 1e6
    except Exception:
        return math.nan


def varies_link_rate(table: pd.DataFrame) -> bool:
    return LINK_KEY in table.columns and table[LINK_KEY].astype(str).nunique() > 1


def plot_speedup_vs_bandwidth(table: pd.DataFrame, path: Path) -> None:
    """Speedup over the baseline against the emulated link rate, per strategy (nocomm left out),
    one panel per other setting (batch size...): where each strategy wins as the network gets faster."""
    others = table.drop(columns=[LINK_KEY])
    facets = _facets(others) or [("", others)]
    fig, axes = _figure(1, len(facets), f"Speedup over {table['baseline'].dropna().iloc[0] if table['baseline'].notna().any() else 'the baseline'} vs link rate (emulated)")
    styles = _styles(table["strategy"])
    for ax, (name, group) in zip(axes[0], facets):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("link rate (Mbit/s, log scale)")
        ax.set_ylabel("speedup over baseline (×)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.axhline(1.0, color="black", lw=1, ls="--")
        rows = table.loc[group.index].assign(_mbit=lambda f: f[LINK_KEY].map(link_rate_mbit))
        # nocomm is no synchronization at all: its 10-50x at slow links would flatten every real line
        rows = rows[rows["strategy"] != "nocomm"]
        for (label, _), line in rows.groupby(["strategy", "world_size"], sort=False):
            line = line[line["speedup_vs_baseline"].notna() & line["_mbit"].notna()].sort_values("_mbit")
            if len(line):
                ax.plot(line["_mbit"], line["speedup_vs_baseline"], marker="o", label=label, **styles[label])
        rates = sorted(rows["_mbit"].dropna().unique())
        if rates:
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
    _legend(fig, axes)
    _save(fig, path)


# ---------------------------------------------------------------- the command
@dataclass
class Report:
    out: Path
    markdown: Path
    runs_csv: Path
    speedup_csv: Path
    plots: List[Path]
    main_table: str  # the iteration-time table, for the terminal
    runs: pd.DataFrame
    table: pd.DataFrame


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())


def make_report(dirs: Sequence[Path], out: Optional[Path] = None, baseline: str = "sync",
                target_acc: Optional[float] = None, title: Optional[str] = None) -> Report:
    """Read the runs under ``dirs`` and write report.md, runs.csv, speedup.csv and the plots to ``out``."""
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out is not None else dirs[0]
    if target_acc is not None and not 0.0 < target_acc <= 1.0:
        raise ReportError(f"--target-acc {target_acc} must be a fraction in (0, 1], e.g. 0.95")
    runs, sweeps = load_runs(dirs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ReportError(f"{out}: cannot write to this directory")
    # run paths relative to `out`, so report.md and a committed report read the same anywhere
    frame = runs_frame(runs, target_acc, relative_to=out.resolve())
    table = speedup_frame(frame, baseline)
    missing = missing_jobs(runs, sweeps)

    paths = {name: out / file for name, file in PLOTS.items()}
    plot_loss(runs, frame, paths["loss_vs_iteration"], x="step")
    plot_loss(runs, frame, paths["loss_vs_time"], x="train_s")
    plot_accuracy(runs, frame, paths["accuracy_vs_epoch"], x="epoch")
    plot_accuracy(runs, frame, paths["accuracy_vs_time"], x="train_s")
    plot_speedup(table, paths["speedup_vs_workers"])
    plot_breakdown(table, paths["time_breakdown"])
    if varies_link_rate(table):  # a sweep over emulated links (scripts/bench-overlap --emulated A,B,C)
        paths["speedup_vs_bandwidth"] = out / "speedup_vs_bandwidth.png"
        plot_speedup_vs_bandwidth(table, paths["speedup_vs_bandwidth"])

    stamp = _dt.date.today().isoformat()
    heading = title or f"asyncsgd report ({stamp})"
    markdown = render_markdown(frame, table, missing, heading, [os.path.relpath(d.resolve(), out.resolve()) for d in dirs],
                               relative_to=out.resolve(), plots=list(paths.values()))
    _write_csv(frame, out / "runs.csv")
    _write_csv(table, out / "speedup.csv")
    atomic_write_text(out / "report.md", markdown)
    return Report(out=out, markdown=out / "report.md", runs_csv=out / "runs.csv", speedup_csv=out / "speedup.csv",
                  plots=list(paths.values()), main_table=iteration_table(table) if not table.empty else "(no complete runs)",
                  runs=frame, table=table)

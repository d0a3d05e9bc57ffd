"""Predicted against measured: every run of a directory, from its profile and the calibrated network.

    asyncsgd-project validate results/bench/sweep --profiles profiles/ --network calibration.json

A run is predicted from its own config only: the strategy section picks the
schedule (and the rule set), the backend picks the calibrated network, the
emulated link rate (``cluster.bandwidth``) sets beta, ``world_size`` the
workers and their share of the cores, ``train.max_steps`` and
``train.warmup_steps`` the iterations the median is taken over (as the runner
takes it), and the profile is the one measured for the run's model, input
shape and batch. No per-run, per-cell or per-strategy factor enters.

Runs are found and read by the report's loader (:func:`asyncsgd.report.load_runs`,
:func:`asyncsgd.report.runs_frame`), so validation and report agree on what a
run and its strategy label are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import pandas as pd

from .. import report as house
from ..config import MPIBackendConfig
from ..report.frames import nice_suffix, split_nice
from .profile import Profile, ProfileError
from .schedules import IDEAL, ScheduleError, StrategySpec, predict, ruleset_for, worker_cpu

LOOPBACK_BPS = 1e12  # no rate limit: the CPU model bounds a loopback reduction


class ValidationError(ValueError):
    """Input validate cannot use; one line for the user."""


def _flat(config: dict) -> dict:
    out = {}

    def walk(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(config)
    return out


def match_profile(profiles: Sequence[Profile], config: dict) -> Optional[Profile]:
    """The profile of the run's model, batch and (when both say) input shape."""
    flat = _flat(config)
    model, batch = flat.get("model.name"), flat.get("train.batch_size")
    shape = flat.get("dataset.shape")
    for p in profiles:
        if p.model != model or p.batch_size != batch:
            continue
        if p.input_shape and shape is not None and list(p.input_shape) != list(shape):
            continue
        return p
    return None


def link_rate_bps(config: dict) -> Optional[float]:
    """The emulated link rate of the run; None on loopback (launcher local or external)."""
    flat = _flat(config)
    if flat.get("launcher.name") != "emulated":
        return None
    mbit = house.link_rate_mbit(flat.get("cluster.bandwidth"))
    return None if math.isnan(mbit) else mbit * 1e6


SETTING = ["backend", "model", "batch_size", "link", "world_size"]


@dataclass
class Validation:
    frame: pd.DataFrame  # one row per run
    cells: pd.DataFrame  # one row per setting: is the ranking of strategies kept?

    def summary(self) -> Dict[str, float]:
        ok = self.frame[self.frame["predicted_ms"].notna()]
        errs = ok["error"].abs()
        worst = ok.loc[errs.idxmax()] if len(ok) else None
        return {
            "runs": int(len(self.frame)), "predicted": int(len(ok)),
            "median_abs_error": float(errs.median()) if len(ok) else math.nan,
            "mean_abs_error": float(errs.mean()) if len(ok) else math.nan,
            "median_abs_median_error": float(ok["median_error"].abs().median()) if len(ok) else math.nan,
            "p90_abs_error": float(errs.quantile(0.9)) if len(ok) else math.nan,
            "worst_error": float(worst["error"]) if worst is not None else math.nan,
            "worst_run": str(worst["run"]) if worst is not None else "",
            "cells": int(len(self.cells)),
            "ranking_kept": float(self.cells["ranking_kept"].mean()) if len(self.cells) else math.nan,
            "ranking_kept_up_to_noise": float(self.cells["ranking_kept_up_to_noise"].mean()) if len(self.cells) else math.nan,
            **{f"noise_{k}": v for k, v in repeat_noise(ok).items()},
        }

    def settings(self) -> pd.DataFrame:
        """Per setting (backend, model, batch, link, world size): runs, median and worst error."""
        ok = self.frame[self.frame["predicted_ms"].notna()].assign(abs_error=lambda f: f["error"].abs())
        rows = []
        for key, cell in ok.groupby(SETTING, dropna=False):
            worst = cell.loc[cell["abs_error"].idxmax()]
            rows.append({**dict(zip(SETTING, key)), "runs": int(len(cell)),
                         "median_abs_error": float(cell["abs_error"].median()),
                         "worst_error": float(worst["error"]), "worst_run": str(worst["run"])})
        return pd.DataFrame(rows, columns=[*SETTING, "runs", "median_abs_error", "worst_error", "worst_run"])


def repeat_noise(frame: pd.DataFrame) -> Dict[str, float]:
    """How well a run's own repeats predict it: the floor under any model's error on these runs.

    Each run of a (setting, strategy) with repeats is predicted by the mean of its other repeats
    (leave-one-out); ``loo`` is the median absolute relative error of that, as ``error`` is
    computed. Even a model that knew each setting's true mean iteration time would miss by the
    runs' own scatter: for n repeats with independent Gaussian scatter sigma, the leave-one-out
    error has the scale sigma * sqrt(n / (n - 1)) and the true mean's error sigma, so
    ``floor`` = the median over runs of |leave-one-out error| * sqrt((n - 1) / n) estimates the
    median absolute error of that perfect model."""
    ok = frame[frame["measured_ms"].notna()]
    errors, scaled = [], []
    for _, cell in ok.groupby([*SETTING, "strategy"], dropna=False):
        n = len(cell)
        if n < 2:
            continue
        values = cell["measured_ms"].to_numpy(dtype=float)
        for i, x in enumerate(values):
            others = (values.sum() - x) / (n - 1)
            e = abs(others / x - 1.0)
            errors.append(e)
            scaled.append(e * math.sqrt((n - 1) / n))
    if not errors:
        return {"repeat_runs": 0, "loo": math.nan, "floor": math.nan}
    return {"repeat_runs": len(errors), "loo": float(pd.Series(errors).median()),
            "floor": float(pd.Series(scaled).median())}


def chosen_layout(strategy: dict, summary: Optional[dict]) -> dict:
    """The strategy config with layerwise's ``bucket_mb=auto`` replaced by the layout the run kept
    (summary.json ``layout.auto.chosen``; null there means one bucket / chunks not cut)."""
    if strategy.get("bucket_mb") != "auto":
        return strategy
    chosen = ((summary or {}).get("layout") or {}).get("auto", {}).get("chosen")
    if not chosen:
        raise ScheduleError("a strategy.bucket_mb=auto run is predicted with the layout it kept, and its "
                            "summary.json does not say which (a runs.csv row does not carry it: validate run dirs)")
    from ..strategies.tuning import Layout

    layout = Layout.from_description(chosen)
    return {**strategy, "bucket_mb": layout.bucket_mb, "chunk_mb": layout.chunk_mb}


def applied_nice(flat: dict, summary: Optional[dict]) -> int:
    """The nice increment the run's training thread took: what summary.json says was applied
    (``cpu_priority.compute_nice``: 0 where per-thread priorities are not supported, less than asked
    where the thread started above nice 0 and hit 19), else the configured backend.compute_nice.
    The model reads it as relative to backend threads at nice 0 (network.yielded_share)."""
    applied = ((summary or {}).get("cpu_priority") or {}).get("compute_nice")
    return int(applied if applied is not None else flat.get("backend.compute_nice") or 0)


def predict_run(config: dict, meta: dict, profiles: Sequence[Profile], networks: Dict[str, object],
                with_ideal: bool = True, summary: Optional[dict] = None) -> dict:
    """One row: the run's measured numbers (``meta``: a runs.csv row; ``summary``: its summary.json,
    where there is one) beside its prediction."""
    flat = _flat(config)
    backend = meta["backend"]
    rate = link_rate_bps(config)
    nice = applied_nice(flat, summary)
    # the report's label carries +nice already (a variant ranked apart); a config without a label does not
    label = str(meta["strategy"])
    if nice and "+nice" not in label:
        label += nice_suffix(nice)
    row = {"run": str(meta["run"]), "backend": backend, "model": meta["model"], "batch_size": meta["batch_size"],
           "link": flat.get("cluster.bandwidth") if rate else "loopback", "world_size": meta["world_size"],
           "strategy": label, "measured_ms": float(meta.get("t_iter_s", math.nan)) * 1e3,
           "measured_median_ms": float(meta["median_iter_s"]) * 1e3,
           "measured_comm_wait_ms": float(meta.get("t_comm_wait_s", math.nan)) * 1e3, "problem": None}
    profile = match_profile(profiles, config)
    if profile is None:
        row["problem"] = (f"no profile for model={meta['model']} batch={meta['batch_size']} "
                          f"shape={flat.get('dataset.shape')}")
        return row
    if backend not in networks:
        row["problem"] = f"no calibrated network for backend={backend}"
        return row
    try:
        spec = StrategySpec.from_config(chosen_layout(config["strategy"], summary))
        rules = ruleset_for(config)
        net = networks[backend].with_link(rate_bps=rate if rate else LOOPBACK_BPS)
        # the mode the run's worker used (backend.progress=auto depends on the strategy, and for
        # layerwise on the layout it kept: the run records the mode it ended with)
        progress = ((summary or {}).get("comm") or {}).get("progress") or MPIBackendConfig(
            progress=flat.get("backend.progress", "thread")).resolve_progress(
            SimpleNamespace(name=spec.name, fuse=flat.get("strategy.fuse", True)))
        if backend == "mpi" and progress == "thread" and flat.get("backend.max_inflight"):
            # the run's own setting: how many reductions its communication thread kept in flight per channel
            net = replace(net, channels=int(flat["backend.max_inflight"]), channel_priority=True)
        steps = int(flat.get("train.max_steps") or meta.get("steps") or 20)
        warmup = min(int(flat.get("train.warmup_steps") or 0), steps - 1)
        world = int(meta["world_size"])
        cpu = worker_cpu(profile, world, int(flat.get("train.threads") or 1))
        pred = predict(profile, net, world, spec, rules, cpu=cpu, steps=steps, warmup=warmup, compute_nice=nice)
        row.update(profile=profile.name, rules=rules, predicted_ms=pred.mean_s * 1e3,
                   predicted_median_ms=pred.iter_s * 1e3, predicted_comm_wait_ms=pred.comm_wait_s * 1e3)
        if with_ideal:
            row["ideal_ms"] = predict(profile, net, world, spec, IDEAL, cpu=cpu).period_s * 1e3
    except (ScheduleError, ProfileError) as exc:
        row["problem"] = str(exc)
    return row


def _finish(rows: List[dict], where: str) -> Validation:
    if not rows:
        raise ValidationError(f"no complete runs in {where}")
    out = pd.DataFrame(rows)
    for col in ("predicted_ms", "predicted_median_ms", "predicted_comm_wait_ms", "ideal_ms"):
        if col not in out:
            out[col] = math.nan
    if out["predicted_ms"].isna().all():
        raise ValidationError("no run could be predicted: " + "; ".join(sorted(set(out["problem"].dropna()))))
    out["error"] = out["predicted_ms"] / out["measured_ms"] - 1.0
    out["median_error"] = out["predicted_median_ms"] / out["measured_median_ms"] - 1.0
    return Validation(out, ranking(out))


def validate(dirs: Sequence[Path], profiles: Sequence[Profile], networks: Dict[str, object],
             with_ideal: bool = True) -> Validation:
    """Predict every complete run under ``dirs`` (see the module docstring)."""
    try:
        runs, _ = house.load_runs([Path(d) for d in dirs])
    except house.ReportError as exc:
        raise ValidationError(str(exc)) from None
    # run paths relative to the (first) directory given, so a committed report names no machine's paths
    frame = house.runs_frame(runs, relative_to=Path(dirs[0]).resolve())
    rows = [predict_run(run.config, meta.to_dict(), profiles, networks, with_ideal, run.summary)
            for run, (_, meta) in zip(runs, frame.iterrows()) if meta["status"] == "complete"]
    return _finish(rows, ", ".join(map(str, dirs)))


def _strategy_config(label: str) -> dict:
    """``layerwise(wait_at=forward, priority=true)`` -> {"name": "layerwise", "wait_at": "forward", "priority": True}."""
    name, _, rest = label.partition("(")
    config: dict = {"name": name}
    for item in filter(None, (x.strip() for x in rest.rstrip(")").split(","))):
        key, _, value = item.partition("=")
        config[key] = {"true": True, "false": False, "None": None, "null": None}.get(value, value)
        for cast in (int, float):
            try:
                config[key] = cast(value)
                break
            except ValueError:
                pass
    return config


def validate_runs_csv(path: Path, profiles: Sequence[Profile], networks: Dict[str, object], warmup: int = 5,
                      with_ideal: bool = True) -> Validation:
    """Predict the runs of a report's runs.csv whose run dirs are gone (a committed reference report).

    runs.csv keeps each run's setting, strategy label, steps and median; what it lacks is taken
    from the benchmark that made them (``asyncsgd-bench``): synthetic data, ``train.warmup_steps``
    = ``warmup``, one torch thread, the emulated launcher where ``cluster.bandwidth`` is set.
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path}: cannot read a runs.csv ({exc})") from None
    need = {"run", "status", "backend", "model", "batch_size", "strategy", "world_size", "median_iter_s", "steps"}
    if need - set(frame.columns):
        raise ValidationError(f"{path}: not a report's runs.csv (missing {', '.join(sorted(need - set(frame.columns)))})")
    rows = []
    for _, meta in frame[frame["status"] == "complete"].iterrows():
        bandwidth = meta.get("cluster.bandwidth")
        label, nice = split_nice(str(meta["strategy"]))
        if not nice and "backend.compute_nice" in meta and pd.notna(meta["backend.compute_nice"]):
            nice = int(meta["backend.compute_nice"])  # a report made before +nice labels: a setting column
        config = {"strategy": _strategy_config(label), "backend": {"name": meta["backend"], "compute_nice": nice},
                  "model": {"name": meta["model"]}, "dataset": {"name": meta.get("dataset", "synthetic")},
                  "train": {"batch_size": int(meta["batch_size"]), "max_steps": int(meta["steps"]),
                            "warmup_steps": warmup, "threads": 1},
                  "launcher": {"name": "emulated" if isinstance(bandwidth, str) else "local"},
                  "cluster": {"bandwidth": bandwidth}}
        rows.append(predict_run(config, meta.to_dict(), profiles, networks, with_ideal))
    return _finish(rows, str(path))


TIE = 0.03  # strategies measured this close (relative) count as tied: the run-to-run spread here is ~5%


def ranking(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting: is the order of strategies by iteration time the same predicted and measured?

    Up to noise: a predicted a < b is wrong only if b measured faster than a beyond the spread of
    their repeats (min–max) and beyond ``TIE``; strategies predicted equal (ddp's one bucket is sync)
    may come in either order.
    """
    rows = []
    ok = frame[frame["predicted_ms"].notna() & (frame["strategy"] != "nocomm")]
    for key, cell in ok.groupby(SETTING, dropna=False):
        per = cell.groupby("strategy").agg(measured=("measured_ms", "median"), lo=("measured_ms", "min"),
                                           hi=("measured_ms", "max"), predicted=("predicted_ms", "median"))
        if len(per) < 2:
            continue
        measured = list(per.sort_values("measured").index)
        predicted = list(per.sort_values("predicted").index)
        noisy_ok = True
        for i, a in enumerate(predicted):
            for b in predicted[i + 1:]:
                if per.loc[b, "predicted"] <= per.loc[a, "predicted"] * (1 + 0.005):
                    continue  # predicted tied
                if per.loc[b, "hi"] < per.loc[a, "lo"] and per.loc[b, "measured"] < per.loc[a, "measured"] * (1 - TIE):
                    noisy_ok = False
        rows.append({**dict(zip(SETTING, key)), "strategies": len(per), "measured_order": " < ".join(measured),
                     "predicted_order": " < ".join(predicted), "ranking_kept": measured == predicted,
                     "ranking_kept_up_to_noise": noisy_ok})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- the report
def render(v: Validation, title: str) -> str:
    s = v.summary()
    f = v.frame.sort_values(["backend", "model", "link", "batch_size", "world_size", "strategy"])
    lines = [f"# {title}", "",
             f"{s['predicted']} of {s['runs']} complete runs predicted. Median absolute error of the iteration time "
             f"{s['median_abs_error']:.1%} (mean {s['mean_abs_error']:.1%}, 90th percentile {s['p90_abs_error']:.1%}); "
             f"worst {s['worst_error']:+.1%} (`{s['worst_run']}`). Ranking of strategies kept in "
             f"{s['ranking_kept']:.0%} of {s['cells']} settings exactly, in {s['ranking_kept_up_to_noise']:.0%} up to "
             f"noise (strategies measured within {TIE:.0%} of each other or whose repeats overlap, or predicted "
             "equal, count as ties).", "",
             "Iteration time is the mean of t_iter after the run's warm-up (the report's t_iter_s: what "
             "throughput is), predicted by simulating the run's own steps (`asyncsgd/projection/schedules.py`, "
             "as implemented). The runner's median (median_iter_s) is compared too: it differs from the mean "
             "where iterations alternate long and short (two reductions sharing gloo's two channels), and a "
             "median of an alternating series picks one kind. Ideal: the bound of the strategy's dependencies.",
             "", f"Median absolute error of the median iteration: {s['median_abs_median_error']:.1%}.", ""]
    if s["noise_repeat_runs"]:
        lines += [f"Repeat noise: the mean of a run's other repeats (same setting and strategy) predicts it within "
                  f"{s['noise_loo']:.1%} (median absolute error over {s['noise_repeat_runs']} runs with repeats); "
                  f"a model that knew each setting's true mean iteration time would score about "
                  f"{s['noise_floor']:.1%} on these runs (that error scaled by sqrt((n-1)/n) for n repeats, "
                  "Gaussian scatter assumed): the floor under the model's median error here.", ""]
    headers = ["backend", "link", "batch", "workers", "strategy", "measured (ms)", "predicted (ms)", "error",
               "median measured / predicted (ms)", "ideal (ms)", "comm wait measured / predicted (ms)"]
    body = []
    for _, r in f.iterrows():
        body.append([str(r["backend"]), str(r["link"]), str(r["batch_size"]), str(r["world_size"]), str(r["strategy"]),
                     house.format_number(r["measured_ms"], "sig"), house.format_number(r["predicted_ms"], "sig"),
                     house.format_number(r["error"], "+.1%"),
                     f"{house.format_number(r['measured_median_ms'], 'sig')} / "
                     f"{house.format_number(r['predicted_median_ms'], 'sig')}",
                     house.format_number(r["ideal_ms"], "sig"),
                     f"{house.format_number(r['measured_comm_wait_ms'], 'sig')} / "
                     f"{house.format_number(r['predicted_comm_wait_ms'], 'sig')}"])
    per = v.settings()
    if len(per) > 1:
        lines += ["## Per setting", "",
                  house.markdown_table(["backend", "link", "batch", "workers", "runs", "median abs. error", "worst"],
                                       [[str(c["backend"]), str(c["link"]), str(c["batch_size"]), str(c["world_size"]),
                                         str(c["runs"]), f"{c['median_abs_error']:.1%}",
                                         f"{house.format_number(c['worst_error'], '+.1%')} (`{c['worst_run']}`)"]
                                        for _, c in per.iterrows()]), ""]
    lines += ["## Per run", "", house.markdown_table(headers, body), ""]
    if len(v.cells):
        lines += ["## Ranking of strategies per setting", "",
                  house.markdown_table(["backend", "link", "batch", "workers", "measured order", "predicted order", "kept"],
                                       [[str(c["backend"]), str(c["link"]), str(c["batch_size"]), str(c["world_size"]),
                                         c["measured_order"], c["predicted_order"],
                                         "yes" if c["ranking_kept"] else ("within noise" if c["ranking_kept_up_to_noise"]
                                                                          else "no")]
                                        for _, c in v.cells.iterrows()]), ""]
    problems = v.frame[v.frame["problem"].notna()]
    if len(problems):
        lines += ["## Runs not predicted", ""] + [f"- `{r['run']}`: {r['problem']}" for _, r in problems.iterrows()] + [""]
    lines += ["![predicted vs measured](validation_error.png)", ""]
    return "\n".join(lines)


def plot(v: Validation, path: Path) -> None:
    ok = v.frame[v.frame["predicted_ms"].notna()]
    fig, axes = house.new_figure(1, 2, "Predicted vs measured iteration time")
    styles = house.strategy_styles(ok["strategy"])
    ax = axes[0][0]
    for label, rows in ok.groupby("strategy", sort=False):
        ax.scatter(rows["measured_ms"], rows["predicted_ms"], s=18, label=label, color=styles[label]["color"])
    lo = min(ok["measured_ms"].min(), ok["predicted_ms"].min()) * 0.8
    hi = max(ok["measured_ms"].max(), ok["predicted_ms"].max()) * 1.25
    for k, ls in ((1.0, "-"), (1.05, ":"), (0.95, ":")):
        ax.plot([lo, hi], [lo * k, hi * k], color="black", lw=1, ls=ls)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms per iteration)")
    ax.set_ylabel("predicted (ms per iteration)")
    ax.set_title("each run; dotted: ±5%", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax = axes[0][1]
    ax.hist(ok["error"] * 100, bins=max(8, min(40, len(ok) // 2)), color="grey")
    ax.axvline(0, color="black", lw=1)
    for k in (-5, 5):
        ax.axvline(k, color="black", lw=1, ls=":")
    ax.set_xlabel("error of the prediction (%)")
    ax.set_ylabel("runs")
    ax.set_title(f"median |error| {ok['error'].abs().median():.1%}", fontsize=9)
    house.figure_legend(fig, axes)
    house.save_figure(fig, path)


def write(v: Validation, out: Path, title: str = "Validation: predicted vs measured iteration time") -> Path:
    from ..io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "validation.csv", v.frame.to_csv(index=False))
    atomic_write_text(out / "validation_cells.csv", v.cells.to_csv(index=False))
    plot(v, out / "validation_error.png")
    atomic_write_text(out / "validation.md", render(v, title))
    return out / "validation.md"

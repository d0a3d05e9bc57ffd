"""validate: run directories (and a report's runs.csv) against predictions from their own
config, and the commands' bad-input handling (asyncsgd/projection/validate.py, cli.py)."""
from __future__ import annotations

import math

import json
from dataclasses import replace

import pandas as pd
import pytest

from asyncsgd.projection import cli
from asyncsgd.projection.network import Network
from asyncsgd.projection.profile import profile_from_dict
from asyncsgd.projection.presets import load_network
from asyncsgd.projection.schedules import StrategySpec, layerwise_bound_for, predict
from asyncsgd.projection.validate import _strategy_config, render, validate, validate_runs_csv

from ..report_fixtures import make_run

PROFILE = {"name": "mlp-b16", "model": "mlp", "batch_size": 16,
           "layers": [{"name": "fc1", "tensors": [400_000], "forward_s": 0.002, "backward_s": 0.004},
                      {"name": "fc2", "tensors": [40_000], "forward_s": 0.001, "backward_s": 0.002}],
           "step": {"update_all_s": 0.001}}
GLOO = Network("gloo-test", alpha=1e-4, rate_bps=1e8, link_efficiency=0.9, channels=2, scale_on_worker=True)
LINK = {"launcher": {"name": "emulated"}, "cluster": {"bandwidth": "1gbit"}}


def _runs(tmp_path):
    prof = profile_from_dict(PROFILE)
    expected = {}
    for i, (strategy, measured) in enumerate([({"name": "sync", "fuse": True}, 0.013),
                                             ({"name": "layerwise", "wait_at": "forward", "bucket_mb": 0.0,
                                               "priority": False, "chunk_mb": 1.0, "urgent_share": 0.1}, 0.012)]):
        make_run(tmp_path / "sweep" / str(i), strategy=strategy, median_iter_s=measured, batch_size=16,
                 train={"max_steps": 10}, extra_config=LINK)
        spec = StrategySpec.from_config(strategy)
        net = GLOO.with_link(rate_bps=1e9)
        pred = predict(prof, net, 2, spec, steps=10, warmup=5)
        expected[spec.name] = pred.mean_s, pred.iter_s, measured
    make_run(tmp_path / "sweep" / "2", batch_size=32, extra_config=LINK)  # no profile at this batch
    return prof, expected


def test_validate_predicts_each_run_from_its_config(tmp_path):
    prof, expected = _runs(tmp_path)
    v = validate([tmp_path / "sweep"], [prof], {"gloo": GLOO})
    f = v.frame[v.frame["batch_size"] == 16].set_index("strategy")
    for name, label in (("sync", "sync"), ("layerwise", "layerwise(wait_at=forward)")):
        mean, median, measured_median = expected[name]
        measured_mean = 0.0002 + 0.001 + 0.002 + 0.005 + 0.0005 + 0.0008  # the fixture's phases + other
        assert f.loc[label, "predicted_ms"] == pytest.approx(mean * 1e3)
        assert f.loc[label, "error"] == pytest.approx(mean / measured_mean - 1)
        assert f.loc[label, "median_error"] == pytest.approx(median / measured_median - 1)
        assert f.loc[label, "link"] == "1gbit"
    assert "no profile for model=mlp batch=32" in v.frame["problem"].dropna().iloc[0]
    s = v.summary()
    assert s["runs"] == 3 and s["predicted"] == 2 and len(v.cells) == 1


def test_validate_reads_a_runs_csv(tmp_path):
    prof = profile_from_dict(PROFILE)
    rows = [{"run": "a", "status": "complete", "dataset": "synthetic", "model": "mlp", "backend": "gloo",
             "batch_size": 16, "cluster.bandwidth": "100mbit", "strategy": label, "world_size": 2, "steps": 20,
             "median_iter_s": 0.05, "t_iter_s": 0.051, "t_comm_wait_s": 0.01}
            for label in ("sync", "layerwise(wait_at=forward, priority=true)", "delayed(k=1)")]
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    v = validate_runs_csv(tmp_path / "runs.csv", [prof], {"gloo": GLOO})
    assert v.frame["predicted_ms"].notna().all()
    assert _strategy_config("layerwise(wait_at=forward, priority=true)") == {
        "name": "layerwise", "wait_at": "forward", "priority": True}
    assert _strategy_config("delayed(k=2)") == {"name": "delayed", "k": 2}
    assert _strategy_config("ddp(bucket_mb=None)") == {"name": "ddp", "bucket_mb": None}


def test_runs_of_the_retired_credit_scheduler_are_refused(tmp_path):
    # a run made before issue 12 (strategy.credit) is not predicted by today's rules
    make_run(tmp_path / "old", strategy={"name": "layerwise", "wait_at": "forward", "bucket_mb": 0.0,
                                         "priority": True, "chunk_mb": 1.0, "credit": 8},
             batch_size=16, train={"max_steps": 10}, extra_config=LINK)
    make_run(tmp_path / "new", batch_size=16, train={"max_steps": 10}, extra_config=LINK)
    f = validate([tmp_path], [profile_from_dict(PROFILE)], {"gloo": GLOO}).frame
    old = f[f["run"].str.endswith("old")].iloc[0]
    assert "credit scheduler that issue 12 replaced" in old["problem"]
    assert f[f["run"].str.endswith("new")]["predicted_ms"].notna().all()


def test_mpi_runs_keep_their_max_inflight(tmp_path):
    # MPI's thread keeps backend.max_inflight reductions in flight per channel, channel 0 first: the
    # run's setting, whatever the calibration measured
    mpi = Network("mpi-test", alpha=1e-4, rate_bps=1e8, link_efficiency=0.9, channels=1, channel_priority=True)
    prof = profile_from_dict(PROFILE)
    spec = {"name": "layerwise", "wait_at": "forward", "bucket_mb": 0.0, "priority": True, "chunk_mb": 0.1,
            "urgent_share": 0.1}
    for n in (1, 3):
        make_run(tmp_path / f"m{n}", strategy=spec, batch_size=16, backend="mpi", train={"max_steps": 10},
                 extra_config={**LINK, "backend": {"name": "mpi", "progress": "thread", "max_inflight": n}})
    f = validate([tmp_path], [prof], {"mpi": mpi}).frame
    for n in (1, 3):
        net = replace(mpi, channels=n).with_link(rate_bps=1e9)
        expected = predict(prof, net, 2, StrategySpec.from_config(spec), steps=10, warmup=5).mean_s
        assert f[f["run"].str.endswith(f"m{n}")]["predicted_ms"].iloc[0] == pytest.approx(expected * 1e3)
    assert f["predicted_ms"].nunique() == 2



def test_runs_with_compute_nice_are_predicted_with_the_share_it_gives(tmp_path):
    # backend.compute_nice: the reductions' threads get more of a core while compute runs
    # (network.yielded_share). On a network whose reductions are starved of CPU at equal priorities,
    # the run at nice 19 is predicted from that share, and faster than the same run at nice 0.
    starved = replace(GLOO, cpu_s_per_byte=2e-9, cpu_share=0.05)
    prof = profile_from_dict(PROFILE)
    strategy = {"name": "delayed", "k": 1}
    for nice in (0, 19):
        make_run(tmp_path / f"n{nice}", strategy=strategy, batch_size=16, train={"max_steps": 10},
                 extra_config={**LINK, "backend": {"name": "gloo", "compute_nice": nice}})
    # asked for, but not applied (summary.json: not Linux): predicted as what the run did
    make_run(tmp_path / "other", strategy=strategy, batch_size=16, train={"max_steps": 10},
             extra_config={**LINK, "backend": {"name": "gloo", "compute_nice": 19}})
    summary = json.loads((tmp_path / "other" / "summary.json").read_text())
    summary["cpu_priority"] = {"compute_nice": 0, "not_applied": "per-thread priorities are Linux-only (darwin)"}
    (tmp_path / "other" / "summary.json").write_text(json.dumps(summary))
    f = validate([tmp_path], [prof], {"gloo": starved}).frame
    pred = {nice: f[f["run"].str.endswith(f"n{nice}")]["predicted_ms"].iloc[0] for nice in (0, 19)}
    assert f[f["run"].str.endswith("other")]["predicted_ms"].iloc[0] == pytest.approx(pred[0])
    f = f[~f["run"].str.endswith("other")]
    net = starved.with_link(rate_bps=1e9)
    for nice in (0, 19):
        expected = predict(prof, net, 2, StrategySpec.from_config(strategy), steps=10, warmup=5, compute_nice=nice)
        assert pred[nice] == pytest.approx(expected.mean_s * 1e3)
    assert pred[19] < 0.95 * pred[0]  # 10.9 against 12.2 ms: the starved reduction no longer holds the step
    # ranked as two strategies of the setting, not one
    assert sorted(f["strategy"]) == ["delayed(k=1)", "delayed(k=1)+nice"]

def _one_line_exit_2(capsys, call):
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_exits_2_with_one_line(capsys, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"layers": [{"name": "x", "forward_s": -1, "backward_s": 0,
                                                               "bytes": 4}]}))
    err = _one_line_exit_2(capsys, lambda: cli.project([str(tmp_path / "bad.json"), "--network", "ib-fdr"]))
    assert "layers[0].forward_s must be a number >= 0" in err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(PROFILE))
    err = _one_line_exit_2(capsys, lambda: cli.project([str(good), "--network", "infiniband-xdr"]))
    assert "not a network preset" in err and "ib-fdr" in err
    err = _one_line_exit_2(capsys, lambda: cli.project([str(good), "--network", "ib-fdr", "--strategies", "async"]))
    assert "unknown strategy 'async'" in err
    err = _one_line_exit_2(capsys, lambda: cli.project([str(good), "--network", "ib-fdr", "--workers", "2,0"]))
    assert "--workers" in err
    err = _one_line_exit_2(capsys, lambda: cli.project([str(good), "--network", "ib-fdr", "--compute-nice", "20"]))
    assert "--compute-nice 20 must be in [0, 19]" in err
    err = _one_line_exit_2(capsys, lambda: cli.project(["validate", str(tmp_path), "--profiles", str(good),
                                                        "--network", str(good)]))
    assert "not a calibration file" in err
    err = _one_line_exit_2(capsys, lambda: cli.profile(["model=nosuchmodel", "--out", str(tmp_path / "p.json")]))
    assert "model=nosuchmodel is not an option" in err


def test_project_writes_tables_and_a_trace(capsys, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(PROFILE))
    cli.project([str(good), "--network", "10gbe", "--workers", "2,16", "--strategies", "sync,layerwise,delayed_k1",
                 "--out", str(tmp_path / "out"), "--trace", str(tmp_path / "trace.json")])
    table = pd.read_csv(tmp_path / "out" / "projection.csv")
    assert set(table["workers"]) == {2, 16} and set(table["rules"]) == {"as_implemented", "ideal"}
    # issue 12's bound of layerwise(wait_at=forward), at each worker count
    bounds = [layerwise_bound_for(profile_from_dict(PROFILE), load_network("10gbe"), p) * 1e3 for p in (2, 16)]
    assert (f"The bound of layerwise(wait_at=forward) (design.md, per-layer updates): {bounds[0]:.1f} ms at 2, "
            f"{bounds[1]:.1f} ms at 16.") in capsys.readouterr().out
    sync = table[(table["strategy"] == "sync") & (table["rules"] == "as_implemented")]
    assert (sync["speedup_vs_sync"] == 1.0).all()
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    names = {e["name"] for e in trace if e.get("ph") == "X"}
    assert {"forward fc1", "backward fc2", "allreduce all", "wait all"} <= names


def test_validation_summarises_each_setting(tmp_path):
    prof = profile_from_dict(PROFILE)
    for i, (link, measured) in enumerate([("1gbit", 0.013), ("1gbit", 0.015), ("300mbit", 0.02)]):
        make_run(tmp_path / "sweep" / str(i), strategy={"name": "sync", "fuse": True}, median_iter_s=measured,
                 batch_size=16, train={"max_steps": 10},
                 extra_config={"launcher": {"name": "emulated"}, "cluster": {"bandwidth": link}})
    v = validate([tmp_path / "sweep"], [prof], {"gloo": GLOO})
    per = v.settings().set_index("link")
    assert per.loc["1gbit", "runs"] == 2 and per.loc["300mbit", "runs"] == 1
    fast = v.frame[v.frame["link"] == "1gbit"]
    assert per.loc["1gbit", "median_abs_error"] == pytest.approx(fast["error"].abs().median())
    worst = fast.loc[fast["error"].abs().idxmax()]
    assert per.loc["1gbit", "worst_error"] == pytest.approx(worst["error"])
    assert per.loc["1gbit", "worst_run"] == worst["run"]
    text = render(v, "t")
    assert "## Per setting" in text and f"{per.loc['300mbit', 'median_abs_error']:.1%}" in text


def test_repeat_noise_is_the_leave_one_out_error_of_the_runs_own_repeats():
    from asyncsgd.projection.validate import repeat_noise
    base = {"backend": "gloo", "model": "cnn", "batch_size": 32, "link": "1gbit", "world_size": 2}
    rows = [{**base, "strategy": "sync", "measured_ms": m} for m in (100.0, 110.0, 90.0)]
    rows += [{**base, "strategy": "delayed(k=1)", "measured_ms": 50.0}]  # no repeat: left out
    noise = repeat_noise(pd.DataFrame(rows))
    # 100 <- mean(110, 90) = 100: 0; 110 <- 95: 5/110; 90 <- 105: 15/90; median 5/110
    assert noise["repeat_runs"] == 3
    assert noise["loo"] == pytest.approx(15 / 110)
    assert noise["floor"] == pytest.approx(15 / 110 * math.sqrt(2 / 3))
    assert repeat_noise(pd.DataFrame(rows[3:]))["repeat_runs"] == 0

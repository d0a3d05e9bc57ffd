"""asyncsgd-profile as a user runs it: a profile read out of a real run's timeline.json, and one
measured here."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pandas as pd
import pytest

from asyncsgd.projection.profile import load_profile

from ..conftest import cli_env, run_cli

pytestmark = pytest.mark.slow

CNN = ["dataset=synthetic", "dataset.shape=[3,32,32]", "model=cnn", "train.batch_size=8"]


def _tool(name, args, cwd):
    code = f"import sys; from asyncsgd.projection.cli import {name}; sys.argv[0] = 'asyncsgd-{name}'; {name}()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=240)


def test_profile_from_a_real_timeline_predicts_that_run(workdir):
    run_dir = workdir / "run"
    with socket.socket() as s:  # one worker in this process (launcher=external): no agent to start
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    result = run_cli(["launcher=external", "backend=gloo", "world_size=1", "train.threads=1", "strategy=layerwise",
                      *CNN, "train.max_steps=10", "train.warmup_steps=3", "timeline=true", "timeline_first_step=3",
                      "timeline_steps=6", f"hydra.run.dir={run_dir}"], cwd=workdir, env_extra=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = _tool("profile", ["--from-run", str(run_dir), "--out", str(workdir / "cnn.json")], workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    prof = load_profile(workdir / "cnn.json")
    # the runner's layers, in forward order, with the model's gradient bytes
    assert [l.name for l in prof.layers] == ["features.0", "features.3", "classifier.0", "classifier.2",
                                             "classifier.4"]
    assert prof.nbytes == json.loads((run_dir / "summary.json").read_text())["gradient_bytes"]
    # layerwise (wait_at=forward) updates layer by layer: each layer's update is in the trace
    assert all(l.forward_s > 0 and l.backward_s > 0 and l.update_s > 0 for l in prof.layers)
    # the extracted compute adds up to what metrics.csv booked to forward + backward + update
    metrics = pd.read_csv(run_dir / "metrics.csv")
    iters = metrics[(metrics["kind"] == "iter") & (metrics["step"] >= 3)]
    booked = (iters["t_forward"] + iters["t_backward"] + iters["t_update"]).median()
    traced = sum(l.forward_s + l.backward_s + l.update_s for l in prof.layers)
    assert 0.6 < traced / booked < 1.4


def test_measured_profile(workdir, capsys):
    from asyncsgd.projection.cli import profile

    profile([*CNN, "--repeats", "3", "--warmup", "1", "--concurrent", "2",  # in this process, + 2 copies
             "--out", str(workdir / "m.json")])
    assert "5 layers, 9.5 MB of gradients" in capsys.readouterr().out
    prof = load_profile(workdir / "m.json")
    assert prof.model == "cnn" and prof.batch_size == 8 and len(prof.layers) == 5
    assert prof.get("copy_s_per_byte") > 0 and prof.get("update_all_s") > 0
    # the copies ran in lockstep (a barrier per iteration) to the end: a slowdown came back
    assert set(prof.slowdown) == {1, 2} and 0.3 < prof.slowdown[2] < 20

"""layerwise on real processes when the layers without a gradient differ between ranks.

Every rank must issue the same reductions in the same order on every channel even
then; before the fixed per-lane order, such a model could pair different buckets
across ranks and hang or mix gradients.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import MPIEXEC, cli_env, needs_mpi

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("rank_dependent_worker.py")


@pytest.mark.parametrize("schedule", ["fifo", "priority"])
@pytest.mark.parametrize("backend", ["gloo", pytest.param("mpi", marks=needs_mpi)])
def test_ranks_that_skip_different_layers_still_agree(tmp_path, backend, schedule):
    out = tmp_path / "result.json"
    launch = ([MPIEXEC, "-n", "2", sys.executable] if backend == "mpi" else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    result = subprocess.run([*launch, str(WORKER), backend, schedule, str(out)], env=cli_env(),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(out.read_text())
    skips = outcome["skips"]
    assert sum(a != b for a, b in zip(*skips)) >= 5, "the ranks must differ at several steps"
    assert outcome["equal"], "every rank must end with the same parameters"

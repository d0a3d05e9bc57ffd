"""launcher=external: every rank runs asyncsgd-run under mpiexec or torchrun."""
from __future__ import annotations

import sys

import pytest

from ..conftest import MPIEXEC, needs_mpi, read_summary, run_cli

pytestmark = pytest.mark.slow


def _single_run_dir(workdir):
    runs = [p.parent for p in (workdir / "results").glob("runs/*/*/summary.json")]
    assert len(runs) == 1, f"expected one run dir, found {runs}"
    strays = [p for p in (workdir / "results" / "runs").glob("*/*") if p not in runs and any(p.iterdir())]
    assert not strays, f"ranks other than 0 wrote into {strays}"
    return runs[0]


@pytest.mark.parametrize("backend", [pytest.param("mpi", marks=needs_mpi), "gloo"])
def test_ranks_under_an_external_launcher_share_rank0s_run_dir(workdir, backend):
    # mpiexec starts `python -m asyncsgd.cli` per rank; torchrun takes `-m module` itself
    launch = ({"prefix": [MPIEXEC, "-n", "2"]} if backend == "mpi" else
              {"module_prefix": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]})
    result = run_cli(["launcher=external", f"backend={backend}", "train.max_steps=20", "world_size=2"],
                     cwd=workdir, **launch)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(_single_run_dir(workdir))
    assert summary["status"] == "complete" and summary["steps"] == 20
    assert summary["comm"]["world_size"] == 2
    assert (summary["strategy"], summary["backend"], summary["world_size"]) == ("sync", backend, 2)
    assert summary["launcher"] == "external" and summary["config"]["train"]["max_steps"] == 20

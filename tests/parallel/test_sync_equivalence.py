"""sync with P=2, b=16 ends where P=1, b=32 and plain SGD on batch 32 end (design.md, semantics 1-2)."""
from __future__ import annotations

import pytest

from ..conftest import BACKENDS, HAVE_MPI
from .helpers import max_relative_error, reference_sgd, train_and_load

pytestmark = pytest.mark.slow

TOL = 1e-5


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_sync_matches_single_process_sgd_on_both_backends(workdir, model):
    reference = reference_sgd(model, batch=32, steps=60)
    one = train_and_load(workdir, "p1", ["backend=gloo", "world_size=1", "train.batch_size=32", f"model={model}"])
    assert max_relative_error(one, reference) < TOL
    finals = {}
    for backend in ["gloo", "mpi"] if HAVE_MPI else ["gloo"]:
        finals[backend] = train_and_load(
            workdir, f"p2-{backend}", [f"backend={backend}", "world_size=2", "train.batch_size=16", f"model={model}"]
        )
        assert max_relative_error(finals[backend], reference) < TOL, backend
    if len(finals) == 2:
        assert max_relative_error(finals["mpi"], finals["gloo"]) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_unfused_sync_matches_fused(workdir, backend):
    fused = train_and_load(workdir, "fused", [f"backend={backend}", "world_size=2", "train.batch_size=16"])
    split = train_and_load(workdir, "split", [f"backend={backend}", "world_size=2", "train.batch_size=16",
                                              "strategy.fuse=false"])
    assert max_relative_error(split, fused) < TOL

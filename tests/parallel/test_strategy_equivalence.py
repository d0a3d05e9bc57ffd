"""The strategies' math, on real multi-process runs (design.md, "Exact semantics").

Every run is compared with a plain single-process reference written in
helpers.reference_sgd, so the semantics are pinned down, not just self-consistent.
"""
from __future__ import annotations

import pytest

from asyncsgd.config import MPI_PROGRESS

from ..conftest import BACKENDS, needs_mpi, read_summary
from .helpers import max_relative_error, reference_sgd, train_and_load

pytestmark = pytest.mark.slow

TOL = 1e-5
P2 = ["world_size=2", "train.batch_size=16"]


# priority scheduling with ~10 KiB chunks: every layer bigger than that is cut into several
# chunks updated one by one, and the first layers travel on their own lane (tests/unit/test_schedule.py)
SCHEDULES = {"fifo": [], "priority": ["strategy.priority=true", "strategy.chunk_mb=0.01", "strategy.urgent_share=0.3"]}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["mlp", "lenet"])
@pytest.mark.parametrize("wait_at", ["forward", "step"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_layerwise_equals_sequential_sgd(workdir, backend, model, wait_at, schedule):
    final = train_and_load(workdir, "lw", [f"backend={backend}", f"model={model}", "strategy=layerwise",
                                           f"strategy.wait_at={wait_at}", *SCHEDULES[schedule], *P2])
    assert max_relative_error(final, reference_sgd(model, batch=32, steps=60)) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_layerwise_with_split_layers_equals_sequential_sgd(workdir, backend):
    # lenet's two larger fully connected layers (30 and 40 KB) as row blocks of at most 10 KiB, each its
    # own layer, chunked and scheduled with priority, the last-used block sent last after the EDF
    # calibration; the final parameters keep nn.Linear's layout
    final = train_and_load(workdir, "lws", [f"backend={backend}", "model=lenet", "strategy=layerwise",
                                            *SCHEDULES["priority"], "strategy.split_mb=0.01",
                                            "strategy.last_used_last=true", *P2])
    assert max_relative_error(final, reference_sgd("lenet", batch=32, steps=60)) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_layerwise_with_buckets_equals_sequential_sgd(workdir, backend):
    # 0.02 MiB fuses the two small lenet conv layers and the last fc layers into shared buckets
    final = train_and_load(workdir, "lwb", [f"backend={backend}", "model=lenet", "strategy=layerwise",
                                            "strategy.bucket_mb=0.02", *P2])
    assert max_relative_error(final, reference_sgd("lenet", batch=32, steps=60)) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_layerwise_bucket_mb_auto_equals_sequential_sgd(workdir, backend):
    # three layouts timed for 5 steps each, then the fastest kept: every switch lands on a step
    # boundary of every rank, and the arithmetic is sequential SGD's throughout
    # (and the training thread yields the CPU to the backend's threads: the math does not change)
    final = train_and_load(workdir, "lwa", [f"backend={backend}", "model=lenet", "strategy=layerwise",
                                            *SCHEDULES["priority"], "strategy.bucket_mb=auto",
                                            "backend.compute_nice=5", *P2])
    assert max_relative_error(final, reference_sgd("lenet", batch=32, steps=60)) < TOL
    summary = read_summary(workdir / "lwa")
    assert_yielded(summary, 5)
    auto = summary["layout"]["auto"]
    assert auto["chosen"] in [{k: t[k] for k in ("bucket_mb", "chunk_mb")} for t in auto["tried"]]
    assert all(t["median_ms"] > 0 for t in auto["tried"])
    assert summary["warmup_steps"] > 15  # the trials are left out of the median iteration time
    if backend == "mpi":
        # progress=auto follows the layout through every switch: a blocking call for the one-bucket
        # layout (one reduction per step), the polling thread for the others
        one_reduction = auto["chosen"] == {"bucket_mb": None, "chunk_mb": None}
        assert summary["comm"]["progress"] == ("blocking" if one_reduction else "thread")
        assert summary["comm"]["progress_auto"] is True


@needs_mpi
def test_layerwise_one_bucket_on_mpi_runs_blocking_calls(workdir):
    # backend.progress=auto: a layout of one reduction per step switches MPI to blocking calls
    # when the buckets are laid out (after the first step), and the math stays sequential SGD's
    # The blocking calls' threads start after the training thread lowered its priority
    # (backend.compute_nice), from the spawner made before: they keep the process's priority.
    final = train_and_load(workdir, "lw1", ["backend=mpi", "model=lenet", "strategy=layerwise",
                                            "strategy.bucket_mb=inf", "backend.compute_nice=7", *P2])
    assert max_relative_error(final, reference_sgd("lenet", batch=32, steps=60)) < TOL
    summary = read_summary(workdir / "lw1")
    assert summary["comm"]["progress"] == "blocking"
    assert_yielded(summary, 7)


def assert_yielded(summary: dict, nice: int) -> None:
    """backend.compute_nice=nice lowered the training thread's priority (rank 0's), and only its own."""
    cpu = summary["cpu_priority"]
    if "not_applied" in cpu:  # not Linux
        return
    base = cpu["base_nice"]
    assert cpu["training_thread_nice"] == min(19, base + nice)
    assert set(cpu["other_threads_nice"]) == {base}  # no other thread was lowered (gloo's workers, MPI's...)
    if summary["comm"]["backend"] == "mpi":
        assert summary["comm"]["comm_threads_nice"] and set(summary["comm"]["comm_threads_nice"]) == {base}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 2])
def test_delayed_k_is_explicit_delayed_sgd_and_independent_of_worker_count(workdir, backend, k):
    reference = reference_sgd("mlp", batch=32, steps=60, k=k)
    two = train_and_load(workdir, "p2", [f"backend={backend}", "strategy=delayed", f"strategy.k={k}", *P2])
    assert max_relative_error(two, reference) < TOL
    one = train_and_load(workdir, "p1", [f"backend={backend}", "strategy=delayed", f"strategy.k={k}",
                                         "world_size=1", "train.batch_size=32"])
    assert max_relative_error(one, reference) < TOL
    # and the delay is real: the result differs from undelayed SGD
    assert max_relative_error(two, reference_sgd("mlp", batch=32, steps=60)) > 1e-3


def test_delayed_without_drain_leaves_the_last_k_gradients_unapplied(workdir):
    final = train_and_load(workdir, "nodrain", ["backend=gloo", "strategy=delayed", "strategy.k=2",
                                                "strategy.drain=false", *P2])
    assert max_relative_error(final, reference_sgd("mlp", batch=32, steps=60, k=2, drain=False)) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_delayed_k0_is_sync(workdir, backend):
    final = train_and_load(workdir, "k0", [f"backend={backend}", "strategy=delayed", "strategy.k=0", *P2])
    assert max_relative_error(final, reference_sgd("mlp", batch=32, steps=60)) < TOL


@pytest.mark.parametrize("strategy, k", [(["strategy=sync"], 0),
                                         (["strategy=layerwise", *SCHEDULES["priority"]], 0),
                                         (["strategy=delayed", "strategy.k=2"], 2)])
def test_cosine_schedule_applies_each_gradient_with_its_own_steps_rate(workdir, strategy, k):
    # layerwise applies a gradient at the next step's forward and delayed K steps later: each with the
    # rate of the step it was computed at, so layerwise stays sequential SGD under the schedule
    final = train_and_load(workdir, "cos", ["backend=gloo", "model=lenet", *strategy, *P2,
                                            "train.lr_schedule=cosine"])
    assert max_relative_error(final, reference_sgd("lenet", batch=32, steps=60, k=k, cosine=True)) < TOL
    assert max_relative_error(final, reference_sgd("lenet", batch=32, steps=60, k=k)) > 1e-2


def test_ddp_equals_sync(workdir):
    ddp = train_and_load(workdir, "ddp", ["backend=gloo", "strategy=ddp", *P2])
    sync = train_and_load(workdir, "sync", ["backend=gloo", "strategy=sync", *P2])
    assert max_relative_error(ddp, sync) < TOL
    assert max_relative_error(ddp, reference_sgd("mlp", batch=32, steps=60)) < TOL


def test_evaluation_mid_training_does_not_change_the_math(workdir):
    # eval_every_epochs=1 flushes in-flight reductions at the epoch boundary (step 44 of 60)
    for strategy in (["strategy=layerwise"], ["strategy=delayed", "strategy.k=2"]):
        final = train_and_load(workdir, "eval-" + strategy[0][9:], ["backend=gloo", *strategy, *P2,
                                                                     "train.eval_every_epochs=1"])
        k = 2 if "delayed" in strategy[0] else 0
        assert max_relative_error(final, reference_sgd("mlp", batch=32, steps=60, k=k)) < TOL


# backend.progress=auto already runs layerwise on the polling thread and the others in blocking
# calls (every MPI test above); each other pairing once: a layerwise run has two channels of chunks
OTHER_PAIRING = {"thread": "delayed", "blocking": "layerwise", "test": "layerwise", "library": "delayed"}


@needs_mpi
@pytest.mark.parametrize("progress", [m for m in MPI_PROGRESS if m != "auto"])
def test_every_mpi_progress_mode_gives_the_same_exact_results(workdir, progress):
    """Who drives MPI's reductions (asyncsgd.comm.mpi) changes timing, never results."""
    mode = ["backend=mpi", f"backend.progress={progress}", *P2]
    if OTHER_PAIRING[progress] == "layerwise":
        final = train_and_load(workdir, "lw", [*mode, "strategy=layerwise", *SCHEDULES["priority"]])
        assert max_relative_error(final, reference_sgd("mlp", batch=32, steps=60)) < TOL
    else:
        final = train_and_load(workdir, "d1", [*mode, "strategy=delayed", "strategy.k=1"])
        assert max_relative_error(final, reference_sgd("mlp", batch=32, steps=60, k=1)) < TOL
    assert read_summary(workdir / ("lw" if OTHER_PAIRING[progress] == "layerwise" else "d1"))["comm"]["progress"] \
        == progress  # the mode that ran
